"""Resources: where the DuckDB file and the specs are, and the local model."""

from pathlib import Path

import dagster as dg

from synth_assets.generation.local_llm import LocalChatModel, get_local_model
from synth_assets.paths import default_specs_dir
from synth_assets.runtime import request_threads
from synth_assets.spec import GenerationSpec, SpecError, load_spec
from synth_assets.storage import Warehouse, default_database_path

SPEC_PATH_TAG = "synth_assets/spec_path"


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB file all stages write to (`SYNTH_ASSETS_DB` overrides the default)."""

    database: str = ""

    def warehouse(self) -> Warehouse:
        return Warehouse(self.database or default_database_path())


class SpecCatalog(dg.ConfigurableResource):
    """Finds the spec of a partition: the run's spec-path tag, else `<specs_dir>/<partition>.yaml`."""

    specs_dir: str = ""

    def directory(self) -> Path:
        return Path(self.specs_dir).resolve() if self.specs_dir else default_specs_dir()

    def spec_for(self, context: dg.AssetExecutionContext) -> GenerationSpec:
        partition = context.partition_key
        tagged = context.run.tags.get(SPEC_PATH_TAG)
        path = Path(tagged) if tagged else self.directory() / f"{partition}.yaml"
        spec = load_spec(path)
        if spec.name != partition:
            raise SpecError(f"{path}: name: '{spec.name}' does not match the partition '{partition}'")
        request_threads(spec.generation.threads)  # before the local model is built in this process
        return spec


class LocalModelResource(dg.ConfigurableResource):
    """SmolLM2-135M-Instruct through transformers; weights cached under `cache_dir` after first load."""

    cache_dir: str = ""

    def model(self) -> LocalChatModel:
        return get_local_model(Path(self.cache_dir) if self.cache_dir else None)
