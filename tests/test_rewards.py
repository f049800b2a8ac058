"""Rewards: one float per sample, for the plain-text, code, molecule and music domains."""

from __future__ import annotations

import importlib.util

import pytest

from genlab import rewards


def test_known_words_is_the_fraction_of_words_the_training_text_uses(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat. the cat ran. a dog. " * 3 + "VALIDATION ONLY words here", encoding="utf-8")
    scores = rewards.known_words(
        ["The cat sat on.", "xq zzv the dog.", "...", "the dog ran hom"], path=str(corpus), val_fraction=0.3
    )
    # "on" is not in the text; "hom" is left out: a sample ending in a letter may have cut its last word
    assert scores == [3 / 4, 2 / 4, 0.0, 1.0]
    assert rewards.known_words(["validation"], path=str(corpus), val_fraction=0.3) == [0.0]  # held-out text unused
    assert rewards.known_words(["help text, python."])[0] == 1.0  # the embedded corpus by default


def test_target_words_and_substring_count() -> None:
    assert rewards.target_words(["Python is a python; pythons", "no"], words=["python"]) == [2.0, 0.0]
    assert rewards.substring_count(["eee", "abc"], text="e") == [3.0, 0.0]


def test_python_parses_with_partial_credit() -> None:
    scores = rewards.python_parses(["def f(x):\n    return x\n", "x = 1\ny = 2\nz = (", "))("])
    assert scores == [1.0, pytest.approx(2 / 3), 0.0]


@pytest.mark.skipif(importlib.util.find_spec("rdkit") is None, reason="rdkit is not installed")
def test_molecule_qed_scores_valid_smiles_only() -> None:
    ethanol, aspirin = rewards.molecule_qed(["CCO", "CC(=O)Oc1ccccc1C(=O)O\nmore"])
    assert 0 < ethanol < aspirin < 1  # aspirin is the more drug-like (QED ~0.55 vs ~0.41)
    assert rewards.molecule_qed(["C1CC(", ""], invalid=-1.0) == [-1.0, -1.0]


@pytest.mark.skipif(importlib.util.find_spec("genlab.data.chorales") is None, reason="no chorales data module here")
def test_music_in_key_returns_one_score_per_sample() -> None:
    scores = rewards.music_in_key(["not music at all"], invalid=-1.0)
    assert len(scores) == 1 and (scores[0] == -1.0 or 0 <= scores[0] <= 1)
