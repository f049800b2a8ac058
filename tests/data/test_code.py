import ast
import warnings
from pathlib import Path

import numpy as np
import pytest

from genlab.baselines import NgramModel
from genlab.data.code import CodeDataModule, function_of, python_files, split_of, stdlib_root
from genlab.errors import ConfigError, DataError


def write_package(root: Path, n: int = 40) -> dict[str, str]:
    """`n` small modules in two sub-packages, plus files that must be skipped; returns {relative path: text}."""
    files = {}
    for i in range(n):
        rel = f"pkg{i % 2}/mod_{i:02d}.py"
        files[rel] = f"def f{i}(x):\n    y = x * {i}\n    return y + {i}\n\n\nclass C{i}:\n    value = {i}\n"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    for skipped in ("__pycache__/cached.py", ".venv/lib.py", "site-packages/dep.py"):
        (root / skipped).parent.mkdir(parents=True, exist_ok=True)
        (root / skipped).write_text("def skipped(): pass\n", encoding="utf-8")
    (root / "notes.txt").write_text("not python\n", encoding="utf-8")
    return files


def test_split_is_by_file_deterministic_and_disjoint(tmp_path):
    files = write_package(tmp_path)
    assert [p.as_posix() for p in python_files(tmp_path)] == sorted(files)
    dm = CodeDataModule(path=str(tmp_path), val_fraction=0.25, test_fraction=0.25, data_dir=str(tmp_path / "cache"))
    texts = dm.split_texts()
    placed = {text: split for split, docs in texts.items() for text in docs}
    assert sorted(placed) == sorted(files.values())  # every file once (the texts are all distinct)
    assert sum(len(docs) for docs in texts.values()) == len(files)
    for rel, text in files.items():  # the split is the path's alone: the same with other files around
        assert placed[text] == split_of(Path(rel), 0.25, 0.25)
    assert all(texts[split] for split in ("train", "val", "test"))


def test_setup_gives_windows_of_each_split_and_a_test_loader(tmp_path):
    write_package(tmp_path)
    dm = CodeDataModule(
        path=str(tmp_path), val_fraction=0.25, test_fraction=0.25, block_size=8, batch_size=4, data_dir=str(tmp_path)
    )
    dm.setup("fit")
    texts = dm.split_texts()
    for split in ("train", "val", "test"):
        windows = dm.splits[split]
        assert dm.tokenizer.decode(dm.tokens[windows.start : windows.stop]) == "".join(texts[split])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 8)
    batches = list(dm.test_dataloader())
    assert batches and all(b[0].shape[1] == 8 for b in batches)


def test_bpe_round_trips_every_training_file(tmp_path):
    files = write_package(tmp_path)
    dm = CodeDataModule(
        path=str(tmp_path), tokenizer="bpe", vocab_size=320, val_fraction=0.25, test_fraction=0.25, block_size=4,
        data_dir=str(tmp_path),
    )  # fmt: skip
    dm.setup()
    train = dm.split_texts()["train"]
    for text in train:
        assert dm.tokenizer.decode(dm.tokenizer.encode(text)) == text
    assert dm.tokenizer.decode(dm.tokens[: dm.splits["train"].stop]) == "".join(train)
    assert dm.tokens.dtype == np.uint16 and int(dm.tokens.max()) < dm.vocab_size <= 320
    assert len(dm.tokens) < sum(len(t) for t in files.values()) / 2  # merges learnt


def test_bad_folders_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no code here\n")
    with pytest.raises(DataError, match=r"data.path: no \.py file under") as err:
        CodeDataModule(path=str(tmp_path / "empty")).setup()
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        CodeDataModule(path=str(tmp_path / "missing")).setup()
    with pytest.raises(ConfigError, match="test_fraction"):
        CodeDataModule(val_fraction=0.5, test_fraction=0.5)
    write_package(tmp_path / "code", n=40)
    (tmp_path / "code" / "latin1.py").write_bytes(b"s = '\xe9t\xe9'\n")
    with pytest.warns(UserWarning, match="not UTF-8 text: latin1.py"):
        CodeDataModule(path=str(tmp_path / "code"), val_fraction=0.25, test_fraction=0.25).split_texts()


def test_score_on_known_snippets(tmp_path):
    assert function_of("def f(x):\n    return x\n\nprint(f(1))\n") == ("def f(x):\n    return x\n", True)
    assert function_of("def f(x):\n    a = 1\n    b = (2,") == ("def f(x):\n    a = 1\n", False)
    assert function_of("\n\ndef f():\n    pass\nx") == ("def f():\n    pass\n", True)  # a prompt "\n\ndef "
    method = "def m(self,\n      x):\n        if x:\n            return 1\n\n    def n(self):\n"  # a method's body
    assert function_of(method) == ("def m(self,\n      x):\n        if x:\n            return 1\n", True)
    dm = CodeDataModule(path=str(tmp_path))  # score needs no data
    samples = [
        "f(x):\n    return x + 1\n\nclass A:\n",  # parses, ended
        "g(x):\n    y = x\n    return (y,",  # cut inside a bracket: the last line dropped, parses, not ended
        "h(x:\n    return x\n\n",  # broken signature
        "i():\n  return 'unterminated\n\nx = 1\n",  # broken string
        "f(x):\n    return x + 1\n\nclass A:\n",  # a duplicate of the first
        "no newline at all",  # nothing but a cut first line: no function
    ]
    assert dm.score(samples) == pytest.approx({"parse": 3 / 6, "complete": 2 / 6, "unique": 5 / 6})
    assert dm.score(["def f():\n    pass\nx\n"])["complete"] == 1  # a sample holding its prompt is not prefixed


def test_write_samples_writes_a_python_file(tmp_path):
    dm = CodeDataModule(path=str(tmp_path))
    [path] = dm.write_samples(["f(x):\n    return x\n\ny", "g(:\n    pass\n\nz"], tmp_path / "out", "samples_final")
    assert path == tmp_path / "out" / "samples_final.py"
    text = path.read_text()
    assert "# sample 0: parses\ndef f(x):\n    return x\n" in text and "# sample 1: does not parse" in text
    ast.parse(text.split("# sample 1")[0])  # the parsing samples form valid Python


def test_stdlib_default_skips_tests_and_site_packages():
    files = {p.as_posix() for p in python_files(stdlib_root(), stdlib=True)}
    assert {"ast.py", "json/decoder.py"} <= files and len(files) > 300
    assert not any(part in ("test", "tests", "site-packages", "encodings") for f in files for part in f.split("/"))


def test_ngram_baseline_is_scored_the_same_way(tmp_path):
    write_package(tmp_path)
    dm = CodeDataModule(path=str(tmp_path), val_fraction=0.25, test_fraction=0.25)
    model = NgramModel(order=8).fit(dm.split_texts()["train"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scoring sampled junk raises no SyntaxWarning
        scores = dm.score(model.sample(20, length=60, prompt=dm.prompt, seed=0))
    assert scores["parse"] > 0.5  # an 8-gram of these tiny modules copies them
