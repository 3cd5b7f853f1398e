"""An offline language check: script share, then py3langid (langid.py's model, bundled in the wheel).

A text is "wrong language" only on positive evidence: most of its letters are in another script, or
it is long enough to judge (`MIN_WORDS_FOR_DETECTOR` words) and py3langid names another language
with probability >= `MIN_DETECTOR_PROBABILITY`. Measured here: our former stopword votes passed
Dutch, Swedish, Polish, Turkish and Indonesian sentences as English (7 of 12 foreign sentences
caught); py3langid caught 12/12 with 0 false positives on 169 English texts. Short texts are never
rejected: a 3-word review carries too little evidence for any detector.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth_assets.curation.text import Tokens

# Function words per language (normalised form: lower case, no apostrophes). Words shared by two
# lists (e.g. "de", "la", "in") are dropped from both below: they carry no vote.
_STOPWORDS: dict[str, str] = {
    "en": "the and is this that with for was were very but have has had not you they it my our "
    "would could should just about there their what which when from will been them these those "
    "because really also than then after only",
    "de": "der die das und ist nicht ich es sehr ein eine einen mit auf für zu den dem sich auch "
    "aber wie hat haben nach noch nur wir bei gut kann schon mein meine dass wenn oder zum zur vom "
    "im ganz leider wirklich",
    "fr": "le les et est une des du pas je il elle très pour avec sur mais ce cette qui dans au aux "
    "ne sont mon ma mes bien tout plus nous vous ai cest jai était vraiment",
    "es": "el los las y es una que muy por para con pero lo se su mi al del como está esta este "
    "son fue más bien todo tiene producto muy también",
    "it": "il lo gli è di che non molto per con ma della questo questa sono ho anche più bene "
    "tutto come prodotto anche davvero",
    "pt": "os um uma não muito para com mas do da este esta isso meu minha são foi mais bem tudo "
    "como em no na produto também",
    "nl": "het een niet ik zeer heel met op voor maar dit deze dat van zijn mijn ook goed wel nog "
    "er te bij naar als",
}
# RE2 script classes; Latin-script languages are also checked by stopwords.
_SCRIPTS: dict[str, str] = {
    "en": "Latin", "de": "Latin", "fr": "Latin", "es": "Latin", "it": "Latin", "pt": "Latin",
    "nl": "Latin", "sv": "Latin", "da": "Latin", "no": "Latin", "pl": "Latin", "cs": "Latin",
    "tr": "Latin", "ru": "Cyrillic", "uk": "Cyrillic", "bg": "Cyrillic", "el": "Greek",
    "ar": "Arabic", "he": "Hebrew", "hi": "Devanagari", "zh": "Han", "ko": "Hangul",
    "ja": "Han|Hiragana|Katakana", "th": "Thai",
}  # fmt: skip
SUPPORTED_LANGUAGES = frozenset(_SCRIPTS)


def _exclusive_stopwords() -> dict[str, frozenset[str]]:
    owners: dict[str, set[str]] = {}
    for language, words in _STOPWORDS.items():
        for word in words.split():
            owners.setdefault(word, set()).add(language)
    return {
        language: frozenset(w for w in words.split() if len(owners[w]) == 1)
        for language, words in _STOPWORDS.items()
    }


STOPWORDS = _exclusive_stopwords()
MIN_LETTERS_FOR_SCRIPT = 10
MIN_SCRIPT_SHARE = 0.5
MIN_WORDS_FOR_DETECTOR = 5
MIN_DETECTOR_PROBABILITY = 0.5
# py3langid costs ~0.27 ms per text (27 s per 100k rows): a text with at least this many function
# words of the target language and none of another listed language is taken as in the target
# language without asking the detector
CLEARLY_TARGET_STOPWORDS = 3
# languages a character-n-gram detector confuses with each other on short texts: a Norwegian text
# named Danish is not in the wrong language
_CLOSE = [{"no", "nb", "nn", "da"}, {"cs", "sk"}, {"ru", "uk", "be"}, {"id", "ms"}, {"hr", "sr", "bs"}]
CLOSE_LANGUAGES = {code: frozenset(group) for group in _CLOSE for code in group}


def stopword_votes(tokens: Tokens) -> tuple[list[str], np.ndarray]:
    """(languages, matrix rows x languages) of function-word counts per text."""
    languages = list(STOPWORDS)
    votes = np.zeros((tokens.n_rows, len(languages)), dtype=np.int64)
    if len(tokens.codes) == 0:
        return languages, votes
    for column, language in enumerate(languages):
        # membership is decided once per distinct word, then broadcast to every token
        in_list = np.fromiter((w in STOPWORDS[language] for w in tokens.words), bool, len(tokens.words))
        hits = in_list[tokens.codes]
        votes[:, column] = np.bincount(tokens.rows[hits], minlength=tokens.n_rows)
    return languages, votes


@lru_cache(maxsize=1)
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    # normalised probabilities, so MIN_DETECTOR_PROBABILITY means the same for every text
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_languages(texts: Sequence[str]) -> list[tuple[str, float]]:
    """(ISO 639-1 code, probability) per text from py3langid (97 languages)."""
    identifier = _identifier()
    return [(str(code), float(probability)) for code, probability in map(identifier.classify, texts)]


def check_language(texts: pa.Array, tokens: Tokens, language: str) -> tuple[np.ndarray, list[str]]:
    """(wrong, detail per row): whether each text is evidently not in `language`, and why."""
    n = tokens.n_rows
    wrong = np.zeros(n, dtype=bool)
    details = [""] * n
    script = _SCRIPTS[language]
    letters = pc.count_substring_regex(texts, r"\pL").fill_null(0).to_numpy(zero_copy_only=False)
    pattern = "|".join(rf"\p{{{name}}}" for name in script.split("|"))
    in_script = pc.count_substring_regex(texts, pattern).fill_null(0).to_numpy(zero_copy_only=False)
    share = np.divide(in_script, letters, out=np.ones(n), where=letters > 0)
    off_script = (letters >= MIN_LETTERS_FOR_SCRIPT) & (share < MIN_SCRIPT_SHARE)
    for row in np.flatnonzero(off_script):
        details[row] = f"only {share[row]:.0%} of letters in {script} script (expected {language})"
    wrong |= off_script
    # scripts without spaces are split into characters by normalisation: count words by letters
    judged = ~off_script & (tokens.counts >= MIN_WORDS_FOR_DETECTOR)
    if language in STOPWORDS:
        languages, votes = stopword_votes(tokens)
        target = votes[:, languages.index(language)]
        others = np.delete(votes, languages.index(language), axis=1)
        judged &= ~((target >= CLEARLY_TARGET_STOPWORDS) & (others.max(axis=1, initial=0) == 0))
    rows = np.flatnonzero(judged)
    if len(rows):
        values = texts.take(pa.array(rows)).to_pylist()
        for row, (code, probability) in zip(rows.tolist(), detect_languages(values), strict=True):
            same = code == language or code in CLOSE_LANGUAGES.get(language, ())
            if not same and probability >= MIN_DETECTOR_PROBABILITY:
                wrong[row] = True
                details[row] = f"py3langid: '{code}' ({probability:.2f}), expected '{language}'"
    return wrong, details
