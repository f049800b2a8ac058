from __future__ import annotations

import pytest
import torch

from genlab.nets import DCGANDiscriminator, DCGANGenerator, DiffAugment


@pytest.mark.parametrize(
    ("image_size", "g_widths", "d_widths"),
    [(8, [32, 16], [16, 32]), (28, [32, 16], [16, 32]), (32, [32, 16, 8], [8, 16, 32])],
)
def test_sizes_for_8_28_and_32_pixels(image_size: int, g_widths: list[int], d_widths: list[int]) -> None:
    g = DCGANGenerator(latent_dim=8, out_channels=3, image_size=image_size, hidden_channels=g_widths)
    d = DCGANDiscriminator(in_channels=3, image_size=image_size, hidden_channels=d_widths)
    x = g(torch.randn(5, 8))
    assert x.shape == (5, 3, image_size, image_size) and x.min() >= -1 and x.max() <= 1
    assert d(x).shape == (5,)


def test_size_that_does_not_divide_is_refused() -> None:
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*3"):
        DCGANGenerator(latent_dim=8, out_channels=1, image_size=28, hidden_channels=[8, 8, 8])


def test_conditional_nets_use_the_label() -> None:
    torch.manual_seed(0)
    g = DCGANGenerator(latent_dim=8, out_channels=1, image_size=8, hidden_channels=[16, 8], num_classes=10).eval()
    d = DCGANDiscriminator(in_channels=1, image_size=8, hidden_channels=[8, 16], num_classes=10)
    z = torch.randn(1, 8).expand(2, -1)
    images = g(z, torch.tensor([3, 7]))
    assert not torch.allclose(images[0], images[1])  # same z, different digit
    x = images[:1].expand(2, -1, -1, -1)
    assert not torch.allclose(*d(x, torch.tensor([3, 7])).unbind())  # the projection term
    with pytest.raises(ValueError, match="conditional"):
        g(z)


def test_spectral_norm_bounds_each_weight() -> None:
    torch.manual_seed(0)
    d = DCGANDiscriminator(in_channels=1, image_size=8, hidden_channels=[8, 16], spectral_norm=True)
    for _ in range(20):  # the power iteration runs once per training-mode forward
        d(torch.randn(4, 1, 8, 8))
    weight = d.head.weight  # the normalised weight (W / sigma(W))
    assert torch.linalg.matrix_norm(weight, ord=2).item() == pytest.approx(1.0, abs=0.02)


def test_diffaugment_is_differentiable_random_and_off_in_eval() -> None:
    torch.manual_seed(0)
    aug = DiffAugment(["color", "translation", "cutout"])
    x = torch.rand(16, 1, 8, 8, requires_grad=True)
    out = aug(x)
    assert out.shape == x.shape and not torch.equal(out, aug(x))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert aug.eval()(x) is x


def test_translation_shifts_and_cutout_blanks_a_square() -> None:
    torch.manual_seed(0)
    x = torch.arange(64.0).view(1, 1, 8, 8).expand(32, -1, -1, -1) / 64
    shifted = DiffAugment(["translation"], translation_ratio=0.125)(x)  # by -1, 0 or 1 pixel each way
    for image in shifted:
        kept = image[image != -1]  # the fill
        assert len(kept) >= 49 and torch.isin(kept, x[0]).all()
    cut = DiffAugment(["cutout"], cutout_ratio=0.5)(x + 1)  # no zeros before
    zeros = (cut == 0).flatten(1).sum(1)
    assert zeros.max() == 16 and zeros.min() >= 4  # a 4x4 square, clipped at the border
    with pytest.raises(ValueError, match="unknown"):
        DiffAugment(["rotate"])
