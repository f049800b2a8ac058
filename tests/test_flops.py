"""The FLOPs-per-step model used for throughput and MFU: DiT's closed form agrees with FlopCounterMode,
and forward + backward counted by FlopCounterMode is 3x the forward (within 5%)."""

from __future__ import annotations

import functools

import pytest
import torch

from genlab.flops import flop_counter, forward_flops, train_flops_per_step
from genlab.nets import DiT
from genlab.nets.conditioning import LabelEmbedding
from genlab.nets.dit import dit_forward_flops


def _dit(**sizes) -> DiT:
    conditioning = functools.partial(LabelEmbedding, num_classes=10)
    sizes = {"in_channels": 4, "image_size": 16, "hidden_size": 64, "num_heads": 4, **sizes}
    return DiT(**sizes, conditioning=conditioning)


def _inputs(net: DiT, batch: int) -> tuple[torch.Tensor, ...]:
    x = torch.randn(batch, net.in_channels, net.image_size, net.image_size)
    return x, torch.rand(batch) * 1000, torch.randint(10, (batch,))


@pytest.mark.parametrize("sizes", [{"patch_size": 2, "depth": 2}, {"patch_size": 4, "depth": 3, "mlp_ratio": 2.0}])
def test_dit_closed_form_matches_flop_counter(sizes) -> None:
    net = _dit(**sizes)
    counted = forward_flops(net, *_inputs(net, batch=3))
    assert abs(dit_forward_flops(net, batch=3) / counted - 1) < 0.05, (dit_forward_flops(net, batch=3), counted)


def test_flop_counter_sees_the_same_counts_on_the_meta_device() -> None:
    with torch.device("meta"):
        net = _dit(patch_size=2, depth=2)
        counted = forward_flops(net, torch.empty(2, 4, 16, 16), torch.empty(2), torch.zeros(2, dtype=torch.long))
    assert counted == dit_forward_flops(net, batch=2)


def test_forward_and_backward_cost_three_forwards() -> None:
    net = _dit(patch_size=2, depth=2)
    inputs = _inputs(net, batch=2)
    with flop_counter() as counter:
        net(*inputs).square().mean().backward()
    assert abs(counter.get_total_flops() / train_flops_per_step(net, *inputs) - 1) < 0.05
    assert train_flops_per_step(net, *inputs) == 3 * forward_flops(net, *inputs)
