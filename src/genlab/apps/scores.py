"""Anomaly scores of images under a trained family: higher means less like the training data.

Each family scores with what it has (all per image, `(B,)`, from public methods of its module):
- flow (`FlowModule`): -log P(x) in nats from its exact density, averaged over `k` uniform
  dequantization draws (`log_prob(x, samples=k)`: an upper bound on the discrete NLL, tight as k grows);
- VAE (`VAEModule`): -log p(x) estimated by the importance-weighted bound with `k` posterior samples
  (Burda et al. 2016, eq. 8; `importance_weighted_nll`), an upper bound on the NLL in expectation;
- diffusion and flow matching (`DiffusionModule`): the training loss of the image, i.e. the denoising
  (epsilon) or velocity error of the EMA net, averaged over `k` draws of (t, noise), the SAME draws for
  every image, with the null label (the unconditional prediction classifier-free guidance trains). For
  DDPM with uniform t this is L_simple (Ho et al. 2020, eq. 14), the ELBO without its per-t weights;
- GAN (`GANModule`): the negated discriminator output, -D(x) (no likelihood: a weak score, shown for
  completeness).
"""

from __future__ import annotations

import torch

from genlab.errors import ConfigError

# (short name for tables, what it is)
METHODS = {
    "FlowModule": ("exact NLL", "flow: exact -log P(x) (nats), mean over k dequantization draws"),
    "VAEModule": ("IWAE bound on the NLL", "VAE: importance-weighted bound on -log p(x) (nats), k posterior samples"),
    "DiffusionModule": (
        "denoising error",
        "diffusion/flow matching: per-image training loss (noise or velocity error), k (t, noise) draws",
    ),
    "GANModule": ("-D(x)", "GAN: -D(x), the discriminator's output negated (no likelihood)"),
}
BATCH = 256


def method(model: torch.nn.Module) -> tuple[str, str]:
    """(short name, description) of the family's score; a one-line error for families without one."""
    name = type(model).__name__
    if name not in METHODS:
        raise ConfigError(
            f"model: {name} has no anomaly score (image families only: flow, vae, diffusion, flow_matching, gan)"
        )
    return METHODS[name]


@torch.no_grad()
def anomaly_scores(model: torch.nn.Module, images: torch.Tensor, k: int = 16, seed: int = 0) -> torch.Tensor:
    """Scores `(N,)` of `images` `(N, C, H, W)` in [-1, 1] (see the module docstring), seeded."""
    method(model)  # a one-line error for families without a score
    model.eval()
    name = type(model).__name__
    if name == "DiffusionModule":
        return _denoising_error(model, images, k, seed)
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = []
        for x in images.split(BATCH):
            x = x.to(model.device)
            if name == "FlowModule":
                out.append(-model.log_prob(x, samples=k))
            elif name == "VAEModule":
                out.append(model.importance_weighted_nll(x, k))
            else:  # GANModule
                if model.conditional:
                    raise ConfigError(
                        "model: a conditional GAN's discriminator needs labels: score an unconditional one"
                    )
                out.append(-model.discriminator(x, None).flatten())
        return torch.cat(out).float().cpu()


def _denoising_error(model: torch.nn.Module, images: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    process, net = model.process, model.ema.shadow
    conditioning = model.conditioning
    if conditioning is not None and getattr(conditioning, "drop_prob", 0) <= 0:
        raise ConfigError(
            "model: this conditional model was trained without label dropout (drop_prob=0): it has no "
            "unconditional prediction to score with"
        )
    generator = torch.Generator().manual_seed(seed)
    draws = [
        (process.draw_t(1, "cpu", generator), torch.randn(1, *images.shape[1:], generator=generator)) for _ in range(k)
    ]
    total = torch.zeros(len(images))
    for start in range(0, len(images), BATCH):
        x = images[start : start + BATCH].to(model.device)
        cond = conditioning.null(len(x), model.device) if conditioning is not None else None
        for t, noise in draws:
            t, noise = t.expand(len(x)).to(model.device), noise.expand_as(x).to(model.device)
            output = net(process.noisy(x, noise, t), process.net_time(t), cond)
            total[start : start + len(x)] += process.loss(output, x, noise, t).float().cpu()
    return total / k
