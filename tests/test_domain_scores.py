"""The domain-score contract: a data module's optional `score(samples)` / `write_samples(...)` reach the
sample logger (`val/<key>`), `make sample` (files and printed scores) and `make eval` (`<split>/<key>`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import read_metrics

import genlab
from genlab import evaluate, sample
from genlab.config import compose
from genlab.data.text import TextDataModule
from genlab.instantiate import instantiate
from genlab.train import train

TINY_GPT = (
    "model.net.n_layer=1",
    "model.net.n_head=2",
    "model.net.n_embd=32",
    "model.sample_length=40",
    "data.block_size=16",
    "data.batch_size=8",
    "trainer.max_steps=10",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=2",
    "trainer.enable_model_summary=false",
    "callbacks.samples.every_n_epochs=1",
    "callbacks.samples.num_samples=4",
    "callbacks.progress.refresh_rate=0",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
)


class ScoredText(TextDataModule):
    """A text data module with a domain score and its own sample files, as the contract allows."""

    def score(self, samples: list[str], split: str) -> dict[str, float]:
        with_e = sum("e" in s for s in samples) / len(samples)
        return {"with_e": with_e, "count": float(len(samples)), "against_val": float(split == "val")}

    def write_samples(self, samples: list[str], folder: Path, stem: str) -> list[Path]:
        path = Path(folder) / f"{stem}.fake"
        path.write_text(json.dumps(samples))
        return [path]


def test_a_fake_data_modules_scores_reach_logger_sample_and_eval(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 100, encoding="utf-8")
    cfg = compose([
        "model=gpt", f"log_dir={tmp_path}", "run_name=fake", f"data.path={corpus}",
        "data._target_=test_domain_scores.ScoredText", *TINY_GPT,
    ])  # fmt: skip
    train(cfg)
    run = tmp_path / "gpt" / "fake"
    rows = read_metrics(run)
    counts = [float(r["val/count"]) for r in rows if r.get("val/count")]
    assert counts == [4.0, 4.0, 4.0]  # epochs 0 and 1, and the end of training
    assert {r["val/against_val"] for r in rows if r.get("val/against_val")} == {"1.0"}  # never the test split
    assert {"samples_epoch=000.fake", "samples_epoch=001.fake", "samples_final.fake"} <= {
        p.name for p in (run / "samples").iterdir()
    }
    assert sample.main([str(run), "n=3", f"out={tmp_path / 'drawn'}"]) == 0
    out = capsys.readouterr().out
    assert "scores: with_e" in out and "count 3" in out
    assert len(json.loads((tmp_path / "drawn" / "sample-n3-seed0.fake").read_text())) == 3
    scores = json.loads((tmp_path / "drawn" / "sample-n3-seed0.scores.json").read_text())
    assert scores["count"] == 3 and scores["against_val"] == 0
    report = evaluate.evaluate({"run": str(run), "n": 5})
    assert report["split"] == "val" and report["metrics"]["val/count"] == 5  # no test split: validation


def test_code_experiment_with_bpe_end_to_end(tmp_path, capsys):
    corpus = tmp_path / "src"
    for i in range(30):
        path = corpus / f"pkg{i % 3}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"def f{i}(x):\n    y = x + {i}\n    return y\n\n\nclass K{i}:\n    n = {i}\n")
    cfg = compose([
        "experiment=gpt_code", f"log_dir={tmp_path}", "run_name=code", f"data.path={corpus}",
        f"data.data_dir={tmp_path / 'data'}", "data.tokenizer=bpe", "data.vocab_size=300",
        "data.val_fraction=0.2", "data.test_fraction=0.2", *TINY_GPT,
    ])  # fmt: skip
    train(cfg)
    run = tmp_path / "gpt" / "code"
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/parse", "val/complete", "val/unique", "val/loss"} <= set(header)
    assert (run / "samples" / "samples_final.py").read_text().startswith("# sample 0: ")
    model = genlab.load_model(run / "checkpoints" / "last.ckpt")  # the BPE tokenizer comes from the checkpoint
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    assert model.tokenizer == datamodule.tokenizer
    assert model.hparams.sample_prompt == "\n\ndef "
    for text in datamodule.split_texts()["train"]:
        assert np.array_equal(model.tokenizer.encode(text), datamodule.tokenizer.encode(text))
    assert sample.main([str(run), "n=2", "prompt=def ", "length=8", f"out={tmp_path / 'drawn'}"]) == 0
    assert "scores: parse" in capsys.readouterr().out
    assert (tmp_path / "drawn" / "sample-n2-seed0.py").is_file()
    report = evaluate.evaluate({"run": str(run), "n": 4})
    assert report["split"] == "test" and 0 <= report["metrics"]["test/parse"] <= 1
    assert "test/loss" in report["metrics"] and "parse" in report["notes"]


@pytest.mark.parametrize("name", ["gpt_code"])
def test_experiment_composes_with_the_prompt_tied(name):
    cfg = compose([f"experiment={name}"])
    assert cfg.model.sample_prompt == cfg.data.prompt == "\n\ndef "
    assert cfg.data.tokenizer == "bpe"
    assert cfg.data._target_ == "genlab.data.code.CodeDataModule"
