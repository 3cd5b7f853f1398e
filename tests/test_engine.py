"""The generation engine with the real local model: cache, incremental runs, resume, steps, structure."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
from conftest import write_tiny_spec

from synth_assets.generation.backends import LocalBackend
from synth_assets.generation.engine import generate_samples
from synth_assets.generation.prompts import expand_prompts
from synth_assets.generation.structured import parse_structured
from synth_assets.seed import load_seed_data
from synth_assets.spec import GenerationSpec, load_spec
from synth_assets.storage import Warehouse

REVIEW_SCHEMA = {
    "type": "object",
    "properties": {"review": {"type": "string", "minLength": 1}, "rating": {"type": "integer"}},
    "required": ["review", "rating"],
}


def test_parse_structured_repairs_common_mistakes() -> None:
    good = parse_structured('{"review": "Great kettle.", "rating": 5}', REVIEW_SCHEMA)
    assert good.value == {"review": "Great kettle.", "rating": 5} and not good.repaired
    fenced = parse_structured('Sure!\n```json\n{"review": "Fine.", "rating": 3,}\n```', REVIEW_SCHEMA)
    assert fenced.value == {"review": "Fine.", "rating": 3} and fenced.repaired
    unquoted = parse_structured("{review: 'Bad fit.', rating: 1}", REVIEW_SCHEMA)
    assert unquoted.value == {"review": "Bad fit.", "rating": 1}
    unclosed = parse_structured('{"review": "Loud fan.", "rating": 2', REVIEW_SCHEMA)
    assert unclosed.value == {"review": "Loud fan.", "rating": 2}
    wrong_type = parse_structured('{"review": "Ok.", "rating": "five"}', REVIEW_SCHEMA)
    assert wrong_type.value is None and wrong_type.error and "schema" in wrong_type.error
    assert parse_structured("no json here", REVIEW_SCHEMA).error == "no JSON object in the output"


@pytest.mark.parametrize(
    "output",
    [
        '{"review": "Great kettle.\nBoils fast.", "rating": 5}',  # newline inside a string
        '{"review": "Great kettle.", "rating": 5, "recommend": True}',  # Python's True
        '{"review": "Great kettle.", "rating": 5, "note": None}',  # Python's None
        '{"review": "Great kettle.", // the text\n "rating": 5}',  # a // comment
        '{"review": "The "best" kettle.", "rating": 5}',  # unescaped inner quotes
    ],
)
def test_json_repair_parses_what_small_models_write(output: str) -> None:
    parsed = parse_structured(output, REVIEW_SCHEMA)
    assert parsed.error is None and parsed.repaired
    assert parsed.value is not None and parsed.value["rating"] == 5 and "kettle" in parsed.value["review"]


def _prompts(spec: GenerationSpec) -> pd.DataFrame:
    return expand_prompts(spec, load_seed_data(spec))


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    return LocalBackend()


@pytest.mark.slow
def test_cache_makes_reruns_free_and_increments_cheap(tmp_path: Path, backend: LocalBackend) -> None:
    spec = load_spec(write_tiny_spec(tmp_path, num_samples=10, max_new_tokens=12))
    store = Warehouse(tmp_path / "w.duckdb")
    prompts = _prompts(spec)
    first = generate_samples(spec, prompts.head(9), backend, store, "run-1")
    assert first.stats.calls_made == 9 and first.stats.cache_hits == 0
    again = generate_samples(spec, prompts.head(9), backend, store, "run-2")
    assert again.stats.calls_made == 0 and again.stats.cache_hits == 9
    assert again.samples.drop(columns=[]).equals(first.samples)
    assert set(again.samples["generated_in_run"]) == {"run-1"}  # lineage: the run that really made it
    grown = generate_samples(spec, prompts, backend, store, "run-3")
    assert grown.stats.calls_made == 1 and grown.stats.cache_hits == 9
    cache = store.query("SELECT cache_key, count(*) AS n FROM llm_cache GROUP BY cache_key")
    assert len(cache) == 10 and (cache["n"] == 1).all()


@pytest.mark.slow
def test_multi_step_keeps_every_step_with_its_call(tmp_path: Path, backend: LocalBackend) -> None:
    extra = """steps:
  - name: critique
    template: "Name one thing that would make this review more specific: {{ steps.answer }}"
  - name: rewrite
    template: |
      Rewrite this {{ label }} review of {{ product }} using the advice. Reply with the review only.
      Review: {{ steps.answer }}
      Advice: {{ steps.critique }}
num_samples: 3"""
    spec = load_spec(
        write_tiny_spec(tmp_path, num_samples=3, max_new_tokens=12, replacements={"num_samples: 3": extra})
    )
    store = Warehouse(tmp_path / "w.duckdb")
    outcome = generate_samples(spec, _prompts(spec), backend, store, "run-1")
    assert len(outcome.samples) == 3
    for row in outcome.samples.itertuples():
        calls = json.loads(row.steps)["calls"]
        assert [c["step"] for c in calls] == ["answer", "critique", "rewrite"]
        assert row.cache_key == calls[-1]["cache_key"]
        assert row.completion_tokens == sum(c["completion_tokens"] for c in calls)
    assert outcome.stats.calls_made == 9
    assert generate_samples(spec, _prompts(spec), backend, store, "run-2").stats.calls_made == 0


@pytest.mark.slow
def test_structured_output_is_parsed_or_retried_and_reported(tmp_path: Path, backend: LocalBackend) -> None:
    extra = f"""structured_output:
  json_schema: {json.dumps(REVIEW_SCHEMA)}
  text_field: review
  max_attempts: 2
num_samples: 4"""
    spec = load_spec(
        write_tiny_spec(
            tmp_path,
            num_samples=4,
            max_new_tokens=48,
            replacements={
                "num_samples: 4": extra,
                "Reply with the review text only.": 'Reply with JSON only: {"review": "...", "rating": 1-5}',
            },
        )
    )
    outcome = generate_samples(spec, _prompts(spec), backend, Warehouse(tmp_path / "w.duckdb"), "r")
    stats = outcome.stats
    assert len(outcome.samples) + len(outcome.failures) == 4
    assert stats.structured_attempts == 4 + stats.structured_failures - len(outcome.failures)
    for row in outcome.samples.itertuples():
        structured = json.loads(row.steps)["structured"]
        assert row.text == structured["review"].strip() or row.text in structured["review"]
        assert isinstance(structured["rating"], int)
    for error in outcome.failures["error"]:
        assert "no valid JSON after 2 attempts" in error


RUNNER = textwrap.dedent(
    """
    import sys
    from synth_assets.generation.backends import LocalBackend
    from synth_assets.generation.engine import generate_samples
    from synth_assets.generation.prompts import expand_prompts
    from synth_assets.seed import load_seed_data
    from synth_assets.spec import load_spec
    from synth_assets.storage import Warehouse

    spec = load_spec(sys.argv[1])
    prompts = expand_prompts(spec, load_seed_data(spec))
    outcome = generate_samples(
        spec, prompts, LocalBackend(), Warehouse(sys.argv[2]), sys.argv[3],
        on_progress=lambda u: print(f"PROGRESS {u.done}/{u.total}", flush=True),
    )
    print(f"DONE made={outcome.stats.calls_made} hits={outcome.stats.cache_hits}", flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_mid_generation_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    spec_path = write_tiny_spec(
        tmp_path, num_samples=12, max_new_tokens=16, replacements={"batch_size: 8": "batch_size: 2"}
    )
    database = tmp_path / "w.duckdb"
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    process = subprocess.Popen(
        [sys.executable, str(runner), str(spec_path), str(database), "killed-run"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 600
    for line in process.stdout:
        if line.startswith("PROGRESS 4/") or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    store = Warehouse(database)
    finished_before = int(store.query("SELECT count(*) AS n FROM llm_cache")["n"].iloc[0])
    assert 4 <= finished_before < 12  # the batches written before the kill survived, not all were done

    resumed = subprocess.run(
        [sys.executable, str(runner), str(spec_path), str(database), "resumed-run"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"DONE made={12 - finished_before} hits={finished_before}" in resumed.stdout
    cache = store.query("SELECT cache_key, run_id FROM llm_cache")
    assert len(cache) == 12 and cache["cache_key"].is_unique
    assert set(cache["run_id"]) == {"killed-run", "resumed-run"}


@pytest.mark.slow
def test_exact_n_per_cell_moves_budget_to_failing_cells(tmp_path: Path, backend: LocalBackend) -> None:
    extra = "per_cell:\n  attributes: [product]\n  n: 2\n  budget_factor: 3\nnum_samples: 1"
    spec = load_spec(
        write_tiny_spec(tmp_path, num_samples=1, max_new_tokens=8, replacements={"num_samples: 1": extra})
    )
    prompts = _prompts(spec)
    assert prompts["cell"].value_counts().to_dict() == {
        json.dumps({"product": p}): 6 for p in ("headphones", "blender", "backpack")
    }
    cell_of = dict(zip(prompts["prompt_id"], prompts["cell"], strict=True))

    def accept(samples: pd.DataFrame) -> pd.Series:
        # a rule that every headphones sample fails: that cell must get its whole budget, no more
        return samples["prompt_id"].map(cell_of) != json.dumps({"product": "headphones"})

    logs: list[str] = []
    outcome = generate_samples(
        spec, prompts, backend, Warehouse(tmp_path / "w.duckdb"), "r", log=logs.append, accept=accept
    )
    made = outcome.samples["prompt_id"].map(cell_of).value_counts().to_dict()
    assert made == {
        json.dumps({"product": "headphones"}): 6,
        json.dumps({"product": "blender"}): 2,
        json.dumps({"product": "backpack"}): 2,
    }
    assert outcome.stats.prompts == 10
    assert any("did not reach 2 accepted samples" in line for line in logs)


@pytest.mark.slow
def test_self_instruct_rounds_draw_demos_from_the_growing_pool(tmp_path: Path, backend: LocalBackend) -> None:
    extra = "self_instruct:\n  per_round: 3\n  machine_demos: 1\nnum_samples: 6"
    spec = load_spec(
        write_tiny_spec(tmp_path, num_samples=6, max_new_tokens=20, replacements={"num_samples: 6": extra})
    )
    store = Warehouse(tmp_path / "w.duckdb")
    seed_rows = load_seed_data(spec)
    logs: list[str] = []
    outcome = generate_samples(
        spec, _prompts(spec), backend, store, "r", log=logs.append, seed_rows=seed_rows
    )
    steps = [json.loads(s) for s in outcome.samples["steps"]]
    # a sample that fails the ROUGE-L novelty check never reaches the dataset: it is a failure
    assert len(outcome.samples) + len(outcome.failures) == 6
    assert all(step["novelty"]["novel"] and 0.0 <= step["novelty"]["max_rouge_l"] < 0.7 for step in steps)
    assert all(error.startswith("not novel: ROUGE-L") for error in outcome.failures["error"])
    # the stored prompt_text is the prompt actually sent (with the pooled demos of its round)
    sent = store.query(
        "SELECT cache_key, messages FROM llm_cache WHERE cache_key IN (SELECT unnest(?))",
        [outcome.samples["cache_key"].tolist()],
    ).set_index("cache_key")["messages"]
    for key, step in zip(outcome.samples["cache_key"], steps, strict=True):
        assert json.loads(sent[key])[-1]["content"] == step["prompt_text"]
    round_two = set(_prompts(spec)["prompt_id"].iloc[3:])
    eligible = {
        sid: text
        for sid, text, step in zip(outcome.samples["sample_id"], outcome.samples["text"], steps, strict=True)
        if step["novelty"]["demo_eligible"]
    }
    assert eligible, "the model produced no novel, demo-worthy sample in round 1"
    for prompt_id, step in zip(outcome.samples["prompt_id"], steps, strict=True):
        if prompt_id in round_two:
            # every round-2 prompt shows one machine demo: a round-1 sample that passed the checks
            machine = [d.removeprefix("machine:") for d in step["demo_ids"] if d.startswith("machine:")]
            assert len(machine) == 1 and machine[0] in eligible
            assert eligible[machine[0]][:40] in step["prompt_text"]
    assert any("self-instruct round 2: pool" in line for line in logs)


class _SequenceHandler(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that answers requests in order from `answers`."""

    answers: ClassVar[list[str]] = []
    prompts: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).prompts.append(body["messages"][-1]["content"])
        text = type(self).answers.pop(0)
        data = json.dumps(
            {
                "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 9},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_self_instruct_drops_copies_and_never_pools_chat_wrapping_as_a_demo(tmp_path: Path) -> None:
    """Round 1 answers: chat wrapping (novel, but no demo), a copy of a seed row (not novel: never a
    sample), a good review (the only machine demo of round 2)."""
    from synth_assets.defs.generated_samples import cheap_acceptance
    from synth_assets.generation.backends import build_backend

    wrapped = "Sure! Here is a new review: The desk lamp is bright and its arm holds any angle well."
    copy = "These headphones sound amazing and the battery lasts all week."  # a seed row
    good = "The hiking backpack carries a whole weekend of gear and the straps never dig in."
    later = [
        "The blender crushes ice in seconds and rinses clean under the tap.",
        "My new headphones fold flat and the ear cushions stay cool on long flights.",
        "The travel backpack has a laptop sleeve that keeps my computer safe on the train.",
    ]
    _SequenceHandler.answers, _SequenceHandler.prompts = [wrapped, copy, good, *later], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SequenceHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        extra = "self_instruct:\n  per_round: 3\n  machine_demos: 1\nnum_samples: 6"
        backend_lines = (
            f"  backend: openai\n  model: scripted\n  base_url: {base_url}\n  max_concurrency: 1\n"
        )
        spec = load_spec(
            write_tiny_spec(
                tmp_path,
                replacements={
                    "num_samples: 6": extra,
                    "  temperature: 0.8": backend_lines + "  temperature: 0.8",
                },
            )
        )
        prompts = _prompts(spec)
        outcome = generate_samples(
            spec,
            prompts,
            build_backend(spec.generation),
            Warehouse(tmp_path / "w.duckdb"),
            "r",
            accept=lambda samples: cheap_acceptance(samples, prompts, spec),
            seed_rows=load_seed_data(spec),
        )
    finally:
        server.shutdown()
    texts = outcome.samples.set_index("text")
    assert copy not in texts.index and set(texts.index) == {wrapped, good, *later}
    assert outcome.failures["prompt_id"].tolist() == [prompts["prompt_id"].iloc[1]]
    assert outcome.failures["error"].iloc[0].startswith("not novel: ROUGE-L 1.00")
    steps = {
        text: json.loads(s) for text, s in zip(outcome.samples["text"], outcome.samples["steps"], strict=True)
    }
    assert not steps[wrapped]["novelty"]["demo_eligible"] and steps[good]["novelty"]["demo_eligible"]
    good_id = texts.loc[good, "sample_id"]
    for text in later:  # round 2: the one machine demo is the good review, never the chat wrapping
        assert [d for d in steps[text]["demo_ids"] if d.startswith("machine:")] == [f"machine:{good_id}"]
        assert good in steps[text]["prompt_text"] and wrapped not in steps[text]["prompt_text"]
    # the stored prompt_text is what the server received, and lineage shows it
    assert [steps[t]["prompt_text"] for t in later] == _SequenceHandler.prompts[3:]
    from synth_assets.lineage.chain import trace

    store = Warehouse(tmp_path / "w.duckdb")
    store.write_version("seed_data", spec.name, "r", load_seed_data(spec), promote=True)
    store.write_version("expanded_prompts", spec.name, "r", prompts, promote=True)
    store.write_version("generated_samples", spec.name, "r", outcome.samples, promote=True)
    chain = trace(store, texts.loc[later[0], "sample_id"])
    assert chain.prompt["prompt_text"] == _SequenceHandler.prompts[3]
    # its seed demos (k=2, one of them replaced by the machine demo), not the expanded prompt's
    assert len(chain.demos) == 1 and not chain.demos[0].get("missing")
    assert chain.demos[0]["text"] in _SequenceHandler.prompts[3]


@pytest.mark.slow
def test_multi_turn_dialogue_keeps_its_leading_speaker_tag(tmp_path: Path, backend: LocalBackend) -> None:
    """The assembled support dialogue starts with "Customer:": only each turn is cleaned of a
    lead-in, never the output_template's own speaker tags."""
    spec = load_spec(Path(__file__).resolve().parent.parent / "specs" / "support_conversations.yaml")
    spec = spec.model_copy(
        update={"num_samples": 2, "generation": spec.generation.model_copy(update={"max_new_tokens": 12})}
    )
    outcome = generate_samples(spec, _prompts(spec), backend, Warehouse(tmp_path / "w.duckdb"), "r")
    assert len(outcome.samples) == 2
    for text in outcome.samples["text"]:
        lines = text.splitlines()
        assert lines[0].startswith("Customer: ") and text.count("\nAgent: ") == 2, text
        assert sum(line.startswith("Customer: ") for line in lines) == 2, text


@pytest.mark.slow
def test_bfloat16_compute_is_its_own_model_fingerprint(tmp_path: Path) -> None:
    spec = load_spec(write_tiny_spec(tmp_path, num_samples=2, max_new_tokens=8))
    fast = LocalBackend(dtype="bfloat16")
    exact = LocalBackend(dtype="float32")
    assert fast.fingerprint == exact.fingerprint + "-bf16"
    store = Warehouse(tmp_path / "w.duckdb")
    outcome = generate_samples(spec, _prompts(spec), fast, store, "r")
    assert len(outcome.samples) == 2 and set(outcome.samples["model_fingerprint"]) == {fast.fingerprint}
    # a float32 run of the same prompts is a different model: nothing comes from the bf16 cache
    assert generate_samples(spec, _prompts(spec), exact, store, "r2").stats.cache_hits == 0


def test_cheap_acceptance_uses_curations_fast_heuristics(tmp_path: Path) -> None:
    from synth_assets.defs.generated_samples import cheap_acceptance

    spec = load_spec(write_tiny_spec(tmp_path))
    prompts = _prompts(spec)
    samples = pd.DataFrame(
        {
            "prompt_id": prompts["prompt_id"][:3],
            "label": prompts["label"][:3],
            "text": [
                "Great sound and the battery lasts for days, I am really happy with them.",
                "ok",  # too short
                "As an AI language model, I cannot write reviews.",  # assistant talk
            ],
        }
    )
    assert cheap_acceptance(samples, prompts, spec).tolist() == [True, False, False]


CHAT_TEMPLATE = "  Write one new {{ label }} review of {{ product }}. Reply with the review text only.\n"
LIST_TEMPLATE = """  {{ label | capitalize }} reviews of {{ product }}:
  {% for demo in demos %}
  - {{ demo.text }}
  {% endfor %}
  -
"""


@pytest.mark.slow
def test_continuation_mode_writes_the_next_list_item_without_a_chat_turn(
    tmp_path: Path, backend: LocalBackend
) -> None:
    spec = load_spec(
        write_tiny_spec(
            tmp_path,
            num_samples=6,
            max_new_tokens=40,
            replacements={
                CHAT_TEMPLATE: LIST_TEMPLATE,
                "strategy: stratified": "strategy: same_label",
                "  batch_size: 8": "  batch_size: 8\n  mode: continuation",
            },
        )
    )
    store = Warehouse(tmp_path / "w.duckdb")
    prompts = _prompts(spec)
    assert prompts["prompt_text"].str.endswith("-").all()
    outcome = generate_samples(spec, prompts, backend, store, "run-1")
    assert len(outcome.samples) == 6
    # one item each: the completion stops at the newline that ends the item
    assert not outcome.samples["text"].str.contains("\n").any()
    assert (outcome.samples["text"].str.len() > 0).all()
    calls = store.cached_calls(outcome.samples["cache_key"].tolist())
    messages = [json.loads(m) for m in calls["messages"]]
    # the raw list is what the model saw: no chat roles were rendered into it
    assert all(len(m) == 1 and m[0]["content"].endswith("-") for m in messages)
    stopped = outcome.samples["finish_reason"].eq("stop")
    assert stopped.mean() >= 0.5
