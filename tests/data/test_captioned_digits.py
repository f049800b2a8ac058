"""data=captioned_digits: template captions parse back, held-out compositions stay out of training, splits are
disjoint by digit image, batches are deterministic by seed and the loop's position."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import pytest
import torch

from genlab.data import CaptionedDigitsDataModule
from genlab.data.captioned_digits import (
    TEMPLATES,
    all_compositions,
    parse,
    template_family,
    write_caption,
)
from genlab.data.images import ShuffledBatches
from genlab.errors import ConfigError, DataError
from genlab.faults import PREEMPTED_EXIT_CODE
from genlab.models.vae import VAEModule
from genlab.train import main


def _setup(**kwargs) -> CaptionedDigitsDataModule:
    dm = CaptionedDigitsDataModule(**{"batch_size": 16, "train_scenes": 400, "val_scenes": 50, **kwargs})
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def dm() -> CaptionedDigitsDataModule:
    return _setup()


def test_every_template_parses_back_to_its_composition() -> None:
    compositions = all_compositions()
    assert {c.kind for c in compositions} == {"large", "small", "count", "above", "left"}
    for comp in compositions:
        for t, words in itertools.product(range(len(TEMPLATES[template_family(comp)])), [(True, False), (False, True)]):
            caption = write_caption(comp, t, words)
            assert parse(caption) == comp, caption
            assert parse(f"  {caption.upper()} ") == comp  # spacing and case do not matter


def test_a_caption_no_template_writes_is_refused_in_one_line() -> None:
    for caption in ("a cat", "a 3 beside a 7", "a 5 on the left and a 1 on the left", "four sevens"):
        with pytest.raises(DataError, match="caption"):
            parse(caption)


def test_scenes_carry_their_ground_truth(dm: CaptionedDigitsDataModule) -> None:
    for scene in dm.scenes["train"]:
        assert parse(scene.caption) == scene.composition
        assert len(scene.cells) == len(scene.image_ids) == len(scene.composition.digits)
    cells = {s.composition.kind: s.cells for s in dm.scenes["train"]}
    assert cells["large"] == (-1,) and cells["above"][1] - cells["above"][0] == 2  # same column, first on top
    assert cells["left"][1] - cells["left"][0] == 1 and cells["left"][0] % 2 == 0  # same row, first on the left


def test_batches_paste_the_digits_into_their_boxes_with_padded_caption_ids(dm: CaptionedDigitsDataModule) -> None:
    data = dm.splits["train"]
    x, y = data[list(range(32))]
    assert x.shape == (32, 1, 32, 32) and x.dtype == torch.float32 and y.shape == (32, 48) and y.dtype == torch.int64
    assert x.min() == -1 and x.max() == 1
    for row, scene in enumerate(dm.scenes["train"][:32]):
        ids = y[row].tolist()
        n = len(scene.caption)
        assert dm.tokenizer.decode(ids[:n]) == scene.caption and 0 not in ids[:n] and set(ids[n:]) <= {0}
        inside = torch.zeros(32, 32, dtype=torch.bool)
        for top, left, h, w in scene.boxes(32):
            inside[top : top + h, left : left + w] = True
            assert (x[row, 0, top : top + h, left : left + w] > 0).sum() > 5  # ink in every digit's box
        assert (x[row, 0][~inside] == -1).all()  # and nowhere else


def test_splits_are_disjoint_by_digit_image_and_heldout_relations_stay_out_of_training() -> None:
    dm = _setup(test_scenes=400)
    used = {split: {i for s in dm.scenes[split] for i in s.image_ids} for split in ("train", "val", "test")}
    assert not used["train"] & used["test"] and not used["train"] & used["val"] and not used["val"] & used["test"]
    assert dm.heldout and all(t[0] in ("above", "left") for t in dm.heldout)
    for split in ("train", "val"):
        assert not any(parse(c).relation in dm.heldout for c in dm.captions(split))
    assert any(parse(c).relation in dm.heldout for c in dm.captions("test"))
    seen = {parse(c).relation for c in dm.captions("test")} - dm.heldout - {None}
    assert seen  # the test split also holds seen relations, scored apart


def test_batches_are_deterministic_by_seed_and_position(dm: CaptionedDigitsDataModule) -> None:
    again, other = _setup(), _setup(seed=1)
    assert dm.captions("train") == again.captions("train") != other.captions("train")
    assert torch.equal(dm.splits["train"][[0, 5, 9]][0], again.splits["train"][[0, 5, 9]][0])
    train = dm.splits["train"]

    def keyed(before: int, done: int = 0) -> list[list[int]]:  # what a Trainer's fit loop hands the sampler
        return list(ShuffledBatches(train, 16, True, seed=0, drop_last=True, position=lambda: (before, done)))

    assert keyed(25) == keyed(25) != keyed(50)  # another epoch, another order
    assert keyed(25, done=3) == keyed(25)[3:]  # resumed mid-epoch: the rest of the same epoch
    first = next(iter(dm.train_dataloader()))
    assert all(torch.equal(a, b) for a, b in zip(first, next(iter(again.train_dataloader())), strict=True))


def test_scene_i_does_not_depend_on_the_number_of_scenes(dm: CaptionedDigitsDataModule) -> None:
    fewer = _setup(train_scenes=40)
    assert fewer.scenes["train"] == dm.scenes["train"][:40]


def test_encode_refuses_long_captions_and_unknown_characters_in_one_line(dm: CaptionedDigitsDataModule) -> None:
    ids = dm.encode(["", "a 3 above a 7"])
    assert (ids[0] == 0).all() and dm.tokenizer.decode(ids[1, :13].tolist()) == "a 3 above a 7"
    with pytest.raises(ConfigError, match="data.context=48"):
        dm.encode(["a 3 above a 7 " * 5])
    with pytest.raises(DataError, match="'!'"):
        dm.encode(["a 3!"])
    with pytest.raises(ConfigError, match="data.context=20"):
        CaptionedDigitsDataModule(context=20)
    with pytest.raises(ConfigError, match="data.alphabet"):
        CaptionedDigitsDataModule(alphabet="_abc")


@pytest.mark.slow
def test_a_signal_mid_epoch_then_resume_equals_an_unbroken_run(tmp_path: Path, monkeypatch) -> None:
    """A real stop (SIGUSR1 from inside the training step at a known step) on captioned scenes, as data=mnist5k's
    test: the VAE ignores the captions, the batches' order and contents are what is checked."""
    argv = ["model=vae", "data=captioned_digits", "trainer=debug", "callbacks.progress.refresh_rate=0"]
    argv += [f"log_dir={tmp_path}", "data.batch_size=16", "data.train_scenes=96", "data.val_scenes=16"]
    argv += ["data.test_scenes=16", "trainer.limit_train_batches=6", "model.encoder.hidden_features=[32]"]
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
