"""Peak memory of one inference (raynas.latency.memory), against a count by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raynas.latency.memory import MB, peak_memory_mb, tensor_bytes


def net(inplace: bool) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(inplace=inplace),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=inplace),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("inplace", [False, True])
def test_peak_is_weights_inputs_and_the_most_activations_alive_at_once(batch, inplace):
    model, x = net(inplace), torch.randn(batch, 1, 8, 8)
    plane = batch * 8 * 8 * 4  # bytes of one float32 channel
    # nn.Sequential holds one layer's input while it makes its output. Out of place, the
    # peak is during the second ReLU: conv2's 32 channels and the ReLU's 32. In place, the
    # ReLUs make nothing, and the peak is during conv2: its 16 input and 32 output channels.
    activations = (32 + 32 if not inplace else 16 + 32) * plane
    weights = tensor_bytes(model.parameters())
    expected = (weights + tensor_bytes([x]) + activations) / MB
    assert peak_memory_mb(model, (x,)) == pytest.approx(expected, rel=1e-12)


def test_a_view_keeps_its_storage_counted():
    class Hold(nn.Module):
        def forward(self, x):
            big = x.repeat(1, 64)  # 64x the input, a new storage
            view = big[:, :1]  # the only reference left to it is a view
            del big
            extra = x * 2  # made while the view still holds the big storage
            return view.sum() + extra.sum()

    x = torch.randn(4, 16)
    row = 4 * 16 * 4
    # big (64 rows' worth) and extra (one) alive together; the sums are single numbers.
    got = peak_memory_mb(Hold(), (x,)) * MB - tensor_bytes([x])
    assert got >= (64 + 1) * row
    assert got < (64 + 1) * row + 64  # plus at most a few scalars
