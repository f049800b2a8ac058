"""`compile=true` with a DiT denoiser, through the entrypoint, for both families that take it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from genlab.checkpoints import load_model
from genlab.train import train

TINY = ("model.net.hidden_size=32", "model.net.depth=1", "model.net.num_heads=2", "trainer=debug")
TINY += ("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1")
TINY += ("model.sample_steps=2", "callbacks.samples.num_samples=2")


@pytest.mark.slow  # inductor compiles the forward and backward graphs in C++: minutes on a shared 2-core CPU
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler for inductor")
@pytest.mark.parametrize("family", ["diffusion", "flow_matching"])
def test_compiled_dit_trains_samples_and_its_checkpoint_loads_eagerly(family: str, make_config, log_dir: Path) -> None:
    compiled = []
    original = torch.nn.Module.compile

    def recording_compile(self: torch.nn.Module, *args, **kwargs) -> None:
        compiled.append(type(self).__name__)
        original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.Module, "compile", recording_compile)
        train(make_config(f"experiment={family}_dit", *TINY, "compile=true"))
    assert "DiT" in compiled  # the denoiser itself went through torch.compile
    (run,) = (log_dir / family).iterdir()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert not any("_orig_mod" in key for key in checkpoint["state_dict"])  # loads into an uncompiled net
    samples = load_model(run / "checkpoints" / "last.ckpt").sample(2)
    assert samples.shape == (2, 1, 8, 8) and torch.isfinite(samples).all()
