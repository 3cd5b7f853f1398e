"""Where things live on disk: the project root, the Dagster home, reports."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout this package runs from (the folder holding `dagster.yaml` and `specs/`)."""
    return Path(__file__).resolve().parent.parent


def default_specs_dir() -> Path:
    configured = os.environ.get("SYNTH_ASSETS_SPECS_DIR")
    return Path(configured).resolve() if configured else project_root() / "specs"


def ensure_dagster_home() -> Path:
    """Respect a set `DAGSTER_HOME`; otherwise use the project root, whose `dagster.yaml` is the
    instance config, so `make run`, the CLI and `make ui` share one run history."""
    configured = os.environ.get("DAGSTER_HOME")
    if configured:
        home = Path(configured).resolve()
    else:
        root = project_root()
        home = root if (root / "dagster.yaml").exists() else Path.home() / ".synth_assets"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
