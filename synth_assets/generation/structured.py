"""Structured output: find JSON in a completion, repair what small models usually get wrong, validate."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_UNQUOTED_KEY = re.compile(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:")


@dataclass(frozen=True)
class ParsedOutput:
    value: dict[str, Any] | None
    repaired: bool
    error: str | None


def _first_object(text: str) -> str | None:
    """The first balanced {...} in text (strings respected), or None."""
    start = text.find("{")
    while start != -1:
        depth, in_string, escaped = 0, False, False
        for index in range(start, len(text)):
            char = text[index]
            if in_string:
                escaped = not escaped and char == "\\"
                if char == '"' and not escaped:
                    in_string = False
                continue
            if char == '"':
                in_string = True
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return text[start : index + 1]
        start = text.find("{", start + 1)
    return None


def _repairs(candidate: str) -> list[str]:
    """Progressively repaired variants: trailing commas, then single quotes, then bare keys."""
    fixed = _TRAILING_COMMA.sub(r"\1", candidate)
    double_quoted = fixed.replace("'", '"') if '"' not in fixed else fixed
    return [fixed, double_quoted, _UNQUOTED_KEY.sub(r'\1"\2":', double_quoted)]


def parse_structured(text: str, schema: dict[str, Any]) -> ParsedOutput:
    """Parse `text` as a JSON object valid under `schema`, trying light repairs before giving up."""
    import jsonschema

    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    candidate = _first_object(body)
    if candidate is None:
        # a model that forgot the closing brace: close it once and try again
        opening = body.find("{")
        candidate = body[opening:].rstrip().rstrip(",") + "}" if opening != -1 else None
    if candidate is None:
        return ParsedOutput(None, False, "no JSON object in the output")
    last_error = "invalid JSON"
    for attempt, variant in enumerate([candidate, *_repairs(candidate)]):
        try:
            value = json.loads(variant)
        except json.JSONDecodeError as exc:
            last_error = f"invalid JSON: {exc.msg}"
            continue
        if not isinstance(value, dict):
            last_error = "JSON is not an object"
            continue
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as exc:
            return ParsedOutput(None, attempt > 0, f"schema: {exc.message}")
        return ParsedOutput(value, attempt > 0 or candidate != text.strip(), None)
    return ParsedOutput(None, False, last_error)
