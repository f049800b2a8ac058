from __future__ import annotations

from pathlib import Path

import pytest

from genlab.results import loss_curves_svg, main


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "metrics-cache"  # shared with tests/metrics: one classifier
    path.mkdir(exist_ok=True)
    return path


def _page(tmp_path: Path, cache: Path, families: str) -> Path:
    out = tmp_path / "docs" / "results.md"
    argv = ["--quick", "--families", families, "--out", str(out), "--log-dir", str(tmp_path / "logs")]
    assert main([*argv, "--n", "100", "--cache-dir", str(cache)]) == 0
    return out


def test_quick_results_page(tmp_path: Path, cache: Path) -> None:
    out = _page(tmp_path, cache, "vae")
    page = out.read_text()
    assert len([line for line in page.splitlines() if line.startswith("| vae |")]) == 1 and "Quick mode" in page
    assert "![vae samples](results/vae_samples.png)" in page
    for name in ("vae_samples.png", "vae_loss.svg"):
        assert (out.parent / "results" / name).stat().st_size > 0, name


@pytest.mark.slow
def test_quick_results_page_every_family(tmp_path: Path, cache: Path) -> None:
    _page(tmp_path, cache, "vae,gpt")
    page = _page(tmp_path, cache, "vae,gpt,gpt_feedback").read_text()  # a second time remakes its own run folders
    assert "| gpt |" in page and "| vae |" in page and "| gpt_feedback |" in page  # fine-tuned from the gpt run


def test_loss_curves_svg_draws_both_curves() -> None:
    rows = [{"step": str(s), "train/loss": str(10 - s), "val/loss": str(11 - s) if s % 5 else ""} for s in range(10)]
    svg = loss_curves_svg(rows)
    assert svg.startswith("<svg") and svg.count("<polyline") == 2
