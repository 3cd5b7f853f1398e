"""synth_assets: LLM synthetic-data generation as Dagster assets in DuckDB, with lineage and gates."""

__version__ = "0.1.0"
