import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.data import molecules
from genlab.data.molecules import MoleculesDataModule, canonical, qed_of, sa_of
from genlab.errors import ConfigError, DataError
from genlab.models.gpt import GPTModule
from genlab.train import train


@pytest.fixture(scope="module")
def nci50(tmp_path_factory):
    """The first 50 NCI molecules RDKit ships, plus the first ten again spelled another way."""
    lines = molecules.embedded_path().read_text().splitlines()[:50]
    path = tmp_path_factory.mktemp("mols") / "nci50.smi"
    respelled = [
        molecules._chem().MolToSmiles(molecules._chem().MolFromSmiles(line.split()[0]), doRandom=True)
        for line in lines[:10]
    ]
    path.write_text("\n".join(lines + respelled) + "\n")
    return path


def test_split_by_molecule_deduplicated_and_repeatable(nci50, tmp_path):
    dm = MoleculesDataModule(
        path=str(nci50), block_size=16, data_dir=str(tmp_path), val_fraction=0.2, test_fraction=0.2
    )
    dm.setup()
    splits = {k: set(v) for k, v in dm.molecules.items()}
    assert sum(map(len, splits.values())) == 50  # the ten respelled ones are the same molecules
    assert not (splits["train"] & splits["val"] or splits["train"] & splits["test"] or splits["val"] & splits["test"])
    assert all(canonical(m) == m for s in splits.values() for m in s)
    again = MoleculesDataModule(
        path=str(nci50), block_size=16, data_dir=str(tmp_path), val_fraction=0.2, test_fraction=0.2
    )
    again.setup()
    assert again.molecules == dm.molecules and list(tmp_path.glob("nci50-*.splits.json"))
    # The token stream: one molecule per line, each after a newline; the char tokenizer round-trips it.
    train_text = dm.tokenizer.decode(dm.tokens[: dm.splits["train"].stop])
    assert train_text.split("\n")[1:-1] == dm.molecules["train"]
    assert dm.tokenizer.decode(dm.tokenizer.encode(train_text)) == train_text
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 16) and torch.equal(x[:, 1:], y[:, :-1])


def test_scores_of_known_molecules(nci50, tmp_path):
    assert 0 < qed_of("CCO") < 1 and qed_of("C1CC(") is None and qed_of("") is None
    assert 1 <= sa_of("c1ccccc1O") < 3 and sa_of("not a smiles") is None
    dm = MoleculesDataModule(path=str(nci50), block_size=16, data_dir=str(tmp_path))
    dm.setup()
    known = dm.molecules["train"][0]
    samples = ["CCO\nc1ccc", "OCC", "C1CC(", "c1ccccc1O\n", known + "\nCC"]  # ethanol twice, as samples start
    scores = dm.score(samples)
    assert scores["valid"] == pytest.approx(4 / 5)  # "C1CC(" has an unclosed ring and branch
    assert scores["unique"] == pytest.approx(3 / 4)
    assert scores["novel"] == pytest.approx(2 / 3)  # `known` is a training molecule
    assert 0 < scores["qed"] < 1 and 0 < scores["qed_data"] < 1 and scores["qed_w1"] > 0
    assert 1 <= scores["sa"] <= 10 and math.isfinite(scores["sa_w1"])
    test_set = ["\n" + m + "\n" for m in dm.molecules["test"]]
    itself = dm.score(test_set)
    assert itself["qed_w1"] == pytest.approx(0, abs=1e-9)  # the reference scores as itself
    assert itself["int_div"] == itself["int_div_data"] > 0.5
    assert molecules.internal_diversity(["CCO", "OCC"]) == 0  # one molecule spelt twice: identical fingerprints
    assert math.isnan(molecules.internal_diversity([]))
    # no shared Morgan bit: the two cross pairs score 0, the two self pairs 1 (MOSES counts them)
    assert molecules.internal_diversity(["CCO", "c1ccccc1"]) == pytest.approx(0.5)
    assert 0 < molecules.internal_diversity(["CCO", "CCCO", "c1ccccc1"]) < 1
    (path,) = dm.write_samples(samples, tmp_path / "samples", "final")
    assert path.suffix == ".smi"
    lines = path.read_text().splitlines()
    assert [line.split("\t")[1] for line in lines] == ["sample_0", "sample_1", "sample_3", "sample_4"]
    assert all(canonical(line.split("\t")[0]) for line in lines)


def test_randomized_spellings_are_the_training_molecules_and_only_theirs(nci50, tmp_path):
    dm = MoleculesDataModule(path=str(nci50), randomize=3, block_size=16, data_dir=str(tmp_path))
    texts = dm.split_texts()
    train = [t.strip() for t in texts["train"][:-1]]
    assert len(train) == 4 * len(dm.molecules["train"]) and len(set(train)) > 2 * len(dm.molecules["train"])
    assert sorted(canonical(s) for s in train) == sorted(dm.molecules["train"] * 4)  # spellings of the same molecules
    assert [t.strip() for t in texts["val"][:-1]] == dm.molecules["val"]  # held-out splits stay canonical
    assert dm.split_texts() == texts  # seeded: a resumed run reads the same text
    with pytest.raises(ConfigError, match="data.randomize"):
        MoleculesDataModule(path=str(nci50), randomize=-1)


def test_selfies_encoding_decodes_back_to_the_molecules(nci50, tmp_path):
    dm = MoleculesDataModule(path=str(nci50), encoding="selfies", block_size=16, data_dir=str(tmp_path))
    dm.setup()
    lines = dm.tokenizer.decode(dm.tokens[: dm.splits["train"].stop]).split("\n")[1:-1]
    assert all(line.startswith("[") for line in lines)
    assert [canonical(molecules.from_selfies(s)) for s in lines] == dm.molecules["train"]
    assert dm.score(["\n" + lines[0] + "\n", "[C][=Branch1"])["valid"] == pytest.approx(1 / 2)


def test_a_file_without_molecules_and_bad_settings_fail_in_one_line(tmp_path):
    junk = tmp_path / "junk.smi"
    junk.write_text("hello world\n((((\n")
    with pytest.raises(DataError, match=r"data\.path: .*junk\.smi' holds no valid molecule") as err:
        MoleculesDataModule(path=str(junk), data_dir=str(tmp_path)).setup()
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        MoleculesDataModule(path=str(tmp_path / "missing.smi"), data_dir=str(tmp_path)).setup()
    with pytest.raises(ConfigError, match="data.encoding"):
        MoleculesDataModule(encoding="inchi")


def test_csv_with_a_smiles_column(tmp_path):
    path = tmp_path / "mols.csv"
    path.write_text("SMILES,SPLIT\nCCO,train\nc1ccccc1,test\nCC(=O)O,train\n")
    assert molecules.read_smiles(path) == ["CCO", "c1ccccc1", "CC(=O)O"]
    zipped = tmp_path / "mols.csv.gz"  # as the molsets wheel ships MOSES
    zipped.write_bytes(gzip.compress(path.read_bytes()))
    assert molecules.read_smiles(zipped) == ["CCO", "c1ccccc1", "CC(=O)O"]


def test_a_short_run_writes_and_scores_molecules(nci50, tmp_path, make_config):
    cfg = make_config(
        "experiment=gpt_molecules",
        f"data.path={nci50}",
        f"data.data_dir={tmp_path}",
        "data.block_size=32",
        "model.net.n_layer=1",
        "model.net.n_embd=32",
        "model.net.n_head=2",
        "model.sample_length=40",
        "data.batch_size=8",
        "trainer.max_steps=24",
        "trainer.limit_train_batches=12",
        "trainer.limit_val_batches=2",
        "callbacks.samples.num_samples=4",
        "run_name=mol",
    )
    metrics = train(cfg)
    assert metrics["val/loss"] < math.log(40)  # better than guessing among the ~30 characters
    run = Path(cfg.log_dir) / "gpt" / "mol"
    # The sample logger wrote the molecules as .smi beside the text, and logged the scores as val/<key>.
    assert (run / "samples" / "samples_final.smi").is_file() and (run / "samples" / "samples_final.txt").is_file()
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/valid", "val/unique", "val/novel", "val/qed_w1", "val/sa_w1"} <= set(header)
    model = GPTModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    dm = MoleculesDataModule(path=str(nci50), data_dir=str(tmp_path), block_size=32)
    dm.setup()
    torch.manual_seed(0)
    samples = model.sample(8)
    scores = dm.score(samples)
    assert 0 <= scores["valid"] <= 1 and np.isfinite(scores["qed_data"])


def test_int_div_is_moses_intdiv1_over_all_pairs_with_duplicates() -> None:
    """MOSES's IntDiv1 averages Tanimoto similarity over all n^2 ordered pairs of the valid samples,
    duplicates kept: a sampler that collapses onto one molecule must score near 0, not like a diverse one."""
    from rdkit import DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    collapsed = ["CCO"] * 18 + ["c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O"]
    morgan = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    fps = [morgan.GetFingerprint(molecules._chem().MolFromSmiles(s)) for s in collapsed]
    moses = 1 - sum(DataStructs.TanimotoSimilarity(a, b) for a in fps for b in fps) / len(fps) ** 2
    assert molecules.internal_diversity(collapsed) == pytest.approx(moses)
    assert molecules.internal_diversity(collapsed) < 0.3 < molecules.internal_diversity(collapsed[-3:])
    scorer = molecules.MoleculeScorer(train=[], reference=["CCO", "c1ccccc1"])
    assert scorer(["\n" + s for s in collapsed])["int_div"] == pytest.approx(moses)
