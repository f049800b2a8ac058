"""Generators on data=mnist5k at one CPU-time budget, and the first stages they stand on.

    OMP_NUM_THREADS=1 python bench/compare_mnist5k.py [--budget 120] [--ae-budget 120] [--n 1000]
        [--steps 10] [--first-stage kl=<run>] [--row 'vq gpt: experiment=vq_gpt model.first_stage={vq}']
        [--only 'pixel diffusion' ...] [--autoencoders kl vq] [--out logs/compare_mnist5k]

1. First stages: `model=autoencoder data=mnist5k` (KL) and the same with `model.regularizer=vq`, their
   default configs, each trained for `--ae-budget` CPU seconds (or reused: `--first-stage kl=<run>`).
   Scored on the test split: rFID (the project's FID, mnist5k classifier features, of the test
   images' reconstructions against the test images themselves), the family's test figures
   (`test/rec_mse`; VQ: `test/perplexity`, `test/codebook_usage`) and the compression: the bits of a
   latent against the 28x28x8 = 6,272 bits of an image (KL: float32 or float16 numbers; VQ: h*w codes
   of log2(num_codes) bits).
2. Generators (the rows; `{kl}`/`{vq}` in a row stand for those first stages' run folders), each
   trained by `python -m genlab.train <row> callbacks=default,cpu_budget` until its training steps
   have used `--budget` CPU seconds (genlab.callbacks.CPUTimeBudget; the first stage's own training
   is not in it: its table says what it cost), then scored by `genlab.evaluate` (FID, precision,
   recall, label accuracy of `--n` samples drawn with seed 0 against the training split, the mnist5k
   classifier's features) with the sampling timed: samples per CPU second.

Why CPU time: the machine this was written on has 2 cores shared by several jobs, so wall time
measures the queue. Every process here runs on one thread (OMP_NUM_THREADS=1, forced for the
children); a budget means what one idle core does in that time. `--steps` is `model.sample_steps`
(DDIM / Euler steps) of the default rows, so their samples per second compare at equal steps.
Runs land under `--out`; a run whose last.ckpt already spent its budget is scored again, not retrained.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import genlab.evaluate as genlab_evaluate
from genlab.evaluate import family_figures
from genlab.instantiate import instantiate
from genlab.metrics import extract, fid_kid, make_features, split_tensors
from genlab.sample import load

FIRST_STAGES = {
    "kl": ["model=autoencoder", "data=mnist5k"],
    "vq": ["model=autoencoder", "data=mnist5k", "model.regularizer=vq"],
}
ROWS = {  # name -> overrides; {kl}, {vq}: the first stages' run folders, {steps}: --steps
    "pixel diffusion": "experiment=diffusion_mnist5k model.sample_steps={steps}",
    "latent diffusion": "experiment=latent_diffusion model.first_stage={kl} model.sample_steps={steps}",
    "latent flow matching": "experiment=latent_flow_matching model.first_stage={kl} model.sample_steps={steps}",
}
PIXEL_BITS = 28 * 28 * 8  # one 8-bit 28x28 grey image


def train(name: str, overrides: list[str], budget: float, out: Path) -> Path:
    """`python -m genlab.train <overrides>` in a one-thread child until `budget` CPU seconds of
    training steps; -> its run folder. Skipped when that folder's last.ckpt already spent the budget."""
    run = out / "runs" / name
    if budget_state(run).get("used", 0.0) >= budget:
        return run
    cmd = [sys.executable, "-m", "genlab.train", *overrides, f"log_dir={out / 'logs'}", f"run_name={name}"]
    cmd += ["callbacks=default,cpu_budget", f"callbacks.cpu_budget.seconds={budget}"]
    cmd += ["trainer.max_epochs=100000", "callbacks.samples.num_samples=16"]  # the budget ends the run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = out / f"{name}.train.log"
    print(f"training {name}: {' '.join(cmd[3:])} (log: {log})", flush=True)
    with log.open("w") as f:
        code = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    found = sorted((out / "logs").glob(f"*/{name}"))
    if code or not found:
        raise SystemExit(f"training {name} failed (exit {code}): see {log}")
    run.parent.mkdir(parents=True, exist_ok=True)
    if run.is_symlink():
        run.unlink()
    run.symlink_to(found[-1].resolve())
    return run


def budget_state(run: Path) -> dict[str, Any]:
    """The CPUTimeBudget's state in the run's last.ckpt (`used` CPU seconds over `steps`), or {}."""
    ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        return {}
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return dict(state.get("callbacks", {}).get("CPUTimeBudget", {}))


def training_facts(run: Path, model: torch.nn.Module) -> dict[str, Any]:
    state = budget_state(run)
    # trained parameters: not the frozen first stage, not the EMA copy (`ema.shadow`) of the net
    own = [p for name, p in model.named_parameters() if not name.startswith(("first_stage.", "ema."))]
    return {
        "steps": state.get("steps"),
        "train_cpu_s": round(state.get("used", float("nan")), 1),
        "step_cpu_s": round(state["used"] / state["steps"], 3) if state.get("steps") else None,
        "params": sum(p.numel() for p in own),
    }


@torch.no_grad()
def first_stage_figures(run: Path, seed: int) -> dict[str, Any]:
    """rFID, the family's test figures and the compression of an autoencoder run."""
    model, _, config = load(run, "cpu")
    datamodule = instantiate(config["data"])
    figures, _ = family_figures(model, datamodule, config, seed)
    test_x = split_tensors(datamodule, "test")[0]
    recon = torch.cat([model.reconstruct(x) for x in test_x.split(250)])
    features = make_features(datamodule, None, "data")
    real, fake = extract(features, test_x), extract(features, recon)
    c, h, w = model.latent_shape
    out = {**training_facts(run, model), "rfid": round(fid_kid(real, fake, seed)["fid"], 3)}
    out |= {k.split("/")[-1]: round(v, 4) for k, v in figures.items() if k.split("/")[-1] in WANTED_AE}
    out["latent"] = f"{c}x{h}x{w}"
    if model.quantizer is not None:
        bits = h * w * math.log2(model.quantizer.num_codes)
        out["latent_bits"] = round(bits, 1)
        out["effective_bits"] = round(h * w * math.log2(max(out.get("perplexity", 1.0), 1.0)), 1)
    else:
        out["latent_bits"] = f"{c * h * w * 32} (fp32) / {c * h * w * 16} (fp16)"
        bits = c * h * w * 16
    out["compression_x"] = round(PIXEL_BITS / bits, 1)  # KL: at fp16
    out["bits_per_pixel"] = round(bits / (28 * 28), 3)
    return out


WANTED_AE = ("rec_mse", "recon", "perplexity", "codebook_usage")


def generator_figures(run: Path, n: int, seed: int) -> dict[str, Any]:
    """`genlab.evaluate` of the run (what `make eval RUN=<run> N=n SEED=seed` prints), with its
    sampling timed: evaluate's own `draw` is wrapped, so the timed samples are the scored ones."""
    timing: dict[str, float] = {}
    real_draw = genlab_evaluate.draw

    def timed_draw(*args, **kwargs):
        cpu, wall = time.process_time(), time.perf_counter()
        samples = real_draw(*args, **kwargs)
        timing["cpu"], timing["wall"] = time.process_time() - cpu, time.perf_counter() - wall
        return samples

    genlab_evaluate.draw = timed_draw
    try:
        report = genlab_evaluate.evaluate({"run": str(run), "n": n, "seed": seed, "device": "cpu"})
    finally:
        genlab_evaluate.draw = real_draw
    model, _, _ = load(run, "cpu")
    metrics = report["metrics"]
    out = training_facts(run, model)
    out |= {k: round(metrics[k], 4) for k in ("fid", "precision", "recall", "accuracy") if k in metrics}
    out["real_test_fid"] = round(metrics.get("real_test/fid", float("nan")), 4)
    out["samples_per_cpu_s"] = round(n / timing["cpu"], 2)
    out["sampling_wall_s"] = round(timing["wall"], 1)
    return out


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(["run", *columns]) + " |", "|" + " --- |" * (len(columns) + 1)]
    lines += ["| " + " | ".join([row["name"], *(str(row.get(c, "")) for c in columns)]) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=120, help="CPU seconds of training per generator")
    parser.add_argument("--ae-budget", type=float, default=120, help="CPU seconds of training per first stage")
    parser.add_argument("--n", type=int, default=1000, help="samples scored per generator (compare at equal N)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples and of the figures")
    parser.add_argument("--steps", type=int, default=10, help="model.sample_steps of every row that has it")
    parser.add_argument("--first-stage", action="append", default=[], help="kl=<run> or vq=<run>: reuse it")
    parser.add_argument("--row", action="append", default=[], help="'name: overrides' added to the rows")
    parser.add_argument("--only", nargs="*", help="the rows to run, by name (default: all; none: first stages only)")
    parser.add_argument(
        "--autoencoders", nargs="*", default=list(FIRST_STAGES), help="first stages to train (unless given) and score"
    )
    parser.add_argument("--out", default="logs/compare_mnist5k", help="runs, logs and results.json go here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = dict(ROWS)
    for spec in args.row:
        name, _, overrides = spec.partition(":")
        rows[name.strip()] = overrides.strip()
    if args.only is not None:
        rows = {name: rows[name] for name in args.only}

    stages = dict(kind_run.split("=", 1) for kind_run in args.first_stage)
    results: dict[str, Any] = {"budget_cpu_s": args.budget, "ae_budget_cpu_s": args.ae_budget, "n": args.n}
    results["first_stages"] = []
    for kind in args.autoencoders:
        overrides = FIRST_STAGES[kind]
        if kind not in stages:
            stages[kind] = str(train(f"ae_{kind}", [*overrides, f"seed={args.seed}"], args.ae_budget, out))
        row = {"name": f"autoencoder {kind}", "run": stages[kind], **first_stage_figures(Path(stages[kind]), args.seed)}
        results["first_stages"].append(row)
        print(json.dumps(row), flush=True)

    results["generators"] = []
    for name, spec in rows.items():
        try:
            overrides = spec.format(**stages, steps=args.steps).split()
        except KeyError as missing:
            raise SystemExit(f"row {name!r} needs --first-stage {missing.args[0]}=<run>") from None
        run = train(name.replace(" ", "_"), [*overrides, f"seed={args.seed}"], args.budget, out)
        row = {"name": name, "overrides": " ".join(overrides), **generator_figures(run, args.n, args.seed)}
        results["generators"].append(row)
        print(json.dumps(row), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    ae_cols = ["steps", "train_cpu_s", "rfid", "rec_mse", "latent", "latent_bits", "compression_x"]
    print(table(results["first_stages"], [*ae_cols, "perplexity", "codebook_usage", "effective_bits"]))
    gen_cols = ["params", "steps", "step_cpu_s", "fid", "precision", "recall", "accuracy", "samples_per_cpu_s"]
    print(table(results["generators"], gen_cols))


if __name__ == "__main__":
    main()
