"""Draw samples from a trained model: a PNG grid and the raw tensor, text for language models, or
an image folder to train on (synthetic data).

    python -m genlab.sample logs/vae/<run> n=64 seed=0           # or: genlab-sample ..., make sample RUN=...
    python -m genlab.sample logs/vae/<run> n=1000 export=data/synthetic
    python -m genlab.sample logs/gpt/<run> n=4 prompt="def " temperature=0.7
    python -m genlab.sample logs/diffusion/<run> n=16 prompt="a 3 above a 7" guidance=3   # text-to-image

The model is rebuilt from the checkpoint alone (`genlab.load_model`: its config travels inside it;
EMA weights are in the state_dict of families that keep them). The same command gives the same
samples: one seeded RNG stream, drawn in fixed batches of `batch_size` (`genlab.sampling.draw`).

Options reach the model only if its method takes them (the family contract):
    images:      sample(n, labels=<(n,) int64>, steps=<int>, guidance=<float>, temperature=<float>)
    text-to-image: sample(n, prompts=<n captions>, steps=<int>, guidance=<float>)
    text:        sample(n) or generate(prompt, max_new_tokens, temperature)
anything else is a one-line error naming what the family accepts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from genlab import model_folder, watermark
from genlab.errors import ConfigError, GenlabError
from genlab.instantiate import instantiate
from genlab.run import load_model, read_checkpoint
from genlab.sampling import (  # the seeded loop, below the commands (the metrics callback shares it)
    BATCH_SIZE,
    accepts,
    check_options,
    class_labels,
    draw,
    is_conditional,
    num_classes,
)

# Command-line options: type, help. The model-facing ones go to sample()/generate() by the same name
# ("label" as `labels`, one per sample).
OPTIONS: dict[str, tuple[type, str]] = {
    "run": (str, "run folder (its checkpoints/last.ckpt), a .ckpt file or an exported model folder"),
    "n": (int, "number of samples (default 64)"),
    "seed": (int, "seed of the sampling RNG (default 0)"),
    "label": (int, "conditional models: the class of every sample (default: classes in turn)"),
    "steps": (int, "sampling steps (diffusion, flows)"),
    "guidance": (float, "classifier-free guidance scale"),
    "prompt": (str, "text models: the start of every sample; text-to-image models: the caption to draw"),
    "prompts": (str, "text-to-image models: a file of captions, one grid per line"),
    "temperature": (float, "sampling temperature"),
    "length": (int, "text models: tokens to generate (default: the model's sample_length)"),
    "export": (str, "write an image folder here (one sub-folder per class for conditional models)"),
    "out": (str, "where the grid and raw samples go (default: <run>/samples/)"),
    "batch_size": (int, "samples drawn at once (default 500); part of what the seed reproduces"),
    "device": (str, "cpu, cuda, ... (default: cuda when available)"),
    "watermark": (watermark.boolean, "false: images without the invisible mark (default: the run's watermark key)"),
}
MODEL_OPTIONS = ("steps", "guidance", "temperature")


def resolve_checkpoint(run: str | Path) -> Path:
    """A run folder's `checkpoints/last.ckpt`, or the checkpoint itself (a file, FSDP's folder, or an
    exported model folder: `make export`)."""
    path = Path(run)
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.exists():
        raise ConfigError(f"run: no checkpoint at '{path}' (give a run folder with checkpoints/last.ckpt or a .ckpt)")
    return path


def run_dir_of(ckpt: Path) -> Path:
    """The run folder of `<run>/checkpoints/<file>`, an exported model folder itself, else the
    checkpoint's own folder."""
    if model_folder.is_model_folder(ckpt):
        return ckpt
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def checkpoint_config(path: Path) -> dict[str, Any]:
    """The resolved run config a genlab checkpoint carries (an exported folder: its config.yaml)."""
    if model_folder.is_model_folder(path):
        return model_folder.read_config(path)
    checkpoint = read_checkpoint(path)
    if "genlab" not in checkpoint:
        raise ConfigError(f"{path} is not a genlab checkpoint (no 'genlab' entry with its config)")
    return checkpoint["genlab"]["config"]


def load(run: str | Path, device: str | None = None) -> tuple[L.LightningModule, Path, dict[str, Any]]:
    """(model in eval mode on `device`, its checkpoint, its run config)."""
    path = resolve_checkpoint(run)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(path, map_location=device).to(device)
    return model, path, checkpoint_config(path)


@torch.no_grad()
def generate_text(model: L.LightningModule, n: int, seed: int, **options: Any) -> list[str]:
    """`n` texts from `generate(prompt, max_new_tokens, temperature)`, one seeded stream."""
    family = type(model).__name__.removesuffix("Module").lower()
    if not hasattr(model, "generate"):
        raise ConfigError(
            f"prompt: the {family} family has no generate() and this model no text encoder: it does not take a "
            "prompt (a text-to-image model trains with experiment=text_to_image); drop PROMPT"
        )
    hparams = model.hparams
    kwargs = {
        "prompt": options.pop("prompt", None) or hparams.get("sample_prompt", "\n"),
        "max_new_tokens": options.pop("length", None) or hparams.get("sample_length", 256),
    }
    kwargs |= {k: v for k, v in options.items() if v is not None}
    check_options(model.generate, family, kwargs)
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return [model.generate(**kwargs) for _ in range(n)]


def save_grid(images: torch.Tensor, path: Path, mark: bool = True) -> None:
    """The images as one PNG grid, with the invisible watermark unless `mark` is false (genlab.watermark)."""
    images = images.float().clamp(-1, 1)
    if images.shape[-1] < 32:  # tiny images: enlarge with sharp pixels so the grid is legible
        images = F.interpolate(images, scale_factor=-(-32 // images.shape[-1]), mode="nearest")
    grid = make_grid(images, nrow=max(1, int(len(images) ** 0.5)), normalize=True, value_range=(-1, 1), pad_value=1)
    watermark.save(watermark.pixels(grid), path, mark)


def export_folder(
    images: torch.Tensor, folder: Path, labels: torch.Tensor | None, classes: int, mark: bool = True
) -> list[Path]:
    """One PNG per image (8-bit, the data's size and channels; marked: RGB and at least
    `watermark.MIN_SIDE` pixels a side), under one sub-folder per class when labelled:
    `ImageFolderDataModule(path=folder)` reads them back, resized and converted to the data's size
    and channels (its classes sorted by folder name, hence the zero padding)."""
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"export: '{folder}' is not empty; give a new folder (nothing was overwritten)")
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (N, C, H, W)
    width = len(str(max(classes - 1, 0)))
    paths = []
    for i, image in enumerate(pixels):
        sub = folder / f"class_{int(labels[i]):0{width}d}" if labels is not None else folder
        sub.mkdir(parents=True, exist_ok=True)
        paths.append(sub / f"{i:06d}.png")
        watermark.save(image.permute(1, 2, 0).numpy(), paths[-1], mark)  # (H, W, C); unmarked grey stays grey (L)
    return paths


def parse_args(argv: list[str], options: dict[str, tuple[type, str]] = OPTIONS, command: str = "genlab-sample"):
    """`<run> key=value ...` (or `--key=value`) into typed values; a one-line ConfigError otherwise."""
    args: dict[str, Any] = {}
    for token in argv:
        key, eq, text = token.lstrip("-").partition("=")
        if eq and "run" not in args and Path(token).exists():  # a checkpoint named best-epoch=012-step=...ckpt
            key, eq, text = "run", "", token
        if not eq:
            if "run" in args:
                raise ConfigError(f"cannot read argument '{token}': write key=value (keys: {', '.join(options)})")
            key, text = "run", token
        if key not in options:
            raise ConfigError(f"unknown option '{key}': the options are {', '.join(options)}")
        kind = options[key][0]
        try:
            args[key] = kind(text) if text != "" else None
        except ValueError:
            raise ConfigError(f"{key}: expected {kind.__name__}, got '{text}'") from None
    if not args.get("run"):
        raise ConfigError(f"give the run: {command} <run folder or .ckpt> [n=...] [seed=0] ...")
    return args


def sample(args: dict[str, Any]) -> list[Path]:
    """Run the command; returns the files written."""
    model, ckpt, config = load(args["run"], args.get("device"))
    n, seed = _given(args, "n", 64), _given(args, "seed", 0)
    model_options = {k: args.get(k) for k in MODEL_OPTIONS}
    out = Path(args.get("out") or run_dir_of(ckpt) / "samples")
    stem = f"sample-n{n}-seed{seed}" + "".join(
        f"-{k}{args[k]}" for k in ("label", "steps", "guidance", "temperature") if args.get(k) is not None
    )
    if getattr(model, "text_conditional", False) or args.get("prompts") is not None:
        return sample_prompts(model, ckpt, args, out, stem, model_options)
    text_mode = args.get("prompt") is not None or args.get("length") is not None
    temperature_for_generate = (
        args.get("temperature") is not None
        and "temperature" not in accepts(model.sample)
        and hasattr(model, "generate")
    )
    if text_mode or temperature_for_generate:
        texts = generate_text(
            model, n, seed, prompt=args.get("prompt"), length=args.get("length"), temperature=args.get("temperature")
        )
        return [_write_text(texts, out / f"{stem}.txt"), *domain_outputs(config, texts, out, stem)]
    for key in ("prompt", "length"):
        if args.get(key) is not None:
            raise ConfigError(f"{key}: only text families take it")
    classes = num_classes(model, config)
    labels = None
    if is_conditional(model):
        labels = class_labels(n, classes, args.get("label"))
    elif args.get("label") is not None:
        raise ConfigError(f"label: the {type(model).__name__} model is not conditional (its sample() takes no labels)")
    samples = draw(model, n, seed, labels, args.get("batch_size") or BATCH_SIZE, **model_options)
    if not isinstance(samples, torch.Tensor):
        return [_write_text(samples, out / f"{stem}.txt"), *domain_outputs(config, samples, out, stem)]
    mark = _given(args, "watermark", config.get("watermark", True))  # the run's choice unless given here
    if args.get("export"):
        return export_folder(samples, Path(args["export"]), labels, classes, mark)
    out.mkdir(parents=True, exist_ok=True)
    save_grid(samples, out / f"{stem}.png", mark)
    record = {"samples": samples, "labels": labels, "n": n, "seed": seed, "checkpoint": str(ckpt)}
    torch.save(record | {k: v for k, v in model_options.items() if v is not None}, out / f"{stem}.pt")
    return [out / f"{stem}.png", out / f"{stem}.pt"]


def sample_prompts(
    model: L.LightningModule, ckpt: Path, args: dict[str, Any], out: Path, stem: str, options: dict[str, Any]
) -> list[Path]:
    """Text-to-image: one grid of `n` samples per prompt (`prompt=`, or each line of the file `prompts=`),
    each drawn from the same seed; without either, the model's own `sample_prompts` in turn."""
    if not getattr(model, "text_conditional", False):
        raise ConfigError(
            f"prompts: this {type(model).__name__} model has no text encoder: it does not take prompts; "
            "train one with experiment=text_to_image"
        )
    if args.get("label") is not None:
        raise ConfigError("label: this model draws from text: give prompt=... (PROMPT=) instead")
    n, seed = _given(args, "n", 64), _given(args, "seed", 0)
    if args.get("prompts") is not None:
        path = Path(args["prompts"])
        if not path.is_file():
            raise ConfigError(f"prompts: no file at '{path}' (one prompt per line)")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise ConfigError(f"prompts: '{path}' holds no prompt (one per line)")
    else:
        prompts = [args.get("prompt")]  # None: the model's sample_prompts
    out.mkdir(parents=True, exist_ok=True)
    batch, written = args.get("batch_size") or BATCH_SIZE, []
    for i, prompt in enumerate(prompts):
        captions = None if prompt is None else [prompt] * n
        samples = draw(model, n, seed, batch_size=batch, prompts=captions, **options)
        slug = "".join(c if c.isalnum() else "_" for c in prompt or "")[:40]  # the prompt, in a file name
        name = "-".join(part for part in (stem, f"prompt{i:02d}" if len(prompts) > 1 else "", slug) if part)
        save_grid(samples, out / f"{name}.png")
        record = {"samples": samples, "prompt": prompt, "n": n, "seed": seed, "checkpoint": str(ckpt)}
        torch.save(record | {k: v for k, v in options.items() if v is not None}, out / f"{name}.pt")
        written += [out / f"{name}.png", out / f"{name}.pt"]
    return written


def domain_outputs(config: dict[str, Any], texts: list[str], out: Path, stem: str) -> list[Path]:
    """Text samples in the data's own files (its `write_samples`: .py, .mid, .smi ...) and its `score`
    against the test split written to `<stem>.scores.json`, for data modules that have them (the run's
    data, set up for "fit")."""
    datamodule = instantiate(config["data"], "data")
    if not (hasattr(datamodule, "score") or hasattr(datamodule, "write_samples")):
        return []
    datamodule.setup("fit")
    paths = list(datamodule.write_samples(texts, out, stem)) if hasattr(datamodule, "write_samples") else []
    if hasattr(datamodule, "score"):
        paths.append(out / f"{stem}.scores.json")
        paths[-1].write_text(json.dumps(datamodule.score(texts, split="test"), indent=1) + "\n")
    return paths


def _given(args: dict[str, Any], key: str, default: Any) -> Any:
    return default if args.get(key) is None else args[key]


def _write_text(texts: list[str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n----------\n\n".join(texts) + "\n", encoding="utf-8")
    return path


def usage() -> str:
    options = "\n".join(f"  {k:<12} {help_}" for k, (_, help_) in OPTIONS.items())
    return f"usage: genlab-sample <run folder or .ckpt> [key=value ...]\n{__doc__.split(chr(10))[0]}\n{options}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or {"-h", "--help"} & set(argv):
        print(usage())
        return 0 if argv else 2
    try:
        args = parse_args(argv)
        written = sample(args)
        if args.get("export"):
            print(f"wrote {len(written)} images under {args['export']}")
        else:
            print("\n".join(f"wrote {path}" for path in written))
            for path in written:  # a data module's domain scores (domain_outputs)
                if path.name.endswith(".scores.json"):
                    scores = json.loads(path.read_text())
                    print("scores: " + ", ".join(f"{key} {value:.4g}" for key, value in scores.items()))
    except GenlabError as err:
        print(f"genlab-sample: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
