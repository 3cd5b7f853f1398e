"""The generation spec: one pydantic model that every stage reads.

A spec is a YAML file. Paths inside it (seed files) are relative to the spec file, so a spec and
its data can be moved together. Loading errors are raised as `SpecError` with one line that names
the file, the field and the problem.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SEED_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".json": "json"}
# template variables every prompt gets; an attribute with one of these names would shadow it
RESERVED_TEMPLATE_NAMES = {"task", "label", "labels", "attributes", "demos"}
SPEC_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


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


class FewShotSpec(_Strict):
    """How in-context demonstrations are drawn from the seed data."""

    k: int = Field(default=3, ge=0, le=16)
    strategy: Literal["stratified", "same_label", "random"] = Field(
        default="stratified",
        description=(
            "stratified: demos spread over labels, starting with the target label; "
            "same_label: demos share the target label; random: any seed rows"
        ),
    )


class GenerationParams(_Strict):
    """Which model answers the prompts, and how."""

    backend: Literal["local"] = "local"
    model: Literal["smollm2-135m-instruct"] = "smollm2-135m-instruct"
    max_new_tokens: int = Field(default=96, ge=1, le=2048)
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.1, ge=1.0, le=2.0)
    batch_size: int = Field(default=16, ge=1, le=256)
    system_prompt: str | None = None

    def identity(self) -> dict[str, Any]:
        """The parameters that change what the model writes (batch size does not)."""
        return self.model_dump(exclude={"batch_size", "backend"})


class CurationSpec(_Strict):
    """Rules that decide which generated samples reach `curated_set`."""

    min_chars: int = Field(default=20, ge=0)
    max_chars: int = Field(default=800, ge=1)
    echo_threshold: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="reject when this share of the sample's word 5-grams appears in its prompt",
    )

    @model_validator(mode="after")
    def _bounds(self) -> CurationSpec:
        if self.min_chars >= self.max_chars:
            raise ValueError("min_chars must be smaller than max_chars")
        return self


class GateSpec(_Strict):
    """Great Expectations gates: thresholds of the blocking checks."""

    generated_min_valid_fraction: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="share of generated samples that must be within the length bounds",
    )
    curated_min_rows: int = Field(default=5, ge=0)


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
    template: str = Field(min_length=1, description="Jinja2 template of the user message")
    num_samples: int = Field(ge=1, le=100_000)
    random_seed: int = Field(default=42, ge=0)
    generation: GenerationParams = Field(default_factory=GenerationParams)
    curation: CurationSpec = Field(default_factory=CurationSpec)
    gates: GateSpec = Field(default_factory=GateSpec)
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
        if self.label_weights is not None and len(self.label_weights) != len(self.labels):
            raise ValueError(
                f"label_weights: {len(self.label_weights)} weights for {len(self.labels)} labels"
            )
        names = [a.name for a in self.attributes]
        if len(set(names)) != len(names):
            raise ValueError("attributes: repeated attribute name")
        reserved = sorted(set(names) & RESERVED_TEMPLATE_NAMES)
        if reserved:
            raise ValueError(f"attributes: {reserved} are reserved template variable names")
        return self

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
    def seed_path(self) -> Path:
        return self.resolve(self.seed.path)

    @property
    def holdout_path(self) -> Path | None:
        return self.resolve(self.seed.holdout_path) if self.seed.holdout_path else None

    def fingerprint(self) -> str:
        """Hash of everything in the spec that changes what the pipeline produces."""
        return content_hash(self.model_dump(mode="json"))


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
    return f"{location}: {message}{suffix}"


def load_spec(path: str | Path) -> GenerationSpec:
    """Read and validate a spec file; raise `SpecError` with a one-line reason."""
    spec_path = Path(path).resolve()
    if not spec_path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        raw = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}: not valid YAML{where}") from exc
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
    from synth_assets.generation.prompts import check_template

    problem = check_template(spec.template, spec)
    if problem:
        raise SpecError(f"{path}: template: {problem}")
    return spec
