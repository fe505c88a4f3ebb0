"""The keyword blocklist of the text guardrail, with the original's matching rules (spec section 9).

Expected folder: ``<guardrail>/blocklist/`` (``<guardrail>`` = ``<checkpoint_dir>/<model>/guardrail``)::

    custom/*        phrases censored by the profanity filter, one per line (empty folder: better-profanity's own list)
    whitelist/*     words the profanity filter must leave alone
    exact_match/*   phrases matched as whole words, and fuzzily when 6 characters or longer
    nltk_data/      NLTK data: tokenizers/punkt_tab (``word_tokenize``) and corpora/wordnet (lemmatizer)

A prompt is unsafe when it is empty; otherwise non-ASCII runs become a space and then, in order:
(1) better-profanity censors the prompt (whitelisted words restored) and anything censored blocks;
(2) the same on the prompt re-joined from its WordNet lemmas; (3) each exact-match phrase blocks when it
occurs as whole words (case-insensitive, any whitespace), or, when it has at least 6 characters, when a
window of as many prompt words has a ``difflib`` similarity ratio of at least ``(len - 0.4) / len``.

One deliberate difference: the censor marker is a character that cannot occur in an ASCII prompt, so a
literal ``*`` in a prompt is not mistaken for censorship. Blank lines in the keyword files are skipped
(the original kept them, and an empty exact-match phrase would have blocked every prompt).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path

from cosmos_cli.errors import CheckpointError, MissingDependencyError

CENSOR_MARK = "\u2588"  # never in an ASCII prompt
PARTIAL_MATCH_MIN_CHARS = 6
PARTIAL_MATCH_LETTER_COUNT = 0.4
KEYWORD_FOLDERS = ("custom", "whitelist", "exact_match")


def read_keywords(folder: Path) -> list[str]:
    """Every non-blank line of every file in ``folder``, stripped, in file-name order."""
    words: list[str] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        words.extend(line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines())
    return [w for w in words if w]


def to_ascii(text: str) -> str:
    return re.sub(r"[^\x00-\x7F]+", " ", text)


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def partial_match(normalized_prompt: str, normalized_phrase: str,
                  letter_count: float = PARTIAL_MATCH_LETTER_COUNT) -> str | None:
    """The first window of prompt words similar enough to ``normalized_phrase``, or None."""
    words = normalized_prompt.split()
    span = len(normalized_phrase.split())
    threshold = (len(normalized_phrase) - letter_count) / len(normalized_phrase)
    for i in range(len(words) - span + 1):
        window = " ".join(words[i:i + span])
        if SequenceMatcher(None, window, normalized_phrase).ratio() >= threshold:
            return window
    return None


def whole_word_match(prompt: str, phrases: list[str], min_chars: int = PARTIAL_MATCH_MIN_CHARS,
                     letter_count: float = PARTIAL_MATCH_LETTER_COUNT) -> str | None:
    """Why ``prompt`` matches an exact-match phrase (whole words, or fuzzily for long phrases), or None."""
    normalized_prompt = _normalize(prompt)
    for phrase in phrases:
        normalized = _normalize(phrase)
        if not normalized:
            continue
        if re.search(r"\b" + re.escape(normalized) + r"\b", normalized_prompt):
            return f"exact-match blocklist phrase {phrase!r}"
        if len(normalized) >= min_chars:
            window = partial_match(normalized_prompt, normalized, letter_count)
            if window is not None:
                return f"{window!r} is too close to blocklist phrase {phrase!r}"
    return None


@dataclass
class Blocklist:
    """The loaded keyword lists plus the profanity filter and lemmatizer built from them."""

    custom: list[str]
    whitelist: list[str]
    exact_match: list[str]
    profanity: object
    tokenize: object
    lemmatize: object

    @classmethod
    def load(cls, folder: Path) -> Blocklist:
        folder = Path(folder)
        missing = [name for name in KEYWORD_FOLDERS if not (folder / name).is_dir()]
        if missing:
            raise CheckpointError(f"blocklist folder {folder} lacks {', '.join(missing)}/")
        try:
            import nltk
            from better_profanity import Profanity
        except ImportError as e:
            raise MissingDependencyError(f"the text guardrail needs {e.name}",
                                         hint="pip install nltk better-profanity") from e
        custom, whitelist, exact = (read_keywords(folder / name) for name in KEYWORD_FOLDERS)
        nltk_data = folder / "nltk_data"
        if nltk_data.is_dir() and str(nltk_data) not in nltk.data.path:
            nltk.data.path.insert(0, str(nltk_data))  # the checkpoint's data wins over a user's own copy
        profanity = Profanity(custom or None)
        if whitelist:
            profanity.load_censor_words(custom_words=custom or None, whitelist_words=list(whitelist))
        lemmatizer = nltk.WordNetLemmatizer()
        blocklist = cls(custom, whitelist, exact, profanity, nltk.word_tokenize, lemmatizer.lemmatize)
        try:  # fail at load time, not on every prompt, when the NLTK data is missing
            blocklist.lemmatize(blocklist.tokenize("Load checks.")[1])
        except LookupError as e:
            raise CheckpointError(f"NLTK data (tokenizers/punkt_tab, corpora/wordnet) not found in {nltk_data}",
                                  hint="Re-download the guardrail checkpoint, or pass --disable-guardrail.") from e
        return blocklist

    def _censored(self, text: str) -> str | None:
        """What the profanity filter censored in ``text`` (whitelisted words restored), or None."""
        censored = self.profanity.censor(text, censor_char=CENSOR_MARK).split()
        original = text.split()
        whitelist = set(self.whitelist)
        for i, token in enumerate(original):
            if i < len(censored) and token.strip(string.punctuation).lower() in whitelist:
                censored[i] = token
        hits = [i for i, word in enumerate(censored) if CENSOR_MARK in word]
        if not hits:
            return None
        if len(censored) == len(original):  # one word per word: name them
            return ", ".join(repr(original[i]) for i in hits)
        return repr(" ".join(censored))

    def check(self, prompt: str) -> tuple[bool, str]:
        """``(safe, reason)`` for one prompt."""
        if not prompt:
            return False, "the prompt is empty"
        prompt = to_ascii(prompt)
        hit = self._censored(prompt)
        if hit:
            return False, f"blocklisted word: {hit}"
        lemmatized = " ".join(self.lemmatize(token) for token in self.tokenize(prompt))
        hit = self._censored(lemmatized)
        if hit:
            return False, f"blocklisted word after lemmatization: {hit}"
        reason = whole_word_match(prompt, self.exact_match)
        if reason:
            return False, reason
        return True, "no blocklisted word"
