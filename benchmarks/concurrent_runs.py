"""Two ways to share one machine between `synth-assets run` processes.

Throughput (the default): 1 alone vs N at once. Each process runs the real CLI on its own DuckDB file
and Dagster home (so no cache is shared) and is stopped once its `generated_samples` step has finished
(curation and evaluation would only add load to the others). Tokens and generation seconds come from
each process's `llm_cache` (seconds of a call = its batch's time / batch size, so their sum is the
process's generation time).

    python benchmarks/concurrent_runs.py --processes 1 2 --num-samples 16 --batch-size 4
    python benchmarks/concurrent_runs.py --pythonpath /path/to/old/checkout --keep-env   # a baseline

Prints one line per configuration and a RESULT line: aggregate tok/s of N at once / tok/s of 1 alone
(issue 10's target: 2 concurrent runs together >= 0.8x one run alone).

Specs (`--specs A B ...`, issue 11): whole runs of different specs on ONE Dagster home (the repo's
`dagster.yaml`: two runs at once, one per spec) and ONE warehouse, one after the other against all at
once (each way in a fresh home and warehouse, so no cache is shared between the two ways), through the
real run queue. `--server-latency S` points the specs at a stand-in OpenAI-compatible server on
loopback that answers each request after S seconds (a GPU server elsewhere: the machine's own cores
then do only the rest of the run); without it, the local model runs in each process.

    python benchmarks/concurrent_runs.py --specs specs/product_reviews.yaml specs/smartphone_reviews.yaml
    python benchmarks/concurrent_runs.py --specs specs/product_reviews.yaml specs/smartphone_reviews.yaml \
        --server-latency 0.5

Prints the CPU model, each way's wall time and rows per stage and spec, and a RESULT line: wall time
all at once / one after the other, and whether the row counts are equal.
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from seed_scaling import _Answer  # benchmarks/ is on sys.path when run as a script
from usefulness import cpu_model

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
        from synth_assets.storage import Warehouse

        totals = Warehouse(work / "w.duckdb").query(
            "SELECT coalesce(sum(completion_tokens), 0) AS tokens, coalesce(sum(seconds), 0) AS seconds "
            "FROM llm_cache"
        )
        results.append((int(totals["tokens"].iloc[0]), float(totals["seconds"].iloc[0])))
    return results


class _SlowAnswer(_Answer):
    """seed_scaling's stand-in OpenAI-compatible server (deterministic answers, many requests at once),
    answering each request after `latency` seconds, as a GPU server elsewhere would."""

    latency = 0.0

    def do_POST(self) -> None:
        time.sleep(self.latency)
        super().do_POST()


def _stub_server(latency: float) -> http.server.ThreadingHTTPServer:
    """`_SlowAnswer` on a free loopback port, served from a daemon thread."""
    handler = type("Answer", (_SlowAnswer,), {"latency": latency})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _run_specs(specs: list[Path], work: Path, together: bool, timeout_s: float) -> tuple[float, list[int]]:
    """Wall seconds for whole `synth-assets run`s of `specs` on one fresh home and warehouse in `work`,
    one after the other or all at once; and each process's exit code."""
    home = work / "home"
    home.mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")  # the repo's queue limits
    env = dict(os.environ) | {
        "PYTHONPATH": str(ROOT),
        "DAGSTER_HOME": str(home),
        "SYNTH_ASSETS_DB": str(work / "w.duckdb"),
    }
    commands = [[sys.executable, "-m", "synth_assets.cli", "run", "--spec", str(spec)] for spec in specs]
    started = time.monotonic()
    codes = []
    if together:
        logs = [open(work / f"run-{index}.log", "w") for index in range(len(specs))]  # noqa: SIM115
        processes = [
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            for command, log in zip(commands, logs, strict=True)
        ]
        codes = [process.wait(timeout=timeout_s) for process in processes]
        for log in logs:
            log.close()
    else:
        for index, command in enumerate(commands):
            with open(work / f"run-{index}.log", "w") as log:
                codes.append(
                    subprocess.run(
                        command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout_s
                    ).returncode
                )
    return time.monotonic() - started, codes


def _row_counts(database: Path, names: list[str]) -> dict[str, dict[str, int]]:
    """{spec: {stage: rows of the one version the run wrote}} (0 where the run wrote none)."""
    from synth_assets.storage import ROW_STAGES, Warehouse

    store = Warehouse(database)
    return {
        name: {
            stage: sum(v.rows for v in store.versions(stage, name, read_only=True)) for stage in ROW_STAGES
        }
        for name in names
    }


def compare_specs(args: argparse.Namespace) -> None:
    """The `--specs` mode: one after the other vs all at once (see the module docstring)."""
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}", flush=True)
    server = _stub_server(args.server_latency) if args.server_latency is not None else None
    try:
        with tempfile.TemporaryDirectory(prefix="concurrent_specs-") as tmp:
            folder = Path(tmp)
            copies = []
            for spec in args.specs:
                (folder / spec.stem).mkdir()
                copy = _spec_copy(
                    spec, folder / spec.stem, args.num_samples, args.batch_size, args.max_new_tokens
                )
                if server is not None:
                    data = yaml.safe_load(copy.read_text())
                    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
                    data["generation"] |= {"backend": "openai", "model": "stub", "base_url": url}
                    copy.write_text(yaml.safe_dump(data, sort_keys=False))
                copies.append(copy)
            names = [yaml.safe_load(copy.read_text())["name"] for copy in copies]
            dtype = yaml.safe_load(copies[0].read_text())["generation"].get("dtype", "auto")
            backend = (
                f"stub server, {args.server_latency} s per request"
                if server
                else f"local model, dtype {dtype}"
            )
            results = {}
            for way, together in (("one after the other", False), ("at once", True)):
                wall, codes = _run_specs(copies, folder / way.replace(" ", "_"), together, args.timeout)
                counts = _row_counts(folder / way.replace(" ", "_") / "w.duckdb", names)
                results[way] = (wall, counts)
                shown = "; ".join(
                    f"{name}: " + " ".join(f"{s}={n}" for s, n in c.items()) for name, c in counts.items()
                )
                print(f"{way}: {wall:.1f} s wall, exit codes {codes}; rows {shown}", flush=True)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    (sequential, rows_sequential), (together_s, rows_together) = results.values()
    equal = rows_sequential == rows_together
    print(
        f'RESULT concurrent_specs specs={",".join(names)} backend="{backend}" samples={args.num_samples} '
        f"sequential={sequential:.1f}s concurrent={together_s:.1f}s ratio={together_s / sequential:.2f} "
        f"rows_equal={equal}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", type=Path, default=ROOT / "specs" / "product_reviews.yaml")
    parser.add_argument(
        "--specs",
        type=Path,
        nargs="+",
        help="compare whole runs of these specs: one after the other vs at once",
    )
    parser.add_argument(
        "--server-latency", type=float, help="--specs: a stub server answering after this many seconds"
    )
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--pythonpath", default=str(ROOT), help="the checkout whose code runs (a baseline)")
    parser.add_argument("--keep-env", action="store_true", help="keep OMP_* from this shell")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per configuration")
    args = parser.parse_args()
    if args.specs:
        compare_specs(args)
        return
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
