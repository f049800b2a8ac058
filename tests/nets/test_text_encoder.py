"""The text encoder and the cross-attention it switches on in the UNet and the DiT."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from genlab.errors import ConfigError
from genlab.nets import DiT, UNet
from genlab.nets.conditioning import CrossAttention, LabelEmbedding
from genlab.nets.gpt import GPT
from genlab.nets.text_encoder import TextEncoder

ALPHABET = "_ 0123456789abcdefghijklmnopqrstuvwxyz"  # data=captioned_digits': "_" is the pad (id 0)
ENCODER = functools.partial(TextEncoder, alphabet=ALPHABET, context=16, n_embd=16, n_layer=1, n_head=2)


def _nets(conditioning) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    sizes = {"base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": [4], "num_heads": 2}
    unet = UNet(1, 8, **sizes, conditioning=conditioning)
    dit = DiT(1, 8, patch_size=2, hidden_size=16, depth=2, num_heads=2, conditioning=conditioning)
    return [unet, dit]


def _perturb(net: torch.nn.Module) -> torch.nn.Module:
    """Give the zero-initialised output layers weights, so outputs depend on the caption."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("index", [0, 1], ids=["unet", "dit"])
def test_empty_caption_is_the_null_condition(index: int) -> None:
    net = _perturb(_nets(ENCODER)[index])
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 700.0])
    ids = net.conditioning.encode(["a 3 above a 7", ""])
    out = net(x, t, ids)
    torch.testing.assert_close(out[1], net(x, t, None)[1])  # "" is what cond=None (the null) gives
    torch.testing.assert_close(net(x, t, net.conditioning.null(2)), net(x, t, None))
    assert not torch.allclose(out[0], net(x, t, None)[0])  # a caption reaches the net


def test_pads_after_the_caption_change_nothing_and_dropout_empties_captions() -> None:
    torch.manual_seed(0)
    encoder = ENCODER(dim=8).eval()
    short, long = encoder.encode(["two fives"]), ENCODER(dim=8, context=24)
    long.load_state_dict({k: v for k, v in encoder.state_dict().items() if k != "pos_emb.weight"}, strict=False)
    with torch.no_grad():
        long.pos_emb.weight[:17] = encoder.pos_emb.weight
    a, b = encoder(short), long.eval()(long.encode(["two fives"]))
    torch.testing.assert_close(a.pooled, b.pooled)  # causal blocks + masked mean: the padding is invisible
    assert a.mask.sum() == 1 + len("two fives")
    dropping = ENCODER(dim=8, drop_prob=0.999).train()
    dropping.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(dropping(short).pooled, encoder(encoder.null(1)).pooled)


@pytest.mark.parametrize("index", [0, 1], ids=["unet", "dit"])
def test_label_nets_gain_no_cross_attention(index: int) -> None:
    """Cross-attention exists only for token-yielding conditioning: a label net has exactly the
    parameters of the unconditional net plus its label table (so its checkpoints still load)."""
    labelled = _nets(functools.partial(LabelEmbedding, num_classes=10))[index]
    plain = _nets(None)[index]
    assert not any(isinstance(m, CrossAttention) for m in labelled.modules())
    extra = {k for k in labelled.state_dict()} - {k for k in plain.state_dict()}
    assert extra == {"conditioning.table.weight"}
    assert any(isinstance(m, CrossAttention) for m in _nets(ENCODER)[index].modules())


def test_bad_prompts_are_one_line_errors() -> None:
    encoder = ENCODER(dim=8)
    with pytest.raises(ConfigError, match=r"has 20 characters; the text encoder holds 16"):
        encoder.encode(["a 3 above a 7 and 22"])
    with pytest.raises(ConfigError, match=r"character\(s\) '!', 'A' are not in the model's alphabet"):
        encoder.encode(["A 3!"])
    with pytest.raises(ConfigError, match=r"'_'"):  # the pad is no prompt character
        encoder.encode(["a_3"])


def _gpt_checkpoint(path: Path, chars: str, n_embd: int = 16) -> Path:
    torch.manual_seed(1)
    gpt = GPT(len(chars), block_size=32, n_layer=1, n_head=2, n_embd=n_embd)
    state = {f"net.{k}": v for k, v in gpt.state_dict().items()}
    torch.save({"tokenizer": {"kind": "char", "chars": chars}, "state_dict": state}, path)
    return path


def test_init_from_a_gpt_run(tmp_path: Path) -> None:
    ckpt = _gpt_checkpoint(tmp_path / "gpt.ckpt", ALPHABET)
    encoder = ENCODER(dim=8, init_from=str(ckpt))
    gpt = torch.load(ckpt, weights_only=True)["state_dict"]
    torch.testing.assert_close(encoder.blocks[0].attn.qkv.weight, gpt["net.blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(encoder.tok_emb.weight, gpt["net.tok_emb.weight"])
    torch.testing.assert_close(encoder.pos_emb.weight[1:], gpt["net.pos_emb.weight"][:16])
    other = _gpt_checkpoint(tmp_path / "other.ckpt", "abc")
    with pytest.raises(ConfigError, match=r"init_from=.*vocabulary is not data.alphabet"):
        ENCODER(dim=8, init_from=str(other))
    wide = _gpt_checkpoint(tmp_path / "wide.ckpt", ALPHABET, n_embd=32)
    with pytest.raises(ConfigError, match=r"init_from=.*(sizes|width)"):
        ENCODER(dim=8, init_from=str(wide))
