"""raynas.checkpoint: round trip, space mismatch, unreadable and hostile files."""

from __future__ import annotations

import pathlib
import pickle

import pytest
import torch
import yaml

from raynas.checkpoint import FILENAME, load_checkpoint, save_checkpoint
from raynas.errors import CheckpointError, RaynasError
from raynas.space import SearchSpace
from raynas.supernets import create_supernet


def test_round_trip(tmp_path, tiny_space):
    torch.manual_seed(0)
    net = create_supernet(tiny_space)
    opt_state = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}
    out = save_checkpoint(tmp_path / "ck", tiny_space, net.state_dict(), epoch=3,
                          extra={"optimizer": opt_state})
    assert out == tmp_path / "ck"
    assert (out / FILENAME).is_file() and not (out / (FILENAME + ".tmp")).exists()
    assert SearchSpace.from_dict(yaml.safe_load((out / "space.yaml").read_text())) == tiny_space

    for path in (out, out / FILENAME):  # the directory or the file itself
        state = load_checkpoint(path, expected=tiny_space)
        assert state["epoch"] == 3 and state["family"] == "cnn"
        assert state["space"] == tiny_space
        assert state["fingerprint"] == tiny_space.fingerprint
        assert state["optimizer"] == opt_state
        fresh = create_supernet(tiny_space)
        fresh.load_state_dict(state["model"])
        for k, v in net.state_dict().items():
            assert torch.equal(fresh.state_dict()[k], v), k
    assert load_checkpoint(out)["space"] == tiny_space  # no expectation: no check


def test_overwrite_keeps_latest(tmp_path, tiny_space):
    net = create_supernet(tiny_space)
    save_checkpoint(tmp_path, tiny_space, net.state_dict(), epoch=0)
    save_checkpoint(tmp_path, tiny_space, net.state_dict(), epoch=1)
    assert load_checkpoint(tmp_path)["epoch"] == 1


def test_other_space_rejected(tmp_path, tiny_space, digits_space):
    save_checkpoint(tmp_path, tiny_space, create_supernet(tiny_space).state_dict(), epoch=0)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path, expected=digits_space)
    msg = str(e.value)
    assert "'tiny_cnn'" in msg and "'digits_cnn'" in msg
    assert tiny_space.fingerprint in msg and digits_space.fingerprint in msg
    assert "\n" not in msg


def test_renamed_but_identical_space_accepted(tmp_path, tiny_space):
    save_checkpoint(tmp_path, tiny_space, create_supernet(tiny_space).state_dict(), epoch=0)
    renamed = SearchSpace.from_dict({**tiny_space.to_dict(), "name": "tiny_copy"})
    assert load_checkpoint(tmp_path, expected=renamed)["space"].name == "tiny_cnn"


def test_missing(tmp_path):
    with pytest.raises(CheckpointError, match=f"no {FILENAME} found"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "nope")


def test_garbage_file(tmp_path):
    (tmp_path / FILENAME).write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path)
    assert "cannot be read" in str(e.value) and FILENAME in str(e.value)
    assert "\n" not in str(e.value)


def test_foreign_torch_file(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a raynas supernet checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a raynas supernet checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


def test_payload_without_space(tmp_path):
    torch.save({"format": 1, "model": {}}, tmp_path / FILENAME)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


class _Payload:
    """Unpickling this object creates a file: proof that arbitrary code would have run."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_arbitrary_pickle_refused(tmp_path, tiny_space):
    marker = tmp_path / "pwned"
    payload = {"format": 1, "space": tiny_space.to_dict(), "model": {},
               "evil": _Payload(marker)}
    torch.save(payload, tmp_path / FILENAME)
    # The payload is live: a plain pickle load would run it.
    torch.load(tmp_path / FILENAME, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path)
    assert not marker.exists()
    assert isinstance(e.value, RaynasError) and "cannot be read" in str(e.value)
    # Says why, and does not advise loading it anyway (torch's own text does).
    assert "Python objects beyond tensors" in str(e.value)
    assert "weights_only" not in str(e.value) and "\x1b" not in str(e.value)

    # a bare pickle (not a torch zip file) is refused the same way
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"format": 1, "x": _Payload(marker)},
                                                        protocol=2))
    with pytest.raises(CheckpointError, match="Python objects beyond tensors"):
        load_checkpoint(tmp_path / "raw.pt")
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"hello world" * 10, "truncated"])
def test_a_broken_file_says_it_is_not_a_complete_torch_file(tmp_path, content):
    path = tmp_path / FILENAME
    if content == "truncated":
        torch.save({"x": torch.zeros(100)}, path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"cannot be read: not a complete torch file \("):
        load_checkpoint(tmp_path)
