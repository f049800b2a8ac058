"""A GPT decoder (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"),
the nanoGPT way: pre-norm blocks, learned positions, tied input/output embeddings.

    tokens (B, T) -> token + position embedding -> n_layer x Block -> LayerNorm -> logits (B, T, V)
    Block: x + attention(LN(x)), then x + MLP(LN(x))

Attention goes through `F.scaled_dot_product_attention`, which picks flash / memory-efficient
kernels on a GPU. Generation keeps each layer's keys and values (`KVCache`), so each new token
costs one position's work instead of re-running the whole context.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """The keys and values of the tokens seen so far: per layer `(B, n_head, block_size, head_dim)`,
    filled up to `length`. Allocated on first use, in the dtype attention runs in (bf16 under autocast)."""

    def __init__(self, n_layer: int, max_length: int) -> None:
        self.max_length, self.length = max_length, 0
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new `(B, nh, T, hs)` keys/values after the cached ones; returns all of them."""
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KVCache holds {self.max_length} positions; {end} asked (the net's block_size)")
        if self.keys[layer] is None:
            shape = (k.shape[0], k.shape[1], self.max_length, k.shape[3])
            self.keys[layer] = k.new_empty(shape)
            self.values[layer] = v.new_empty(shape)
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be a multiple of n_head={n_head}")
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # the three projections as one matmul
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.proj_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)  # (B, nh, past + T, hs)
        mask = None
        if past and T > 1:  # new tokens after cached ones: token i sees the past and new tokens up to i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=past == 0 and T > 1,  # one new token after a cache sees everything: no mask
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """One pre-norm transformer layer (the unit FSDP or activation checkpointing wraps)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        block_size: int = 128,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        bias: bool = False,
    ) -> None:
        """`block_size` is the longest context (the learned position table's size); `bias` adds
        biases to Linear and LayerNorm layers (without: a little faster and as good, per nanoGPT)."""
        super().__init__()
        self.vocab_size, self.block_size, self.n_layer = vocab_size, block_size, n_layer
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying (Press & Wolf 2017): fewer parameters, better loss
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch's output projection by 1/sqrt(number of residual adds).
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits `(B, T, vocab_size)` for tokens `idx` `(B, T)`; with a cache, `idx` continues the
        cached tokens (and the cache grows by T)."""
        T = idx.shape[1]
        start = cache.length if cache is not None else 0
        if start + T > self.block_size:
            raise ValueError(f"{start + T} positions asked of a GPT with block_size {self.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.dropout(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        if cache is not None:
            cache.length += T
        return self.lm_head(self.ln_f(x))

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters (the tied embedding counted once); non_embedding leaves out the position table,
        which costs no matmul FLOPs."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.pos_emb.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward): 6 per matmul parameter plus attention's
        QK^T and AV, 12 * n_layer * n_embd * seq_len (Kaplan et al. 2020; PaLM appendix B)."""
        n_embd = self.pos_emb.embedding_dim
        return 6 * self.num_params() + 12 * self.n_layer * n_embd * seq_len

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`idx` `(B, T)` followed by `max_new_tokens` sampled tokens: `(B, T + max_new_tokens)`.
        `allowed` `(vocab_size,)` bool: only these tokens are drawn (the others' logits are set to -inf
        before temperature, top-k and top-p; the VQ-GPT draws codes, never a class token).

        The model sees at most `block_size` tokens. When the context is full, it restarts from
        the newest `block_size // 2` tokens (one re-run of the cache every block_size / 2 tokens,
        so the cost stays linear in length). `use_cache=False` recomputes the same context from
        scratch at every step (same tokens, for testing and timing).
        """
        B, T0 = idx.shape
        out = torch.empty(B, T0 + max_new_tokens, dtype=idx.dtype, device=idx.device)
        out[:, :T0] = idx
        start, cache = max(0, T0 - self.block_size), None
        for length in range(T0, T0 + max_new_tokens):
            if length - start > self.block_size:
                start, cache = length - max(1, self.block_size // 2), None
            # forward(), not __call__: a net compiled in place for training runs eagerly here,
            # instead of recompiling for every new sequence length.
            if not use_cache:
                logits = self.forward(out[:, start:length])
            elif cache is None:
                cache = KVCache(self.n_layer, self.block_size)
                logits = self.forward(out[:, start:length], cache)
            else:
                logits = self.forward(out[:, length - 1 : length], cache)
            logits = logits[:, -1].float()  # (B, V)
            if allowed is not None:
                logits = logits.masked_fill(~allowed, float("-inf"))
            out[:, length] = sample_next(logits, temperature, top_k, top_p)
        return out


def sample_next(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """One token per row of `logits` `(B, V)`: `(B,)`. temperature 0 is greedy; top_k keeps the k
    likeliest tokens; top_p keeps the smallest set whose probability reaches p (nucleus sampling,
    Holtzman et al. 2020)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # the mass before a token already reaches p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1).squeeze(-1)
