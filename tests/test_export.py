"""`make export` / `make push` (genlab.export) and the model folder it writes (genlab.model_folder): the
folder loads with no pickle (torch.load made to raise), draws exactly what the checkpoint draws for the
same seed (an EMA image family, a text family with tied weights and a tokenizer, a latent model with its
first stage), `make sample` / `make eval` take it, the card is the Hub's format and its limitations
follow the figures, and the upload goes through huggingface_hub (HfApi monkeypatched: no server)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
import yaml
from conftest import LATENT, TINY_AE, TINY_UNET

from genlab import evaluate, export, model_folder, sample
from genlab.config import compose
from genlab.errors import ConfigError
from genlab.run import load_model
from genlab.sampling import draw
from genlab.train import train

SHORT = ("trainer=debug", "trainer.max_steps=2", "callbacks.progress.refresh_rate=0", "callbacks.samples.num_samples=4")


def _train(log_dir: Path, name: str, *overrides: str) -> Path:
    cfg = compose([f"log_dir={log_dir}", f"run_name={name}", *SHORT, *overrides])
    train(cfg)
    return Path(cfg.run_dir)


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("logs"), "ddpm", "model=diffusion", *TINY_UNET)


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    logs = tmp_path_factory.mktemp("logs")
    ae = _train(logs, "ae", *TINY_AE)
    return _train(logs, "ldm", "model=diffusion", *TINY_UNET, *LATENT["diffusion"], f"model.first_stage={ae}")


def _no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"torch.load called on {args[:1]}")

    monkeypatch.setattr(torch, "load", refuse)


def _exported(run: Path, tmp_path: Path, **kwargs) -> Path:
    return export.export(run, tmp_path / "model", n=kwargs.pop("n", 4), **kwargs)


@pytest.mark.parametrize("family", ["diffusion_run", "tiny_gpt_run", "latent_run"])
def test_the_folder_loads_without_pickle_and_samples_what_the_checkpoint_samples(
    family: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = request.getfixturevalue(family)
    folder = _exported(run, tmp_path)
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.yaml", "README.md"} <= names
    assert not [p for p in folder.rglob("*") if p.suffix in (".ckpt", ".pt", ".pth", ".bin", ".pkl")]
    reference = load_model(run / "checkpoints" / "last.ckpt")
    _no_pickle(monkeypatch)
    loaded = load_model(folder)
    assert type(loaded) is type(reference) and not loaded.training
    ours, theirs = draw(loaded, 3, seed=5), draw(reference, 3, seed=5)
    if isinstance(theirs, torch.Tensor):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    else:
        assert ours == theirs
    config = model_folder.read_config(folder)
    if family == "tiny_gpt_run":  # a text family: its tokenizer file, and the tied lm_head stored once
        assert "tokenizer.json" in names and loaded.tokenizer == reference.tokenizer
        assert config["genlab"]["tied"]
    else:  # the EMA is what is stored; the online net is rebuilt from it
        assert config["genlab"]["ema"] == {"net": "ema.shadow"} and "samples.png" in names
        for key, value in loaded.net.state_dict().items():
            torch.testing.assert_close(value, reference.ema.shadow.state_dict()[key], rtol=0, atol=0)
    if family == "latent_run":  # the first stage travels inside, as a config node and its weights
        assert isinstance(config["model"]["first_stage"], dict)
        assert f"model.first_stage={run.parent.parent / 'autoencoder' / 'ae'}" in (folder / "README.md").read_text()
        for key, value in loaded.first_stage.state_dict().items():
            torch.testing.assert_close(value, reference.first_stage.state_dict()[key], rtol=0, atol=0)


def test_make_sample_and_make_eval_take_the_folder(
    tiny_gpt_run: Path, diffusion_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = export.export(diffusion_run, tmp_path / "ddpm", n=4)
    text = export.export(tiny_gpt_run, tmp_path / "gpt", n=2)
    with monkeypatch.context() as patch:
        _no_pickle(patch)
        assert sample.main([str(images), "n=4", "seed=1", f"out={tmp_path / 'drawn'}"]) == 0
        assert sample.main([str(text), "n=2", "length=8"]) == 0  # text goes to <folder>/samples/
        assert evaluate.main([str(text)]) == 0  # the family's figures on the text's validation split
    assert (text / "samples" / "sample-n2-seed0.txt").is_file()
    report = json.loads((text / "eval.json").read_text())
    assert report["split"] == "val" and report["metrics"]["val/bpc"] > 0
    drawn = torch.load(tmp_path / "drawn" / "sample-n4-seed1.pt", weights_only=True)["samples"]
    reference = load_model(diffusion_run / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(drawn, draw(reference, 4, seed=1), rtol=0, atol=0)


def test_the_card_is_the_hubs_format_and_its_limitations_follow_the_figures(
    diffusion_run: Path, tmp_path: Path
) -> None:
    report = {
        "checkpoint": "x",
        "model": "DiffusionModule",
        "seed": 0,
        "split": "test",
        "n": 200,
        "features": "classifier",
        "metrics": {"test/loss": 0.5, "fid": 90.0, "real_test/fid": 3.0, "near_copies": 0.25},
    }
    report["metrics"] |= {"near_copy_threshold": 0.075, "nn_dist_ratio": 0.5, "recall": 0.1, "real_test/recall": 0.8}
    report["metrics"] |= {"class_tv": 0.35, "real_test/class_tv": 0.05}
    report["class_balance"] = {"tv": 0.35, "least_generated": 7, "least_generated_share": 0.0}
    report["class_balance"] |= {"least_generated_data_share": 0.1, "missing": [7]}
    (diffusion_run / "eval.json").write_text(json.dumps(report))
    try:
        folder = _exported(diffusion_run, tmp_path, license="mit")
    finally:
        (diffusion_run / "eval.json").unlink()
    card = (folder / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "genlab" and meta["license"] == "mit" and meta["datasets"] == ["digits"]
    assert "diffusion" in meta["tags"]
    assert "python -m genlab.train model=diffusion" in body and "![samples](samples.png)" in body
    assert "N=200" in body and "| fid | 90 | 3 |" in body  # the figures, with N and seed
    limits = body.split("## Intended use and limitations")[1]
    assert "25.0% of 200 samples are near-copies" in limits and "hug the training set" in limits
    assert "30.0 times that of held-out real images" in limits and "mode dropping" in limits
    assert "Class balance: the classifier's labels over the samples are 0.35 in total variation" in limits
    assert "least generated: class 7 (0.0% of samples, 10.0% of the data); never generated: 7" in limits
    assert json.loads((folder / "eval.json").read_text()) == report
    other = (_exported(diffusion_run, tmp_path / "b") / "README.md").read_text()  # no report: say how to make one
    assert "No evaluation report" in other and "make eval RUN=" in other and "near-copies" not in other


def test_bad_input_is_one_line(diffusion_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert export.main([str(diffusion_run), f"out={tmp_path / 'full'}"]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert export.main([str(diffusion_run)]) == 2 and "out: give the model folder" in capsys.readouterr().err
    folder = _exported(diffusion_run, tmp_path)
    with pytest.raises(ConfigError, match="already an exported model folder"):
        export.export(folder, tmp_path / "again")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        load_model(folder)


def test_push_needs_a_token_and_uploads_the_folder(
    diffusion_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    folder = _exported(diffusion_run, tmp_path)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert export.main([str(folder), "repo=someone/digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "huggingface-cli login" in err
    calls = []
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    # No server in tests: huggingface_hub has no offline stand-in for an upload, so HfApi's calls are recorded.
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id))
    )
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    assert export.main([str(folder), "repo=someone/digits"]) == 0
    assert calls[0] == ("create", "someone/digits")
    assert calls[1][1]["folder_path"] == str(folder) and calls[1][1]["repo_id"] == "someone/digits"
    assert "https://huggingface.co/someone/digits" in capsys.readouterr().out
    assert export.main([str(diffusion_run), "repo=someone/digits"]) == 0  # a run: exported into <run>/export first
    assert calls[-1][1]["folder_path"] == str(diffusion_run / "export")
    assert model_folder.is_model_folder(diffusion_run / "export")
    shutil.rmtree(diffusion_run / "export")
    assert export.main([str(folder), "repo=no-slash"]) == 2 and "repo: give <user>/<name>" in capsys.readouterr().err


def test_the_demo_page_serves_an_exported_folder(diffusion_run: Path, tmp_path: Path, monkeypatch) -> None:
    """`make demo RUN=<exported folder>`: the page loads it without pickle and draws what the run draws."""
    from genlab import demo

    folder = _exported(diffusion_run, tmp_path)
    _no_pickle(monkeypatch)
    (entry,) = demo.load_entries(str(folder))
    values = {"n": 4, "seed": 2, "steps": 2}
    image, text, status = demo.generate(entry, dict(values))
    assert image is not None and text is None and status.startswith("4 images"), status
    monkeypatch.undo()
    (from_run,) = demo.load_entries(str(diffusion_run))
    assert np.array_equal(np.asarray(image), np.asarray(demo.generate(from_run, dict(values))[0]))
