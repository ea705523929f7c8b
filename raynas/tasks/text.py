"""English text for the language tasks, and the tokenizers that turn it into ids.

``stdlib_docstrings``: real English prose that every Python installation carries, the
docstrings of the standard library's own source files (modules, classes and functions), read
with ``ast`` and never imported. Each docstring is cut into paragraphs; doctest examples and
lines that are mostly code are dropped, whitespace is normalised and repeated paragraphs are
kept once, in order. The result depends only on the Python installation.

Tokenizers are ``tokenizers.Tokenizer`` objects: ``train_tokenizer`` fits a byte-pair encoding
on given texts (NFKC and lowercase normalisation, split on whitespace and punctuation; the same
texts give the same vocabulary; ``decodable=True`` keeps the spaces so that ids decode back
to the text), ``load_tokenizer`` reads a user's ``tokenizer.json`` and checks
it against the model settings. Trained tokenizers hold ``SPECIAL_TOKENS`` at ids 0.. in order:
``[PAD]`` = 0, ``[UNK]``, ``[MASK]``, ``[SEP]``, ``[BOS]``, ``[EOS]``.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from raynas.errors import ConfigError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[MASK]", "[SEP]", "[BOS]", "[EOS]")
PAD, UNK, MASK, SEP, BOS, EOS = range(len(SPECIAL_TOKENS))

# Folders under the stdlib that are not the library's own prose: its test suites, and
# site-packages (third-party packages installed into this Python).
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_BLOCKS = (ast.stmt, ast.excepthandler, ast.match_case)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_WORD = re.compile(r"[A-Za-z]{2,}")
_ALPHABET = 200  # initial characters a trained BPE keeps (the rest are [UNK])
# A decodable tokenizer's pieces: a word (letters and digits) or one other character, each
# with the space marker before it if there is one; a space marker left alone (two spaces).
_DECODABLE_PIECE = r"▁?[\p{L}\p{N}]+|▁?[^▁\p{L}\p{N}]|▁"


# ---- the corpus ------------------------------------------------------------------------
def stdlib_files() -> tuple[Path, list[str]]:
    """The stdlib folder (``sysconfig.get_paths()["stdlib"]``: where ``os`` lives, found
    without ``sysconfig``'s lazily imported build data) and its ``.py`` files, relative and
    sorted: the top level and every package below it (folders with an ``__init__.py``),
    without test suites."""
    root = Path(os.__file__).parent
    found: list[str] = []

    def walk(folder: str, rel: str) -> None:
        with os.scandir(folder) as entries:
            for e in entries:
                name = f"{rel}/{e.name}" if rel else e.name
                if e.name.endswith(".py") and e.is_file():
                    found.append(name)
                elif (e.is_dir() and e.name not in _SKIP_DIRS
                      and os.path.isfile(os.path.join(e.path, "__init__.py"))):
                    walk(e.path, name)

    walk(str(root), "")
    return root, sorted(found)


def docstrings(source: bytes) -> Iterator[str]:
    """The docstrings of a module's source (the module's, then its classes' and functions'),
    cleaned of their indentation; nothing for a file that does not parse. The bytes are read
    as UTF-8 whatever the file's coding cookie says (a cookie would import its codec; the odd
    non-ASCII character of such a file becomes U+FFFD)."""
    text = source.decode("utf-8", errors="replace")
    try:
        with warnings.catch_warnings():  # invalid escapes in old files: not our concern
            warnings.simplefilter("ignore")
            tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return
    todo = [tree]  # breadth first, as ast.walk, through statements only (defs are
    for node in todo:  # statements; expressions, most of a tree, hold none)
        if isinstance(node, _DOC_NODES):
            doc = ast.get_docstring(node)
            if doc:
                yield doc
        todo.extend(c for c in ast.iter_child_nodes(node) if isinstance(c, _BLOCKS))


def _prose_line(line: str) -> bool:
    """A line of text rather than code: unindented (an indented block in a cleaned docstring
    is an example, a table or a signature) and made mostly of letters and spaces."""
    s = line.strip()
    if not s or line[:1].isspace():
        return False
    return sum(c.isalpha() or c == " " for c in s) >= 0.85 * len(s)


def paragraphs(doc: str) -> Iterator[str]:
    """The prose paragraphs of a docstring, each on one line: a paragraph with a doctest is
    dropped, so is one whose lines are mostly code; of the rest, code lines are dropped."""
    for block in _PARAGRAPH_BREAK.split(doc):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines or any(ln.lstrip().startswith((">>>", "... ")) for ln in lines):
            continue
        kept = [ln for ln in lines if _prose_line(ln)]
        if 2 * len(kept) < len(lines):
            continue
        text = " ".join(" ".join(kept).split())
        if len(text) >= 20 and len(_WORD.findall(text)) >= 4:
            yield text


def unique(texts: Iterable[str]) -> list[str]:
    """``texts`` without repeats, in first-seen order."""
    return list(dict.fromkeys(texts))


@functools.lru_cache(maxsize=1)
def stdlib_corpus() -> tuple[str, ...]:
    """Every prose paragraph of the stdlib's docstrings, once each, in file order (cached:
    parsing the files takes seconds)."""
    root, files = stdlib_files()
    found: list[str] = []
    for rel in files:
        try:
            source = (root / rel).read_bytes()
        except OSError:
            continue
        for doc in docstrings(source):
            found.extend(paragraphs(doc))
    return tuple(unique(found))


def stdlib_docstrings(max_chars: int | None = None) -> list[str]:
    """English paragraphs from the standard library's docstrings: all of them, or the first
    ones that together hold at most ``max_chars`` characters."""
    corpus = stdlib_corpus()
    if max_chars is None:
        return list(corpus)
    out, total = [], 0
    for text in corpus:
        if total + len(text) > max_chars:
            break
        out.append(text)
        total += len(text)
    return out


# ---- tokenizers ------------------------------------------------------------------------
def train_tokenizer(texts: Sequence[str], vocab_size: int, decodable: bool = False) -> Any:
    """A BPE tokenizer of at most ``vocab_size`` ids fitted on ``texts``, with
    ``SPECIAL_TOKENS`` at ids 0..5. Deterministic: the same texts give the same tokenizer
    (no continuing-subword prefix, whose ids the trainer assigns in hash order).

    ``decodable``: keep the spaces, so that ``tok.decode(ids)`` gives the (normalised) text
    back, as translation's BLEU needs: each space becomes ``▁`` (Metaspace, which also puts
    one before the text), then the text is cut into runs of letters and digits and single
    other characters, each with the ``▁`` before it; the Metaspace decoder turns ``▁`` back
    into spaces. The default splits on whitespace and punctuation and drops the spaces, so
    decoding cannot tell ``a (b`` from ``a(b``."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    n_special = len(SPECIAL_TOKENS)
    if vocab_size <= n_special:
        raise ConfigError(f"model.vocab_size = {vocab_size}: a trained tokenizer needs more "
                          f"than {n_special} ids (its special tokens)")
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    if decodable:
        pieces = pre_tokenizers.Split(Regex(_DECODABLE_PIECE), behavior="isolated")
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(split=False),
                                                     pieces])
        tok.decoder = decoders.Metaspace()
    else:
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  limit_alphabet=min(_ALPHABET, vocab_size - n_special))
    tok.train_from_iterator(list(texts), trainer)
    return tok


def load_tokenizer(path: str | Path, vocab_size: int, needed: Sequence[str] = (),
                   field: str = "data.options.tokenizer") -> Any:
    """A user's ``tokenizer.json`` (``field`` names the setting in errors), checked: its ids
    below ``vocab_size`` and holding the ``needed`` special tokens."""
    from tokenizers import Tokenizer

    where = f"{field} = {str(path)!r}"
    if not Path(path).is_file():
        raise ConfigError(f"{where}: no such file (a tokenizer.json of the tokenizers "
                          "package)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exceptions
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{where}: not a tokenizer.json the tokenizers package reads "
                          f"({reason})") from None
    check_tokenizer(tok, vocab_size, needed, where)
    tok.no_truncation()
    tok.no_padding()
    return tok


def check_tokenizer(tok: Any, vocab_size: int, needed: Sequence[str], where: str) -> None:
    """``ConfigError`` (starting with ``where``) for ids at or above ``vocab_size`` or a
    missing ``needed`` token."""
    size = id_count(tok)
    if size > vocab_size:
        raise ConfigError(f"{where}: its vocabulary has {size} ids, more than "
                          f"model.vocab_size = {vocab_size}; raise model.vocab_size or use "
                          "a smaller tokenizer")
    missing = [t for t in needed if tok.token_to_id(t) is None]
    if missing:
        raise ConfigError(f"{where}: lacks the special token {missing[0]}; needed: "
                          f"{', '.join(needed)}")


def id_count(tok: Any) -> int:
    """One more than the largest id ``tok`` produces (its vocabulary size, gaps included)."""
    return max(tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1


def special_ids(tok: Any) -> list[int]:
    """The ids of ``tok``'s special tokens: the ``SPECIAL_TOKENS`` it has and the tokens it
    marks special (a user's ``[CLS]``, ``<s>``...), sorted."""
    ids = {tok.token_to_id(t) for t in SPECIAL_TOKENS} - {None}
    ids |= {i for i, added in tok.get_added_tokens_decoder().items() if added.special}
    return sorted(ids)


def encode(tok: Any, texts: Sequence[str]) -> list[list[int]]:
    """The ids of each text, without the tokenizer's own additions (a ``[CLS]`` template,
    truncation, padding). Special tokens written in the text are encoded as text, so that
    special ids only ever come from the caller."""
    tok.encode_special_tokens = True
    return [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]
