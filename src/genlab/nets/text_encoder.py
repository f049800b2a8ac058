"""A small transformer text encoder for text-to-image denoisers (the role CLIP's text tower plays in
Stable Diffusion, Rombach et al. 2022 §3.3, at template scale), behind the conditioning interface of
`genlab.nets.conditioning`.

    caption ids (B, context) int64, right-padded with 0
      -> [BOS] + token + position embeddings -> n_layer x gpt.Block -> LayerNorm
      -> tokens (B, 1 + context, n_embd), mask (B, 1 + context) bool, pooled (B, dim)

The blocks are GPT's (`genlab.nets.gpt.Block`: causal, as CLIP's text transformer is), so a trained
GPT run's weights can initialise them (`init_from`) and, with right padding, no real token ever
attends to a pad. A learned BOS token sits at position 0: the empty caption (all pads) still has one
key to attend to, and its encoding is the unconditional ("null") condition classifier-free guidance
mixes with (Ho & Salimans 2022): captions are dropped to the empty caption with `drop_prob`.
The pooled vector is the masked mean of the valid outputs, projected to `dim` (it joins the time
embedding, as SD-XL's pooled text embedding does); the tokens feed the net's cross-attention.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genlab.errors import ConfigError
from genlab.nets.conditioning import TokenCondition
from genlab.nets.gpt import Block


class TextEncoder(nn.Module):
    """Caption ids `(B, context)` -> `TokenCondition(pooled (B, dim), tokens (B, 1 + context, n_embd), mask)`."""

    def __init__(
        self,
        alphabet: str,
        context: int,
        dim: int,
        n_embd: int = 128,
        n_layer: int = 2,
        n_head: int = 4,
        bias: bool = False,
        drop_prob: float = 0.1,
        init_from: str | None = None,
    ) -> None:
        """`alphabet`: the caption characters, id = position, the first the pad (data.alphabet).
        `context`: the longest caption in tokens (data.context). `dim`: the pooled vector's width
        (the net passes its time-embedding width). `n_embd`, `n_layer`, `n_head`, `bias`: the
        transformer (a GPT run given by `init_from` must have these sizes and the same alphabet).
        `drop_prob`: the fraction of captions dropped to the empty caption while training (0.1-0.2 for
        classifier-free guidance; 0 forbids guidance != 1)."""
        super().__init__()
        if not 0 <= drop_prob < 1:
            raise ConfigError(f"model.net.conditioning.drop_prob must be in [0, 1), got {drop_prob}")
        if len(alphabet) < 2:
            raise ConfigError(f"data.alphabet '{alphabet}' needs a pad character and at least one more")
        self.alphabet, self.context, self.drop_prob = alphabet, context, drop_prob
        self.token_dim = n_embd  # what the net's cross-attention reads: the width of `tokens`
        self.tok_emb = nn.Embedding(len(alphabet), n_embd)
        self.pos_emb = nn.Embedding(context + 1, n_embd)  # + 1: the BOS position
        self.bos = nn.Parameter(torch.zeros(n_embd))
        self.blocks = nn.ModuleList(Block(n_embd, n_head, 0.0, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.pool = nn.Linear(n_embd, dim)
        for module in (self.tok_emb, self.pos_emb, self.bos):  # GPT-2's init
            nn.init.normal_(module if isinstance(module, nn.Parameter) else module.weight, std=0.02)
        for name, param in self.blocks.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * n_layer))
        if init_from is not None:
            self.load_gpt(init_from)

    def null(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """A batch of empty captions `(B, context)`: the unconditional condition."""
        return torch.zeros(batch_size, self.context, dtype=torch.long, device=device)

    def forward(self, ids: torch.Tensor) -> TokenCondition:
        b, t = ids.shape
        if t > self.context:
            raise ValueError(f"TextEncoder: captions of {t} tokens, the encoder holds {self.context} (data.context)")
        if self.training and self.drop_prob > 0:
            dropped = torch.rand(b, device=ids.device) < self.drop_prob
            ids = ids.masked_fill(dropped[:, None], 0)
        # Valid: BOS and every position up to the last non-pad id (a pad symbol inside a caption, a space
        # say, stays a token); right padding after it is masked out.
        positions = torch.arange(t, device=ids.device)
        last = torch.where(ids != 0, positions, -1).amax(dim=1)  # (B,), -1 for the empty caption
        mask = torch.cat([ids.new_ones(b, 1, dtype=torch.bool), positions[None] <= last[:, None]], dim=1)
        x = torch.cat([self.bos.expand(b, 1, -1), self.tok_emb(ids)], dim=1)  # (B, 1 + T, n_embd)
        x = x + self.pos_emb(torch.arange(t + 1, device=ids.device))
        for block in self.blocks:
            x = block(x)  # causal: real tokens never see the pads after them
        tokens = self.ln_f(x)  # (B, 1 + T, n_embd)
        weights = mask.to(tokens.dtype)[..., None]  # (B, 1 + T, 1)
        pooled = (tokens * weights).sum(1) / weights.sum(1)  # masked mean, (B, n_embd)
        return TokenCondition(self.pool(pooled), tokens, mask)

    def encode(self, prompts: list[str], device: torch.device | None = None) -> torch.Tensor:
        """Prompts -> ids `(len(prompts), context)` right-padded with 0; a one-line ConfigError for a
        prompt longer than the context or with characters outside the alphabet (naming them)."""
        index = {c: i for i, c in enumerate(self.alphabet) if i}  # the pad is no prompt character
        ids = torch.zeros(len(prompts), self.context, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            if len(prompt) > self.context:
                raise ConfigError(
                    f"prompt '{prompt}' has {len(prompt)} characters; the text encoder holds {self.context} "
                    "(data.context of the run): shorten it"
                )
            unknown = sorted({c for c in prompt if c not in index})
            if unknown:
                raise ConfigError(
                    f"prompt '{prompt}': character(s) {', '.join(repr(c) for c in unknown)} are not in the "
                    f"model's alphabet {self.alphabet[1:]!r}: remove them"
                )
            ids[row, : len(prompt)] = torch.tensor([index[c] for c in prompt], dtype=torch.long)
        return ids.to(device)

    def load_gpt(self, run: str) -> None:
        """Copy a trained GPT run's embeddings, blocks and final norm (`model.net.conditioning.init_from`);
        BOS, the position of BOS and the pooling stay as initialised. A one-line ConfigError when the run is
        not a char GPT over this alphabet or its sizes differ."""
        # imported here: genlab.checkpoints brings Lightning in, which a net never needs otherwise
        from genlab.checkpoints import is_checkpoint, read_checkpoint

        key = "model.net.conditioning.init_from"
        path = Path(run)
        if (path / "checkpoints").is_dir():
            path = path / "checkpoints" / "last.ckpt"
        if not is_checkpoint(path):
            raise ConfigError(f"{key}='{run}': no checkpoint there; train one with make train MODEL=gpt")
        checkpoint = read_checkpoint(path)
        tokenizer: dict[str, Any] = checkpoint.get("tokenizer") or {}
        if tokenizer.get("kind") != "char" or tokenizer.get("chars") != self.alphabet:
            raise ConfigError(
                f"{key}='{run}': the GPT's vocabulary is not data.alphabet ({self.alphabet!r}); train the GPT on "
                "the captions' alphabet (a char tokenizer with the same characters in the same order)"
            )
        weights = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        ours = {k: v for k, v in self.state_dict().items() if k.startswith(("tok_emb.", "blocks.", "ln_f."))}
        pos = weights.get("pos_emb.weight")
        if pos is None or pos.shape[0] < self.context or pos.shape[1] != self.token_dim:
            raise ConfigError(f"{key}='{run}': the GPT's positions or width do not fit data.context={self.context}")
        mismatched = [k for k, v in ours.items() if k not in weights or weights[k].shape != v.shape]
        if mismatched:
            raise ConfigError(
                f"{key}='{run}': the GPT's sizes differ from model.net.conditioning's n_embd/n_layer/n_head/bias "
                f"(first mismatch: {mismatched[0]}): set them to the GPT's"
            )
        self.load_state_dict({k: weights[k] for k in ours}, strict=False)
        with torch.no_grad():  # the GPT's positions 0..context-1 for the caption; BOS keeps its own
            self.pos_emb.weight[1:] = weights["pos_emb.weight"][: self.context]
