"""Python source code for language models, split by file.

    (default)       the running Python's own standard library, `sysconfig.get_paths()["stdlib"]`:
                    every `.py` file but the test suites (`test/`, `tests/`, `idle_test/`, `test_*.py`),
                    `site-packages/` and the generated codec tables of `encodings/` (one near-identical
                    table per codec). CPython 3.11: ~600 files, ~10M characters. Python Software
                    Foundation License (see the README).
    path=FOLDER     every `.py` file under FOLDER (hidden folders, `__pycache__` and `site-packages`
                    skipped); a file that is not UTF-8 is skipped with a warning

The split is by file and decided by the file alone: the first 32 bits of sha1(relative path), as a
fraction u in [0, 1), put the file in "val" when u < val_fraction, in "test" when u < val_fraction +
test_fraction, else in "train". Train, val and test thus never share a file, and adding files to the
folder never moves another file to another split. Each split's files are joined in path order, as
they are (each ends with its newline). Tokenizing, the token cache, the window samplers and their
exact mid-epoch resume are TextDataModule's (this module only supplies `split_texts`).

Domain score of sampled code (`score`), on samples that continue `prompt` ("\n\ndef ": a top-level function;
after a bare "def " a model writes methods as often as the corpus has them):
    parse     the fraction whose FUNCTION parses with `ast.parse`. The function is prompt + sample up
              to (not including) the first non-blank line, after its header (the lines up to the first
              ending in ":"), that is indented less than the body's first line or not at all: the body
              has ended (most `def`s in the corpus are methods, whose bodies end at the next 4-space
              `def`). When no such line comes within the sample, the function is cut at the sample's
              last complete line (the last line, cut mid-way, is dropped): a body cut between statements
              parses, one cut inside a bracket or a string does not.
    complete  the fraction whose function ended within the sample AND parses (the strict version).
    unique    the fraction of distinct functions among the samples (1.0: no two alike).
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from genlab.data.text import DocumentsDataModule
from genlab.errors import ConfigError, DataError

SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__"}
STDLIB_SKIPPED_DIRS = {"test", "tests", "idle_test", "encodings"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def python_files(root: Path, stdlib: bool = False) -> list[Path]:
    """The `.py` files under `root`, sorted, relative to it (see the module docstring for what is skipped)."""
    skipped = SKIPPED_DIRS | (STDLIB_SKIPPED_DIRS if stdlib else set())
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(part in skipped or part.startswith(".") for part in rel.parts[:-1]):
            continue
        if stdlib and rel.name.startswith("test_"):
            continue
        if path.is_file():
            files.append(rel)
    return sorted(files)


def split_of(rel: Path, val_fraction: float, test_fraction: float) -> str:
    """ "train", "val" or "test" for the file at `rel`, from the hash of its path alone."""
    u = int(hashlib.sha1(rel.as_posix().encode()).hexdigest()[:8], 16) / 16**8
    return "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"


def function_of(text: str) -> tuple[str, bool]:
    """The function `text` starts with, and whether it ended within `text`. The header runs to the first line
    ending in ":"; the body's indentation is that of its first non-blank line; the function ends before the
    first non-blank line indented less than the body (a method's body ends at the next method, at 4 spaces)
    or at column 0. When no such line comes, it is cut at the last complete line (the last line dropped)."""
    lines = text.lstrip("\n").split("\n")  # a prompt may start with blank lines ("\n\ndef ")
    in_header, body_indent = not lines[0].rstrip().endswith(":"), None
    for i in range(1, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" \t"))
        if indent == 0 or (body_indent is not None and indent < body_indent):
            return "\n".join(lines[:i]).rstrip() + "\n", True
        if in_header:  # a signature over several lines
            in_header = not line.rstrip().endswith(":")
        elif body_indent is None:
            body_indent = indent
    return "\n".join(lines[:-1]).rstrip() + "\n", False


def parses(source: str) -> bool:
    """Does `source` parse with `ast.parse`? Blank source does not count as parsing."""
    if not source.strip():
        return False
    try:
        with warnings.catch_warnings():  # sampled code may hold invalid escapes ("\d"): a SyntaxWarning
            warnings.simplefilter("ignore")
            ast.parse(source)
    except (SyntaxError, ValueError):  # ValueError: a NUL byte in the source
        return False
    return True


class CodeDataModule(DocumentsDataModule):
    """Python files as token windows for next-token prediction (see the module docstring), with a test split
    (`test_dataloader`) and a domain score for sampled code."""

    def __init__(
        self,
        path: str | None = None,
        prompt: str = "\n\ndef ",
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        **text_options: Any,
    ) -> None:
        """`path`: a folder of `.py` files (null: the standard library). `prompt`: what samples continue
        (the experiment ties `model.sample_prompt` to it), which `score` reads as the start of a function.
        The other arguments are DocumentsDataModule's; `val_fraction`/`test_fraction` are fractions of FILES."""
        if not prompt:
            raise ConfigError("data.prompt is empty: give the start of every sample, e.g. 'def '")
        super().__init__(val_fraction=val_fraction, test_fraction=test_fraction, **text_options)
        self.folder, self.prompt = path, prompt

    @property
    def source(self) -> Path:
        return stdlib_root() if self.folder is None else Path(self.folder).expanduser()

    def split_texts(self) -> dict[str, list[str]]:
        root = self.source
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise DataError(f"data.path: '{root}' {what}; give a folder of .py files")
        files = python_files(root, stdlib=self.folder is None)
        if not files:
            raise DataError(f"data.path: no .py file under '{root}'; give a folder of Python sources")
        texts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        unreadable = []
        for rel in files:
            try:
                text = (root / rel).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                unreadable.append(rel.as_posix())
                continue
            if text:
                texts[split_of(rel, self.val_fraction, self.test_fraction)].append(text)
        if unreadable:
            shown = ", ".join(unreadable[:5]) + (" ..." if len(unreadable) > 5 else "")
            rank_zero_warn(f"skipped {len(unreadable)} .py file(s) under '{root}' that are not UTF-8 text: {shown}")
        for split, docs in texts.items():
            if not docs:
                raise DataError(
                    f"data.path: the {split} split of '{root}' got no file ({len(files)} files, "
                    f"val_fraction={self.val_fraction}, test_fraction={self.test_fraction}): give more files "
                    "or larger fractions"
                )
        return texts

    metric_notes = {
        "parse": "fraction of sampled functions that parse (ast.parse), cut at their end or last whole line",
        "complete": "fraction of sampled functions that ended within the sample and parse",
        "unique": "fraction of distinct sampled functions",
    }

    def _with_prompt(self, sample: str) -> str:
        # GPTModule.sample leaves the prompt out; generate() (a prompt given to `make sample`) keeps it.
        return sample if sample.lstrip("\n").startswith(self.prompt.lstrip("\n")) else self.prompt + sample

    def score(self, samples: list[str], split: str = "test") -> dict[str, float]:
        """parse, complete and unique of the samples (definitions in the module docstring); they need no
        reference, so `split` changes nothing."""
        if not samples:
            return {}
        functions = [function_of(self._with_prompt(s)) for s in samples]
        ok = [parses(f) for f, _ in functions]
        return {
            "parse": sum(ok) / len(samples),
            "complete": sum(o and ended for o, (_, ended) in zip(ok, functions, strict=True)) / len(samples),
            "unique": len({f for f, _ in functions}) / len(samples),
        }

    def write_samples(self, samples: list[str], folder: Path, stem: str) -> list[Path]:
        """`<stem>.py`: each sample's function (as `score` cuts it) under a comment saying whether it parses."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        parts = []
        for i, sample in enumerate(samples):
            function, ended = function_of(self._with_prompt(sample))
            status = "parses" if parses(function) else "does not parse"
            parts.append(f"# sample {i}: {status}{'' if ended else ', cut at the end of the sample'}\n{function}")
        path = folder / f"{stem}.py"
        path.write_text("\n\n".join(parts), encoding="utf-8")
        return [path]
