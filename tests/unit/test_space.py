"""raynas.space: dimensions, Arch, SearchSpace, YAML parsing, registry."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import pickle
import random
import subprocess
import sys

import pytest

from raynas.errors import ArchError, ConfigError
from raynas.space import Arch, Choice, FloatRange, IntRange, PerLayer, SearchSpace
from raynas.space.registry import find_space, list_spaces, load_space

FIXED_ARCH = {
    "s2_kernel": [5],
    "s1_width": 16,
    "s1_depth": 2,
    "s2_depth": 1,
    "s1_kernel": [3, 5],
    "s2_width": 8,
}
# sha1 of the canonical JSON of FIXED_ARCH, first 16 hex digits (regression value).
FIXED_ARCH_KEY = "144eb8151d9800b6"


def _space(dims: dict, name: str = "hand", family: str = "cnn", **extra) -> SearchSpace:
    return SearchSpace.from_dict({"name": name, "family": family, "dims": dims, **extra})


HAND_DIMS = {
    "d": {"type": "int", "low": 0, "high": 2},
    "w": {"type": "choice", "values": ["a", "b", "c"]},
    "k": {"type": "per_layer", "depth": "d", "values": [3, 5, 7]},
    "m": {"type": "per_layer", "depth": "d", "values": [1, 2]},
    "n": {"type": "choice", "values": [1, 3]},
    "q": {"type": "per_layer", "depth": "n", "values": ["x", "y"]},
}


def _enumerate_hand() -> list[dict]:
    """Every arch of HAND_DIMS, written out by hand (independent of the implementation)."""
    out = []
    for d in (0, 1, 2):
        for w in ("a", "b", "c"):
            for k in itertools.product((3, 5, 7), repeat=d):
                for m in itertools.product((1, 2), repeat=d):
                    for n in (1, 3):
                        for q in itertools.product(("x", "y"), repeat=n):
                            out.append({"d": d, "w": w, "k": list(k), "m": list(m), "n": n,
                                        "q": list(q)})
    return out


# ---- Arch -------------------------------------------------------------------------------------
class TestArch:
    def test_frozen(self):
        a = Arch(FIXED_ARCH)
        with pytest.raises(AttributeError):
            a.x = 1
        with pytest.raises(AttributeError):
            a._items = ()
        with pytest.raises(TypeError):
            a["s1_depth"] = 3  # type: ignore[index]
        assert a["s1_depth"] == 2

    def test_per_layer_values_are_tuples_and_input_is_copied(self):
        src = copy.deepcopy(FIXED_ARCH)
        a = Arch(src)
        assert a["s1_kernel"] == (3, 5)
        src["s1_kernel"].append(7)
        src["s1_depth"] = 3
        assert a["s1_kernel"] == (3, 5) and a["s1_depth"] == 2

    def test_hashable_and_order_independent(self):
        a = Arch(FIXED_ARCH)
        b = Arch(dict(reversed(list(FIXED_ARCH.items()))))
        c = Arch({**FIXED_ARCH, "s1_kernel": (3, 5)})  # tuple vs list: same arch
        assert a == b == c
        assert hash(a) == hash(b) == hash(c)
        assert a.key == b.key == c.key
        assert a.to_json() == b.to_json()
        assert len({a, b, c}) == 1
        assert {a: 1}[b] == 1

    @pytest.mark.parametrize("other", [3.0, True])
    def test_equal_archs_share_key_numeric(self, other):
        a, b = Arch({"d": 1 if other is True else 3}), Arch({"d": other})
        assert (a == b) == (a.key == b.key)

    def test_different_archs_differ(self):
        a = Arch(FIXED_ARCH)
        b = Arch({**FIXED_ARCH, "s1_kernel": [5, 3]})
        assert a != b
        assert a.key != b.key
        assert len({a, b}) == 2

    def test_key_is_sha1_of_canonical_json(self):
        canonical = json.dumps(FIXED_ARCH, sort_keys=True, separators=(",", ":"))
        expected = hashlib.sha1(canonical.encode()).hexdigest()[:16]
        assert expected == FIXED_ARCH_KEY  # the regression value itself is right
        a = Arch(FIXED_ARCH)
        assert a.to_json() == canonical
        assert a.key == FIXED_ARCH_KEY
        assert len(a.key) == 16 and all(ch in "0123456789abcdef" for ch in a.key)

    def test_key_stable_across_processes(self):
        code = ("import json,sys; from raynas.space import Arch; "
                "print(Arch(json.loads(sys.argv[1])).key)")
        out = subprocess.run([sys.executable, "-c", code, json.dumps(FIXED_ARCH)],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": "123"})
        assert out.stdout.strip() == FIXED_ARCH_KEY

    def test_mapping_protocol(self):
        a = Arch(FIXED_ARCH)
        assert sorted(a) == sorted(FIXED_ARCH)
        assert len(a) == len(FIXED_ARCH)
        assert "s1_depth" in a and "nope" not in a
        with pytest.raises(KeyError):
            a["nope"]
        assert a.to_dict() == {k: list(v) if isinstance(v, list) else v
                               for k, v in FIXED_ARCH.items()}

    def test_json_round_trip_many(self, digits_space, tiny_space, rng):
        for space in (digits_space, tiny_space):
            for _ in range(200):
                a = space.sample(rng)
                b = Arch.from_json(a.to_json())
                assert b == a and b.key == a.key
                assert space.validate(json.loads(a.to_json())) == a

    def test_pickle_round_trip(self, digits_space, rng):
        for _ in range(50):
            a = digits_space.sample(rng)
            b = pickle.loads(pickle.dumps(a))
            assert isinstance(b, Arch)
            assert b == a and hash(b) == hash(a) and b.key == a.key


# ---- sampling, extremes ------------------------------------------------------------------------
class TestPoints:
    @pytest.mark.parametrize("name", ["digits_space", "tiny_space"])
    def test_sample_largest_smallest_valid(self, name, request, rng):
        space = request.getfixturevalue(name)
        for a in [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(200))]:
            assert space.contains(a)
            assert space.validate(a) == a

    def test_largest_smallest_values(self, digits_space):
        big, small = digits_space.largest(), digits_space.smallest()
        assert big["s1_depth"] == 3 and big["s3_width"] == 96 and big["s2_kernel"] == (5, 5, 5)
        assert small["s1_depth"] == 1 and small["s3_width"] == 32 and small["s2_kernel"] == (3,)

    def test_seeded_sampling_is_deterministic(self, digits_space):
        assert [digits_space.sample(7) for _ in range(3)] == [digits_space.sample(7)] * 3
        r1, r2 = random.Random(5), random.Random(5)
        assert [digits_space.sample(r1) for _ in range(20)] == \
               [digits_space.sample(r2) for _ in range(20)]
        assert len({digits_space.sample(i) for i in range(50)}) > 40

    def test_int_bounds_inclusive(self, digits_space, rng):
        seen = {digits_space.sample(rng)["s1_depth"] for _ in range(300)}
        assert seen == {1, 2, 3}
        dim = IntRange("x", 4, 6)
        assert {dim.sample(rng) for _ in range(300)} == {4, 5, 6}
        assert list(dim.values()) == [4, 5, 6] and dim.cardinality() == 3

    def test_choices_all_appear(self, digits_space, rng):
        seen = {digits_space.sample(rng)["s3_width"] for _ in range(300)}
        assert seen == {32, 64, 96}

    def test_per_layer_length_follows_depth(self, digits_space, rng):
        depths_seen = set()
        for _ in range(300):
            a = digits_space.sample(rng)
            for i in (1, 2, 3):
                assert len(a[f"s{i}_kernel"]) == a[f"s{i}_depth"]
                assert set(a[f"s{i}_kernel"]) <= {3, 5}
                depths_seen.add(a[f"s{i}_depth"])
        assert depths_seen == {1, 2, 3}

    def test_per_layer_depth_from_choice(self, rng):
        space = _space(HAND_DIMS)
        for _ in range(100):
            a = space.sample(rng)
            assert len(a["q"]) == a["n"] and len(a["k"]) == len(a["m"]) == a["d"]


# ---- validation errors -------------------------------------------------------------------------
def _msg(exc_info) -> str:
    return str(exc_info.value)


class TestValidate:
    def test_unknown_dim(self, tiny_space):
        with pytest.raises(ArchError) as e:
            tiny_space.validate({**tiny_space.largest().to_dict(), "s9_depth": 1})
        assert "'s9_depth'" in _msg(e) and "tiny_cnn" in _msg(e)
        assert "s1_depth" in _msg(e) and "s2_kernel" in _msg(e)  # lists what is allowed

    def test_missing_dim(self, tiny_space):
        arch = tiny_space.largest().to_dict()
        del arch["s2_width"]
        with pytest.raises(ArchError) as e:
            tiny_space.validate(arch)
        assert "'s2_width'" in _msg(e) and "tiny_cnn" in _msg(e)

    def test_out_of_range_int(self, digits_space):
        arch = {**digits_space.largest().to_dict(), "s1_depth": 4, "s1_kernel": [3] * 4}
        with pytest.raises(ArchError) as e:
            digits_space.validate(arch)
        m = _msg(e)
        assert "'s1_depth'" in m and "= 4" in m and "[1, 3]" in m and "inclusive" in m
        with pytest.raises(ArchError, match=r"'s1_depth' = 0 .*\[1, 3\]"):
            digits_space.validate({**arch, "s1_depth": 0, "s1_kernel": []})

    def test_bad_choice(self, digits_space):
        with pytest.raises(ArchError) as e:
            digits_space.validate({**digits_space.largest().to_dict(), "s2_width": 25})
        m = _msg(e)
        assert "'s2_width'" in m and "25" in m and "[24, 40, 56]" in m

    def test_string_for_int_choice_rejected(self, digits_space):
        with pytest.raises(ArchError, match=r"'s2_width' = '24'"):
            digits_space.validate({**digits_space.largest().to_dict(), "s2_width": "24"})

    def test_wrong_per_layer_length(self, digits_space):
        arch = {**digits_space.largest().to_dict(), "s1_depth": 2, "s1_kernel": [3, 3, 3]}
        with pytest.raises(ArchError) as e:
            digits_space.validate(arch)
        m = _msg(e)
        assert "'s1_kernel'" in m and "3 entries" in m and "s1_depth = 2" in m

    def test_per_layer_not_a_list(self, digits_space):
        arch = {**digits_space.largest().to_dict(), "s1_depth": 1, "s1_kernel": 3}
        with pytest.raises(ArchError, match=r"'s1_kernel' = 3 is not a list.*\[3, 5\]"):
            digits_space.validate(arch)
        with pytest.raises(ArchError, match="not a list"):
            digits_space.validate({**arch, "s1_kernel": "3"})

    def test_bad_per_layer_entry(self, digits_space):
        arch = {**digits_space.largest().to_dict(), "s3_kernel": [3, 4, 5]}
        with pytest.raises(ArchError) as e:
            digits_space.validate(arch)
        m = _msg(e)
        assert "s3_kernel[1]" in m and "= 4" in m and "[3, 5]" in m

    @pytest.mark.parametrize("value", [1.5, "2", True, None, [2]])
    def test_non_integer_for_int(self, digits_space, value):
        arch = {**digits_space.largest().to_dict(), "s2_depth": value}
        with pytest.raises(ArchError) as e:
            digits_space.validate(arch)
        m = _msg(e)
        assert "'s2_depth'" in m and repr(value) in m and "not an integer" in m
        assert "[1, 3]" in m

    @pytest.mark.parametrize("value", [float("nan"), float("inf")])
    def test_non_finite_for_int(self, digits_space, value):
        arch = {**digits_space.largest().to_dict(), "s2_depth": value}
        with pytest.raises(ArchError, match="'s2_depth'"):
            digits_space.validate(arch)

    def test_not_a_mapping(self, tiny_space):
        with pytest.raises(ArchError, match="mapping"):
            tiny_space.validate([("s1_depth", 1)])

    def test_normalises_values(self, digits_space):
        arch = digits_space.smallest().to_dict()
        arch["s1_depth"] = 1.0
        arch["s1_width"] = 16.0
        got = digits_space.validate(arch)
        assert got == digits_space.smallest()
        assert type(got["s1_depth"]) is int and type(got["s1_width"]) is int
        assert got.key == digits_space.smallest().key
        assert isinstance(got["s1_kernel"], tuple)

    def test_contains(self, tiny_space):
        assert tiny_space.contains(tiny_space.largest())
        assert not tiny_space.contains({**tiny_space.largest().to_dict(), "s1_width": 9})


# ---- encoding ----------------------------------------------------------------------------------
class TestEncode:
    def test_encoding_size_by_hand(self, digits_space, tiny_space):
        # per stage: depth (1) + width one-hot (3) + kernel one-hot per possible layer (3 x 2)
        assert digits_space.encoding_size == 3 * (1 + 3 + 3 * 2)
        assert tiny_space.encoding_size == 2 * (1 + 2 + 2 * 2)

    def test_fixed_length_and_range(self, digits_space, rng):
        for _ in range(200):
            v = digits_space.encode(digits_space.sample(rng))
            assert len(v) == digits_space.encoding_size
            assert all(0.0 <= x <= 1.0 for x in v)

    def test_extremes(self, digits_space):
        big = digits_space.encode(digits_space.largest())
        small = digits_space.encode(digits_space.smallest())
        assert big[0] == 1.0 and small[0] == 0.0  # s1_depth scaled to [0, 1]
        assert big[1:4] == [0.0, 0.0, 1.0] and small[1:4] == [1.0, 0.0, 0.0]
        # smallest s1_kernel: one layer of 3, then two all-zero slots
        assert small[4:10] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]

    def test_injective_on_whole_tiny_space(self, tiny_space):
        archs = {tiny_space.sample(i) for i in range(4000)}
        assert len(archs) == tiny_space.size() == 144
        encodings = {tuple(tiny_space.encode(a)) for a in archs}
        assert len(encodings) == 144

    def test_differs_for_different_archs(self, digits_space, rng):
        archs = {digits_space.sample(rng) for _ in range(300)}
        assert len({tuple(digits_space.encode(a)) for a in archs}) == len(archs)


# ---- size --------------------------------------------------------------------------------------
class TestSize:
    def test_shipped_spaces(self, digits_space, tiny_space):
        assert digits_space.size() == 74088
        assert tiny_space.size() == 144

    def test_brute_force_hand_space(self, rng):
        space = _space(HAND_DIMS)
        everything = _enumerate_hand()
        archs = {space.validate(a) for a in everything}
        assert len(archs) == len(everything)  # enumeration has no duplicates
        # by hand: depth-dependent part sum_d 3^d 2^d = 1+6+36; choice 3; n-part 2^1+2^3
        assert len(everything) == (1 + 6 + 36) * 3 * (2 + 8)
        assert space.size() == len(everything)
        sampled = {space.sample(rng) for _ in range(3000)}
        assert sampled <= archs

    def test_float_dims(self, rng):
        space = _space({
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "drop": {"type": "float", "low": 0.0, "high": 0.5},
            "d": {"type": "int", "low": 1, "high": 2},
        })
        assert space.size() is None
        lrs, drops = [], []
        for _ in range(2000):
            a = space.sample(rng)
            assert 1e-4 <= a["lr"] <= 1e-1 and 0.0 <= a["drop"] <= 0.5
            assert space.contains(a)
            assert all(0.0 <= x <= 1.0 for x in space.encode(a))
            lrs.append(a["lr"])
            drops.append(a["drop"])
        # log-uniform: about half below the geometric mean 10^-2.5; uniform would give ~3 %
        below = sum(v < 10 ** -2.5 for v in lrs) / len(lrs)
        assert 0.4 < below < 0.6
        assert 0.4 < sum(v < 0.25 for v in drops) / len(drops) < 0.6
        enc = space.encode(Arch({"lr": 10 ** -2.5, "drop": 0.125, "d": 2}))
        assert enc == pytest.approx([0.5, 0.25, 1.0])
        with pytest.raises(ArchError, match=r"'lr' = 0\.5 is out of range"):
            space.validate({"lr": 0.5, "drop": 0.1, "d": 1})
        with pytest.raises(ArchError, match=r"'drop' = 'x' is not a number"):
            space.validate({"lr": 0.01, "drop": "x", "d": 1})


# ---- identity ----------------------------------------------------------------------------------
class TestIdentity:
    def test_dict_round_trip(self, digits_space):
        again = SearchSpace.from_dict(digits_space.to_dict())
        assert again == digits_space
        assert again.fingerprint == digits_space.fingerprint

    def test_fingerprint_ignores_name_not_dims(self, tiny_space):
        doc = tiny_space.to_dict()
        renamed = SearchSpace.from_dict({**doc, "name": "other", "description": "x"})
        assert renamed.fingerprint == tiny_space.fingerprint
        dims = dict(doc["dims"])
        dims["s1_width"] = {"type": "choice", "values": [8, 24]}
        changed = SearchSpace.from_dict({**doc, "dims": dims})
        assert changed.fingerprint != tiny_space.fingerprint
        model = {**doc["model"], "stem_width": 4}
        assert SearchSpace.from_dict({**doc, "model": model}).fingerprint != \
            tiny_space.fingerprint

    def test_dim_types(self, digits_space):
        assert isinstance(digits_space.dim("s1_depth"), IntRange)
        assert isinstance(digits_space.dim("s1_width"), Choice)
        kernel = digits_space.dim("s1_kernel")
        assert isinstance(kernel, PerLayer) and kernel.max_len == 3
        assert digits_space.names[:3] == ("s1_depth", "s1_width", "s1_kernel")
        with pytest.raises(KeyError):
            digits_space.dim("nope")
        assert FloatRange("x", 0.0, 1.0).cardinality() is None


def test_space_model_imports_neither_torch_nor_ray():
    code = ("import raynas.space, sys; "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray'))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# ---- YAML parsing ------------------------------------------------------------------------------
class TestParse:
    def _err(self, dims=None, **top) -> str:
        doc = {"name": "bad", "family": "cnn", "dims": dims or {"d": {"type": "int", "low": 1,
                                                                      "high": 2}}}
        doc.update(top)
        with pytest.raises(ConfigError) as e:
            SearchSpace.from_dict(doc, source="bad.yaml")
        return str(e.value)

    def test_unknown_type(self):
        m = self._err({"d": {"type": "integer", "low": 1, "high": 2}})
        assert "bad.yaml" in m and "dims.d.type" in m and "'integer'" in m
        assert "choice, int, float, per_layer" in m

    def test_low_above_high(self):
        m = self._err({"d": {"type": "int", "low": 3, "high": 2}})
        assert "dims.d.high" in m and "= 2" in m and "low (3)" in m
        m = self._err({"f": {"type": "float", "low": 1.0, "high": 0.5}})
        assert "dims.f.high" in m

    def test_per_layer_depth_missing_dim(self):
        m = self._err({"k": {"type": "per_layer", "depth": "nope", "values": [3]}})
        assert "dims.k.depth" in m and "'nope'" in m and "integer dimension" in m

    def test_per_layer_depth_not_integer_dim(self):
        m = self._err({"w": {"type": "choice", "values": ["a", "b"]},
                       "k": {"type": "per_layer", "depth": "w", "values": [3]}})
        assert "dims.k.depth" in m and "'w'" in m

    def test_per_layer_depth_unhashable(self):
        m = self._err({"d": {"type": "int", "low": 1, "high": 2},
                       "k": {"type": "per_layer", "depth": ["d"], "values": [3]}})
        assert "dims.k.depth" in m

    def test_unknown_key_in_dim(self):
        m = self._err({"d": {"type": "int", "low": 1, "high": 2, "step": 1}})
        assert "dims.d.step" in m and "unknown key" in m and "high, low, type" in m

    def test_unknown_top_level_key(self):
        m = self._err(dimensions={})
        assert "dimensions" in m and "unknown key" in m and "dims" in m

    def test_missing_required(self):
        with pytest.raises(ConfigError, match="missing required key 'dims'"):
            SearchSpace.from_dict({"name": "x", "family": "cnn"})

    def test_a_space_without_family_is_replay_only(self, tmp_path):
        """No family: the space parses (a table can be replayed against it), and building or
        training it is a clear error, not a KeyError deep in a registry."""
        from raynas.supernets import get_family

        path = tmp_path / "table_only.yaml"
        path.write_text("name: table_only\ndims:\n  d: {type: int, low: 1, high: 2}\n")
        space = SearchSpace.load(path)
        assert space.family is None and space.size() == 2
        with pytest.raises(ConfigError, match="declares none, so it can be replayed but not "
                           "built or trained; add 'family:' naming one of bert, cnn"):
            get_family(space.family)

    def test_a_file_naming_an_unregistered_family_is_refused(self, tmp_path):
        path = tmp_path / "typo.yaml"
        path.write_text("name: typo\nfamily: cnnn\ndims:\n  d: {type: int, low: 1, high: 2}\n")
        with pytest.raises(ConfigError, match=r"typo.yaml: family = 'cnnn': unknown supernet "
                           "family; choose one of bert, cnn, .*or leave it out"):
            SearchSpace.load(path)

    @pytest.mark.parametrize("values", [[], [1, 1], [True, False], "abc", [[1]]])
    def test_bad_choice_values(self, values):
        m = self._err({"w": {"type": "choice", "values": values}})
        assert "dims.w.values" in m

    def test_non_integer_bound(self):
        assert "dims.d.low" in self._err({"d": {"type": "int", "low": 1.5, "high": 2}})

    def test_log_needs_positive_low(self):
        m = self._err({"f": {"type": "float", "low": 0.0, "high": 1.0, "log": True}})
        assert "dims.f.low" in m and "> 0" in m

    def test_load_from_file(self, tmp_path):
        path = tmp_path / "s.yaml"
        path.write_text("name: s\nfamily: cnn\ndims:\n  d: {type: int, low: 2, high: 1}\n")
        with pytest.raises(ConfigError) as e:
            SearchSpace.load(path)
        assert str(path) in str(e.value) and "dims.d.high" in str(e.value)
        path.write_text("name: s\nfamily: cnn\ndims: {d: [unclosed\n")
        with pytest.raises(ConfigError, match="not valid YAML"):
            SearchSpace.load(path)
        with pytest.raises(ConfigError, match="does not exist"):
            SearchSpace.load(tmp_path / "missing.yaml")

    def test_file_order_kept(self):
        space = _space(HAND_DIMS)
        assert space.names == tuple(HAND_DIMS)


# ---- registry ----------------------------------------------------------------------------------
class TestRegistry:
    def test_find_by_name_and_path(self, repo_root):
        path = find_space("tiny_cnn")
        assert path.name == "tiny_cnn.yaml"
        assert find_space(repo_root / "search_spaces" / "digits_cnn.yaml").stem == "digits_cnn"
        assert load_space("digits_cnn").name == "digits_cnn"
        assert {p.stem for p in list_spaces()} >= {"digits_cnn", "tiny_cnn"}

    def test_unknown_name(self):
        with pytest.raises(ConfigError) as e:
            find_space("no_such_space")
        assert "'no_such_space'" in str(e.value) and "digits_cnn" in str(e.value)

    def test_env_dir(self, tmp_path, monkeypatch):
        (tmp_path / "nested").mkdir()
        (tmp_path / "nested" / "mine.yaml").write_text(
            "name: mine\nfamily: cnn\ndims:\n  d: {type: int, low: 1, high: 2}\n")
        monkeypatch.setenv("RAYNAS_SPACES_DIR", str(tmp_path))
        assert [p.stem for p in list_spaces()] == ["mine"]
        assert load_space("mine").size() == 2
        assert load_space("mine").names == ("d",)
