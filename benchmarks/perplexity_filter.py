"""What curation.perplexity would flag on samples already generated: counts, overlap, examples.

Reads a warehouse (read-only): per spec, its current generated samples and seed rows, and the verdict
of its latest curation run (curated_set_history / rejected_samples_history). Runs the perplexity
filter (after the personal-data scrub and the repairs, as in curate) with its default settings, or
the ones given, through a registry of just those filters, and prints per spec how many samples it
flags, how many of those the run had already rejected (and why), how many it had kept, and examples.

Run: .venv/bin/python benchmarks/perplexity_filter.py data/synth_assets.ducklake [--specs a b]
     [--upper-quantile 0.99] [--margin 1.5] [--examples 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from collections import Counter

import duckdb
import pandas as pd

from synth_assets.storage import Warehouse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("warehouse")
    parser.add_argument("--specs", nargs="*", help="spec names (default: every spec with samples)")
    parser.add_argument("--upper-quantile", type=float, default=0.99)
    parser.add_argument("--margin", type=float, default=1.5)
    parser.add_argument("--examples", type=int, default=5)
    args = parser.parse_args()

    from synth_assets.curation.filters import FILTERS, FilterRegistry
    from synth_assets.curation.pipeline import CurationContext, curate
    from synth_assets.generation.local_llm import get_local_model
    from synth_assets.spec import CurationSpec, PerplexitySpec

    registry = FilterRegistry()
    for name in ("pii", "repairs", "perplexity"):
        registry.register(FILTERS[name])
    rules = CurationSpec(perplexity=PerplexitySpec(upper_quantile=args.upper_quantile, margin=args.margin))
    model = get_local_model()
    print(f"cpu: {platform.processor() or platform.machine()}; model {model.fingerprint}; float32")
    # the warehouse's own connection (its stage names are views of the DuckLake catalog), held to the end
    store = contextlib.ExitStack().enter_context(Warehouse(args.warehouse).connect(read_only=True))
    specs = args.specs or [
        row[0] for row in store.sql("SELECT DISTINCT spec_name FROM generated_samples ORDER BY 1").fetchall()
    ]
    for spec_name in specs:
        samples = store.execute("SELECT * FROM generated_samples WHERE spec_name = ?", [spec_name]).df()
        seed = store.execute("SELECT * FROM seed_data WHERE spec_name = ?", [spec_name]).df()
        prompts = store.execute("SELECT * FROM expanded_prompts WHERE spec_name = ?", [spec_name]).df()
        verdict = _latest_verdict(store, spec_name)
        started = time.perf_counter()
        outcome = curate(
            samples, prompts, rules, CurationContext(seed_rows=seed, local_model=model), registry
        )
        seconds = time.perf_counter() - started
        flagged = outcome.rejected
        before = flagged["sample_id"].map(verdict)
        already = Counter(r for reasons in before.dropna() if reasons for r in reasons)
        kept = flagged[before.map(lambda v: v == [])]
        ppl = outcome.scores.set_index("sample_id")["perplexity"]
        train_rows = int((seed["split"] == "train").sum())
        print(f"\n## {spec_name}: {len(samples)} samples, {train_rows} seed train rows, {seconds:.1f}s")
        print("  " + "; ".join(outcome.notes))
        print(
            f"  sample perplexity median {ppl.median():.1f}, p90 {ppl.quantile(0.9):.1f}; "
            f"flagged {len(flagged)} ({len(flagged) / max(1, len(samples)):.1%}): "
            f"already rejected by the run {int(before.map(bool).sum())} "
            f"(reasons {dict(already.most_common(5))}), kept by the run {len(kept)}, "
            f"not in the latest run {int(before.isna().sum())}"
        )
        for label, rows in (("kept by the run", kept), ("all flagged", flagged)):
            for row in rows.head(args.examples).itertuples(index=False):
                detail = json.loads(row.details).get("perplexity_outlier", "")
                print(f"  [{label}] {detail}: {row.text[:140]!r}")


def _latest_verdict(store: duckdb.DuckDBPyConnection, spec_name: str) -> dict[str, list[str]]:
    """sample_id -> the reasons its latest curation run rejected it for ([] when kept)."""
    run = store.execute(
        "SELECT run_id FROM curated_set_history WHERE spec_name = ? ORDER BY materialized_at DESC LIMIT 1",
        [spec_name],
    ).fetchone()
    if run is None:
        return {}
    kept = store.execute(
        "SELECT sample_id FROM curated_set_history WHERE spec_name = ? AND run_id = ?", [spec_name, run[0]]
    ).df()
    rejected = store.execute(
        "SELECT sample_id, reasons FROM rejected_samples_history WHERE spec_name = ? AND run_id = ?",
        [spec_name, run[0]],
    ).df()
    verdict: dict[str, list[str]] = {sample_id: [] for sample_id in kept["sample_id"]}
    verdict |= {sid: json.loads(r) for sid, r in zip(rejected["sample_id"], rejected["reasons"], strict=True)}
    return verdict


if __name__ == "__main__":
    pd.set_option("display.width", 160)
    main()
