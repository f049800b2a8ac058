from __future__ import annotations

import functools

import pytest
import torch

from genlab.nets import UNet
from genlab.nets.conditioning import LabelEmbedding
from genlab.nets.unet import timestep_embedding


@pytest.mark.parametrize(
    ("channels", "size", "mults", "attention"),
    [(1, 8, [1, 2], [4]), (1, 28, [1, 2, 2], [7]), (3, 32, [1, 2, 2, 2], [8, 4])],
)
def test_output_has_the_input_shape_at_every_supported_size(channels, size, mults, attention) -> None:
    net = UNet(channels, size, base_channels=8, channel_mults=mults, num_res_blocks=1, attention_resolutions=attention)
    x = torch.randn(2, channels, size, size)
    assert net(x, torch.tensor([0.0, 999.0])).shape == x.shape


def test_conditioning_is_added_and_the_null_label_is_the_default() -> None:
    torch.manual_seed(0)
    embedder = functools.partial(LabelEmbedding, num_classes=10, drop_prob=0.1)
    net = UNet(1, 8, base_channels=8, num_heads=2, conditioning=embedder).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the output layers start at zero
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0])
    assert net.conditioning.table.embedding_dim == 4 * 8  # the embedder gets the time-embedding width
    assert torch.equal(net(x, t), net(x, t, net.conditioning.null(2)))
    assert not torch.allclose(net(x, t, torch.tensor([1, 1])), net(x, t, torch.tensor([2, 2])))
    with pytest.raises(ValueError, match="without conditioning"):
        UNet(1, 8, base_channels=8, num_heads=2)(x, t, torch.tensor([1, 1]))


def test_output_starts_at_zero_and_sizes_that_do_not_halve_are_refused() -> None:
    net = UNet(1, 8, base_channels=8, num_heads=2)
    assert net(torch.randn(3, 1, 8, 8), torch.zeros(3)).abs().max() == 0  # the loss starts at the target's variance
    with pytest.raises(ValueError, match="image_size 28 is not divisible by 2\\*\\*3"):
        UNet(1, 28, channel_mults=[1, 2, 2, 2])


def test_timestep_embedding_separates_nearby_steps() -> None:
    emb = timestep_embedding(torch.arange(1000.0), 32)
    assert emb.shape == (1000, 32) and emb.abs().max() <= 1
    assert (emb[1:] - emb[:-1]).norm(dim=1).min() > 0.1
