"""Usefulness on real public data: does the product's curated data help a classifier on real held-out rows?

Protocol (fixed by issue 9, never tuned on the test split):
- per dataset a 30 % stratified test split (`random_state=0`) of the de-duplicated corpus;
- 16 real seed rows per label drawn from the rest, 5 draws (`random_state` = draw number);
- the product runs end to end on each draw through `synth-assets run`, with the dataset's spec from
  `benchmarks/specs/` (default local model), 10 synthetic rows requested per seed row;
- the classifier is TF-IDF word 1-2-grams + LogisticRegression(C=10, max_iter=2000), macro-F1 on the test
  split, trained on: the real seed only, real + curated, real + uncurated (every generated row),
  curated only, and all training rows (the ceiling).
Ablations (`--variants`) are spec overrides run on the same draws, so each technique's effect is read
against the same seeds. The LLM cache is shared across runs (one DuckDB file under --workdir), so a
variant that changes only curation costs no generation.

Prints a table per dataset and one line per dataset and variant:

RESULT dataset=<name> variant=<v> real=<f1> real_plus_curated=<f1> real_plus_uncurated=<f1>
       curated_only=<f1> ceiling=<f1> gain=<rc-real> curated_only_ratio=<c/real> ...

Run: .venv/bin/python benchmarks/usefulness.py [--datasets trec rotten_tomatoes] [--draws 5]
     [--variants default chat_stratified ...] [--workdir .bench/usefulness]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from public_datasets import LOADERS

ROOT = Path(__file__).resolve().parent.parent
SPECS = Path(__file__).resolve().parent / "specs"
PER_LABEL = 16
SYNTHETIC_PER_SEED = 10
TEST_SIZE = 0.3


def variants_of(dataset: str) -> dict[str, dict[str, Any]]:
    """`default` (the shipped spec) plus the ablations in `specs/<dataset>.ablations.yaml`: dotted spec
    overrides, each changing one technique so its row reads as "the default, but ..."."""
    path = SPECS / f"{dataset}.ablations.yaml"
    ablations = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}
    return {"default": {}, **(ablations or {})}


@dataclass
class RunResult:
    curated: pd.DataFrame
    generated: pd.DataFrame
    wall_s: float
    completion_tokens: int
    prompt_tokens: int
    ok: bool
    log_tail: str


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def macro_f1(train_texts: list[str], train_labels: list[str], test: pd.DataFrame) -> float:
    """The protocol's classifier: TF-IDF word 1-2-grams + LogisticRegression(C=10, max_iter=2000)."""
    from sklearn.metrics import f1_score

    if len(set(train_labels)) < 2:
        return float("nan")
    model = _classifier()
    model.fit(train_texts, train_labels)
    return float(f1_score(test["label"], model.predict(test["text"].tolist()), average="macro"))


def seed_cv_macro_f1(seed: pd.DataFrame, synthetic: pd.DataFrame, folds: int = 10) -> float:
    """Macro-F1 over out-of-fold predictions of the seed rows (stratified k-fold, `random_state=0`):
    each fold's seed rows are predicted by the protocol's classifier trained on the other seed rows
    plus the synthetic rows whose prompt showed none of the held-out rows (lineage: demo_ids, the
    anchor included). Uses no test row: this is how a setting is chosen from the seed alone. With an
    empty `synthetic` it is the real-only score. 10 folds, not leave-one-out: 10 fits instead of 96
    (LOO took ~3 min per TREC draw here), and about 60 % of the synthetic rows survive each fold's
    leakage filter at k=4 demos."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold

    texts, labels = seed["text"].tolist(), seed["label"].tolist()
    seed_ids = [f"train-{value}" for value in seed["id"]]  # the product's seed_id for an id_column value
    syn_texts = synthetic["text"].astype(str).tolist() if len(synthetic) else []
    syn_labels = synthetic["label"].astype(str).tolist() if len(synthetic) else []
    shown = synthetic["shown_seed_ids"].tolist() if len(synthetic) else []
    predicted = [""] * len(texts)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    for train_index, test_index in splitter.split(texts, labels):
        held_out = {seed_ids[i] for i in test_index}
        keep = [j for j, ids in enumerate(shown) if not ids & held_out]
        model = _classifier()
        model.fit(
            [texts[i] for i in train_index] + [syn_texts[j] for j in keep],
            [labels[i] for i in train_index] + [syn_labels[j] for j in keep],
        )
        for i, label in zip(test_index, model.predict([texts[i] for i in test_index]), strict=True):
            predicted[i] = label
    return float(f1_score(labels, predicted, average="macro"))


def _classifier() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression(C=10, max_iter=2000))


def split(corpus: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    corpus = corpus.assign(id=range(len(corpus)))[["id", "text", "label"]]
    train, test = train_test_split(corpus, test_size=TEST_SIZE, stratify=corpus["label"], random_state=0)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def draw_seed(train: pd.DataFrame, draw: int) -> pd.DataFrame:
    """16 rows per label; `id` is the row's position in the corpus, so lineage can name it."""
    return (
        train.groupby("label", group_keys=False).sample(n=PER_LABEL, random_state=draw).reset_index(drop=True)
    )


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def write_spec(dataset: str, variant: str, draw: int, seed: pd.DataFrame, folder: Path) -> Path:
    """The dataset's shipped spec, pointed at this draw's seed file, with the variant's overrides."""
    raw = yaml.safe_load((SPECS / f"{dataset}.yaml").read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    seed_file = folder / "seed.csv"
    seed.to_csv(seed_file, index=False)
    raw["name"] = f"bench-{dataset}-{variant}-d{draw}".replace("_", "-")
    raw["seed"]["path"] = str(seed_file)
    raw["seed"]["id_column"] = "id"
    raw["seed"].pop("holdout_path", None)
    raw["num_samples"] = SYNTHETIC_PER_SEED * len(seed)
    for dotted, value in variants_of(dataset)[variant].items():
        _set(raw, dotted, value)
    path = folder / f"{variant}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def run_product(spec_path: Path, spec_name: str, workdir: Path) -> RunResult:
    """`synth-assets run --spec` in a subprocess (the product as a user runs it), then this run's
    generated and curated rows read back from the DuckDB file."""
    env = {
        **os.environ,
        "SYNTH_ASSETS_DB": str(workdir / "bench.duckdb"),
        "DAGSTER_HOME": str(workdir / "dagster_home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    started = time.perf_counter()
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "synth-assets"), "run", "--spec", str(spec_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    tail = (completed.stdout + completed.stderr)[-2000:]
    from synth_assets.storage import Warehouse

    if not (workdir / "bench.duckdb").exists():
        raise RuntimeError(f"{spec_path}: the product wrote nothing; its output:\n{tail}")
    # the warehouse's own connection: the stage names are views of its DuckLake catalog
    with Warehouse(workdir / "bench.duckdb").connect(read_only=True) as connection:
        latest = connection.execute(
            "SELECT run_id FROM generated_samples_history WHERE spec_name = ? "
            "ORDER BY materialized_at DESC LIMIT 1",
            [spec_name],
        ).fetchone()
        if latest is None:
            raise RuntimeError(f"{spec_name}: no generated samples; product output:\n{tail}")
        run_id = latest[0]
        generated = connection.execute(
            "SELECT * FROM generated_samples_history WHERE spec_name = ? AND run_id = ?", [spec_name, run_id]
        ).df()
        curated = connection.execute(
            "SELECT * FROM curated_set_history WHERE spec_name = ? AND run_id = ?", [spec_name, run_id]
        ).df()
        # which seed rows each prompt showed (demos and anchor): for the leakage-free seed cross-validation
        demos = connection.execute(
            "SELECT p.prompt_id, p.demo_ids FROM expanded_prompts_history p "
            "JOIN generated_samples_history g ON g.prompt_id = p.prompt_id AND g.spec_name = p.spec_name "
            "WHERE p.spec_name = ? AND g.run_id = ? "
            "QUALIFY row_number() OVER (PARTITION BY p.prompt_id ORDER BY p.materialized_at DESC) = 1",
            [spec_name, run_id],
        ).df()
    shown = {
        pid: set(json.loads(ids)) for pid, ids in zip(demos["prompt_id"], demos["demo_ids"], strict=True)
    }
    for frame in (generated, curated):
        frame["shown_seed_ids"] = [shown.get(pid, set()) for pid in frame["prompt_id"]]
    return RunResult(
        curated=curated,
        generated=generated,
        wall_s=wall,
        completion_tokens=int(generated["completion_tokens"].sum()),
        prompt_tokens=int(generated["prompt_tokens"].sum()),
        ok=completed.returncode == 0,
        log_tail=tail,
    )


def _mean_sd(values: list[float]) -> str:
    array = np.asarray(values, dtype=float)
    return f"{np.nanmean(array):.3f} ± {np.nanstd(array, ddof=1) if len(array) > 1 else 0.0:.3f}"


def _read_only(database: Path) -> Any:
    """A reading connection to the warehouse (a DuckLake reader never waits for a product run)."""
    from synth_assets.storage import Warehouse

    return Warehouse(database).connect(read_only=True)


def recurate(dataset: str, variant: str, draw: int, seed: pd.DataFrame, workdir: Path) -> RunResult:
    """A curation-only ablation: the default variant's generated samples of this draw, curated again
    in this process by the product's own `curate` with the variant's curation settings. Costs no
    generation; the variant may change only `curation.*` (checked)."""
    from synth_assets.curation.pipeline import CurationContext, curate
    from synth_assets.embeddings import embed
    from synth_assets.generation.local_llm import get_local_model
    from synth_assets.spec import load_spec

    overrides = variants_of(dataset)[variant]
    if any(not key.startswith("curation.") for key in overrides):
        raise SystemExit(f"--recurate: variant '{variant}' changes more than curation: {sorted(overrides)}")
    spec = load_spec(write_spec(dataset, variant, draw, seed, workdir / dataset / f"d{draw}"))
    default_name = f"bench-{dataset}-default-d{draw}".replace("_", "-")
    with _read_only(workdir / "bench.duckdb") as connection:
        run = connection.execute(
            "SELECT run_id FROM generated_samples_history WHERE spec_name = ? "
            "ORDER BY materialized_at DESC LIMIT 1",
            [default_name],
        ).fetchone()
        if run is None:
            raise SystemExit(f"--recurate: run the default variant of {dataset} d{draw} first")
        frames = {
            stage: connection.execute(
                f"SELECT * FROM {stage}_history WHERE spec_name = ? AND run_id = ?", [default_name, run[0]]
            ).df()
            for stage in ("generated_samples", "expanded_prompts", "seed_data")
        }
    started = time.perf_counter()
    needs_model = spec.curation.label_fidelity in ("likelihood", "both")
    outcome = curate(
        frames["generated_samples"],
        frames["expanded_prompts"],
        spec.curation,
        CurationContext.for_spec(
            spec,
            seed_rows=frames["seed_data"],
            embed=embed,
            likelihood_model=get_local_model() if needs_model else None,
        ),
    )
    shown = {
        pid: set(json.loads(ids))
        for pid, ids in zip(
            frames["expanded_prompts"]["prompt_id"], frames["expanded_prompts"]["demo_ids"], strict=True
        )
    }
    generated, curated = frames["generated_samples"], outcome.curated.copy()
    for frame in (generated, curated):
        frame["shown_seed_ids"] = [shown.get(pid, set()) for pid in frame["prompt_id"]]
    return RunResult(
        curated=curated,
        generated=generated,
        wall_s=time.perf_counter() - started,
        completion_tokens=0,
        prompt_tokens=0,
        ok=True,
        log_tail="",
    )


def bench_dataset(
    dataset: str, variants: list[str], draws: int, workdir: Path, log: Any, recurated: bool = False
) -> list[dict[str, Any]]:
    corpus = LOADERS[dataset]()
    train, test = split(corpus)
    ceiling = macro_f1(train["text"].tolist(), train["label"].tolist(), test)
    log(f"\n## {dataset}: {len(corpus)} rows, test {len(test)}, labels {sorted(corpus['label'].unique())}")
    summaries = []
    for variant in variants:
        rows = []
        for draw in range(draws):
            seed = draw_seed(train, draw)
            spec_name = f"bench-{dataset}-{variant}-d{draw}".replace("_", "-")
            if recurated:
                result = recurate(dataset, variant, draw, seed, workdir)
            else:
                spec_path = write_spec(dataset, variant, draw, seed, workdir / dataset / f"d{draw}")
                result = run_product(spec_path, spec_name, workdir)
            real_t, real_l = seed["text"].tolist(), seed["label"].tolist()
            curated = result.curated
            cur_t, cur_l = curated["text"].astype(str).tolist(), curated["label"].astype(str).tolist()
            gen_t = result.generated["text"].fillna("").astype(str).tolist()
            gen_l = result.generated["label"].astype(str).tolist()
            row = {
                "draw": draw,
                "real": macro_f1(real_t, real_l, test),
                "real_plus_curated": macro_f1(real_t + cur_t, real_l + cur_l, test),
                "real_plus_uncurated": macro_f1(real_t + gen_t, real_l + gen_l, test),
                "curated_only": macro_f1(cur_t, cur_l, test) if cur_t else float("nan"),
                "seed_cv_real": seed_cv_macro_f1(seed, curated.iloc[0:0]),
                "seed_cv_real_plus_curated": seed_cv_macro_f1(seed, curated),
                "generated_rows": len(result.generated),
                "curated_rows": len(curated),
                "wall_s": result.wall_s,
                "completion_tokens": result.completion_tokens,
                "product_exit_ok": result.ok,
            }
            rows.append(row)
            log(
                f"  {variant} d{draw}: real {row['real']:.3f}  real+curated {row['real_plus_curated']:.3f}  "
                f"real+uncurated {row['real_plus_uncurated']:.3f}  curated-only {row['curated_only']:.3f}  "
                f"seed-CV {row['seed_cv_real']:.3f} -> {row['seed_cv_real_plus_curated']:.3f}  "
                f"({row['curated_rows']}/{row['generated_rows']} kept, {row['wall_s']:.0f}s, "
                f"{row['completion_tokens']} tokens{'' if result.ok else ', product exit != 0'})"
            )
        frame = pd.DataFrame(rows)
        summary = {
            "dataset": dataset,
            "variant": variant,
            "draws": draws,
            "ceiling": ceiling,
            **{
                f"{key}_{stat}": float(getattr(frame[key], stat)())
                for key in (
                    "real",
                    "real_plus_curated",
                    "real_plus_uncurated",
                    "curated_only",
                    "seed_cv_real",
                    "seed_cv_real_plus_curated",
                )
                for stat in ("mean", "std")
            },
            "curated_rows_mean": float(frame["curated_rows"].mean()),
            "generated_rows_mean": float(frame["generated_rows"].mean()),
            "wall_s_total": float(frame["wall_s"].sum()),
            "completion_tokens_total": int(frame["completion_tokens"].sum()),
            "per_draw": rows,
        }
        summaries.append(summary)
        log(
            f"| {variant} | {_mean_sd(frame['real'])} | {_mean_sd(frame['real_plus_curated'])} | "
            f"{_mean_sd(frame['real_plus_uncurated'])} | {_mean_sd(frame['curated_only'])} | "
            f"{ceiling:.3f} | {summary['curated_rows_mean']:.0f}/{summary['generated_rows_mean']:.0f} | "
            f"{summary['wall_s_total']:.0f} s | {summary['completion_tokens_total']} | "
            f"{_mean_sd(frame['seed_cv_real'])} → {_mean_sd(frame['seed_cv_real_plus_curated'])} |"
        )
    return summaries


def result_line(summary: dict[str, Any]) -> str:
    real = summary["real_mean"]
    fields = {
        "dataset": summary["dataset"],
        "variant": summary["variant"],
        "draws": summary["draws"],
        "real": f"{real:.3f}",
        "real_plus_curated": f"{summary['real_plus_curated_mean']:.3f}",
        "real_plus_uncurated": f"{summary['real_plus_uncurated_mean']:.3f}",
        "curated_only": f"{summary['curated_only_mean']:.3f}",
        "ceiling": f"{summary['ceiling']:.3f}",
        "gain": f"{summary['real_plus_curated_mean'] - real:+.3f}",
        "curation_gain": f"{summary['real_plus_curated_mean'] - summary['real_plus_uncurated_mean']:+.3f}",
        "curated_only_ratio": f"{summary['curated_only_mean'] / real:.2f}",
        "seed_cv_gain": f"{summary['seed_cv_real_plus_curated_mean'] - summary['seed_cv_real_mean']:+.3f}",
        "wall_s": f"{summary['wall_s_total']:.0f}",
        "tokens": summary["completion_tokens_total"],
    }
    return "RESULT " + " ".join(f"{key}={value}" for key, value in fields.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["trec", "rotten_tomatoes"], choices=sorted(LOADERS))
    parser.add_argument("--variants", nargs="+", default=["default"], help="default and/or ablations")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".bench" / "usefulness")
    parser.add_argument("--json", type=Path, help="also write every number here")
    parser.add_argument(
        "--recurate",
        action="store_true",
        help="curation-only ablations: re-curate the default run's samples in-process (no generation)",
    )
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)

    print(f"CPU: {cpu_model()}, {len(os.sched_getaffinity(0))} cores; dtype: the spec's (auto)")
    print(
        "| variant | real only | real + curated | real + uncurated | curated only | ceiling | kept | wall | "
        "tokens | seed 10-fold CV: real → real + curated |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for dataset in args.datasets:
        unknown = sorted(set(args.variants) - set(variants_of(dataset)))
        if unknown:
            parser.error(f"{dataset}: unknown variants {unknown}; known: {sorted(variants_of(dataset))}")
    summaries = []
    for dataset in args.datasets:
        summaries += bench_dataset(dataset, args.variants, args.draws, args.workdir, print, args.recurate)
    print()
    for summary in summaries:
        print(result_line(summary))
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=2, default=float), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
