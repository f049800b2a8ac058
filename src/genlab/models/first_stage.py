"""The first stage of a latent generator (LDM, Rombach et al. 2022, arXiv:2112.10752; VQGAN's
transformer, Esser et al. 2021): a trained `model=autoencoder` run, held frozen by the second model.
Written once here, used by diffusion and flow matching (`models/diffusion.py`, latents) and the
VQ-GPT (`models/vq_gpt.py`, code indices).

    model, node = load_first_stage(path_or_node)   frozen (eval mode, no gradients) + its config node
    check_trained_on(model, channels, image_size)  refuse a first stage trained on other images
    carry_first_stage(checkpoint, node)            the generator's checkpoint carries the node

A generator replaces the path in its saved hyperparameters with the node and keeps the weights in its
state dict (`first_stage.*`), so its checkpoint alone rebuilds and samples after the autoencoder's
run folder is gone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from genlab.checkpoints import is_checkpoint, read_checkpoint
from genlab.errors import ConfigError
from genlab.instantiate import instantiate, locate

FIRST_STAGE_HINT = (
    'train one first (make train MODEL=autoencoder ARGS="data=mnist5k") and pass its run folder: '
    "model.first_stage=logs/autoencoder/<run>"
)


def load_first_stage(spec: str | dict[str, Any]) -> tuple[L.LightningModule, dict[str, Any]]:
    """(the frozen autoencoder, its config node) from a run folder or checkpoint path, or from the node
    a latent model's checkpoint saved (its weights then come with that checkpoint's state dict)."""
    if isinstance(spec, dict):
        model = instantiate(spec, "model.first_stage")
    else:
        path = Path(spec)
        if (path / "checkpoints").is_dir():  # a run folder: its last checkpoint, as genlab.sample reads it
            path = path / "checkpoints" / "last.ckpt"
        if not is_checkpoint(path):
            raise ConfigError(f"model.first_stage='{spec}': no autoencoder checkpoint there; {FIRST_STAGE_HINT}")
        checkpoint = read_checkpoint(path)
        spec = checkpoint.get("genlab", {}).get("config", {}).get("model")
        target = locate(spec["_target_"]) if isinstance(spec, dict) and "_target_" in spec else None
        if not all(hasattr(target, name) for name in ("encode", "decode", "latent_shape")):
            family = spec.get("_target_", "?").rsplit(".", 1)[-1] if isinstance(spec, dict) else "not a genlab run"
            raise ConfigError(f"model.first_stage='{path}' is not an autoencoder run ({family}); {FIRST_STAGE_HINT}")
        model = instantiate(spec, "model.first_stage")
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
    return model.requires_grad_(False).eval(), spec


def check_trained_on(first_stage: L.LightningModule, channels: Any, image_size: Any) -> None:
    """Refuse a first stage trained on other images than the data's `channels` x `image_size`."""
    trained = (first_stage.hparams.get("channels"), first_stage.hparams.get("image_size"))
    if (channels, image_size) != trained:
        raise ConfigError(
            f"model.first_stage: the autoencoder was trained on {trained[0]}x{trained[1]}x{trained[1]} images, "
            f"the data are {channels}x{image_size}x{image_size} (data.channels x data.image_size): "
            "train a first stage on this data"
        )


def latent_net(net: dict[str, Any], first_stage: L.LightningModule) -> dict[str, Any]:
    """A denoiser's node for the first stage's latents: its in_channels/image_size (the data's, by
    interpolation) must be what the autoencoder was trained on, and become the latent's."""
    check_trained_on(first_stage, net.get("in_channels"), net.get("image_size"))
    c, h, _ = first_stage.latent_shape
    return {**net, "in_channels": c, "image_size": h}  # square latents (h == w) of square images


def carry_first_stage(checkpoint: dict[str, Any], node: dict[str, Any]) -> None:
    """In `on_save_checkpoint`: genlab.load_model rebuilds from the run config a callback stored (before
    that hook runs); give it the first stage's node instead of its path, so the checkpoint alone loads
    (the weights are in its state dict)."""
    info = checkpoint.get("genlab")
    if info is None:
        return
    config = info["config"]
    model = {**config["model"], "first_stage": node}
    checkpoint["genlab"] = {**info, "config": {**config, "model": model}}
