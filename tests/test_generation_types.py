"""The generation seams (issue 13 item 4): request/result types in their own module, a documented
`Backend` protocol, the HTTP backend's own settings, a factory that reads secrets without Dagster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from synth_assets.generation import backends, local_llm, types
from synth_assets.generation.backends import (
    HTTPSettings,
    LocalBackend,
    OpenAICompatibleBackend,
    build_backend,
)
from synth_assets.spec import GenerationParams

REPO = Path(__file__).resolve().parent.parent


def test_the_types_and_the_http_factory_load_without_torch_transformers_or_dagster() -> None:
    # a real fresh interpreter: what is already imported in the test process says nothing
    script = (
        "import json, os, sys\n"
        "from synth_assets.generation.types import ChatRequest, ChatResult, CallFailure, Backend\n"
        "from synth_assets.generation.backends import build_backend\n"
        "from synth_assets.spec import GenerationParams\n"
        "os.environ['SYNTH_SEAM_KEY'] = 'sk-seam'\n"
        "params = GenerationParams(backend='openai', model='m', base_url='http://127.0.0.1:9/v1/',"
        " api_key_env='SYNTH_SEAM_KEY')\n"
        "backend = build_backend(params)\n"
        "print(json.dumps({'key': backend.redact('sk-seam'), 'url': backend.base_url,"
        " 'loaded': [m for m in ('torch', 'transformers', 'dagster') if m in sys.modules]}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120, check=True
    )
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    assert shown == {"key": "[redacted]", "url": "http://127.0.0.1:9/v1", "loaded": []}


def test_the_old_import_paths_give_the_same_types() -> None:
    for name in ("ChatRequest", "ChatResult", "ProgressUpdate", "cut_at_stop"):
        assert getattr(local_llm, name) is getattr(types, name)
    for name in ("Backend", "CallFailure", "BatchCallback", "ProgressCallback"):
        assert getattr(backends, name) is getattr(types, name)


def test_the_http_backend_takes_its_own_settings_from_the_generation_block() -> None:
    params = GenerationParams(
        backend="openai", model="m", base_url="http://127.0.0.1:9/v1/", model_revision="abc",
        max_concurrency=3, timeout_s=7.5, max_retries=1, temperature=0.3,
    )  # fmt: skip
    settings = HTTPSettings.from_params(params)
    assert settings == HTTPSettings("http://127.0.0.1:9/v1", "m", "abc", 3, 7.5, 1)
    backend = OpenAICompatibleBackend(params)
    assert backend.settings == settings and backend.fingerprint == "openai:m@abc"
    with pytest.raises(ValueError, match="base_url"):
        HTTPSettings.from_params(GenerationParams().model_copy(update={"backend": "openai"}))


def test_the_factory_takes_a_key_read_elsewhere_and_names_an_unset_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params = GenerationParams(
        backend="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env="SEAM_K"
    )
    monkeypatch.delenv("SEAM_K", raising=False)
    with pytest.raises(
        ValueError, match=r"^environment variable SEAM_K \(generation.api_key_env\) is not set$"
    ):
        build_backend(params)
    # a Dagster resource that read the key through dg.EnvVar hands it over; the factory does not ask again
    backend = build_backend(params, api_key="sk-given")
    assert isinstance(backend, OpenAICompatibleBackend) and backend.redact("sk-given") == "[redacted]"
    assert not isinstance(backend, LocalBackend)
