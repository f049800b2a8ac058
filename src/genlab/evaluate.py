"""Score a trained model: `eval.json` in its run folder and a table on the terminal.

    python -m genlab.evaluate logs/vae/<run> n=1000 seed=0       # or: genlab-eval ..., make eval RUN=...

Two parts, each where it applies (the family contract, nothing family-specific):
- the family's own validation figures (`val/...`: loss, nll, bits/dim, bits/char, perplexity) computed
  on the whole TEST split by running its `validation_step` there (text data has no test split: then the
  validation text, said so), whatever `trainer.limit_val_batches` the run trained with;
- for data with a domain score (`score(samples, split)`: code, music, molecules), that score of `n` seeded
  samples, as `<split>/<key>`;
- for image families, `genlab.metrics.image_metrics` of `n` seeded samples against the training
  images (FID, KID, precision/recall/density/coverage, memorisation, per-label accuracy when
  conditional and the features have a classifier head: not Inception's), beside the same figures
  for the held-out test images (`real_test/...`: the floor). Too few samples or test images (100) are
  refused before any work;
- for unconditional image models whose features have a classifier head, the class balance: the
  classifier's labels over the samples vs over the test images (`class_tv`, the total variation
  distance between the two distributions, beside the same for the training images: the noise floor
  of so few test images; and the least-generated class with its share). Mode
  dropping is the small-scale form of bias: a model that never draws a 7 has TV >= 0.1 on digits.
- for text-to-image runs (data=captioned_digits), the image figures of `n` scenes drawn for the test
  split's captions (in a feature space of the digit classifier on the scene's cells), and their prompt
  alignment (`genlab.metrics.alignment`: identity, count, position, exact caption) on those captions,
  apart for seen and held-out compositions (N per group), beside the real test scenes' own scores. `run=
  retrieval` scores the retrieval baseline (`genlab.baselines`) on the same prompts, without a run, and
  `captions=1` a class-conditional digit run through `LabelConditionedView` on the captions a label expresses.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from genlab.apps.common import write_report
from genlab.data.captioned_digits import CaptionedDigitsDataModule
from genlab.data.images import ImageDataModule
from genlab.errors import ConfigError, GenlabError
from genlab.instantiate import instantiate
from genlab.metrics import check_count, has_classifier_head, image_metrics, make_features, split_tensors
from genlab.metrics.image import NO_CLASSIFIER_HEAD, TEST_ADVICE, extract, fid_kid
from genlab.sample import load, run_dir_of
from genlab.sampling import BATCH_SIZE, accepts, check_options, class_labels, draw, is_conditional, num_classes

OPTIONS: dict[str, tuple[type, str]] = {
    "run": (
        str,
        "run folder (its checkpoints/last.ckpt), a .ckpt file or an exported model folder; "
        "retrieval: the text-to-image baseline",
    ),
    "n": (int, "samples scored by the image metrics (default 1000; at least 100)"),
    "seed": (int, "seed of the samples and of the family's stochastic figures (default 0)"),
    "batch_size": (int, f"samples drawn at once (default {BATCH_SIZE})"),
    "device": (str, "cpu, cuda, ... (default: cuda when available)"),
    "feature_extractor_weights_path": (str, "Inception-v3 weights file: the standard FID features instead"),
    "cache_dir": (str, "where the feature classifier and real features are cached (default data)"),
    "out": (str, "the JSON file (default <run>/eval.json)"),
    "captions": (int, "1: a class-conditional digit run's alignment on the captions a label expresses (a large digit)"),
    "guidance": (float, "text-to-image: classifier-free guidance scale of the samples (default: the model's)"),
    "steps": (int, "text-to-image: sampling steps (default: the model's)"),
}

# What each figure is, for the table: which are exact, which bounds or estimates.
NOTES = {
    "loss": "the training objective (VAE: negative ELBO, a bound; GPT: cross-entropy, nats/token)",
    "nll": "-log p(x) in nats per image (VAE: importance-weighted estimate, an upper bound on average)",
    "bpd": "bits/dim from nll (exact for flows; VAE: from the importance-weighted bound)",
    "bpc": "bits per character of the decoded text: total bits / characters (exact: autoregressive)",
    "bpt": "bits per token, loss / ln 2 (equal to bpc for a char tokenizer)",
    "ppl": "perplexity, exp(loss)",
    "recon": "reconstruction -log p(x|z), nats per image",
    "kl": "KL(q(z|x) || p(z)), nats per image",
    "class_tv": "class balance: total variation between the classifier's labels on samples and on test images",
    "fid": "Frechet distance of the features to the training images (lower is better)",
    "rfid": "reconstruction FID: decode(encode(x)) of the test images vs those images (a first stage's floor)",
    "kid": "kernel distance (unbiased, can be < 0; kid_std over 10 subsets)",
    "precision": "fraction of samples on the real data's manifold (fidelity)",
    "recall": "fraction of real images on the samples' manifold (diversity)",
    "density": "precision counting overlaps (about 1 for real data, unbounded)",
    "coverage": "fraction of real images with a sample nearby (diversity)",
    "nn_dist": "median RMS pixel distance to the nearest training image",
    "nn_dist_ratio": "nn_dist / the same for training images (about 1: as new as real data)",
    "near_copies": "fraction of samples nearer a training image than near_copy_threshold",
    "accuracy": "classifier agrees with the label the sample was generated for",
}


class SplitAsValidation(L.LightningDataModule):
    """A data module whose validation loader is another one's test loader: the family's own
    `validation_step` then scores the test split. Other attributes (tokenizer, num_classes) pass through."""

    def __init__(self, datamodule: L.LightningDataModule) -> None:
        super().__init__()
        self.datamodule = datamodule
        has_test = type(datamodule).test_dataloader is not L.LightningDataModule.test_dataloader
        self.split = "test" if has_test else "val"

    def __getattr__(self, name: str) -> Any:
        if name == "datamodule":
            raise AttributeError(name)
        return getattr(self.datamodule, name)

    def setup(self, stage: str) -> None:
        self.datamodule.setup("fit" if self.split == "val" else stage)

    def val_dataloader(self) -> Any:
        return self.datamodule.test_dataloader() if self.split == "test" else self.datamodule.val_dataloader()


def family_figures(
    model: L.LightningModule, datamodule: L.LightningDataModule, config: dict[str, Any], seed: int
) -> tuple[dict[str, float], str]:
    """The family's `val/...` figures on the WHOLE test split (or validation, for data without one),
    renamed `<split>/...`; and the split's name. The model is left on its device, in eval mode."""
    data = SplitAsValidation(datamodule)
    device = model.device
    # Not the run's trainer.limit_val_batches: that made training's validation cheap (trainer=debug: 2
    # batches), while a reported test figure covers every test image (text: every window, in order).
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # no "GPU available: ..." banner; restored below, so a later
    try:  # train() in this process (make results, the apps) still says its run folder and threads
        trainer = L.Trainer(
            accelerator=device.type,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=1.0,
        )
        L.seed_everything(seed, verbose=False)  # the VAE's importance samples are random
        (logged,) = trainer.validate(model, datamodule=data, verbose=False)
    finally:
        lightning_log.setLevel(level)
    model.to(device)  # validate()'s teardown moved the module to the CPU: sample and score where asked
    model.eval()  # validate() leaves the module in train mode
    return {f"{data.split}/{key.removeprefix('val/')}": float(v) for key, v in logged.items()}, data.split


def check_test_split(datamodule: ImageDataModule) -> torch.Tensor:
    """The test images `(N, C, H, W)`, refused before any work when too few for the held-out
    figures (the cause is the run's split, not the number of samples)."""
    real_test = split_tensors(datamodule, "test")[0]
    fraction = getattr(datamodule, "test_fraction", None)
    split = "the run's test split" + (f", data.test_fraction={fraction}" if fraction is not None else "")
    check_count(len(real_test), f"test images ({split})", advice=TEST_ADVICE)
    return real_test


@torch.no_grad()
def class_balance(features: torch.nn.Module, samples: torch.Tensor, real: torch.Tensor) -> dict[str, Any]:
    """The feature classifier's labels over `samples` vs over `real` images: their distributions, the
    total variation distance 0.5 * sum |p - q| (0: the same class mix, 1: disjoint), the least-generated
    class (lowest sample share; ties: the one the data has most of) and the classes never drawn."""
    device = next(features.parameters()).device

    def shares(images: torch.Tensor) -> torch.Tensor:
        labels = torch.cat([features.logits(x.to(device)).argmax(1).cpu() for x in images.split(BATCH_SIZE)])
        return torch.bincount(labels, minlength=features.num_classes).double() / len(labels)

    p, q = shares(samples), shares(real)
    least = min(range(len(p)), key=lambda c: (p[c].item(), -q[c].item()))
    return {
        "tv": 0.5 * (p - q).abs().sum().item(),
        "least_generated": least,
        "least_generated_share": p[least].item(),
        "least_generated_data_share": q[least].item(),
        "missing": [c for c in range(len(p)) if p[c] == 0 and q[c] > 0],
        "samples": p.tolist(),
        "data": q.tolist(),
    }


@torch.no_grad()
def reconstruction_figures(
    model: L.LightningModule, features: torch.nn.Module, real_test: torch.Tensor, seed: int, batch_size: int
) -> dict[str, float]:
    """rFID (Esser et al. 2021; Rombach et al. 2022, tab. 8): the FID of `reconstruct(x)` of the test images
    against those images, in the project's feature space, and `test/rec_mse`, their mean squared error per
    pixel in [-1, 1] units. A first stage's rFID bounds what any generator in its latents can reach."""
    recon = torch.cat([model.reconstruct(x.to(model.device)).float().cpu() for x in real_test.split(batch_size)])
    fid = fid_kid(extract(features, real_test), extract(features, recon), seed)["fid"]
    return {"rfid": fid, "test/rec_mse": float((recon - real_test.float()).square().mean())}


def draw_for_prompts(sampler: Any, prompts: list[str], seed: int, batch_size: int, **options: Any) -> torch.Tensor:
    """Scenes `(len(prompts), C, S, S)` on the CPU, one per prompt, from one RNG stream seeded with `seed`,
    `batch_size` at a time: any object with `sample(n, prompts=..., guidance=..., steps=...)` (a model or a
    baseline). Options left None are not passed (the sampler's defaults)."""
    options = {k: v for k, v in options.items() if v is not None}
    name = type(sampler).__name__
    if "prompts" not in accepts(sampler.sample):
        raise ConfigError(
            f"{name} cannot draw from captions (its sample() takes no prompts=): score a text-to-image run, "
            "one trained with a text encoder on data=captioned_digits"
        )
    check_options(sampler.sample, name, options)
    was_training = getattr(sampler, "training", None)
    if was_training is not None:
        sampler.eval()
    device = getattr(sampler, "device", torch.device("cpu"))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        parts = [
            sampler.sample(len(prompts[i : i + batch_size]), prompts=prompts[i : i + batch_size], **options)
            for i in range(0, len(prompts), batch_size)
        ]
    if was_training is not None:
        sampler.train(was_training)
    samples = torch.cat(parts).float().cpu()
    if samples.dim() != 4 or len(samples) != len(prompts):
        raise ConfigError(f"{name}.sample(prompts=...) returned shape {tuple(samples.shape)}, not one scene a prompt")
    return samples


def text_to_image_figures(
    sampler: Any, datamodule: CaptionedDigitsDataModule, n: int, seed: int, args: dict[str, Any]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Image figures and prompt alignment of `n` scenes drawn for the first `n` captions of the test split
    (the fixed prompt set: fixed by the data's seed), beside the real test scenes' own alignment (the
    checker's floor, `real_test/align_...`). Returns the metrics and what the report says about them."""
    from genlab.metrics.alignment import NOTES as ALIGN_NOTES
    from genlab.metrics.alignment import SceneFeatures, alignment_checker, summarise

    cache_dir = args.get("cache_dir") or "data"
    datamodule.setup("fit")
    test = datamodule.scenes["test"]
    if n > len(test):
        raise ConfigError(f"n={n} is more than the {len(test)} test captions (data.test_scenes): lower n")
    scenes = test[:n]
    prompts, comps = [s.caption for s in scenes], [s.composition for s in scenes]
    heldout = [datamodule.is_heldout(c) for c in comps]
    checker = alignment_checker(
        datamodule.image_size,
        datamodule.seed,
        cache_dir,
        val_fraction=datamodule.val_fraction,
        test_fraction=datamodule.test_fraction,
    )
    device = getattr(sampler, "device", torch.device("cpu"))
    checker.to(device)
    samples = draw_for_prompts(
        sampler,
        prompts,
        seed,
        args.get("batch_size") or BATCH_SIZE,
        guidance=args.get("guidance"),
        steps=args.get("steps"),
    )
    # Distinct training scenes only: a digit image drawn into the same place twice makes exact duplicates,
    # which set the memorisation threshold (the real images' 1st-percentile distance to another one) to 0.
    real_train = torch.unique(split_tensors(datamodule, "train")[0], dim=0)
    real_test = split_tensors(datamodule, "test")[0]
    weights = args.get("feature_extractor_weights_path")
    features = make_features(datamodule, weights, cache_dir) if weights else SceneFeatures(checker)
    features.to(device)
    metrics = image_metrics(samples, real_train, real_test, None, features=features, seed=seed, cache_dir=cache_dir)
    metrics |= summarise(comps, checker.score(samples, comps), heldout)
    real = summarise(comps, checker.score(real_test[:n], comps), heldout)
    metrics |= {f"real_test/{key}": value for key, value in real.items()}
    accuracy = 100 * checker.classifier.test_accuracy
    report = {
        "n": n,
        "features": "Inception-v3 pool3 (2048-d)"
        if weights
        else (f"the digit classifier's features of the 4 cells and the whole view ({features.num_features}-d)"),
        "alignment": (
            f"checker: mnist5k classifier at {checker.half}px (test accuracy {accuracy:.1f}%) on the cells; "
            f"prompts: the first {n} test captions, {sum(heldout)} of them held-out compositions"
        ),
        "options": {k: args.get(k) for k in ("guidance", "steps") if args.get(k) is not None},
    }
    return metrics, {**report, "notes": ALIGN_NOTES}


def evaluate_retrieval(args: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    """`run=retrieval`: the retrieval baseline on data=captioned_digits (its config's defaults and `seed`;
    `args["data_overrides"]`, e.g. ["data.train_scenes=500"], from Python only: tests keep it small)."""
    from genlab.baselines import RetrievalBaseline
    from genlab.config import compose

    datamodule = instantiate(
        compose(["data=captioned_digits", f"seed={seed}", *args.get("data_overrides", ())]).data, "data"
    )
    metrics, extra = text_to_image_figures(RetrievalBaseline(datamodule), datamodule, n, seed, args)
    notes = extra.pop("notes")
    report = {"checkpoint": "none (a baseline)", "model": "RetrievalBaseline", "seed": seed, "split": "test"}
    report |= extra | {"metrics": metrics, "notes": {**NOTES, **notes}}
    out = Path(args.get("out") or Path("logs") / "baselines" / "retrieval" / "eval.json")
    report["written"] = str(write_report(report, out))  # the apps' writer: one JSON format
    return report


def evaluate_label_view(model: Any, ckpt: Path, config: dict[str, Any], args: dict[str, Any], seed: int) -> dict:
    """`captions=1` on a class-conditional digit run: the label-conditioned row of the alignment table.
    A label expresses only one large digit ("a seven"): those test captions of data=captioned_digits
    (seed of the run) are drawn through `LabelConditionedView` and checked; the share of all test captions
    it can express is reported beside."""
    from genlab.baselines import LabelConditionedView
    from genlab.config import compose
    from genlab.metrics.alignment import NOTES as ALIGN_NOTES
    from genlab.metrics.alignment import alignment_checker, summarise

    if not is_conditional(model) or num_classes(model, config) != 10:
        raise ConfigError("captions=1: the run is not a class-conditional model of the 10 digits (model.num_classes)")
    overrides = [f"seed={config.get('seed', 0)}", *args.get("data_overrides", ())]
    datamodule = instantiate(compose(["data=captioned_digits", *overrides]).data, "data")
    datamodule.setup("fit")
    view = LabelConditionedView(model, datamodule.image_size)
    test = datamodule.scenes["test"]
    chosen = [s for s in test if view.expressible(s.caption)]
    if args.get("n") is not None:
        chosen = chosen[: args["n"]]
    comps = [s.composition for s in chosen]
    checker = alignment_checker(
        datamodule.image_size,
        datamodule.seed,
        args.get("cache_dir") or "data",
        val_fraction=datamodule.val_fraction,
        test_fraction=datamodule.test_fraction,
    )
    images = draw_for_prompts(
        view,
        [s.caption for s in chosen],
        seed,
        args.get("batch_size") or BATCH_SIZE,
        guidance=args.get("guidance"),
        steps=args.get("steps"),
    )
    metrics = summarise(comps, checker.score(images, comps), [False] * len(comps))
    metrics["align/expressible"] = len([s for s in test if view.expressible(s.caption)]) / len(test)
    report = {
        "checkpoint": str(ckpt),
        "model": f"LabelConditionedView({type(model).__name__})",
        "seed": seed,
        "split": "test",
        "n": len(chosen),
        "metrics": metrics,
        "alignment": f"the {len(chosen)} test captions a class label expresses (one large digit)",
        "notes": {**NOTES, **ALIGN_NOTES, "expressible": "share of the test captions a label can express"},
    }
    out = Path(args.get("out") or run_dir_of(ckpt) / "eval_captions.json")
    report["written"] = str(write_report(report, out))  # the apps' writer: one JSON format
    return report


def evaluate(args: dict[str, Any]) -> dict[str, Any]:
    """Score the run; returns what eval.json holds."""
    n = 1000 if args.get("n") is None else args["n"]
    seed = 0 if args.get("seed") is None else args["seed"]
    if args["run"] == "retrieval":
        check_count(n, "samples (n=)")
        return evaluate_retrieval(args, n, seed)
    model, ckpt, config = load(args["run"], args.get("device"))
    if args.get("captions"):
        return evaluate_label_view(model, ckpt, config, args, seed)
    datamodule = instantiate(config["data"])
    report: dict[str, Any] = {"checkpoint": str(ckpt), "model": type(model).__name__, "seed": seed}
    if isinstance(datamodule, ImageDataModule):  # refusals that need no work come first
        check_count(n, "samples (n=)")
        real_test = check_test_split(datamodule)
    metrics, split = family_figures(model, datamodule, config, seed)
    report["split"] = split
    if isinstance(datamodule, CaptionedDigitsDataModule):  # text-to-image: scenes for captions, and alignment
        scores, extra = text_to_image_figures(model, datamodule, n, seed, args)
        metrics |= scores
        report |= {k: v for k, v in extra.items() if k != "notes"}
        report["notes"] = extra["notes"]
    elif isinstance(datamodule, ImageDataModule):  # image data: score samples too
        cache_dir = args.get("cache_dir") or "data"
        features = make_features(datamodule, args.get("feature_extractor_weights_path"), cache_dir)
        features.to(model.device)
        labels = class_labels(n, num_classes(model, config), None) if is_conditional(model) else None
        samples = draw(model, n, seed, labels, args.get("batch_size") or BATCH_SIZE)
        if not isinstance(samples, torch.Tensor):
            raise ConfigError(f"{type(model).__name__}.sample() returned {type(samples).__name__}, not images")
        real_train = split_tensors(datamodule, "train")[0]
        scores = image_metrics(
            samples, real_train, real_test, labels, features=features, seed=seed, cache_dir=cache_dir
        )
        metrics |= scores
        report["n"] = n
        report["features"] = (
            f"classifier on the training split ({features.num_features}-d, test accuracy "
            f"{100 * features.test_accuracy:.1f}%)"
            if hasattr(features, "test_accuracy")
            else "Inception-v3 pool3 (2048-d)"
        )
        if hasattr(model, "reconstruct"):  # a first stage (model=autoencoder): how well it keeps the test images
            metrics |= reconstruction_figures(model, features, real_test, seed, args.get("batch_size") or BATCH_SIZE)
        if labels is not None and not has_classifier_head(features):
            report["skipped"] = NO_CLASSIFIER_HEAD
        if labels is None and has_classifier_head(features):  # conditional models: per-label accuracy instead
            report["class_balance"] = class_balance(features, samples, real_test)
            metrics["class_tv"] = report["class_balance"]["tv"]
            # the floor at this size: the training images' label mix vs the test images' (finite-N noise)
            metrics["real_test/class_tv"] = class_balance(features, real_train, real_test)["tv"]
    elif hasattr(datamodule, "score"):  # text-like data with a domain score (code, music, molecules)
        samples = draw(model, n, seed, None, args.get("batch_size") or BATCH_SIZE)
        metrics |= {
            f"{split}/{key}": float(value) for key, value in datamodule.score(list(samples), split=split).items()
        }
        report["n"] = n
    report["metrics"] = metrics
    report["notes"] = {
        **NOTES,
        **report.get("notes", {}),
        **getattr(model, "metric_notes", {}),
        **getattr(datamodule, "metric_notes", {}),
    }
    out = Path(args.get("out") or run_dir_of(ckpt) / "eval.json")
    report["written"] = str(write_report(report, out))  # the apps' writer: one JSON format
    return report


def table(report: dict[str, Any]) -> str:
    """The report as aligned rows: metric, value, (held-out test images' value), what it means."""
    metrics, notes = report["metrics"], report["notes"]
    lines = [f"{report['model']} from {report['checkpoint']}, seed {report['seed']}"]
    if "features" in report:
        lines.append(f"image metrics: N={report['n']} samples vs the training split; features: {report['features']}")
        lines.append(f"  real_test: the held-out test images ({int(metrics['real_test/n'])}) scored the same way")
    if "alignment" in report:
        lines.append(f"prompt alignment: {report['alignment']}; real_test: the real test scenes checked")
    lines.append(f"{'metric':<18} {'value':>10} {'real_test':>10}  note")
    for key, value in metrics.items():
        if key.startswith("real_test/") or key in ("n", "seed") or key.startswith("accuracy/"):
            continue
        name = key.split("/")[-1]
        floor = metrics.get(f"real_test/{key}")
        floor_text = f"{floor:>10.4g}" if floor is not None and math.isfinite(floor) else f"{'':>10}"
        lines.append(f"{key:<18} {value:>10.4g} {floor_text}  {notes.get(name, '')}")
    per_label = {k: v for k, v in metrics.items() if k.startswith("accuracy/")}
    if per_label:
        lines.append("per-label accuracy: " + ", ".join(f"{k.split('/')[1]}: {v:.2f}" for k, v in per_label.items()))
    if "class_balance" in report:
        balance = report["class_balance"]
        missing = f"; never drawn: {', '.join(map(str, balance['missing']))}" if balance["missing"] else ""
        lines.append(
            f"class balance: TV {balance['tv']:.3f} between the classifier's labels on the samples and on the "
            f"{int(metrics['real_test/n'])} test images; "
            f"least generated: class {balance['least_generated']} ({100 * balance['least_generated_share']:.1f}% "
            f"of samples, {100 * balance['least_generated_data_share']:.1f}% of the data){missing}"
        )
    if "skipped" in report:
        lines.append(report["skipped"])
    if report["split"] == "val":
        lines.append("(this data has no test split: the family's figures are on the validation split)")
    lines.append(f"wrote {report['written']}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> dict[str, Any]:
    from genlab.sample import parse_args as parse

    return parse(argv, OPTIONS, "genlab-eval")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or {"-h", "--help"} & set(argv):
        options = "\n".join(f"  {k:<31} {h}" for k, (_, h) in OPTIONS.items())
        print(f"usage: genlab-eval <run folder or .ckpt> [key=value ...]\n{options}")
        return 0 if argv else 2
    try:
        print(table(evaluate(parse_args(argv))))
    except GenlabError as err:
        print(f"genlab-eval: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
