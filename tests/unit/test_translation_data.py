"""The data side of translation: the generated language (raynas.tasks.synthlang), the
decodable tokenizer (raynas.tasks.text), pair encoding and the two loaders
(raynas.tasks.parallel)."""

from __future__ import annotations

import re
import types
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sacrebleu
import torch

from raynas.errors import ConfigError
from raynas.tasks import DATASETS
from raynas.tasks import parallel as P
from raynas.tasks import synthlang as S
from raynas.tasks.text import BOS, EOS, PAD, UNK, encode, train_tokenizer

EXAMPLE = ("properties of the widgets are specified with keyword arguments .",
           "fefoja ove teja zi kuwo giki gi poja ra .")
# A hand-made vocabulary, so the rule tests do not hang on the corpus's word counts.
WORDS = ("file files name names list lists return returned use using easy easily open "
         "opened close closed value values option options key keys module modules it then "
         "returns").split()
MODEL = {"vocab_size": 600, "max_len": 24}


@pytest.fixture(scope="module")
def lang():
    return S.Language(0, WORDS)


@pytest.fixture(scope="module")
def corpus_lang():
    return S.language(0)


@pytest.fixture(scope="module")
def pairs():
    return S.sentence_pairs(2000)


def task(**model):
    return types.SimpleNamespace(model={**MODEL, **model})


# ---- the English side ------------------------------------------------------------------
def test_sentences_are_clean_lowercase_prose():
    sentences = S.english_sentences()
    assert len(sentences) > 3000
    assert len(set(sentences)) == len(sentences)
    for s in sentences:
        tokens = s.split()
        assert all(re.fullmatch(r"[a-z]+|[,.;:()]", t) for t in tokens), s
        assert 3 <= sum(t.isalpha() for t in tokens) <= 16, s
        assert tokens.count("(") == tokens.count(")"), s
    short = S.english_sentences(max_words=5, min_words=4)
    assert short and set(short) <= set(sentences)
    assert all(sum(t.isalpha() for t in s.split()) in (4, 5) for s in short)
    assert S.english_sentences() == sentences  # cached, and a fresh list each call
    assert S.english_sentences() is not sentences


def test_code_like_sentences_are_dropped():
    clean = S._clean
    assert clean("Return the value (if any).") == tuple("return the value ( if any ) .".split())
    assert clean("Uses the HTTP protocol.") == tuple("uses the http protocol .".split())
    for bad in ("Return os.path values.", "Raise ValueError now.", "Use x_y here.",
                "It's fine.", "Call f() twice.", "Take 3 values.", "Use e.g. this.",
                "Open (the file.", "a lowercase start.", "A built-in thing."):
        assert clean(bad) is None, bad


# ---- the language ----------------------------------------------------------------------
def test_worked_example_verbatim(corpus_lang):
    assert corpus_lang.translate(EXAMPLE[0]) == EXAMPLE[1]
    doc = S.__doc__
    assert f"english: {EXAMPLE[0]}" in doc and f"target:  {EXAMPLE[1]}" in doc
    assert EXAMPLE[0] in S.english_sentences()


def test_inflections_share_their_stem(lang):
    word = lang.word
    assert word("files") == word("file") + lang.suffixes[S.PLURAL]
    assert word("returned") == word("return") + lang.suffixes[S.PAST]
    assert word("returns") == word("return") + lang.suffixes[S.PLURAL]
    assert word("using") == word("use") + lang.suffixes[S.ING]
    assert word("easily") == word("easy") + lang.suffixes[S.LY]
    assert len(set(lang.suffixes)) == 4
    assert all(s[0] in S.SUFFIX_CONSONANTS for s in lang.suffixes)
    assert "files" not in lang.lexicon and "file" in lang.lexicon
    # In a sentence: the plural noun is the stem's word plus the suffix.
    out = lang.translate("the files are closed .").split()
    assert out[1] == lang.lexicon["file"] + lang.suffixes[S.PLURAL]
    # No analysis without a known stem, or for closed-class words and short stems.
    assert S.analyse("is", lang.known) is None and S.analyse("does", {"do"}) is None
    assert S.analyse("cats", {"dog"}) is None and S.analyse("cats", {"cat"}) == ("cat", 0)


def test_articles_agree_in_gender_and_number(corpus_lang):
    lang = corpus_lang
    nouns = [w for w in lang.lexicon if len(w) >= 3 and w not in S.CLOSED][:400]
    genders = Counter(lang.gender(n) for n in nouns)
    assert set(genders) == {0, 1, 2}  # all three genders are in use
    forms = {}
    for n in nouns:
        for noun, plural in ((n, False), (S.inflect(n, S.PLURAL), True)):
            form = lang.translate(f"the {noun}").split()[0]
            forms.setdefault((lang.gender(noun), plural), set()).add(form)
    assert all(len(f) == 1 for f in forms.values())  # a function of gender and number
    assert len({f.pop() for f in forms.values()}) == 6  # and a different form for each
    assert lang.gender("files") == lang.gender("file") and lang.gender("names") == lang.gender(
        "name")
    # Plurals agree with their stem's gender; a/an are one article; these is plural.
    by_gender = {lang.gender(n): n for n in nouns}
    n0, n1 = by_gender[0], by_gender[1]
    assert lang.translate(f"the {n0}").split()[0] != lang.translate(f"the {n1}").split()[0]
    assert lang.translate(f"a {n0}") == lang.translate(f"an {n0}")
    assert lang.translate(f"this {n0}") != lang.translate(f"these {n0}")
    assert lang.translate(f"these {n0}").split()[0] == lang.translate(
        f"this {S.inflect(n0, S.PLURAL)}").split()[0]
    assert lang.translate("the .").split()[0] == lang.translate(f"the {n0}").split()[0]


def test_prepositions_follow_their_phrase(lang):
    w, det = lang.word, lang.determiner
    assert lang.translate("the name of the file .") == (
        f"{det('the', 'name')} {w('name')} {det('the', 'file')} {w('file')} {w('of')} .")
    assert lang.translate("values for keys") == f"{w('values')} {w('keys')} {w('for')}"
    # Nothing to follow: before a mark, an auxiliary or the end the preposition stays.
    assert lang.translate("use it for , then") == (
        f"{w('use')} {w('it')} {w('for')} , {w('then')}")
    assert lang.translate("the list of") == f"{det('the', 'list')} {w('list')} {w('of')}"


def test_auxiliaries_move_to_their_clause_end(lang):
    w, det = lang.word, lang.determiner
    assert lang.translate("the file can be opened , then it is closed .") == (
        f"{det('the', 'file')} {w('file')} {w('opened')} {w('can')} {w('be')} , "
        f"{w('then')} {w('it')} {w('closed')} {w('is')} .")
    # Long distance, with a postposition before it; parentheses end clauses too.
    assert lang.translate("it is the name of a module ( it has keys )") == (
        f"{w('it')} {det('the', 'name')} {w('name')} {det('a', 'module')} {w('module')} "
        f"{w('of')} {w('is')} ( {w('it')} {w('keys')} {w('has')} )")


def test_marks_stay_in_place(pairs):
    for s, t in pairs:
        marks = [(i, x) for i, x in enumerate(s.split()) if x in S.MARKS]
        assert [(i, x) for i, x in enumerate(t.split()) if x in S.MARKS] == marks
        assert len(t.split()) == len(s.split())


def test_lexicon_is_one_to_one(corpus_lang):
    lang = corpus_lang
    words = sorted(lang.known) + ["frobnicate", "frobnicated", "zzzfiles", "qwerty"]
    targets = [lang.word(x) for x in words]
    assert len(set(targets)) == len(words) > 3000
    assert len(set(lang.lexicon.values())) == len(lang.lexicon)
    # Frequent words are shorter: one syllable for the top tier, three for the rare ones.
    lengths = Counter(len(v) for v in lang.lexicon.values())
    assert lengths[2] == 60 and lengths[4] == 2400 and lengths[6] == len(lang.lexicon) - 2460
    assert len(lang.word("of")) == 2 and len(lang.word("is")) == 2


def test_translation_is_deterministic_and_seeded(pairs):
    english = [s for s, _ in pairs[:300]]
    fresh = S.Language(0)
    assert [fresh.translate(s) for s in english] == [t for _, t in pairs[:300]]
    other = S.sentence_pairs(300, language_seed=1)
    assert [s for s, _ in other] == english
    differ = sum(a != b for (_, a), (_, b) in zip(other, pairs))
    assert differ >= 0.95 * len(other)


def test_copying_the_source_scores_low_bleu(pairs):
    # Target words are pseudo-words sharing nothing with English, so a copy matches only
    # the marks in place, which no 4-gram of words spans: its BLEU is near 0. A bound of 5
    # leaves room while failing a language that keeps even a third of the English words.
    sub = pairs[:500]
    assert sum(s == t for s, t in sub) == 0
    bleu = sacrebleu.corpus_bleu([s for s, _ in sub], [[t for _, t in sub]], force=True)
    assert bleu.score < 5
    self_bleu = sacrebleu.corpus_bleu([t for _, t in sub], [[t for _, t in sub]], force=True)
    assert self_bleu.score > 99


# ---- tokenizer and tensors -------------------------------------------------------------
@pytest.fixture(scope="module")
def tok(pairs):
    return train_tokenizer([s for s, _ in pairs] + [t for _, t in pairs], 800, decodable=True)


def test_decodable_tokenizer_round_trip(pairs, tok):
    texts = [x for pair in pairs[:500] for x in pair]
    ids = encode(tok, texts)
    no_unk = [(t, i) for t, i in zip(texts, ids) if UNK not in i]
    assert len(no_unk) > 0.95 * len(texts)
    for text, i in no_unk:
        assert tok.decode(i) == text
    assert tok.decode(encode(tok, ["Hello, (World)  x"])[0]) == "hello, (world)  x"
    again = train_tokenizer([s for s, _ in pairs] + [t for _, t in pairs], 800, decodable=True)
    assert again.get_vocab() == tok.get_vocab() and encode(again, texts) == ids
    assert [tok.token_to_id(t) for t in ("[PAD]", "[BOS]", "[EOS]")] == [PAD, BOS, EOS]


def test_encode_pairs_layout(pairs, tok):
    sub = pairs[:200]
    tensors, dropped = P.encode_pairs(tok, sub, 48)
    assert dropped == 0 and set(tensors) == {"src_tokens", "prev_tokens", "targets"}
    src, prev, tgt = tensors["src_tokens"], tensors["prev_tokens"], tensors["targets"]
    assert all(t.dtype == torch.int64 and t.shape == (200, 48) for t in tensors.values())
    for row, (s, t) in enumerate(sub):
        s_ids, t_ids = encode(tok, [s, t])
        n, m = len(s_ids), len(t_ids)
        assert src[row, :n].tolist() == s_ids and src[row, n] == EOS
        assert (src[row, n + 1:] == PAD).all()
        assert prev[row, 0] == BOS and prev[row, 1:m + 1].tolist() == t_ids
        assert (prev[row, m + 1:] == PAD).all()
        assert tgt[row, :m].tolist() == t_ids and tgt[row, m] == EOS
        assert (tgt[row, m + 1:] == P.IGNORE).all()
        assert tok.decode(src[row].tolist()) == s and tok.decode(prev[row].tolist()) == t
    # Shifted by one: the decoder input at t + 1 is the target at t, [EOS] and -100 aside.
    ids = tgt[:, :-1]
    assert torch.equal(prev[:, 1:], torch.where((ids == EOS) | (ids == P.IGNORE), PAD, ids))
    assert (prev[:, 0] == BOS).all()
    assert ((src == EOS).sum(1) == 1).all() and ((tgt == EOS).sum(1) == 1).all()


def test_too_long_pairs_are_dropped_and_counted(pairs, tok):
    sub = pairs[:300]
    max_len = 12
    lengths = [(len(a), len(b)) for a, b in zip(encode(tok, [s for s, _ in sub]),
                                                 encode(tok, [t for _, t in sub]))]
    fits = [max(a, b) <= max_len - 1 for a, b in lengths]
    assert 0 < sum(fits) < len(sub)
    tensors, dropped = P.encode_pairs(tok, sub, max_len)
    assert dropped == len(sub) - sum(fits) and len(tensors["targets"]) == sum(fits)
    kept = [p for p, f in zip(sub, fits) if f]
    assert [tok.decode(r.tolist()) for r in tensors["src_tokens"]] == [s for s, _ in kept]


# ---- loaders ---------------------------------------------------------------------------
def test_generated_loader():
    assert DATASETS.get("generated_translation").task == "translation"
    assert DATASETS.get("parquet_translation").needs_path
    data = P.load_generated_translation(task(), None, 0.15, 0.2, 0, max_pairs=600)
    sizes = [len(d) for d in (data.train, data.val, data.test)]
    assert sum(sizes) <= 600 and sizes[0] > sizes[2] > sizes[1] > 50
    assert P.pad_bos_eos(data.tokenizer) == (PAD, BOS, EOS)
    assert max(data.tokenizer.get_vocab().values()) < 600
    decoded = [{data.tokenizer.decode(r.tolist()) for r in d.tensors["src_tokens"]}
               for d in (data.train, data.val, data.test)]
    english = set(S.english_sentences()[:600])
    assert all(d <= english for d in decoded)
    assert not (decoded[0] & decoded[1] or decoded[0] & decoded[2] or decoded[1] & decoded[2])
    again = P.load_generated_translation(task(), None, 0.15, 0.2, 0, max_pairs=600)
    assert torch.equal(again.test.tensors["targets"], data.test.tensors["targets"])
    seeded = P.load_generated_translation(task(), None, 0.15, 0.2, 0, max_pairs=600,
                                          language_seed=3)
    assert not torch.equal(seeded.train.tensors["src_tokens"], data.train.tensors["src_tokens"])


def _parquet(path, pairs, **extra):
    columns = {"source": [s for s, _ in pairs], "target": [t for _, t in pairs], **extra}
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_loader_with_user_tokenizer(tmp_path, pairs):
    rows = pairs[:300] + [("", "x y"), ("a b", "  "), (None, "z")]
    file = _parquet(tmp_path / "pairs.parquet", rows)
    data = P.load_parquet_translation(task(max_len=64), file, 0.15, 0.2, 0)
    assert sum(len(d) for d in (data.train, data.val, data.test)) == 300
    user = train_tokenizer([x for p in pairs[:300] for x in p], 500, decodable=True)
    user.save(str(tmp_path / "tok.json"))
    renamed = tmp_path / "renamed.parquet"
    pq.write_table(pa.table({"en": [s for s, _ in pairs[:300]],
                             "xx": [t for _, t in pairs[:300]]}), renamed)
    got = P.load_parquet_translation(task(max_len=64), renamed, 0.15, 0.2, 0,
                                     source_column="en", target_column="xx",
                                     tokenizer="tok.json")  # found beside the file
    assert got.tokenizer.get_vocab() == user.get_vocab()
    sources = {got.tokenizer.decode(r.tolist()) for r in got.test.tensors["src_tokens"]}
    assert sources <= {s for s, _ in pairs[:300]}
    first = got.test.tensors["src_tokens"][0]
    n = int((first != PAD).sum())
    assert first[:n - 1].tolist() == encode(user, [user.decode(first.tolist())])[0]


def _error(match, fn, *args, **options):
    with pytest.raises(ConfigError, match=match):
        fn(*args, **options)


def test_generated_loader_errors():
    load = P.load_generated_translation
    args = (task(), None, 0.15, 0.2, 0)
    _error(r"data.options.max_pairs = 0: must be a whole number >= 1, or null", load, *args,
           max_pairs=0)
    _error(r"data.options.max_pairs = 'many'", load, *args, max_pairs="many")
    _error(r"data.options.max_words = 2: must be a whole number >= 3", load, *args,
           max_words=2)
    _error(r"data.options.language_seed = True", load, *args, language_seed=True)
    _error(r"all 200 sentence pairs need more than model.max_len - 1 = 2 .*all 200 were "
           r"dropped; raise model.max_len or lower data.options.max_words", load,
           task(max_len=3), None, 0.15, 0.2, 0, max_pairs=200)
    _error(r"the validation split is empty \(0 of 3 pairs.*data.val_fraction = 0.15", load,
           *args, max_pairs=3)
    _error(r"model.max_len = 1: translation needs", load, task(max_len=1), None, 0.15, 0.2, 0)


def test_parquet_loader_errors(tmp_path, pairs):
    load = P.load_parquet_translation
    file = _parquet(tmp_path / "p.parquet", pairs[:50], number=list(range(50)))
    args = (task(), file, 0.15, 0.2, 0)
    _error(r"data.options.source_column = 'text': not a column of .*columns: source, target",
           load, *args, source_column="text")
    _error(r"data.options.target_column = 'number': a column of int64; translation needs "
           "strings", load, *args, target_column="number")
    _error(r"data.options.target_column = 'source': the same column", load, *args,
           target_column="source")
    _error(r"data.options.source_column = 3: must be the name", load, *args, source_column=3)
    empty = _parquet(tmp_path / "e.parquet", [("", "x"), ("y", " ")])
    _error(r"no sentence pairs in columns 'source' and 'target' \(2 rows", load, task(),
           empty, 0.15, 0.2, 0)
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    _error(r"not a readable Parquet file", load, task(), bad, 0.15, 0.2, 0)
    _error(r"data.options.tokenizer = 5: must be the path", load, *args, tokenizer=5)
    _error(r"data.options.tokenizer = .*missing.json.*no such file", load, *args,
           tokenizer="missing.json")
    from tokenizers import Tokenizer, models

    words = {"[UNK]": 0, "[PAD]": 1, "[BOS]": 2, "[EOS]": 3, "a": 4}
    Tokenizer(models.WordLevel(words, unk_token="[UNK]")).save(str(tmp_path / "pad1.json"))
    _error(r"pad1.json'?: its ids are \[PAD\] = 1, \[BOS\] = 2, \[EOS\] = 3; translation "
           r"needs \[PAD\] = 0 \(the padding\), \[BOS\] = 4 and \[EOS\] = 5", load, *args,
           tokenizer="pad1.json")
    with pytest.raises(ValueError, match="PAD"):
        P.encode_pairs(Tokenizer.from_file(str(tmp_path / "pad1.json")), [("a", "a")], 8)
    del words["[BOS]"]
    Tokenizer(models.WordLevel(words, unk_token="[UNK]")).save(str(tmp_path / "nobos.json"))
    _error(r"lacks the special token \[BOS\]", load, *args, tokenizer="nobos.json")
    _error(r"all 50 sentence pairs need more than model.max_len - 1 = 1 .*give shorter texts",
           load, task(max_len=2), file, 0.15, 0.2, 0)
