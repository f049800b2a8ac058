"""What the application commands share: key=value options, the families the configs declare, AUROC,
a seeded classifier, the report file."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import roc_auc_score

from genlab.config import EXPERIMENT, GROUPS, choices_of, config_dir, load_group_file
from genlab.errors import ConfigError, GenlabError
from genlab.instantiate import locate
from genlab.metrics import train_classifier
from genlab.metrics.features import CLASSIFIER_RECIPE
from genlab.nets.classifier import ConvClassifier


def parse_options(
    argv: list[str], options: dict[str, tuple[type, str]], command: str, overrides: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """`key=value` tokens (or `--key=value`) into typed options; with `overrides`, dotted keys
    (`trainer.max_epochs=5`) and config group choices (`trainer=gpu`) are returned apart, as
    genlab.train overrides. A bare first token is `run`."""
    args: dict[str, Any] = {}
    rest: list[str] = []
    for token in argv:
        key, eq, text = token.lstrip("-").partition("=")
        bare = not eq or Path(token).exists()  # a checkpoint named best-epoch=012-step=...ckpt is a path
        if bare and "run" in options and "run" not in args:
            key, text = "run", token
        elif bare:
            raise ConfigError(f"cannot read '{token}': write key=value (options: {', '.join(options)})")
        if key not in options:
            if overrides and ("." in key or key in (*GROUPS, EXPERIMENT)):
                rest.append(token.lstrip("-"))
                continue
            extra = "; or a dotted config override such as trainer.max_epochs=5" if overrides else ""
            raise ConfigError(f"unknown option '{key}': the options are {', '.join(options)}{extra}")
        kind = options[key][0]
        try:
            args[key] = kind(text) if text != "" else None
        except ValueError:
            raise ConfigError(f"{key}: expected {kind.__name__}, got '{text}'") from None
    return args, rest


def option(args: dict[str, Any], key: str, default: Any) -> Any:
    return default if args.get(key) is None else args[key]


def model_families() -> dict[str, tuple[type, type | None]]:
    """{family: (its module class, its default data module class or None)} for every
    `configs/model/*.yaml` (of `GENLAB_CONFIG_DIR` when set): what the apps offer is derived from
    these, so a new family needs no edit here. Read from the files, not composed, so that a config
    with a required value (gpt_feedback's model.init_from) still counts."""
    root, families = config_dir(), {}
    for name in choices_of("model", root):
        body, selections = load_group_file("model", name, root)
        data = next((entry["data"] for entry in selections if "data" in entry), None)
        data_class = locate(load_group_file("data", data, root)[0]["_target_"]) if data else None
        families[name] = (locate(body["_target_"]), data_class)
    return families


def refuse_trained_run(run_dir: Path, resume: str | None, score_it: str) -> None:
    """A command that trains into a fixed run folder, run again: `genlab.train` would refuse with
    advice in its own options, so refuse here, before any work, with this command's (`score_it`: the
    option that scores the trained run)."""
    if not resume and (run_dir / "checkpoints" / "last.ckpt").exists():
        raise ConfigError(
            f"run folder {run_dir} already holds a run this command trained: score it with {score_it}, "
            "continue its training with resume=auto, or train a new one with log_dir=<another folder>"
        )


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Area under the ROC curve for "`positive` scores higher than `negative`": the probability that a
    random positive outranks a random negative (ties count half); 0.5 is chance, 1 perfect. sklearn's."""
    scores = torch.cat([positive.flatten(), negative.flatten()]).double().numpy()
    truth = [1] * positive.numel() + [0] * negative.numel()
    return float(roc_auc_score(truth, scores))


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and the values themselves."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def fit_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int, seed: int):
    """The metrics' `ConvClassifier` (same net and recipe as the FID features), seeded by `seed` and
    trained for `steps` optimizer steps on `images` `(N, C, H, W)` in [-1, 1]: one per arm and seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ConvClassifier(
            images.shape[1],
            num_classes,
            images.shape[-1],
            CLASSIFIER_RECIPE["hidden_channels"],
            CLASSIFIER_RECIPE["num_features"],
        )
    train_classifier(net, images, labels, steps=steps, seed=seed)
    return net


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def run_command(
    command: str,
    doc: str,
    options: dict[str, tuple[type, str]],
    body: Callable[..., str],
    argv: list[str] | None,
    overrides: bool = False,
) -> int:
    """The shared `main`: help, one-line errors (exit 2), otherwise the table `body(args, overrides)`
    returns, printed (`overrides`: dotted config overrides for genlab.train are accepted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        listed = "\n".join(f"  {k:<14} {h}" for k, (_, h) in options.items())
        print(f"{doc.strip()}\n\noptions (key=value):\n{listed}")
        return 0
    try:
        print(body(*parse_options(argv, options, command, overrides)))
    except GenlabError as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        return 2
    return 0
