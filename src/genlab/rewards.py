"""Rewards for fine-tuning a generator from feedback (`model=gpt_feedback`).

A reward is any callable `reward(samples: list[str]) -> list[float]`, one float per sample (the
decoded completions, prompt left out). In config it is named by `_target_`; a function taking
options besides the samples is given with `_partial_: true` and those options:

    reward:
      _target_: genlab.rewards.target_words
      _partial_: true
      words: [python, function]

Add your own by writing one function in any importable module and naming it there (a learned
reward model is the same: a function that scores the strings). Higher is better; the trainer
normalises within each group of samples, so the scale matters only for DPO's ranking (none).
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

WORD = re.compile(r"[A-Za-z]+")


@lru_cache(maxsize=4)
def corpus_words(path: str | None = None, min_count: int = 2, val_fraction: float = 0.1) -> frozenset[str]:
    """Lower-cased words seen at least `min_count` times in the training part of a text (the first
    1 - val_fraction, as TextDataModule splits it): the file at `path`, or the embedded corpus."""
    if path is None:
        from genlab.data.text import embedded_corpus

        text = embedded_corpus()
    else:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    text = text[: int(len(text) * (1 - val_fraction))]
    counts = Counter(w.lower() for w in WORD.findall(text))
    return frozenset(w for w, c in counts.items() if c >= min_count)


def known_words(
    samples: list[str], path: str | None = None, min_count: int = 2, val_fraction: float = 0.1
) -> list[float]:
    """Fraction of each sample's words (letters only) that the training text uses: spelling, for
    plain text. Words cut by the sample's end are left out; a sample without words scores 0."""
    vocabulary = corpus_words(path, min_count, val_fraction)
    scores = []
    for text in samples:
        words = WORD.findall(text)
        if words and text and text[-1].isalpha():
            words = words[:-1]  # the last word may be cut short by the sample's length
        scores.append(sum(w.lower() in vocabulary for w in words) / len(words) if words else 0.0)
    return scores


def target_words(samples: list[str], words: list[str]) -> list[float]:
    """How many times the sample uses any of `words` (whole words, any case): steering toward a topic."""
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    return [float(len(pattern.findall(text))) for text in samples]


def substring_count(samples: list[str], text: str = "e") -> list[float]:
    """How many times `text` occurs in the sample: a toy reward that any model can learn quickly."""
    return [float(sample.count(text)) for sample in samples]


def python_parses(samples: list[str]) -> list[float]:
    """1 if the sample is Python that `ast.parse` accepts, else the fraction of its lines, from the
    top, that do (partial credit, so a group of samples is rarely all equal)."""
    scores = []
    for text in samples:
        lines = text.split("\n")
        if _parses(text):
            scores.append(1.0)
            continue
        good = next((n for n in range(len(lines) - 1, 0, -1) if _parses("\n".join(lines[:n]))), 0)
        scores.append(good / len(lines))
    return scores


def _parses(text: str) -> bool:
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):  # ValueError: null bytes
        return False
    return True


def molecule_qed(samples: list[str], invalid: float = 0.0) -> list[float]:
    """QED (drug-likeness, Bickerton et al. 2012, in [0, 1]) of each sample read as one SMILES string
    (the first line); `invalid` for text that is not a molecule."""
    qed_of = _qed_function()
    scores = []
    for text in samples:
        lines = text.strip().split("\n")
        value = qed_of(lines[0].strip()) if lines[0].strip() else None
        scores.append(invalid if value is None else float(value))
    return scores


def _qed_function():
    try:  # the molecules data module's own reading of a SMILES string, when this checkout has it
        from genlab.data.molecules import qed_of

        return qed_of
    except ImportError:
        pass
    from rdkit import Chem, RDLogger
    from rdkit.Chem import QED

    RDLogger.DisableLog("rdApp.*")  # one parse error per invalid sample would flood the log

    def qed_of(smiles: str) -> float | None:
        molecule = Chem.MolFromSmiles(smiles)
        return None if molecule is None else QED.qed(molecule)

    return qed_of


def music_in_key(samples: list[str], invalid: float = 0.0) -> list[float]:
    """Fraction of a chorale's notes in its key (`genlab.data.chorales.in_key_fraction`); `invalid`
    for text that does not decode to music."""
    from genlab.data.chorales import in_key_fraction  # the chorales data module's decoding

    scores = []
    for text in samples:
        value = in_key_fraction(text)
        scores.append(invalid if value is None else float(value))
    return scores
