"""Every YAML spec snippet in README.md loads: one is a whole spec (the one under "Writing a spec"; its
seed paths are the demo spec's, relative to `specs/`); every other one is a fragment, laid over that
spec as a user would."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from synth_assets.spec import load_spec, read_spec_yaml

REPO = Path(__file__).resolve().parent.parent
SNIPPETS = re.findall(r"^```yaml\n(.*?)^```", (REPO / "README.md").read_text(), flags=re.S | re.M)
WHOLE_SPEC_FIELDS = {"name", "seed", "labels", "template", "num_samples"}


def _whole_spec() -> dict[str, Any]:
    """The first snippet that is a whole spec (fragments come before it too, e.g. `automation:`)."""
    return next(s for s in map(read_spec_yaml, SNIPPETS) if set(s) >= WHOLE_SPEC_FIELDS)


def _merge(base: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in fragment.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _merge(base[key], value) if nested else value
    return merged


def _holds(loaded: Any, written: Any) -> bool:
    """Whether the loaded spec holds what the snippet wrote (defaults may add fields; YAML's `off`,
    read as false, is the setting "off")."""
    if isinstance(written, dict):
        return isinstance(loaded, dict) and all(_holds(loaded.get(k), v) for k, v in written.items())
    if isinstance(written, list):
        return isinstance(loaded, list) and len(loaded) == len(written) and all(map(_holds, loaded, written))
    return loaded == written or (written is False and loaded == "off")


def test_the_readme_has_spec_snippets_and_one_is_a_whole_spec() -> None:
    assert len(SNIPPETS) >= 4
    assert set(_whole_spec()) >= WHOLE_SPEC_FIELDS


@pytest.mark.parametrize("index", range(len(SNIPPETS)), ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_every_readme_yaml_snippet_loads(tmp_path: Path, index: int) -> None:
    fragment = read_spec_yaml(SNIPPETS[index])
    assert isinstance(fragment, dict), SNIPPETS[index]
    merged = _merge(_whole_spec(), fragment)
    for field in ("path", "holdout_path"):  # the demo spec's seed files, relative to specs/
        merged["seed"][field] = str(REPO / "specs" / merged["seed"][field])
    path = tmp_path / "readme_spec.yaml"
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    spec = load_spec(path)
    loaded = spec.model_dump(mode="json")
    # `automation` is left out of dumps on purpose (not part of the fingerprint); compare it directly
    loaded["automation"] = spec.automation.model_dump(mode="json")
    assert _holds(loaded, {key: value for key, value in fragment.items() if key != "seed"})
