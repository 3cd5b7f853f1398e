"""Personal data in generated text: detect, count, and scrub (replace with [EMAIL], [PHONE], ...).

Offline and rule based: e-mail addresses; phone numbers (digit groups in phone form, each
candidate validated with `phonenumbers`, Google's libphonenumber metadata: an international number
"+81 3-1234-5678" must be a valid number of its country, a national one the US (xxx) xxx-xxxx shape
or a trunk-prefixed number valid in a few numbering plans, so order numbers, serials and timestamps
are left alone); payment card numbers (13-19 digits passing the Luhn check); IBANs (passing the
ISO 13616 mod-97 check);
street addresses (house number + name + street suffix, "Hauptstraße 5", PO boxes); person names
after a cue ("my name is", "Mr.", "Dr.", ...) or a known first name followed by a capitalised
surname, capitals of any alphabet ("Bjørn Ødegård"). Checksums keep order numbers and prices from
being taken for cards or IBANs. `scrub_text` is the one-call public entry (detect + replace).

A cheap Arrow regex pre-filter picks the texts that could hold anything at all; only those are
scanned in Python, so a clean corpus costs one vectorised pass.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from synth_assets.curation.text import strip_format_characters, strip_format_characters_array

EMAIL = "EMAIL"
PHONE = "PHONE"
CARD = "CARD"
IBAN = "IBAN"
ADDRESS = "ADDRESS"
NAME = "NAME"
PII_TYPES = (EMAIL, IBAN, CARD, PHONE, ADDRESS, NAME)

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ -]?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
# candidates only: a "+country" prefix may be followed by a one-digit area code ("+33 6 12 34 56 78");
# not after '#' or inside a word ("Order #2024-11-30-8812"); `_phone_valid` decides
_PHONE = re.compile(
    r"(?<![\w+#:./])(?:\+\d{1,3}(?:[\s.-]?\(?\d{1,4}\)?)?[\s.-]?|\(\d{1,4}\)[\s.-]?)?"
    r"\d{2,4}(?:[\s.-]?\d{2,4}){1,4}(?!\w)"
)
# trunk-prefixed national numbers ("0..."), validated against these numbering plans
NATIONAL_REGIONS = ("GB", "DE", "FR", "IT", "ES", "NL", "AU")
# the North American shape, also with the fictional 555 exchange a model writes: reads as a phone
_NANP_SHAPE = re.compile(r"(?:1[\s.-]?)?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]\d{4}")
# the tail of a code just before a candidate ("tracking 1Z 999 AA1 01 2345 6784"): the digits
# continue that code, they are not a phone number
_CODE_BEFORE = re.compile(r"(?:\b[A-Za-z]+\d|\b\d+[A-Za-z])[A-Za-z0-9]*[\s.-]$")
# dates and timestamps inside a candidate (2024-01-15, 15.01.2024, 2026-11-30 14:24)
_DATE_LIKE = re.compile(r"\b\d{4}[./-]\d{1,2}[./-]\d{1,2}\b|\b\d{1,2}[./-]\d{1,2}[./-]\d{2,4}\b")
_STREET_SUFFIX = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
    r"Parkway|Pkwy|Circle|Cir|Square|Sq|Highway|Hwy|Close|Crescent|Row|Alley"
)
_ADDRESS = re.compile(
    rf"\b\d{{1,5}}[A-Za-z]?\s+(?:[A-Z][a-z]+\.?\s+){{1,3}}(?:{_STREET_SUFFIX})\b\.?"
    r"(?:,?\s*(?:Apt|Apartment|Suite|Unit)\.?\s*\w+)?"
    r"|\b[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|weg|gasse|platz|allee)\s+\d{1,4}[a-z]?\b"
    r"|\b(?:rue|avenue|boulevard|calle|via|avenida)\s+(?:de\s+la\s+|de\s+|del\s+|des\s+|du\s+)?"
    r"[A-Z][\w'-]+(?:\s+[A-Z][\w'-]+)?\s*,?\s*\d{1,4}\b"
    r"|\b\d{1,4},?\s+(?:rue|avenue|boulevard)\s+(?:de\s+la\s+|de\s+|des\s+|du\s+)?[A-Z][\w'-]+"
    r"|\bP\.?\s?O\.?\s+Box\s+\d+\b",
)
# Common first names that are not also everyday words or brands (no "Will", "Grace", "Mark", "Jordan").
_FIRST_NAMES_TEXT = (
    "james john robert michael david richard joseph thomas charles christopher daniel matthew anthony "
    "donald steven paul andrew joshua kenneth kevin brian george timothy ronald jason edward jeffrey "
    "ryan jacob gary nicholas eric jonathan stephen larry justin scott brandon benjamin samuel "
    "gregory alexander patrick jack dennis jerry tyler aaron henry douglas peter adam nathan zachary "
    "walter kyle harold carl jeremy keith roger gerald ethan arthur terry sean lawrence joe noah "
    "jesse albert bryan billy bruce willie dylan alan ralph gabriel roy juan wayne eugene randy louis "
    "russell vincent philip bobby johnny bradley mary patricia jennifer linda elizabeth barbara susan "
    "jessica sarah karen lisa nancy betty sandra margaret ashley kimberly emily donna michelle carol "
    "amanda melissa deborah stephanie rebecca sharon laura cynthia kathleen amy angela shirley anna "
    "brenda pamela emma nicole helen samantha katherine christine debra rachel carolyn janet "
    "catherine maria heather diane julie olivia joyce kelly christina lauren joan evelyn judith megan "
    "andrea cheryl hannah jacqueline martha gloria teresa ann sara frances kathryn janice jean "
    "abigail alice judy sophia denise doris marilyn danielle beverly isabella theresa diana natalie "
    "brittany marie kayla alexis lori sophie liam lucas oliver elijah mia ava amelia harper luca "
    "matteo giulia francesca hans klaus jürgen stefan andreas thomas wolfgang sabine ursula petra "
    "monika pierre jean-pierre françois nicolas julien camille manon chloé léa carlos jose josé luis "
    "miguel javier alejandro sofia lucía valentina mohammed ahmed fatima wei li yuki hiroshi priya "
    "rahul ananya arjun olga ivan dmitri sergei natasha"
)
_FIRST_NAMES = frozenset(_FIRST_NAMES_TEXT.split())
# any alphabet's capital, then lower-case letters and marks ("Ødegård", "Łukasz", "Zoë")
_CAPITALISED = r"\p{Lu}[\p{Ll}\p{M}'’-]+"
_NAME_AFTER_CUE = regex.compile(
    # no "this is", "contact", "call me": followed by brands or adjectives as often as by people
    rf"(?i:\b(?:my name is|my name's|i am called|i'm called|name:|signed,?|regards,?|"
    rf"sincerely,?|yours truly,?))\s+({_CAPITALISED}(?:\s+{_CAPITALISED})?)"
)
_NAME_AFTER_TITLE = regex.compile(
    r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof|Sir|Madam|Herr|Frau|Mme|Mlle|Sr|Sra)\.?\s+"
    rf"({_CAPITALISED}(?:\s+{_CAPITALISED})?)"
)
# a look-ahead, so "Contact Sarah Connor" yields "Contact Sarah" and "Sarah Connor" (overlapping)
_FULL_NAME = regex.compile(rf"(?=\b({_CAPITALISED})\s+({_CAPITALISED})\b)")
# what a cue may be followed by that is not a name ("This is Great", "Contact Support")
_NOT_NAMES_TEXT = (
    "the a an it this that my our your their his her its great good bad amazing awesome terrible "
    "customer support service team manager agent sales billing help us me him them i we you they not "
    "very so really just also absolutely definitely"
)
_NOT_NAMES = frozenset(_NOT_NAMES_TEXT.split())
# anything that could start a hit: '@', a digit run, a title, a cue, or a known first name
_PREFILTER = (
    r"@|\d{3}|\b[A-Z]{2}\d{2}|(?i:\b(mr|mrs|ms|miss|dr|prof|sir|madam|herr|frau|mme|name|signed|"
    r"regards|sincerely|yours truly|p\.?\s?o\.?\s+box|straße|strasse|rue|calle|via|avenida))\b"
    r"|\b\p{Lu}\p{Ll}+\s+\p{Lu}\p{Ll}+|\+\d"
)


@dataclass(frozen=True)
class PiiHit:
    kind: str
    start: int
    end: int
    value: str


def luhn_valid(digits: str) -> bool:
    if not 13 <= len(digits) <= 19 or not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    compact = re.sub(r"[ -]", "", candidate).upper()
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _phone_valid(value: str) -> bool:
    """Whether a candidate is a phone number. International form ("+81 3-1234-5678"): a valid
    number of its country (`phonenumbers`). National form: the North American (xxx) xxx-xxxx shape,
    or a trunk-prefixed number ("020 7946 0958", "06 12 34 56 78") valid in one of
    `NATIONAL_REGIONS`. Validity alone is too lenient for national digits: "2026-11-30 14" of a
    timestamp is a valid US number."""
    import phonenumbers

    candidate = value.strip()
    digits = re.sub(r"\D", "", candidate)
    if not 7 <= len(digits) <= 15 or _DATE_LIKE.search(candidate):
        return False
    if candidate.startswith("+"):
        try:
            return phonenumbers.is_valid_number(phonenumbers.parse(candidate, None))
        except phonenumbers.NumberParseException:
            return False
    # a bare run of digits without brackets or separators is more likely an id or amount
    if "(" not in candidate and not re.search(r"\d[\s.-]\d", candidate):
        return False
    if _NANP_SHAPE.fullmatch(candidate):
        return True
    if not re.match(r"\(?0[1-9]", candidate):
        return False
    for region in NATIONAL_REGIONS:
        try:
            if phonenumbers.is_valid_number(phonenumbers.parse(candidate, region)):
                return True
        except phonenumbers.NumberParseException:
            continue
    return False


def _is_name(words: str) -> bool:
    parts = words.split()
    return bool(parts) and all(p.lower() not in _NOT_NAMES for p in parts)


def detect(text: str, kinds: Sequence[str] = PII_TYPES) -> list[PiiHit]:
    """Every PII span in `text`, longest-first on overlaps, in text order.

    Detection reads the text without format characters (a zero-width space inside a phone number
    hides nothing); spans are given in positions of `text` itself, invisible characters included."""
    visible = strip_format_characters(text)
    if visible == text:
        return _detect_visible(text, kinds)
    kept = [index for index, char in enumerate(text) if strip_format_characters(char)]
    return [
        PiiHit(
            hit.kind, kept[hit.start], kept[hit.end - 1] + 1, text[kept[hit.start] : kept[hit.end - 1] + 1]
        )
        for hit in _detect_visible(visible, kinds)
    ]


def _detect_visible(text: str, kinds: Sequence[str]) -> list[PiiHit]:
    found: list[PiiHit] = []
    wanted = set(kinds)
    if EMAIL in wanted:
        found += [PiiHit(EMAIL, m.start(), m.end(), m.group()) for m in _EMAIL.finditer(text)]
    if IBAN in wanted:
        found += [
            PiiHit(IBAN, m.start(), m.end(), m.group()) for m in _IBAN.finditer(text) if iban_valid(m.group())
        ]
    if CARD in wanted:
        found += [
            PiiHit(CARD, m.start(), m.end(), m.group())
            for m in _CARD.finditer(text)
            if luhn_valid(re.sub(r"\D", "", m.group()))
        ]
    if PHONE in wanted:
        found += [
            PiiHit(PHONE, m.start(), m.end(), m.group())
            for m in _PHONE.finditer(text)
            if _phone_valid(m.group()) and not _CODE_BEFORE.search(text, 0, m.start())
        ]
    if ADDRESS in wanted:
        found += [PiiHit(ADDRESS, m.start(), m.end(), m.group()) for m in _ADDRESS.finditer(text)]
    if NAME in wanted:
        for pattern in (_NAME_AFTER_CUE, _NAME_AFTER_TITLE):
            for m in pattern.finditer(text):
                if _is_name(m.group(1)):
                    found.append(PiiHit(NAME, m.start(1), m.end(1), m.group(1)))
        for m in _FULL_NAME.finditer(text):
            if m.group(1).lower() in _FIRST_NAMES and m.group(2).lower() not in _NOT_NAMES:
                found.append(PiiHit(NAME, m.start(1), m.end(2), text[m.start(1) : m.end(2)]))
    # keep the longest of overlapping spans (a card number also looks like a phone number)
    found.sort(key=lambda hit: (hit.start, -(hit.end - hit.start)))
    kept: list[PiiHit] = []
    for hit in found:
        if kept and hit.start < kept[-1].end:
            if hit.end - hit.start > kept[-1].end - kept[-1].start:
                kept[-1] = hit
            continue
        kept.append(hit)
    return kept


def scrub(text: str, hits: Sequence[PiiHit]) -> str:
    """`text` with each hit replaced by its placeholder, e.g. [EMAIL]."""
    out = text
    for hit in sorted(hits, key=lambda h: h.start, reverse=True):
        out = out[: hit.start] + f"[{hit.kind}]" + out[hit.end :]
    return out


def _candidates(texts: Sequence[str]) -> np.ndarray:
    """Per text: whether the vectorised pre-filter (RE2, format characters removed) sees anything."""
    visible = strip_format_characters_array(pa.array(list(texts), type=pa.large_string()))
    return pc.match_substring_regex(visible, _PREFILTER).fill_null(False).to_numpy(zero_copy_only=False)


def scrub_text(text: str, kinds: Sequence[str] = PII_TYPES) -> str:
    """`text` with every PII span of the given kinds replaced by its placeholder ("[PHONE]"): the
    public one-call scrubber for anything shown or exported (previews, exports, cards)."""
    if (
        not text
        or not pc.match_substring_regex(pa.array([text], type=pa.large_string()), _PREFILTER)[0].as_py()
    ):
        return text
    return scrub(text, detect(text, kinds))


@dataclass(frozen=True)
class PiiScan:
    hits: list[list[PiiHit]]  # per text

    @property
    def counts(self) -> np.ndarray:
        return np.asarray([len(h) for h in self.hits], dtype=np.int64)

    def by_type(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for hits in self.hits:
            total.update(hit.kind for hit in hits)
        return {kind: total.get(kind, 0) for kind in PII_TYPES}

    def types_of(self, row: int) -> dict[str, int]:
        return dict(Counter(hit.kind for hit in self.hits[row]))


def scan(texts: Sequence[str], kinds: Sequence[str] = PII_TYPES) -> PiiScan:
    """Detect PII in many texts; only texts passing the vectorised pre-filter are scanned."""
    hits: list[list[PiiHit]] = [[] for _ in texts]
    if not texts:
        return PiiScan(hits)
    for row in np.flatnonzero(_candidates(texts)).tolist():
        hits[row] = detect(texts[row], kinds)
    return PiiScan(hits)
