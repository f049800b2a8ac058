"""The results page: train every family with its default config, evaluate each, write a Markdown table
with each family's sample grid and loss curves.

    python -m genlab.results                 # make results: docs/results.md (every configs/model/*.yaml)
    python -m genlab.results --quick         # a few steps each: checks the pipeline, figures mean nothing
    python -m genlab.results --families vae  # some families only

Each family is trained by `genlab.train` exactly as `make train MODEL=<family>` does (plus a fixed
run folder), then scored by `genlab.evaluate` (N samples, seed 0); its sampling speed is the wall
time of drawing those N samples. Loss curves are drawn as SVG (no plotting library needed).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from genlab.config import choices_of, compose
from genlab.errors import GenlabError
from genlab.evaluate import evaluate
from genlab.sample import draw, load
from genlab.train import train

QUICK = ("trainer=debug",)  # 2 epochs of 5 batches
SHOWN = ("test/loss", "val/loss", "test/nll", "test/bpd", "val/bpc", "val/ppl", "fid", "kid", "precision", "recall")
SHOWN += ("val/reward", "val/kl")  # fine-tuning from feedback (gpt_feedback)
# Families that fine-tune another family's run start from that family's run on this page (run before
# them: the families go in alphabetical order).
BASES = {"gpt_feedback": "gpt"}


def loss_curves_svg(rows: list[dict[str, str]], width: int = 480, height: int = 240) -> str:
    """train/loss (blue) and val/loss (orange) against the step, as a small standalone SVG."""
    series = {
        key: [(float(r["step"]), float(r[key])) for r in rows if r.get(key) and r.get("step")]
        for key in ("train/loss", "val/loss")
    }
    points = [p for s in series.values() for p in s]
    if not points:
        return ""
    (x0, x1), (y0, y1) = ((min(v), max(v)) for v in zip(*points, strict=True))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1e-9)
    pad = 40

    def xy(x: float, y: float) -> str:
        px = pad + (x - x0) / (x1 - x0) * (width - 2 * pad)
        py = height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)  # SVG's y grows downwards
        return f"{px:.1f},{py:.1f}"

    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">']
    lines.append(f'<rect width="{width}" height="{height}" fill="white"/>')
    for i, ((key, s), colour) in enumerate(zip(series.items(), ("#1f77b4", "#ff7f0e"), strict=True)):
        if s:
            lines.append(f'<polyline fill="none" stroke="{colour}" points="{" ".join(xy(*p) for p in s)}"/>')
            lines.append(f'<text x="{width - pad - 60}" y="{20 + 14 * i}" fill="{colour}">{key}</text>')
    lines.append(f'<text x="{pad}" y="{height - 10}">step {x0:g} .. {x1:g}; loss {y0:.3g} .. {y1:.3g}</text>')
    lines.append("</svg>")
    return "\n".join(lines)


def run_family(family: str, out_dir: Path, log_dir: Path, quick: bool, n: int, cache_dir: str) -> dict[str, object]:
    argv = [f"model={family}", f"log_dir={log_dir}", "run_name=results", *(QUICK if quick else ())]
    if family in BASES:
        argv.append(f"model.init_from={log_dir / BASES[family] / 'results'}")
    run = log_dir / family / "results"
    shutil.rmtree(run, ignore_errors=True)  # this page's own run folder, remade each time
    start, cpu_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    train(compose([*argv, f"threads={torch.get_num_threads()}"]))  # the page's count, set in main
    train_time, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    load_average = (load_start + os.getloadavg()[0]) / 2  # other jobs on the machine: wall times are theirs too
    report = evaluate({"run": str(run), "n": n, "seed": 0, "cache_dir": cache_dir})
    model, _, _ = load(run)
    start = time.perf_counter()
    draw(model, min(n, 64), seed=0)
    rate = min(n, 64) / (time.perf_counter() - start)
    with open(run / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    (out_dir / f"{family}_loss.svg").write_text(loss_curves_svg(rows))
    grids = sorted((run / "samples").glob("samples_final.*"))
    for grid in grids:
        shutil.copy(grid, out_dir / f"{family}_samples{grid.suffix}")
    return {
        "family": family,
        "metrics": report["metrics"],
        "params": sum(p.numel() for p in model.parameters()),
        "train_time": train_time,
        "train_cpu": train_cpu,
        "load": load_average,
        "samples_per_s": rate,
        "grid": f"{family}_samples{grids[0].suffix}" if grids else None,
        "n": report.get("n"),
    }


def markdown(results: list[dict[str, object]], quick: bool, assets: str) -> str:
    lines = [
        "# Results",
        "",
        "Every family trained with its default config on its embedded data (`python -m genlab.results`), "
        "then `genlab.evaluate` (N samples, seed 0). Train time (wall, and CPU time of all threads) and "
        "samples/s on the machine that ran it; `load` is the 1-minute load average while it trained (above "
        "the thread count, other jobs shared the cores and the wall times are inflated).",
        "",
    ]
    if quick:
        lines += ["**Quick mode: a few steps per family. These figures check the pipeline, nothing else.**", ""]
    lines += ["| family | " + " | ".join(SHOWN) + " | parameters | train time | train CPU | load | samples/s |"]
    lines += ["| --- " * (len(SHOWN) + 6) + "|"]
    for r in results:
        m = r["metrics"]
        cells = [f"{m[k]:.4g}" if k in m else "" for k in SHOWN]
        lines.append(
            f"| {r['family']} | " + " | ".join(cells) + f" | {r['params']:,} | {r['train_time']:.0f} s | "
            f"{r['train_cpu']:.0f} s | {r['load']:.1f} | {r['samples_per_s']:.3g} |"
        )
    lines.append("")
    for r in results:
        lines += [f"## {r['family']}", ""]
        if r["grid"] and r["grid"].endswith(".png"):
            lines += [f"![{r['family']} samples]({assets}/{r['grid']})", ""]
        lines += [f"![{r['family']} loss curves]({assets}/{r['family']}_loss.svg)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genlab-results", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps per family (tests, smoke checks)")
    parser.add_argument("--families", default=None, help="comma-separated (default: every configs/model/*.yaml)")
    parser.add_argument("--out", default="docs/results.md")
    parser.add_argument("--log-dir", default="logs/results")
    parser.add_argument("--n", type=int, default=1000, help="samples for the image metrics")
    parser.add_argument("--cache-dir", default="data")
    parser.add_argument("--no-apps", action="store_true", help="leave out the Applications section (augment, detect)")
    args = parser.parse_args(argv)
    families = args.families.split(",") if args.families else choices_of("model")
    out = Path(args.out)
    assets = out.parent / "results"
    assets.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    results: list[dict[str, object]] = []
    try:
        for family in families:
            results.append(run_family(family, assets, Path(args.log_dir), args.quick, args.n, args.cache_dir))
            out.write_text(markdown(results, args.quick, assets.name) + "\n")  # after each: a stopped run keeps them
        if not args.no_apps:  # make augment / make detect on these runs (genlab.apps.page)
            from genlab.apps.page import section

            runs = {f: Path(args.log_dir) / f / "results" for f in families}
            applications = section(runs, assets, args.quick)
            out.write_text("\n".join([markdown(results, args.quick, assets.name), *applications]) + "\n")
    except GenlabError as err:
        print(f"genlab-results: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
