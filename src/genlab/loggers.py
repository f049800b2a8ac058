"""Logger factories with the behaviour runs need: metrics kept across a resume, W&B that works
offline and continues the same run."""

from __future__ import annotations

import csv
import netrc
import os
import secrets
import string
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

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
    """Whether `wandb login` (or the environment) gave this machine credentials for the W&B host.

    Mirrors where wandb itself looks: `WANDB_API_KEY`, `WANDB_IDENTITY_TOKEN_FILE`, then the netrc
    file (`$NETRC` or ~/.netrc) entry for the host of `WANDB_BASE_URL` (default api.wandb.ai).
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        return host is not None and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_run_id(run_dir: str | Path) -> str:
    """The W&B run id of this run folder, kept in `<run_dir>/wandb_id` so a resume continues the run.

    Under `wandb agent` the agent has already made the run and passes its id in `WANDB_RUN_ID`
    (wandb.init takes it from there and ignores any other); it is stored too, so resuming the
    folder later outside the agent still continues that run.
    """
    path = Path(run_dir) / WANDB_ID_FILE
    run_id = os.environ.get("WANDB_RUN_ID")
    if not run_id and path.is_file():
        return path.read_text().strip()
    if not run_id:
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's format
    if rank_zero_only.rank == 0 and (not path.is_file() or path.read_text().strip() != run_id):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
    return run_id


def wandb_mode(offline: bool | None) -> str | None:
    """wandb.init's `mode`: forced by `offline` true/false; for null, None (wandb follows `WANDB_MODE`:
    offline, disabled...) when that is set, else offline when no credentials are found."""
    if offline is not None:
        return "offline" if offline else "online"
    if os.environ.get("WANDB_MODE") or has_wandb_key():
        return None
    return "offline"


class FinishingWandbLogger(WandbLogger):
    """Lightning's WandbLogger, but the W&B run is finished when training ends (marked failed if it
    failed). Lightning leaves it open until the process exits, so a second run in the same process
    (a notebook, a test, several fits) would log into the first one."""

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)  # uploads the checkpoints as artifacts first (log_model=True)
        if self._experiment is not None and status in ("success", "failed"):
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None  # a later fit/test resumes the same id (resume="allow")


def wandb_logger(
    save_dir: str,
    project: str = "genlab",
    entity: str | None = None,
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    log_model: bool | Literal["all"] = False,
    offline: bool | None = None,
) -> WandbLogger:
    """W&B logging into `<save_dir>/wandb/`; `offline: null` means offline when `WANDB_MODE` says so
    or no W&B credentials are found (then `wandb sync <save_dir>/wandb/offline-run-*` uploads it later).

    The mode goes to wandb.init rather than through Lightning's `offline=`, which writes
    `WANDB_MODE=dryrun` into this process's environment for good and refuses `log_model`; offline
    runs record their checkpoint artifacts, and `wandb sync` uploads them with the rest.
    """
    mode = wandb_mode(offline)
    if offline is None and mode == "offline":
        rank_zero_info(f"W&B: no credentials (wandb login), logging offline under {save_dir}/wandb")
    run_dir = Path(save_dir)
    run_id = wandb_run_id(save_dir)
    return FinishingWandbLogger(
        save_dir=save_dir,
        project=project,
        entity=entity,
        name=name or f"{run_dir.parent.name}/{run_dir.name}",
        group=group,
        tags=tags,
        log_model=log_model,
        # In a sweep wandb.init takes the id from WANDB_RUN_ID and warns about any id it is given.
        id=None if os.environ.get("WANDB_SWEEP_ID") else run_id,
        resume="allow",
        mode=mode,
    )
