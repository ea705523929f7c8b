"""A generated target language for translation: real English in, a seeded made-up language out.

Why: a translation task needs sentence pairs whose mapping has real structure (a lexicon to
learn, morphology, agreement, word order) so that BLEU measures learning, yet needs nothing
downloaded. The source side is real English: sentences cut from the paragraphs of
``raynas.tasks.text.stdlib_docstrings``. The target side is a deterministic function of the
source tokens, documented here, and chosen by ``language_seed``.

English side (``english_sentences``): paragraphs are split into sentences after ``.``, ``!``
or ``?``; a sentence is kept when it starts with a capital letter, every whitespace-separated
piece is a plain word (``word``, ``Word`` or an acronym such as ``HTTP``; no inner capitals
as in ``ValueError``, no digits, underscores, dots, hyphens, quotes or brackets of code) with
an optional ``(`` before and ``) , . ; :`` after, and its parentheses balance. It is
lowercased and cut into words and the marks ``, . ; : ( )``; those with
``min_words..max_words`` words (marks not counted) are kept, once each, in corpus order.
With this Python's standard library, 3..16 words give about 6,500 sentences.

The target language (``Language``), applied to the source tokens in this order:

a. Lexicon. Every English word but the determiners (rule c) that is no inflection (rule b)
   gets a pseudo-word of consonant-vowel syllables (consonants ``b d f g k l m n p r s t v
   z``, vowels ``a e i o u``): the 60 most frequent one syllable, the next 2400 two, the rest
   three (a word's frequency counts its inflected forms too). Where a word lands is a hash of
   the seed and the word (blake2b); a taken slot moves it to the next free one, so no two
   words share a pseudo-word. The word list and frequencies are the corpus sentences' (all
   lengths). A word the lexicon lacks is spelled out, one seeded syllable per letter,
   followed by ``q``.
b. Morphology. A word that is a regular inflection of another word of the corpus (stem of at
   least 3 letters) is the stem's translation plus a suffix: plural / third person ``-s``
   (``-es`` after s, x, z, ch, sh; consonant + ``y`` -> ``-ies``), past ``-ed`` (``-d``
   after e, consonant + ``y`` -> ``-ied``), ``-ing`` (a final e dropped) and ``-ly``
   (consonant + ``y`` -> ``-ily``, ``le`` -> ``-ly``). Suffixes are a seeded vowel after one
   of the consonants ``h j w x``, which no stem uses, so a target word reads back
   unambiguously (``files`` = ``file`` + plural).
c. Agreement. The determiners ``the``, ``a``/``an``, ``this``/``these``, ``that``/``those``
   take a form by their kind, the gender of the next word and number: gender is the last
   vowel of that word's stem in the target language (a seeded split of the five vowels into
   three genders), number is plural when the next word has the plural suffix or the
   determiner is ``these``/``those``. A form is a gender vowel, a kind consonant and, in the
   plural, a number vowel (all seeded); it starts with a vowel, which no lexicon word does.
   A determiner before a mark, a determiner or nothing takes gender 0 (plural only for
   ``these``/``those``).
d. Word order. Prepositions (``of``, ``in``, ``to``, ``for``, ``with``...) become
   postpositions: one followed by a phrase (an optional determiner and one word that is
   neither a preposition nor an auxiliary) goes after that phrase. Then auxiliaries and
   modals (``is``, ``are``, ``was``, ``be``, ``can``, ``may``, ``must``, ``will``, ``has``,
   ``does``...) move to the end of their clause, keeping their order; a clause ends at any
   of ``, . ; : ( )`` or at the end of the sentence (the long-distance rule).
e. Marks are copied in place: no word crosses one.

The seed (``language_seed``, default 0) picks the lexicon's slots, the suffixes, the split of
vowels into genders, the determiners' sounds and the spelling syllables; the rules are the
same for every seed. Randomness is hashing (no ``random`` stream whose algorithm may change),
so a seed gives the same language on every machine, given the same corpus: the lexicon
follows the stdlib's words, so another Python version may give other pseudo-words.

Worked example (seed 0)::

    english: properties of the widgets are specified with keyword arguments .
    target:  fefoja ove teja zi kuwo giki gi poja ra .

``properties`` is ``property`` (``fefo``) plus the plural suffix ``-ja``, ``specified`` is
``specify`` (``ku``) plus the past suffix ``-wo``; ``the`` before the plural ``widgets``
(``teja``) is ``ove``: gender vowel ``o``, the consonant of ``the`` ``v``, plural ``e``;
``of`` (``zi``) follows ``the widgets`` and ``with`` (``gi``) follows ``keyword``
(``giki``); ``are`` (``ra``) moved from the fourth word to the end of its clause.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from collections.abc import Iterable

from raynas.tasks.text import stdlib_docstrings

DEFAULT_MAX_WORDS, DEFAULT_MIN_WORDS = 16, 3
MARKS = frozenset(",.;:()")
DETERMINERS = {"the": 0, "a": 1, "an": 1, "this": 2, "these": 2, "that": 3, "those": 3}
PLURAL_DETERMINERS = frozenset({"these", "those"})
PREPOSITIONS = frozenset(
    "of in to for with on at by from into onto over under about after before between "
    "through without within during against among upon via across along behind beyond "
    "toward towards".split())
AUXILIARIES = frozenset(
    "is are was were be been being am can could may might must will would shall should "
    "has have had does do did".split())
CLOSED = frozenset(DETERMINERS) | PREPOSITIONS | AUXILIARIES

CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"
SYLLABLES = tuple(c + v for c in CONSONANTS for v in VOWELS)
SUFFIX_CONSONANTS = "hjwx"  # no stem uses them: a suffix is always recognisable
SPELLED_END = "q"  # ends a spelled-out word (no stem or suffix uses it)
PLURAL, PAST, ING, LY = range(4)
SUFFIX_NAMES = ("plural", "past", "ing", "ly")
# Lexicon tiers by frequency rank: (words, syllables).
_TIERS = ((60, 1), (2400, 2), (None, 3))

_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")
_PIECE = re.compile(r"\(?(?:[A-Z][a-z]*|[A-Z]+|[a-z]+)[),.;:]*")
_TOKEN = re.compile(r"[a-z]+|[,.;:()]")


# ---- the English side ------------------------------------------------------------------
def _clean(sentence: str) -> tuple[str, ...] | None:
    """The lowercased tokens of a plain-prose sentence, None for anything else."""
    if not sentence[:1].isupper():
        return None
    if not all(_PIECE.fullmatch(p) for p in sentence.split()):
        return None
    depth = 0
    for ch in sentence:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return None
    return tuple(_TOKEN.findall(sentence.lower())) if depth == 0 else None


@functools.lru_cache(maxsize=1)
def _all_sentences() -> tuple[tuple[str, ...], ...]:
    """Every clean sentence of the corpus as tokens, once each, in order (any length)."""
    found: dict[tuple[str, ...], None] = {}
    for paragraph in stdlib_docstrings():
        for sentence in _SENTENCE_BREAK.split(paragraph):
            tokens = _clean(sentence)
            if tokens:
                found.setdefault(tokens, None)
    return tuple(found)


@functools.lru_cache(maxsize=8)
def _sentences(max_words: int, min_words: int) -> tuple[str, ...]:
    return tuple(" ".join(t) for t in _all_sentences()
                 if min_words <= sum(w not in MARKS for w in t) <= max_words)


def english_sentences(max_words: int = DEFAULT_MAX_WORDS,
                      min_words: int = DEFAULT_MIN_WORDS) -> list[str]:
    """The corpus sentences of ``min_words..max_words`` words, lowercased, tokens joined by
    single spaces, once each, in corpus order (cached)."""
    return list(_sentences(max_words, min_words))


# ---- morphology ------------------------------------------------------------------------
def _consonant_y(stem: str) -> bool:
    return len(stem) >= 2 and stem[-1] == "y" and stem[-2] not in VOWELS


def inflect(stem: str, kind: int) -> str:
    """The English word ``stem`` with the regular suffix ``kind`` (one form per stem)."""
    if kind == PLURAL:
        if _consonant_y(stem):
            return stem[:-1] + "ies"
        return stem + ("es" if stem.endswith(("s", "x", "z", "ch", "sh")) else "s")
    if kind == PAST:
        if _consonant_y(stem):
            return stem[:-1] + "ied"
        return stem + ("d" if stem.endswith("e") else "ed")
    if kind == ING:
        return (stem[:-1] if stem.endswith("e") and not stem.endswith("ee") else stem) + "ing"
    if _consonant_y(stem):
        return stem[:-1] + "ily"
    return stem[:-1] + "y" if stem.endswith("le") else stem + "ly"


def _stem_candidates(word: str, kind: int) -> tuple[str, ...]:
    if kind == PLURAL:
        return word[:-1], word[:-2], word[:-3] + "y"
    if kind == PAST:
        return word[:-1], word[:-2], word[:-3] + "y"
    if kind == ING:
        return word[:-3], word[:-3] + "e"
    return word[:-2], word[:-3] + "y", word[:-1] + "e"


def analyse(word: str, known: Iterable[str] | set[str]) -> tuple[str, int] | None:
    """``(stem, kind)`` when ``word`` is ``inflect(stem, kind)`` for a ``known`` stem of at
    least 3 letters (closed-class words are neither analysed nor stems), else None."""
    if word in CLOSED or len(word) < 4:
        return None
    for kind in (PLURAL, PAST, ING, LY):
        for stem in _stem_candidates(word, kind):
            if (len(stem) >= 3 and stem not in CLOSED and stem in known
                    and inflect(stem, kind) == word):
                return stem, kind
    return None


# ---- the language ----------------------------------------------------------------------
def _hash(seed: int, *parts: object) -> int:
    """A 64-bit number from the seed and ``parts``, the same on every machine."""
    text = "\x1f".join(map(str, (seed, *parts)))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _shuffled(seed: int, what: str, items: Iterable[str]) -> list[str]:
    return sorted(items, key=lambda x: (_hash(seed, what, x), x))


@functools.lru_cache(maxsize=1)
def corpus_words() -> tuple[str, ...]:
    """Every word occurrence of the corpus sentences (all lengths), in order."""
    return tuple(t for s in _all_sentences() for t in s if t not in MARKS)


class Language:
    """The target language of ``seed``, its lexicon built from ``vocabulary`` (word
    occurrences: repeats count as frequency; default: the corpus's words)."""

    def __init__(self, seed: int = 0, vocabulary: Iterable[str] | None = None):
        self.seed = seed
        counts = Counter(corpus_words() if vocabulary is None else vocabulary)
        self.known = ({w for w in counts if w.isalpha()} | PREPOSITIONS | AUXILIARIES) - set(
            DETERMINERS)
        rng = _shuffled(seed, "suffix", SUFFIX_CONSONANTS)
        self.suffixes = tuple(c + VOWELS[_hash(seed, "suffix vowel", k) % len(VOWELS)]
                              for k, c in enumerate(rng))
        order = _shuffled(seed, "gender", VOWELS)  # two, two and one vowels per gender
        self.gender_of_vowel = {v: min(i // 2, 2) for i, v in enumerate(order)}
        self.gender_vowels = tuple(_shuffled(seed, "gender vowel", VOWELS)[:3])
        self.kind_consonants = tuple(_shuffled(seed, "kind", CONSONANTS)[:4])
        self.plural_vowel = VOWELS[_hash(seed, "plural vowel") % len(VOWELS)]
        self.letters = dict(zip("abcdefghijklmnopqrstuvwxyz",
                                _shuffled(seed, "letter", SYLLABLES)))
        self.analysis = {w: analyse(w, self.known) for w in self.known}
        roots: Counter[str] = Counter()
        for w in self.known:
            roots[self._root(w)] += counts.get(w, 0)
        bases = sorted((w for w in self.known if self.analysis[w] is None),
                       key=lambda w: (-roots[w], w))
        self.lexicon = self._assign(bases)
        self._memo: dict[str, str] = {}

    def _root(self, word: str) -> str:
        while (a := self.analysis.get(word)) is not None:
            word = a[0]
        return word

    def _assign(self, bases: list[str]) -> dict[str, str]:
        """Pseudo-words for the base words, most frequent first: a hashed slot in the
        tier's table of syllable strings, or the next free one."""
        lexicon, start = {}, 0
        for size, syllables in _TIERS:
            tier = bases[start:None if size is None else start + size]
            start += len(tier)
            slots, used = len(SYLLABLES) ** syllables, set()
            for w in tier:
                code = _hash(self.seed, "word", w) % slots
                while code in used:
                    code = (code + 1) % slots
                used.add(code)
                parts = []
                for _ in range(syllables):
                    code, digit = divmod(code, len(SYLLABLES))
                    parts.append(SYLLABLES[digit])
                lexicon[w] = "".join(parts)
        return lexicon

    # ---- words ---------------------------------------------------------------------------
    def word(self, english: str) -> str:
        """The translation of one word out of context: a lexicon word, a stem plus its
        suffix, or the spelled-out form; a determiner's gender-0 singular form; a token
        that is no lowercase word (a mark, a number) as it is."""
        if english in DETERMINERS:
            return self.determiner(english, None)
        if english in self._memo:
            return self._memo[english]
        if english in self.lexicon:
            out = self.lexicon[english]
        elif not (english.isalpha() and english.isascii() and english.islower()):
            out = english
        elif (a := self.analysis.get(english, analyse(english, self.known))) is not None:
            out = self.word(a[0]) + self.suffixes[a[1]]
        else:
            out = "".join(self.letters[c] for c in english) + SPELLED_END
        self._memo[english] = out
        return out

    def stem_and_kind(self, english: str) -> tuple[str, int | None]:
        """The word's stem in the lexicon sense (itself if not inflected) and its outermost
        suffix kind (None if none)."""
        a = self.analysis.get(english, analyse(english, self.known))
        return (english, None) if a is None else (self._root(english), a[1])

    def gender(self, english: str) -> int:
        """The gender of a word: the last vowel of its stem's translation (0 if none)."""
        target = self.word(self.stem_and_kind(english)[0])
        vowels = [c for c in target if c in VOWELS]
        return self.gender_of_vowel[vowels[-1]] if vowels else 0

    def determiner(self, english: str, following: str | None) -> str:
        """The form of the determiner ``english`` before the word ``following``."""
        plural = english in PLURAL_DETERMINERS
        gender = 0
        if following is not None and following not in MARKS and following not in DETERMINERS:
            gender = self.gender(following)
            plural = plural or self.stem_and_kind(following)[1] == PLURAL
        form = self.gender_vowels[gender] + self.kind_consonants[DETERMINERS[english]]
        return form + (self.plural_vowel if plural else "")

    # ---- sentences -----------------------------------------------------------------------
    def translate(self, sentence: str) -> str:
        """The translation of a sentence given as space-separated lowercase tokens."""
        tokens = sentence.split()
        n = len(tokens)
        roles = [_role(t) for t in tokens]
        forms = [self.determiner(t, tokens[i + 1] if i + 1 < n else None) if r == "det"
                 else t if r == "mark" else self.word(t)
                 for i, (t, r) in enumerate(zip(tokens, roles))]
        order, i = [], 0
        while i < n:  # prepositions after their phrase
            j = i + 1
            if roles[i] == "prep":
                if j < n and roles[j] == "det":
                    j += 1
                if j < n and roles[j] == "word":
                    order.extend([*range(i + 1, j + 1), i])
                    i = j + 1
                    continue
            order.append(i)
            i += 1
        out, clause, moved = [], [], []
        for k in order:  # auxiliaries to the end of their clause
            if roles[k] == "mark":
                out.extend([*clause, *moved, k])
                clause, moved = [], []
            else:
                (moved if roles[k] == "aux" else clause).append(k)
        out.extend([*clause, *moved])
        return " ".join(forms[k] for k in out)


def _role(token: str) -> str:
    if token in MARKS:
        return "mark"
    if token in DETERMINERS:
        return "det"
    if token in PREPOSITIONS:
        return "prep"
    return "aux" if token in AUXILIARIES else "word"


@functools.lru_cache(maxsize=4)
def language(seed: int = 0) -> Language:
    """The language of ``seed`` with the corpus lexicon (cached)."""
    return Language(seed)


def sentence_pairs(max_pairs: int | None = None, max_words: int = DEFAULT_MAX_WORDS,
                   language_seed: int = 0) -> list[tuple[str, str]]:
    """The first ``max_pairs`` (None: all) corpus sentences of 3..``max_words`` words with
    their translations, ``(english, target)``, in corpus order."""
    english = _sentences(max_words, DEFAULT_MIN_WORDS)
    english = english if max_pairs is None else english[:max_pairs]
    lang = language(language_seed)
    return [(s, lang.translate(s)) for s in english]
