"""The five stages as software-defined assets, one partition per spec.

Assets are thin: read the spec and upstream tables, call the pure modules, write one version
through `Warehouse`, and return metadata a person wants to read in the UI. Upstream tables are read
from DuckDB (not passed through an IO manager), so a run that selects only a downstream asset
reads the last promoted version, never one that failed its gate.
"""

from synth_assets.defs.common import spec_partitions
from synth_assets.defs.curated_set import curated_set
from synth_assets.defs.evaluation_report import evaluation_report
from synth_assets.defs.expanded_prompts import expanded_prompts
from synth_assets.defs.generated_samples import generated_samples
from synth_assets.defs.seed_data import seed_data

stage_assets = [seed_data, expanded_prompts, generated_samples, curated_set, evaluation_report]

__all__ = ["spec_partitions", "stage_assets"]
