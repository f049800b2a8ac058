"""Synthetic data for a classifier with few labels: does a conditional generator help?

    python -m genlab.apps.augment logs/diffusion/<run> per_class=10 n=1000 seeds=5
    # or: genlab-augment ..., make augment RUN=logs/diffusion/<run>

For each seed, the metrics' small classifier (`ConvClassifier`, the FID features' net and recipe) is
trained for the same number of steps (`train_steps`) on
- `real`: a scarce labelled subset, `per_class` images of each class drawn (by seed) from the run's
  TRAINING split;
- `real+synthetic`: the same subset plus `n` samples of the model, labelled with the class they
  were drawn for (classes in turn);
- `synthetic`: the `n` samples alone ("train on synthetic, test on real", a usefulness measure of a
  conditional generator);
- `all_real`: the whole training split (the ceiling, for scale);
and scored on the run's TEST split, which neither the generator nor any classifier saw (the data
config and seed come from the checkpoint, so the split is the one the generator was trained with).
The headline is the gain, real+synthetic minus real, paired by seed (mean and std). The `n` samples
are drawn once (seed 0) and shared by the seeds: the spread is the subset's and the classifier's.

Read it with its caveat: the generator itself was trained on the whole training split with its labels,
so it carries more labelled information than the scarce subset; this measures how much of that a
classifier can get through samples, not augmentation from the scarce labels alone.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from genlab.apps.common import fit_classifier, option, run_command, spread, write_report
from genlab.data.images import ImageDataModule
from genlab.errors import ConfigError, DataError
from genlab.instantiate import instantiate
from genlab.metrics import classifier_accuracy, split_tensors
from genlab.sample import BATCH_SIZE, class_labels, draw, is_conditional, load, num_classes, run_dir_of

OPTIONS: dict[str, tuple[type, str]] = {
    "run": (
        str,
        "a conditional model's run folder or .ckpt (diffusion, flow_matching; gan with model.conditional=true)",
    ),
    "per_class": (int, "real labelled images per class in the scarce subset (default 10)"),
    "n": (int, "synthetic samples, classes in turn, drawn once with seed 0 (default 1000)"),
    "seeds": (int, "seeds 0..seeds-1: the subset and the classifier's init and batches differ by seed (default 5)"),
    "train_steps": (int, "classifier optimizer steps, the same in every arm (default 500)"),
    "steps": (int, "sampling steps (diffusion, flows; default the model's)"),
    "guidance": (float, "classifier-free guidance scale (default the model's)"),
    "batch_size": (int, f"samples drawn at once (default {BATCH_SIZE})"),
    "device": (str, "cpu, cuda, ... (default: cuda when available)"),
    "out": (str, "the JSON file (default <run>/augment.json)"),
}
ARMS = ("real", "real+synthetic", "synthetic", "all_real")


def scarce_subset(datamodule: ImageDataModule, per_class: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """`per_class` images of each class drawn by `seed` from the TRAINING split: positions in that split
    `(num_classes * per_class,)` and their indices in the whole data set (to check against the test split)."""
    train = datamodule.splits["train"]
    _, labels = split_tensors(datamodule, "train")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for k in range(int(datamodule.num_classes)):
        members = (labels == k).nonzero().flatten()
        if len(members) < per_class:
            raise DataError(f"per_class={per_class}: class {k} has only {len(members)} training images")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    positions = torch.cat(chosen)
    return positions, [int(train.indices[i]) for i in positions]


def augment(args: dict[str, Any], overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the experiment; returns what the JSON holds."""
    if overrides:
        raise ConfigError(f"unknown option '{overrides[0]}': genlab-augment takes no config overrides")
    if not args.get("run"):
        raise ConfigError("give the run: genlab-augment <conditional model run folder or .ckpt> [per_class=10 ...]")
    per_class, n = option(args, "per_class", 10), option(args, "n", 1000)
    seeds, train_steps = option(args, "seeds", 5), option(args, "train_steps", 500)
    if per_class < 1 or n < 1 or seeds < 1 or train_steps < 1:
        raise ConfigError("per_class, n, seeds and train_steps must each be at least 1")
    start = time.perf_counter()
    model, ckpt, config = load(args["run"], args.get("device"))
    if not is_conditional(model):
        raise ConfigError(
            f"run: {type(model).__name__} at {ckpt} is not conditional: augmentation needs samples of a given "
            "class (model=diffusion or flow_matching by default; model=gan with model.conditional=true)"
        )
    datamodule = instantiate(config["data"])
    if not isinstance(datamodule, ImageDataModule) or int(datamodule.num_classes or 0) < 2:
        raise ConfigError("run: augmentation needs a labelled image data set (data.num_classes >= 2)")
    classes = num_classes(model, config)
    train_x, train_y = split_tensors(datamodule, "train")
    test_x, test_y = split_tensors(datamodule, "test")
    train_split, test_split = datamodule.splits["train"], datamodule.splits["test"]
    # Indices compare only within one data set split by fraction; a separate test set shares nothing by index.
    shared = getattr(test_split, "dataset", None) is train_split.dataset
    test_indices = {int(i) for i in test_split.indices} if shared else set()

    # One pool of samples for every seed (sampling is the slow part: ~0.1-0.3 s per guided DDIM-50
    # sample on one busy CPU thread), so the spread over seeds is the subset's and the classifier's.
    tic = time.perf_counter()
    labels = class_labels(n, classes, None)
    synth = draw(
        model,
        n,
        0,
        labels,
        option(args, "batch_size", BATCH_SIZE),
        steps=args.get("steps"),
        guidance=args.get("guidance"),
    ).clamp(-1, 1)
    sampling_s = time.perf_counter() - tic
    accuracies: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for seed in range(seeds):
        positions, global_indices = scarce_subset(datamodule, per_class, seed)
        if test_indices & set(global_indices):  # by construction never: the subset is drawn from the train split
            raise DataError("the scarce subset holds test images: the data split is broken")
        real_x, real_y = train_x[positions], train_y[positions]
        arms = {
            "real": (real_x, real_y),
            "real+synthetic": (torch.cat([real_x, synth]), torch.cat([real_y, labels])),
            "synthetic": (synth, labels),
            "all_real": (train_x, train_y),
        }
        for arm, (x, y) in arms.items():
            net = fit_classifier(x, y, classes, train_steps, seed)
            accuracies[arm].append(classifier_accuracy(net, test_x, test_y))

    gains = [a - b for a, b in zip(accuracies["real+synthetic"], accuracies["real"], strict=True)]
    report = {
        "checkpoint": str(ckpt),
        "model": type(model).__name__,
        "per_class": per_class,
        "real_images": per_class * classes,
        "n_synthetic": n,
        "seeds": seeds,
        "train_steps": train_steps,
        "sampling": {k: args[k] for k in ("steps", "guidance") if args.get(k) is not None} or "the model's defaults",
        "test_images": len(test_y),
        "train_split_images": len(train_y),
        "accuracy": {arm: spread(values) for arm, values in accuracies.items()},
        "gain": spread(gains),
        "sampling_s": sampling_s,
        "wall_s": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
    }
    report["written"] = str(write_report(report, args.get("out") or run_dir_of(ckpt) / "augment.json"))
    return report


def table(report: dict[str, Any]) -> str:
    acc, gain = report["accuracy"], report["gain"]
    lines = [
        f"{report['model']} from {report['checkpoint']}: {report['per_class']} real images per class "
        f"({report['real_images']}), {report['n_synthetic']} synthetic, {report['seeds']} seeds, "
        f"{report['train_steps']} classifier steps each",
        f"test accuracy on {report['test_images']} held-out test digits (mean +- std over seeds):",
        f"  {'training data':<36} {'accuracy':>16}",
    ]
    names = {
        "real": f"real ({report['real_images']})",
        "real+synthetic": f"real + synthetic ({report['real_images']} + {report['n_synthetic']})",
        "synthetic": f"synthetic only ({report['n_synthetic']})",
        "all_real": f"all real training images ({report['train_split_images']})",
    }
    for arm, name in names.items():
        lines.append(f"  {name:<36} {100 * acc[arm]['mean']:>8.1f}% +- {100 * acc[arm]['std']:.1f}")
    lines.append(
        f"gain from synthetic data: {100 * gain['mean']:+.1f} points +- {100 * gain['std']:.1f} (paired by seed)"
    )
    lines.append(
        f"sampling {report['sampling_s']:.0f} s, total {report['wall_s']:.0f} s on {report['threads']} thread(s)"
    )
    lines.append(f"wrote {report['written']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_command("genlab-augment", __doc__, OPTIONS, lambda a, o: table(augment(a, o)), argv)


if __name__ == "__main__":
    sys.exit(main())
