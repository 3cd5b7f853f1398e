"""Wall time of a 48-sample run against the size of the seed file (issue 14: 100k seed rows, 20 minutes).

The default demo spec (`specs/product_reviews.yaml`) with its seed file grown to 1k / 10k / 100k rows by
repeating the 60 real reviews, each copy varied (a few words swapped for synonyms and an order number
appended, so no two rows are equal and exact dedup cannot collapse them). Generation goes to an
in-process loopback OpenAI-compatible server that answers at once, deterministically, so what is timed
is our own work (loading, checking, prompting, curating, evaluating), not the model. Each size runs the
real CLI in a subprocess with its own DuckDB file and Dagster home; stage times are Dagster's step times.

    python benchmarks/seed_scaling.py                       # 1k, 10k, 100k
    python benchmarks/seed_scaling.py --rows 1000 10000     # fewer sizes

The instant answers are templated (a sentence per label, the product and a digest), so the curated gate
may refuse them as near duplicates; then `evaluation_report` does not run and is not timed (the summary
line under each size says so). Its own seed work (every seed train row embedded) is not measured here.

Prints one line per size with the stage wall times, the CPU model, and a RESULT line with the
100k / 1k (largest / smallest) end-to-end time ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import yaml
from usefulness import cpu_model  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "product_reviews.yaml"
STAGES = ("seed_data", "expanded_prompts", "generated_samples", "curated_set", "evaluation_report")
SWAPS = (("great", "excellent"), ("good", "fine"), ("bad", "poor"), ("very", "really"), ("the", "this"))
ANSWERS = {
    "positive": "I love this {thing}; it works perfectly and I would happily buy it again {tag}.",
    "neutral": "This {thing} is okay; some parts are good, others could be better {tag}.",
    "negative": "This {thing} broke within a week and support never answered my emails {tag}.",
}


def grown_seed(seed: pd.DataFrame, text_column: str, rows: int) -> pd.DataFrame:
    """`rows` rows made from `seed` by repeating it, each copy varied so all texts differ."""
    out = seed.iloc[[i % len(seed) for i in range(rows)]].reset_index(drop=True).copy()
    texts = []
    for i, text in enumerate(out[text_column].astype(str)):
        copy = i // len(seed)
        for bit, (old, new) in enumerate(SWAPS):
            if copy >> bit & 1:
                text = text.replace(f" {old} ", f" {new} ")
        texts.append(text if copy == 0 else f"{text} (order {copy})")
    out[text_column] = texts
    return out


class _Answer(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible chat/completions endpoint that answers at once: a review of the requested
    sentiment and product, different for every prompt (a digest of the prompt)."""

    protocol_version = "HTTP/1.1"

    def _send(self, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send({"object": "list", "data": []})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = json.dumps(body.get("messages") or body.get("prompt"))
        label = next((name for name in ANSWERS if name.capitalize() in prompt), "neutral")
        thing = prompt.split("the next one is about a ", 1)[-1].split(",", 1)[0][:40]
        tag = hashlib.sha256(prompt.encode()).hexdigest()[:6]
        text = ANSWERS[label].format(thing=thing, tag=f"(ref {tag})")
        self._send(
            {
                "choices": [{"message": {"content": text}, "text": text, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20},
            }
        )

    def log_message(self, *args: object) -> None:
        pass


def write_spec(folder: Path, rows: int, base_url: str) -> Path:
    """The demo spec with a seed of `rows` rows and the openai backend at `base_url`, under `folder`."""
    spec = yaml.safe_load(SPEC.read_text())
    seed = pd.read_csv(SPEC.parent / spec["seed"]["path"])
    (folder / "data").mkdir(parents=True, exist_ok=True)
    grown_seed(seed, spec["seed"]["text_column"], rows).to_csv(folder / "data" / "seed.csv", index=False)
    spec["seed"]["path"] = "data/seed.csv"
    spec["seed"]["holdout_path"] = str((SPEC.parent / spec["seed"]["holdout_path"]).resolve())
    spec["generation"] = {
        **spec["generation"],
        "backend": "openai",
        "model": "instant",
        "base_url": base_url,
        "mode": "chat",
    }
    spec.get("gates", {}).pop("curated_min_rows", None)
    target = folder / SPEC.name
    target.write_text(yaml.safe_dump(spec, sort_keys=False))
    return target


def run_once(rows: int, base_url: str, pythonpath: str, timeout_s: float) -> dict[str, float | str]:
    """Stage wall times (s), the process's end-to-end time (`total`) and the closing summary (`summary`)
    of one run on `rows` seed rows."""
    import dagster as dg

    with tempfile.TemporaryDirectory(prefix=f"seed_scaling_{rows}_") as tmp:
        work = Path(tmp)
        spec_path = write_spec(work / "specs", rows, base_url)
        (work / "home").mkdir()
        (work / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env = {
            **os.environ,
            "DAGSTER_HOME": str(work / "home"),
            "SYNTH_ASSETS_DB": str(work / "w.duckdb"),
            "PYTHONPATH": pythonpath,
        }
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "synth_assets.cli", "run", "--spec", str(spec_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout_s,
            cwd=ROOT,
        )
        total = time.perf_counter() - started
        if done.returncode not in (0, 1):
            raise SystemExit(f"{rows} rows: run failed ({done.returncode}): {done.stderr[-2000:]}")
        times: dict[str, float | str] = {"total": total}
        # the closing summary says which stages were made and promoted (a refused gate skips the rest)
        times["summary"] = " | ".join(line.strip() for line in done.stdout.strip().splitlines()[-4:])
        with dg.DagsterInstance.from_config(str(work / "home")) as instance:
            (run,) = instance.get_runs()
            for step in instance.get_run_step_stats(run.run_id):
                if step.start_time and step.end_time:
                    times[step.step_key] = step.end_time - step.start_time
        return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--pythonpath", default=str(ROOT), help="checkout whose code runs (a baseline)")
    parser.add_argument("--timeout-s", type=float, default=3600)
    args = parser.parse_args()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); code: {args.pythonpath}")
    results: dict[int, dict[str, float | str]] = {}
    for rows in args.rows:
        times = run_once(rows, base_url, args.pythonpath, args.timeout_s)
        results[rows] = times
        stages = "  ".join(
            f"{stage} {times[stage]:.1f}s" if stage in times else f"{stage} not run" for stage in STAGES
        )
        print(f"seed rows {rows:>7,}: total {times['total']:.1f}s  {stages}", flush=True)
        print(f"  summary: {times['summary']}", flush=True)
    server.shutdown()
    small, large = min(results), max(results)
    ratio = float(results[large]["total"]) / float(results[small]["total"])
    print(f"RESULT seed_scaling total_{large}/total_{small} = {ratio:.2f}")


if __name__ == "__main__":
    main()
