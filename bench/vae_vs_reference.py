"""genlab's VAE against a reference VAE (pytorch/examples' vae/main.py) at equal CPU time.

    python bench/vae_vs_reference.py [genlab overrides ...] [--budgets 30 60 300] [--reference PATH] [--seed 0]

Each side trains on genlab's data (default: the 8x8 digits, genlab's split) in its own one-thread
process until its CPU time since the start of training passes the budget (bench/budget.py); then both
are scored the same way: FID etc. of N samples decoded from z ~ N(0, I) (`genlab.metrics`, as
`make eval`), and the test split's negative ELBO in nats with one posterior sample per image, by one
formula for both: Bernoulli reconstruction summed over pixels (`F.binary_cross_entropy` of the
decoder's probabilities) + the closed-form KL.

genlab runs `python -m genlab.train model=vae <overrides>` (so its own length limits still hold: the
default config stops at 200 epochs). `--reference PATH`: a Python file (not part of genlab: the
reference's code stays outside this repository) that defines `train(x, budget, seed) -> (model, steps)`
on x `(N, pixels)` in [0, 1], with `model.encode(x) -> (mean, logvar)`, `model.decode(z) -> probabilities`
and a module-level `LATENT_DIM`. Without it, only genlab's side runs.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from budget import child_result, digits, genlab_run, load_reference, print_table, run_children, sample_scores


@torch.no_grad()
def scores(encode, decode, latent_dim: int, datamodule, train_x, test_x, n: int, seed: int) -> dict[str, float]:
    """encode(x01 `(B, pixels)`) -> (mean, logvar); decode(z) -> probabilities `(B, pixels)`."""
    torch.manual_seed(seed)
    x = (test_x.flatten(1) + 1) / 2
    mean, logvar = encode(x)
    z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
    recon = F.binary_cross_entropy(decode(z), x, reduction="none").sum(1)
    kl = -0.5 * (1 + logvar - mean.square() - logvar.exp()).sum(1)
    samples = decode(torch.randn(n, latent_dim)).view(n, *train_x.shape[1:]) * 2 - 1
    nelbo = round(float((recon + kl).mean()), 3)
    return {"test_nelbo": nelbo, **sample_scores(samples, datamodule, train_x, test_x, seed)}


def child(side: str, budget: float, args: argparse.Namespace, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    data_overrides = ["model=vae", *overrides]
    datamodule, train_x, test_x = digits(data_overrides)
    if side == "genlab":
        model, facts = genlab_run([*data_overrides, f"seed={args.seed}"], budget)
        shape = train_x.shape[1:]

        def encode(x):
            return model.posterior(x.view(-1, *shape) * 2 - 1)

        def decode(z):
            return torch.sigmoid(model.decoder(z).float()).flatten(1)

        latent_dim = model.hparams.latent_dim
    else:
        reference = load_reference(args.reference)
        start = time.process_time()
        model, steps = reference.train((train_x.flatten(1) + 1) / 2, budget, seed=args.seed)
        facts = {"steps": steps, "cpu_s": round(time.process_time() - start, 1)}
        encode, decode, latent_dim = model.encode, model.decode, reference.LATENT_DIM
    params = sum(p.numel() for p in model.parameters())
    figures = scores(encode, decode, latent_dim, datamodule, train_x, test_x, args.n, 0)
    child_result({**facts, "params": params, **figures})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[30, 60, 300], help="CPU seconds of training")
    parser.add_argument("--reference", help="the reference runner's file (see above); omitted: genlab only")
    parser.add_argument("--seed", type=int, default=0, help="training seed of both sides")
    parser.add_argument("--n", type=int, default=1000, help="samples for FID (compare only at equal N)")
    parser.add_argument("--child", choices=("genlab", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.child:
        child(args.child, args.budget, args, overrides)
        return
    sides = ["genlab", *(["reference"] if args.reference else [])]
    extra = [f"--seed={args.seed}", f"--n={args.n}", *([f"--reference={args.reference}"] if args.reference else [])]
    rows = run_children(__file__, sides, args.budgets, [*extra, *overrides])
    print_table(rows, ["steps", "cpu_s", "fid", "test_nelbo", "precision", "recall", "params"])


if __name__ == "__main__":
    main()
