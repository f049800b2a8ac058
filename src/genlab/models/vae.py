"""Variational autoencoder (Kingma & Welling 2014, arXiv:1312.6114) trained on the negative ELBO.

    loss = -E_q[log p(x|z)] + beta_t * KL(q(z|x) || N(0, I))

with beta_t warmed up linearly from 0 to `beta` over `kl_warmup_steps` (Bowman et al. 2016) so the
decoder learns to use z before the KL term pulls q to the prior. Validation also reports an
importance-weighted estimate of -log p(x) (Burda et al. 2016, eq. 8) with `iw_samples` samples.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch

from genlab.instantiate import instantiate
from genlab.models.likelihoods import bits_per_dim, make_likelihood
from genlab.models.step_logs import log_train_step


class VAEModule(L.LightningModule):
    def __init__(
        self,
        encoder: dict[str, Any],
        decoder: dict[str, Any],
        optimizer: dict[str, Any],
        latent_dim: int,
        likelihood: Literal["bernoulli", "discretized_gaussian"] = "bernoulli",
        sigma: float = 0.1,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        iw_samples: int = 16,
        levels: int = 256,
    ) -> None:
        """Config nodes (`_target_` dicts), built here so that they are saved as hyperparameters and
        `VAEModule.load_from_checkpoint(path)` rebuilds the model: `encoder` maps images to
        2 * latent_dim features (mean, log-variance); `decoder` maps a latent to the likelihood's
        parameters; `optimizer` is a partial node taking the parameters. `levels`: the data's intensity
        levels (`${data.levels}`), the bins of the discretized likelihood and of `val/bpd`."""
        super().__init__()
        self.save_hyperparameters()
        self.encoder = instantiate(encoder, "model.encoder")
        self.decoder = instantiate(decoder, "model.decoder")
        self.likelihood = make_likelihood(
            likelihood, **({"sigma": sigma, "bins": levels} if likelihood == "discretized_gaussian" else {})
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return instantiate(self.hparams.optimizer, "model.optimizer")(self.parameters())

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) as (mean, log-variance), each `(B, latent_dim)`."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)

    def loss_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example reconstruction NLL and KL, each `(B,)`, with one reparameterised sample."""
        mean, logvar = self.posterior(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        recon = -self.likelihood.log_prob(self.decoder(z).float(), x)
        kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum(1)  # closed form for diagonal Gaussians
        return recon, kl.float()

    def kl_weight(self) -> float:
        if self.hparams.kl_warmup_steps <= 0:
            return self.hparams.beta
        return self.hparams.beta * min(1.0, (self.global_step + 1) / self.hparams.kl_warmup_steps)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        recon, kl = self.loss_terms(batch[0])
        loss = (recon + self.kl_weight() * kl).mean()
        log_train_step(self, {"train/loss": loss})
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x = batch[0]
        recon, kl = self.loss_terms(x)
        nll = self.importance_weighted_nll(x, self.hparams.iw_samples)
        metrics = {
            "val/loss": (recon + self.hparams.beta * kl).mean(),
            "val/recon": recon.mean(),
            "val/kl": kl.mean(),
            "val/nll": nll.mean(),
        }
        if self.likelihood.discrete:
            metrics["val/bpd"] = bits_per_dim(nll.mean(), x[0].numel())  # on the data's `levels` grid
        self.log_dict(metrics, prog_bar=False, sync_dist=True, batch_size=len(x))

    def importance_weighted_nll(self, x: torch.Tensor, k: int, eps: torch.Tensor | None = None) -> torch.Tensor:
        """-log p(x) estimated with k posterior samples, `(B,)` in nats; tighter than the ELBO.
        `eps`: the standard-normal draws `(k, B or 1, latent_dim)` (else fresh ones for every image)."""
        mean, logvar = self.posterior(x)
        std = (0.5 * logvar).exp()
        eps = torch.randn(k, *mean.shape, device=x.device, dtype=mean.dtype) if eps is None else eps.to(mean)
        z = mean + std * eps  # (k, B, D)
        log_q = torch.distributions.Normal(mean, std).log_prob(z).sum(-1)
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        out = self.decoder(z.flatten(0, 1)).float()
        log_px = self.likelihood.log_prob(out, x.repeat(k, *[1] * (x.dim() - 1))).view(k, -1)
        log_w = (log_px + log_prior - log_q).float()
        return -(torch.logsumexp(log_w, dim=0) - math.log(k))

    @torch.no_grad()
    def anomaly_score(self, x: torch.Tensor, k: int = 16, seed: int = 0) -> torch.Tensor:
        """IWAE bound on the NLL: -log p(x) in nats, importance-weighted with k posterior samples
        (Burda et al. 2016, eq. 8), an upper bound on the NLL in expectation.

        `(B,)` for images `(B, C, H, W)`, higher: less like the training data (genlab.apps.scores). The
        k draws come from `seed` and are shared by every image, so a score does not depend on the batch."""
        eps = torch.randn(k, 1, self.hparams.latent_dim, generator=torch.Generator().manual_seed(seed))
        return self.importance_weighted_nll(x, k, eps)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """`n` images `(n, C, H, W)` in [-1, 1]: the likelihood's mean at z ~ N(0, I)."""
        z = torch.randn(n, self.hparams.latent_dim, device=self.device)
        return self.likelihood.mean(self.decoder(z).float())

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The likelihood's mean at the posterior mean: `(B, C, H, W)` in [-1, 1]."""
        return self.likelihood.mean(self.decoder(self.posterior(x)[0]).float())
