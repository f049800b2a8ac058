"""The exported model folder (`make export`): weights in safetensors, a YAML config that rebuilds the
nets, the tokenizer of text families, and a model card; read back with no pickle at all. The format
lives here, below the tools, so `genlab.load_model` (genlab.checkpoints) reads it like a checkpoint.

    <folder>/
        model.safetensors   the state dict a sampler needs (below); safetensors stores tensors only
        config.yaml         model: and data: (the run's resolved nodes), seed, and genlab: (what the
                            weights file leaves out: the EMA map, tied tensors, what on_load_checkpoint reads)
        tokenizer.json      text families: `genlab.tokenizers.save` (char vocabulary, or BPE's own JSON)
        README.md           the model card (written by genlab.export)

What goes into model.safetensors: the model's whole state dict (first stage of a latent model,
discriminators, reference nets: what `make eval` and the apps use too) except the ONLINE copy of a net
that an EMA shadows (diffusion's `net`, the GAN's `generator`): sampling uses the EMA weights, which
are what is exported (diffusers' convention for EMA checkpoints); loading copies them into the online
net too. Tied tensors (GPT's `lm_head.weight` is `wte.weight`) are stored once, as safetensors requires.
Non-tensor state a family restores in `on_load_checkpoint` (GPT's tokenizer, gpt_feedback's net node)
comes from tokenizer.json and config.yaml, in the shape a checkpoint holds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from genlab import tokenizers
from genlab.errors import ConfigError
from genlab.instantiate import instantiate

WEIGHTS, CONFIG, TOKENIZER, CARD = "model.safetensors", "config.yaml", "tokenizer.json", "README.md"
FORMAT = 1
TOKENIZER_KEY = "tokenizer"  # where a checkpoint (and so on_load_checkpoint) keeps a tokenizer's state
# What Lightning and genlab's callbacks put in a checkpoint besides a family's own entries (those a
# module's on_save_checkpoint adds, which its on_load_checkpoint reads back).
TRAINING_KEYS = {
    "epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks", "optimizer_states",
    "lr_schedulers", "hparams_name", "hyper_parameters", "datamodule_hparams_name", "datamodule_hyper_parameters",
    "genlab", "current_model_state", "averaging_state",  # EMAWeightAveraging: state_dict holds the average
}  # fmt: skip


def is_model_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / WEIGHTS).is_file() and (path / CONFIG).is_file()


def ema_pairs(model: torch.nn.Module) -> dict[str, str]:
    """{online net's name: its EMA shadow's name}, e.g. {"net": "ema.shadow"}: each EMA submodule (one
    with a `shadow` net: genlab.nets.ema.EMA, recognised by its shape, since the foundation imports no
    net) and the top-level net of the same class and state-dict shapes it averages."""
    pairs = {}
    for name, module in model.named_modules():
        if not isinstance(getattr(module, "shadow", None), torch.nn.Module):
            continue
        shapes = {k: v.shape for k, v in module.shadow.state_dict().items()}
        for child, net in model.named_children():
            if type(net) is type(module.shadow) and {k: v.shape for k, v in net.state_dict().items()} == shapes:
                pairs[child] = f"{name}.shadow"
    return pairs


def _tied(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """{alias: the first name of the same tensor} for entries sharing storage, shape and offset."""
    first: dict[tuple, str] = {}
    tied = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() and key in first:
            tied[name] = first[key]
        else:
            first.setdefault(key, name)
    return tied


def plain(value: Any) -> Any:
    """`value` as YAML's plain types (tuples as lists); a tensor is refused (it belongs in the weights)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ConfigError(f"cannot write a {type(value).__name__} into {CONFIG}: only plain values")


def _is_plain(value: Any) -> bool:
    try:
        plain(value)
    except ConfigError:
        return False
    return True


def save(model: L.LightningModule, checkpoint: dict[str, Any], folder: Path) -> list[Path]:
    """Write the weights, config and tokenizer of `model` (loaded from `checkpoint`) into `folder`."""
    from safetensors.torch import save_file

    state = model.state_dict()
    pairs = ema_pairs(model)
    state = {k: v for k, v in state.items() if k.split(".", 1)[0] not in pairs}  # the EMA copies stay
    tied = _tied(state)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in tied}
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / WEIGHTS]
    save_file(tensors, written[0], metadata={"format": "pt", "genlab_format": str(FORMAT)})
    # A precision plugin's state sits under its class name and holds tensors: only plain entries are a
    # family's own (a tokenizer's state, a net's config node).
    extras = {k: v for k, v in checkpoint.items() if k not in TRAINING_KEYS and _is_plain(v)}
    if TOKENIZER_KEY in extras:
        written.append(folder / TOKENIZER)
        tokenizers.save(tokenizers.from_state(extras.pop(TOKENIZER_KEY)), written[-1])
    config = checkpoint["genlab"]["config"]
    document = {
        "genlab": {
            "format": FORMAT,
            "ema": pairs,  # online net <- its EMA (the weights file holds the EMA only)
            "tied": tied,  # alias <- the stored tensor
            "checkpoint_entries": plain(extras),  # what the family's on_load_checkpoint reads besides the tokenizer
            "trained": {"global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch")},
        },
        "model": plain(config["model"]),
        "data": plain(config.get("data", {})),
        "seed": config.get("seed"),
        "groups": plain(config.get("groups", {})),
    }
    written.append(folder / CONFIG)
    header = "# genlab model folder: genlab.load_model(<folder>) rebuilds the model from this and model.safetensors\n"
    written[-1].write_text(header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return written


def read_config(folder: str | Path) -> dict[str, Any]:
    """config.yaml of a model folder: the run config's model/data/seed nodes plus `genlab:`."""
    path = Path(folder) / CONFIG
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"'{path}' is not a readable model config ({str(err).splitlines()[0][:200]})") from None
    if not isinstance(document, dict) or "model" not in document or "genlab" not in document:
        raise ConfigError(f"'{path}' is not a genlab model folder's config (no model: and genlab: sections)")
    if document["genlab"].get("format") != FORMAT:
        raise ConfigError(f"'{path}': genlab.format {document['genlab'].get('format')!r}, this genlab reads {FORMAT}")
    return document


def load(folder: str | Path, map_location: str | torch.device = "cpu") -> L.LightningModule:
    """The model a folder holds, in eval mode on `map_location`: built from config.yaml, restored as
    from a checkpoint (`on_load_checkpoint` with the tokenizer and the family's entries), weights from
    model.safetensors (never a pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_config(folder)
    info = config["genlab"]
    model = instantiate(config["model"], "model")
    entries = dict(info.get("checkpoint_entries") or {})
    if (folder / TOKENIZER).is_file():
        entries[TOKENIZER_KEY] = tokenizers.load(folder / TOKENIZER).state()
    model.on_load_checkpoint(entries)  # as load_model does for a checkpoint: GPT builds its net for the vocabulary
    try:
        state = load_file(folder / WEIGHTS)
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"'{folder / WEIGHTS}' is not a readable safetensors file ({err})") from None
    for alias, name in info.get("tied", {}).items():
        state[alias] = state[name]
    for online, shadow in info.get("ema", {}).items():
        prefix = f"{shadow}."
        state |= {f"{online}.{k.removeprefix(prefix)}": v for k, v in state.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(
            f"'{folder / WEIGHTS}' does not fit the model config.yaml builds ({str(err)[:300]})"
        ) from None
    return model.to(map_location).eval()
