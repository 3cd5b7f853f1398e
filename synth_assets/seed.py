"""Loading and validating the real seed data (CSV, Parquet or JSONL)."""

from __future__ import annotations

import hashlib
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
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            # dtype/convert_dates off: like CSV, every field stays as written
            frame = pd.read_json(path, lines=kind == "jsonl", dtype=False, convert_dates=False)
    except FileNotFoundError as exc:
        raise SpecError(f"{path}: file not found") from exc
    except Exception as exc:  # pandas/pyarrow raise many types for malformed files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(f"{path}: cannot read as {kind}: {reason}") from exc
    return frame


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
    texts = frame[spec.seed.text_column].astype("string").fillna("").str.strip()
    labels = frame[spec.seed.label_column].astype("string").fillna("").str.strip()
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
