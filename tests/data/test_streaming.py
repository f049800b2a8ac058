"""Chunks from `make prepare` (written here from a few images and a short text) trained with data=streaming:
batches as the image and text modules give them, exact mid-epoch resume, one line for bad input."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.data.streaming import StreamingDataModule
from genlab.errors import DataError
from genlab.faults import PREEMPTED_EXIT_CODE
from genlab.models.gpt import GPTModule
from genlab.models.vae import VAEModule
from genlab.prepare import prepare
from genlab.run import RESUME_ENV, RUN_DIR_ENV
from genlab.train import main

# 2 epochs x 5 batches of 16 grey 8x8 images; every step logged.
SHORT = ["model=vae", "trainer=debug", "data=streaming", "data.image_size=8", "data.channels=1", "data.batch_size=16"]
SHORT += ["model.iw_samples=2", "callbacks.samples.num_samples=4", "callbacks.progress.refresh_rate=0"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in (RUN_DIR_ENV, RESUME_ENV):
        monkeypatch.setenv(key, "")
    yield


def write_images(root: Path, n: int = 120) -> None:
    """`n` distinct 8x8 grey images in 3 class folders; pixel (0, 0) and (0, 1) spell the image's number."""
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
        pixels[0, :2] = divmod(i, 256)
        path = root / f"class{i % 3}" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)


def image_number(x: torch.Tensor) -> list[int]:
    """Undo write_images' numbering on a batch `(B, 1, 8, 8)` in [-1, 1]."""
    pixels = ((x[:, 0, 0, :2] + 1) * 127.5).round().long()
    return (pixels[:, 0] * 256 + pixels[:, 1]).tolist()


@pytest.fixture(scope="module")
def image_chunks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stream")
    write_images(root / "images")
    prepare(str(root / "images"), str(root / "chunks"), workers=2, val_fraction=0.2, test_fraction=0.1)
    return root / "chunks"


def test_prepared_images_stream_as_the_image_modules_give_them(image_chunks: Path) -> None:
    data = StreamingDataModule(str(image_chunks), batch_size=16, num_workers=0, image_size=8, channels=1)
    data.setup("fit")
    assert data.num_classes == 3 and data.levels == 256
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 84, "val": 24, "test": 12}
    loader = data.train_dataloader()
    batches = list(loader)
    x, y = batches[0]
    assert x.shape == (16, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    seen = [n for x, _ in batches for n in image_number(x)]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 84  # one pass, each image once
    labels = torch.cat([y for _, y in batches]).tolist()
    assert labels == [n % 3 for n in seen]  # labels travel with their images
    assert seen != sorted(seen)  # shuffled
    again = [n for x, _ in loader for n in image_number(x)]
    assert sorted(again) == sorted(seen) and again != seen  # the next epoch, another order
    val = [n for x, _ in data.val_dataloader() for n in image_number(x)]
    assert len(val) == 24 and set(val).isdisjoint(seen)
    # Other sizes and channels convert as data=image_folder does; the whole split indexes as one batch.
    rgb = StreamingDataModule(str(image_chunks), batch_size=4, num_workers=0, image_size=16, channels=3)
    rgb.setup("fit")
    images, labels = rgb.splits["val"][list(range(5))]
    assert images.shape == (5, 3, 16, 16) and labels.shape == (5,)


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_signal_then_resume_equals_an_unbroken_run(
    image_chunks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    argv = [*SHORT, f"data.path={image_chunks}", f"data.num_workers={workers}", f"log_dir={tmp_path}"]
    assert main([*argv, "run_name=unbroken"]) == 0

    original = VAEModule.training_step

    def stopped_in_epoch_1(self: VAEModule, batch, batch_idx: int) -> torch.Tensor:
        if self.global_step == 7:  # epoch 1's third batch
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(VAEModule, "training_step", stopped_in_epoch_1)
    resumable = [*argv, "run_name=stopped", "resume=auto"]
    assert main(resumable) == PREEMPTED_EXIT_CODE
    last = tmp_path / "vae" / "stopped" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 8
    loader_state = state["loops"]["fit_loop"]["state_dict"]["combined_loader"][
        0
    ]  # LitData's own state, in every checkpoint
    assert loader_state["num_samples_yielded"] == 3 * 16 and loader_state["current_epoch"] == 5 + 1

    monkeypatch.setattr(VAEModule, "training_step", original)
    assert main(resumable) == 0
    unbroken = torch.load(tmp_path / "vae" / "unbroken" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == unbroken["global_step"] == 10
    for key, value in unbroken["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_text_chunks_give_gpt_windows_and_the_tokenizer(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("abcdefgh ,.\n"), size=3000))  # no window repeats: each one is told apart
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    meta = prepare(str(tmp_path / "book.txt"), str(tmp_path / "chunks"), workers=1, val_fraction=0.1)
    assert meta["kind"] == "text" and (tmp_path / "chunks" / "tokenizer.json").is_file()
    data = StreamingDataModule(str(tmp_path / "chunks"), batch_size=4, num_workers=0, block_size=16)
    data.setup("fit")
    assert data.vocab_size == len(set(text))
    windows = list(data.train_dataloader())
    x, y = windows[0]
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token
    for row_x, row_y in zip(x, y, strict=True):
        assert data.tokenizer.decode(row_x.tolist() + row_y[-1:].tolist()) in text  # real stretches of the text
    rows = {tuple(row.tolist()) for x, y in windows for row in torch.cat([x, y[:, -1:]], 1)}
    assert len(rows) == sum(len(x) for x, _ in windows) == meta["tokens"]["train"] // 17  # one pass, each once


def test_gpt_on_text_chunks_stopped_mid_epoch_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPT with dropout from text chunks: 3 epochs of 6 batches, a SIGUSR1 in epoch 1; the resumed run
    ends with an unbroken run's weights, and the vocabulary goes with the run."""
    rng = np.random.default_rng(1)
    (tmp_path / "book.txt").write_text("".join(rng.choice(list("abcdefgh ,.\n"), size=2000)), encoding="utf-8")
    prepare(str(tmp_path / "book.txt"), str(tmp_path / "chunks"), workers=1, val_fraction=0.1)
    argv = ["model=gpt", "trainer=debug", "data=streaming", f"data.path={tmp_path / 'chunks'}", "data.block_size=16"]
    argv += ["data.batch_size=4", "data.num_workers=0", "model.net.n_layer=1", "model.net.n_embd=16"]
    argv += ["model.net.n_head=2", "model.net.dropout=0.1", "trainer.limit_train_batches=6", "trainer.max_epochs=3"]
    argv += ["callbacks.samples.num_samples=1", "callbacks.progress.refresh_rate=0", f"log_dir={tmp_path}"]
    assert main([*argv, "run_name=unbroken"]) == 0
    assert (tmp_path / "gpt" / "unbroken" / "tokenizer.json").is_file()

    original = GPTModule.training_step

    def stopped_in_epoch_1(self, batch, batch_idx: int):
        if self.global_step == 8:
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(GPTModule, "training_step", stopped_in_epoch_1)
    assert main([*argv, "run_name=stopped", "resume=auto"]) == PREEMPTED_EXIT_CODE
    monkeypatch.setattr(GPTModule, "training_step", original)
    assert main([*argv, "run_name=stopped", "resume=auto"]) == 0
    unbroken, resumed = (
        torch.load(tmp_path / "gpt" / name / "checkpoints" / "last.ckpt", weights_only=True)
        for name in ("unbroken", "stopped")
    )
    assert resumed["global_step"] == unbroken["global_step"] == 18
    for key, value in unbroken["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_a_folder_that_is_not_prepared_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_images(tmp_path / "images", n=3)
    assert main([*SHORT, f"data.path={tmp_path / 'images'}", f"log_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"genlab: error: data.path: '{tmp_path / 'images'}' holds no prepared chunks")
    assert "make prepare" in err[-1] and not any("Traceback" in line for line in err)


def test_more_classes_than_configured_is_a_data_error(image_chunks: Path) -> None:
    with pytest.raises(DataError, match="data.num_classes=2 but the chunks .* hold 3 classes"):
        StreamingDataModule(str(image_chunks), num_classes=2).setup("fit")


RECORDING_RUN = """
import sys
from pathlib import Path

from genlab.models.gpt import GPTModule
from genlab.models.vae import VAEModule
from genlab.train import main
sys.path.insert(0, {tests!r})
from test_streaming import image_number

original = VAEModule.training_step


def training_step(self, batch, batch_idx):
    with open(Path({out!r}) / f"rank{{self.global_rank}}.txt", "a") as file:
        file.write(f"{{self.current_epoch}} {{' '.join(map(str, image_number(batch[0])))}}\\n")
    return original(self, batch, batch_idx)


VAEModule.training_step = training_step
sys.exit(main(sys.argv[1:]))
"""


# slow: two processes streaming for ~90 s on 2 cores; make test-all runs it
@pytest.mark.slow
def test_two_process_ddp_ranks_read_disjoint_samples(image_chunks: Path, tmp_path: Path) -> None:
    """Two CPU processes under DDP: every rank trains as many batches, and in an epoch no image is
    seen by both ranks."""
    import subprocess
    import sys

    script = tmp_path / "recording_run.py"
    script.write_text(RECORDING_RUN.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    argv = [*SHORT, f"data.path={image_chunks}", "data.num_workers=0", "data.batch_size=8"]
    argv += ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.limit_val_batches=1"]
    argv += ["trainer.enable_model_summary=false", f"log_dir={tmp_path}", "run_name=ddp"]
    src = Path(__file__).resolve().parents[2] / "src"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENLAB_", "SLURM_"))}
    env.update(PYTHONPATH=f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(script), *argv], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    seen = {}  # (rank, epoch) -> image numbers
    for rank in (0, 1):
        for line in (tmp_path / f"rank{rank}.txt").read_text().splitlines():
            epoch, *numbers = map(int, line.split())
            seen.setdefault((rank, epoch), []).extend(numbers)
    for epoch in (0, 1):
        first, second = seen[(0, epoch)], seen[(1, epoch)]
        assert len(first) == len(second) == 5 * 8  # 84 images: 42 per rank, 5 whole batches of 8
        assert len(set(first)) == 40 and set(first).isdisjoint(second)
