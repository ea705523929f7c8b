"""raynas.search.replay and `raynas replay`: searchers against recorded evaluations."""

from __future__ import annotations

import csv
import json
import random

import pytest

from raynas.cli import main
from raynas.errors import ConfigError
from raynas.search.pareto import default_reference, hypervolume
from raynas.search.registry import create_searcher
from raynas.search.replay import (
    load_table,
    parse_constraint,
    parse_objective,
    reference_warnings,
    replay,
    replay_once,
)
from raynas.search.results import write_records
from raynas.search.searchers import Objective
from raynas.space.registry import load_space

ACC_LAT = (Objective("accuracy", "max"), Objective("latency_ms", "min"))


def _metrics(arch) -> dict[str, float]:
    """Synthetic truth: wider/deeper is more accurate and slower, kernels add a little."""
    width = sum(v for k, v in arch.items() if k.endswith("_width"))
    depth = sum(v for k, v in arch.items() if k.endswith("_depth"))
    kernels = sum(sum(v) for k, v in arch.items() if k.endswith("_kernel"))
    return {"accuracy": 1 - 1 / (1 + 0.02 * width + 0.1 * depth + 0.01 * kernels),
            "latency_ms": 0.01 * width * depth + 0.03 * kernels}


@pytest.fixture
def tiny_table(tmp_path, tiny_space):
    records = [{"arch": a.to_dict(), **_metrics(a)} for a in tiny_space.enumerate()]
    return write_records(tmp_path / "evaluations.parquet", records, tiny_space), records


def _csv(path, tiny_space, rows):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*tiny_space.names, "accuracy", "latency_ms", "note"])
        for arch, acc, lat in rows:
            w.writerow([str(arch[d]) if not isinstance(arch[d], tuple)
                        else json.dumps(list(arch[d])) for d in tiny_space.names]
                       + [acc, lat, "x"])
    return path


def test_parse_objective_and_constraint():
    assert parse_objective("accuracy:max").direction == "max"
    assert parse_objective("a:b:min").name == "a:b"
    for bad in ("accuracy", "accuracy:up", ":max"):
        with pytest.raises(ConfigError, match="NAME:max or NAME:min"):
            parse_objective(bad)
    c = parse_constraint("latency_ms<=0.5")
    assert (c.metric, c.limit) == ("latency_ms", 0.5)
    with pytest.raises(ConfigError, match="METRIC<=LIMIT"):
        parse_constraint("latency_ms<0.5")


def test_load_our_own_table(tiny_table, tiny_space):
    path, records = tiny_table
    table = load_table(path, tiny_space, ACC_LAT)
    assert len(table.records) == tiny_space.size() == len(records)
    first = records[0]
    key = tiny_space.validate(first["arch"]).key
    assert table.records[key]["accuracy"] == pytest.approx(first["accuracy"])


def test_load_csv_with_strings_and_duplicates(tmp_path, tiny_space):
    a, b = tiny_space.largest(), tiny_space.smallest()
    path = _csv(tmp_path / "t.csv", tiny_space,
                [(a, 0.9, 2.0), (a, 0.8, 4.0), (b, 0.5, "nan"), (b, 0.6, 1.0)])
    table = load_table(path, tiny_space, ACC_LAT)
    assert table.rows == 4 and table.dropped == 1
    assert table.records[a.key]["accuracy"] == pytest.approx(0.85)  # duplicates averaged
    assert table.records[a.key]["latency_ms"] == pytest.approx(3.0)
    assert table.records[b.key]["latency_ms"] == 1.0


def test_load_errors(tmp_path, tiny_space, tiny_table):
    path, _ = tiny_table
    with pytest.raises(ConfigError, match="does not exist"):
        load_table(tmp_path / "nope.parquet", tiny_space, ACC_LAT)
    with pytest.raises(ConfigError, match=r"lacks column\(s\) energy_mj"):
        load_table(path, tiny_space, [parse_objective("energy_mj:min")])
    bad = dict(tiny_space.largest())
    bad_row = {**bad, "s1_width": 7}
    p = tmp_path / "bad.csv"
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*tiny_space.names, "accuracy", "latency_ms"])
        w.writerow([json.dumps(list(bad_row[d])) if isinstance(bad_row[d], tuple)
                    else bad_row[d] for d in tiny_space.names] + [0.5, 1.0])
    with pytest.raises(ConfigError, match=r"row 1: .*s1_width.*7"):
        load_table(p, tiny_space, ACC_LAT)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ConfigError, match="cannot read it as Parquet"):
        load_table(tmp_path / "junk.parquet", tiny_space, ACC_LAT)


@pytest.fixture
def noisy_table(tmp_path, tiny_space):
    """As a real table: most subnets are dominated, some far behind the front."""
    rng = random.Random(0)
    records = [{"arch": a.to_dict(), **_metrics(a)} for a in tiny_space.enumerate()]
    for r in records:  # measurement noise; some run slower than their size says
        r["accuracy"] += 0.02 * rng.random()
        r["latency_ms"] *= 1 + 3 * rng.random()
    return write_records(tmp_path / "noisy.parquet", records, tiny_space)


def test_reference_is_beyond_the_true_fronts_worst(noisy_table, tiny_space):
    table = load_table(noisy_table, tiny_space, ACC_LAT)
    front = table.true_front()
    acc = [r["accuracy"] for r in front]
    lat = [r["latency_ms"] for r in front]
    ref = default_reference(table.objectives, table.records.values())
    assert ref == pytest.approx([min(acc) - 0.1 * (max(acc) - min(acc)),
                                 max(lat) + 0.1 * (max(lat) - min(lat))])
    # inside the table's range: subnets far from the front add no volume
    assert ref[1] < 0.7 * max(r["latency_ms"] for r in table.records.values())


def test_the_default_reference_tells_searchers_apart(noisy_table, tiny_space):
    """Against the front's nadir, random search's first 10 of 144 subnets reach well under
    the table's hypervolume; behind the table's worst subnet they reach much more of it."""
    table = load_table(noisy_table, tiny_space, ACC_LAT)
    records = list(table.records.values())
    worst = [min(r["accuracy"] for r in records), max(r["latency_ms"] for r in records)]
    at_front = replay(table, "random", [10], range(5)).summary(10)[0]
    behind = replay(table, "random", [10], range(5), reference=worst).summary(10)[0]
    assert at_front < behind - 0.1, (at_front, behind)


def test_default_reference_is_the_search_rule(tiny_table, tiny_space):
    # replay and a live search place the reference point by one rule: default_reference
    table = load_table(tiny_table[0], tiny_space, ACC_LAT)
    report = replay(table, "random", budgets=[5], seeds=[0])
    assert report.reference == pytest.approx(
        default_reference(ACC_LAT, list(table.records.values())))


def test_table_without_objective_values(tmp_path, tiny_space):
    a, b = tiny_space.largest(), tiny_space.smallest()
    path = _csv(tmp_path / "t.csv", tiny_space, [(a, "nan", 2.0), (b, 0.5, "")])
    with pytest.raises(ConfigError, match=r"none of its 2 rows has a value for every "
                                          r"objective \(accuracy, latency_ms\)"):
        load_table(path, tiny_space, ACC_LAT)


def test_replay_once_counts_distinct_subnets(tiny_table, tiny_space):
    table = load_table(tiny_table[0], tiny_space, ACC_LAT)
    searcher = create_searcher("random", objectives=ACC_LAT, space=tiny_space, seed=3)
    trace = replay_once(table, searcher, budget=40, batch_size=8)
    keys = [r["arch_key"] for r in trace.records]
    assert len(keys) == 40 == len(set(keys))
    # past the space's size: each subnet at most once, until the searcher runs dry (random
    # search may miss the last one or two within its repeat allowance)
    trace = replay_once(table, create_searcher("random", objectives=ACC_LAT,
                                               space=tiny_space, seed=3),
                        budget=500, batch_size=8)
    assert len({r["arch_key"] for r in trace.records}) == len(trace.records) >= 140
    assert trace.exhausted


def test_full_budget_reaches_the_true_front(tiny_table, tiny_space):
    table = load_table(tiny_table[0], tiny_space, ACC_LAT)
    report = replay(table, "random", budgets=[10, 144], seeds=[0, 1])
    assert report.ratios[144] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert all(r < 1.0 for r in report.ratios[10])
    # the ratio is the prefix's hypervolume over the table's own
    truth = hypervolume(list(table.records.values()), ACC_LAT, report.reference)
    assert report.true_hypervolume == pytest.approx(truth)


def test_missing_archs(tmp_path, tiny_space, tiny_table):
    _, records = tiny_table
    half = write_records(tmp_path / "half.parquet", records[::2], tiny_space)
    table = load_table(half, tiny_space, ACC_LAT)
    with pytest.raises(ConfigError, match="not in .*--missing skip"):
        replay_once(table, create_searcher("random", objectives=ACC_LAT,
                                           space=tiny_space, seed=0), 30)
    trace = replay_once(table, create_searcher("random", objectives=ACC_LAT,
                                               space=tiny_space, seed=0), 30,
                        missing="skip")
    assert len(trace.records) == 30 and trace.skipped > 0  # skipped archs cost no budget


def test_constraint_bounds_every_counted_point(tiny_table, tiny_space):
    table = load_table(tiny_table[0], tiny_space, ACC_LAT)
    limit = sorted(r["latency_ms"] for r in table.records.values())[40]
    c = parse_constraint(f"latency_ms<={limit}")
    report = replay(table, "random", [144], [0], constraints=[c])
    assert report.ratios[144] == [pytest.approx(1.0)]
    front = table.true_front([c])
    assert front and all(r["latency_ms"] <= limit for r in front)


def test_cli_replay(tmp_path, tiny_table, capsys):
    out = tmp_path / "report.json"
    rc = main(["replay", str(tiny_table[0]), "--space", "tiny_cnn", "--searcher", "random",
               "--searcher", "optuna_nsga2", "--budget", "10,60", "--seeds", "2",
               "--population-size", "8", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "random" in text and "optuna_nsga2" in text and "N=60" in text
    doc = json.loads(out.read_text())
    assert [r["searcher"] for r in doc["reports"]] == ["random", "optuna_nsga2"]
    for r in doc["reports"]:
        assert r["evaluated"] == [60, 60]
        assert 0 < r["median"]["10"] <= r["median"]["60"] <= 1.0


@pytest.mark.parametrize("argv,needle", [
    (["--searcher", "nope"], "--searcher = 'nope'"),
    (["--objective", "accuracy"], "NAME:max or NAME:min"),
    (["--reference", "0,x"], "--reference = '0,x'"),
    (["--reference", "0"], "one value per objective"),
    (["--budget", "0"], "positive integers"),
    (["--option", "oops"], "KEY=VALUE"),
])
def test_cli_replay_errors(tiny_table, capsys, argv, needle):
    rc = main(["replay", str(tiny_table[0]), "--space", "tiny_cnn", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err


@pytest.mark.parametrize("argv,needle", [
    (["--reference", "0.5"], "--reference = '0.5': give one value per objective, 2"),
    (["--option", "bogus=3"], "--option bogus=3: unknown option for searcher 'optuna_nsga2'"),
    (["--searcher", "random", "--option", "parents_size=4"], "--option parents_size=4"),
    (["--budget", "-5"], "positive integers"),
])
def test_cli_replay_checks_its_arguments_before_reading_the_table(tmp_path, capsys, argv,
                                                                   needle):
    """The table does not exist: an argument error must come first, before any work."""
    rc = main(["replay", str(tmp_path / "absent.parquet"), "--space", "tiny_cnn", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "absent" not in err, err


def test_cli_replay_caps_budgets_and_marks_short_runs(tiny_table, capsys):
    rc = main(["replay", str(tiny_table[0]), "--space", "tiny_cnn", "--searcher", "random",
               "--budget", "20,1000", "--seeds", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "--budget 1000: the table holds 144 distinct subnets; reported at 144" in out
    assert "N=144" in out and "N=1000" not in out
    # random search runs dry just short of all 144 (its repeat allowance): marked, not
    # shown as if reached
    row = next(line for line in out.splitlines() if line.startswith("random"))
    assert row.endswith("*") and "the figure is for fewer subnets" in out


def test_cli_replay_warns_of_a_reference_in_other_units(tiny_table, capsys):
    # accuracy is a fraction in this table; -50 is as if it were a percent gone wrong
    rc = main(["replay", str(tiny_table[0]), "--space", "tiny_cnn", "--searcher", "random",
               "--budget", "20", "--seeds", "1", "--reference=-50,100"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "--reference accuracy=-50 lies" in err and "is it in the column's units?" in err
    assert "latency_ms=100" in err  # far beyond the front's latencies too
    table = load_table(tiny_table[0], load_space("tiny_cnn"), ACC_LAT)
    lat = sorted(r["latency_ms"] for r in table.true_front())
    ref = [0.0, lat[len(lat) // 2]]  # shuts out the slower half of the front
    assert any("shuts out" in w and f"of the true front's {len(lat)} points" in w
               for w in reference_warnings(table, ref))
    assert reference_warnings(table, default_reference(ACC_LAT, table.records.values())) == []


def test_cli_replay_on_a_space_without_family(tmp_path, tiny_table, capsys, repo_root):
    """A table-only space: no family to take the metric from, so objectives are named."""
    space = tmp_path / "table_only.yaml"
    source = (repo_root / "search_spaces" / "tiny_cnn.yaml").read_text()
    assert "family: cnn\n" in source
    space.write_text(source.replace("family: cnn\n", ""))
    rc = main(["replay", str(tiny_table[0]), "--space", str(space), "--budget", "10"])
    assert rc == 2 and "declares no family" in capsys.readouterr().err
    rc = main(["replay", str(tiny_table[0]), "--space", str(space), "--budget", "10",
               "--seeds", "1", "--searcher", "random", "--objective", "accuracy:max",
               "--objective", "latency_ms:min"])
    assert rc == 0 and "N=10" in capsys.readouterr().out
