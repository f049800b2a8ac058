"""Diffusion (DDPM training, DDIM sampling) and flow matching: one module, two processes.

    loss = E_{x0, noise, t} w(t) || net(x_t, t, y) - target(x0, noise, t) ||^2

What differs between the two families is only the process (how x_t and the target are made, which
t are drawn, how sampling integrates back): a parameter-free object from
`genlab.models.diffusion_process`, chosen by the config (`configs/model/diffusion.yaml`:
GaussianDiffusion; `configs/model/flow_matching.yaml`: RectifiedFlow). The UNet, the EMA, the
conditioning and classifier-free guidance, validation and `sample()` are the same code.

- EMA (`genlab.nets.ema.EMA`, a submodule): updated after every optimizer step; `val/loss`, the
  sample grids, `sample()` and so `load_model` use the EMA weights. Export alone with
  `model.ema.shadow.state_dict()` (a plain UNet state dict).
- Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598): the net's label embedder drops
  labels to a learned null label with `drop_prob` while training; at sampling
  out = uncond + w (cond - uncond), so w = 1 is plain conditional sampling and w = 0 unconditional.
- `val/loss`: the same noise and timesteps every epoch (seeded per batch), so it is comparable from
  epoch to epoch and the best checkpoint means something.
- Latent generation (LDM, Rombach et al. 2022, arXiv:2112.10752, sec. 4): with `first_stage` (a
  trained `model=autoencoder` run) the denoiser runs on `encode(x) * scale_factor` (unit variance, SD's
  scale) and `sample()` returns `decode(z / scale_factor)`. The first stage is frozen: eval mode, no
  gradients, outside the optimizer and the EMA. Its config node replaces the path in the saved
  hyperparameters and its weights sit in the state dict (`first_stage.*`), so a checkpoint alone
  rebuilds and samples without the autoencoder's run folder.
- Text-to-image: with a text encoder as the net's conditioning (`genlab.nets.text_encoder.TextEncoder`,
  `experiment=text_to_image`) the batches' second element is caption ids, `sample(n, prompts=[...])`
  tokenises the prompts with the alphabet the checkpoint's hyperparameters carry, and guidance mixes the
  caption's prediction with the empty caption's (the null condition the encoder is trained on by
  dropping captions with `drop_prob`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.models.first_stage import carry_first_stage, latent_net, load_first_stage
from genlab.models.optim import matrix_names, weight_decay_groups
from genlab.models.step_logs import log_train_step
from genlab.nets.conditioning import check_labels
from genlab.nets.ema import EMA


class DiffusionModule(L.LightningModule):
    def __init__(
        self,
        net: dict[str, Any],
        process: dict[str, Any],
        optimizer: dict[str, Any],
        sampler: str = "ddim",
        sample_steps: int = 50,
        eta: float = 0.0,
        guidance: float = 1.0,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        val_seed: int = 0,
        first_stage: str | dict[str, Any] | None = None,
        sample_prompts: list[str] | None = None,
    ) -> None:
        """Config nodes, built here so `DiffusionModule.load_from_checkpoint(path)` rebuilds the model:
        `net` a denoiser `(x, t, cond) -> x-shaped` (genlab.nets.UNet), `process` the noising
        process and its samplers, `optimizer` a partial node taking the parameters.
        `sampler`, `sample_steps`, `eta`, `guidance`: what `sample()` uses unless told otherwise.
        `first_stage`: an autoencoder run folder or checkpoint (or, from a saved checkpoint, its config
        node) to generate in the latent space of; `net`'s in_channels/image_size are then the data's,
        checked against the first stage's, and the net is built for its latents.
        `sample_prompts`: text models: what `sample(n)` draws without prompts (the grids), in turn."""
        super().__init__()
        self.save_hyperparameters()
        self.first_stage = None
        if first_stage is not None:
            self.first_stage, node = load_first_stage(first_stage)
            self.hparams.first_stage = node  # the checkpoint carries the config, the state dict the weights
            net = latent_net(net, self.first_stage)
        self.net = instantiate(net, "model.net")
        if _init_from(self.hparams.net):  # the GPT's weights are the encoder's now, saved in the state dict:
            self.hparams.net = _without_init_from(self.hparams.net)  # a checkpoint rebuilds without the GPT run
        self.process = instantiate(process, "model.process")
        if self.first_stage is not None and self.process.clip_x0:
            raise ConfigError(
                "model.process.clip_x0=true would clamp latents to the pixel range [-1, 1]: "
                "set model.process.clip_x0=false with model.first_stage"
            )
        ab_last = getattr(self.process, "alphas_cumprod", torch.ones(1))[-1]
        if self.first_stage is not None and getattr(self.process, "prediction", None) == "epsilon" and ab_last < 1e-6:
            # unclipped, epsilon's x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab): the first DDIM step multiplies the
            # net's error by sqrt(ab_prev / ab_T) (~600 on the cosine schedule); sampled latents reached ~1e3
            raise ConfigError(
                f"model.process.prediction=epsilon with model.first_stage: alpha_bar at t=T is {float(ab_last):.1e}, "
                "so unclipped sampling blows up: use model.process.prediction=v (or schedule=linear)"
            )
        self.process.check_sampler(sampler, sample_steps)
        self._check_guidance(guidance, "model.guidance")
        self.ema = EMA(self.net, decay=ema_decay, warmup=ema_warmup)
        self.decayed = matrix_names(self.net)  # weight decay (if the optimizer has any) on these only

    @property
    def conditioning(self) -> torch.nn.Module | None:
        return self.net.conditioning

    def _check_guidance(self, guidance: float, key: str) -> None:
        if guidance == 1.0:
            return
        if self.conditioning is None:
            raise ConfigError(
                f"{key}={guidance}: guidance needs a conditional model (model.net.conditioning is null): set it to 1.0"
            )
        if getattr(self.conditioning, "drop_prob", 0) <= 0:
            raise ConfigError(
                f"{key}={guidance}: the model was trained without label dropout "
                "(model.net.conditioning.drop_prob=0), so it has no unconditional prediction to guide with"
            )

    @property
    def conditional(self) -> bool:
        """Whether `sample(labels=...)` applies (`genlab.sample` and `genlab.evaluate` ask)."""
        return self.conditioning is not None and not self.text_conditional

    @property
    def text_conditional(self) -> bool:
        """Whether `sample(prompts=...)` applies: the net's conditioning is a text encoder."""
        return hasattr(self.conditioning, "encode")

    def train(self, mode: bool = True) -> DiffusionModule:
        super().train(mode)
        if self.first_stage is not None:  # frozen whoever calls train(): in training mode a VQ codebook moves
            self.first_stage.eval()
        return self

    @torch.no_grad()
    def to_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Images `(B, C, H, W)` -> what the denoiser models: `(B, c, h, w)` latents scaled to unit
        variance with a first stage, else the images themselves."""
        if self.first_stage is None:
            return x
        return self.first_stage.encode(x) * self.first_stage.scale_factor

    def setup(self, stage: str) -> None:
        strategy = type(self.trainer.strategy).__name__
        if "FSDP" in strategy or "DeepSpeed" in strategy:  # the EMA copy would be a second, unsharded model
            raise ConfigError(f"trainer.strategy: the diffusion family's EMA needs DDP or one device, not {strategy}")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # the online net only, never the EMA's; groups by name (FSDP-safe), as every family does
        return instantiate(self.hparams.optimizer)(weight_decay_groups(self.net, self.decayed))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.net)  # after every real step (also with gradient accumulation)

    def loss(
        self, net: torch.nn.Module, x0: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-example loss `(B,)`; `generator` fixes t and the noise (validation)."""
        t = self.process.draw_t(len(x0), x0.device, generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device) if generator else None
        noise = torch.randn_like(x0) if noise is None else noise
        cond = labels if self.conditioning is not None else None
        output = net(self.process.noisy(x0, noise, t), self.process.net_time(t), cond)
        return self.process.loss(output, x0, noise, t)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self.net, self.to_latent(batch[0]), batch[1]).mean()
        log_train_step(self, {"train/loss": loss})
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, labels = self.to_latent(batch[0]), batch[1]
        generator = torch.Generator().manual_seed(self.hparams.val_seed + batch_idx)  # same t and noise every epoch
        ema_loss = self.loss(self.ema.shadow, x, labels, generator).mean()
        generator.manual_seed(self.hparams.val_seed + batch_idx)
        online_loss = self.loss(self.net, x, labels, generator).mean()
        metrics = {"val/loss": ema_loss, "val/loss_online": online_loss}  # val/loss: the weights that sample
        self.log_dict(metrics, sync_dist=True, batch_size=len(x))

    @torch.no_grad()
    def sample(
        self,
        n: int,
        steps: int | None = None,
        guidance: float | None = None,
        labels: torch.Tensor | list[int] | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        prompts: list[str] | None = None,
    ) -> torch.Tensor:
        """`n` images `(n, C, H, W)` from the EMA weights, in [-1, 1] unless `model.process.clip_x0`
        is false (with a first stage: decoded latents, in [-1, 1]). A conditional model given no labels
        draws the classes in turn (0, 1, 2, ...); a text model given no `prompts` (one per sample) draws
        `sample_prompts` in turn, or the empty caption.
        `steps`, `guidance`, `sampler` and `eta` default to the config's; steps < 1 is refused."""
        hp = self.hparams
        sampler, eta = sampler or hp.sampler, hp.eta if eta is None else eta
        if steps is None:  # not `steps or ...`: steps=0 is refused below, not turned into the default
            steps = self.process.num_timesteps if sampler == "ddpm" else hp.sample_steps  # DDPM: every timestep
        self.process.check_sampler(sampler, steps, key="sample(steps=...)")
        guidance = hp.guidance if guidance is None else guidance
        self._check_guidance(guidance, "sample(guidance=...)")
        if self.text_conditional:
            labels = self._caption_ids(n, prompts, labels)
        elif prompts is not None:
            raise ConfigError("prompt: this model has no text encoder (its conditioning is labels or none): drop it")
        elif labels is not None:
            classes = self.conditioning.num_classes if self.conditioning is not None else None
            labels = check_labels(labels, n, classes, self.device, "model.net.conditioning is null", "data.num_classes")
        elif self.conditioning is not None:
            labels = torch.arange(n, device=self.device) % self.conditioning.num_classes
        net = self.ema.shadow
        shape = (n, net.in_channels, net.image_size, net.image_size)
        noise = torch.randn(shape, device=self.device)

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            time = self.process.net_time(t)
            if labels is None:
                return net(x, time)
            if guidance == 1.0:
                return net(x, time, labels)
            if guidance == 0.0:  # the unconditional branch alone: half the work
                return net(x, time, self.conditioning.null(n, x.device))
            null = self.conditioning.null(n, x.device)
            cond, uncond = net(torch.cat([x, x]), torch.cat([time, time]), torch.cat([labels, null])).chunk(2)
            return uncond + guidance * (cond - uncond)

        # In [-1, 1] when model.process.clip_x0 (pixels, the default); unclipped when false (latents).
        x = self.process.sample(denoise, noise, sampler=sampler, steps=steps, eta=eta)
        if self.first_stage is None:
            return x
        return self.first_stage.decode(x / self.first_stage.scale_factor)  # (n, C, H, W) in [-1, 1]

    def default_prompts(self, n: int) -> list[str]:
        """What `sample(n)` of a text model draws without prompts: `sample_prompts` in turn (the training
        grids; SampleLogger logs them beside the grid), or the empty caption."""
        cycle = list(self.hparams.sample_prompts or [""])
        return [cycle[i % len(cycle)] for i in range(n)]

    def _caption_ids(self, n: int, prompts: list[str] | None, labels: Any) -> torch.Tensor:
        """`(n, context)` caption ids of the prompts (one per sample), or of `sample_prompts` in turn."""
        if labels is not None:
            raise ConfigError("label: this model draws from text: give prompts (PROMPT=...), not labels")
        if prompts is None:
            prompts = self.default_prompts(n)
        if isinstance(prompts, str) or len(prompts) != n:
            raise ConfigError(f"sample(prompts=...): give a list of {n} prompts, one per sample")
        return self.conditioning.encode(list(prompts), self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.first_stage is not None:  # the checkpoint alone loads: the node replaces the path
            carry_first_stage(checkpoint, self.hparams.first_stage)
        # Likewise a text encoder's init_from: its GPT's weights are in the state dict, not needed again.
        info = checkpoint.get("genlab")
        if info is not None and _init_from(info["config"]["model"].get("net")):
            config = info["config"]
            model = {**config["model"], "net": _without_init_from(config["model"]["net"])}
            checkpoint["genlab"] = {**info, "config": {**config, "model": model}}

    # --- anomaly score (genlab.apps.scores asks every family for one) -------------------------------

    @torch.no_grad()
    def anomaly_score(self, x: torch.Tensor, k: int = 16, seed: int = 0) -> torch.Tensor:
        """denoising error: the image's training loss (noise or velocity error of the EMA net, with the
        null label), mean over k (t, noise) draws; for DDPM with uniform t this is L_simple (Ho et al.
        2020, eq. 14), the ELBO without its per-t weights.

        `(B,)` for images `(B, C, H, W)`, higher: less like the training data. The k draws come from
        `seed` and are the same for every image, so a score does not depend on the batch. A conditional
        model scores with its unconditional prediction, which classifier-free guidance trains."""
        conditioning = self.conditioning
        if conditioning is not None and getattr(conditioning, "drop_prob", 0) <= 0:
            raise ConfigError(
                "model.net.conditioning.drop_prob: this conditional model was trained without label dropout, "
                "so it has no unconditional prediction to score with"
            )
        x = self.to_latent(x)
        generator = torch.Generator().manual_seed(seed)
        cond = conditioning.null(len(x), x.device) if conditioning is not None else None
        total = torch.zeros(len(x), device=x.device)
        for _ in range(k):
            t = self.process.draw_t(1, "cpu", generator).expand(len(x)).to(x.device)
            noise = torch.randn(1, *x.shape[1:], generator=generator).expand_as(x).to(x.device)
            output = self.ema.shadow(self.process.noisy(x, noise, t), self.process.net_time(t), cond)
            total += self.process.loss(output, x, noise, t).float()
        return total / k


def _init_from(net: Any) -> bool:
    """Whether a net node's conditioning is initialised from another run (a text encoder's GPT)."""
    conditioning = net.get("conditioning") if hasattr(net, "get") else None
    return bool(conditioning.get("init_from")) if hasattr(conditioning, "get") else False


def _without_init_from(net: Any) -> Any:
    if not _init_from(net):
        return net
    return {**net, "conditioning": {**net["conditioning"], "init_from": None}}
