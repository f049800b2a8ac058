"""The model card of an exported folder: README.md in the Hugging Face Hub's format (YAML front matter,
then Markdown), as diffusers' `save_model_card` writes it. Plain functions of the run config, the
folder's samples and the run's `make eval` report; the limitations are read off those figures.

    card(info) -> str        info: a CardInfo (what genlab.export gathered)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml

# What each family is, in one line, by its configs/model/<name>.yaml.
FAMILIES = {
    "vae": "a variational autoencoder (Kingma & Welling 2014): images decoded from a Gaussian latent",
    "flow": "a Glow-style normalizing flow (Kingma & Dhariwal 2018): exact likelihood, invertible",
    "diffusion": "a denoising diffusion model (DDPM training, Ho et al. 2020; DDIM sampling)",
    "flow_matching": "a flow-matching model (rectified flow: straight paths from noise to data, Euler/Heun sampling)",
    "gan": "a DCGAN-style GAN with an EMA generator",
    "gpt": "a decoder-only transformer language model (nanoGPT-style)",
    "gpt_feedback": "a GPT fine-tuned toward a reward (GRPO/DPO) from a base GPT run",
    "autoencoder": "a first-stage autoencoder (LDM, Rombach et al. 2022): images to latents and back",
}
# Hub data set ids where one exists (the `datasets:` field links to them); others keep genlab's name.
HUB_DATASETS = {"mnist": "ylecun/mnist", "mnist5k": "ylecun/mnist"}


@dataclass
class CardInfo:
    folder_name: str
    model_class: str  # e.g. DiffusionModule
    config: dict[str, Any]  # the folder's config.yaml (model, data, seed, groups, genlab)
    run_config: dict[str, Any]  # the run's whole resolved config (trainer, ...)
    parameters: int
    samples: str  # Markdown: the grid image or the texts
    samples_note: str  # how they were drawn (N, seed)
    report: dict[str, Any] | None  # the run's eval.json, if any
    run: str  # where the run was
    license: str = "other"
    is_text: bool = False
    vocab_size: int | None = None
    extra_tags: list[str] = field(default_factory=list)


def family_name(info: CardInfo) -> str:
    target = str(info.config["model"].get("_target_", ""))
    groups = info.config.get("groups") or {}
    return str(groups.get("model") or target.rsplit(".", 1)[-1].removesuffix("Module").lower())


def data_name(info: CardInfo) -> str:
    groups = info.config.get("groups") or {}
    target = str(info.config.get("data", {}).get("_target_", "data"))
    return str(groups.get("data") or target.rsplit(".", 1)[-1].removesuffix("DataModule").lower())


def front_matter(info: CardInfo) -> str:
    composed = info.config["model"].get("first_stage") is not None
    tags = ["genlab", "pytorch", "lightning", "safetensors", family_name(info)]
    tags += ["text-generation"] if info.is_text else ["image-generation"]
    tags += ["latent-diffusion"] if composed else []
    meta: dict[str, Any] = {
        "library_name": "genlab",
        "license": info.license,
        "tags": tags + info.extra_tags,
        "datasets": [HUB_DATASETS.get(data_name(info), data_name(info))],
        "pipeline_tag": "text-generation" if info.is_text else "unconditional-image-generation",
    }
    if info.license == "other":
        meta["license_name"] = "see-card"  # the Hub asks a name for "other": the data's terms, below
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def what_it_is(info: CardInfo) -> str:
    model, data = info.config["model"], info.config.get("data", {})
    what = FAMILIES.get(family_name(info), info.model_class)
    lines = [f"{what[0].upper()}{what[1:]}, trained with genlab on `{data_name(info)}`."]
    net = next((model[k] for k in ("net", "generator", "flow", "encoder") if isinstance(model.get(k), dict)), None)
    if net is not None:
        lines.append(
            f"Network: `{net.get('_target_', '?').rsplit('.', 1)[-1]}`, {info.parameters:,} parameters in all."
        )
    if not info.is_text and data.get("image_size"):
        lines.append(
            f"Output: {data.get('channels', '?')}x{data['image_size']}x{data['image_size']} images in [-1, 1]."
        )
    if info.is_text and data.get("tokenizer"):
        vocab = f", {info.vocab_size} ids" if info.vocab_size else ""
        context = data.get("block_size")
        lines.append(f"Tokenizer: {data['tokenizer']}{vocab} (tokenizer.json); context {context} tokens.")
    if model.get("first_stage") is not None:
        lines.append(
            "Composed: the generator runs in the latent space of a frozen first-stage autoencoder whose "
            "weights are in this folder too (`first_stage.*` in model.safetensors)."
        )
    if info.config["genlab"].get("ema"):
        lines.append("The weights are the exponential moving average (EMA) the family samples from.")
    classes = data.get("num_classes")
    conditional = (net or {}).get("conditioning") or model.get("num_classes")
    if classes and conditional:
        lines.append(f"Class-conditional: `sample(n, labels=...)` with labels 0..{int(classes) - 1}.")
    return " ".join(lines)


def usage(info: CardInfo) -> str:
    text_call = 'model.generate("The ", max_new_tokens=200)  # a string'
    call = text_call if info.is_text else "model.sample(16)  # (16, C, H, W) in [-1, 1]"
    return (
        "```python\nimport genlab\n\n"
        f'model = genlab.load_model("{info.folder_name}")  # safetensors + config.yaml: no pickle\n'
        f"{call}\n```\n\n"
        f"or `make sample RUN={info.folder_name} N=64 SEED=0` (and `make eval RUN={info.folder_name}` where the "
        "data is at hand). Needs genlab installed (`pip install -e .` in a clone)."
    )


def training(info: CardInfo) -> str:
    groups, trainer = info.run_config.get("groups") or {}, info.run_config.get("trainer") or {}
    chosen = [g for g in ("model", "experiment", "data", "trainer") if groups.get(g) not in (None, "default")]
    parts = ["python -m genlab.train", *(f"{g}={groups[g]}" for g in chosen)]
    for key in ("max_steps", "max_epochs"):
        value = trainer.get(key)
        if value is not None and value != -1:
            parts.append(f"trainer.{key}={value}")
    first_stage = info.run_config.get("model", {}).get("first_stage")
    if first_stage is not None:  # the run folder's config names the autoencoder run; a checkpoint's, its node
        parts.append(f"model.first_stage={first_stage if isinstance(first_stage, str) else '<autoencoder run>'}")
    trained = info.config["genlab"].get("trained", {})
    data = info.config.get("data", {})
    lines = [
        f"    {' '.join(parts)} seed={info.config.get('seed')}",
        "",
        f"Trained for {trained.get('global_step')} optimizer steps (epoch index {trained.get('epoch')} at the end), "
        f"batch size {data.get('batch_size', '?')}, seed {info.config.get('seed')}, from the run `{info.run}`. "
        "The command lists the run's chosen config files and length; every other value it was given is in "
        "the run's own config.yaml, and this folder's config.yaml holds the model: and data: sections it resolved to.",
    ]
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def evaluation(info: CardInfo) -> str:
    report = info.report
    if report is None:
        return (
            f"No evaluation report was in the run folder. `make eval RUN={info.folder_name}` (or on the run) writes "
            "eval.json: the family's test-split figures and, for images, FID/KID, precision/recall/density/"
            "coverage and memorisation of N=1000 samples (seed 0); export again to put them here."
        )
    metrics = report["metrics"]
    head = f"`make eval` (seed {report.get('seed')}"
    head += f", N={report['n']} samples" if "n" in report else ""
    head += f"; features: {report['features']}" if "features" in report else ""
    head += f"; the family's figures on the {report.get('split', '?')} split):"
    held_out = f" ({int(metrics['real_test/n'])})" if "real_test/n" in metrics else ""
    rows = [f"| metric | value | held-out real images{held_out} |", "|---|---|---|"]
    for key, value in metrics.items():
        if key.startswith(("real_test/", "accuracy/")) or key in ("n", "seed", "near_copy_threshold"):
            continue
        floor = metrics.get(f"real_test/{key}")
        rows.append(f"| {key} | {_fmt(value)} | {_fmt(floor) if floor is not None else ''} |")
    note = (
        "\n\nThe held-out column scores the real test images the same way: the floor a model that "
        "generalises perfectly reaches at that N (FID is biased in N: compare figures at one N)."
        if "real_test/n" in metrics
        else ""
    )
    return head + "\n\n" + "\n".join(rows) + note


def limitations(info: CardInfo) -> list[str]:
    """Statements read off the figures (and the training length), worst first."""
    out = []
    data = data_name(info)
    report = info.report or {}
    metrics = report.get("metrics", {})
    n = report.get("n")
    if (near := metrics.get("near_copies")) is not None:
        if near > 0:
            out.append(
                f"Memorisation: {100 * near:.1f}% of {n} samples are near-copies of a training image (closer than "
                f"{metrics.get('near_copy_threshold', float('nan')):.3g} RMS in [-1, 1] pixels, which no two "
                f"training images are): do not use it where reproducing training data matters."
            )
        else:
            out.append(f"Memorisation: none of {n} samples is a near-copy of a training image.")
    if (ratio := metrics.get("nn_dist_ratio")) is not None:
        if ratio < 0.8:
            out.append(
                f"Samples sit closer to their nearest training image than real images do (nn_dist_ratio "
                f"{ratio:.2f}; about 1 for fresh data): they hug the training set."
            )
        elif ratio > 1.5:
            out.append(
                f"Samples are far from every training image (nn_dist_ratio {ratio:.2f}): "
                "more likely noisy or off the data than novel."
            )
    if (fid := metrics.get("fid")) is not None:
        floor = metrics.get("real_test/fid")
        line = f"Fidelity: FID {fid:.3g} (N={n})"
        if floor:  # graded by how far above the held-out real images' FID it is
            ratio = fid / max(floor, 1e-9)
            verdict = (
                "close to real data in these features"
                if ratio < 2
                else "visibly short of real data"
                if ratio < 20
                else "easy to tell from real data; treat samples as rough drafts"
            )
            line += f", {ratio:.1f} times that of held-out real images ({floor:.3g}): {verdict}"
        out.append(line + ".")
    if (precision := metrics.get("precision")) is not None:
        floor = metrics.get("real_test/precision")
        if floor is not None and precision < 0.7 * floor:
            out.append(
                f"Off the data: precision {precision:.2f} against {floor:.2f} for real images: most samples fall "
                "outside what the data looks like."
            )
    if (recall := metrics.get("recall")) is not None:
        floor = metrics.get("real_test/recall")
        if floor is not None and recall < 0.7 * floor:
            out.append(
                f"Diversity: recall {recall:.2f} against {floor:.2f} for real images: it covers only part of the "
                "data (mode dropping, the small-scale form of bias: some kinds of images are under-produced)."
            )
    if (balance := report.get("class_balance")) is not None:  # unconditional image models (make eval)
        floor = metrics.get("real_test/class_tv")
        line = (
            f"Class balance: the classifier's labels over the samples are {balance['tv']:.2f} in total variation "
            f"from the data's"
            + (f" ({floor:.2f} between training and test images)" if floor is not None else "")
            + f"; least generated: class {balance['least_generated']} "
            f"({100 * balance['least_generated_share']:.1f}% of samples, "
            f"{100 * balance['least_generated_data_share']:.1f}% of the data)"
        )
        if balance.get("missing"):
            line += f"; never generated: {', '.join(str(c) for c in balance['missing'])}"
        out.append(line + ". Under-produced classes are the small-scale form of bias.")
    per_label = {k.split("/")[1]: v for k, v in metrics.items() if k.startswith("accuracy/")}
    if per_label:
        worst = min(per_label, key=per_label.get)
        out.append(
            f"Conditioning: the classifier agrees with the requested label for {100 * metrics['accuracy']:.0f}% of "
            f"samples, least for label {worst} ({100 * per_label[worst]:.0f}%)."
        )
    for key, value in metrics.items():  # text: bits per character of held-out text (English: ~1 for good models)
        if key.endswith("/bpc"):
            quality = "expect misspelt, incoherent text" if value > 2.5 else "locally fluent text, no facts to rely on"
            out.append(f"Text: {value:.3g} bits per character on the {key.split('/')[0]} split: {quality}.")
    if not report:
        out.append(
            "Not evaluated: no eval.json in the run folder, so nothing here says how good or how novel its "
            f"samples are. Run `make eval RUN={info.folder_name}` before relying on it."
        )
    trained = info.config["genlab"].get("trained", {})
    steps = trained.get("global_step") or 0
    if steps < 1000:
        out.append(
            f"Short training: {steps} optimizer steps; a demonstration or a starting point, not a finished model."
        )
    out.append(
        f"Scope: it makes {'text like' if info.is_text else 'images like'} `{data}` and nothing else; it inherits "
        "that data's content, biases and licence terms. Generated output should be labelled as generated."
    )
    return out


def card(info: CardInfo) -> str:
    title = f"{family_name(info)} on {data_name(info)} (genlab)"
    sections = [
        front_matter(info),
        f"# {title}\n\n{what_it_is(info)}",
        f"## How to use\n\n{usage(info)}",
        f"## Samples\n\n{info.samples}\n\n{info.samples_note}",
        f"## Training\n\n{training(info)}",
        f"## Evaluation\n\n{evaluation(info)}",
        "## Intended use and limitations\n\n"
        "Intended for research and teaching on generative models at small scale.\n\n"
        + "\n".join(f"- {line}" for line in limitations(info)),
        "## Files\n\n"
        "- `model.safetensors`: the weights (EMA where the family keeps one)\n"
        "- `config.yaml`: the model: and data: config that rebuilds the nets\n"
        + ("- `tokenizer.json`: the tokenizer\n" if info.is_text else "")
        + ("- `samples.png`: the grid above\n" if not info.is_text else "")
        + ("- `eval.json`: the run's `make eval` report\n" if info.report else ""),
    ]
    return "\n\n".join(s.strip("\n") for s in sections) + "\n"
