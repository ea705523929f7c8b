"""The masked-LM task (raynas.tasks.mlm) and its text (raynas.tasks.text): the stdlib
docstring corpus, trained and loaded tokenizers, packing, BERT masking, metrics and the
Parquet loader."""

from __future__ import annotations

import math
import re
import sys
import unicodedata
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from raynas.config import DataConfig
from raynas.errors import ConfigError
from raynas.tasks import DATASETS, TASKS, TaskData, TensorDictDataset, load_task_data
from raynas.tasks import text as T
from raynas.tasks.mlm import DEFAULT_MAX_CHARS, IGNORE, mask_blocks, pack, split_documents

VOCAB, MAX_LEN = 2000, 32
MODEL = {"vocab_size": VOCAB, "max_len": MAX_LEN}
SPECIAL = torch.arange(len(T.SPECIAL_TOKENS))


@pytest.fixture(scope="module")
def corpus():
    return T.stdlib_docstrings()


@pytest.fixture(scope="module")
def task():
    return TASKS.create("masked_lm", model=MODEL)


@pytest.fixture(scope="module")
def data(task, corpus):
    return load_task_data(task, DataConfig(name="stdlib_text").model_dump())


@pytest.fixture(scope="module")
def reference(corpus):
    """The default splits' documents and tokenizer, rebuilt from the public pieces."""
    docs = split_documents(T.stdlib_docstrings(DEFAULT_MAX_CHARS), 0.15, 0.2, 0)
    return docs, T.train_tokenizer(docs[0], VOCAB)


def _data(path, **options):
    return DataConfig(name="parquet_text", path=str(path), options=options).model_dump()


def originals(split):
    t = split.tensors
    return torch.where(t["targets"] != IGNORE, t["targets"], t["tokens"])


# ---- corpus ----------------------------------------------------------------------------
def test_corpus_is_deterministic_prose_read_without_importing(corpus):
    T.stdlib_corpus.cache_clear()
    before = set(sys.modules)
    again = T.stdlib_docstrings()
    assert set(sys.modules) - before == set()  # parsed, never imported (no codec either)
    assert again == corpus
    chars = sum(map(len, corpus))
    assert chars > 800_000 and len(corpus) > 5000
    assert len(set(corpus)) == len(corpus)  # deduplicated
    assert all(" ".join(p.split()) == p for p in corpus)  # one line, single spaces
    assert not any(re.search(r"(^|\s)>>> ", p) for p in corpus)  # doctests dropped
    words = Counter(w.lower() for p in corpus for w in p.split())
    total = sum(words.values())
    assert words["the"] / total > 0.04 and words["of"] / total > 0.01  # English prose
    assert {"the", "a", "is", "to", "of"} <= {w for w, _ in words.most_common(12)}
    letters = sum(c.isalpha() or c == " " for p in corpus for c in p)
    assert letters / chars > 0.9
    root, files = T.stdlib_files()
    assert files == sorted(files) and "os.py" in files and "json/decoder.py" in files
    assert not any(f.startswith(("test/", "site-packages/")) for f in files)
    prefix = T.stdlib_docstrings(10_000)
    assert prefix == corpus[:len(prefix)] and 9_000 < sum(map(len, prefix)) <= 10_000


def test_paragraph_filter_keeps_prose_and_drops_code():
    doc = ("Return the sum of two numbers, rounded.\n\n"
           ">>> add(1, 2)\n3\n\n"
           "    x = {k: v[i] for k, v in d.items()}\n    return x\n\n"
           "The second   paragraph\nspans two lines and some words.\n\n"
           "if (a[0] == b[1]) and c:\n    y = f(x) * 2\n\n"
           "Too short.")
    assert list(T.paragraphs(doc)) == [
        "Return the sum of two numbers, rounded.",
        "The second paragraph spans two lines and some words."]
    src = b'"""Module words that say what it does."""\nclass A:\n    """A class doc here."""\n'
    assert list(T.docstrings(src)) == ["Module words that say what it does.",
                                       "A class doc here."]
    assert list(T.docstrings(b"def broken(:\n")) == []


# ---- tokenizer -------------------------------------------------------------------------
def test_tokenizer_round_trip_ids_and_reload(tmp_path, corpus, reference):
    (train, val, _), tok = reference
    assert [tok.token_to_id(s) for s in T.SPECIAL_TOKENS] == list(range(6))
    assert T.special_ids(tok) == list(range(6))
    assert 1500 < tok.get_vocab_size() <= VOCAB
    again = T.train_tokenizer(train, VOCAB)
    assert again.to_str() == tok.to_str()  # deterministic
    sample = val[:400]
    ids = T.encode(tok, sample)

    def squash(s):
        return "".join(unicodedata.normalize("NFKC", s).lower().split())

    clean = [(s, i) for s, i in zip(sample, ids) if T.UNK not in i]
    assert len(clean) > 0.95 * len(sample)
    for s, i in clean:
        assert squash(tok.decode(i)) == squash(s)
    assert sum(map(len, ids)) < 0.4 * sum(map(len, sample))  # merges, not characters
    literal = T.encode(tok, ["a [MASK] and [SEP] in text"])[0]  # text, not special ids
    assert len(literal) >= 9 and not set(literal) & set(range(6))
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = T.load_tokenizer(tmp_path / "tokenizer.json", VOCAB, ("[MASK]", "[SEP]"))
    assert T.encode(loaded, sample) == ids
    with pytest.raises(ConfigError, match=r"data.options.tokenizer = '.*tokenizer.json': its "
                                          r"vocabulary has \d+ ids, more than "
                                          r"model.vocab_size = 500"):
        T.load_tokenizer(tmp_path / "tokenizer.json", 500)
    with pytest.raises(ConfigError, match="data.options.tokenizer = '.*nope.json': no such"):
        T.load_tokenizer(tmp_path / "nope.json", VOCAB)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="data.options.tokenizer = .*: not a tokenizer.json"):
        T.load_tokenizer(tmp_path / "bad.json", VOCAB)


def _word_level(path, tokens):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def test_loaded_tokenizer_needs_its_special_tokens(tmp_path):
    path = _word_level(tmp_path / "t.json", ["[PAD]", "[UNK]", "[SEP]", "a", "b"])
    with pytest.raises(ConfigError, match=r"data.options.tokenizer = '.*t.json': lacks the "
                                          r"special token \[MASK\]; needed: \[MASK\], \[SEP\]"):
        T.load_tokenizer(path, VOCAB, ("[MASK]", "[SEP]"))


# ---- packing and masking ---------------------------------------------------------------
def test_blocks_are_the_packed_documents_of_disjoint_splits(data, reference, corpus):
    docs, tok = reference
    train, val, test = (set(d) for d in docs)
    assert not (train & val or train & test or val & test)
    every = T.stdlib_docstrings(DEFAULT_MAX_CHARS)
    assert train | val | test == set(every) and len(docs[2]) == round(0.2 * len(every))
    for split, split_docs in zip((data.train, data.val, data.test), docs):
        ref = pack(T.encode(tok, split_docs), T.SEP, MAX_LEN)
        assert split.tensors["tokens"].shape == ref.shape == (len(ref), MAX_LEN)
        assert torch.equal(originals(split), ref)  # targets hold the ids; the rest unchanged
        assert not (ref == T.PAD).any()  # no padding anywhere
    assert len(data.train) > 4000 and len(data.val) > 900 and len(data.test) > 1200
    assert pack([[7, 8], [], [9]], 3, 2).tolist() == [[7, 8], [3, 9]]  # the tail [3] dropped


def test_masking_statistics(data):
    tokens = torch.cat([s.tensors["tokens"] for s in (data.train, data.val, data.test)])
    targets = torch.cat([s.tensors["targets"] for s in (data.train, data.val, data.test)])
    orig = torch.where(targets != IGNORE, targets, tokens)
    special = torch.isin(orig, SPECIAL)
    pred = targets != IGNORE
    assert (orig == T.SEP).sum() > 5000 and not (pred & special).any()
    assert abs(float(pred.sum() / (~special).sum()) - 0.15) < 0.01
    assert ((targets == IGNORE) | (targets >= len(SPECIAL))).all()
    got = tokens[pred]
    masked = float((got == T.MASK).float().mean())
    kept = float((got == orig[pred]).float().mean())
    swapped = (got != T.MASK) & (got != orig[pred])
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02
    assert abs(float(swapped.float().mean()) - 0.1) < 0.02
    assert not torch.isin(got[swapped], SPECIAL).any()  # random tokens are non-special
    assert len(set(got[swapped].tolist())) > 500  # ...drawn over the vocabulary
    assert torch.equal(tokens[~pred], orig[~pred])
    g = torch.Generator().manual_seed(1)
    t3, y3 = mask_blocks(orig, 0.3, range(6), torch.arange(6, VOCAB), T.MASK, g)
    assert abs(float((y3 != IGNORE).sum() / (~special).sum()) - 0.3) < 0.01


def test_masks_are_fixed_per_split_and_copies_differ(task, data):
    again = load_task_data(task, DataConfig(name="stdlib_text", options={"copies": 2}
                                            ).model_dump())
    for a, b in ((data.val, again.val), (data.test, again.test)):
        assert torch.equal(a.tensors["tokens"], b.tensors["tokens"])
        assert torch.equal(a.tensors["targets"], b.tensors["targets"])
    n = len(data.train)
    assert len(again.train) == 2 * n
    first, second = again.train.tensors["targets"][:n], again.train.tensors["targets"][n:]
    assert torch.equal(originals(again.train)[:n], originals(again.train)[n:])
    assert float(((first != IGNORE) != (second != IGNORE)).any(1).float().mean()) > 0.9
    other = load_task_data(task, DataConfig(name="stdlib_text", seed=1).model_dump())
    assert not torch.equal(other.val.tensors["tokens"][:50], data.val.tensors["tokens"][:50])


# ---- the task --------------------------------------------------------------------------
class Fixed(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, tokens):
        return self.fn(tokens)


def test_metrics_on_a_hand_made_batch(task):
    g = torch.Generator().manual_seed(0)
    targets = torch.full((3, MAX_LEN), IGNORE)
    targets[0, [1, 5, 9]] = torch.tensor([10, 11, 12])
    targets[2, [0, 31]] = torch.tensor([40, 41])  # row 1 predicts nothing
    batch = {"tokens": torch.randint(6, VOCAB, (3, MAX_LEN), generator=g), "targets": targets}
    out = torch.randn(3, MAX_LEN, VOCAB, generator=g)
    out[0, 1, 10] = out[2, 31, 41] = 50.0  # two of the five right
    valid = targets != IGNORE
    ce = F.cross_entropy(out[valid], targets[valid], reduction="none")
    sums = task.metric_sums(out, batch)
    assert sums["masked_accuracy"] == (2.0, 5.0)
    assert sums["loss"][0] == pytest.approx(float(ce.sum()), rel=1e-5) and sums["loss"][1] == 5
    per = task.sample_sums(out, batch)
    assert per["masked_accuracy"][0].tolist() == [1, 0, 1]
    assert per["masked_accuracy"][1].tolist() == per["loss"][1].tolist() == [3, 0, 2]
    torch.testing.assert_close(per["loss"][0], torch.stack(
        [ce[:3].sum(), torch.tensor(0.0), ce[3:].sum()]).double(), rtol=1e-5, atol=1e-5)
    m = task.evaluate(Fixed(lambda t: out), [batch])
    assert set(m) == {"masked_accuracy", "loss", "perplexity"}
    assert m["loss"] == pytest.approx(float(ce.mean()), rel=1e-5)
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]), rel=1e-9)
    assert "perplexity" not in {x.name for x in task.metrics}
    assert task.derived({"loss": 1e4}) == {"perplexity": math.inf} and task.derived({}) == {}
    smooth = F.cross_entropy(out[valid], targets[valid], label_smoothing=0.1)
    assert float(task.loss(out, batch, 0.1)) == pytest.approx(float(smooth), rel=1e-5)
    none = {"tokens": batch["tokens"][1:2], "targets": targets[1:2]}
    assert float(task.loss(out[1:2], none)) == 0.0
    assert torch.equal(task.distill_mask(batch), valid)


def test_task_contract(task):
    assert task.input_names == ("tokens",) and task.primary.name == "masked_accuracy"
    assert DATASETS.get("stdlib_text").task == DATASETS.get("parquet_text").task == "masked_lm"
    ex = task.example_inputs(4)["tokens"]
    assert ex.shape == (4, MAX_LEN) and ex.min() >= 6 and ex.max() < VOCAB
    assert task.dynamic_axes() == {"tokens": {0: "batch"}}
    with pytest.raises(ConfigError, match="task 'masked_lm' needs model.max_len"):
        TASKS.create("masked_lm", model={"vocab_size": 100})
    short = TensorDictDataset({"tokens": torch.ones(2, 16, dtype=torch.long),
                               "targets": torch.full((2, 16), IGNORE)})
    with pytest.raises(ConfigError, match="data: blocks of 16 tokens, the space's "
                                          "model.max_len is 32"):
        task.check_data(TaskData(short, short, short))


def test_unigram_model_is_no_better_than_the_most_frequent_token(task, data):
    train = originals(data.train)
    counts = torch.bincount(train[~torch.isin(train, SPECIAL)], minlength=VOCAB).double()
    logp = (counts + 1).log() - (counts + 1).sum().log()
    top = int(counts.argmax())
    val = data.val.tensors["targets"]
    share_top = float((val[val != IGNORE] == top).double().mean())
    loader = [{k: v[i:i + 512] for k, v in data.val.tensors.items()}
              for i in range(0, len(data.val), 512)]
    m = task.evaluate(Fixed(lambda t: logp.float().expand(*t.shape, VOCAB)), loader)
    assert m["masked_accuracy"] <= share_top + 1e-9 and share_top < 0.1
    assert m["perplexity"] > 100  # a unigram model of English BPE tokens
    # The input does not leak its targets: copying it scores the 10% kept tokens only.
    m = task.evaluate(Fixed(lambda t: F.one_hot(t, VOCAB).float()), loader)
    assert 0.05 < m["masked_accuracy"] < 0.15


# ---- Parquet ---------------------------------------------------------------------------
def test_parquet_text(tmp_path, task, corpus):
    docs = corpus[:3000]
    pq.write_table(pa.table({"id": list(range(3000)), "text": docs}), tmp_path / "c.parquet")
    d = load_task_data(task, _data(tmp_path / "c.parquet", copies=2))
    train_docs, val_docs, _ = split_documents(docs, 0.15, 0.2, 0)
    tok = T.train_tokenizer(train_docs, VOCAB)
    ref = pack(T.encode(tok, val_docs), T.SEP, MAX_LEN)
    assert torch.equal(originals(d.val), ref) and len(ref) > 100
    # the user's tokenizer (from the data file's folder) instead of a trained one
    other = T.train_tokenizer(docs[-500:], 1000)
    other.save(str(tmp_path / "tok.json"))
    d2 = load_task_data(task, _data(tmp_path / "c.parquet", tokenizer="tok.json"))
    ref2 = pack(T.encode(other, val_docs), T.SEP, MAX_LEN)
    assert torch.equal(originals(d2.val), ref2) and int(d2.train.tensors["tokens"].max()) < 1000
    assert not torch.equal(ref[:len(ref2)], ref2[:len(ref)])


def test_parquet_text_errors(tmp_path, task, corpus):
    good = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": corpus[:300], "n": list(range(300))}), good)
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    pq.write_table(pa.table({"text": ["a few words here"] * 20}), tmp_path / "small.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    big = T.train_tokenizer(corpus[:3000], 3000)
    big.save(str(tmp_path / "big.json"))
    cases = [
        (_data(good, text_column="body"), r"data.options.text_column = 'body': not a column "
                                          r"of .*; columns: text, n"),
        (_data(good, text_column="n"), r"data.options.text_column = 'n': a column of int64; "
                                       r"masked_lm needs strings"),
        (_data(tmp_path / "empty.parquet"), r"data.path = '.*empty.parquet': no text in "
                                            r"column 'text' \(0 rows"),
        (_data(tmp_path / "small.parquet"), r"data.path = '.*small.parquet': the validation "
                                            r"split \(3 documents\) has \d+ tokens, fewer than "
                                            r"one block of model.max_len = 32"),
        (_data(tmp_path / "junk.parquet"), r"data.path = '.*junk.parquet': not a readable "
                                           r"Parquet file"),
        (_data(good, tokenizer="big.json"), r"data.options.tokenizer = '.*big.json': its "
                                            r"vocabulary has 3000 ids, more than "
                                            r"model.vocab_size = 2000"),
        (_data(good, tokenizer="missing.json"), r"data.options.tokenizer = '.*missing.json'"
                                                r": no such file"),
        (_data(good, mask_prob=1.5), r"data.options.mask_prob = 1.5: must be a number above "
                                     r"0 and below 1"),
        (_data(good, copies=0), r"data.options.copies = 0: must be a whole number >= 1"),
        (_data(good, max_chars=10), r"data.options.max_chars = 10: unknown option for "
                                    r"dataset 'parquet_text'"),
        (DataConfig(name="stdlib_text", options={"max_chars": 300}).model_dump(),
         r"data.options.max_chars = 300: the validation split .* fewer than one block"),
    ]
    for cfg, needle in cases:
        with pytest.raises(ConfigError, match=needle):
            load_task_data(task, cfg)
