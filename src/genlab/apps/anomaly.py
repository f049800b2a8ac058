"""Anomaly detection with a held-out class: train a family without one digit, then ask how unusual it
finds that digit.

    python -m genlab.apps.anomaly model=flow holdout=7     # or: genlab-anomaly ..., make anomaly MODEL=flow HOLDOUT=7
    python -m genlab.apps.anomaly model=vae holdout=7 trainer.max_epochs=20    # dotted keys: genlab.train overrides
    python -m genlab.apps.anomaly run=logs/vae/anomaly-holdout7                # score a run trained before

1. Train `model` through `genlab.train` with `data.exclude_labels=[holdout]`: the class is taken out
   of the train and val splits (test keeps it), everything else as `make train MODEL=<family>`, with
   training capped at `max_minutes` (trainer.max_time) so the command stays under 15 minutes.
   Before any work: a family whose module declares no `anomaly_score` (genlab.apps.scores), or a
   configuration that cannot score (a conditional GAN), is refused by name, and so is a run folder
   this command filled before (score it with run=, or continue it with resume=auto).
2. Score the images the model never saw: the test split (every class) and the held-out class's
   images of the train and val splits, with the family's `anomaly_score` (flow NLL, VAE
   importance-weighted bound, diffusion denoising error, GAN -D(x), or a new family's own).
3. AUROC of "held-out class vs the other classes" (positives: the held-out class, negatives: the
   test images of the other classes), beside a baseline with no model: the RMS pixel distance to the
   nearest training image (`metrics.nearest_distance`). Both also on the test split alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from genlab.apps.common import auroc, model_families, option, refuse_trained_run, run_command, write_report
from genlab.apps.scores import anomaly_scores, has_score, method
from genlab.config import compose
from genlab.errors import ConfigError, GenlabError
from genlab.instantiate import instantiate, locate
from genlab.metrics import nearest_distance, split_tensors
from genlab.sample import load

OPTIONS: dict[str, tuple[type, str]] = {
    "model": (str, "the family to train: one whose module declares anomaly_score (default vae)"),
    "holdout": (int, "the class left out of training (default 7)"),
    "run": (str, "score this run instead of training one (trained with data.exclude_labels=[holdout])"),
    "resume": (str, "auto: continue the run this command trained before (stopped, or to train on), then score"),
    "max_minutes": (float, "training time cap, trainer.max_time (default 10; 0: none, the family's own length)"),
    "k": (int, "draws per image for the score: IW samples, dequantizations, (t, noise) pairs (default 16)"),
    "seed": (int, "the run's seed (data split, init) and the score's draws (default 0)"),
    "log_dir": (str, "where the run goes: <log_dir>/<model>/anomaly-holdout<k> (default logs)"),
    "device": (str, "cpu, cuda, ... for scoring (default: cuda when available)"),
    "out": (str, "the JSON file (default <run>/anomaly.json)"),
}


def max_time(minutes: float) -> str:
    """Lightning's trainer.max_time as DD:HH:MM:SS."""
    seconds = max(1, round(minutes * 60))
    return f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def require_score(family: str, module_class: type, families: dict[str, tuple[type, Any]]) -> None:
    if not has_score(module_class):
        scored = [name for name, (module, _) in families.items() if has_score(module)]
        raise ConfigError(
            f"model={family}: {module_class.__name__} has no anomaly score (its module declares no "
            f"anomaly_score method); families with one: {', '.join(scored) or 'none'}"
        )


def dry_run(cfg: DictConfig) -> None:
    """Build the model and score two blank images, so that a configuration that cannot score (a
    conditional GAN, a diffusion model without label dropout) is refused now, not after training. Only
    its refusals (GenlabError) count: anything else may need the trained model, and is left to the
    real scoring."""
    data = cfg.data
    if "channels" not in data or "image_size" not in data:
        return  # not the image data modules' keys: no blank image to try
    with torch.random.fork_rng(devices=[]):
        try:
            model = instantiate(cfg.model, "model")
            model.anomaly_score(torch.zeros(2, data.channels, data.image_size, data.image_size), 1, 0)
        except GenlabError:
            raise
        except Exception:  # not a refusal (see the docstring)
            return


def training_config(family: str, holdout: int, args: dict[str, Any], overrides: list[str]) -> tuple[DictConfig, Path]:
    """The run's config and folder, checked before any work (no data set up, nothing trained): the
    family has a score, this configuration can score, and the run folder is new or resumed."""
    families = model_families()
    if family in families:  # else compose's one-line error lists the model configs
        require_score(family, families[family][0], families)  # before data.exclude_labels meets text data
    log_dir = option(args, "log_dir", "logs")
    minutes = option(args, "max_minutes", 10.0)
    argv = [
        f"model={family}",
        f"data.exclude_labels=[{holdout}]",
        f"log_dir={log_dir}",
        f"run_name=anomaly-holdout{holdout}",
        f"seed={option(args, 'seed', 0)}",
        *([f"trainer.max_time={max_time(minutes)}"] if minutes > 0 else []),
        *([f"resume={args['resume']}"] if args.get("resume") else []),
        *overrides,
    ]
    cfg = compose(argv)
    require_score(family, locate(cfg.model._target_), families)  # an override may name another module
    dry_run(cfg)
    run_dir = Path(log_dir) / family / f"anomaly-holdout{holdout}"
    refuse_trained_run(run_dir, args.get("resume"), f"run={run_dir}")
    return cfg, run_dir


def anomaly(args: dict[str, Any], overrides: list[str] | None = None) -> dict[str, Any]:
    """Train (unless `run` is given), score, and write the report; returns what the JSON holds."""
    holdout, k, seed = option(args, "holdout", 7), option(args, "k", 16), option(args, "seed", 0)
    if k < 1:
        raise ConfigError(f"k: draws per image must be at least 1, got {k}")
    start = time.perf_counter()
    train_s = None
    if args.get("run"):
        if overrides or args.get("resume"):
            first = overrides[0] if overrides else f"resume={args['resume']}"
            raise ConfigError(f"{first}: applies to training; run= scores a trained run as it is")
        run = args["run"]
    else:
        cfg, run = training_config(option(args, "model", "vae"), holdout, args, overrides or [])
        from genlab.train import train  # imported here: scoring a given run needs no training stack

        tic = time.perf_counter()
        train(cfg)
        train_s = time.perf_counter() - tic
    model, ckpt, config = load(run, args.get("device"))
    method(model)  # a given run without a score: one line before the data is set up
    excluded = list(config.get("data", {}).get("exclude_labels") or [])
    if excluded != [holdout]:
        raise ConfigError(
            f"holdout={holdout}: the run at {ckpt} was trained with data.exclude_labels={excluded}, "
            f"not [{holdout}] (give holdout= to match, or let the command train: leave out run=)"
        )
    datamodule = instantiate(config["data"])
    train_x, _ = split_tensors(datamodule, "train")
    test_x, test_y = split_tensors(datamodule, "test")
    extra_x, _ = split_tensors(datamodule, "excluded")  # the held-out class's train/val images: never seen
    images = torch.cat([test_x, extra_x])
    is_held = torch.cat([test_y == holdout, torch.ones(len(extra_x), dtype=torch.bool)])
    in_test = torch.cat([torch.ones(len(test_x), dtype=torch.bool), torch.zeros(len(extra_x), dtype=torch.bool)])

    tic = time.perf_counter()
    scores = {"model": anomaly_scores(model, images, k, seed), "nearest_neighbour": nearest_distance(images, train_x)}
    score_s = time.perf_counter() - tic
    figures = {}
    for name, s in scores.items():
        figures[name] = {
            "auroc": auroc(s[is_held], s[~is_held]),
            "auroc_test_split_only": auroc(s[is_held & in_test], s[~is_held & in_test]),
            "mean_score_holdout": s[is_held].mean().item(),
            "mean_score_others": s[~is_held].mean().item(),
        }
    report = {
        "checkpoint": str(ckpt),
        "model": type(model).__name__,
        "family": Path(config.get("run_dir") or ckpt.parent.parent).parent.name,  # <log_dir>/<family>/<run>
        "holdout": holdout,
        "score": method(model)[1],
        "score_name": method(model)[0],
        "baseline": "RMS pixel distance to the nearest training image (training split without the held-out class)",
        "k": k,
        "seed": seed,
        "positives": int(is_held.sum()),
        "positives_in_test_split": int((is_held & in_test).sum()),
        "negatives": int((~is_held).sum()),
        "train_images": len(train_x),
        "auroc": figures["model"]["auroc"],
        "auroc_nearest_neighbour": figures["nearest_neighbour"]["auroc"],
        "figures": figures,
        "train_s": train_s,
        "score_s": score_s,
        "wall_s": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
    }
    out = args.get("out") or (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent) / "anomaly.json"
    report["written"] = str(write_report(report, out))
    return report


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['model']} from {report['checkpoint']}, class {report['holdout']} held out of training",
        f"scored: {report['positives']} images of class {report['holdout']} ({report['positives_in_test_split']} in "
        f"the test split, the rest from train/val) vs {report['negatives']} test images of the other classes",
        f"  {'score':<52} {'AUROC':>6} {'test split only':>16}",
    ]
    for name, label in (
        ("model", f"{report['family']}: {report['score_name']} (k={report['k']})"),
        ("nearest_neighbour", "baseline: pixel distance to nearest training image"),
    ):
        f = report["figures"][name]
        lines.append(f"  {label:<52} {f['auroc']:>6.3f} {f['auroc_test_split_only']:>16.3f}")
    lines.append(f"score: {report['score']}")
    trained = f"trained {report['train_s']:.0f} s, " if report["train_s"] is not None else ""
    lines.append(
        f"AUROC: 0.5 is chance, 1 perfect. {trained}scored {report['score_s']:.0f} s, total {report['wall_s']:.0f} s "
        f"on {report['threads']} thread(s)"
    )
    lines.append(f"wrote {report['written']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_command("genlab-anomaly", __doc__, OPTIONS, lambda a, o: table(anomaly(a, o)), argv, overrides=True)


if __name__ == "__main__":
    sys.exit(main())
