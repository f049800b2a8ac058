"""DiT denoiser: patch layout, adaLN-Zero, batch independence, the paper's sizes (parameters and
FLOPs on the meta device), guidance through DiffusionModule, a short real run, bad input."""

from __future__ import annotations

import functools
import shutil

import pytest
import torch
from conftest import column, read_metrics
from torch.utils.flop_counter import FlopCounterMode

from genlab.config import compose
from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.nets.conditioning import LabelEmbedding
from genlab.nets.dit import DiT, DiTBlock, dit_preset, patchify, sincos_position_embedding, unpatchify
from genlab.train import train

TINY = ("model.net.hidden_size=32", "model.net.depth=2", "model.net.num_heads=2")
FEW_SAMPLES = ("model.sample_steps=2", "callbacks.samples.num_samples=4")  # the end-of-run grid, cheaply


def _tiny(**kwargs) -> DiT:
    torch.manual_seed(0)
    args = dict(in_channels=3, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4)
    return DiT(**{**args, **kwargs})


def _perturb(net: torch.nn.Module) -> None:
    """Give the zero-initialised adaLN and output layers weights, so the output depends on everything."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))


def test_unpatchify_inverts_patchify_and_the_conv_embedding_reads_patches_in_that_order() -> None:
    x = torch.randn(2, 3, 8, 12)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 2 * 3, 4 * 4 * 3)
    torch.testing.assert_close(unpatchify(tokens, 4, 3, 2, 3), x, rtol=0, atol=0)
    # The stride-p convolution is a linear map of each patch, with its tokens in patchify's order.
    conv = torch.nn.Conv2d(3, 5, 4, stride=4)
    by_conv = conv(x).flatten(2).transpose(1, 2)  # (B, T, 5)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(5, -1)  # (out, p*p*C) in patchify's (row, col, channel)
    torch.testing.assert_close(by_conv, tokens @ weight.T + conv.bias, rtol=1e-5, atol=1e-5)


def test_a_fresh_block_is_the_identity_and_a_fresh_net_predicts_zero() -> None:
    block = DiTBlock(32, num_heads=4, mlp_ratio=4.0, qk_norm=True)
    x, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    torch.testing.assert_close(block(x, c), x, rtol=0, atol=0)
    net = _tiny(conditioning=functools.partial(LabelEmbedding, num_classes=10))
    for block in net.blocks:
        torch.testing.assert_close(block(x, c), x, rtol=0, atol=0)
    out = net(torch.randn(2, 3, 8, 8), torch.tensor([3.0, 700.0]), torch.tensor([1, 2]))
    assert out.shape == (2, 3, 8, 8) and not out.any()


def test_a_batch_gives_each_item_what_it_gives_alone() -> None:
    net = _tiny(conditioning=functools.partial(LabelEmbedding, num_classes=10, drop_prob=0.5)).eval()
    _perturb(net)
    x, t, labels = torch.randn(4, 3, 8, 8), torch.tensor([0.0, 10.0, 500.0, 999.0]), torch.tensor([0, 3, 7, 10])
    batch = net(x, t, labels)
    alone = torch.cat([net(x[i : i + 1], t[i : i + 1], labels[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batch[0], batch[1])  # the items differ: the comparison means something
    null = net(x[:1], t[:1])  # no condition: the null label
    torch.testing.assert_close(null, net(x[:1], t[:1], torch.tensor([10])))


def test_position_embeddings_are_distinct_per_position_in_2d_and_3d() -> None:
    for grid in ((4, 4), (3, 4, 4)):
        emb = sincos_position_embedding(48, grid)
        assert emb.shape == (torch.Size(grid).numel(), 48)
        assert torch.cdist(emb, emb).fill_diagonal_(1.0).min() > 1e-3  # no two positions share an embedding
    with pytest.raises(ValueError, match="divisible by 6"):
        sincos_position_embedding(40, (2, 4, 4))


@pytest.mark.parametrize("family", ["diffusion", "flow_matching"])
def test_guidance_one_is_plain_conditional_through_diffusion_module(family: str) -> None:
    torch.manual_seed(0)
    model = instantiate(compose([f"experiment={family}_dit", *TINY]).model)
    assert type(model.net).__name__ == "DiT"
    _perturb(model.ema.shadow)
    net, labels = model.ema.shadow, torch.tensor([3, 5])

    def draw(**kwargs) -> torch.Tensor:
        torch.manual_seed(2)
        return model.sample(2, steps=3, labels=labels, **kwargs)

    plain = draw(guidance=1.0)
    torch.manual_seed(2)
    noise = torch.randn(2, 1, 8, 8)  # what sample() draws first: integrate by hand with the conditional net alone
    by_hand = model.process.sample(
        lambda x, t: net(x, model.process.net_time(t), labels),
        noise,
        sampler=model.hparams.sampler,
        steps=3,
        eta=model.hparams.eta,
    )
    torch.testing.assert_close(plain, by_hand)
    assert not torch.allclose(draw(guidance=3.0), plain)


@pytest.mark.parametrize("family", ["diffusion", "flow_matching"])
def test_short_run_with_a_dit_lowers_val_loss(family: str, make_config, log_dir) -> None:
    run_args = (*TINY, "trainer.limit_train_batches=6", "trainer.limit_val_batches=2", "trainer.max_epochs=3")
    train(make_config(f"experiment={family}_dit", *run_args, "model.optimizer.lr=2e-3", *FEW_SAMPLES))
    (run,) = (log_dir / family).iterdir()
    val_loss = column(read_metrics(run), "val/loss")
    assert len(val_loss) == 3 and val_loss[-1] < 0.9 * val_loss[0]


# The paper's Table 1 and Table 4: 256x256 images as 32x32x4 latents, 1000 classes, learned sigma
# (8 output channels). Its Gflops count a multiply-add once; FlopCounterMode counts it twice.
PAPER = {"S/2": (33e6, 6.06), "B/2": (130e6, 23.01), "L/2": (458e6, 80.71), "XL/2": (675e6, 118.64)}
PAPER_GFLOPS = {"S/4": 1.41, "S/8": 0.36, "B/4": 5.56, "B/8": 1.42}
PAPER_GFLOPS |= {"L/4": 19.70, "L/8": 5.01, "XL/4": 29.05, "XL/8": 7.39}


def _paper_net(name: str) -> tuple[int, float]:
    """Parameters and Gflops (multiply-adds) of one forward of a preset, built and run on the meta device."""
    with torch.device("meta"):
        net = dit_preset(
            name,
            in_channels=4,
            image_size=32,
            out_channels=8,
            conditioning=functools.partial(LabelEmbedding, num_classes=1000),
        )
        with FlopCounterMode(display=False) as counter:
            net(torch.empty(1, 4, 32, 32), torch.empty(1), torch.zeros(1, dtype=torch.long))
    return sum(p.numel() for p in net.parameters()), counter.get_total_flops() / 2e9


@pytest.mark.parametrize("name", PAPER)
def test_presets_match_the_papers_parameters_and_flops(name: str) -> None:
    params, gflops = _paper_net(name)
    paper_params, paper_gflops = PAPER[name]
    assert abs(params / paper_params - 1) < 0.01, params
    assert abs(gflops / paper_gflops - 1) < 0.05, gflops


@pytest.mark.parametrize("name", PAPER_GFLOPS)
def test_larger_patches_match_the_papers_flops(name: str) -> None:
    assert abs(_paper_net(name)[1] / PAPER_GFLOPS[name] - 1) < 0.05


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model.net.patch_size=3",), "image_size 8 is not divisible by model.net.patch_size=3"),
        (("model.net.num_heads=3",), "model.net.num_heads=3 does not divide model.net.hidden_size=128"),
    ],
)
def test_bad_sizes_are_one_line_config_errors_naming_the_key(overrides, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        instantiate(compose(["experiment=diffusion_dit", *overrides]).model)
    assert "\n" not in str(err.value)


@pytest.mark.slow  # inductor compiles C++ on the CPU: ~3 min on the shared 2-core machine
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler for inductor")
def test_compiled_dit_gives_the_eager_output() -> None:
    net = _tiny(in_channels=1, conditioning=functools.partial(LabelEmbedding, num_classes=10)).eval()
    _perturb(net)
    x, t, labels = torch.randn(4, 1, 8, 8), torch.tensor([0.0, 10.0, 500.0, 999.0]), torch.tensor([1, 2, 3, 10])
    with torch.no_grad():
        eager = net(x, t, labels)
        net.compile()  # in place, as the entrypoint's compile=true does
        torch.testing.assert_close(net(x, t, labels), eager, rtol=1e-4, atol=1e-5)
