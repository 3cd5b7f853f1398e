"""Cheap, vectorised heuristics over a whole column of generated texts.

Each check runs as Arrow string kernels (RE2 regexes, lengths) or numpy over the flat token array
from `text.tokenize`; Python only touches the rows that were flagged, to write their details. That
keeps 100k samples to seconds on a laptop (see benchmarks/curation.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from synth_assets.curation import reasons as R
from synth_assets.curation.language import check_language
from synth_assets.curation.text import (
    Tokens,
    keyed,
    normalize_many,
    strip_format_characters,
    strip_format_characters_array,
    tokenize,
)
from synth_assets.spec import CurationSpec

# --- patterns (RE2 syntax for Arrow: no look-around, no back-references) ----------------------------
_APOS = "['’]"
ASSISTANT_PATTERNS = [
    # an answer that opens like a chat reply instead of being the data itself
    r"^\W*(sure|certainly|of course|absolutely|okay|ok)[!.:]",
    rf"^\W*(sure|certainly|of course|absolutely|okay)[,!]?\s+(here|i{_APOS}d|i can|i will|i{_APOS}ll)\b",
    r"^\W*(here is|here's|here are|below is|this is) (a|an|the|your|one|my)?\s*(new |short |realistic )?"
    r"(positive |negative |neutral |mixed )?(review|description|conversation|example|sample|response|answer)",
    # a lead-in that labels what follows: "The new negative review: ...", "Product review: ..."
    r"^\W*(the |a |an |my |one |this )?(new |short |sample |final )?(positive |negative |neutral |mixed )?"
    r"(product )?(review|description|conversation|sample|answer|response)\b[^.!?\n]{0,50}:",
    rf"^\W*(i{_APOS}ll|i will|let me|i{_APOS}m going to|i am going to) (just )?"
    r"(write|create|make|generate|give|try)\b",
    rf"\bhere(?:{_APOS}s| is) (a |an |the |my )?(revised|rewritten|new|another|sample|short)\b"
    r"[^.!?\n]{0,30}(version|review|one|text|description)",
    rf"\b(i{_APOS}d|i would) (say|rephrase it|rewrite it)[^.!?\n]{{0,40}}:",
    r"\b(original|rewritten|revised) (sentence|review|text|version)\s*:",
    r"\bas an? ([\w-]+ ){0,3}(ai|language model|assistant|chatbot)\b",
    r"\bsorry for (the|any) (misunderstanding|confusion)\b",
    # addressing the requester about the task rather than being the data
    r"\byour (review|reviews|description)\b",
    rf"\b(i am|i{_APOS}m) (an ai|a language model|an? (ai )?assistant|a chatbot)\b",
    rf"^\W*(i{_APOS}d|i would|i{_APOS}m|i am) (be )?(happy|glad|ready) to help\b",
    rf"\bwhat{_APOS}s your next question\b",
    # service phrases count only on a line of their own: "Agent: Let me know if..." in a generated
    # support dialogue is data, a trailing "Let me know if you need more!" is the assistant talking
    r"(^|\n)\W*(i hope (this|that|it) helps|let me know if|feel free to (ask|let me know|reach out)|"
    r"how (can|may) i (help|assist))\b",
    r"\b(review|description) text only\b",
    r"^\W*(note|disclaimer)\s*:",
    r"\bthis (review|description|conversation) (is|was) (written|generated|created)\b",
]
# Unfilled template placeholders: "[Your Review Text]", "[Sentence 2]", "<product name>". Case
# sensitive on purpose: PII scrubbing writes "[NAME]", "[EMAIL]"..., which are not the model's doing.
_PLACEHOLDER_RE = (
    r"\[(?:[Yy]our|[Ii]nsert|[Ss]entence|[Pp]roduct|[Nn]ame|[Bb]rand|[Cc]ustomer|[Rr]eview)\b[^\]]{0,40}\]"
    r"|<(?:[Yy]our|[Ii]nsert|[Pp]roduct|[Nn]ame|[Bb]rand) [^>]{0,40}>"
)
REFUSAL_PATTERNS = [
    rf"\b(i am|i{_APOS}m) (sorry|afraid)\b.{{0,40}}\b(can(no|{_APOS})t|cannot|unable|not able|won{_APOS}t)\b",
    rf"\bi (can(no|{_APOS})t|cannot|won{_APOS}t|will not|am unable to|{_APOS}m unable to|am not able to)"
    r" (help|assist|provide|create|write|generate|fulfil|fulfill|comply|do that|complete)",
    r"\bagainst my (guidelines|programming|policies|policy)\b",
    r"\bnot (appropriate|able) for me to\b",
    r"^\W*(sorry|unfortunately),? (but )?i\b",
]
# what a finished sentence can end with: punctuation, a closing quote/bracket, an emoticon or emoji
_CLEAN_END = r"([.!?…)\]}\"'”’»*~]|[:;]-?[)(DP]|\p{So}|\p{Sk})\s*$"
# words a sentence cannot end on ("...and the"); not "it", "this", "on", "in", "so": "I love it",
# "turn it on" are complete
_DANGLING_END = (
    r"(\b(and|or|but|the|a|an|to|of|with|for|at|my|our|your|is|was|are|were|which|because|very|its|"
    r"than|then|as|by|from|if|when|while|i)|[,;:(\-–—/&])\s*$"
)
MIN_REPEATED_LINE_CHARS = 20
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*(?=\s|$)")
# characters an ordinary sentence is made of; anything else counts towards non_text
_TEXT_CHARS = r"[\pL\pM\pN\s.,!?;:'\"()\[\]\-–—’‘“”…%$€£¥&/+*@#°]"
_MARKUP = (
    r"<[a-zA-Z/!][^>]{0,80}>|https?://|www\.[a-z]|```|\x{FFFD}|[\x00-\x08\x0b\x0c\x0e-\x1f]|"
    r"\{\{|\}\}|\\u[0-9a-fA-F]{4}|[!?.*#=_~\-]{8,}|\[/?(INST|SYS)\]|<\|[a-z_]+\|>"
)


# "your request" is talk to the requester in a single text, but ordinary data in a dialogue, where
# the agent addresses the customer ("Agent: I've processed your request"): checked outside dialogues
_REQUESTER_TALK_RE = r"(?i)\byour requests?\b"
# a dialogue: at least two lines that open with a speaker tag ("Customer: ...", "Agent: ...")
_DIALOGUE_RE = r"(?:^|\n)[ \t]*[\pL][\pL ]{0,20}:[^\n]*\n(?:[^\n]*\n)*?[ \t]*[\pL][\pL ]{0,20}:"


def _requester_talk(texts: pa.Array) -> np.ndarray:
    """Rows saying "your request" outside a dialogue. The dialogue pattern costs 0.7 s per 100k
    rows, so it runs only on the few rows that say it."""
    found = _matches(texts, _REQUESTER_TALK_RE)
    rows = np.flatnonzero(found)
    if len(rows):
        found[rows[_matches(texts.take(pa.array(rows)), _DIALOGUE_RE)]] = False
    return found


def _combine(patterns: Sequence[str]) -> str:
    return "(?i)(" + "|".join(f"(?:{p})" for p in patterns) + ")"


_ASSISTANT_RE = _combine(ASSISTANT_PATTERNS)
_REFUSAL_RE = _combine(REFUSAL_PATTERNS)


def _matches(texts: pa.Array, pattern: str) -> np.ndarray:
    return pc.match_substring_regex(texts, pattern).fill_null(False).to_numpy(zero_copy_only=False)


def _first_match(text: str, pattern: str) -> str:
    # Python's re understands the RE2 subset used here except \p{..} classes, which details avoid
    found = re.search(pattern.replace(r"\x{FFFD}", "\ufffd"), strip_format_characters(text))
    return found.group(0).strip()[:60] if found else ""


def chat_wrapping(texts: Sequence[str]) -> np.ndarray:
    """Per text: whether it is chat-assistant wrapping, a refusal or an unfilled placeholder rather
    than data ("Sure! Here is...", "I'm sorry, but I can't..."): the `assistant_talk` and
    `refusal` patterns, usable before curation (e.g. to keep such samples out of few-shot demos)."""
    array = strip_format_characters_array(pa.array(list(texts), type=pa.large_string()))
    return (
        _matches(array, _ASSISTANT_RE)
        | _requester_talk(array)
        | _matches(array, _REFUSAL_RE)
        | _matches(array, _PLACEHOLDER_RE)
    )


# "Here is a positive review of the kettle: <the review>" -> "<the review>": a lead-in that
# announces what follows, up to the first colon, with no sentence end before it. It must open like
# an announcement ("Your review is great, but: ..." is talk to the user, not a lead-in).
_LEAD_IN_PREFILTER = r"^[^:\n.!?]{0,100}:"
_LEAD_IN = re.compile(
    r"^\W*(here|here's|sure|certainly|of course|okay|ok|i'll|i will|let me|below|the|a|an|my|one|this|"
    r"new|product|final)\b[^:\n.!?]{0,100}?\b(review|description|conversation|sample|example|version|"
    r"answer|response)s?\b[^:\n.!?]{0,60}:\s*",
    re.IGNORECASE,
)
_QUOTES = "\"'“”‘’"


def strip_lead_ins(texts: list[str], min_chars: int) -> list[int]:
    """Cut chat lead-ins off in place; return the rows changed. The rest (quotes removed) must still
    be `min_chars` long, otherwise the row is left for the assistant-talk check to reject."""
    changed = []
    array = pa.array(texts, type=pa.large_string())
    for row in np.flatnonzero(_matches(array, _LEAD_IN_PREFILTER)).tolist():
        found = _LEAD_IN.match(texts[row])
        if not found:
            continue
        rest = texts[row][found.end() :].strip()
        if len(rest) >= 2 and rest[0] in _QUOTES and rest[-1] in _QUOTES:
            rest = rest[1:-1].strip()
        if len(rest) >= max(min_chars, 1):
            texts[row] = rest
            changed.append(row)
    return changed


def find_truncated(
    texts: pa.Array, finish_reasons: Sequence[str | None] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(truncated, dangling): no sentence end and either the model hit its token limit or the text
    stops on a connective or comma. A text that ends cleanly is complete even at the limit."""
    clean = _matches(texts, _CLEAN_END)
    dangling = _matches(texts, "(?i)" + _DANGLING_END)
    at_limit = np.zeros(len(texts), dtype=bool)
    if finish_reasons is not None:
        at_limit = np.asarray([reason == "length" for reason in finish_reasons], dtype=bool)
    return ~clean & (at_limit | dangling), dangling


def trim_to_last_sentence(text: str, min_chars: int) -> str | None:
    """The text up to its last complete sentence, or None if what remains is under `min_chars`."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if not ends:
        return None
    trimmed = text[: ends[-1]].strip()
    return trimmed if len(trimmed) >= max(min_chars, 1) else None


def repeated_ngram_share(tokens: Tokens, n: int) -> np.ndarray:
    """Per text: share of its word n-grams that repeat an earlier n-gram of the same text."""
    share = np.zeros(tokens.n_rows)
    rows, grams = tokens.ngrams(n, row_mask=tokens.counts >= n + 2)
    if len(rows) == 0:
        return share
    repeated = pd.Series(keyed(rows, grams)).duplicated().to_numpy()
    totals = np.bincount(rows, minlength=tokens.n_rows)
    hits = np.bincount(rows[repeated], minlength=tokens.n_rows)
    np.divide(hits, totals, out=share, where=totals > 0)
    return share


def repeated_line_share(texts: pa.Array) -> np.ndarray:
    """Per text: share of its non-empty lines that repeat an earlier line (case and spacing folded).

    Only lines of `MIN_REPEATED_LINE_CHARS`+ characters count as repeats: in a dialogue, "Agent:
    Thank you." twice is normal; the same full sentence twice is a loop."""
    n = len(texts)
    lines = pc.split_pattern(texts, "\n")
    flat = pc.utf8_trim_whitespace(pc.utf8_lower(pc.list_flatten(lines)))
    rows = pc.list_parent_indices(lines).to_numpy(zero_copy_only=False).astype(np.int64)
    values = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=object)
    lengths = pc.utf8_length(flat).fill_null(0).to_numpy(zero_copy_only=False)
    keep = lengths > 0
    rows, values, lengths = rows[keep], values[keep], lengths[keep]
    share = np.zeros(n)
    if len(rows) == 0:
        return share
    frame = pd.DataFrame({"row": rows, "line": values})
    repeated = frame.duplicated().to_numpy() & (lengths >= MIN_REPEATED_LINE_CHARS)
    totals = np.bincount(rows, minlength=n)
    hits = np.bincount(rows[repeated], minlength=n)
    np.divide(hits, totals, out=share, where=totals >= 2)
    return share


def echo_share(
    tokens: Tokens, prompt_tokens: Tokens, prompt_of_row: np.ndarray, max_n: int = 5
) -> np.ndarray:
    """Per text: share of its word n-grams found in its own prompt (n = 5, smaller for short texts).

    `prompt_of_row[i]` is the row of text i in `prompt_tokens` (-1: no prompt). Prompts shared by
    many samples are tokenised once; membership is one sorted `isin` per n-gram size.
    """
    share = np.zeros(tokens.n_rows)
    sizes = np.minimum(max_n, np.maximum(1, tokens.counts // 2))
    has_prompt = prompt_of_row >= 0
    for n in np.unique(sizes[has_prompt & (tokens.counts > 0)]).tolist():
        selected = has_prompt & (sizes == n) & (tokens.counts >= n)
        rows, grams = tokens.ngrams(n, row_mask=selected)
        if len(rows) == 0:
            continue
        wanted = np.zeros(prompt_tokens.n_rows, dtype=bool)
        wanted[prompt_of_row[selected]] = True
        p_rows, p_grams = prompt_tokens.ngrams(n, row_mask=wanted)
        # pandas' isin hashes; np.isin sorts, which made this step grow faster than the row count
        found = pd.Series(keyed(prompt_of_row[rows], grams)).isin(keyed(p_rows, p_grams)).to_numpy()
        totals = np.bincount(rows, minlength=tokens.n_rows)
        hits = np.bincount(rows[found], minlength=tokens.n_rows)
        part = np.divide(hits, totals, out=np.zeros(tokens.n_rows), where=totals > 0)
        share = np.where(selected, part, share)
    return share


_JINJA_BLOCK = re.compile(r"\{%.*?%\}|\{#.*?#\}", re.S)
_JINJA_VARIABLE = re.compile(r"\{\{.*?\}\}", re.S)
_MIN_TEMPLATE_LITERAL = 8


def _re2_literal(text: str) -> str:
    # escape punctuation only: RE2 rejects some of Python's escapes (e.g. an escaped space)
    escaped = "".join(ch if ch.isalnum() or ch == " " else "\\" + ch for ch in text)
    return re.sub(" +", r"\\s+", escaped.strip())


def template_line_patterns(template: str) -> list[tuple[str, str]]:
    """(line, RE2 pattern) for each template line with enough literal text to recognise, variables
    as wildcards: a sample matching "Review ({{ demo.label }}): {{ demo.text }}" copied the
    template's demo format instead of writing new data."""
    patterns = []
    for line in _JINJA_BLOCK.sub("", template).splitlines():
        literal = _JINJA_VARIABLE.sub(" ", line)
        if len("".join(literal.split())) < _MIN_TEMPLATE_LITERAL or not re.search(r"[A-Za-z]{3}", literal):
            continue
        pieces = [_re2_literal(part) for part in _JINJA_VARIABLE.split(line)]
        body = r"[^\n]{1,80}?".join(piece for piece in pieces)
        patterns.append((line.strip(), "(?i)" + body))
    return patterns


def template_echo(texts: pa.Array, template: str) -> tuple[np.ndarray, list[str]]:
    """(copied, the template line) per text."""
    copied = np.zeros(len(texts), dtype=bool)
    which = [""] * len(texts)
    for line, pattern in template_line_patterns(template):
        hit = _matches(texts, pattern) & ~copied
        for row in np.flatnonzero(hit).tolist():
            which[row] = line
        copied |= hit
    return copied, which


def label_talk_pattern(labels: Sequence[str]) -> str:
    """Text that names its own label as a category ("A positive review on a blender includes...")
    is commentary about the task, not an instance of it."""
    names = "|".join(_re2_literal(label) for label in labels)
    nouns = "review|description|conversation|comment|feedback|example|sample|text|version"
    return rf"(?i)\b({names})\s+({nouns})s?\b"


def non_text_share(texts: pa.Array) -> np.ndarray:
    lengths = pc.utf8_length(texts).fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
    # deleting runs of ordinary characters is much faster than counting them one match at a time
    rest = pc.utf8_length(pc.replace_substring_regex(texts, _TEXT_CHARS + "+", ""))
    unusual = rest.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
    return np.divide(unusual, lengths, out=np.zeros(len(lengths)), where=lengths > 0)


def apply_heuristics(
    texts: Sequence[str],
    findings: R.Findings,
    rules: CurationSpec,
    *,
    tokens: Tokens | None = None,
    prompt_tokens: Tokens | None = None,
    prompt_of_row: np.ndarray | None = None,
    truncated: np.ndarray | None = None,
    template: str | None = None,
    labels: Sequence[str] = (),
) -> None:
    """Add every heuristic's findings for `texts` (one chunk of rows) to `findings`.

    `truncated` marks rows already known to be cut off and not repairable (see `find_truncated`).
    """
    array = pa.array(list(texts), type=pa.large_string())
    tokens = tokens if tokens is not None else tokenize(normalize_many(texts))
    stripped = pc.utf8_trim_whitespace(array)
    # patterns read what a person sees ("Su\u200bre! Here is" is "Sure! Here is"); lengths and the
    # non-text share still count every character
    visible = strip_format_characters_array(array)
    lengths = pc.utf8_length(stripped).to_numpy(zero_copy_only=False).astype(np.int64)
    empty = lengths == 0
    findings.add(R.EMPTY, empty, "blank after stripping whitespace")
    findings.add(
        R.TOO_SHORT, ~empty & (lengths < rules.min_chars), lambda i: f"{lengths[i]} chars < {rules.min_chars}"
    )
    findings.add(R.TOO_LONG, lengths > rules.max_chars, lambda i: f"{lengths[i]} chars > {rules.max_chars}")
    if truncated is not None:
        findings.add(R.TRUNCATED, truncated & ~empty, lambda i: f"ends with '…{texts[i].rstrip()[-25:]}'")

    if rules.max_repeated_ngram_share < 1.0:
        share = repeated_ngram_share(tokens, rules.repeated_ngram_size)
        findings.add(
            R.REPEATED_NGRAMS,
            share > rules.max_repeated_ngram_share,
            lambda i: (
                f"{share[i]:.0%} of word {rules.repeated_ngram_size}-grams repeat "
                f"(max {rules.max_repeated_ngram_share:.0%})"
            ),
        )
    if rules.max_repeated_line_share < 1.0:
        line_share = repeated_line_share(visible)
        findings.add(
            R.REPEATED_LINES,
            line_share > rules.max_repeated_line_share,
            lambda i: f"{line_share[i]:.0%} of lines repeat (max {rules.max_repeated_line_share:.0%})",
        )
    if prompt_tokens is not None and prompt_of_row is not None and rules.echo_threshold < 1.0:
        echo = echo_share(tokens, prompt_tokens, prompt_of_row)
        findings.add(
            R.ECHOES_PROMPT,
            (echo >= rules.echo_threshold) & ~empty,
            lambda i: f"{echo[i]:.2f} of n-grams copied from the prompt",
        )
    if template and rules.echo_threshold < 1.0:
        copied, line = template_echo(visible, template)
        findings.add(R.ECHOES_PROMPT, copied, lambda i: f"repeats the template line '{line[i][:60]}'")
    if rules.reject_assistant_talk:
        findings.add(
            R.ASSISTANT_TALK,
            _matches(visible, _ASSISTANT_RE),
            lambda i: f"'{_first_match(texts[i], _ASSISTANT_RE)}'",
        )
        findings.add(
            R.ASSISTANT_TALK,
            _requester_talk(visible),
            lambda i: f"'{_first_match(texts[i], _REQUESTER_TALK_RE)}'",
        )
        findings.add(
            R.REFUSAL, _matches(visible, _REFUSAL_RE), lambda i: f"'{_first_match(texts[i], _REFUSAL_RE)}'"
        )
        findings.add(
            R.ASSISTANT_TALK,
            _matches(visible, _PLACEHOLDER_RE),
            lambda i: f"placeholder '{_first_match(texts[i], _PLACEHOLDER_RE)}'",
        )
        if labels:
            meta = label_talk_pattern(labels)
            findings.add(
                R.ASSISTANT_TALK,
                _matches(visible, meta),
                lambda i: f"talks about the task: '{_first_match(texts[i], meta)}'",
            )
    if rules.max_non_text_share < 1.0:
        junk = non_text_share(array)
        markup = _matches(array, _MARKUP)
        findings.add(
            R.NON_TEXT,
            (junk > rules.max_non_text_share) | markup,
            lambda i: (
                f"markup '{_first_match(texts[i], _MARKUP)}'"
                if markup[i]
                else f"{junk[i]:.0%} of characters are not ordinary text"
            ),
        )
    if rules.language:
        wrong, why = check_language(visible, tokens, rules.language)
        findings.add(R.WRONG_LANGUAGE, wrong & ~empty, lambda i: why[i])


# Rows per chunk: every check is per row, so chunks give the same result; hash tables and n-gram
# arrays then stay cache-sized (on one pass over 200k rows, n-gram dedup and echo ran ~2.5x slower
# than over 100k).
CHUNK_ROWS = 20_000


def run_heuristics(
    texts: Sequence[str],
    normalized: Sequence[str],
    findings: R.Findings,
    rules: CurationSpec,
    *,
    prompt_texts: Sequence[str] = (),
    prompt_of_row: np.ndarray | None = None,
    truncated: np.ndarray | None = None,
    template: str | None = None,
    labels: Sequence[str] = (),
    chunk_rows: int = CHUNK_ROWS,
) -> None:
    """`apply_heuristics` over chunks of rows, prompts tokenised once."""
    prompt_tokens = tokenize(normalize_many(prompt_texts)) if len(prompt_texts) else None
    for start in range(0, len(texts), chunk_rows):
        stop = min(start + chunk_rows, len(texts))
        part = R.Findings(stop - start)
        apply_heuristics(
            texts[start:stop],
            part,
            rules,
            tokens=tokenize(normalized[start:stop]),
            prompt_tokens=prompt_tokens,
            prompt_of_row=prompt_of_row[start:stop] if prompt_of_row is not None else None,
            truncated=truncated[start:stop] if truncated is not None else None,
            template=template,
            labels=labels,
        )
        findings.merge(part, start)
