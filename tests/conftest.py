"""Shared fixtures: a tiny spec with its own seed files, written into a temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

SEED_CSV = """review,sentiment
"These headphones sound amazing and the battery lasts all week.",positive
"Best blender I have owned, smoothies come out silky every time.",positive
"The running shoes are comfortable right out of the box.",positive
"Stopped working after two days and support never answered.",negative
"The zipper broke the first time I used this backpack.",negative
"Coffee tastes burnt no matter which setting I pick.",negative
"It does the job, nothing special but nothing wrong either.",neutral
"Average desk chair, fine for short sessions.",neutral
"The lamp is okay; the light is a bit cold for my taste.",neutral
"""

HOLDOUT_CSV = """review,sentiment
"Lovely kettle, boils fast and looks great on the counter.",positive
"The charger died within a week, total waste of money.",negative
"Decent mouse, the scroll wheel is a little loose.",neutral
"""

TINY_SPEC = """
name: tiny_reviews
description: a tiny spec for tests
seed:
  path: data/tiny_seed.csv
  text_column: review
  label_column: sentiment
  holdout_path: data/tiny_holdout.csv
labels: [positive, neutral, negative]
task: Write a short product review that expresses the given sentiment.
attributes:
  - name: product
    values: [headphones, blender, backpack]
    weights: [2, 1, 1]
few_shot:
  k: 2
  strategy: stratified
template: |
  {{ task }}
  {% for demo in demos %}
  Review ({{ demo.label }}): {{ demo.text }}
  {% endfor %}
  Write one new {{ label }} review of {{ product }}. Reply with the review text only.
num_samples: {num_samples}
random_seed: 7
generation:
  max_new_tokens: {max_new_tokens}
  temperature: 0.8
  batch_size: 8
curation:
  min_chars: 10
  max_chars: 600
gates:
  curated_min_rows: 1
"""


def write_tiny_spec(
    folder: Path,
    num_samples: int = 6,
    max_new_tokens: int = 24,
    replacements: dict[str, str] | None = None,
) -> Path:
    """Write the tiny spec and its seed files under `folder`; `replacements` swap text in the YAML."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "tiny_seed.csv").write_text(SEED_CSV)
    (folder / "data" / "tiny_holdout.csv").write_text(HOLDOUT_CSV)
    text = TINY_SPEC.replace("{num_samples}", str(num_samples)).replace(
        "{max_new_tokens}", str(max_new_tokens)
    )
    for old, new in (replacements or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = folder / "tiny_reviews.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def tiny_spec_path(tmp_path: Path) -> Path:
    return write_tiny_spec(tmp_path / "specs")
