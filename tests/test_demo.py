"""The demo page's logic without a browser: which controls each family gets, what a click draws, and
that bad input is one line (tests/test_demo_browser.py drives the page itself)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.config import compose
from genlab.demo import Entry, controls, generate, grid_image, load_entries, main
from genlab.instantiate import instantiate
from genlab.sample import generate_text
from genlab.sampling import draw

DIGITS = {"data": {"num_classes": 10}}  # the part of a run config the demo reads (the label menu)


def untrained(*overrides: str) -> Entry:
    config = compose(list(overrides))
    return Entry("untrained", instantiate(config.model).eval(), DIGITS)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["model=diffusion"], ["n", "seed", "label", "steps", "guidance"]),
        (["model=flow_matching"], ["n", "seed", "label", "steps", "guidance"]),
        (["model=diffusion", "model.net.conditioning=null", "model.guidance=1.0"], ["n", "seed", "steps"]),
        (["model=gan"], ["n", "seed"]),
        (["model=gan", "model.conditional=true"], ["n", "seed", "label"]),
        (["model=flow"], ["n", "seed", "temperature"]),
        (["model=vae"], ["n", "seed"]),
        (["model=autoencoder"], ["n", "seed"]),
    ],
)
def test_each_image_family_gets_the_controls_its_sample_takes(overrides: list[str], names: list[str]) -> None:
    entry = untrained(*overrides)
    found = {c.name: c for c in controls(entry.model, entry.config)}
    assert list(found) == names
    hp = entry.model.hparams
    if "steps" in found:  # the defaults are the run's own
        assert found["steps"].default == hp.sample_steps and found["steps"].kind is int
    if "guidance" in found:
        assert found["guidance"].default == hp.guidance
    if "label" in found:
        assert found["label"].choices == tuple(range(10)) and found["label"].default is None


def test_a_text_family_gets_prompt_temperature_and_length(tiny_gpt_run: Path) -> None:
    (entry,) = load_entries(str(tiny_gpt_run))
    found = {c.name: c for c in controls(entry.model, entry.config)}
    assert list(found) == ["n", "seed", "prompt", "temperature", "length"]
    assert found["prompt"].default == entry.model.hparams.sample_prompt and found["prompt"].kind is str
    assert found["length"].default == entry.model.hparams.sample_length
    image, text, status = generate(entry, {"n": 2, "seed": 1, "prompt": "the ", "temperature": 0.5, "length": 8})
    assert image is None and status.startswith("2 texts in ")
    expected = generate_text(entry.model, 2, 1, prompt="the ", temperature=0.5, length=8)
    assert text.split("\n\n----------\n\n") == expected  # what make sample writes, same seed
    assert entry.title == "gpt: base"


def test_a_click_draws_what_make_sample_draws() -> None:
    entry = untrained("model=diffusion", "model.sample_steps=2")
    image, text, status = generate(entry, {"n": 4, "seed": 3, "label": "7", "steps": 2, "guidance": 1.5})
    assert text is None and status.startswith("4 images in ") and "seed 3" in status and "label 7" in status
    labels = torch.full((4,), 7)
    expected = grid_image(draw(entry.model, 4, 3, labels, steps=2, guidance=1.5))
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    other, _, _ = generate(entry, {"n": 4, "seed": 4, "label": "7", "steps": 2, "guidance": 1.5})
    assert not np.array_equal(np.asarray(image), np.asarray(other))
    assert isinstance(image, Image.Image) and image.width >= 32 * 2  # 8x8 digits enlarged, 2x2 grid


@pytest.mark.parametrize(("sampler", "calls"), [("ddim", 3), ("heun", 5)])  # Heun: 2 steps - 1 net calls
def test_progress_counts_the_denoiser_calls(sampler: str, calls: int) -> None:
    entry = untrained("model=flow_matching" if sampler == "heun" else "model=diffusion", f"model.sampler={sampler}")
    heard = []
    _, _, status = generate(entry, {"n": 2, "steps": 3}, lambda done, total: heard.append((done, total)))
    assert status.startswith("2 images") and heard == [(i, calls) for i in range(1, calls + 1)]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"label": "12"}, "error: label: 12 is not one of this model's classes 0..9"),
        ({"steps": 0}, "error: sample(steps=...)"),
        ({"n": 0}, "error: n: give 1..256 samples, got 0"),
    ],
)
def test_bad_input_is_one_line_in_the_page(values: dict, message: str) -> None:
    entry = untrained("model=diffusion", "model.sample_steps=2")
    image, text, status = generate(entry, {"n": 2, "seed": 0} | values)
    assert image is None and text is None
    assert status.startswith(message) and "\n" not in status


def test_a_bug_is_one_line_in_the_page_and_a_traceback_in_the_log(caplog) -> None:
    entry = untrained("model=vae")

    def broken(n: int) -> torch.Tensor:
        raise RuntimeError("shapes do not match\nsecond line")

    entry.model.sample = broken
    _, _, status = generate(entry, {"n": 2})
    assert status == "error: RuntimeError: shapes do not match"
    assert "Traceback" in caplog.text


def test_several_runs_one_tab_each_and_a_missing_one_is_one_line(
    tiny_gpt_run: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = f"{tiny_gpt_run}, {tiny_gpt_run / 'checkpoints' / 'last.ckpt'}"
    assert [e.title for e in load_entries(runs)] == ["gpt: base", "gpt: last.ckpt"]
    served = []
    monkeypatch.setattr("genlab.demo.launch", lambda app, host, port: served.append((app, host, port)))
    assert main([runs, "port=7999", "device=cpu"]) == 0  # what make demo runs (the browser test serves one)
    ((app, host, port),) = served
    assert (host, port) == ("127.0.0.1", 7999) and "serving http://127.0.0.1:7999" in capsys.readouterr().out
    assert [t.label for t in app.blocks.values() if type(t).__name__ == "Tab"] == ["gpt: base", "gpt: last.ckpt"]
    assert main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "genlab-demo: error: run: no checkpoint at" in err and err.count("\n") == 1
    assert main(["colour=red"]) == 2
