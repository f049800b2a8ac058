"""Test helpers for W&B without an account: an isolated offline setup, and a reader for the runs
it writes (`<run>/wandb/offline-run-*/run-<id>.wandb`), so tests see what `wandb sync` would upload."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import wandb
from wandb.proto import wandb_internal_pb2 as pb

# Variables a developer's shell may set that would change what the code under test does.
WANDB_ENV = (
    "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_RUN_ID", "WANDB_SWEEP_ID",
    "WANDB_SWEEP_PARAM_PATH", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RESUME", "WANDB_NAME",
    "WANDB_RUN_GROUP", "WANDB_TAGS", "WANDB_NOTES", "WANDB_JOB_TYPE",
)  # fmt: skip


def isolate_wandb(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    """Offline W&B whose files, settings and caches live under `tmp`, with no credentials: nothing
    can reach the network or the developer's ~/.config/wandb, and everything is undone afterwards."""
    for name in WANDB_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NETRC", str(tmp / "no-netrc"))
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # leave pytest's output capture alone
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name, sub in (("WANDB_DIR", "dir"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                      ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")):  # fmt: skip
        (tmp / "wandb-env" / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(name, str(tmp / "wandb-env" / sub))


def reset_wandb() -> None:
    """Finish a run left open and drop wandb's process-wide setup, which keeps the environment it
    first saw (the next test's WANDB_DIR and WANDB_MODE would be ignored otherwise)."""
    if wandb.run is not None:
        wandb.run.finish()
    wandb.teardown()


@dataclass
class OfflineRun:
    """What an offline run recorded: its run record, merged config and summary, artifacts, media."""

    dir: Path
    run: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Any] = field(default_factory=list)
    exit_code: int | None = None

    @property
    def media(self) -> list[Path]:
        return sorted((self.dir / "files" / "media").rglob("*.*"))


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """Every offline W&B run under a genlab run folder, oldest first. Shuts wandb down first:
    wandb-core writes the log in the background, and `finish()` can return before it is on disk."""
    reset_wandb()
    return [read_offline_run(d) for d in sorted((run_dir / "wandb").glob("offline-run-*"))]


def read_offline_run(folder: Path) -> OfflineRun:
    out = OfflineRun(folder)
    (log,) = folder.glob("run-*.wandb")
    for record in _records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.run = record.run
            out.config.update(_items(record.run.config.update))
        elif kind == "config":
            out.config.update(_items(record.config.update))
        elif kind == "summary":
            out.summary.update(_items(record.summary.update))
        elif kind == "artifact":
            out.artifacts.append(record.artifact)
        elif kind == "exit":
            out.exit_code = record.exit.exit_code
    return out


def _items(items: Any) -> dict[str, Any]:
    """Config/summary items: top-level `key` or a `nested_key` path, joined with '.' here."""
    return {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in items}


def _records(path: Path) -> list[pb.Record]:
    """The records of a `.wandb` file: LevelDB's log format (32 KiB blocks of chunks, each with a
    7-byte header: crc32c, little-endian length, type FULL=1 FIRST=2 MIDDLE=3 LAST=4) after a
    7-byte ':W&B' file header; each whole chunk sequence is one protobuf `Record`."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run log"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is zero padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records
