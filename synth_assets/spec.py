"""The generation spec: one pydantic model that every stage reads.

A spec is a YAML file. Paths inside it (seed files) are relative to the spec file, so a spec and
its data can be moved together. Loading errors are raised as `SpecError` with one line that names
the file, the field and the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from synth_assets import templates

SEED_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".json": "json"}
# template variables every prompt gets; an attribute with one of these names would shadow it
RESERVED_TEMPLATE_NAMES = {
    "task", "label", "labels", "attributes", "demos", "anchor", "typical_words", "steps", "prompt",
}  # fmt: skip
LOCAL_MODEL = "smollm2-135m-instruct"
SPEC_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")
# the most prompts one spec may plan: `num_samples`' own cap, and per_cell's cells x budget
MAX_PROMPTS = 100_000


def _off_for_false(value: Any) -> Any:
    """YAML 1.1 reads a bare `off` as `false`; a setting whose choices include "off" takes it as "off"."""
    return "off" if value is False else value


class SpecError(ValueError):
    """A spec or seed file that cannot be used; the message is one line naming file, field, problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeedSpec(_Strict):
    """The small real labeled dataset the generation is grounded in."""

    path: Path = Field(description="CSV, Parquet or JSONL file, relative to the spec file")
    text_column: str
    label_column: str
    id_column: str | None = Field(
        default=None, description="stable row id column; a content hash is used when absent"
    )
    holdout_path: Path | None = Field(
        default=None,
        description="real rows that generation never sees, used only by the evaluation",
    )
    min_rows: int = Field(default=3, ge=1)

    @field_validator("path", "holdout_path")
    @classmethod
    def _known_format(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix.lower() not in SEED_SUFFIXES:
            raise ValueError(
                f"unsupported seed format '{value.suffix}' (use .csv, .parquet, .jsonl or .json)"
            )
        return value


class AttributeSpec(_Strict):
    """A condition sampled per prompt: `values` with optional `weights` (default uniform)."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    values: list[str] = Field(min_length=1)
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _weights_match(self) -> AttributeSpec:
        if self.weights is not None:
            if len(self.weights) != len(self.values):
                raise ValueError(
                    f"attribute '{self.name}' has {len(self.values)} values but {len(self.weights)} weights"
                )
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError(f"attribute '{self.name}' weights must be >= 0 and not all 0")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"attribute '{self.name}' has repeated values")
        return self

    def normalized_weights(self) -> list[float]:
        raw = self.weights or [1.0] * len(self.values)
        total = float(sum(raw))
        return [w / total for w in raw]


class PerCellSpec(_Strict):
    """Exact-N: `n` accepted samples for every combination of these attributes (and/or `label`).

    Generation runs in waves and stops a cell once it has `n` samples that pass the cheap curation
    rules; cells whose samples keep failing get more of the budget, up to `budget_factor` x n each.
    """

    attributes: list[str] = Field(min_length=1, description="attribute names; 'label' is allowed")
    n: int = Field(ge=1, le=10_000)
    budget_factor: float = Field(default=3.0, ge=1.0, le=20.0)


class SelfInstructSpec(_Strict):
    """Self-Instruct bootstrapping: prompts run in rounds; demos mix seed rows with accepted machine
    samples; a sample joins the pool only if its ROUGE-L to every pooled item is below `threshold`."""

    per_round: int = Field(default=8, ge=1)
    threshold: float = Field(default=0.7, gt=0.0, le=1.0)
    machine_demos: int = Field(default=1, ge=0, description="demos per prompt taken from the machine pool")


class FewShotSpec(_Strict):
    """How in-context demonstrations are drawn from the seed data."""

    k: int = Field(default=3, ge=0, le=32)
    strategy: Literal["stratified", "same_label", "random", "nearest"] = Field(
        default="stratified",
        description=(
            "stratified: demos spread over labels, starting with the target label; "
            "same_label: demos share the target label; random: any seed rows; "
            "nearest: the k seed rows of the target label closest to the prompt's anchor row "
            "(all-MiniLM-L6-v2 cosine, kNN demo retrieval as in Liu et al. 2022, 'What Makes Good "
            "In-Context Examples for GPT-3?'), least similar first"
        ),
    )


class GenerationParams(_Strict):
    """Which model answers the prompts, and how."""

    backend: Literal["local", "openai", "llama_cpp"] = Field(
        default="local",
        description="local: transformers on this machine; openai: any OpenAI-compatible server "
        "(vLLM, llama.cpp server, Ollama, a hosted API); llama_cpp: a GGUF file run in this process by "
        "llama.cpp (needs synth-assets[server])",
    )
    model: str = Field(
        default=LOCAL_MODEL, description=f"'{LOCAL_MODEL}' for the local backend; the server's model name"
    )
    base_url: str | None = Field(default=None, description="e.g. http://127.0.0.1:8000/v1 (openai backend)")
    api_key_env: str | None = Field(
        default=None, description="name of the environment variable holding the API key (never the key)"
    )
    max_new_tokens: int = Field(default=96, ge=1, le=4096)
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.1, ge=1.0, le=2.0)
    batch_size: int = Field(
        default=64,
        ge=1,
        le=256,
        description="prompts decoded at once (local: continuous-batching slots, 64 measured 1.18x faster "
        "than 32 on the demo workload) and answers stored per write (openai: also every 10 s); does not "
        "change the output in float32",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="local backend: auto = bfloat16 on CPUs with native bf16 (about 2x faster; a prompt's "
        "text then depends on its batch), else float32 (batch-independent). Part of the model fingerprint.",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="local backend: CPU threads (default: the usable cores left free by the current load, "
        "see synth_assets/runtime.py); not part of the fingerprint",
    )
    max_concurrency: int = Field(default=8, ge=1, le=256, description="openai: requests in flight")
    timeout_s: float = Field(
        default=120.0, gt=0, description="openai: deadline of each request, the whole answer included"
    )
    max_retries: int = Field(default=4, ge=0, le=20, description="openai: on 429, 5xx, connection errors")
    model_revision: str | None = Field(
        default=None,
        description="openai: what identifies the served weights (e.g. a checkpoint hash); part of the "
        "model fingerprint instead of what the server reports in /models, so cached answers follow the model",
    )
    system_prompt: str | None = None
    mode: Literal["chat", "continuation"] = Field(
        default="chat",
        description="chat: the rendered template is the user message of a chat turn; continuation: the "
        "rendered template is raw text (no chat template) that the model continues, e.g. a labeled list "
        "whose next item it writes. Small instruct models imitate lists better than they follow "
        "instructions (measured: benchmarks/usefulness.py). The openai backend then calls /completions.",
    )
    stop: list[str] | None = Field(
        default=None,
        description="strings that end a completion (cut there, not kept); continuation default: a newline, "
        "the end of one list item",
    )

    @model_validator(mode="after")
    def _backend_settings(self) -> GenerationParams:
        if self.backend == "local" and self.model != LOCAL_MODEL and not self.names_a_model_path():
            raise ValueError(
                f"the local backend runs '{LOCAL_MODEL}', a .gguf file or a Hugging Face model folder "
                f"given by path (got '{self.model}')"
            )
        if (
            self.backend == "llama_cpp"
            and self.model != LOCAL_MODEL
            and not self.model.lower().endswith(".gguf")
        ):
            raise ValueError(
                f"the llama_cpp backend runs '{LOCAL_MODEL}' or a .gguf file given by path "
                f"(got '{self.model}')"
            )
        if self.backend == "openai" and not self.base_url:
            raise ValueError("the openai backend needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if self.stop is not None and not all(self.stop):
            raise ValueError("stop: empty stop string")
        if self.mode == "continuation" and self.system_prompt:
            raise ValueError("system_prompt has no place in continuation mode (there is no chat turn)")
        return self

    @property
    def runs_in_process(self) -> bool:
        """Whether the model runs in this process on this machine (local, llama_cpp): no server, no bill,
        threads chosen here."""
        return self.backend in ("local", "llama_cpp")

    def names_a_model_path(self) -> bool:
        """Whether `model` is a path (a .gguf file or a model folder) rather than a model name."""
        text = self.model
        return text.lower().endswith(".gguf") or "/" in text or "\\" in text or text.startswith((".", "~"))

    def stop_strings(self) -> tuple[str, ...]:
        """The strings that end a completion: `stop`, or a newline in continuation mode."""
        if self.stop is not None:
            return tuple(self.stop)
        return ("\n",) if self.mode == "continuation" else ()

    def identity(self) -> dict[str, Any]:
        """The parameters that change what the model writes (batching and transport do not)."""
        return self.model_dump(
            exclude={
                "batch_size",
                "backend",
                "base_url",
                "api_key_env",
                "max_concurrency",
                "timeout_s",
                "max_retries",
                "dtype",
                "model_revision",  # in the model fingerprint
                "threads",
            }
        )


class StepSpec(_Strict):
    """A follow-up generation step (multi-step and multi-turn generation).

    The first step is always the expanded prompt, named `answer`. Each later step's template sees
    every prompt variable plus `steps` (earlier outputs by name), e.g. draft -> critique -> rewrite,
    or the alternating turns of a dialogue.
    """

    name: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    template: str = Field(min_length=1)
    continue_conversation: bool = Field(
        default=False,
        description="send the earlier turns as chat history (true) or only this step's message (false)",
    )


class StructuredOutputSpec(_Strict):
    """Ask for JSON matching a JSON schema; parse, repair, retry; one field becomes the sample text."""

    json_schema: dict[str, Any]
    text_field: str = Field(description="the schema property holding the sample text")
    max_attempts: int = Field(default=3, ge=1, le=10, description="generations per prompt before giving up")


class PerplexitySpec(_Strict):
    """curation.perplexity: reject samples whose per-token perplexity under the local model is an
    outlier against the seed rows' perplexities (garbage, broken or degenerate text). Thresholds come
    from the seed rows alone: above the seed's `upper_quantile` x `margin`, and (when
    `lower_quantile` is set) below the seed's `lower_quantile` / `margin`."""

    upper_quantile: float = Field(
        default=0.99, gt=0.0, le=1.0, description="quantile of the seed's perplexities"
    )
    margin: float = Field(
        default=1.5,
        ge=1.0,
        le=100.0,
        description="factor beyond the seed quantile before a sample is an outlier",
    )
    lower_quantile: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="also reject suspiciously predictable text below this seed quantile / margin (null: off)",
    )
    max_seed_rows: int = Field(
        default=500,
        ge=10,
        le=100_000,
        description="seed train rows scored for the thresholds (a stratified sample)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> PerplexitySpec:
        if self.lower_quantile is not None and self.lower_quantile >= self.upper_quantile:
            raise ValueError("perplexity: lower_quantile must be smaller than upper_quantile")
        return self


class CurationSpec(_Strict):
    """Rules that decide which generated samples reach `curated_set` (reason codes in
    `synth_assets.curation.reasons`). Every filter can be tuned or switched off here."""

    # --- heuristics ---------------------------------------------------------------------------
    min_chars: int = Field(default=20, ge=0)
    max_chars: int = Field(default=800, ge=1)
    echo_threshold: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="reject when this share of the sample's word 5-grams appears in its prompt; a "
        "sample that repeats a template line (variables as wildcards) is rejected too (1: off)",
    )
    truncated: Literal["trim", "drop", "keep"] = Field(
        default="trim",
        description="a sample cut off mid-sentence: trim it to its last complete sentence (rejected "
        "if none is left), drop it, or keep it",
    )
    max_repeated_ngram_share: float = Field(
        default=0.3, ge=0.0, le=1.0, description="reject loops: share of word n-grams repeated (1: off)"
    )
    repeated_ngram_size: int = Field(default=3, ge=2, le=10)
    max_repeated_line_share: float = Field(
        default=0.3, ge=0.0, le=1.0, description="share of non-empty lines that repeat (1: off)"
    )
    reject_assistant_talk: bool = Field(
        default=True, description="reject 'Sure! Here is...', 'As an AI...', refusals, placeholders"
    )
    strip_lead_in: bool = Field(
        default=True,
        description="cut a lead-in like 'Here is a positive review:' off and judge the rest on its own",
    )
    max_non_text_share: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="share of characters that are not letters, digits, spaces or punctuation (1: off); "
        "markup, URLs and control characters are rejected as well",
    )
    language: str | None = Field(
        default=None, description="ISO 639-1 code (en, de, fr, ...): reject text evidently in another"
    )
    # --- duplicates ---------------------------------------------------------------------------
    near_duplicate_threshold: float | None = Field(
        default=0.7, ge=0.0, le=1.0, description="MinHash Jaccard of character shingles (null: off)"
    )
    minhash_num_perm: int = Field(default=128, ge=16, le=1024)
    shingle_size: int = Field(default=5, ge=2, le=32, description="characters per MinHash shingle")
    semantic_duplicate_threshold: float | None = Field(
        default=0.9, ge=0.0, le=1.0, description="embedding cosine (null: off)"
    )
    dedup_against_seed: bool = Field(default=True, description="reject samples that copy a seed row")
    dedup_against_previous_versions: bool = Field(
        default=True, description="reject new samples that duplicate rows of earlier curated versions"
    )
    # --- label consistency --------------------------------------------------------------------
    label_check: Literal["off", "flag", "drop", "relabel"] = Field(
        default="flag",
        description="when a classifier trained on the seed confidently predicts another label: keep "
        "and flag, drop, or relabel to the prediction",
    )
    label_min_confidence: float = Field(default=0.8, ge=0.0, le=1.0)
    label_fidelity: Literal["off", "classifier", "likelihood", "both"] = Field(
        default="off",
        description="reject samples that fit their intended label (against the other labels) worse than "
        "real seed rows do: by the seed classifier's probability margin, by the generating model's "
        "label-conditioned likelihood margin (SuperGen), or both; thresholds per label from the seed "
        "rows (cross-validated for the classifier)",
    )
    label_fidelity_recall: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="share of real seed rows of a label the fidelity threshold would keep",
    )
    seed_length_range: tuple[float, float] | None = Field(
        default=None,
        description="match the seed's shape: reject samples whose word count is outside these quantiles "
        "of the seed rows' word counts, e.g. [0.0, 1.0] = between the shortest and longest seed row "
        "(null: off)",
    )
    # --- relevance ----------------------------------------------------------------------------
    min_relevance: float | None = Field(
        default=0.1,
        ge=-1.0,
        le=1.0,
        description="reject below this cosine between sample and its task/conditions (null: off)",
    )
    relevance_text: str | None = Field(
        default=None,
        description="Jinja text a sample is compared with (task, label, attributes and each attribute "
        "by name); default: the task, the label and the attribute values",
    )
    # --- perplexity ---------------------------------------------------------------------------
    perplexity: PerplexitySpec | None = Field(
        default=None,
        description="reject samples whose per-token perplexity under the local model is an outlier "
        "against the seed rows' (true: the defaults; null or off: no check)",
    )
    # --- privacy ------------------------------------------------------------------------------
    pii: Literal["scrub", "drop", "off"] = Field(
        default="scrub", description="personal data: replace with [EMAIL], [PHONE]... or drop the row"
    )
    pii_types: list[Literal["EMAIL", "PHONE", "CARD", "IBAN", "ADDRESS", "NAME"]] = Field(
        default_factory=lambda: ["EMAIL", "PHONE", "CARD", "IBAN", "ADDRESS", "NAME"]
    )
    # --- LLM as judge -------------------------------------------------------------------------
    judge: bool = Field(
        default=False, description="score each sample 1-5 with the spec's (or judge_model's) model"
    )
    judge_rubric: str = Field(
        default=(
            "5: realistic, fluent, on-task, clearly expresses the intended label. "
            "3: usable but generic, clumsy or only partly on-task. "
            "1: off-topic, wrong label, talks to the user instead of being the data, or broken text."
        ),
        min_length=1,
    )
    judge_min_score: float | None = Field(default=None, ge=1.0, le=5.0, description="reject below")
    judge_model: GenerationParams | None = Field(
        default=None,
        description="the judge's own model block (backend, model, base_url... as under generation); "
        "default: the spec's generation block. Judge calls go through the LLM cache like generation",
    )

    @field_validator("label_check", "label_fidelity", "pii", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return _off_for_false(value)

    @field_validator("perplexity", mode="before")
    @classmethod
    def _perplexity_switch(cls, value: Any) -> Any:
        if value is True:
            return {}
        return None if value in (False, "off") else value

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        from synth_assets.curation.language import SUPPORTED_LANGUAGES

        if value is not None and value not in SUPPORTED_LANGUAGES:
            raise ValueError(f"language '{value}' is not one of {sorted(SUPPORTED_LANGUAGES)}")
        return value

    @field_validator("relevance_text")
    @classmethod
    def _relevance_template(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                templates.compile_template(value)
            except templates.TemplateProblem as exc:
                raise ValueError(f"not a valid Jinja template: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _bounds(self) -> CurationSpec:
        if self.min_chars >= self.max_chars:
            raise ValueError("min_chars must be smaller than max_chars")
        if self.judge_min_score is not None and not self.judge:
            raise ValueError("judge_min_score needs judge: true")
        if self.seed_length_range is not None:
            low, high = self.seed_length_range
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError("seed_length_range: two quantiles with 0 <= low <= high <= 1")
        return self


class GateSpec(_Strict):
    """Great Expectations gates: thresholds of the blocking checks."""

    generated_min_valid_fraction: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="share of generated samples that must be within the length bounds",
    )
    curated_min_rows: int = Field(
        default=5, ge=1, description="at least this many curated rows (an empty set is never promoted)"
    )
    curated_min_yield: float = Field(default=0.0, ge=0.0, le=1.0, description="curated / generated")
    curated_max_yield: float = Field(default=1.0, ge=0.0, le=1.0)
    max_duplicate_rate: float = Field(
        default=0.5, ge=0.0, le=1.0, description="share of generated samples that duplicate another"
    )
    label_balance_tolerance: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="max |curated share - requested share| for any label (null: not checked)",
    )
    require_no_pii: bool = Field(default=True, description="no PII detector hit left in curated text")
    min_mean_relevance: float | None = Field(default=None, ge=-1.0, le=1.0)
    min_mean_judge_score: float | None = Field(default=None, ge=1.0, le=5.0)
    max_failed_share: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="share of prompts left without a sample after retries (server errors, timeouts) that "
        "still lets generated_samples pass",
    )

    @model_validator(mode="after")
    def _yield_bounds(self) -> GateSpec:
        if self.curated_min_yield > self.curated_max_yield:
            raise ValueError("curated_min_yield must not exceed curated_max_yield")
        return self


class EvaluationSpec(_Strict):
    """How `evaluation_report` measures a run, and when its usefulness gate holds the curated set back:
    when the synthetic data makes the classifier worse than the real rows alone (same run), or when
    the run is much less useful than the last good run."""

    usefulness_tolerance: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description=(
            "blocking gate, regression side: fail when macro-F1 of real + curated (on the holdout) drops "
            "more than this below the last good run"
        ),
    )
    harm_tolerance: float = Field(
        default=0.03,
        ge=0.0,
        le=1.0,
        description=(
            "blocking gate, same-run side (judges the first run too): fail when macro-F1 of real + "
            "curated is more than this below macro-F1 of real only, both trained in this run and scored "
            "on the same holdout (point estimate; the paired bootstrap CI is shown, not used). 0.03: "
            "more than one holdout row's worth (about 1/n) on the 45-row demo holdout"
        ),
    )
    harm_min_holdout_rows: int = Field(
        default=40,
        ge=1,
        description=(
            "the same-run comparison judges only with at least this many holdout rows (below, it says "
            "'too few holdout rows to judge'): one row moves macro-F1 by about 1/n, so with fewer rows "
            "than 1/harm_tolerance a single row would decide the verdict. Without such a holdout it "
            "judges by cross-validation on the seed train rows instead, when there are at least this "
            "many of them"
        ),
    )
    bootstrap_samples: int = Field(
        default=1000, ge=0, le=100_000, description="resamples of the holdout for 95% CIs (0: no CIs)"
    )
    mauve_num_buckets: int | Literal["auto"] = Field(
        default="auto",
        description=(
            "k-means buckets of MAUVE; auto: min(real, synthetic rows) / 10, at least 2 (MAUVE's own "
            "heuristic); small sets need few buckets or every bucket holds one point"
        ),
    )
    mauve_min_samples: int = Field(
        default=1000,
        ge=2,
        description=(
            "MAUVE says 'too few rows' instead of a score when either side has fewer rows. Its authors "
            "use 5000 per side and call smaller samples optimistic (mauve-text README); measured here on "
            "MiniLM features, MAUVE told a one-label set from the real label mix in 5 of 5 draws only "
            "from 800 rows per side on Rotten Tomatoes sentiment (200 on TREC topics), never at 25"
        ),
    )
    distribution_min_rows: int = Field(
        default=100,
        ge=2,
        description=(
            "length KS and embedding centroid distance say 'too few rows' instead of a number when "
            "either side has fewer rows: at 25 rows two random draws of the same real rows are as far "
            "apart (centroid ~0.27, KS up to 0.36) as the real mix and a one-label subset; at 100 the "
            "centroid told them apart on TREC in 5 of 5 draws"
        ),
    )
    max_pairwise_samples: int = Field(
        default=300,
        ge=10,
        description="self-BLEU and pairwise distances use at most this many texts (a fixed random subset)",
    )
    embed_plots_in_ui: bool = Field(
        default=True,
        description="inline the PNG plots into the Markdown shown in the Dagster UI (data URIs)",
    )

    @field_validator("mauve_num_buckets")
    @classmethod
    def _enough_buckets(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 2:
            raise ValueError("must be 'auto' or at least 2")
        return value


class AutomationSpec(_Strict):
    """What may start runs of this spec without a person asking (spec sensor, daily schedule)."""

    auto_run: bool | None = Field(
        default=None,
        description="run on spec/seed changes and on the daily schedule without a click; default: yes for "
        "the in-process backends (local, llama_cpp), no for any other (a hosted API spends money)",
    )


class GenerationSpec(_Strict):
    """A whole synthetic-data job: seed, task, conditions, template, model, curation, gates."""

    name: str = Field(description="lower-case id: the Dagster partition key and the spec key in tables")
    description: str = ""
    seed: SeedSpec
    labels: list[str] = Field(min_length=1)
    label_weights: list[float] | None = None
    task: str = Field(min_length=1, description="the task specification shown to the model")
    attributes: list[AttributeSpec] = Field(default_factory=list)
    few_shot: FewShotSpec = Field(default_factory=FewShotSpec)
    self_instruct: SelfInstructSpec | None = None
    per_cell: PerCellSpec | None = Field(
        default=None, description="exact-N accepted per attribute cell (replaces num_samples)"
    )
    template: str = Field(
        min_length=1,
        description="Jinja2 template of the user message (sandboxed and bounded in time and size, "
        "synth_assets.templates; every template is rendered once when the spec is loaded)",
    )
    steps: list[StepSpec] = Field(default_factory=list, description="follow-up steps after `answer`")
    output_template: str | None = Field(
        default=None, description="Jinja2 assembling the sample text from `steps` (default: the last step)"
    )
    structured_output: StructuredOutputSpec | None = None
    num_samples: int = Field(ge=1, le=100_000)
    random_seed: int = Field(default=42, ge=0)
    generation: GenerationParams = Field(default_factory=GenerationParams)
    curation: CurationSpec = Field(default_factory=CurationSpec)
    gates: GateSpec = Field(default_factory=GateSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    # excluded from dumps: when runs start changes nothing they produce (not part of fingerprint())
    automation: AutomationSpec = Field(default_factory=AutomationSpec, exclude=True)
    source_path: Path | None = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not SPEC_NAME_PATTERN.match(value):
            raise ValueError("must be lower-case letters, digits, '_' or '-' (max 64 chars)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GenerationSpec:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels: repeated label")
        if self.label_weights is not None:
            if len(self.label_weights) != len(self.labels):
                raise ValueError(
                    f"label_weights: {len(self.label_weights)} weights for {len(self.labels)} labels"
                )
            if any(not math.isfinite(w) or w < 0 for w in self.label_weights):
                raise ValueError("label_weights: every weight must be a finite number >= 0")
            if sum(self.label_weights) <= 0:
                raise ValueError("label_weights: all weights are 0 (no label could be asked for)")
        names = [a.name for a in self.attributes]
        if len(set(names)) != len(names):
            raise ValueError("attributes: repeated attribute name")
        step_names = ["answer", *(step.name for step in self.steps)]
        if len(set(step_names)) != len(step_names):
            raise ValueError("steps: repeated step name (the first step is always 'answer')")
        if self.generation.mode == "continuation" and (self.steps or self.structured_output):
            raise ValueError(
                "generation.mode: continuation writes one list item per prompt; steps and "
                "structured_output need chat mode"
            )
        if self.structured_output is not None:
            _check_json_schema(self.structured_output.json_schema)
            properties = self.structured_output.json_schema.get("properties", {})
            if self.structured_output.text_field not in properties:
                raise ValueError(
                    f"structured_output: text_field '{self.structured_output.text_field}' is not a "
                    "property of json_schema"
                )
        if self.self_instruct is not None and self.few_shot.k <= self.self_instruct.machine_demos:
            raise ValueError("self_instruct: few_shot.k must be larger than machine_demos")
        if self.self_instruct is not None and self.per_cell is not None:
            raise ValueError("self_instruct and per_cell cannot be combined")
        if self.per_cell is not None:
            unknown = sorted(set(self.per_cell.attributes) - set(names) - {"label"})
            if unknown:
                raise ValueError(f"per_cell.attributes: {unknown} are not attributes of this spec")
            planned = self.planned_prompts()
            if planned > MAX_PROMPTS:
                raise ValueError(
                    f"per_cell: {self.cell_count():,} cells x ceil(n x budget_factor) plans {planned:,} "
                    f"prompts, more than the {MAX_PROMPTS:,} allowed"
                )
        if self.gates.curated_min_rows > self.max_curated_rows():
            what = "per_cell cells x n" if self.per_cell is not None else "num_samples"
            raise ValueError(
                f"gates.curated_min_rows: {self.gates.curated_min_rows} can never be met: the spec "
                f"makes at most {self.max_curated_rows():,} samples ({what})"
            )
        reserved = sorted(set(names) & RESERVED_TEMPLATE_NAMES)
        if reserved:
            raise ValueError(f"attributes: {reserved} are reserved template variable names")
        return self

    def cell_count(self) -> int:
        """Number of per_cell cells (combinations of the per-cell attributes' values); 0 without per_cell."""
        if self.per_cell is None:
            return 0
        sizes = {a.name: len(a.values) for a in self.attributes} | {"label": len(self.labels)}
        return math.prod(sizes[name] for name in self.per_cell.attributes)

    def planned_prompts(self) -> int:
        """Prompts `expanded_prompts` will make: num_samples, or cells x ceil(n x budget_factor)."""
        if self.per_cell is None:
            return self.num_samples
        return self.cell_count() * math.ceil(self.per_cell.n * self.per_cell.budget_factor)

    def max_curated_rows(self) -> int:
        """The most samples a run can produce and curate: one per prompt, or n per per_cell cell."""
        if self.per_cell is None:
            return self.num_samples
        return self.cell_count() * self.per_cell.n

    def normalized_label_weights(self) -> list[float]:
        raw = self.label_weights or [1.0] * len(self.labels)
        total = float(sum(raw))
        return [w / total for w in raw]

    def resolve(self, relative: Path) -> Path:
        """A path from the spec, resolved against the spec file's folder."""
        if relative.is_absolute() or self.source_path is None:
            return relative
        return (self.source_path.parent / relative).resolve()

    @property
    def local_model_path(self) -> Path | None:
        """The local or llama_cpp backend's model file or folder, resolved against the spec (None: the
        bundled one)."""
        generation = self.generation
        if generation.backend not in ("local", "llama_cpp") or not generation.names_a_model_path():
            return None
        return self.resolve(Path(generation.model).expanduser())

    @property
    def seed_path(self) -> Path:
        return self.resolve(self.seed.path)

    @property
    def holdout_path(self) -> Path | None:
        return self.resolve(self.seed.holdout_path) if self.seed.holdout_path else None

    def fingerprint(self) -> str:
        """Hash of everything in the spec that changes what the pipeline produces."""
        return content_hash(self.model_dump(mode="json"))


def _check_json_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError (one line) when `schema` is not a valid JSON schema for its declared draft
    (`jsonschema`'s `check_schema`; the latest draft when `$schema` is absent)."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = exc.json_path if exc.path else "$"
        message = " ".join(exc.message.split())
        raise ValueError(
            f"structured_output.json_schema: not a valid JSON schema at {where}: {message[:200]}"
        ) from exc


def content_hash(value: Any, length: int = 16) -> str:
    """Stable short hash of any JSON-able value (keys sorted), used for all ids."""
    encoded = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:length]


def _describe_validation_error(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "missing":
        message = "required field is missing"
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    if not first["loc"] and re.match(r"^[a-z_][a-z0-9_.]*: ", message):
        return f"{message}{suffix}"  # a whole-spec check whose message names its field already
    return f"{location}: {message}{suffix}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in one mapping is an error (PyYAML
    keeps the last one silently, so a second `template:` would quietly replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, list | dict):
                continue  # unhashable keys: let PyYAML report them as it always has
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_spec_yaml(text: str) -> Any:
    """Parse spec YAML (safe loader, duplicate keys refused). Raises `yaml.YAMLError`."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _sample_rows(spec: GenerationSpec) -> list[tuple[str, dict[str, str]]]:
    """(label, attribute values) pairs that together use every label and every attribute value
    at least once: the representative contexts every template is rendered with at load time."""
    count = max([len(spec.labels), *(len(a.values) for a in spec.attributes)])
    return [
        (spec.labels[i % len(spec.labels)], {a.name: a.values[i % len(a.values)] for a in spec.attributes})
        for i in range(count)
    ]


def template_problem(spec: GenerationSpec) -> tuple[str, str] | None:
    """(field, problem) for the first template of `spec` that cannot be rendered, or None.

    Every template — `template`, each step's, `output_template`, `curation.relevance_text` — is
    rendered through `synth_assets.templates` (bounded in time and size) with the variables it will
    get at run time, for every label and every attribute value, with placeholder seed texts and step
    outputs: an undefined variable, a sandbox violation or a runaway loop is found here, before any
    stage runs, instead of after generation has been paid for.
    """
    example = "An example text of a few words."
    step_names = ["answer", *(step.name for step in spec.steps)]
    for label, attributes in _sample_rows(spec):
        base = {"task": spec.task, "label": label, "labels": list(spec.labels), "attributes": attributes}
        demos = [
            {"text": example, "label": spec.labels[i % len(spec.labels)]} for i in range(spec.few_shot.k)
        ]
        checks = [
            (
                "template",
                spec.template,
                templates.prompt_context(
                    **base, demos=demos, anchor={"text": example, "label": label}, typical_words=12
                ),
            )
        ]
        for index, step in enumerate(spec.steps):
            earlier = dict.fromkeys(step_names[: index + 1], example)
            context = templates.step_context(**base, prompt=example, steps=earlier)
            checks.append((f"steps.{index}.template", step.template, context))
        if spec.output_template:
            context = templates.step_context(**base, prompt=example, steps=dict.fromkeys(step_names, example))
            checks.append(("output_template", spec.output_template, context))
        if spec.curation.relevance_text:
            checks.append(
                ("curation.relevance_text", spec.curation.relevance_text, templates.relevance_context(**base))
            )
        for field, source, context in checks:
            try:
                templates.render(source, context)
            except templates.TemplateProblem as exc:
                return field, str(exc)
    return None


def load_spec(path: str | Path) -> GenerationSpec:
    """Read and validate a spec file; raise `SpecError` with a one-line reason."""
    spec_path = Path(path).resolve()
    if not spec_path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        raw = read_spec_yaml(spec_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or ""
        detail = f": {problem}" if problem.startswith("duplicate key") else ""
        raise SpecError(f"{path}: not valid YAML{where}{detail}") from exc
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of spec fields at the top level")
    try:
        spec = GenerationSpec.model_validate({**raw, "source_path": spec_path})
    except ValidationError as exc:
        raise SpecError(f"{path}: {_describe_validation_error(exc)}") from exc
    for field, seed_file in (("seed.path", spec.seed_path), ("seed.holdout_path", spec.holdout_path)):
        if seed_file is not None and not seed_file.is_file():
            raise SpecError(f"{path}: {field}: file not found: {seed_file}")
    model_path = spec.local_model_path
    if model_path is not None and not (model_path.is_file() or (model_path / "config.json").is_file()):
        raise SpecError(
            f"{path}: generation.model: no .gguf file or model folder (with config.json) at {model_path}"
        )
    found = template_problem(spec)
    if found:
        raise SpecError(f"{path}: {found[0]}: {found[1]}")
    return spec
