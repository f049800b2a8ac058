"""Logger factories with the behaviour runs need: metrics kept across a resume, W&B that works
offline and continues the same run."""

from __future__ import annotations

import csv
import netrc
import os
import secrets
import string
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

WANDB_ID_FILE = "wandb_id"


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; a resumed run appends to it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class ResumableCSVLogger(CSVLogger):
    """`metrics.csv` (and `hparams.yaml`) directly in the run folder, appended to on resume."""

    def __init__(self, save_dir: str, flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(save_dir=save_dir, name="", version="", flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_run_id(run_dir: str | Path) -> str:
    """The W&B run id of this run folder: the agent's (`WANDB_RUN_ID`), the stored one, or new."""
    if os.environ.get("WANDB_RUN_ID"):
        return os.environ["WANDB_RUN_ID"]
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id format
    if rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
    return run_id


def wandb_logger(
    save_dir: str,
    project: str = "genlab",
    entity: str | None = None,
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    log_model: bool | str = False,
    offline: bool | None = None,
) -> WandbLogger:
    """W&B logging; `offline: null` means offline when `WANDB_MODE=offline` or no API key is set
    (then `wandb sync <run>/wandb/offline-run-*` uploads it later)."""
    if offline is None:
        offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun") or not has_wandb_key()
        if offline:
            rank_zero_info(f"W&B: logging offline under {save_dir}/wandb (no API key, or WANDB_MODE=offline)")
    run_dir = Path(save_dir)
    return WandbLogger(
        save_dir=save_dir,
        project=project,
        entity=entity,
        name=name or f"{run_dir.parent.name}/{run_dir.name}",
        group=group,
        tags=tags,
        log_model=log_model,
        offline=offline,
        id=wandb_run_id(save_dir),
        resume="allow",
    )
