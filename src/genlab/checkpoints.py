"""Reading a checkpoint back: the foundation the models (gpt_feedback's base GPT), the run folder
(genlab.run: which checkpoint a run resumes) and the tools (sample, evaluate) share. It imports no
model, data module or tool; a model is rebuilt from the config a genlab checkpoint carries.

    read_checkpoint(path)   a checkpoint file or FSDP's sharded folder as one dict, `weights_only`
    load_model(path)        the trained LightningModule, in eval mode (also `genlab.load_model`); `path`
                            may be an exported model folder too (genlab.model_folder: no pickle)
    is_checkpoint(path)     a file, or a sharded folder holding `meta.pt`
    RESUME_ENV              the environment variable through which the entrypoint tells the processes
                            it starts (and a model's `configure_model`) which checkpoint the run resumes
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.load import _load_distributed_checkpoint

from genlab import model_folder
from genlab.errors import ConfigError
from genlab.instantiate import instantiate

RESUME_ENV = "GENLAB_RESUME_FROM"
SHARDED_META = "meta.pt"  # what Lightning's FSDP strategy writes beside the shards (all but the tensors)


def is_checkpoint(path: Path) -> bool:
    """A checkpoint file, or the folder of per-rank shards FSDP writes with `state_dict_type: sharded`
    (named like the file, e.g. `last.ckpt/`, holding `meta.pt` and torch.distributed.checkpoint shards)."""
    return path.is_file() or (path.is_dir() and (path / SHARDED_META).is_file())


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint file or sharded folder as one dict on the CPU, unpickled safely (`weights_only`:
    tensors and plain containers only, never code); a clear error for anything else. `mmap`: map
    the tensors instead of reading them (a cheap check that a file loads)."""
    path = Path(path)
    if not is_checkpoint(path):
        raise ConfigError(f"no checkpoint at '{path}'")
    try:
        if path.is_dir():  # FSDP shards, gathered into one full state dict (it must fit in CPU memory)
            checkpoint = _load_distributed_checkpoint(path)
            checkpoint["state_dict"] = checkpoint.pop("model")
            return checkpoint
        if mmap and not zipfile.is_zipfile(path):  # what torch.save writes; anything else is not a checkpoint
            raise pickle.UnpicklingError("not a zip archive")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"unsupported GLOBAL (\S+)", str(err))
        if unsafe is None:
            raise ConfigError(f"'{path}' is not a readable checkpoint (corrupt or truncated?)") from None
        raise ConfigError(
            f"'{path}' would run code while loading ({unsafe.group(1).rstrip('.')}), so it is refused: checkpoints "
            "load with weights_only=True. Only load files you trust, and then with torch.load yourself."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ConfigError(f"'{path}' is not a readable checkpoint ({str(err).splitlines()[0][:200]})") from None


def load_model(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> L.LightningModule:
    """A trained model from a genlab checkpoint alone (its config travels inside it), in eval mode on
    `map_location`. Reads files and FSDP's sharded folders; never unpickles code (`weights_only`).
    An exported model folder (`make export`) loads from its safetensors and YAML, without torch.load."""
    if model_folder.is_model_folder(ckpt_path):
        return model_folder.load(ckpt_path, map_location)
    checkpoint = read_checkpoint(ckpt_path)
    if "genlab" not in checkpoint:
        raise ConfigError(f"{ckpt_path} is not a genlab checkpoint (no 'genlab' entry with its config)")
    model = instantiate(checkpoint["genlab"]["config"]["model"], "model")
    model.on_load_checkpoint(checkpoint)  # as Lightning does: a model may restore what builds it (GPT's vocabulary)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(map_location).eval()
