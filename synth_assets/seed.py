"""Loading and validating the real seed data (CSV, Parquet or JSONL)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from synth_assets.spec import SEED_SUFFIXES, GenerationSpec, SpecError, content_hash

SEED_COLUMNS = ["seed_id", "split", "text", "label", "source_file", "source_row"]


def read_table_file(path: Path) -> pd.DataFrame:
    """Read a CSV / Parquet / JSONL file as strings; raise `SpecError` naming the file on failure."""
    kind = SEED_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise SpecError(f"{path}: unsupported seed format '{path.suffix}'")
    try:
        if kind == "csv":
            _check_csv_header(path)
            _check_no_nul_bytes(path)
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            if kind == "jsonl":
                _check_json_lines(path)
            # dtype/convert_dates off: like CSV, every field stays as written
            frame = pd.read_json(path, lines=kind == "jsonl", dtype=False, convert_dates=False)
    except FileNotFoundError as exc:
        raise SpecError(f"{path}: file not found") from exc
    except SpecError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for malformed files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(f"{path}: cannot read as {kind}: {reason}") from exc
    return frame


def _check_no_nul_bytes(path: Path) -> None:
    """pandas' CSV reader silently ends a field at a NUL byte (the rest of the text is lost), so a
    NUL is refused with its line number instead; such a file is binary or corrupted."""
    data = path.read_bytes()
    at = data.find(b"\x00")
    if at >= 0:
        line = data.count(b"\n", 0, at) + 1
        raise SpecError(f"{path}: line {line}: contains a NUL byte (\\x00): not a text CSV file")


def _check_csv_header(path: Path) -> None:
    """Repeated column names: pandas would silently rename the second 'text' to 'text.1'."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    repeated = sorted(name for name, count in Counter(header).items() if count > 1)
    if repeated:
        raise SpecError(f"{path}: header: column names repeated: {', '.join(map(repr, repeated))}")


def _check_json_lines(path: Path) -> None:
    """Every non-blank line one JSON object; the first bad line is named with its number."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SpecError(
                    f"{path}: line {number}: invalid JSON: {exc.msg} (column {exc.colno})"
                ) from exc
            if not isinstance(value, dict):
                raise SpecError(f"{path}: line {number}: expected a JSON object, got {type(value).__name__}")


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _check_text_column(path: Path, frame: pd.DataFrame, column: str) -> None:
    """A text column that holds only numbers is almost always the wrong column (an id, a rating)."""
    values = frame[column]
    numeric = pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)
    if not numeric and len(values):
        strings = values.dropna().astype(str).str.strip()
        numeric = bool(len(strings)) and bool(strings.map(lambda v: bool(_NUMBER.fullmatch(v))).all())
    if numeric:
        example = values.dropna().iloc[0] if values.notna().any() else ""
        raise SpecError(
            f"{path}: seed.text_column '{column}' holds numbers, not text (first value {example!r})"
        )


def load_seed_rows(spec: GenerationSpec, path: Path, split: str) -> pd.DataFrame:
    """Rows of one seed file in the `SEED_COLUMNS` layout, validated against the spec."""
    frame = read_table_file(path)
    for field, column in (
        ("seed.text_column", spec.seed.text_column),
        ("seed.label_column", spec.seed.label_column),
        ("seed.id_column", spec.seed.id_column),
    ):
        if column is not None and column not in frame.columns:
            raise SpecError(
                f"{path}: {field} '{column}' is not a column (columns: {', '.join(map(str, frame.columns))})"
            )
    _check_text_column(path, frame, spec.seed.text_column)
    texts = frame[spec.seed.text_column].astype("string").fillna("").str.strip()
    labels = frame[spec.seed.label_column].astype("string").fillna("").str.strip()
    nul = texts.str.contains("\x00", regex=False)
    if nul.any():  # a JSONL "\u0000" or a Parquet string: invisible, and cut by C tokenizers downstream
        row = int(nul.to_numpy().nonzero()[0][0]) + 1
        raise SpecError(f"{path}: row {row}: NUL character (\\x00) in column '{spec.seed.text_column}'")
    empty = texts.eq("")
    if empty.any():
        row = int(empty.to_numpy().nonzero()[0][0]) + 1
        raise SpecError(f"{path}: row {row}: empty text in column '{spec.seed.text_column}'")
    unknown = sorted(set(labels) - set(spec.labels))
    if unknown:
        raise SpecError(
            f"{path}: labels {unknown} in column '{spec.seed.label_column}' "
            f"are not in the spec's labels {spec.labels}"
        )
    if spec.seed.id_column:
        ids = frame[spec.seed.id_column].astype(str)
        if ids.duplicated().any():
            raise SpecError(f"{path}: id column '{spec.seed.id_column}' has repeated ids")
        seed_ids = [f"{split}-{value}" for value in ids]
    else:
        seed_ids = [
            "seed-" + content_hash([split, text, label], length=12)
            for text, label in zip(texts, labels, strict=True)
        ]
        if len(set(seed_ids)) != len(seed_ids):
            raise SpecError(f"{path}: repeated rows (same text and label)")
    return pd.DataFrame(
        {
            "seed_id": seed_ids,
            "split": split,
            "text": texts.astype(str).to_list(),
            "label": labels.astype(str).to_list(),
            "source_file": str(path),
            "source_row": range(1, len(frame) + 1),
        },
        columns=SEED_COLUMNS,
    )


def load_seed_data(spec: GenerationSpec) -> pd.DataFrame:
    """The spec's training seed rows plus its held-out rows (split 'holdout'), validated."""
    train = load_seed_rows(spec, spec.seed_path, "train")
    if len(train) < spec.seed.min_rows:
        raise SpecError(
            f"{spec.seed_path}: {len(train)} rows, the spec asks for at least {spec.seed.min_rows}"
        )
    if spec.few_shot.strategy == "same_label" and spec.few_shot.k > 0:
        missing = sorted(set(spec.labels) - set(train["label"]))
        if missing:
            raise SpecError(
                f"{spec.seed_path}: few_shot.strategy same_label needs seed rows for labels {missing}"
            )
    frames = [train]
    if spec.holdout_path is not None:
        holdout = load_seed_rows(spec, spec.holdout_path, "holdout")
        leaked = set(holdout["text"]) & set(train["text"])
        if leaked:
            raise SpecError(
                f"{spec.holdout_path}: {len(leaked)} held-out texts also appear in the training seed"
            )
        frames.append(holdout)
    return pd.concat(frames, ignore_index=True)


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (short), used for data versions and the spec sensor."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def spec_inputs_digest(spec: GenerationSpec) -> str:
    """One hash over the spec's content and its seed files: changes iff the pipeline's input does."""
    parts = [spec.fingerprint(), file_digest(spec.seed_path)]
    if spec.holdout_path is not None:
        parts.append(file_digest(spec.holdout_path))
    return content_hash(parts)
