"""BatchSearcher driven with fake trials: no Ray cluster, no Tune loop."""

from __future__ import annotations

from ray.tune.search import Searcher

from raynas.search.searchers import AskTellSearcher, Objective
from raynas.search.tune_driver import BatchSearcher
from raynas.space import Arch
from raynas.space.registry import load_space


class Scripted(AskTellSearcher):
    """Proposes archs from a fixed list, in order, cycling; records every tell."""

    def __init__(self, space, archs):
        super().__init__(space, (Objective("accuracy", "max"),))
        self.archs, self.i, self.told = archs, 0, []

    def ask(self):
        arch = self.archs[self.i % len(self.archs)]
        self.i += 1
        return self.i, arch

    def tell(self, token, values):
        self.told.append((token, None if values is None else values["accuracy"]))


def _record(arch_dict) -> dict:
    arch = Arch(arch_dict)
    return {"arch_key": arch.key, "arch": arch.to_dict(), "accuracy": arch["s1_depth"] / 10,
            "latency_ms": 1.0}


def _complete(searcher, trial_id, config):
    searcher.on_trial_complete(trial_id, {"records": [_record(a) for a in config["archs"]]})


def test_batches_respect_budget_and_tell_every_token():
    space = load_space("tiny_cnn")
    archs = [space.sample(i) for i in range(200)]
    distinct = list(dict.fromkeys(archs))
    inner = Scripted(space, distinct)
    bs = BatchSearcher(inner, budget=10, batch_size=4)
    configs = [bs.suggest(f"t{i}") for i in range(3)]
    assert [len(c["archs"]) for c in configs] == [4, 4, 2]
    assert bs.suggest("t3") is Searcher.FINISHED
    for i, c in enumerate(configs):
        _complete(bs, f"t{i}", c)
    assert sorted(t for t, _ in inner.told) == list(range(1, 11))


def test_repeated_archs_cost_no_budget_and_are_rejected():
    space = load_space("tiny_cnn")
    a, b, c = space.largest(), space.smallest(), space.sample(3)
    inner = Scripted(space, [a, a, b, a, c, b, c])  # repeats, some while in flight
    bs = BatchSearcher(inner, budget=3, batch_size=2)
    first = bs.suggest("t0")
    assert [Arch(x) for x in first["archs"]] == [a, b]
    assert inner.told == [(2, None)]  # the repeat of `a` in flight: rejected at once
    _complete(bs, "t0", first)
    second = bs.suggest("t1")
    assert [Arch(x) for x in second["archs"]] == [c]  # known `a` and `b` rejected
    _complete(bs, "t1", second)
    assert bs.suggest("t2") is Searcher.FINISHED
    told = dict(inner.told)
    assert told[1] == a["s1_depth"] / 10 and told[3] == b["s1_depth"] / 10
    assert told[5] == c["s1_depth"] / 10
    assert told[2] is None and told[4] is None  # every repeat
    assert sorted(told) == list(range(1, 6))  # every asked token told exactly once
    assert len(inner.told) == 5


def test_failed_trial_tells_failure_and_exhausted_space_finishes():
    space = load_space("tiny_cnn")
    a = space.largest()
    inner = Scripted(space, [a])  # only ever proposes one arch
    bs = BatchSearcher(inner, budget=5, batch_size=2, max_repeats=3)
    config = bs.suggest("t0")
    assert [Arch(x) for x in config["archs"]] == [a]
    assert all(v is None for _, v in inner.told)  # repeats of `a` in flight, rejected
    bs.on_trial_complete("t0", None, error=True)
    assert inner.told[-1] == (1, None)
    bs.suggest("t1")  # `a` may be retried after a failure
    _complete(bs, "t1", {"archs": [a.to_dict()]})
    assert bs.suggest("t2") is Searcher.FINISHED


def test_state_round_trip_keeps_progress():
    space = load_space("tiny_cnn")
    inner = Scripted(space, [space.sample(i) for i in range(50)])
    bs = BatchSearcher(inner, budget=6, batch_size=3)
    bs.suggest("t0")
    other = BatchSearcher(Scripted(space, [space.largest()]), budget=6, batch_size=3)
    other.set_state(bs.get_state())
    assert other.suggested == 3
    assert len(other.suggest("t1")["archs"]) == 3
    assert other.suggest("t2") is Searcher.FINISHED


def test_each_batch_goes_to_the_evaluator_with_the_fewest_batches_in_flight():
    space = load_space("tiny_cnn")
    distinct = list(dict.fromkeys(space.sample(i) for i in range(200)))
    bs = BatchSearcher(Scripted(space, distinct), budget=40, batch_size=2, slots=2)
    configs = {f"t{i}": bs.suggest(f"t{i}") for i in range(4)}
    assert [c["slot"] for c in configs.values()] == [0, 1, 0, 1]
    # Evaluator 1 finishes both of its batches: the next two go to it, not round robin.
    _complete(bs, "t1", configs["t1"])
    _complete(bs, "t3", configs["t3"])
    assert [bs.suggest("t4")["slot"], bs.suggest("t5")["slot"]] == [1, 1]
    assert bs.suggest("t6")["slot"] == 0  # now 2 and 2 in flight: the first
    # A resumed search keeps which evaluator each unfinished trial was sent to.
    again = BatchSearcher(Scripted(space, distinct), budget=40, batch_size=2, slots=2)
    again.set_state(bs.get_state())
    assert again.suggest("t7")["slot"] == 1
