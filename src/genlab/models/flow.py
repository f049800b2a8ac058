"""Normalizing flow trained by exact maximum likelihood (Dinh et al. 2017; Kingma & Dhariwal 2018).

    loss = bits/dim = (E_u[-log p(y)] + dims * log(levels)) / (dims * log 2),  y = (k + u) / levels

on uniformly dequantized images (the project's convention, genlab.models.likelihoods): the same
figure is logged as `train/loss`, `val/loss` and `val/bpd`, so the default best checkpoint (on
val/loss) is the best on held-out bits/dim. Small data over-fits: the family's config stops early on
val/bpd (configs/model/flow.yaml).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.models.likelihoods import bits_per_dim, dequantize, dequantized_nll, quantize
from genlab.models.step_logs import log_train_step


def check_temperature(temperature: float, key: str = "temperature") -> None:
    if not temperature > 0:
        raise ConfigError(
            f"{key} must be > 0 (1 samples the model itself, < 1 sharper, less varied), got {temperature}"
        )


class FlowModule(L.LightningModule):
    # What genlab.evaluate's table says about this family's figures.
    metric_notes = {
        "bpd": "bits/dim on the data's levels, one uniform dequantization draw: an upper bound on -log2 P(x) / dims",
        "loss": "the same as bpd (the training objective)",
    }

    def __init__(
        self,
        flow: dict[str, Any],
        optimizer: dict[str, Any],
        levels: int,
        sample_temperature: float = 1.0,
        warmup_steps: int = 0,
    ) -> None:
        """Config nodes (`_target_` dicts), built here so `FlowModule.load_from_checkpoint(path)` works:
        `flow` is the bijection with `log_prob(y)` and `sample(n, temperature)` (genlab.nets.Glow);
        `optimizer` a partial node taking the parameters. `levels`: the data's intensity levels
        (`${data.levels}`); `sample_temperature`: the latent scale `sample(n)` uses; `warmup_steps`:
        linear learning-rate warm-up (flows are touchy in their first steps)."""
        super().__init__()
        check_temperature(sample_temperature, "model.sample_temperature")
        self.save_hyperparameters()
        self.flow = instantiate(flow)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = instantiate(self.hparams.optimizer)(self.parameters())
        warmup = max(1, self.hparams.warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def log_prob(self, x: torch.Tensor, samples: int = 1, noise: torch.Tensor | None = None) -> torch.Tensor:
        """log P(x) of images `(B, C, H, W)` on the data's grid, `(B,)` in nats: a lower bound from
        `samples` dequantization draws, P(x) = levels^-dims E_u[p(y)] estimated by the mean over them
        (1 draw: the usual dequantized bound; more: tighter, exact as samples -> infinity). `noise`: the
        draws `(samples, B or 1, C, H, W)` in [0, 1) (else fresh ones for every image)."""
        dims = x[0].numel()
        draws = [None] * samples if noise is None else list(noise.to(x))
        log_p = torch.stack([self.flow.log_prob(dequantize(x, self.hparams.levels, u)) for u in draws])
        log_mean = torch.logsumexp(log_p, 0) - math.log(samples)
        return -dequantized_nll(log_mean, dims, self.hparams.levels)

    @torch.no_grad()
    def anomaly_score(self, x: torch.Tensor, k: int = 16, seed: int = 0) -> torch.Tensor:
        """exact NLL: -log P(x) in nats from the flow's exact density, mean over k uniform dequantization
        draws (an upper bound on the discrete NLL, tight as k grows).

        `(B,)` for images `(B, C, H, W)`, higher: less like the training data (genlab.apps.scores). The
        k draws come from `seed` and are shared by every image, so a score does not depend on the batch."""
        noise = torch.rand(k, 1, *x.shape[1:], generator=torch.Generator().manual_seed(seed))
        return -self.log_prob(x, k, noise)

    def bpd(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image bits/dim `(B,)` with one dequantization draw (`noise` in [0, 1), else random)."""
        y = dequantize(x, self.hparams.levels, noise)
        log_p = self.flow.log_prob(y)
        log_p = log_p.to(torch.promote_types(log_p.dtype, torch.float32))  # fp32 at least under bf16 autocast
        nll = dequantized_nll(log_p, x[0].numel(), self.hparams.levels)
        return bits_per_dim(nll, x[0].numel())

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.bpd(batch[0]).mean()
        log_train_step(self, {"train/loss": loss})
        return loss

    def _held_out(self, split: str, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x = batch[0]
        # The same dequantization noise every epoch (seeded by batch): val/bpd moves only with the model.
        generator = torch.Generator(device=x.device).manual_seed(batch_idx)
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        bpd = self.bpd(x, noise).mean()
        self.log_dict(
            {f"{split}/loss": bpd, f"{split}/bpd": bpd}, prog_bar=split == "val", sync_dist=True, batch_size=len(x)
        )

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._held_out("val", batch, batch_idx)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._held_out("test", batch, batch_idx)

    @torch.no_grad()
    def sample(self, n: int, temperature: float | None = None) -> torch.Tensor:
        """`n` images `(n, C, H, W)` in [-1, 1] on the data's grid of levels; latents scaled by
        `temperature` (default `sample_temperature`)."""
        temperature = self.hparams.sample_temperature if temperature is None else temperature
        check_temperature(temperature)
        return quantize(self.flow.sample(n, temperature).float(), self.hparams.levels)
