"""J. S. Bach's chorales as text for the GPT family: one piece per line, notes as short tokens.

    (default)        the ~350 distinct chorales of music21's bundled corpus
                     (`music21.corpus.chorales.Iterator`), so a first run needs nothing else
    path=FOLDER      your own MusicXML/MIDI/kern/ABC files (anything music21 parses), found recursively

Parsing a chorale takes music21 about half a second, so each piece's text is cached once in
`data_dir/` (keyed on music21's version and the files' sizes and times). The split is by piece:
train/val/test never share a piece (identical encodings, e.g. one harmonization filed twice, are
kept once).

The encoding (our own, documented here, instead of miditok's REMI): time is counted in sixteenth
notes; a piece is a line of space-separated tokens

    |        a bar line (the score's measures; decoding keeps it only as a marker)
    P:D      a note starting now, MIDI pitch P, lasting D sixteenths (60:4 is a quarter-note middle C)
    +N       time moves on by N sixteenths

    | 67:4 62:4 59:4 43:4 +4 | 67:8 62:4 59:4 55:4 +4 62:2 57:4 +2 ...

The notes starting together come highest first, so a score has one encoding. Why not REMI: the
text keeps the char and BPE tokenizers, the windows and the GPT unchanged (miditok's tokens are
ids of its own vocabulary and would need another tokenizer in checkpoints, and another dependency);
it is written with 15 characters (digits, `:`, `+`, `|`, space, newline); it is readable; and a
sample of any length decodes (a malformed token is counted and skipped). Durations are per note,
as in miditok's TSD, so the four voices need no note-off bookkeeping. Voices are not told apart
(chorales are four-part harmony; the MIDI is one track), and fermatas, dynamics and tempo are
dropped.

Scores of samples against a split's pieces (`score(samples, split)`: the test split, or the validation
split for the sample logger's `val/<key>`). Samples are openings of pieces, so the reference is the
pieces' openings of the samples' median length in characters:
    valid            fraction of samples that decode to notes without a malformed token
    in_key           mean fraction of a sample's notes in its own key (Krumhansl-Kessler key finding;
                     the major scale, or natural minor plus the raised leading tone), `in_key_data`
                     the same for the reference openings
    pitch_class_tv   total variation distance between the pitch-class histograms of the samples and
                     of the reference openings, each piece transposed to its key's tonic (0 equal, 1 disjoint)
    duration_tv      the same for the note durations
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from genlab.data.text import DocumentsDataModule, write_atomically
from genlab.errors import ConfigError, DataError

STEPS_PER_QUARTER = 4  # sixteenth notes
TICKS_PER_STEP = 120  # MIDI ticks per sixteenth: 480 per quarter, a common resolution
MAX_STEPS = 256  # a longer note or time shift in a sample is taken as malformed (16 bars of 4/4)
MUSIC_SUFFIXES = {".mxl", ".xml", ".musicxml", ".mid", ".midi", ".krn", ".abc"}
NOTE = re.compile(r"(\d{1,3}):(\d{1,3})")
SHIFT = re.compile(r"\+(\d{1,3})")

# Krumhansl & Kessler (1982) key profiles, tonic first (Krumhansl, "Cognitive Foundations of Musical
# Pitch", 1990, table 2.1), the profiles of music21's KrumhanslKessler key finder.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MAJOR_SCALE = frozenset({0, 2, 4, 5, 7, 9, 11})
MINOR_SCALE = frozenset({0, 2, 3, 5, 7, 8, 10, 11})  # natural minor and the leading tone of its harmony


@dataclass(frozen=True, order=True)
class Note:
    start: int  # sixteenths from the piece's start
    pitch: int  # MIDI number, 60 = middle C
    duration: int  # sixteenths, at least 1


@dataclass
class Piece:
    notes: list[Note]
    bars: list[int] = field(default_factory=list)  # the times bar lines stand at
    end: int = 0  # the piece's length in sixteenths
    malformed: int = 0  # tokens that did not decode


def encode(piece: Piece) -> str:
    """The text of a piece (one line, no newline)."""
    starting: dict[int, list[Note]] = {}
    for note in piece.notes:
        starting.setdefault(note.start, []).append(note)
    end = max([piece.end, *(n.start + n.duration for n in piece.notes)])
    bars = {b for b in piece.bars if 0 <= b < end}
    tokens, now = [], 0
    for time in sorted(set(starting) | bars | {end}):
        if time > now:
            tokens.append(f"+{time - now}")
            now = time
        if time in bars:
            tokens.append("|")
        tokens += [
            f"{n.pitch}:{n.duration}" for n in sorted(starting.get(time, []), key=lambda n: (-n.pitch, -n.duration))
        ]
    return " ".join(tokens)


def decode(text: str) -> Piece:
    """The first piece in `text` (a sample starts after a newline and may run into the next piece).
    Malformed tokens are counted and skipped; a last token cut off by the sample's length is dropped."""
    lines = text.lstrip("\n").split("\n", 1)
    tokens = lines[0].split()
    if len(lines) == 1 and tokens and not text[-1:].isspace():
        tokens = tokens[:-1]  # the sample ended inside this piece, perhaps inside this token
    piece, now = Piece(notes=[]), 0
    for token in tokens:
        if token == "|":
            piece.bars.append(now)
        elif (shift := SHIFT.fullmatch(token)) and 0 < int(shift[1]) <= MAX_STEPS:
            now += int(shift[1])
        elif (note := NOTE.fullmatch(token)) and int(note[1]) < 128 and 0 < int(note[2]) <= MAX_STEPS:
            piece.notes.append(Note(now, int(note[1]), int(note[2])))
        else:
            piece.malformed += 1
    piece.end = max([now, *(n.start + n.duration for n in piece.notes)])
    return piece


def from_score(score) -> Piece:
    """A music21 Score (or Part/Stream) as a Piece: ties merged, grace notes dropped, times rounded to sixteenths."""
    score = score.stripTies(inPlace=False)
    parts = list(score.parts) or [score]
    notes = []
    for part in parts:
        for element in part.flatten().notes:
            length = float(element.duration.quarterLength)
            if length <= 0:  # grace notes
                continue
            start = round(float(element.offset) * STEPS_PER_QUARTER)
            duration = max(1, round(length * STEPS_PER_QUARTER))
            notes += [Note(start, p.midi, duration) for p in element.pitches]
    measures = parts[0].getElementsByClass("Measure")
    bars = sorted({round(float(m.offset) * STEPS_PER_QUARTER) for m in measures})
    return Piece(sorted(notes), bars, max([0, *(n.start + n.duration for n in notes)]))


def write_midi(piece: Piece, path: Path, tempo_bpm: float = 80.0) -> Path:
    """One track: notes (each on a channel where its pitch is not already sounding, so unisons
    survive), bar lines as marker events, the end of the piece as the end of the track."""
    from music21 import midi

    track = midi.MidiTrack(1)
    timed: list[tuple[int, int, midi.MidiEvent]] = []  # (tick, order at that tick, event)

    def meta(kind, data: bytes, tick: int, order: int) -> None:
        event = midi.MidiEvent(track, type=kind)
        event.data = data
        timed.append((tick, order, event))

    meta(midi.MetaEvents.SET_TEMPO, round(60e6 / tempo_bpm).to_bytes(3, "big"), 0, 0)
    sounding: list[list[tuple[int, int]]] = [[] for _ in range(16)]  # per channel: (pitch, end step)
    for note in sorted(piece.notes):
        stop = note.start + note.duration
        for busy in sounding:
            busy[:] = [(p, e) for p, e in busy if e > note.start]
        channel = next((c for c, busy in enumerate(sounding) if all(p != note.pitch for p, _ in busy)), None)
        if channel is None:
            raise DataError(f"more than 16 notes of pitch {note.pitch} sound at once: cannot write MIDI")
        sounding[channel].append((note.pitch, stop))
        for tick, kind, order in (
            (note.start, midi.ChannelVoiceMessages.NOTE_ON, 2),
            (stop, midi.ChannelVoiceMessages.NOTE_OFF, 1),  # before the ons at the same tick
        ):
            event = midi.MidiEvent(track, type=kind, channel=channel + 1)
            event.pitch, event.velocity = note.pitch, 80 if order == 2 else 0
            timed.append((tick * TICKS_PER_STEP, order, event))
    for bar in piece.bars:
        meta(midi.MetaEvents.MARKER, b"|", bar * TICKS_PER_STEP, 0)
    meta(midi.MetaEvents.END_OF_TRACK, b"", piece.end * TICKS_PER_STEP, 3)
    now = 0
    for tick, _, event in sorted(timed, key=lambda t: (t[0], t[1])):
        track.events += [midi.DeltaTime(track, time=tick - now), event]
        now = tick
    file = midi.MidiFile()
    file.ticksPerQuarterNote = TICKS_PER_STEP * STEPS_PER_QUARTER
    file.tracks.append(track)
    file.open(str(path), "wb")
    try:
        file.write()
    finally:
        file.close()
    return path


def read_midi(path: Path) -> Piece:
    """A MIDI file written by `write_midi` (or any: notes are paired on/off per channel and pitch,
    times rounded to sixteenths) back as a Piece."""
    from music21 import midi

    file = midi.MidiFile()
    file.open(str(path), "rb")
    try:
        file.read()
    finally:
        file.close()
    per_step = file.ticksPerQuarterNote / STEPS_PER_QUARTER
    piece, end = Piece(notes=[]), 0
    for track in file.tracks:
        tick, sounding = 0, {}
        for event in track.events:
            if isinstance(event, midi.DeltaTime):
                tick += event.time
                continue
            step = round(tick / per_step)
            on = event.type == midi.ChannelVoiceMessages.NOTE_ON and event.velocity > 0
            if on:
                sounding[event.channel, event.pitch] = step
            elif event.type in (midi.ChannelVoiceMessages.NOTE_OFF, midi.ChannelVoiceMessages.NOTE_ON):
                start = sounding.pop((event.channel, event.pitch), None)
                if start is not None:
                    piece.notes.append(Note(start, event.pitch, max(1, step - start)))
            elif event.type == midi.MetaEvents.MARKER and event.data == b"|":
                piece.bars.append(step)
            end = max(end, step)
    piece.notes.sort()
    piece.bars.sort()
    piece.end = end
    return piece


def piano_roll(pieces: list[Piece], path: Path, low: int = 36, high: int = 84, scale: int = 3) -> Path:
    """A PNG of the pieces one above another: time (sixteenths) to the right, pitch upwards, bar lines grey."""
    from PIL import Image

    width = max([16, *(p.end for p in pieces)])
    rows = []
    for piece in pieces:
        roll = np.zeros((high - low + 1, width), dtype=np.uint8)
        for bar in piece.bars:
            if bar < width:
                roll[:, bar] = 60
        for note in piece.notes:
            if low <= note.pitch <= high:
                roll[high - note.pitch, note.start : note.start + note.duration] = 255
                roll[high - note.pitch, note.start] = 180  # the onset, so repeated notes show apart
        rows += [roll, np.full((2, width), 120, dtype=np.uint8)]
    image = np.concatenate(rows[:-1] or [np.zeros((1, width), np.uint8)])
    Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST).save(path)
    return path


def pitch_class_histogram(notes: Iterable[Note], by_duration: bool = False) -> np.ndarray:
    hist = np.zeros(12)
    for note in notes:
        hist[note.pitch % 12] += note.duration if by_duration else 1
    return hist


def find_key(notes: list[Note]) -> tuple[int, str]:
    """(tonic pitch class, "major" | "minor"): the Krumhansl-Schmuckler key finder, i.e. the key
    profile best correlated with the duration-weighted pitch-class histogram."""
    hist = pitch_class_histogram(notes, by_duration=True)
    best = (-2.0, 0, "major")
    for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
        for tonic in range(12):
            r = np.corrcoef(hist, np.roll(profile, tonic))[0, 1] if hist.std() > 0 else 0.0
            best = max(best, (r, tonic, mode), key=lambda b: b[0])
    return best[1], best[2]


def in_key(notes: list[Note]) -> float | None:
    if not notes:
        return None
    tonic, mode = find_key(notes)
    scale = MAJOR_SCALE if mode == "major" else MINOR_SCALE
    return sum((n.pitch - tonic) % 12 in scale for n in notes) / len(notes)


def in_key_fraction(text: str) -> float | None:
    """The fraction of the notes of the piece in `text` that lie in its key; None when no note decodes."""
    return in_key(decode(text).notes)


def tonic_histogram(pieces: list[Piece]) -> np.ndarray:
    """Pitch classes counted relative to each piece's tonic, pooled and normalized."""
    hist = np.zeros(12)
    for piece in pieces:
        if piece.notes:
            tonic, _ = find_key(piece.notes)
            hist += np.roll(pitch_class_histogram(piece.notes), -tonic)
    return hist / max(hist.sum(), 1)


def duration_histogram(pieces: list[Piece], bins: int = 32) -> np.ndarray:
    """Note durations in sixteenths, 1 to `bins` (longer ones in the last bin), pooled and normalized."""
    hist = np.zeros(bins)
    for piece in pieces:
        for note in piece.notes:
            hist[min(note.duration, bins) - 1] += 1
    return hist / max(hist.sum(), 1)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


class MusicScorer:
    """Scores of sampled pieces against reference pieces (see the module docstring). A sample is the
    opening of a piece, so it is compared with the references' openings of the same length: each
    reference text is cut to the samples' median length in characters (and decoded like a sample, its
    cut token dropped). Against whole pieces, whose cadences hold long notes, even real openings of 512
    characters scored duration_tv 0.14 (0.05 against openings)."""

    def __init__(self, reference: list[str]) -> None:
        self.reference = [text.lstrip("\n") for text in reference]
        self._by_length: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}

    def reference_figures(self, length: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(tonic-relative pitch-class histogram, duration histogram, mean in-key fraction) of the
        references' first `length` characters."""
        if length not in self._by_length:
            pieces = [p for p in (decode(text[:length]) for text in self.reference) if p.notes]
            in_key_mean = float(np.mean([in_key(p.notes) for p in pieces])) if pieces else float("nan")
            self._by_length[length] = (tonic_histogram(pieces), duration_histogram(pieces), in_key_mean)
        return self._by_length[length]

    def __call__(self, samples: list[str]) -> dict[str, float]:
        pieces = [decode(s) for s in samples]
        played = [p for p in pieces if p.notes]
        fractions = [in_key(p.notes) for p in played]
        length = int(np.median([len(s.lstrip("\n")) for s in samples])) if samples else 0
        ref_pitch, ref_duration, ref_in_key = self.reference_figures(length)
        nan = float("nan")
        return {
            "valid": sum(bool(p.notes) and p.malformed == 0 for p in pieces) / max(1, len(pieces)),
            "in_key": float(np.mean(fractions)) if fractions else nan,
            "in_key_data": ref_in_key,
            "pitch_class_tv": total_variation(tonic_histogram(played), ref_pitch) if played else nan,
            "duration_tv": total_variation(duration_histogram(played), ref_duration) if played else nan,
        }


OnBadFile = Literal["warn", "error"]


def music_files(path: str | None) -> list[tuple[str, Path]]:
    """(name, file) of every piece: the Bach chorales of music21's corpus, or the music files under `path`."""
    if path is None:
        from music21 import corpus

        def work(name: str) -> Path:  # getWork gives a list when the name is a prefix of others (bwv1.6, bwv1.6a)
            found = corpus.getWork(name)
            found = [found] if not isinstance(found, list) else found
            return next((Path(f) for f in found if Path(f).stem == Path(name).name), Path(found[0]))

        names = sorted(set(corpus.chorales.Iterator(returnType="filename")))
        return [(name, work(name)) for name in names]
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path: '{root}' is not a folder; give a folder of music files (MusicXML, MIDI, ...)")
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in MUSIC_SUFFIXES and f.is_file())
    if not files:
        raise DataError(f"data.path: '{root}' holds no music file ({', '.join(sorted(MUSIC_SUFFIXES))})")
    return [(str(f.relative_to(root)), f) for f in files]


def parse_file(file: Path) -> Piece:
    from music21 import converter

    return from_score(converter.parse(str(file)))


def load_texts(
    path: str | None, data_dir: str | Path, on_bad_file: OnBadFile = "warn", max_pieces: int | None = None
) -> dict[str, str]:
    """{name: encoded text} of the pieces (the first `max_pieces` by name), parsed once and cached
    in `data_dir` (a file that failed to parse is remembered with its error, and not parsed again)."""
    import music21

    files = music_files(path)[:max_pieces]
    source = "corpus" if path is None else str(Path(path).expanduser().resolve())
    digest = hashlib.sha1(f"{music21.__version__}|{source}".encode()).hexdigest()[:8]
    cache_path = Path(data_dir) / f"chorales-music21-{music21.__version__}-{digest}.json"
    cache = json.loads(cache_path.read_text(encoding="utf-8")) if cache_path.is_file() else {}
    texts, changed = {}, False
    for name, file in files:
        stat = file.stat()
        key = f"{name}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in cache:
            if not changed:
                rank_zero_info(f"Parsing music files with music21 (once; kept in {cache_path})")
            try:
                piece = parse_file(file)
                cache[key] = encode(piece) if piece.notes else {"error": "it holds no notes"}
            except Exception as err:  # music21 raises many kinds for files it cannot read
                cache[key] = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}  # remembered: not retried
            changed = True
        if isinstance(cache[key], dict):
            message = f"music21 could not read '{file}' ({cache[key]['error']})"
            if on_bad_file == "error":
                raise DataError(f"{message}; remove it, or set data.on_bad_file=warn to skip such files")
            rank_zero_warn(f"{message}: skipped (data.on_bad_file=warn)")
            continue
        texts[name] = cache[key]
    if changed:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(cache_path, json.dumps(cache) + "\n")
    return texts


def split_pieces(texts: dict[str, str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Distinct piece texts split three ways by a fixed shuffle of the names; a piece is in one split only."""
    seen, names = set(), []
    for name in sorted(texts):
        if texts[name] not in seen:
            seen.add(texts[name])
            names.append(name)
    random.Random(seed).shuffle(names)
    n_val = max(1, round(len(names) * val_fraction))
    n_test = max(1, round(len(names) * test_fraction)) if test_fraction > 0 else 0
    if len(names) < n_val + n_test + 1:
        raise DataError(f"{len(names)} distinct piece(s) is too few to split: use more files or data.max_pieces=null")
    return {
        "train": [texts[n] for n in names[n_val + n_test :]],
        "val": [texts[n] for n in names[:n_val]],
        "test": [texts[n] for n in names[n_val : n_val + n_test]],
    }


class ChoralesDataModule(DocumentsDataModule):
    """Pieces of music as text, one per line, split by piece, with a test split (`test_dataloader`)
    and the scores of the module docstring. The windows, samplers (exact mid-epoch resume),
    tokenizers and token cache are TextDataModule's; this class supplies `split_texts`."""

    def __init__(
        self,
        path: str | None = None,
        max_pieces: int | None = None,
        on_bad_file: OnBadFile = "warn",
        block_size: int = 256,
        **text_options: Any,
    ) -> None:
        """`path`: a folder of music files (null: the Bach chorales); `max_pieces`: only the first N files;
        `on_bad_file`: warn | error. The other arguments are DocumentsDataModule's (fractions of the pieces)."""
        if on_bad_file not in ("warn", "error"):
            raise ConfigError(f"data.on_bad_file must be 'warn' or 'error', got {on_bad_file!r}")
        if max_pieces is not None and max_pieces < 3:
            raise ConfigError(f"data.max_pieces must be null or at least 3 (one per split), got {max_pieces}")
        super().__init__(block_size=block_size, **text_options)
        self.folder, self.max_pieces, self.on_bad_file = path, max_pieces, on_bad_file
        self.pieces: dict[str, list[str]] = {}  # the encoded pieces of each split
        self._scorers: dict[str, MusicScorer] = {}  # per reference split

    @property
    def source(self) -> Path:
        if self.folder is None:
            from music21 import corpus

            return Path(corpus.__file__).parent / "bach"
        return Path(self.folder).expanduser()

    def split_texts(self) -> dict[str, list[str]]:
        """One document per piece, "\n " + its text, and a last "\n": every piece starts after a newline,
        where the GPT's samples start. The space makes a piece's first token read as every other one
        (" |", as GPT-2's prefix space does for a text's first word): with bpe_split=whitespace, a bare
        "|" token, seen only after a newline, was sampled mid-piece ("57:12|") in 0.7% of samples."""
        if not self.pieces:
            texts = load_texts(self.folder, self.data_dir, self.on_bad_file, self.max_pieces)
            self.pieces = split_pieces(texts, self.val_fraction, self.test_fraction, self.seed)
        return {split: ["\n " + t for t in pieces] + ["\n"] for split, pieces in self.pieces.items()}

    metric_notes = {
        "valid": "fraction of samples that decode to notes without a malformed token",
        "in_key": "mean fraction of a sample's notes in its own key (Krumhansl-Kessler key finding)",
        "in_key_data": "the same for the reference split's openings (make eval: the test split)",
        "pitch_class_tv": "total variation of tonic-relative pitch-class histograms, samples vs reference openings",
        "duration_tv": "total variation between note-duration histograms, samples vs reference openings",
    }

    def score(self, samples: list[str], split: str = "test") -> dict[str, float]:
        """The scores of the module docstring against `split`'s pieces (the sample logger: "val")."""
        if split not in self._scorers:
            self._scorers[split] = MusicScorer(self.pieces[split])
        return self._scorers[split](samples)

    def write_samples(self, samples: list[str], folder: Path, stem: str) -> list[Path]:
        """`<stem>_<i>.mid` for every sample with notes, and `<stem>_pianoroll.png` of the first eight."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        pieces = [(i, p) for i, p in enumerate(decode(s) for s in samples) if p.notes]
        paths = [piano_roll([p for _, p in pieces[:8]], folder / f"{stem}_pianoroll.png")] if pieces else []
        return paths + [write_midi(p, folder / f"{stem}_{i}.mid") for i, p in pieces]
