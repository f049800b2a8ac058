"""The first stage's nets: encoder/decoder shapes, the KL posterior, the vector quantiser."""

from __future__ import annotations

import socket

import pytest
import torch

from genlab.nets import DCGANDiscriminator
from genlab.nets.autoencoder import DiagonalGaussian, ResNetDecoder, ResNetEncoder
from genlab.nets.quantize import VectorQuantizer, code_statistics

TINY = {"hidden_channels": [8, 16, 16], "downsample_factor": 4, "latent_channels": 3}


@pytest.mark.parametrize(("image_size", "latent_size"), [(8, 2), (28, 7)])
def test_encoder_and_decoder_shapes_for_8_and_28_pixels(image_size: int, latent_size: int) -> None:
    encoder = ResNetEncoder(in_channels=1, image_size=image_size, **TINY)
    double = ResNetEncoder(in_channels=1, image_size=image_size, **TINY, double_latent=True)
    decoder = ResNetDecoder(out_channels=1, image_size=image_size, **TINY)
    x = torch.randn(2, 1, image_size, image_size)
    z = encoder(x)
    assert z.shape == (2, 3, latent_size, latent_size)
    assert double(x).shape == (2, 6, latent_size, latent_size)
    assert decoder(z).shape == x.shape


@pytest.mark.parametrize(
    ("image_size", "factor", "widths", "message"),
    [
        (8, 3, [8, 8], "power of 2"),
        (28, 8, [8, 8, 8, 8], "does not divide image_size 28"),
        (8, 4, [8, 8], "needs 3"),
    ],
)
def test_bad_downsampling_is_refused(image_size: int, factor: int, widths: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResNetEncoder(1, image_size, latent_channels=2, downsample_factor=factor, hidden_channels=widths)


def test_diagonal_gaussian_kl_is_zero_at_the_prior_and_positive_elsewhere() -> None:
    prior = DiagonalGaussian(torch.zeros(3, 4, 2, 2))  # mean 0, log-variance 0
    assert torch.equal(prior.kl(), torch.zeros(3)) and torch.equal(prior.mean, torch.zeros(3, 2, 2, 2))
    moved = DiagonalGaussian(torch.cat([torch.ones(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)], dim=1))
    assert moved.kl().item() == pytest.approx(0.5 * 8)  # 0.5 * mean^2 per element, 8 elements
    narrow = DiagonalGaussian(torch.cat([torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), -40.0)], dim=1))
    assert torch.isfinite(narrow.kl()).all() and narrow.logvar.item() == -30.0  # clamped


def test_quantizer_snaps_to_codes_passes_gradients_straight_through_and_leaves_codes_in_eval() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=8, code_dim=2).eval()
    z = torch.randn(4, 2, 3, 3, requires_grad=True)
    out = vq(z)
    assert out.z_q.shape == z.shape and out.indices.shape == (4, 3, 3)
    torch.testing.assert_close(out.z_q, vq.lookup(out.indices))  # z + (z_q - z): equal up to rounding
    assert torch.equal(out.indices, vq.indices(z))
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 2)
    assert torch.equal(out.indices.flatten(), torch.cdist(flat, vq.codebook).argmin(1))  # the nearest code
    out.z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # identity gradient
    before = vq.codebook.clone()
    vq(z)
    assert torch.equal(vq.codebook, before) and not vq.initialized  # eval: nothing moves


def test_quantizer_starts_from_the_data_and_its_ema_moves_codes_to_their_means() -> None:
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -5.0]])
    points = centres[torch.arange(300) % 3] + 0.1 * torch.randn(300, 2)  # three tight clusters
    z = points.view(300, 2, 1, 1)
    vq = VectorQuantizer(num_codes=3, code_dim=2, decay=0.5, dead_code_steps=0, kmeans_iters=10)
    vq(z)  # initialises from these points (k-means), then one EMA step
    assert vq.initialized
    assert torch.cdist(vq.codebook, centres).min(0).values.max() < 0.5  # a code on every cluster
    for _ in range(10):
        out = vq(z)
    assert out.usage.item() == 1.0 and out.perplexity.item() == pytest.approx(3.0, abs=1e-3)
    assert torch.cdist(vq.codebook, centres).min(0).values.max() < 0.05


def test_dead_codes_are_restarted_on_encoder_outputs() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=4, code_dim=2, dead_code_steps=3, kmeans_iters=0)
    vq.initialized.fill_(True)  # keep the codes set below
    far = torch.tensor([[100.0, 100.0], [200.0, 200.0], [300.0, 300.0]])
    vq.codebook.copy_(torch.cat([torch.zeros(1, 2), far]))
    vq.code_sum.copy_(vq.codebook)
    z = (0.1 * torch.randn(64, 2)).view(64, 2, 1, 1)  # all nearest to code 0: codes 1-3 are dead
    restarted = [vq(z).restarted.item() for _ in range(4)]
    assert restarted == [0.0, 0.0, 3.0, 0.0]  # after 3 steps unused, once
    assert vq.codebook.abs().max() < 1.0  # the restarted codes sit among the encoder outputs now
    assert vq(z).usage.item() > 0.25  # and some of them are used


def test_code_statistics() -> None:
    perplexity, usage = code_statistics(torch.tensor([5.0, 5.0, 0.0, 0.0]))
    assert perplexity.item() == pytest.approx(2.0) and usage.item() == 0.5


def test_patch_discriminator_gives_a_logit_per_patch_and_the_default_is_unchanged() -> None:
    torch.manual_seed(0)
    plain = DCGANDiscriminator(in_channels=1, image_size=8, hidden_channels=[8, 16])
    patch = DCGANDiscriminator(in_channels=1, image_size=8, hidden_channels=[8, 16], patch=True)
    x = torch.randn(5, 1, 8, 8)
    assert plain(x).shape == (5,) and patch(x).shape == (5, 2, 2)
    shared = {k for k in plain.state_dict() if not k.startswith("head")}
    assert shared <= set(patch.state_dict())  # the same feature layers, only the head differs
    with pytest.raises(ValueError, match="unconditional"):
        DCGANDiscriminator(in_channels=1, image_size=8, hidden_channels=[8, 16], num_classes=10, patch=True)


def _quantize_on_rank(rank: int, port: int, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # each rank sees its own batches, as under DDP
    vq = VectorQuantizer(num_codes=8, code_dim=2, dead_code_steps=2, kmeans_iters=3)
    restarted = 0.0
    for _ in range(4):
        restarted += vq(torch.randn(16, 2, 2, 2) * (rank + 1) + 3 * rank).restarted.item()
    torch.save({**{k: v.clone() for k, v in vq.state_dict().items()}, "restarted": restarted}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two fresh processes: ~10 s idle, over a minute on a busy machine
def test_codebook_stays_the_same_on_every_ddp_rank(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_quantize_on_rank, args=(port, str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in ("codebook", "cluster_size", "code_sum", "steps_unused"):
        assert torch.equal(a[key], b[key]), key  # k-means init, EMA steps and restarts agree
    assert a["restarted"] == b["restarted"]
