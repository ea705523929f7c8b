"""The speech family end to end on the embedded Ray and a real MLflow store, as users run
``jobs/conformer_tiny.yaml`` (shortened): a streaming Conformer supernet trained with CTC on
the generated speech task, a search for WER vs latency, an export whose ONNX model takes the
frames and their lengths at any length, and a chunked subnet of the trained supernet decoding
the same words streamed chunk by chunk as from the whole utterance at once."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from raynas.export.serialize import load_subnet

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_conformer_job_learns_words_streams_and_exports(store, run_cli):
    out = store["cwd"] / "speech-out"
    proc = run_cli(["run", str(ROOT / "jobs" / "conformer_tiny.yaml"), "--output-dir",
                    str(out), "train.epochs=6", "search.budget=8",
                    "search.subnets_per_trial=8"], store["cwd"], store["uri"])
    # Training's last check: the largest subnet (whole utterance) beats the smallest (chunks
    # of 2 encoder frames, 1 earlier chunk seen). 6 epochs gave 0.077 against 0.145.
    last = re.findall(r"val wer largest ([\d.]+) smallest ([\d.]+)", proc.stdout)[-1]
    largest, smallest = map(float, last)
    assert largest < smallest, last
    records = pq.read_table(out / "evaluations.parquet").to_pylist()
    assert len(records) == 8 and {"wer", "test_wer", "loss", "latency_ms"} <= set(records[0])

    # An untrained model emits nothing (WER 1.0); the exported subnet misses few words.
    client = MlflowClient(tracking_uri=store["uri"])
    exp = client.get_experiment_by_name("conformer_tiny")
    (export,) = [r for r in client.search_runs([exp.experiment_id])
                 if r.data.tags.get("raynas.stage") == "export"]
    assert export.data.metrics["test_wer"] < 0.3, export.data.metrics["test_wer"]
    assert export.data.metrics["max_abs_diff_onnx"] < 1e-4

    import onnxruntime as ort

    model = load_subnet(out / "subnet")
    feats, lengths = torch.randn(2, 57, 20), torch.tensor([57, 33])
    session = ort.InferenceSession(str(out / "subnet" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"feats": feats.numpy(), "feat_lengths": lengths.numpy()})
    with torch.no_grad():
        want = model(feats, lengths)
    assert np.allclose(got, want.numpy(), atol=1e-4)

    # The trained supernet's chunked subnet, streamed with caches, decodes test utterances
    # as its masked whole-utterance forward does (what search and export scored).
    from raynas.checkpoint import load_checkpoint
    from raynas.export import extract
    from raynas.supernets import create_supernet
    from raynas.supernets.conformer_stream import stream
    from raynas.tasks import build_task, load_task_data
    from raynas.tasks.speech import greedy_ctc

    ckpt = load_checkpoint(out / "checkpoint")
    space = ckpt["space"]
    net = create_supernet(space)
    net.load_state_dict(ckpt["model"])
    arch = space.validate({**space.largest(), "chunk": 4, "left_chunks": 1})
    static = extract(net, space, arch)
    task = build_task(space)
    test = load_task_data(task, {"name": "generated_speech", "options": {"noise": 1.2}}).test
    for i in range(5):
        n = int(test.tensors["feat_lengths"][i])
        x = test.tensors["feats"][i:i + 1, :n]
        with torch.no_grad():
            whole = static(x, torch.tensor([n]))
        streamed = stream(static, x)
        assert torch.allclose(streamed, whole, atol=1e-4)
        frames = torch.tensor([whole.shape[1]])
        assert greedy_ctc(streamed, frames) == greedy_ctc(whole, frames)
