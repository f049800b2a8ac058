"""A GPT over the code indices of a frozen VQ autoencoder: the two-stage image generator of DALL-E
(Ramesh et al. 2021, arXiv:2102.12092, sec. 2) and VQGAN's transformer (Esser et al. 2021,
arXiv:2012.09841, sec. 3.2), here class-conditional like VQGAN's class-conditional ImageNet model.

    x (B, C, H, W) -> first_stage.encode_indices -> codes (B, h, w) -> raster order (B, h*w)
    tokens = [start, c_1, ..., c_{h w}];  loss = -1/(h w) sum_i log p(c_i | start, c_<i)   (nats per code)

Token layout (vocab_size = num_codes + max(num_classes, 1)): ids 0..K-1 are the K codes of the
codebook; K + y is the start token of class y (conditional), or K the one start token
(num_classes=0: unconditional). Only codes are ever targets, so the loss and sampling both read the
logits of the K codes alone (the class tokens' logits are masked): `val/loss` is the exact negative
log-likelihood of an image's codes under the sampler, per code (`val/bpt` in bits, `val/ppl`).

`sample(n, labels=...)` draws h*w codes after the start token (KV cache, `temperature`, `top_k`,
`top_p`) and decodes them with the first stage: images `(n, C, H, W)` in [-1, 1], so `make sample`,
`make eval`, the sample logger and the apps treat it as any image family.

The first stage (a `model=autoencoder` run with `model.regularizer=vq`) is loaded frozen by
`genlab.models.first_stage`: eval mode, no gradients, outside the optimizer; its config node replaces
the path in the saved hyperparameters and its weights sit in the state dict (`first_stage.*`), so a
checkpoint alone samples. The optimizer and learning-rate schedule are the GPT family's
(`genlab.models.gpt.warmup_cosine_optimizer`).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.models.first_stage import FIRST_STAGE_HINT, carry_first_stage, check_trained_on, load_first_stage
from genlab.models.gpt import check_sampling, check_schedule_kept, warmup_cosine_optimizer
from genlab.models.optim import matrix_names
from genlab.models.step_logs import log_train_step
from genlab.nets.conditioning import check_labels


class VQGPTModule(L.LightningModule):
    def __init__(
        self,
        first_stage: str | dict[str, Any],
        net: dict[str, Any],
        optimizer: dict[str, Any],
        image_size: int,
        channels: int,
        num_classes: int = 0,
        vocab_size: int | None = None,
        warmup_steps: int = 100,
        lr_decay_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> None:
        """`first_stage`: a VQ autoencoder run folder or checkpoint (or, from a saved checkpoint, its
        config node). `net`: a partial `genlab.nets.gpt.GPT` node without `vocab_size` and `block_size`
        (the module gives them: the layout above, and h*w positions). `image_size`, `channels`: the
        data's, checked against the first stage's. `num_classes`: the data's for a class-conditional
        model, 0 for an unconditional one. `vocab_size`: null (computed), or a value that must match.
        `temperature`, `top_k`, `top_p`: what `sample()` draws with unless told otherwise."""
        super().__init__()
        check_sampling(temperature, top_k, top_p)
        if num_classes < 0:
            raise ConfigError(f"model.num_classes must be >= 0 (0: unconditional), got {num_classes}")
        self.save_hyperparameters()
        self.first_stage, node = load_first_stage(first_stage)
        self.hparams.first_stage = node  # the checkpoint carries the config, the state dict the weights
        quantizer = getattr(self.first_stage, "quantizer", None)
        if quantizer is None:
            where = f"'{first_stage}'" if isinstance(first_stage, str) else "(the checkpoint's)"
            raise ConfigError(
                f"model.first_stage={where} is a KL autoencoder: the VQ-GPT models code indices, so it needs "
                "one trained with model.regularizer=vq (python -m genlab.train model=autoencoder data=mnist5k "
                "model.regularizer=vq)"
            )
        check_trained_on(self.first_stage, channels, image_size)
        self.num_codes = quantizer.num_codes
        _, h, w = self.first_stage.latent_shape
        self.codes_shape = (h, w)
        expected = self.num_codes + max(num_classes, 1)
        if vocab_size is not None and vocab_size != expected:
            raise ConfigError(
                f"model.vocab_size={vocab_size} does not match the first stage: {self.num_codes} codes + "
                f"{max(num_classes, 1)} start token(s) ({num_classes} classes) = {expected}; "
                f"set model.vocab_size={expected} or null"
            )
        self.hparams.vocab_size = expected
        self.net = instantiate(net, "model.net")(vocab_size=expected, block_size=h * w)
        self.decayed = matrix_names(self.net)  # weight decay (if the optimizer has any) on these only
        self.register_buffer("code_tokens", torch.arange(expected) < self.num_codes, persistent=False)

    @property
    def conditional(self) -> bool:
        """Whether `sample(labels=...)` applies (`genlab.sample` and `genlab.evaluate` ask)."""
        return self.hparams.num_classes > 0

    def train(self, mode: bool = True) -> VQGPTModule:
        super().train(mode)
        self.first_stage.eval()  # frozen whoever calls train(): in training mode a VQ codebook moves
        return self

    # --- sequences ---------------------------------------------------------------------------------

    def start_tokens(self, labels: torch.Tensor | None, n: int) -> torch.Tensor:
        """`(n, 1)`: K + label (conditional) or K (unconditional)."""
        if labels is None:
            return torch.full((n, 1), self.num_codes, dtype=torch.long, device=self.device)
        return (self.num_codes + labels.long()).view(n, 1)

    @torch.no_grad()
    def to_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Images `(B, C, H, W)` -> code indices `(B, h*w)` in raster order (row by row)."""
        return self.first_stage.encode_indices(x).flatten(1)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean negative log-likelihood per code (nats) of the batch's images."""
        x, y = batch
        codes = self.to_codes(x)  # (B, T) with T = h*w
        labels = y if self.conditional else None
        tokens = torch.cat([self.start_tokens(labels, len(codes)), codes[:, :-1]], dim=1)  # (B, T): inputs
        logits = self.net(tokens)[..., : self.num_codes]  # (B, T, K): codes only, as sampling draws
        return F.cross_entropy(logits.flatten(0, 1).float(), codes.flatten())  # fp32 under bf16 autocast

    # --- training ----------------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        return warmup_cosine_optimizer(self)  # the net only: the first stage is not in it

    def on_train_start(self) -> None:
        check_schedule_kept(self)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        log_train_step(self, {"train/loss": loss}, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss = self.loss(batch)
        metrics = {"val/loss": loss, "val/bpt": loss / math.log(2), "val/ppl": loss.exp()}
        self.log_dict(metrics, sync_dist=True, batch_size=len(batch[0]))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        carry_first_stage(checkpoint, self.hparams.first_stage)  # the checkpoint alone loads

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming (or loading) with another first stage builds a net for its vocabulary: say so in one
        # line rather than let load_state_dict fail on the embedding's shape.
        saved = checkpoint.get("state_dict", {}).get("net.tok_emb.weight")
        if saved is not None and saved.shape[0] != self.net.vocab_size:
            raise ConfigError(
                f"this VQ-GPT checkpoint has a vocabulary of {saved.shape[0]} tokens, but model.first_stage "
                f"({self.num_codes} codes) and model.num_classes ({self.hparams.num_classes}) make "
                f"{self.net.vocab_size}: use the first stage and classes it was trained with; {FIRST_STAGE_HINT}"
            )

    @torch.no_grad()
    def code_nll(self, codes: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """-log p(codes | start token) in nats, summed over the h*w codes: `(B,)` for codes `(B, h*w)`."""
        tokens = torch.cat([self.start_tokens(labels, len(codes)), codes[:, :-1]], dim=1)
        logp = self.net(tokens)[..., : self.num_codes].float().log_softmax(-1)  # (B, T, K)
        return -logp.gather(-1, codes.unsqueeze(-1)).squeeze(-1).sum(1)

    @torch.no_grad()
    def anomaly_score(self, x: torch.Tensor, k: int = 16, seed: int = 0) -> torch.Tensor:
        """code NLL: -log p(codes) of the image's VQ codes in nats per code, exact (autoregressive); a
        conditional model's p(codes) = mean over the classes of p(codes | class) (a uniform prior).

        `(B,)` for images `(B, C, H, W)`, higher: less like the training data (genlab.apps.scores). It
        scores the autoencoder's codes, so what the quantiser cannot tell apart it cannot either.
        Deterministic: `k` and `seed` are unused."""
        was_training = self.net.training
        self.net.eval()
        try:
            codes = self.to_codes(x)  # (B, T)
            if not self.conditional:
                return self.code_nll(codes, None) / codes.shape[1]
            per_class = torch.stack(
                [
                    self.code_nll(codes, torch.full((len(x),), y, device=x.device))
                    for y in range(self.hparams.num_classes)
                ]
            )  # (classes, B)
            nll = -(torch.logsumexp(-per_class, dim=0) - math.log(self.hparams.num_classes))
            return nll / codes.shape[1]
        finally:
            self.net.train(was_training)

    # --- sampling ----------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_codes(
        self,
        n: int,
        labels: torch.Tensor | list[int] | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> torch.Tensor:
        """`n` code grids `(n, h, w)`, every entry in [0, num_codes). A conditional model given no labels
        draws the classes in turn (0, 1, 2, ...)."""
        hp = self.hparams
        temperature = hp.temperature if temperature is None else temperature
        top_k, top_p = hp.top_k if top_k is None else top_k, hp.top_p if top_p is None else top_p
        check_sampling(temperature, top_k, top_p, where="sample: ")
        if labels is not None:
            why = "model.num_classes=0"
            labels = check_labels(labels, n, hp.num_classes or None, self.device, why, "model.num_classes")
        elif self.conditional:
            labels = torch.arange(n, device=self.device) % hp.num_classes
        h, w = self.codes_shape
        was_training = self.net.training
        self.net.eval()  # no dropout while sampling, whoever calls (a module fresh from loading is in train mode)
        try:
            start = self.start_tokens(labels, n)
            out = self.net.generate(start, h * w, temperature, top_k, top_p, allowed=self.code_tokens)  # (n, 1 + h*w)
        finally:
            self.net.train(was_training)
        return out[:, 1:].view(n, h, w)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: torch.Tensor | list[int] | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
    ) -> torch.Tensor:
        """`n` images `(n, C, H, W)` in [-1, 1]: sampled codes decoded by the first stage."""
        codes = self.sample_codes(n, labels, temperature, top_k)
        return self.first_stage.decode_indices(codes)
