"""Float latents through `make prepare` and `data=streaming` (experiment=dit_s2_imagenet256_latent's data)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.data.streaming import StreamingDataModule
from genlab.errors import ConfigError
from genlab.prepare import main as prepare_main
from genlab.prepare import prepare
from genlab.run import RESUME_ENV, RUN_DIR_ENV
from genlab.train import main


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in (RUN_DIR_ENV, RESUME_ENV):
        monkeypatch.setenv(key, "")
    yield


def write_latents(path: Path, n: int = 40, size: int = 8, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """`n` latents `(4, size, size)`, latent i's first value is i (so a batch can be traced back), labels i % 5."""
    latents = torch.randn(n, 4, size, size, generator=torch.Generator().manual_seed(0)) * 3
    latents[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    torch.save({"latents": latents.to(dtype), "labels": torch.arange(n) % 5}, path)
    return latents.to(dtype).float()


@pytest.fixture(scope="module")
def latent_chunks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    root = tmp_path_factory.mktemp("latents")
    stored = write_latents(root / "latents.pt")
    prepare(str(root / "latents.pt"), str(root / "chunks"), workers=1, val_fraction=0.2, test_fraction=0.1)
    return root / "chunks", stored


def test_prepared_latents_stream_as_stored_floats_with_their_labels(latent_chunks: tuple[Path, torch.Tensor]) -> None:
    chunks, stored = latent_chunks
    data = StreamingDataModule(str(chunks), batch_size=8, num_workers=0, image_size=8, channels=4)
    data.setup("fit")
    assert data.kind == "latents" and data.num_classes == 5 and data.levels is None
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 28, "val": 8, "test": 4}
    batches = list(data.train_dataloader())
    x, y = batches[0]
    assert x.shape == (8, 4, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.abs().max() > 1  # not squeezed into an image range
    seen = [int(i) for x, _ in batches for i in x[:, 0, 0, 0]]
    assert len(seen) == len(set(seen)) == 28
    for x, y in batches:  # each latent exactly as stored (float16 values), with its own label
        index = x[:, 0, 0, 0].long()
        torch.testing.assert_close(x, stored[index], rtol=0, atol=0)
        assert y.tolist() == (index % 5).tolist()
    latents, labels = data.splits["val"][list(range(3))]
    assert latents.shape == (3, 4, 8, 8) and labels.shape == (3,)


def test_latents_of_another_shape_than_the_config_name_the_keys(latent_chunks: tuple[Path, torch.Tensor]) -> None:
    with pytest.raises(ConfigError, match=r"data.channels=3 data.image_size=32, but the latents .* are 4x8x8: set"):
        StreamingDataModule(str(latent_chunks[0]), image_size=32, channels=3).setup("fit")


def test_npz_latents_without_labels_are_one_class(tmp_path: Path) -> None:
    np.savez(tmp_path / "z.npz", latents=np.random.default_rng(0).normal(size=(20, 2, 4, 4)))
    meta = prepare(str(tmp_path / "z.npz"), str(tmp_path / "out"), workers=1, val_fraction=0.2, test_fraction=0.0)
    assert meta["kind"] == "latents" and meta["num_classes"] == 1 and meta["shape"] == [2, 4, 4]
    assert meta["samples"] == {"train": 16, "val": 4}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"labels": torch.zeros(3)}, "holds no 'latents' entry"),
        ({"latents": torch.zeros(3, 4, 8, 6)}, "latents must be square floats (N, C, H, H)"),
        ({"latents": torch.zeros(3, 4, 8, 8, dtype=torch.uint8)}, "latents must be square floats"),
        ({"latents": torch.full((3, 4, 8, 8), float("nan"))}, "NaN or infinite"),
        ({"latents": torch.zeros(3, 4, 8, 8), "labels": torch.zeros(2, dtype=torch.long)}, "labels must be 3"),
        ({"latents": torch.zeros(3, 4, 8, 8), "labels": -torch.ones(3, dtype=torch.long)}, "non-negative ints"),
    ],
)
def test_bad_latent_files_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: dict, message: str
) -> None:
    torch.save(content, tmp_path / "bad.pt")
    assert prepare_main([str(tmp_path / "bad.pt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genlab-prepare: error: ") and message in err[0], err


def test_the_dit_s2_recipe_trains_on_prepared_latents(latent_chunks: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    """The recipe as shipped (DDPM linear, AdamW, EMA 0.9999, label dropout, guided DDIM), at a tiny size."""
    tiny = ["model.net.hidden_size=32", "model.net.depth=1", "model.net.num_heads=2", "data.image_size=8"]
    tiny += ["data.batch_size=4", "data.num_workers=0", "model.sample_steps=2", "callbacks.samples.num_samples=2"]
    argv = ["experiment=dit_s2_imagenet256_latent", f"data.path={latent_chunks[0]}", "trainer=debug", *tiny]
    assert main([*argv, "trainer.max_steps=6", f"log_dir={tmp_path}", "run_name=tiny"]) == 0
    run = tmp_path / "diffusion" / "tiny"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert any(row.get("val/loss") for row in rows) and any(row.get("train/loss") for row in rows)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 6
    config = state["genlab"]["config"]
    assert config["model"]["optimizer"]["lr"] == 1.0e-4 and config["model"]["ema_decay"] == 0.9999
    assert config["model"]["net"]["conditioning"]["num_classes"] == 1000  # the recipe's classes, over the file's 5
