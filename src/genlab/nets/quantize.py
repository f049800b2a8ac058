"""Vector quantisation with an EMA codebook (VQ-VAE: van den Oord et al. 2017, arXiv:1711.00937,
sec. 3.1 and app. A.1; the codebook of VQGAN, Esser et al. 2021).

Each latent vector z_e (one per position of the encoder's `(B, D, h, w)` output) is replaced by
its nearest code e_k of a codebook of `num_codes` vectors of size D:

    z_q = e_k,  k = argmin_j ||z_e - e_j||^2
    loss = beta * ||z_e - sg(z_q)||^2                       commitment (eq. 3, third term)
    z_q <- z_e + sg(z_q - z_e)                              straight-through gradient to the encoder

The codebook is not trained by gradient (eq. 3's second term) but moved toward the mean of the
vectors assigned to each code by exponential moving averages (app. A.1), with Laplace smoothing
of the counts so that an empty code does not divide by zero. Two fixes for unused ("dead") codes:

- initialisation from data: k-means (k-means++ seeds, `kmeans_iters` Lloyd iterations) on the first
  training batch's encoder outputs, instead of random vectors far from every z_e;
- restarts: a code assigned to nothing for `dead_code_steps` training steps is moved onto a random
  encoder output of the current batch (Dhariwal et al. 2020, Jukebox, sec. 3.2 / app. A).

Under DDP the statistics are summed over ranks and rank zero's initial and restarted codes are sent
to the others, so every rank keeps the same codebook.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class Quantized(NamedTuple):
    z_q: torch.Tensor  # (B, D, h, w) the codes, with the straight-through gradient
    loss: torch.Tensor  # () commitment loss, beta included
    indices: torch.Tensor  # (B, h, w) int64
    perplexity: torch.Tensor  # () exp(entropy) of this batch's code frequencies: 1 (one code) .. num_codes
    usage: torch.Tensor  # () fraction of the codes this batch used
    restarted: torch.Tensor  # () codes restarted in this call (training only)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def code_statistics(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(perplexity, usage) of code counts `(num_codes,)`: exp of the frequencies' entropy, and the
    fraction of codes used at least once."""
    p = counts.float() / counts.sum().clamp(min=1)
    entropy = -(p * p.clamp(min=1e-12).log()).sum()
    return entropy.exp(), (counts > 0).float().mean()


class VectorQuantizer(nn.Module):
    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        beta: float = 0.25,
        decay: float = 0.99,
        dead_code_steps: int = 50,
        kmeans_iters: int = 10,
        eps: float = 1e-5,
    ) -> None:
        """`beta`: commitment weight (0.25 in the paper). `decay`: the EMA's (0.99 in app. A.1).
        `dead_code_steps`: restart a code unused for this many training steps (0: never).
        `kmeans_iters`: Lloyd iterations on the first batch (0: the k-means++ seeds alone)."""
        super().__init__()
        if num_codes < 2 or code_dim < 1:
            raise ValueError(f"num_codes must be at least 2 and code_dim at least 1, got {num_codes} and {code_dim}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.num_codes, self.beta, self.decay, self.eps = num_codes, beta, decay, eps
        self.dead_code_steps, self.kmeans_iters = dead_code_steps, kmeans_iters
        # Buffers: saved in checkpoints, moved with the module, not in the optimizer.
        self.register_buffer("codebook", torch.randn(num_codes, code_dim))
        self.register_buffer("cluster_size", torch.ones(num_codes))  # EMA of assignment counts, N_i
        self.register_buffer("code_sum", self.codebook.clone())  # EMA of the assigned vectors' sums, m_i
        self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(False))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of `flat` `(N, D)`: `(N,)`."""
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 is the same for every code.
        distances = self.codebook.square().sum(1) - 2 * flat @ self.codebook.T  # (N, K)
        return distances.argmin(1)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Latents `(B, D, h, w)` -> the nearest codes' indices `(B, h, w)`; never touches the codebook."""
        b, d, h, w = z.shape
        return self.nearest(z.float().permute(0, 2, 3, 1).reshape(-1, d)).view(b, h, w)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices `(B, h, w)` -> latents `(B, D, h, w)`."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> Quantized:
        device_type = z.device.type if z.device.type in ("cuda", "cpu", "mps", "xpu") else "cpu"
        with torch.autocast(device_type, enabled=False):  # distances in fp32 whatever the precision
            z = z.float()
            b, d, h, w = z.shape
            flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
            restarted = torch.zeros((), device=z.device)
            if self.training and not bool(self.initialized):
                self._initialize(flat.detach())
            indices = self.nearest(flat.detach())  # (N,)
            counts = torch.bincount(indices, minlength=self.num_codes).float()  # (K,)
            if self.training:
                restarted = self._update(flat.detach(), indices, counts)
            z_q = self.lookup(indices.view(b, h, w))  # (B, D, h, w)
            loss = self.beta * F.mse_loss(z, z_q.detach())
            z_q = z + (z_q - z).detach()  # straight-through: forward is z_q, the gradient goes to z
            perplexity, usage = code_statistics(counts)
        return Quantized(z_q, loss, indices.view(b, h, w), perplexity, usage, restarted)

    @torch.no_grad()
    def _initialize(self, flat: torch.Tensor) -> None:
        """k-means on one batch: k-means++ seeding (Arthur & Vassilvitskii 2007: each next code drawn with
        probability proportional to the squared distance to the nearest code so far), then `kmeans_iters`
        Lloyd steps."""
        codes = flat[torch.randint(len(flat), (1,), device=flat.device)]
        nearest = (flat - codes).square().sum(1)  # (N,) squared distance to the nearest code so far
        for _ in range(self.num_codes - 1):
            # all points equal (or fewer distinct points than codes): draw uniformly
            weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
            new = flat[torch.multinomial(weights, 1)]
            codes = torch.cat([codes, new])
            nearest = torch.minimum(nearest, (flat - new).square().sum(1))
        for _ in range(self.kmeans_iters):
            assign = torch.cdist(flat, codes).argmin(1)  # (N,)
            sums = torch.zeros_like(codes).index_add_(0, assign, flat)
            counts = torch.bincount(assign, minlength=self.num_codes).float()
            used = counts > 0  # an empty cluster keeps its point
            codes[used] = sums[used] / counts[used, None]
        if _distributed():
            dist.broadcast(codes, src=0)
        self.codebook.copy_(codes)
        self.code_sum.copy_(codes)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """One EMA step of the codebook (app. A.1, eqs. 6-8), then dead-code restarts; returns how
        many codes were restarted."""
        sums = torch.zeros_like(self.codebook).index_add_(0, indices, flat)  # (K, D)
        if _distributed():  # every rank moves the codebook by the global batch
            counts = counts.clone()
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.code_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n  # Laplace smoothing
        self.codebook.copy_(self.code_sum / smoothed[:, None])

        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        if self.dead_code_steps <= 0:
            return torch.zeros((), device=flat.device)
        dead = self.steps_unused >= self.dead_code_steps  # (K,) the same on every rank (global counts)
        n_dead = dead.sum()
        if n_dead > 0:
            new = flat[torch.randint(len(flat), (int(n_dead),), device=flat.device)]
            if _distributed():
                dist.broadcast(new, src=0)
            self.codebook[dead] = new
            self.code_sum[dead] = new  # with a count of one: the EMA starts from the new point
            self.cluster_size[dead] = 1.0
            self.steps_unused[dead] = 0
        return n_dead.float()
