"""Resources: where the DuckDB file and the specs are, and the local model."""

from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from synth_assets.generation.local_llm import LocalChatModel, get_local_model
from synth_assets.paths import default_specs_dir
from synth_assets.runtime import request_threads
from synth_assets.seed import spec_inputs_digest
from synth_assets.spec import GenerationSpec, SpecError, load_spec
from synth_assets.storage import Warehouse

SPEC_PATH_TAG = "synth_assets/spec_path"
# seed_data records where the spec of a partition lives, so a later lookup outside a run can find a
# spec that was run from outside specs/ (`synth-assets run --spec /elsewhere/x.yaml`)
SPEC_PATH_METADATA = "spec_path"


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse all stages write to: the DuckLake catalog file `database`; empty: the default
    (`SYNTH_ASSETS_LAKE_CATALOG` when set, else `SYNTH_ASSETS_DB` or data/synth_assets.ducklake)."""

    database: str = ""

    def warehouse(self) -> Warehouse:
        return Warehouse(self.database or None)


def last_spec_path(instance: dg.DagsterInstance, name: str) -> Path | None:
    """The spec file the latest `seed_data` materialization of the spec `name` read, if recorded."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("seed_data"), asset_partitions=[name]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get(SPEC_PATH_METADATA)
    return Path(str(value.value)) if value is not None else None


def scan_specs(directory: Path) -> tuple[dict[str, tuple[str, Path, GenerationSpec]], list[str]]:
    """Loadable specs in a folder as {name: (digest, path, spec)}, plus one-line problems of the rest.

    Two files that declare the same `name` are a problem, and neither of them is returned: choosing
    one silently would run (and spend on) whichever sorts first."""
    found: dict[str, tuple[str, Path, GenerationSpec]] = {}
    paths: dict[str, list[Path]] = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
        try:
            spec = load_spec(path)
            found.setdefault(spec.name, (spec_inputs_digest(spec), path, spec))
            paths.setdefault(spec.name, []).append(path)
        except SpecError as exc:
            problems.append(str(exc))
    for name, same in paths.items():
        if len(same) > 1:
            del found[name]
            problems.append(
                f"{', '.join(str(p) for p in same)}: name: '{name}' is declared by {len(same)} spec files "
                "(a spec name must be unique: rename one); none of them is run"
            )
    return found, problems


def run_spec_name(context: dg.AssetExecutionContext) -> str:
    """The one spec a run materializes: its partition key (the run's `dagster/partition` tag).

    A run over a range of partitions (tags `dagster/asset_partition_range_start` / `_end`: a
    single-run backfill, `dagster asset materialize --partition-range`, an asset given a
    `backfill_policy`, even `multi_run(1)`) carries no `dagster/partition`, so the instance's limit of
    one run per spec (dagster.yaml) cannot hold it back from another run of the same spec, and two
    writers of one spec's versions could interleave. Such a run is refused here, before the first
    stage reads or writes anything: raises dg.Failure (one line naming the range). The assets declare
    no backfill_policy, so Dagster's backfills of them make one run per spec, each tagged."""
    if context.has_partition_key:
        return context.partition_key
    tags = context.run.tags
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start is not None:
        raise dg.Failure(
            f"run {context.run_id} covers the spec range {start}...{end}: each spec materializes in a run "
            "of its own (dagster/partition), so that one run per spec holds; launch one run per spec "
            "(a backfill of these assets does)"
        )
    return context.partition_key  # Dagster's own error for a run without any partition


class SpecCatalog(dg.ConfigurableResource):
    """Where the specs are: `specs_dir` (default: `SYNTH_ASSETS_SPECS_DIR`, else the repo's `specs/`).

    `find` is the one answer to "where is the spec file of NAME": the assets (`spec_for`), the
    `spec_inputs` observation, the sensor and the schedule, and the CLI's `export` all ask it."""

    specs_dir: str = ""

    def directory(self) -> Path:
        """The specs folder, absolute."""
        return Path(self.specs_dir).resolve() if self.specs_dir else default_specs_dir()

    def find(
        self, name: str, given: str | Path | None = None, instance: dg.DagsterInstance | None = None
    ) -> GenerationSpec:
        """The spec named `name`. A `given` file (a run's spec-path tag, or a file the user named) is
        the only candidate when set; otherwise `<specs_dir>/<name>.yaml`, then the file the latest
        `seed_data` materialization in `instance` read (a spec once run from outside the folder).
        The first candidate that loads and carries the name wins. Raises `SpecError` (one line: the
        file and the problem) when none does: the first candidate's own error."""
        if given:
            candidates = [Path(given)]
        else:
            candidates = [self.directory() / f"{name}.yaml"]
            recorded = last_spec_path(instance, name) if instance is not None else None
            if recorded is not None and recorded not in candidates:
                candidates.append(recorded)
        first_error: SpecError | None = None
        for path in candidates:
            try:
                spec = load_spec(path)
            except SpecError as exc:
                first_error = first_error or exc
                continue
            if spec.name == name:
                return spec
            first_error = first_error or SpecError(f"{path}: name: '{spec.name}' is not the spec '{name}'")
        assert first_error is not None  # there is always at least one candidate
        raise first_error

    def scan(self) -> tuple[dict[str, tuple[str, Path, GenerationSpec]], list[str]]:
        """Every loadable spec in the folder and one-line problems of the rest (`scan_specs`)."""
        return scan_specs(self.directory())

    def spec_for(self, context: dg.AssetExecutionContext) -> GenerationSpec:
        """The spec of the partition a stage materializes (`find`, with the run's spec-path tag);
        also applies its `generation.threads` before the local model is built in this process.
        Raises dg.Failure for a run over a range of specs (`run_spec_name`)."""
        spec = self.find(run_spec_name(context), context.run.tags.get(SPEC_PATH_TAG), context.instance)
        request_threads(spec.generation.threads)
        return spec


class LocalModelResource(dg.ConfigurableResource):
    """SmolLM2-135M-Instruct through transformers; weights cached under `cache_dir` after first load."""

    cache_dir: str = ""

    def model(self) -> LocalChatModel:
        return get_local_model(Path(self.cache_dir) if self.cache_dir else None)
