"""The usefulness benchmark's specs (and every ablation of them) load, validate and render prompts."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from synth_assets.generation.prompts import expand_prompts
from synth_assets.seed import load_seed_data
from synth_assets.spec import load_spec

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import usefulness  # noqa: E402

DATASETS = sorted(p.stem for p in (BENCHMARKS / "specs").glob("*.yaml") if "." not in p.stem)
CASES = [(dataset, variant) for dataset in DATASETS for variant in usefulness.variants_of(dataset)]


def test_every_public_dataset_has_a_spec() -> None:
    assert set(DATASETS) == set(usefulness.LOADERS)


@pytest.mark.parametrize(("dataset", "variant"), CASES)
def test_spec_and_ablation_render_prompts_for_a_seed_draw(dataset: str, variant: str, tmp_path: Path) -> None:
    labels = yaml.safe_load((BENCHMARKS / "specs" / f"{dataset}.yaml").read_text())["labels"]
    seed = pd.DataFrame(
        {
            "id": range(6 * len(labels)),
            "text": [f"example {i} text for {label} rows" for label in labels for i in range(6)],
            "label": [label for label in labels for _ in range(6)],
        }
    )
    spec = load_spec(usefulness.write_spec(dataset, variant, 0, seed, tmp_path))
    assert spec.num_samples == usefulness.SYNTHETIC_PER_SEED * len(seed)
    prompts = expand_prompts(spec, load_seed_data(spec))
    assert len(prompts) == spec.num_samples
    if spec.generation.mode == "continuation":
        assert prompts["prompt_text"].str.endswith("-").all()  # the model writes the next list item
