"""A first-stage autoencoder (Rombach et al. 2022, LDM, arXiv:2112.10752, sec. 3): it compresses
images `(B, C, H, W)` into latents `(B, c, H/f, W/f)` on which a second model (diffusion, flow
matching, a transformer over codes) can later generate. Two regularisers, `regularizer` in config:

- `kl` (LDM's "KL-f4/f8", the Stable Diffusion autoencoder): a diagonal Gaussian posterior with a
  KL to N(0, I) weighted so lightly (1e-6) that the latent stays nearly deterministic yet bounded;
- `vq` (VQ-VAE, van den Oord et al. 2017; VQGAN, Esser et al. 2021): the latents are snapped to a
  codebook (`genlab.nets.quantize.VectorQuantizer`: EMA codes, dead-code restarts).

    loss = rec(x, D(z)) + reg [+ lambda * g_loss(Disc(D(z)))  after `disc_start` steps]

`rec` is the per-pixel mean L1 or L2 (`recon_loss`). For `kl`, reg = kl_weight * KL / (C*H*W): the KL
summed over the latent, per pixel, which is LDM's ratio (it sums both terms over pixels). For `vq`,
reg is the commitment loss. The optional patch discriminator is the GAN family's `DCGANDiscriminator`
(`patch: true`) with its losses (`gan_losses.gan_loss`); lambda is VQGAN's adaptive weight (eq. 7)
times `disc_weight`. With a discriminator the module switches to Lightning's manual optimization
(two optimizers, as `models/gan.py`); `ae_steps` counts autoencoder steps (`trainer.global_step`
counts both optimizers' steps once the discriminator is on).

The public face a second stage uses: `encode(x)` -> z (the posterior mean for `kl`, the quantised
latents for `vq`; unscaled), `decode(z)` -> images in [-1, 1], `encode_indices(x)` -> codes `(B, h, w)`
and `decode_indices` (vq), and `scale_factor`: 1 / std of the latents on the training data (SD's
scale; a buffer, so it travels in checkpoints). It is refreshed every training step from the last
`scale_batches` training batches, so every checkpoint carries the figure of its own weights (a
figure computed at the start, or after the first epoch, would describe an autoencoder that has
since changed).

Metrics: `train/loss` (with a discriminator: the autoencoder's objective plus D's, what the NaN guard
watches; also `train/g_loss`, `train/d_loss`, `train/d_real`, `train/d_fake`, `train/disc_weight`),
`val/loss` (the objective without the GAN term, at the posterior mean),
`val/recon` (the configured L1/L2), `val/rec_mse`, `val/kl` or `val/vq_loss`, and for `vq`
`val/codebook_usage` and `val/perplexity` over the whole validation split.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal, NamedTuple

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.models.gan_losses import gan_loss
from genlab.models.step_logs import log_train_step
from genlab.nets.autoencoder import DiagonalGaussian
from genlab.nets.quantize import code_statistics


class Terms(NamedTuple):
    recon: torch.Tensor  # (B, C, H, W) the decoder's raw output
    z: torch.Tensor  # (B, c, h, w) what encode() returns: the posterior mean (kl) or the codes (vq)
    reg: torch.Tensor  # () the regulariser's term, weighted as it enters the loss
    logs: dict[str, torch.Tensor]  # the regulariser's figures, without the split prefix
    indices: torch.Tensor | None  # (B, h, w) code indices (vq)


def _powers_of_two_dividing(n: int) -> str:
    return ", ".join(str(2**k) for k in range(n.bit_length()) if n % 2**k == 0)


class AutoencoderModule(L.LightningModule):
    def __init__(
        self,
        encoder: dict[str, Any],
        decoder: dict[str, Any],
        optimizer: dict[str, Any],
        regularizer: Literal["kl", "vq"] = "kl",
        image_size: int = 8,
        channels: int = 1,
        downsample_factor: int = 4,
        latent_channels: int = 4,
        recon_loss: Literal["l1", "l2"] = "l1",
        kl_weight: float = 1.0e-6,
        quantizer: dict[str, Any] | None = None,
        discriminator: dict[str, Any] | None = None,
        optimizer_d: dict[str, Any] | None = None,
        disc_loss: Literal["hinge", "nonsaturating", "wgan"] = "hinge",
        disc_start: int | None = None,
        disc_weight: float = 0.5,
        scale_batches: int = 16,
    ) -> None:
        """Config nodes (`_target_` dicts), built here and saved as hyperparameters so that
        `AutoencoderModule.load_from_checkpoint(path)` rebuilds the model: `encoder`/`decoder` (the
        module sets the encoder's `double_latent` for `kl`), `quantizer` (used by `vq`),
        `discriminator` and `optimizer_d` (used when `disc_start` is set), `optimizer` (partial)."""
        super().__init__()
        self.save_hyperparameters()
        self._check(regularizer, image_size, downsample_factor, encoder, quantizer, disc_start, discriminator)
        self.encoder = instantiate({**encoder, "double_latent": regularizer == "kl"}, "model.encoder")
        self.decoder = instantiate(decoder, "model.decoder")
        self.quantizer = instantiate(quantizer, "model.quantizer") if regularizer == "vq" else None
        self.discriminator = None
        if disc_start is not None:
            self.discriminator = instantiate(discriminator, "model.discriminator")
            self.gan = gan_loss(disc_loss)
            self.automatic_optimization = False  # two optimizers, stepped by hand (as the GAN family)
        self.register_buffer("scale_factor", torch.ones(()))  # SD's 1 / std of the latents
        self.register_buffer("ae_steps", torch.zeros((), dtype=torch.long))
        self._moments: deque[torch.Tensor] = deque(maxlen=max(1, scale_batches))  # (mean, mean square) per batch
        self._val_counts: torch.Tensor | None = None

    @staticmethod
    def _check(regularizer, image_size, f, encoder, quantizer, disc_start, discriminator) -> None:
        """One line per mistake, naming the key (before any net is built)."""
        if regularizer not in ("kl", "vq"):
            raise ConfigError(f"model.regularizer must be kl or vq, got {regularizer!r}")
        if f < 1 or f & (f - 1):
            raise ConfigError(f"model.downsample_factor must be a power of 2 (1, 2, 4, 8...), got {f}")
        if image_size % f:
            raise ConfigError(
                f"model.downsample_factor={f} does not divide data.image_size={image_size}: "
                f"use one of {_powers_of_two_dividing(image_size)}"
            )
        widths = encoder.get("hidden_channels")
        if widths is not None and len(widths) != f.bit_length():
            raise ConfigError(
                f"model.encoder.hidden_channels has {len(widths)} widths but model.downsample_factor={f} needs "
                f"{f.bit_length()} (one per resolution, log2(f) + 1)"
            )
        if regularizer == "vq" and not quantizer:
            raise ConfigError("model.regularizer=vq needs model.quantizer (a VectorQuantizer node)")
        if disc_start is not None and (disc_start < 0 or not discriminator):
            raise ConfigError(
                f"model.disc_start={disc_start} needs model.discriminator and a step count >= 0 (null: none)"
            )

    # --- set-up checks under manual optimization (as models/gan.py) -------------------------------

    def configure_callbacks(self) -> list[L.Callback]:
        if self.discriminator is not None and self.trainer.gradient_clip_val:
            raise ConfigError(
                "trainer.gradient_clip_val is not applied under manual optimization (model.disc_start is set): "
                "set trainer.gradient_clip_val=null"
            )
        if self.discriminator is not None and self.trainer.accumulate_grad_batches != 1:
            raise ConfigError(
                "trainer.accumulate_grad_batches must be 1 with a discriminator (model.disc_start): "
                "raise data.batch_size instead"
            )
        return []

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        if (
            self.discriminator is not None
            and isinstance(strategy, DDPStrategy)
            and not strategy._ddp_kwargs.get("find_unused_parameters")
        ):
            raise ConfigError(
                "the autoencoder's and discriminator's steps each leave the other net without gradients, which "
                "plain DDP cannot reduce: use trainer.strategy=ddp_find_unused_parameters_true"
            )

    def configure_optimizers(self) -> Any:
        params = [p for name, p in self.named_parameters() if not name.startswith("discriminator.")]
        opt = instantiate(self.hparams.optimizer, "model.optimizer")(params)
        if self.discriminator is None:
            return opt
        return [opt, instantiate(self.hparams.optimizer_d, "model.optimizer_d")(self.discriminator.parameters())]

    # --- the public face of a first stage ---------------------------------------------------------

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """`(c, h, w)` of one image's latent."""
        side = self.hparams.image_size // self.hparams.downsample_factor
        return (self.hparams.latent_channels, side, side)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images `(B, C, H, W)` in [-1, 1] -> latents `(B, c, h, w)`: the posterior mean (kl) or the
        quantised latents (vq). Unscaled: multiply by `scale_factor` for unit variance."""
        if self.quantizer is not None:
            return self.quantizer.lookup(self.encode_indices(x))
        return DiagonalGaussian(self.encoder(x)).mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents `(B, c, h, w)` (unscaled) -> images `(B, C, H, W)` in [-1, 1]."""
        return self.decoder(z).float().clamp(-1, 1)

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> code indices `(B, h, w)` in [0, num_codes) (vq only)."""
        return self._vq("encode_indices").indices(self.encoder(x))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices `(B, h, w)` -> images `(B, C, H, W)` in [-1, 1] (vq only)."""
        return self.decode(self._vq("decode_indices").lookup(indices))

    def _vq(self, method: str):
        if self.quantizer is None:
            raise ConfigError(f"{method} needs a VQ autoencoder (model.regularizer=vq); this one is kl")
        return self.quantizer

    @property
    def conditional(self) -> bool:
        return False  # `genlab.sample` and `genlab.evaluate` ask

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """`n` images `(n, C, H, W)` in [-1, 1] decoded from a crude prior: z ~ N(0, 1 / scale_factor^2)
        per element (kl), or codes drawn uniformly and independently (vq). Neither is the latents'
        real distribution (that is what a second-stage generator learns); these show what the
        decoder makes of the latent space."""
        c, h, w = self.latent_shape
        if self.quantizer is not None:
            return self.decode_indices(torch.randint(self.quantizer.num_codes, (n, h, w), device=self.device))
        return self.decode(torch.randn(n, c, h, w, device=self.device) / self.scale_factor)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)): `(B, C, H, W)` in [-1, 1] (the sample grids show them beside x)."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def anomaly_score(self, x: torch.Tensor, k: int = 16, seed: int = 0) -> torch.Tensor:
        """Reconstruction MSE: the mean squared error per pixel of decode(encode(x)).

        `(B,)` for images `(B, C, H, W)`, higher: less like the training data (genlab.apps.scores).
        Deterministic (the posterior mean, or the nearest codes): `k` and `seed` are unused."""
        return (self.reconstruct(x) - x.float()).square().flatten(1).mean(1)

    # --- training ---------------------------------------------------------------------------------

    def terms(self, x: torch.Tensor, sample: bool) -> Terms:
        """The forward pass with the regulariser; `sample`: decode a posterior sample (kl, training)
        rather than the mean. In training mode the VQ codebook moves (EMA, restarts)."""
        h = self.encoder(x)  # (B, c or 2c, h, w)
        if self.quantizer is not None:
            q = self.quantizer(h)
            logs = {"vq_loss": q.loss, "perplexity": q.perplexity, "codebook_usage": q.usage}
            if self.training:
                logs["restarted_codes"] = q.restarted
            return Terms(self.decoder(q.z_q), q.z_q.detach(), q.loss, logs, q.indices)
        posterior = DiagonalGaussian(h)
        z = posterior.sample() if sample else posterior.mean
        kl = posterior.kl().mean()  # nats per image
        reg = self.hparams.kl_weight * kl / x[0].numel()
        return Terms(self.decoder(z), posterior.mean.detach(), reg, {"kl": kl}, None)

    def reconstruction_loss(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        diff = recon.float() - x.float()
        return diff.abs().mean() if self.hparams.recon_loss == "l1" else diff.square().mean()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = batch[0]
        if self.discriminator is not None:
            return self._manual_step(x)
        out = self.terms(x, sample=True)
        rec = self.reconstruction_loss(out.recon, x)
        loss = rec + out.reg
        self._track_scale(out.z)
        self.ae_steps += 1
        log_train_step(self, {"train/loss": loss, "train/recon": rec, **_prefixed("train", out.logs)})
        return loss

    def _manual_step(self, x: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        opt_ae, opt_d = self.optimizers()
        adversarial = int(self.ae_steps) >= hp.disc_start
        with self.toggled_optimizer(opt_ae):
            out = self.terms(x, sample=True)
            rec = self.reconstruction_loss(out.recon, x)
            loss = rec + out.reg
            logs = {"train/recon": rec.detach(), **_prefixed("train", out.logs)}
            if adversarial:
                g_loss = self.gan.generator(self.discriminator(out.recon))
                weight = hp.disc_weight * self.adaptive_weight(rec, g_loss)
                loss = loss + weight * g_loss
                logs.update({"train/g_loss": g_loss.detach(), "train/disc_weight": weight})
            opt_ae.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt_ae.step()
        self._track_scale(out.z)
        self.ae_steps += 1
        total = loss.detach()
        if adversarial:
            with self.toggled_optimizer(opt_d):
                d_real, d_fake = self.discriminator(torch.cat([x, out.recon.detach()])).chunk(2)
                d_loss = self.gan.discriminator(d_real, d_fake)
                opt_d.zero_grad(set_to_none=True)
                self.manual_backward(d_loss)
                opt_d.step()
            logs.update({"train/d_loss": d_loss.detach(), "train/d_real": d_real.detach().float().mean()})
            logs["train/d_fake"] = d_fake.detach().float().mean()
            total = total + d_loss.detach()
        log_train_step(self, {"train/loss": total, **logs})
        return total

    def adaptive_weight(self, rec: torch.Tensor, g_loss: torch.Tensor) -> torch.Tensor:
        """VQGAN's lambda (Esser et al. 2021, eq. 7): ||grad rec|| / (||grad g_loss|| + 1e-4) at the
        decoder's last layer, so the GAN term neither drowns nor is drowned by the reconstruction."""
        last = getattr(self.decoder, "last_layer", None)
        if last is None:
            return torch.ones((), device=rec.device)
        (g_rec,) = torch.autograd.grad(rec, last, retain_graph=True)
        (g_gan,) = torch.autograd.grad(g_loss, last, retain_graph=True)
        return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    @torch.no_grad()
    def _track_scale(self, z: torch.Tensor) -> None:
        """scale_factor = 1 / std of the latents over the last `scale_batches` training batches
        (std about the global mean, over every element, as SD's `1 / z.flatten().std()`)."""
        z = z.float()
        self._moments.append(torch.stack([z.mean(), z.square().mean()]))
        mean, mean_square = torch.stack(list(self._moments)).mean(0)
        self.scale_factor.copy_((mean_square - mean.square()).clamp(min=1e-12).rsqrt())

    # --- validation -------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        if self.quantizer is not None:
            self._val_counts = torch.zeros(self.quantizer.num_codes, device=self.device)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x = batch[0]
        out = self.terms(x, sample=False)
        rec = self.reconstruction_loss(out.recon, x)
        metrics = {
            "val/loss": rec + out.reg,
            "val/recon": rec,
            "val/rec_mse": (out.recon.float().clamp(-1, 1) - x.float()).square().mean(),
        }
        metrics.update(_prefixed("val", {k: v for k, v in out.logs.items() if k in ("kl", "vq_loss")}))
        self.log_dict(metrics, sync_dist=True, batch_size=len(x))
        if out.indices is not None and self._val_counts is not None:
            self._val_counts += torch.bincount(out.indices.flatten(), minlength=len(self._val_counts)).float()

    def on_validation_epoch_end(self) -> None:
        if self._val_counts is None:
            return
        counts = self.trainer.strategy.reduce(self._val_counts, reduce_op="sum")  # every rank's codes
        perplexity, usage = code_statistics(counts)
        self.log_dict({"val/perplexity": perplexity, "val/codebook_usage": usage})
        self._val_counts = None


def _prefixed(split: str, logs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{split}/{key}": value.detach() for key, value in logs.items()}
