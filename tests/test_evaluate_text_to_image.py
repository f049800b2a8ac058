"""make eval for text-to-image: scenes drawn for the test captions are scored for image quality and prompt
alignment (seen vs held-out, N recorded); the retrieval baseline and the label-conditioned view obey the
sample(prompts=...) contract. The checker's classifier is the nearest-digit stand-in (no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from digit_lookup import DigitLookup

import genlab.evaluate as evaluate_module
from genlab.baselines import LabelConditionedView, RetrievalBaseline
from genlab.data import CaptionedDigitsDataModule
from genlab.data.captioned_digits import CaptionedScenes, Scene, parse, rendered_digits
from genlab.data.mnist5k import read_mnist5k
from genlab.errors import ConfigError, DataError
from genlab.evaluate import draw_for_prompts, main
from genlab.metrics.alignment import AlignmentChecker, summarise

DATA = {"train_scenes": 300, "val_scenes": 20, "test_scenes": 200, "seed": 0, "batch_size": 16}
CELLS = {"large": (-1,), "count": (0, 1, 3), "above": (1, 3), "left": (2, 3)}


class Oracle(L.LightningModule):
    """A stand-in text-to-image model obeying the interface: it draws every prompt's composition exactly
    (with test digits), or a blank canvas (`blank=True`)."""

    def __init__(self, blank: bool = False) -> None:
        super().__init__()
        self.blank = blank
        self.large, self.small = rendered_digits(32, 1, 256)
        labels = read_mnist5k()[1]
        self.first = {d: int((labels == d).nonzero()[-1]) for d in range(10)}  # an image of each digit

    def sample(self, n: int, prompts: list[str], guidance: float = 1.0, steps: int | None = None) -> torch.Tensor:
        assert len(prompts) == n
        if self.blank:
            return torch.full((n, 1, 32, 32), -1.0)
        scenes = []
        for prompt in prompts:
            comp = parse(prompt)
            cells = CELLS.get(comp.kind, (comp.cell if comp.cell is not None else 0,))[: len(comp.digits)]
            scenes.append(Scene(prompt, comp, cells, tuple(self.first[d] for d in comp.digits)))
        return CaptionedScenes(scenes, torch.zeros(n, 1), self.large, self.small)[list(range(n))][0]


@pytest.fixture(scope="module")
def data() -> CaptionedDigitsDataModule:
    dm = CaptionedDigitsDataModule(**DATA)
    dm.setup("fit")
    return dm


@pytest.fixture
def lookup(monkeypatch) -> None:
    monkeypatch.setattr("genlab.metrics.alignment.alignment_checker", lambda *a, **k: AlignmentChecker(DigitLookup()))


def _scores(data: CaptionedDigitsDataModule, sampler, scenes: list[Scene] | None = None) -> dict[str, float]:
    scenes = data.scenes["test"] if scenes is None else scenes
    comps, prompts = [s.composition for s in scenes], [s.caption for s in scenes]
    images = draw_for_prompts(sampler, prompts, seed=0, batch_size=64)
    return summarise(comps, AlignmentChecker(DigitLookup()).score(images, comps), [data.is_heldout(c) for c in comps])


def test_retrieval_is_perfect_on_seen_captions_and_cannot_compose_held_out_ones(data) -> None:
    retrieval = RetrievalBaseline(data)
    library = set(data.captions("train"))
    seen = [s for s in data.scenes["test"] if s.caption in library]
    images = retrieval.sample(len(seen), prompts=[s.caption for s in seen])
    train_images = data.splits["train"][list(range(300))][0]
    assert all((train_images == image).flatten(1).all(1).any() for image in images)  # training scenes, returned
    assert _scores(data, retrieval, seen)["align_seen/exact"] == 1.0  # a caption in the library: its scene
    scores = _scores(data, retrieval)
    assert scores["align_heldout/n"] > 0 and scores["align_heldout/exact"] == 0.0  # never in the library
    assert torch.equal(retrieval.sample(3, ["a 3 above a 7"] * 3), retrieval.sample(3, ["a 3 above a 7"] * 3))


def test_label_conditioned_view_draws_large_digits_and_refuses_other_captions(data) -> None:
    view = LabelConditionedView(Labelled())
    prompts = ["a seven", "the digit 3", "a big 8"]
    assert all(view.expressible(p) for p in prompts) and not view.expressible("a 3 above a 7")
    images = view.sample(3, prompts)
    scores = AlignmentChecker(DigitLookup()).score(images, prompts)
    assert all(s["exact"] for s in scores)
    with pytest.raises(DataError, match="cannot express 'a 3 above a 7'"):
        view.sample(1, ["a 3 above a 7"])


def test_an_oracle_aligns_everywhere_and_a_blank_model_nowhere(data) -> None:
    perfect, blank = _scores(data, Oracle()), _scores(data, Oracle(blank=True))
    for group in ("seen", "heldout"):
        assert perfect[f"align_{group}/exact"] == 1.0 and blank[f"align_{group}/exact"] == 0.0


def test_eval_of_a_text_to_image_run_reports_alignment_beside_fid(data, lookup, tmp_path: Path, monkeypatch, capsys):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    config = {"data": {"_target_": "genlab.data.CaptionedDigitsDataModule", **DATA}}
    monkeypatch.setattr(evaluate_module, "load", lambda run, device=None: (Oracle(), ckpt, config))
    monkeypatch.setattr(evaluate_module, "family_figures", lambda *a: ({"test/loss": 0.5}, "test"))
    args = [str(tmp_path / "run"), "n=100", f"cache_dir={tmp_path / 'cache'}", "guidance=3"]
    assert main(args) == 0
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    metrics = report["metrics"]
    assert metrics["align_seen/exact"] == 1.0 and metrics["real_test/align_seen/exact"] == 1.0
    assert metrics["align_seen/n"] + metrics.get("align_heldout/n", 0) == 100 and "fid" in metrics
    assert report["options"] == {"guidance": 3.0} and "exact" in report["notes"]
    out = capsys.readouterr().out
    assert "prompt alignment" in out and "align_seen/exact" in out


def test_eval_of_the_retrieval_baseline_needs_no_run(lookup, tmp_path: Path) -> None:
    overrides = [f"data.{k}={v}" for k, v in DATA.items() if k != "seed"]
    report = evaluate_module.evaluate(
        {
            "run": "retrieval",
            "n": 100,
            "cache_dir": str(tmp_path),
            "out": str(tmp_path / "e.json"),
            "data_overrides": overrides,
        }
    )
    assert report["model"] == "RetrievalBaseline" and report["metrics"]["near_copies"] == 1.0  # it copies
    assert report["metrics"]["align_heldout/exact"] == 0.0 and report["metrics"]["real_test/align_heldout/exact"] == 1


def test_a_model_without_prompts_is_refused_in_one_line() -> None:
    class Unconditional:
        def sample(self, n: int) -> torch.Tensor:
            return torch.zeros(n, 1, 32, 32)

    with pytest.raises(ConfigError, match="cannot draw from captions"):
        draw_for_prompts(Unconditional(), ["a seven"], seed=0, batch_size=8)

    class NoGuidance:
        def sample(self, n: int, prompts: list[str]) -> torch.Tensor:
            return torch.zeros(n, 1, 32, 32)

    with pytest.raises(ConfigError, match="guidance: the NoGuidance"):
        draw_for_prompts(NoGuidance(), ["a seven"], seed=0, batch_size=8, guidance=2.0)
    assert draw_for_prompts(NoGuidance(), ["a seven"] * 3, seed=0, batch_size=2).shape == (3, 1, 32, 32)


class Labelled(L.LightningModule):
    """A class-conditional stand-in: each label's digit, 28x28, as a conditional mnist5k run draws."""

    def sample(self, n: int, labels: torch.Tensor, guidance: float | None = None) -> torch.Tensor:
        oracle = Oracle()
        return torch.stack([oracle.large[oracle.first[int(k)], :, 2:30, 2:30] for k in labels])


def test_eval_captions_scores_a_label_conditioned_run_on_what_a_label_expresses(lookup, tmp_path, monkeypatch):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    config = {"data": {"num_classes": 10}, "seed": 0}
    monkeypatch.setattr(evaluate_module, "load", lambda run, device=None: (Labelled(), ckpt, config))
    overrides = [f"data.{k}={v}" for k, v in DATA.items() if k != "seed"]
    report = evaluate_module.evaluate(
        {"run": "x", "captions": 1, "cache_dir": str(tmp_path), "data_overrides": overrides}
    )
    metrics = report["metrics"]
    assert metrics["align_all/exact"] == 1.0 and 0 < metrics["align/expressible"] < 0.5
    assert metrics["align_all/n"] == report["n"] > 0 and (tmp_path / "run" / "eval_captions.json").is_file()
    monkeypatch.setattr(evaluate_module, "load", lambda run, device=None: (Oracle(), ckpt, config))
    with pytest.raises(ConfigError, match="captions=1: the run is not a class-conditional"):
        evaluate_module.evaluate({"run": "x", "captions": 1})
