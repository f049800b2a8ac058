"""genlab's flow (Glow) against a reference Glow (normflows 1.7.3, L=2 K=8) at equal CPU time.

    python bench/flow_vs_reference.py [genlab overrides ...] [--budgets 60 180] [--reference PATH]
                                      [--temperatures 1,0.8]

Each side trains on genlab's data (default: the 8x8 digits, genlab's split) in its own one-thread
process until its CPU time since the start of training passes the budget (bench/budget.py), or until
its own config stops it (genlab's default stops early on val/bpd). Both are scored the same way:

- test bits/dim on the data's levels, one formula for both: y = (k + u) / levels with the same
  seeded noise u, bits/dim = (-log p(y) + dims log(levels)) / (dims log 2) (genlab.models.likelihoods);
- FID etc. of N samples (`genlab.metrics`, as `make eval`) at each latent temperature in
  `--temperatures` (genlab's default samples at 0.8), each sample y quantized onto the levels.

genlab's side is the module at the end of training (what `make eval RUN=<run>` scores: last.ckpt).
`--reference PATH`: a Python file outside this repository (the reference's code is not part of
genlab) defining `train(k, levels, budget, seed) -> (model, steps)` on integer levels k `(N, C, H, W)`,
`log_prob(model, y) -> (B,)` in nats on y in [0, 1)^(C x H x W), and `sample(model, n, temperature) -> y`.
Without it, only genlab's side runs.
"""

from __future__ import annotations

import argparse
import time

import torch
from budget import child_result, digits, genlab_run, load_reference, print_table, run_children, sample_scores

from genlab.models.likelihoods import bits_per_dim, dequantized_nll, level_index, quantize


@torch.no_grad()
def scores(log_prob, sample, levels: int, datamodule, train_x, test_x, n: int, temperatures: list[float]) -> dict:
    """log_prob(y) -> `(B,)` nats; sample(n, temperature) -> y `(n, C, H, W)` in [0, 1)."""
    generator = torch.Generator().manual_seed(0)
    y = (level_index(test_x, levels) + torch.rand(test_x.shape, generator=generator)) / levels
    dims = test_x[0].numel()
    bpd = bits_per_dim(dequantized_nll(log_prob(y), dims, levels), dims)
    figures = {"test_bpd": round(float(bpd.mean()), 4)}
    for t in temperatures:
        torch.manual_seed(0)
        samples = quantize(torch.nan_to_num(sample(n, t).float(), nan=0.0), levels)
        figures |= {f"{k}@{t:g}": v for k, v in sample_scores(samples, datamodule, train_x, test_x, 0).items()}
    return figures


def child(side: str, budget: float, args: argparse.Namespace, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    data_overrides = ["model=flow", *overrides]
    datamodule, train_x, test_x = digits(data_overrides)
    levels = datamodule.levels
    if side == "genlab":
        module, facts = genlab_run([*data_overrides, f"seed={args.seed}"], budget)
        model = module.flow

        def log_prob(y):
            return model.log_prob(y)

        def sample(n, t):
            return model.sample(n, t)
    else:
        reference = load_reference(args.reference)
        start = time.process_time()
        model, steps = reference.train(level_index(train_x, levels), levels, budget, seed=args.seed)
        facts = {"steps": steps, "cpu_s": round(time.process_time() - start, 1)}

        def log_prob(y):
            return reference.log_prob(model, y)

        def sample(n, t):
            return reference.sample(model, n, t)

    params = sum(p.numel() for p in model.parameters())
    figures = scores(log_prob, sample, levels, datamodule, train_x, test_x, args.n, args.temperatures)
    child_result({**facts, "params": params, **figures})


def floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[60, 180], help="CPU seconds of training")
    parser.add_argument("--reference", help="the reference runner's file (see above); omitted: genlab only")
    parser.add_argument("--seed", type=int, default=0, help="training seed of both sides")
    parser.add_argument("--n", type=int, default=1000, help="samples for FID (compare only at equal N)")
    parser.add_argument("--temperatures", type=floats, default="1,0.8", help="latent scales, comma-separated")
    parser.add_argument("--child", choices=("genlab", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.child:
        child(args.child, args.budget, args, overrides)
        return
    sides = ["genlab", *(["reference"] if args.reference else [])]
    extra = [f"--seed={args.seed}", f"--n={args.n}", "--temperatures=" + ",".join(map(str, args.temperatures))]
    extra += [f"--reference={args.reference}"] if args.reference else []
    rows = run_children(__file__, sides, args.budgets, [*extra, *overrides])
    columns = ["steps", "cpu_s", "test_bpd", *(f"fid@{t:g}" for t in args.temperatures), "params"]
    print_table(rows, columns)


if __name__ == "__main__":
    main()
