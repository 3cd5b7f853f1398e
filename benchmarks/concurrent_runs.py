"""Throughput of `synth-assets run` processes sharing the machine: 1 alone vs N at once.

Each process runs the real CLI on its own DuckDB file and Dagster home (so no cache is shared) and is
stopped once its `generated_samples` step has finished (curation and evaluation would only add load
to the others). Tokens and generation seconds come from each process's `llm_cache` (seconds of a call
= its batch's time / batch size, so their sum is the process's generation time).

    python benchmarks/concurrent_runs.py --processes 1 2 --num-samples 16 --batch-size 4
    python benchmarks/concurrent_runs.py --pythonpath /path/to/old/checkout --keep-env   # a baseline

Prints one line per configuration and a RESULT line: aggregate tok/s of N at once / tok/s of 1 alone
(issue 10's target: 2 concurrent runs together >= 0.8x one run alone).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import yaml

ROOT = Path(__file__).resolve().parent.parent
STEP_DONE = 'Finished execution of step "generated_samples"'


def _spec_copy(spec_path: Path, folder: Path, num_samples: int, batch_size: int, max_new_tokens: int) -> Path:
    """The spec with fewer samples and absolute seed paths, written into `folder`."""
    spec = yaml.safe_load(spec_path.read_text())
    for key in ("path", "holdout_path"):
        if spec["seed"].get(key):
            spec["seed"][key] = str((spec_path.parent / spec["seed"][key]).resolve())
    spec["num_samples"] = num_samples
    spec["generation"] = {
        **spec.get("generation", {}),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
    }
    spec.get("gates", {}).pop("curated_min_rows", None)
    target = folder / spec_path.name
    target.write_text(yaml.safe_dump(spec, sort_keys=False))
    return target


def _run_together(
    count: int, spec: Path, folder: Path, pythonpath: str, keep_env: bool, timeout_s: float
) -> list[tuple[int, float]]:
    """(completion tokens, generation seconds) of each of `count` processes started together."""
    processes = []
    for index in range(count):
        work = folder / f"p{count}-{index}"
        (work / "home").mkdir(parents=True)
        (work / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env = dict(os.environ)
        if not keep_env:  # what a user's shell has: no OpenMP settings
            for name in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env.pop(name, None)
        env |= {
            "PYTHONPATH": pythonpath,
            "DAGSTER_HOME": str(work / "home"),
            "SYNTH_ASSETS_DB": str(work / "w.duckdb"),
        }
        log = open(work / "run.log", "w")  # noqa: SIM115 (closed below)
        command = [sys.executable, "-m", "synth_assets.cli", "run", "--spec", str(spec)]
        processes.append(
            (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log, work)
        )
    deadline = time.monotonic() + timeout_s
    pending = list(processes)
    while pending and time.monotonic() < deadline:
        for entry in list(pending):
            process, log, work = entry
            if process.poll() is not None or STEP_DONE in (work / "run.log").read_text(errors="replace"):
                process.kill()
                process.wait()
                pending.remove(entry)
        time.sleep(0.5)
    results = []
    for process, log, work in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        with duckdb.connect(str(work / "w.duckdb"), read_only=True) as connection:
            tokens, seconds = connection.execute(
                "SELECT coalesce(sum(completion_tokens), 0), coalesce(sum(seconds), 0) FROM llm_cache"
            ).fetchone()
        results.append((int(tokens), float(seconds)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", type=Path, default=ROOT / "specs" / "product_reviews.yaml")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--pythonpath", default=str(ROOT), help="the checkout whose code runs (a baseline)")
    parser.add_argument("--keep-env", action="store_true", help="keep OMP_* from this shell")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per configuration")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="concurrent_runs-") as tmp:
        folder = Path(tmp)
        spec = _spec_copy(args.spec, folder, args.num_samples, args.batch_size, args.max_new_tokens)
        aggregate: dict[int, float] = {}
        for count in args.processes:
            results = _run_together(count, spec, folder, args.pythonpath, args.keep_env, args.timeout)
            per_process = [tokens / seconds if seconds else 0.0 for tokens, seconds in results]
            aggregate[count] = sum(per_process)
            shown = ", ".join(f"{t} tok in {s:.1f} s" for t, s in results)
            print(f"{count} at once: aggregate {aggregate[count]:.1f} tok/s ({shown})", flush=True)
        alone = aggregate.get(1)
        ratios = " ".join(
            f"{count}x={aggregate[count] / alone:.2f}" for count in args.processes if count != 1 and alone
        )
        print(f"RESULT concurrent_runs alone={alone or 0:.1f}tok/s {ratios} code={args.pythonpath}")


if __name__ == "__main__":
    main()
