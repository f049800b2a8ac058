import math
import random
from pathlib import Path

import pytest
import torch
from conftest import read_metrics

from genlab.data import chorales
from genlab.data.chorales import (
    ChoralesDataModule,
    MusicScorer,
    Note,
    Piece,
    decode,
    encode,
    find_key,
    in_key_fraction,
    read_midi,
    total_variation,
    write_midi,
)
from genlab.errors import ConfigError, DataError
from genlab.models.gpt import GPTModule
from genlab.train import train

C_MAJOR_SCALE = " ".join(f"{pitch}:4 +4" for pitch in (60, 62, 64, 65, 67, 69, 71, 72))


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    """A data module on the first five chorales of music21's corpus (parsed once into a temporary data_dir)."""
    data_dir = tmp_path_factory.mktemp("chorales")
    dm = ChoralesDataModule(max_pieces=5, val_fraction=0.2, test_fraction=0.2, block_size=32, data_dir=str(data_dir))
    dm.setup()
    return dm


def test_a_c_major_scale_is_in_c_major():
    assert find_key(decode(C_MAJOR_SCALE).notes) == (0, "major")
    assert in_key_fraction(C_MAJOR_SCALE) == 1.0
    chromatic = " ".join(f"{pitch}:4 +4" for pitch in range(60, 72))
    assert in_key_fraction(chromatic) == pytest.approx(7 / 12)
    assert in_key_fraction("hello +4") is None  # no note decodes


def test_encoding_round_trips_through_midi(tmp_path, five):
    # Unisons (two voices on one pitch), a rest at the start, a note held over a bar line.
    piece = Piece(
        notes=[Note(2, 67, 4), Note(2, 67, 2), Note(2, 48, 8), Note(6, 69, 6), Note(8, 60, 1)],
        bars=[2, 10],
        end=12,
    )
    text = encode(piece)
    assert text == "+2 | 67:4 67:2 48:8 +4 69:6 +2 60:1 +2 | +2"
    assert encode(decode(text)) == text
    assert encode(read_midi(write_midi(piece, tmp_path / "piece.mid"))) == text
    for i, text in enumerate(five.pieces["train"]):  # real chorales too
        assert encode(read_midi(write_midi(decode(text), tmp_path / f"{i}.mid"))) == text


def test_decoding_samples_is_tolerant():
    piece = decode("\n| 67:4 60:4 +4 x9 67:400 +4 62:")  # cut inside its last token by the sample length
    assert [(n.start, n.pitch) for n in piece.notes] == [(0, 67), (0, 60)] and piece.malformed == 2
    assert len(decode("| 67:4 +4\n| 60:4 +4").notes) == 1  # the first piece only


def test_chorales_split_by_piece(five):
    pieces = five.pieces
    assert [len(pieces[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert len({t for s in pieces.values() for t in s}) == 5  # no piece in two splits
    train_text = five.tokenizer.decode(five.tokens[: five.splits["train"].stop])
    assert train_text.split("\n")[1:-1] == [" " + t for t in pieces["train"]]  # a space before the first token
    assert five.tokenizer.decode(five.tokenizer.encode(train_text)) == train_text
    assert five.vocab_size <= 15  # digits, ':', '+', '|', space and newline
    x, y = next(iter(five.train_dataloader()))
    assert x.shape == (32, 32) and torch.equal(x[:, 1:], y[:, :-1])
    for text in pieces["train"]:
        assert 0.8 < in_key_fraction(text) <= 1  # Bach stays mostly in key


def test_scores_against_held_out_chorales(five):
    held_out = five.pieces["test"]
    same = five.score(["\n" + t + "\n" for t in held_out])
    assert same["valid"] == 1 and same["pitch_class_tv"] == 0 and same["duration_tv"] == 0
    assert same["in_key"] == same["in_key_data"] > 0.8
    val = five.score(["\n" + t + "\n" for t in five.pieces["val"]], split="val")  # the sample logger's reference
    assert val["pitch_class_tv"] == val["duration_tv"] == 0 < five.score(["\n" + five.pieces["val"][0]])["duration_tv"]
    opening = five.score(["\n" + t[:120] for t in held_out])  # compared with the openings, not whole pieces
    assert opening["valid"] == 1 and opening["pitch_class_tv"] == 0 and opening["duration_tv"] == 0
    scorer = MusicScorer(held_out)  # the opening's durations are not the whole pieces' (cadences hold long notes)
    assert total_variation(scorer.reference_figures(120)[1], scorer.reference_figures(10**6)[1]) > 0.01
    rng = random.Random(0)
    noise = " ".join(f"{rng.randint(48, 80)}:{rng.choice([1, 3, 5, 7])} +{rng.randint(1, 4)}" for _ in range(200))
    scores = five.score([noise, "!!"])
    assert scores["valid"] == 0.5 and scores["in_key"] < same["in_key"]
    assert scores["pitch_class_tv"] > 0.1 and scores["duration_tv"] > 0.5  # no 1/16, 3/16... notes in a chorale


def test_a_file_music21_cannot_read_warns_or_stops(tmp_path):
    folder = tmp_path / "music"
    folder.mkdir()
    for i in range(3):
        write_midi(decode(f"| {60 + i}:4 64:4 67:4 +4 | 62:8 +8"), folder / f"piece{i}.mid")
    (folder / "broken.mid").write_bytes(b"MThd not really a midi file")
    with pytest.warns(UserWarning, match=r"broken\.mid.*skipped \(data\.on_bad_file=warn\)"):
        dm = ChoralesDataModule(path=str(folder), data_dir=str(tmp_path), block_size=4, val_fraction=0.34)
        dm.setup()
    assert sorted(len(s) for s in dm.pieces.values()) == [1, 1, 1]
    with pytest.raises(DataError, match=r"broken\.mid.*data\.on_bad_file=warn") as err:
        ChoralesDataModule(path=str(folder), data_dir=str(tmp_path), on_bad_file="error").setup()
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no music file"):
        chorales.music_files(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="data.on_bad_file"):
        ChoralesDataModule(on_bad_file="ignore")


def test_a_short_run_writes_midi_and_a_piano_roll(five, tmp_path, make_config):
    cfg = make_config(
        "experiment=gpt_music",
        "data.max_pieces=5",
        f"data.data_dir={five.data_dir}",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
        "data.block_size=64",
        "data.batch_size=8",
        "model.net.n_layer=1",
        "model.net.n_embd=32",
        "model.net.n_head=2",
        "model.sample_length=64",
        "trainer.max_steps=60",
        "model.warmup_steps=10",
        "trainer.limit_val_batches=2",
        "callbacks.samples.num_samples=2",
        "run_name=music",
    )
    metrics = train(cfg)
    run = Path(cfg.log_dir) / "gpt" / "music"
    model = GPTModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    losses = [float(row["val/loss"]) for row in read_metrics(run) if row.get("val/loss")]
    assert losses[-1] < losses[0] - 1  # it learns (3 training pieces are one batch of tokens: an epoch a step)
    assert metrics["val/loss"] < math.log(model.tokenizer.vocab_size) - 1  # uniform guessing: ln(vocabulary)
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/valid", "val/in_key", "val/pitch_class_tv", "val/duration_tv"} <= set(header)
    torch.manual_seed(0)
    samples = model.sample(4)
    paths = five.write_samples(samples, run / "samples", "final")
    assert paths[0].name == "final_pianoroll.png" and all(p.suffix == ".mid" for p in paths[1:]) and len(paths) > 1
    for path in paths[1:]:
        assert read_midi(path).notes
    # The sample logger wrote its samples' MIDI files and piano roll too.
    assert (
        list((run / "samples").glob("samples_final_*.mid"))
        and (run / "samples" / "samples_final_pianoroll.png").is_file()
    )


@pytest.mark.slow
def test_the_whole_corpus_parses_and_splits_by_piece(tmp_path):
    dm = ChoralesDataModule(data_dir="data")  # the shared cache: parsed once (minutes), read after
    dm.setup()
    sizes = {split: len(pieces) for split, pieces in dm.pieces.items()}
    assert sum(sizes.values()) > 300 and min(sizes.values()) > 25
    texts = [set(p) for p in dm.pieces.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
