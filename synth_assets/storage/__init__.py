"""The one place that knows the warehouse layout and speaks SQL to it.

- `stages.py`: the stage names (`Stage`) and the column layout of every table;
- `lake.py`: the engine, DuckLake: where the catalog and the Parquet files live (`LakeConfig`), the
  layout (rows once by content id, versions as row lists, every write a snapshot), connections;
- `warehouse.py`: `Warehouse`, its transactions, errors and every write;
- `migrate.py`: the import of an old-layout DuckDB file (on first open);
- `reads.py`: the named reads (the vocabulary: `promoted_version`, `versions`, `gate_verdict`,
  `good_versions`, `last_good`, `rows_by_ids`, `resolve_prefix`, ...) and the one definition of a
  good version (`is_good`).

Every other module reads and writes through `Warehouse` and these names; no SQL outside this
package (tests/test_storage_boundary.py keeps it so).
"""

from synth_assets.storage.lake import LakeConfig, LakeUnavailable, S3Settings
from synth_assets.storage.reads import VersionInfo, VersionVerdict, decode_json, is_good
from synth_assets.storage.stages import (
    COMMON_COLUMNS,
    GATE_COLUMNS,
    GATED_STAGES,
    GENERATION_FAILURE_COLUMNS,
    GENERATION_RUN_COLUMNS,
    HISTORY_TABLE,
    ID_COLUMN,
    JSON_COLUMNS,
    LLM_CACHE_COLUMNS,
    PUBLICATION_COLUMNS,
    PUBLISHED_WITH,
    ROW_STAGES,
    STAGE_COLUMNS,
    Stage,
    stage_columns,
)
from synth_assets.storage.warehouse import (
    WAREHOUSE_ERRORS,
    GateRecord,
    GenerationRecord,
    Publication,
    StorageError,
    Warehouse,
    default_database_path,
)

__all__ = [
    "COMMON_COLUMNS",
    "GATED_STAGES",
    "GATE_COLUMNS",
    "GENERATION_FAILURE_COLUMNS",
    "GENERATION_RUN_COLUMNS",
    "HISTORY_TABLE",
    "ID_COLUMN",
    "JSON_COLUMNS",
    "LLM_CACHE_COLUMNS",
    "PUBLICATION_COLUMNS",
    "PUBLISHED_WITH",
    "ROW_STAGES",
    "STAGE_COLUMNS",
    "WAREHOUSE_ERRORS",
    "GateRecord",
    "GenerationRecord",
    "LakeConfig",
    "LakeUnavailable",
    "Publication",
    "S3Settings",
    "Stage",
    "StorageError",
    "VersionInfo",
    "VersionVerdict",
    "Warehouse",
    "decode_json",
    "default_database_path",
    "is_good",
    "stage_columns",
]
