"""Generative adversarial network (Goodfellow et al. 2014) trained with Lightning's manual optimization.

Each training batch makes one discriminator (D) step; every `n_critic`-th batch is also a
generator (G) step, on the same fakes (as pytorch/examples' DCGAN):

    1. fake = G(z, y)                                    (with grad only when G steps this batch)
    2. D step: loss_D(D(aug(x), y), D(aug(fake.detach()), y)) + gp_weight * GP + r1_gamma / 2 * R1
    3. G step: loss_G(D(aug(fake), y)); then the EMA of G moves and both schedulers step once

`aug` is the optional DiffAugment, applied to real and fake alike. The losses and penalties are in
`gan_losses.py`; the nets in `nets/dcgan.py`.

Lightning details this module takes care of (FIELD_NOTES §4):
- `trainer.global_step` counts optimizer steps of BOTH nets. The run's length is epochs (batches),
  or `max_g_steps` G steps; the EMA and the schedulers count G steps (`g_steps`, a buffer, so it is
  in every checkpoint); `train/g_step` is logged.
- Gradient clipping is ours: `gradient_clip_val` (model key) clips each net's gradient norm in
  `on_before_optimizer_step`, where fp16's scaled gradients are already unscaled. Lightning refuses
  `trainer.gradient_clip_val` under manual optimization; so do we, with the key to use instead.
- `manual_backward` lets the precision plugin scale (16-mixed) or not (bf16-mixed); penalties are
  computed in fp32 with autocast off.
- `toggled_optimizer` keeps the other net's weights out of each backward. Under DDP each backward
  then leaves one net without gradients, so DDP must look for unused parameters
  (`trainer.strategy=ddp_find_unused_parameters_true`); plain DDP is refused at setup.
- The NaN guard sees each optimizer step (it runs in `on_before_optimizer_step` for both) and the
  batch's `loss` (D's plus G's).

Metrics: `train/d_loss`, `train/g_loss`, `train/d_real` and `train/d_fake` (mean D outputs on real
and fake images: logits, or critic values for hinge/WGAN), `train/gp`, `train/r1` when on,
`train/loss` = D's objective with its penalties + G's loss on G's batches (what the NaN guard
checks; its level is not a quality measure). `train/g_loss` is G's latest loss (with n_critic > 1
not every written batch is a G step).

`val/loss` (what the best checkpoint means): the Frechet distance between Gaussians fitted to the
validation images and to as many EMA-G samples (fixed noise, so epochs compare), in a feature space
of pixels average-pooled to at most 8x8 (torchmetrics' FID with that feature map; lower is better,
0 for identical statistics). It tracks sample quality and diversity without a trained feature net;
the project's classifier FID (`genlab.metrics`) is the figure to report.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.models.gan_losses import gan_loss, gradient_penalty, r1_penalty
from genlab.models.step_logs import logs_this_step
from genlab.nets.conditioning import check_labels
from genlab.nets.ema import EMA


class PooledPixels(nn.Module):
    """Images `(B, C, H, W)` -> pixels average-pooled to at most `size` x `size`, `(B, C * s * s)`:
    the feature space of `val/loss` (torchmetrics reads `num_features`)."""

    def __init__(self, channels: int, image_size: int, size: int = 8) -> None:
        super().__init__()
        self.size = min(size, image_size)
        self.num_features = channels * self.size**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.float(), self.size).flatten(1)


class GANModule(L.LightningModule):
    def __init__(
        self,
        generator: dict[str, Any],
        discriminator: dict[str, Any],
        optimizer_g: dict[str, Any],
        optimizer_d: dict[str, Any],
        latent_dim: int,
        channels: int,
        image_size: int,
        loss: str = "nonsaturating",
        n_critic: int = 1,
        gp_weight: float = 0.0,
        r1_gamma: float = 0.0,
        gradient_clip_val: float | None = None,
        conditional: bool = False,
        num_classes: int | None = None,
        augment: dict[str, Any] | None = None,
        ema_half_life: float = 500.0,
        ema_start_step: int = 0,
        scheduler: dict[str, Any] | None = None,
        max_g_steps: int | None = None,
    ) -> None:
        """Config nodes (`_target_` dicts), built here and saved as hyperparameters so that
        `GANModule.load_from_checkpoint(path)` rebuilds the model: `generator` and `discriminator`
        (the module adds `num_classes` when conditional), `optimizer_g`/`optimizer_d` partial
        optimizers, `augment` (a DiffAugment node or None), `scheduler` (a partial LR scheduler
        node or None; one is made per optimizer and both step once per G step)."""
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        if n_critic < 1:
            raise ConfigError(f"model.n_critic must be at least 1 (D steps per G step), got {n_critic}")
        if gp_weight < 0 or r1_gamma < 0:
            raise ConfigError("model.gp_weight and model.r1_gamma must be >= 0 (0 turns the penalty off)")
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise ConfigError(f"model.gradient_clip_val must be positive or null, got {gradient_clip_val}")
        if conditional and (num_classes is None or num_classes < 2):
            raise ConfigError(
                f"model.conditional=true needs labelled data with at least 2 classes (data.num_classes is "
                f"{num_classes}): use labelled data (one subfolder per class) or model.conditional=false"
            )
        self.loss = gan_loss(loss)
        classes = {"num_classes": num_classes if conditional else None}
        self.generator = instantiate({**generator, **classes})
        self.discriminator = instantiate({**discriminator, **classes})
        self.augment = instantiate(augment) if augment else nn.Identity()
        self.generator_ema = EMA(self.generator, EMA.decay_for_half_life(ema_half_life), start_step=ema_start_step)
        self.val_distance = FrechetInceptionDistance(feature=PooledPixels(channels, image_size))
        self.register_buffer("d_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("g_steps", torch.zeros((), dtype=torch.long))
        self._last_g_loss: torch.Tensor | None = None

    # --- set-up checks: each names the key to change ---------------------------------------------

    def configure_callbacks(self) -> list[L.Callback]:
        # Called before Lightning validates the Trainer, so these are one-line errors, not its tracebacks.
        if self.trainer.gradient_clip_val:
            raise ConfigError(
                "trainer.gradient_clip_val is ignored under the GAN's manual optimization: "
                "set model.gradient_clip_val instead (it clips D and G by hand) and trainer.gradient_clip_val=null"
            )
        if self.trainer.accumulate_grad_batches != 1:
            raise ConfigError(
                "trainer.accumulate_grad_batches must be 1 for the GAN (manual optimization steps every batch): "
                "raise data.batch_size instead"
            )
        return []

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        # Read-only look at Lightning's DDP kwargs: the strategy is not wrapped yet, so we can refuse in time.
        if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters"):
            raise ConfigError(
                "the GAN's D and G steps each leave the other net without gradients, which plain DDP cannot "
                "reduce: use trainer.strategy=ddp_find_unused_parameters_true "
                "(with trainer=ddp_multinode: trainer.strategy.find_unused_parameters=true)"
            )
        datamodule = getattr(self.trainer, "datamodule", None)
        data_classes = getattr(datamodule, "num_classes", None)
        if self.hparams.conditional and data_classes is not None and data_classes != self.hparams.num_classes:
            raise ConfigError(
                f"model.num_classes={self.hparams.num_classes} but the data has {data_classes} classes: "
                "set model.num_classes=${data.num_classes} (the default)"
            )

    def configure_optimizers(self) -> Any:
        opt_d = instantiate(self.hparams.optimizer_d)(self.discriminator.parameters())
        opt_g = instantiate(self.hparams.optimizer_g)(self.generator.parameters())
        if not self.hparams.scheduler:
            return [opt_d, opt_g]
        return [opt_d, opt_g], [instantiate(self.hparams.scheduler)(opt) for opt in (opt_d, opt_g)]

    # --- training ---------------------------------------------------------------------------------

    def critic(self, labels: torch.Tensor | None):
        """D as a function of images alone (the penalties differentiate it in its input)."""
        return lambda x: self.discriminator(x, labels)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        real, labels = batch[0], (batch[1] if self.hparams.conditional else None)
        opt_d, opt_g = self.optimizers()
        hp = self.hparams
        g_turn = (int(self.d_steps) + 1) % hp.n_critic == 0

        z = torch.randn(real.shape[0], hp.latent_dim, device=self.device)
        with torch.set_grad_enabled(g_turn):  # the G step reuses these fakes, so keep their graph then
            fake = self.generator(z, labels)  # (B, C, H, W)

        # D step: real and fake through D in one batch (D has no batch norm, so they do not mix).
        with self.toggled_optimizer(opt_d):
            both = self.augment(torch.cat([real, fake.detach()]))
            out = self.discriminator(both, None if labels is None else labels.repeat(2))
            d_real, d_fake = out.chunk(2)
            d_loss = self.loss.discriminator(d_real, d_fake)
            logs = {"train/d_real": d_real.detach().float().mean(), "train/d_fake": d_fake.detach().float().mean()}
            total = d_loss
            if hp.gp_weight > 0:
                real_in, fake_in = both.detach().chunk(2)
                logs["train/gp"] = gradient_penalty(self.critic(labels), real_in, fake_in)
                total = total + hp.gp_weight * logs["train/gp"]
            if hp.r1_gamma > 0:
                logs["train/r1"] = r1_penalty(self.critic(labels), both.detach()[: len(real)])
                total = total + 0.5 * hp.r1_gamma * logs["train/r1"]
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(total)
            opt_d.step()
        self.d_steps += 1
        logs["train/d_loss"] = d_loss.detach()
        loss = total.detach()

        if g_turn:
            with self.toggled_optimizer(opt_g):
                g_loss = self.loss.generator(self.discriminator(self.augment(fake), labels))
                opt_g.zero_grad(set_to_none=True)
                self.manual_backward(g_loss)
                opt_g.step()
            self.generator_ema.update(self.generator)
            self.g_steps += 1
            schedulers = self.lr_schedulers()
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
                scheduler.step()
            self._last_g_loss = g_loss.detach()  # logged with the next written batch when n_critic > 1
            loss = loss + self._last_g_loss
            if hp.max_g_steps is not None and int(self.g_steps) >= hp.max_g_steps:
                self.trainer.should_stop = True
        # Only on the batches whose metrics the logger writes: each self.log call costs ~1 ms of Python
        # on CPU, 10-20% of a small GAN's step (see genlab.models.step_logs).
        if logs_this_step(self):
            if self._last_g_loss is not None:
                logs["train/g_loss"] = self._last_g_loss
            logs["train/loss"] = loss
            logs["train/g_step"] = self.g_steps.float()
            self.log_dict(logs, prog_bar=False)
        return {"loss": loss}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Gradients are unscaled here under 16-mixed (Lightning unscales before this hook), so the
        # threshold means the same in every precision. The NaN guard's hook ran just before this one.
        if self.hparams.gradient_clip_val:
            self.clip_gradients(optimizer, self.hparams.gradient_clip_val, "norm")

    # --- validation and sampling ------------------------------------------------------------------

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        real, labels = batch[0], (batch[1] if self.hparams.conditional else None)
        # Fixed noise per batch and rank (its own generator: the training RNG is not touched).
        seed = batch_idx * self.trainer.world_size + self.global_rank
        z = torch.randn(len(real), self.hparams.latent_dim, generator=torch.Generator().manual_seed(seed))
        fake = self.generator_ema(z.to(self.device), labels).float()
        self.val_distance.update(real.float(), real=True)
        self.val_distance.update(fake, real=False)
        self.log("val/loss", self.val_distance, on_epoch=True, on_step=False)

    @property
    def conditional(self) -> bool:
        """Whether `sample(labels=...)` applies (`genlab.sample` and `genlab.evaluate` ask)."""
        return bool(self.hparams.conditional)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, ema: bool = True) -> torch.Tensor:
        """`n` images `(n, C, H, W)` in [-1, 1] from z ~ N(0, I) (the global RNG: seeded by
        SampleLogger, the same latent batch every time), by the EMA generator unless `ema=False`.
        Conditional: `labels` `(n,)` in 0..num_classes-1, by default 0, 1, ..., 9, 0, 1, ... so a grid
        shows every class; an unconditional model refuses labels."""
        if labels is not None:
            classes = self.hparams.num_classes if self.hparams.conditional else None
            labels = check_labels(labels, n, classes, self.device, "model.conditional=false", "model.num_classes")
        elif self.hparams.conditional:
            labels = torch.arange(n, device=self.device) % self.hparams.num_classes
        z = torch.randn(n, self.hparams.latent_dim, device=self.device)
        net = self.generator_ema if ema else self.generator
        return net(z, labels).float().clamp(-1, 1)

    # --- anomaly score (genlab.apps.scores asks every family for one) -------------------------------

    @torch.no_grad()
    def anomaly_score(self, x: torch.Tensor, k: int = 16, seed: int = 0) -> torch.Tensor:
        """-D(x): the discriminator's output negated (no likelihood: a weak score, shown for completeness).

        `(B,)` for images `(B, C, H, W)`, higher: less like the training data. Deterministic: `k` and
        `seed` are unused."""
        if self.hparams.conditional:
            raise ConfigError(
                "model.conditional=true: a conditional GAN's discriminator needs labels to score an image; "
                "score an unconditional GAN (model.conditional=false)"
            )
        return -self.discriminator(x, None).flatten().float()
