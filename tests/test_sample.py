from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genlab.data import ImageFolderDataModule
from genlab.metrics import split_tensors
from genlab.run import load_model
from genlab.sample import export_folder, main
from genlab.train import train

SMALL_VAE = ("model=vae", "model.encoder.hidden_features=[64,32]", "trainer=debug", "trainer.max_epochs=1")


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from genlab.config import compose

    log_dir = tmp_path_factory.mktemp("logs")
    train(compose([f"log_dir={log_dir}", "run_name=vae", "callbacks.progress.refresh_rate=0", *SMALL_VAE]))
    return log_dir / "vae" / "vae"


def test_a_new_process_draws_what_the_model_draws_in_process(vae_run: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "genlab.sample", str(vae_run), "n=16", "seed=3", f"out={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as the suite: the machine may be shared
    subprocess.run(command, check=True, capture_output=True, timeout=300, env=env)
    saved = torch.load(tmp_path / "sample-n16-seed3.pt", weights_only=True)
    assert (tmp_path / "sample-n16-seed3.png").is_file()
    model = load_model(vae_run / "checkpoints" / "last.ckpt")
    torch.manual_seed(3)
    torch.testing.assert_close(saved["samples"], model.sample(16), rtol=0, atol=0)
    assert saved["n"] == 16 and saved["seed"] == 3 and saved["labels"] is None


def test_same_command_same_samples_other_seed_other_samples(vae_run: Path, tmp_path: Path, capsys) -> None:
    for seed, folder in ((0, "a"), (0, "b"), (1, "c")):
        assert main([str(vae_run), "n=8", f"seed={seed}", f"out={tmp_path / folder}"]) == 0
    a, b, c = (torch.load(tmp_path / f / f"sample-n8-seed{s}.pt")["samples"] for f, s in (("a", 0), ("b", 0), ("c", 1)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    assert "wrote" in capsys.readouterr().out
    (best,) = (vae_run / "checkpoints").glob("best-*.ckpt")  # best-epoch=000-step=5.ckpt: '=' in the name
    assert main([str(best), "n=8", f"out={tmp_path / 'best'}"]) == 0


def test_export_reloads_through_the_image_folder_module(vae_run: Path, tmp_path: Path) -> None:
    model = load_model(vae_run / "checkpoints" / "last.ckpt")
    torch.manual_seed(0)
    drawn = model.sample(12)
    # unmarked: each reloaded image is one drawn image up to 8-bit rounding (the split shuffles the order);
    # marked (the default): written enlarged in RGB, read back at the data's size with the mark's small change
    for option, bound in (("watermark=false", 2 / 255), (None, 8 / 255)):
        folder = tmp_path / f"synthetic-{option}"
        assert main([str(vae_run), "n=12", f"export={folder}", *([option] if option else [])]) == 0
        datamodule = ImageFolderDataModule(path=str(folder), image_size=8, channels=1, test_fraction=0.5)
        reloaded = torch.cat([split_tensors(datamodule, s)[0] for s in ("train", "val", "test")])
        assert len(reloaded) == 12 and datamodule.num_classes == 1
        distance = torch.cdist(reloaded.flatten(1), drawn.flatten(1)).min(1).values / 8
        assert distance.max() < bound, option


def test_export_one_folder_per_class(tmp_path: Path) -> None:
    images = torch.rand(24, 1, 8, 8) * 2 - 1
    labels = torch.arange(24) % 12
    export_folder(images, tmp_path / "out", labels, classes=12)
    assert sorted(p.name for p in (tmp_path / "out").iterdir())[:3] == ["class_00", "class_01", "class_02"]
    datamodule = ImageFolderDataModule(path=str(tmp_path / "out"), image_size=8, channels=1)
    datamodule.setup()
    assert datamodule.num_classes == 12
    files = datamodule.splits["train"].dataset
    for path, label in zip(files.files, files.labels, strict=True):  # sorted folders: the same class numbers
        assert label == labels[int(path.stem)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{run}", "steps=10"], "steps: the vae family's sample() does not take it (it takes: n)"),
        (["{run}", "label=3"], "label: the VAEModule model is not conditional"),
        (["{run}", "n=abc"], "n: expected int, got 'abc'"),
        (["{run}", "colour=red"], "unknown option 'colour'"),
        (["{run}", "prompt=hi"], "prompt: the vae family has no generate()"),
        (["{run}", "temperature=0.5"], "temperature: the vae family's sample() does not take it"),
        (["{run}", "n=0"], "n: the number of samples must be at least 1"),
        (["{tmp}/nothing"], "run: no checkpoint at"),
        (["{run}", "export={run}"], "is not empty"),
    ],
)
def test_bad_input_is_one_line(vae_run: Path, tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    assert main([a.format(run=vae_run, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_text_family_writes_text_with_prompt_and_temperature(tmp_path: Path) -> None:
    from genlab.config import compose

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. a dog ran to the sun.\n" * 200, encoding="utf-8")
    tiny = ("model.net.n_layer=1", "model.net.n_head=2", "model.net.n_embd=32", "data.block_size=16")
    argv = ["model=gpt", f"data.path={corpus}", *tiny, "trainer=debug", "trainer.max_steps=2", "run_name=g"]
    train(compose([f"log_dir={tmp_path}", "callbacks.progress.refresh_rate=0", *argv]))
    run = tmp_path / "gpt" / "g"
    args = [str(run), "n=3", "prompt=the ", "temperature=0.5", "length=10", f"out={tmp_path / 's'}"]
    assert main(args) == 0 and main([*args[:-1], f"out={tmp_path / 't'}"]) == 0
    text = (tmp_path / "s" / "sample-n3-seed0-temperature0.5.txt").read_text()
    assert text == (tmp_path / "t" / "sample-n3-seed0-temperature0.5.txt").read_text()  # seeded
    assert text.count("the ") >= 3 and text.count("----------") == 2
    assert main([str(run), "n=2", "steps=5"]) == 2  # a GPT's sample() takes no steps


def test_a_family_that_can_be_either_says_whether_this_model_is_conditional() -> None:
    from genlab.config import compose
    from genlab.instantiate import instantiate
    from genlab.sample import is_conditional

    assert is_conditional(instantiate(compose(["model=diffusion"]).model))  # labels by default
    unconditional = ["model=diffusion", "model.net.conditioning=null", "model.guidance=1.0"]
    assert not is_conditional(instantiate(compose(unconditional).model))
    assert not is_conditional(instantiate(compose(["model=gan"]).model))
    assert is_conditional(instantiate(compose(["model=gan", "model.conditional=true"]).model))
