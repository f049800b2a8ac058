"""Export a run as a self-contained model folder (the Hugging Face Hub's layout), and push it there.

    python -m genlab.export logs/diffusion/<run> out=models/digits-ddpm   # or: genlab-export, make export
    python -m genlab.export logs/diffusion/<run> repo=<user>/<name>        # make push: export, then upload

The folder (`genlab.model_folder` describes it): model.safetensors (EMA weights where the family keeps
them; a latent model's first stage too), config.yaml (what rebuilds the nets), tokenizer.json (text
families), samples.png (images) and README.md, the model card (`genlab.model_card`: the run's
`make eval` figures when its eval.json exists, limitations read off them). `genlab.load_model(folder)`,
`make sample RUN=<folder>` and `make eval RUN=<folder>` read it with no pickle. The card's samples are
drawn from the folder as reloaded, so they are what a user of the folder gets.

Pushing uses `huggingface_hub` (`HfApi.create_repo`, `upload_folder`) with the token `huggingface-cli
login` (or HF_TOKEN) left; without one it stops in one line.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from genlab import model_card, model_folder
from genlab.checkpoints import read_checkpoint
from genlab.errors import ConfigError, GenlabError
from genlab.run import load_model
from genlab.sample import parse_args, resolve_checkpoint, run_dir_of, save_grid
from genlab.sampling import class_labels, draw, is_conditional, num_classes

OPTIONS: dict[str, tuple[type, str]] = {
    "run": (str, "run folder (its checkpoints/last.ckpt) or a .ckpt file; for repo=: an exported folder too"),
    "out": (str, "the model folder to write (new or empty); with repo=, default <run>/export"),
    "repo": (str, "push to this Hugging Face Hub model repo (<user>/<name>) after exporting"),
    "n": (int, "samples shown in the card (default 64 images, 4 texts)"),
    "seed": (int, "seed of those samples (default 0)"),
    "license": (str, "the card's licence identifier (default other: the data's terms)"),
    "private": (int, "1: create the Hub repo private (default 0)"),
}
GRID = "samples.png"
LOGIN_HINT = "no Hugging Face token: log in with `huggingface-cli login` (or set HF_TOKEN), then run make push again"


def export(run: str | Path, out: str | Path, n: int | None = None, seed: int = 0, license: str = "other") -> Path:
    """Write the model folder of `run` into `out` (new or empty); returns `out`."""
    ckpt = resolve_checkpoint(run)
    if model_folder.is_model_folder(ckpt):
        raise ConfigError(f"run: '{ckpt}' is already an exported model folder; give the run it came from")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out: '{out}' exists and is not an empty folder; give a new one (nothing was overwritten)")
    checkpoint = read_checkpoint(ckpt)
    if "genlab" not in checkpoint:
        raise ConfigError(f"{ckpt} is not a genlab checkpoint (no 'genlab' entry with its config)")
    run_config = checkpoint["genlab"]["config"]
    if (run_dir_of(ckpt) / "config.yaml").is_file():  # the run's own: a first stage there is its run's path
        run_config = yaml.safe_load((run_dir_of(ckpt) / "config.yaml").read_text(encoding="utf-8"))
    try:
        model_folder.save(load_model(ckpt), checkpoint, out)
        model = load_model(out)  # the card's samples come from the folder as a user gets it
        config = model_folder.read_config(out)
        is_text, samples, note = _samples(model, config, out, n, seed)
        report_path = run_dir_of(ckpt) / "eval.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
        if report is not None:
            (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        info = model_card.CardInfo(
            folder_name=out.name,
            model_class=type(model).__name__,
            config=config,
            run_config=run_config,
            parameters=sum(p.numel() for name, p in model.state_dict().items() if not _online(name, config)),
            samples=samples,
            samples_note=note,
            report=report,
            run=str(run_dir_of(ckpt)),
            license=license,
            is_text=is_text,
            vocab_size=getattr(getattr(model, "tokenizer", None), "vocab_size", None),
        )
        (out / model_folder.CARD).write_text(model_card.card(info), encoding="utf-8")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-written folder that looks like an export
        raise
    return out


def _online(name: str, config: dict[str, Any]) -> bool:
    """Is this state-dict entry an online copy of an EMA net (not in the weights file)?"""
    return name.split(".", 1)[0] in config["genlab"].get("ema", {})


def _samples(model: L.LightningModule, config: dict[str, Any], out: Path, n: int | None, seed: int):
    """(is text, the card's Markdown for the samples, how they were drawn); images also as samples.png."""
    labels = None
    if is_conditional(model):
        labels = class_labels(n or 64, num_classes(model, config), None)
    if hasattr(model, "generate"):  # text families: sample(n) returns texts
        texts = draw(model, n or 4, seed)
        shown = "\n\n".join(f"```text\n{text.strip()[:600]}\n```" for text in texts)
        return True, shown, f"{len(texts)} samples, seed {seed}, drawn from this folder (`model.sample({n or 4})`)."
    images = draw(model, n or 64, seed, labels)
    save_grid(images, out / GRID)
    note = f"{len(images)} samples, seed {seed}, drawn from this folder" + (
        " (the classes in turn: 0, 1, 2, ...)." if labels is not None else "."
    )
    return False, f"![samples]({GRID})", note


def push(folder: Path, repo: str, private: bool = False) -> str:
    """Upload `folder` to the Hub model repo `repo` (created if missing); returns its URL."""
    import huggingface_hub

    if not repo or repo.count("/") != 1:
        raise ConfigError(f"repo: give <user>/<name> (a Hub model repo), got {repo!r}")
    token = huggingface_hub.get_token()
    if not token:
        raise ConfigError(LOGIN_HINT)
    api = huggingface_hub.HfApi(token=token)
    api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo,
        repo_type="model",
        commit_message="genlab export",
        ignore_patterns=["samples/*"],  # what `make sample RUN=<folder>` wrote into it
    )
    return f"https://huggingface.co/{repo}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or {"-h", "--help"} & set(argv):
        options = "\n".join(f"  {k:<8} {h}" for k, (_, h) in OPTIONS.items())
        print(f"usage: genlab-export <run> out=<folder> | <run or folder> repo=<user>/<name>\n{options}")
        return 0 if argv else 2
    try:
        args = parse_args(argv, OPTIONS, "genlab-export")
        repo, run = args.get("repo"), Path(args["run"])
        if repo is None and not args.get("out"):
            raise ConfigError("out: give the model folder to write: genlab-export <run> out=<folder>")
        if repo is not None and model_folder.is_model_folder(run):
            folder = run
        else:
            folder = Path(args.get("out") or run_dir_of(resolve_checkpoint(run)) / "export")
            if repo is not None:  # check the token before the work
                import huggingface_hub

                if not huggingface_hub.get_token():
                    raise ConfigError(LOGIN_HINT)
                if not args.get("out") and model_folder.is_model_folder(folder):
                    shutil.rmtree(folder)  # <run>/export: this command's own folder, made again from the run
            seed = args.get("seed") or 0
            export(run, folder, args.get("n"), seed, args.get("license") or "other")
            print(f"wrote {folder} ({', '.join(sorted(p.name for p in folder.iterdir()))})")
        if repo is not None:
            print(f"pushed {folder} to {push(folder, repo, bool(args.get('private')))}")
    except GenlabError as err:
        print(f"genlab-export: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
