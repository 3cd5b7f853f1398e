"""Shared fixtures: a tiny spec with its own seed files, written into a temp folder."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


def write_openai_spec(
    folder: Path,
    base_url: str,
    model: str = "m",
    num_samples: int = 2,
    extra: str = "",
    max_new_tokens: int = 24,
    replacements: dict[str, str] | None = None,
) -> Path:
    """The tiny spec with `backend: openai` at `base_url`; `extra` adds generation settings (YAML lines,
    each indented two spaces and ending in a newline); `replacements` as in `write_tiny_spec`."""
    generation = f"  backend: openai\n  model: {model}\n  base_url: {base_url}\n{extra}  temperature: 0.8"
    return write_tiny_spec(
        folder,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        replacements={"  temperature: 0.8": generation, **(replacements or {})},
    )


# ---- a loopback OpenAI-compatible server that misbehaves on request -------------------------------

Respond = Callable[["LoopbackHandler", dict[str, Any], int], None]


def completion_payload(content: str = "fine answer") -> dict[str, Any]:
    return {
        "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3},
    }


class LoopbackHandler(http.server.BaseHTTPRequestHandler):
    respond: Respond
    models: list[dict[str, Any]]
    count: int
    in_flight: int
    lock: threading.Lock
    bodies: list[dict[str, Any]]
    protocol_version = "HTTP/1.1"

    def send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.send(200, {"object": "list", "data": type(self).models})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        with cls.lock:
            cls.count += 1
            cls.in_flight += 1
            number = cls.count
            cls.bodies.append(body)
        try:
            cls.respond(self, body, number)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def log_message(self, *args: object) -> None:
        pass


class LoopbackServer:
    """A real threaded HTTP server on 127.0.0.1 standing in for an OpenAI-compatible one: POST answers
    with `respond(handler, body, request_number)`, GET /models with `models`. Misbehaviour on purpose
    (outages, slow drips, malformed bodies, load-dependent latency) is written as `respond`."""

    def __init__(self, respond: Respond, models: list[dict[str, Any]] | None = None) -> None:
        attributes = {"respond": staticmethod(respond), "models": models or [], "count": 0, "in_flight": 0}
        handler = type("Handler", (LoopbackHandler,), {**attributes, "lock": threading.Lock(), "bodies": []})
        self.handler: type[LoopbackHandler] = handler
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loopback() -> Iterator[Callable[..., LoopbackServer]]:
    """Start loopback OpenAI-compatible servers (`loopback(respond, models)`); all closed afterwards."""
    servers: list[LoopbackServer] = []

    def start(respond: Respond, models: list[dict[str, Any]] | None = None) -> LoopbackServer:
        servers.append(LoopbackServer(respond, models))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def start_cli_run(spec_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """A real `synth-assets run --spec spec_path` subprocess in the repo root, stdout and stderr merged."""
    return subprocess.Popen(
        [sys.executable, "-m", "synth_assets.cli", "run", "--spec", str(spec_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )


@pytest.fixture(scope="session")
def embedder() -> Callable[..., Any]:
    """The real MiniLM model (offline, in a wheel), loaded once; each distinct text is embedded once
    per session."""
    import numpy as np

    from synth_assets.embeddings import embed

    cache: dict[str, Any] = {}

    def cached(texts: list[str]) -> Any:
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            cache.update(zip(missing, embed(missing), strict=True))
        return np.stack([cache[t] for t in texts]) if len(texts) else np.zeros((0, 384), np.float32)

    return cached
