"""Precision, recall, density and coverage (Naeem et al. 2020, arXiv:2002.09797, eqs. 1-4 and the
k-NN precision/recall of Kynkäänniemi et al. 2019), in torch.

Same definitions as the authors' `prdc` package (clovaai/generative-evaluation-prdc; strict `<`,
the k-th neighbour found with the point itself excluded), tested equal to it. Written here rather
than called because the package prints on every call, spawns 8 joblib workers (this machine has 2
cores, shared) and builds dense float64 N x N matrices; here distances go in row chunks, in float32
on the features' device.

One change: exact duplicates among the REAL features are dropped first. A duplicated real point
has a k-NN radius of 0 (its twin), so it could never contain a sample and would lower density and
coverage for nothing (generative-evaluation-prdc#7).
"""

from __future__ import annotations

import torch

CHUNK = 4096  # rows of a distance matrix computed at once: 4096 x N float32


def _kth_neighbour_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of `x` to its k-th nearest other row, `(N,)`."""
    radii = [torch.cdist(rows, x).kthvalue(k + 1, dim=1).values for rows in x.split(CHUNK)]  # +1: itself at 0
    return torch.cat(radii)


def prdc(real: torch.Tensor, fake: torch.Tensor, nearest_k: int = 5) -> dict[str, float]:
    """real `(N, D)`, fake `(M, D)` features -> precision, recall, density, coverage.

    precision: fraction of fakes inside some real point's k-NN ball (fidelity);
    recall: fraction of reals inside some fake's k-NN ball (diversity);
    density: mean number of real balls holding each fake, / k (fidelity, unbounded above 1);
    coverage: fraction of reals whose ball holds at least one fake (diversity, in [0, 1]).
    """
    real = torch.unique(real.float(), dim=0)  # see the module docstring
    fake = fake.float()
    if min(len(real), len(fake)) <= nearest_k:
        raise ValueError(f"PRDC needs more than nearest_k={nearest_k} points per set, got {len(real)} and {len(fake)}")
    real_radius = _kth_neighbour_radius(real, nearest_k)  # (N,)
    fake_radius = _kth_neighbour_radius(fake, nearest_k)  # (M,)
    in_real_balls = torch.zeros(len(fake))  # per fake: how many real balls contain it
    fake_near_real = torch.zeros(len(real), dtype=torch.bool)  # per real: inside some fake's ball
    nearest_fake = torch.empty(len(real))  # per real: distance to its nearest fake
    start = 0
    for rows in real.split(CHUNK):
        d = torch.cdist(rows, fake)  # (chunk, M)
        stop = start + len(rows)
        in_real_balls += (d < real_radius[start:stop, None]).sum(0).cpu()
        fake_near_real[start:stop] = (d < fake_radius[None, :]).any(1).cpu()
        nearest_fake[start:stop] = d.min(1).values.cpu()
        start = stop
    return {
        "precision": (in_real_balls > 0).float().mean().item(),
        "recall": fake_near_real.float().mean().item(),
        "density": (in_real_balls / nearest_k).mean().item(),
        "coverage": (nearest_fake < real_radius.cpu()).float().mean().item(),
    }
