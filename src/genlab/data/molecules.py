"""Molecules as SMILES text for the GPT family: one molecule per line, scored with RDKit.

    (default)        the 5,000 NCI compounds RDKit ships (`rdkit/Data/NCI/first_5K.smi`), so a first
                     run needs nothing else
    path=FILE        a `.smi` file (SMILES in the first column) or a `.csv` file (a column named
                     "smiles", any case, else the first column): e.g. MOSES's dataset_v1.csv, which
                     the `molsets` wheel holds (`moses/dataset/data/train.csv.gz`; gzipped files are read as they are)
    encoding=selfies the same molecules as SELFIES strings (Krenn et al. 2020), decoded back to
                     SMILES for scoring

Every SMILES is canonicalized by RDKit and deduplicated before a deterministic split (a fixed
shuffle of the sorted molecules), so train/val/test never share a molecule, whatever the spelling
in the file. The splits are text, one molecule per line; the GPT's samples start after a newline,
so a sample's first line is one molecule.

Scores (`score(samples, split)`, the MOSES metrics of Polykovskiy et al. 2020), against `split`'s molecules
(the test split; the sample logger's `val/<key>` use the validation split):
    valid       fraction of samples whose first line RDKit parses
    unique      distinct canonical molecules / valid ones
    novel       distinct valid molecules not in the training split / distinct valid ones
    qed, sa     mean QED (Bickerton et al. 2012) and synthetic accessibility (Ertl & Schuffenhauer
                2009, RDKit Contrib's sascorer) of the valid samples; `qed_data`, `sa_data` the same
                for the reference split
    qed_w1, sa_w1  the Wasserstein-1 distance between the samples' and the reference split's values
    int_div     internal diversity, MOSES's IntDiv1 (1 - mean Tanimoto similarity of Morgan fingerprints
                over all pairs, duplicates kept) of the valid samples; `int_div_data` the same for the reference
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import random
import sys
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from genlab.data.text import DocumentsDataModule, write_atomically
from genlab.errors import ConfigError, DataError

Encoding = Literal["smiles", "selfies"]
SPLITS = ("train", "val", "test")


def _chem():
    """RDKit's Chem with its per-molecule parse errors silenced: a sampled batch has many invalid
    SMILES, and RDKit would print a line for each."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    return Chem


def embedded_path() -> Path:
    from rdkit import RDConfig

    return Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"


def canonical(smiles: str) -> str | None:
    """RDKit's canonical SMILES, or None when `smiles` does not parse (or is empty)."""
    smiles = smiles.strip()
    if not smiles:
        return None
    mol = _chem().MolFromSmiles(smiles)
    return _chem().MolToSmiles(mol) if mol is not None and mol.GetNumAtoms() > 0 else None


def qed_of(smiles: str) -> float | None:
    """QED in [0, 1] (drug-likeness), None when `smiles` is not a valid molecule."""
    from rdkit.Chem import QED

    mol = _chem().MolFromSmiles(smiles.strip()) if smiles.strip() else None
    return float(QED.qed(mol)) if mol is not None and mol.GetNumAtoms() > 0 else None


@cache
def _sascorer():
    try:
        from rdkit.Contrib.SA_Score import sascorer  # recent wheels make Contrib a package
    except ImportError:
        from rdkit import RDConfig

        sys.path.append(os.path.join(RDConfig.RDContribDir, "SA_Score"))
        import sascorer  # type: ignore[no-redef]
    return sascorer


def sa_of(smiles: str) -> float | None:
    """Synthetic accessibility, 1 (easy) to 10 (hard); None when `smiles` is not a valid molecule."""
    mol = _chem().MolFromSmiles(smiles.strip()) if smiles.strip() else None
    return float(_sascorer().calculateScore(mol)) if mol is not None and mol.GetNumAtoms() > 0 else None


def read_smiles(path: Path) -> list[str]:
    """The SMILES strings of a `.smi` (first whitespace-separated column) or `.csv` file, as written;
    either may be gzipped (`.csv.gz`: how the molsets wheel ships MOSES's train.csv.gz/test.csv.gz)."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DataError(f"data.path: '{path}' {what}; give a .smi or .csv file of SMILES")
    zipped = path.suffix.lower() == ".gz"
    kind = Path(path.stem).suffix.lower() if zipped else path.suffix.lower()
    with (gzip.open if zipped else open)(path, "rt", encoding="utf-8", newline="") as file:
        if kind == ".csv":
            rows = csv.reader(file)
            header = next(rows, [])
            names = [h.strip().lower() for h in header]
            column = names.index("smiles") if "smiles" in names else 0
            first = [] if "smiles" in names else header[:1]  # no header: the first row is a molecule
            return first + [row[column] for row in rows if len(row) > column]
        return [line.split()[0] for line in file if line.strip()]


def split_molecules(smiles: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Canonical, deduplicated molecules split three ways; the same input gives the same split."""
    molecules = sorted({c for s in smiles if (c := canonical(s)) is not None})
    random.Random(seed).shuffle(molecules)
    n_val, n_test = int(len(molecules) * val_fraction), int(len(molecules) * test_fraction)
    return {
        "train": molecules[n_val + n_test :],
        "val": molecules[:n_val],
        "test": molecules[n_val : n_val + n_test],
    }


def to_selfies(smiles: str) -> str | None:
    """SELFIES of a SMILES, None for the few that SELFIES cannot express (e.g. RDKit's dative bonds `->`)."""
    import selfies

    try:
        return selfies.encoder(smiles, strict=False)
    except selfies.EncoderError:
        return None


def from_selfies(text: str) -> str:
    import selfies

    try:
        return selfies.decoder(text)
    except Exception:  # selfies raises its own DecoderError (and others) for malformed symbols
        return ""


def first_line(sample: str) -> str:
    """The molecule a sample holds: its first non-empty line (a sample begins after a newline)."""
    for line in sample.split("\n"):
        if line.strip():
            return line.strip()
    return ""


def internal_diversity(smiles: list[str], max_molecules: int = 1000, seed: int = 0) -> float:
    """MOSES's IntDiv1 (`moses.metrics.internal_diversity`, p=1): 1 - the mean Tanimoto similarity of
    Morgan fingerprints (radius 2, 1024 bits) over all n^2 ordered pairs of the molecules, each with
    itself included and duplicates kept, so a sampler that repeats one molecule scores near 0 as in
    MOSES. At most `max_molecules` of them, drawn with `seed` (pairs grow as n^2). NaN for none."""
    from rdkit import DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    molecules = sorted(smiles)  # sorted: the draw below depends on the molecules, not their order
    if len(molecules) > max_molecules:
        molecules = random.Random(seed).sample(molecules, max_molecules)
    if not molecules:
        return float("nan")
    morgan = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    fingerprints = [morgan.GetFingerprint(_chem().MolFromSmiles(s)) for s in molecules]
    total = sum(sum(DataStructs.BulkTanimotoSimilarity(fp, fingerprints)) for fp in fingerprints)
    return 1.0 - total / len(molecules) ** 2


def wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(a, b)) if len(a) and len(b) else float("nan")


class MoleculeScorer:
    """MOSES-style scores of sampled molecules against a training set and a reference set."""

    def __init__(self, train: list[str], reference: list[str], encoding: Encoding = "smiles") -> None:
        """`train`, `reference`: canonical SMILES (novelty against `train`, distributions against `reference`)."""
        self.train, self.encoding = set(train), encoding
        self.ref_qed = np.array([v for s in reference if (v := qed_of(s)) is not None])
        self.ref_sa = np.array([v for s in reference if (v := sa_of(s)) is not None])
        self.ref_int_div = internal_diversity(reference)

    def molecules(self, samples: list[str]) -> list[str | None]:
        """Each sample's molecule as canonical SMILES (None when invalid)."""
        lines = [first_line(s) for s in samples]
        if self.encoding == "selfies":
            lines = [from_selfies(line) for line in lines]
        return [canonical(line) for line in lines]

    def __call__(self, samples: list[str]) -> dict[str, float]:
        molecules = self.molecules(samples)
        valid = [m for m in molecules if m is not None]
        distinct = set(valid)
        qed = np.array([qed_of(m) for m in valid])
        sa = np.array([sa_of(m) for m in valid])
        nan = float("nan")
        return {
            "valid": len(valid) / max(1, len(samples)),
            "unique": len(distinct) / len(valid) if valid else 0.0,
            "novel": len(distinct - self.train) / len(distinct) if distinct else 0.0,
            "qed": float(qed.mean()) if len(qed) else nan,
            "qed_data": float(self.ref_qed.mean()),
            "qed_w1": wasserstein1(qed, self.ref_qed),
            "sa": float(sa.mean()) if len(sa) else nan,
            "sa_data": float(self.ref_sa.mean()),
            "sa_w1": wasserstein1(sa, self.ref_sa),
            "int_div": internal_diversity(valid),
            "int_div_data": self.ref_int_div,
        }


def load_splits(
    path: str | None, val_fraction: float, test_fraction: float, seed: int, data_dir: str | Path
) -> dict[str, list[str]]:
    """The canonical SMILES of each split. A file given by path is canonicalized once and the split
    kept in `data_dir` (keyed on the file's path, size and mtime and the split's settings): canonicalizing
    the 1.9M molecules of MOSES takes minutes."""
    source = embedded_path() if path is None else Path(path).expanduser()
    if path is None:
        smiles = read_smiles(source)
        return split_molecules(smiles, val_fraction, test_fraction, seed)
    if not source.is_file():
        read_smiles(source)  # raises the DataError naming data.path
    stat = source.stat()
    key = json.dumps([str(source.resolve()), stat.st_size, stat.st_mtime_ns, val_fraction, test_fraction, seed])
    cached = Path(data_dir) / f"{source.stem}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.splits.json"
    if cached.is_file():
        return json.loads(cached.read_text(encoding="utf-8"))
    smiles = read_smiles(source)
    splits = split_molecules(smiles, val_fraction, test_fraction, seed)
    if not any(splits.values()):
        raise DataError(
            f"data.path: '{source}' holds no valid molecule ({len(smiles)} line(s), none that RDKit parses as "
            "SMILES): give a .smi file with one SMILES per line or a .csv file with a 'smiles' column"
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(cached, json.dumps(splits) + "\n")
    return splits


def randomized(smiles: list[str], copies: int, seed: int) -> list[str]:
    """Each canonical SMILES and `copies` random spellings of it (RDKit's random atom orders, seeded), in a
    seeded shuffle: the same molecule's spellings are not neighbours a window could copy from."""
    chem = _chem()
    spellings = list(smiles)
    for i, s in enumerate(smiles):
        molecule_seed = seed * 1_000_003 + i + 1  # RDKit takes 0 as "unseeded"
        spellings += chem.MolToRandomSmilesVect(chem.MolFromSmiles(s), copies, randomSeed=molecule_seed)
    random.Random(seed).shuffle(spellings)
    return spellings


def split_texts(splits: dict[str, list[str]], encoding: Encoding) -> dict[str, list[str]]:
    """Each split as documents: "\n" + each molecule's string, then a last "\n" (one molecule per line)."""
    if encoding == "selfies":
        splits = {k: [e for s in v if (e := to_selfies(s)) is not None] for k, v in splits.items()}
    return {k: ["\n" + s for s in v] + ["\n"] for k, v in splits.items()}


def check_encoding(encoding: str) -> None:
    if encoding not in ("smiles", "selfies"):
        raise ConfigError(f"data.encoding must be 'smiles' or 'selfies', got {encoding!r}")


class MoleculesDataModule(DocumentsDataModule):
    """SMILES (or SELFIES) text, one molecule per line, split by molecule, with a test split
    (`test_dataloader`) and the scores of the module docstring. The windows, samplers (exact mid-epoch
    resume), tokenizers and token cache are TextDataModule's; this class supplies `split_texts`."""

    def __init__(
        self, path: str | None = None, encoding: Encoding = "smiles", randomize: int = 0, **text_options: Any
    ) -> None:
        """`path`: a .smi or .csv file (null: RDKit's NCI set); `encoding`: smiles | selfies; `randomize`:
        K random SMILES spellings of each training molecule besides its canonical one (augmentation,
        Arus-Pous et al. 2019); validation and test stay canonical. The other arguments are
        DocumentsDataModule's (fractions of the distinct molecules)."""
        check_encoding(encoding)
        if not isinstance(randomize, int) or randomize < 0:
            raise ConfigError(f"data.randomize must be a whole number of extra spellings (0: off), got {randomize!r}")
        super().__init__(**text_options)
        self.file, self.encoding, self.randomize = path, encoding, randomize
        self.molecules: dict[str, list[str]] = {}  # canonical SMILES per split
        self._scorers: dict[str, MoleculeScorer] = {}  # per reference split

    @property
    def source(self) -> Path:
        return embedded_path() if self.file is None else Path(self.file).expanduser()

    def split_texts(self) -> dict[str, list[str]]:
        """One document per molecule, "\n" + its string, and a last "\n": every molecule follows a newline,
        where the GPT's samples start."""
        if not self.molecules:
            self.molecules = load_splits(self.file, self.val_fraction, self.test_fraction, self.seed, self.data_dir)
            for split, molecules in self.molecules.items():
                if not molecules:
                    raise DataError(
                        f"data.path: the {split} split of '{self.source}' got no molecule "
                        f"({sum(map(len, self.molecules.values()))} in all): give more molecules or larger fractions"
                    )
        if self.randomize:
            train = randomized(self.molecules["train"], self.randomize, self.seed)
            return split_texts({**self.molecules, "train": train}, self.encoding)
        return split_texts(self.molecules, self.encoding)

    metric_notes = {
        "valid": "fraction of samples whose first line RDKit parses (SELFIES: decodes to a molecule)",
        "unique": "distinct valid molecules / valid molecules",
        "novel": "distinct valid molecules not in the training split / distinct valid molecules",
        "qed": "mean QED (drug-likeness, 0 to 1) of the valid samples",
        "qed_data": "mean QED of the reference split's molecules (make eval: the test split)",
        "qed_w1": "Wasserstein-1 distance between the QED of the valid samples and of the reference split",
        "sa": "mean synthetic accessibility (1 easy to 10 hard) of the valid samples",
        "sa_data": "mean synthetic accessibility of the reference split's molecules",
        "sa_w1": "Wasserstein-1 distance between the SA of the valid samples and of the reference split",
        "int_div": "1 - mean Tanimoto similarity (Morgan r=2) over all pairs of the valid samples (MOSES IntDiv1)",
        "int_div_data": "the same for the reference split's molecules",
    }

    def score(self, samples: list[str], split: str = "test") -> dict[str, float]:
        """The scores of the module docstring; QED/SA against `split`'s molecules (the sample logger: "val"),
        novelty against the training split's."""
        if split not in self._scorers:  # QED/SA of the reference set once (SA takes ~1 ms a molecule)
            self._scorers[split] = MoleculeScorer(self.molecules["train"], self.molecules[split], self.encoding)
        return self._scorers[split](samples)

    def write_samples(self, samples: list[str], folder: Path, stem: str) -> list[Path]:
        """`<stem>.smi`: the valid samples' canonical SMILES, each named by its sample's index (the raw
        text, invalid samples too, is written beside it as text)."""
        molecules = MoleculeScorer([], [], self.encoding).molecules(samples)
        lines = [f"{m}\tsample_{i}" for i, m in enumerate(molecules) if m is not None]
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stem}.smi"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return [path]
