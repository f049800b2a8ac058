"""Telling generated digits from real ones: which family's samples are hardest to detect?

    python -m genlab.apps.detect                                   # trains every image family briefly first
    python -m genlab.apps.detect runs=logs/vae/<run>,logs/gan/<run>  # or: genlab-detect ..., make detect RUNS=...

1. The generators: the runs given, or, when none are, each image family (every configs/model/*.yaml
   whose default data is an image data module: vae, flow, diffusion, flow_matching, gan, and a new
   family without an edit here) trained by `genlab.train` with its default config capped at `minutes`
   each (trainer.max_time; default 1.5 minutes, so the five take ~8 minutes): briefly trained models,
   which are easier to spot than fully trained ones (give runs= for those). A second time, the run
   folders are refused before any work: give them as runs=, or continue them with resume=auto.
2. From each: `n_train` samples to train on and as many held-out samples as the test split has real
   images, drawn as `make sample` does (`genlab.sample.draw`, classes in turn for conditional models).
3. Detectors: the metrics' small CNN (`ConvClassifier`, two classes, `metrics.train_classifier`'s
   recipe) trained on the real TRAINING images vs generated ones, `train_steps` steps:
   - `dedicated`: one per family, real vs that family's samples;
   - `pooled`: one for all, real vs an equal share of every family's samples (one deployed detector).
4. AUROC on held-out images, per family: the real TEST images vs that family's held-out samples
   (scored by p(generated)). 0.5: indistinguishable from real digits, 1: every sample is caught.
   Beside it the family's `nn_dist_ratio` (genlab.metrics.memorisation): a model that copies training
   images would be hard to detect for the wrong reason.
5. The invisible watermark (genlab.watermark), per family, on `watermark_n` held-out samples written
   as `make sample EXPORT=` writes them (marked, enlarged to 256 a side when smaller) and on as many
   real test images written the same way without a mark: the share that reads back the payload
   (generated: should be 1; real: false positives, should be 0), then of the marked ones after a
   JPEG save (quality 75), a resize to 0.5x and 2x (read as they are), and each then back to the
   written size; and whether a sample grid (`make sample`'s PNG) carries it.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from genlab import watermark
from genlab.apps.anomaly import max_time
from genlab.apps.common import (
    auroc,
    fit_classifier,
    model_families,
    option,
    refuse_trained_run,
    run_command,
    write_report,
)
from genlab.config import compose
from genlab.data.images import ImageDataModule
from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.metrics import memorisation, split_tensors
from genlab.sample import BATCH_SIZE, class_labels, draw, is_conditional, load, num_classes, save_grid

OPTIONS: dict[str, tuple[type, str]] = {
    "runs": (str, "comma-separated run folders or .ckpt files (default: train each family briefly)"),
    "families": (str, "families to train when no runs are given (default: every image family)"),
    "resume": (str, "auto: continue the runs this command trained before (<log_dir>/<family>/detect)"),
    "minutes": (float, "training time per family when training (default 1.5)"),
    "n_train": (int, "generated training images per family (default 1000)"),
    "train_steps": (int, "detector optimizer steps (default 1000)"),
    "seed": (int, "training runs, samples and detectors (default 0)"),
    "log_dir": (str, "where trained runs go: <log_dir>/<family>/detect (default logs)"),
    "device": (str, "cpu, cuda, ... (default: cuda when available)"),
    "out": (str, "the JSON file (default <log_dir>/detect.json)"),
    "watermark_n": (int, "held-out samples and real test images checked for the watermark (default 100)"),
}


def image_families() -> list[str]:
    """Every model config whose default data is an image data module (genlab.data.images)."""
    return [name for name, (_, data) in model_families().items() if data and issubclass(data, ImageDataModule)]


def train_briefly(
    families: list[str], minutes: float, seed: int, log_dir: str, overrides: list[str], resume: str | None = None
) -> dict:
    """{family: (run folder, training seconds)}: each family's default config, capped at `minutes`.
    Every config is composed and every run folder checked before the first family trains."""
    from genlab.train import train

    folders = ",".join(str(Path(log_dir) / family / "detect") for family in families)
    configs = {}
    for family in families:
        argv = [
            f"model={family}",
            f"log_dir={log_dir}",
            "run_name=detect",
            f"seed={seed}",
            f"trainer.max_time={max_time(minutes)}",
            *([f"resume={resume}"] if resume else []),
            *overrides,
        ]
        configs[family] = compose(argv)
        refuse_trained_run(Path(log_dir) / family / "detect", resume, f"runs={folders}")
    runs = {}
    for family, cfg in configs.items():
        tic = time.perf_counter()
        train(cfg)
        runs[family] = (Path(log_dir) / family / "detect", time.perf_counter() - tic)
    return runs


def generated_p(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The detector's score of "generated" `(N,)`: logit(generated) - logit(real)."""
    with torch.no_grad():
        logits = net.eval()(images)
    return (logits[:, 1] - logits[:, 0]).float()


def _jpeg(pixels: np.ndarray, quality: int = 75) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _resize(pixels: np.ndarray, factor: float, back: bool = False) -> np.ndarray:
    height, width = pixels.shape[:2]
    resized = Image.fromarray(pixels).resize((round(width * factor), round(height * factor)), Image.BICUBIC)
    return np.asarray(resized.resize((width, height), Image.BICUBIC) if back else resized)


def watermark_figures(samples: torch.Tensor, real: torch.Tensor, n: int) -> dict[str, Any]:
    """Shares of `n` samples (in [-1, 1]) whose written file reads back the payload, as written and after
    each change; of `n` real images written the same size without a mark that falsely do; and the grid."""
    as_bytes = ((torch.cat([samples[:n], real[:n]]).clamp(-1, 1) + 1) * 127.5).round().byte()
    pixels = [image.permute(1, 2, 0).numpy() for image in as_bytes]  # (H, W, C) uint8
    marked = [watermark.embed(p) for p in pixels[: len(samples[:n])]]
    unmarked = [watermark.enlarge(np.repeat(p, 3, axis=2) if p.shape[2] == 1 else p) for p in pixels[len(marked) :]]
    changes = {
        "marked": lambda p: p,
        "jpeg75": _jpeg,
        "resize_0.5x": lambda p: _resize(p, 0.5),
        "resize_2x": lambda p: _resize(p, 2.0),
        "resize_0.5x_back": lambda p: _resize(p, 0.5, back=True),
        "resize_2x_back": lambda p: _resize(p, 2.0, back=True),
    }
    figures: dict[str, Any] = {
        k: float(np.mean([watermark.is_marked(f(p)) for p in marked])) for k, f in changes.items()
    }
    figures["bit_accuracy_jpeg75"] = float(np.mean([watermark.bit_accuracy(_jpeg(p)) for p in marked]))
    figures["real_falsely_marked"] = float(np.mean([watermark.is_marked(p) for p in unmarked]))
    with tempfile.TemporaryDirectory() as folder:
        save_grid(samples[:64], Path(folder) / "grid.png")
        grid = watermark.load(Path(folder) / "grid.png")
    figures |= {"grid_marked": watermark.is_marked(grid), "grid_size": list(grid.shape[:2])}
    figures |= {"n": len(marked), "data_size": list(pixels[0].shape[:2]), "written_size": list(marked[0].shape[:2])}
    return figures


def detect(args: dict[str, Any], overrides: list[str] | None = None) -> dict[str, Any]:
    """Train (unless runs are given), sample, fit the detectors; returns what the JSON holds."""
    seed, n_train = option(args, "seed", 0), option(args, "n_train", 1000)
    train_steps, log_dir = option(args, "train_steps", 1000), option(args, "log_dir", "logs")
    if n_train < 1 or train_steps < 1:
        raise ConfigError("n_train and train_steps must be at least 1")
    start = time.perf_counter()
    if args.get("runs"):
        if overrides or args.get("resume"):
            first = overrides[0] if overrides else f"resume={args['resume']}"
            raise ConfigError(f"{first}: applies to training; runs= are used as they are")
        runs = {}
        for run in args["runs"].split(","):
            path = Path(run.strip())
            folder = path if path.is_dir() else path.parent.parent  # <log_dir>/<family>/<run>[/checkpoints/x.ckpt]
            name = folder.parent.name if folder.parent.name not in runs else f"{folder.parent.name}/{folder.name}"
            runs[name] = (path, None)
    else:
        known = image_families()
        families = [f.strip() for f in option(args, "families", ",".join(known)).split(",")]
        unknown = [f for f in families if f not in known]
        if unknown:
            raise ConfigError(f"families: {unknown[0]} is not an image family (choose from {', '.join(known)})")
        runs = train_briefly(families, option(args, "minutes", 1.5), seed, log_dir, overrides or [], args.get("resume"))

    real = None
    generated: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    per_family: dict[str, dict[str, Any]] = {}
    for name, (run, train_s) in runs.items():
        model, ckpt, config = load(run, args.get("device"))
        datamodule = instantiate(config["data"])
        if not isinstance(datamodule, ImageDataModule):
            raise ConfigError(f"runs: {ckpt} is not an image model (its data is {type(datamodule).__name__})")
        split = split_tensors(datamodule, "train")[0], split_tensors(datamodule, "test")[0]
        if real is None:
            real = split
        elif any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(split, real, strict=True)):
            # the images themselves: data options that do not change them (batch_size) may differ
            raise ConfigError(f"runs: {ckpt} was trained on other images (or another split) than the first run")
        n_test = len(real[1])
        n = n_train + n_test
        labels = class_labels(n, num_classes(model, config), None) if is_conditional(model) else None
        tic = time.perf_counter()
        samples = draw(model, n, seed, labels, BATCH_SIZE)
        if not isinstance(samples, torch.Tensor):
            raise ConfigError(f"runs: {ckpt} does not sample images")
        sample_s = time.perf_counter() - tic
        samples = samples.clamp(-1, 1).cpu()
        # Train and held-out parts of the same stream (conditional: both have every class in turn).
        generated[name] = samples[:n_train], samples[n_train:]
        per_family[name] = {
            "checkpoint": str(ckpt),
            "model": type(model).__name__,
            "train_s": train_s,
            "sample_s": sample_s,
            "nn_dist_ratio": memorisation(samples[n_train:], real[0], seed)["nn_dist_ratio"],
            "watermark": watermark_figures(samples[n_train:], real[1], option(args, "watermark_n", 100)),
        }
    real_train, real_test = real

    def fit(fakes: torch.Tensor, detector_seed: int) -> torch.nn.Module:
        x = torch.cat([real_train, fakes])
        y = torch.cat([torch.zeros(len(real_train), dtype=torch.long), torch.ones(len(fakes), dtype=torch.long)])
        return fit_classifier(x, y, 2, train_steps, detector_seed)

    tic = time.perf_counter()
    for name, (fake_train, fake_test) in generated.items():
        net = fit(fake_train, seed)
        per_family[name]["auroc_dedicated"] = auroc(generated_p(net, fake_test), generated_p(net, real_test))
    share = max(1, n_train // len(generated))
    pooled = fit(torch.cat([fake_train[:share] for fake_train, _ in generated.values()]), seed)
    real_scores = generated_p(pooled, real_test)
    for name, (_, fake_test) in generated.items():
        per_family[name]["auroc_pooled"] = auroc(generated_p(pooled, fake_test), real_scores)
    detector_s = time.perf_counter() - tic

    hardest = min(per_family, key=lambda k: per_family[k]["auroc_dedicated"])
    report = {
        "families": per_family,
        "hardest_to_detect": hardest,
        "real_train_images": len(real_train),
        "real_test_images": len(real_test),
        "n_train_per_family": n_train,
        "n_test_per_family": len(real_test),
        "pooled_share_per_family": share,
        "train_steps": train_steps,
        "trained_here": all(v[1] is not None for v in runs.values()),
        "minutes_per_family": option(args, "minutes", 1.5) if not args.get("runs") else None,
        "seed": seed,
        "detector_s": detector_s,
        "wall_s": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
    }
    report["written"] = str(write_report(report, args.get("out") or Path(log_dir) / "detect.json"))
    return report


def table(report: dict[str, Any]) -> str:
    how = (
        f"each family trained {report['minutes_per_family']:g} min here (default config, capped)"
        if report["trained_here"]
        else "the runs given"
    )
    lines = [
        f"real vs generated: detectors trained on {report['real_train_images']} real training digits vs "
        f"{report['n_train_per_family']} samples per family ({how}), {report['train_steps']} steps",
        f"AUROC on {report['real_test_images']} real test digits vs {report['n_test_per_family']} held-out samples "
        "per family (0.5: indistinguishable, 1: all caught)",
        f"  {'family':<16} {'dedicated':>9} {'pooled':>7} {'nn_dist_ratio':>14} {'train s':>8} {'sample s':>9}",
    ]
    for name, f in sorted(report["families"].items(), key=lambda kv: kv[1]["auroc_dedicated"]):
        train_s = f"{f['train_s']:.0f}" if f["train_s"] is not None else "-"
        lines.append(
            f"  {name:<16} {f['auroc_dedicated']:>9.3f} {f['auroc_pooled']:>7.3f} {f['nn_dist_ratio']:>14.2f} "
            f"{train_s:>8} {f['sample_s']:>9.0f}"
        )
    lines.append(
        f"hardest to tell from real: {report['hardest_to_detect']}. Total {report['wall_s']:.0f} s on "
        f"{report['threads']} thread(s)"
    )
    first = next(iter(report["families"].values()))["watermark"]
    lines += [
        f"watermark ({watermark.PAYLOAD!r}, DWT-DCT): share of {first['n']} held-out samples whose file "
        f"reads it back ({'x'.join(map(str, first['data_size']))} written as "
        f"{'x'.join(map(str, first['written_size']))}), of as many real test images falsely, and of the "
        "marked ones after a change",
        f"  {'family':<16} {'marked':>7} {'real':>5} {'jpeg75':>7} {'0.5x':>5} {'2x':>5} {'0.5x+back':>10} "
        f"{'2x+back':>8} {'grid':>5}",
    ]
    for name, f in report["families"].items():
        w = f["watermark"]
        lines.append(
            f"  {name:<16} {w['marked']:>7.2f} {w['real_falsely_marked']:>5.2f} {w['jpeg75']:>7.2f} "
            f"{w['resize_0.5x']:>5.2f} {w['resize_2x']:>5.2f} {w['resize_0.5x_back']:>10.2f} "
            f"{w['resize_2x_back']:>8.2f} {'yes' if w['grid_marked'] else 'no':>5}"
        )
    lines.append(f"wrote {report['written']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_command("genlab-detect", __doc__, OPTIONS, lambda a, o: table(detect(a, o)), argv, overrides=True)


if __name__ == "__main__":
    sys.exit(main())
