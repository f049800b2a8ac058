"""The run folder: where a run writes and which checkpoint it resumes (reading one: genlab.checkpoints).

    logs/<model>/<run_name>/
        config.yaml           the resolved config (earlier ones kept as config.<n>.yaml on resume)
        checkpoints/          last.ckpt and the best on val/loss
        metrics.csv           CSV logger (default)
        samples/              PNG grids (text for language models)
        wandb_id, wandb/      W&B run id and files, tensorboard/ when those loggers are on

The folder is decided once by the launching process and passed to the processes Lightning starts
for DDP through the environment, so every rank writes to the same place. Processes started
separately (srun, torchrun, one per node) cannot share a timestamp: they name the folder after the
SLURM job or torchrun's rendezvous id, or are given the same `run_name`; torchrun without a rendezvous
id gets the folder rank zero stamps, sent to the others over the process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

# Checkpoint reading lives below the run folder (models read checkpoints too); `load_model` and
# `SHARDED_META` are re-exported for `from genlab.run import load_model`, which users' scripts write.
from genlab.checkpoints import RESUME_ENV, is_checkpoint, read_checkpoint
from genlab.checkpoints import SHARDED_META as SHARDED_META
from genlab.checkpoints import load_model as load_model
from genlab.config import SEED_ENV
from genlab.errors import ConfigError

RUN_DIR_ENV = "GENLAB_RUN_DIR"
LAST = "last.ckpt"


@dataclass
class Run:
    dir: Path
    resume_from: Path | None


def prepare_run(cfg: DictConfig) -> Run:
    """Decide the run folder, the checkpoint to resume and (on a relaunch) the seed, write `run_dir`
    into `cfg` and save the config there (rank zero)."""
    launched = bool(os.environ.get(RUN_DIR_ENV))  # a process Lightning launched for another rank
    if launched:
        run = Run(Path(os.environ[RUN_DIR_ENV]), Path(p) if (p := os.environ.get(RESUME_ENV)) else None)
    elif cfg.get("resume") is not None:
        run = _auto_resumed_run(cfg)
    elif cfg.ckpt_path is not None:
        run = _resumed_run(cfg)
    else:
        run = Run(_new_run_dir(cfg), None)
    os.environ[RUN_DIR_ENV] = str(run.dir)
    os.environ[RESUME_ENV] = str(run.resume_from or "")
    # The ranks Lightning starts take the launching process's final seed (train() exports it).
    started = os.environ.get(SEED_ENV) if launched else _started_seed(cfg, run)
    if started is not None and int(started) != cfg.seed:
        if not launched:
            rank_zero_info(f"Continuing with seed={started}, the seed this run started with (not {cfg.seed})")
        cfg.seed = int(started)  # the ${seed} interpolations (data split, text windows...) follow
    with open_dict(cfg):
        cfg.run_dir = str(run.dir)
    _save_config(cfg, run.dir)
    if run.resume_from:
        rank_zero_info(f"Resuming {run.dir} from {run.resume_from}")
    else:
        rank_zero_info(f"Run folder: {run.dir}")
    return run


def _started_seed(cfg: DictConfig, run: Run) -> int | None:
    """The seed a relaunched run started with (None for a new run): a resumed run keeps it whatever this
    launch's `seed` (seed=null draws a new one at every launch), since the data split, the text windows
    and a BPE vocabulary learnt on the training split are keyed on it; another seed would move test
    examples into training under the resumed model. From the checkpoint (RunInfoInCheckpoint saves
    the config), else the run folder's config.yaml (FSDP's sharded folder; resume=auto before the
    first checkpoint). Processes started separately read the same checkpoint, so they agree."""
    if run.resume_from is not None and run.resume_from.is_file():
        checkpoint = read_checkpoint(run.resume_from, mmap=True)  # a bad file fails here in one line, not in Lightning
        if (seed := checkpoint.get("genlab", {}).get("config", {}).get("seed")) is not None:
            return int(seed)
    # Separately started processes skip the folder's config.yaml before a checkpoint: rank zero may be
    # writing it right now (they were given one seed anyway: seed=null is refused there).
    relaunch = run.resume_from is not None or (cfg.get("resume") == "auto" and not _started_separately(cfg))
    saved = run.dir / "config.yaml"
    if relaunch and saved.is_file() and (seed := OmegaConf.load(saved).get("seed")) is not None:
        return int(seed)
    return None


def _model_dir(cfg: DictConfig) -> Path:
    return Path(cfg.log_dir) / str(cfg.groups.model)


def launch_rank() -> int:
    """This process's global rank as its launcher's environment tells it, before the Trainer knows
    (Lightning then sets the exact one). torchrun sets RANK, srun SLURM_PROCID; a per-node launch
    (MASTER_ADDR, NODE_RANK, LOCAL_RANK) only the node and local ranks, enough to tell rank zero."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key):
            return int(os.environ[key])
    node = int(os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or 0)
    return node * int(os.environ.get("LOCAL_WORLD_SIZE") or 1) + int(os.environ.get("LOCAL_RANK") or 0)


def _launcher_run_name() -> str | None:
    """A name every rank of a multi-process launch agrees on without talking to the others, and
    that a requeued SLURM job (same job id) finds again."""
    if job_id := SLURMEnvironment.job_id():  # None in interactive sessions (job name bash/interactive)
        return f"slurm-{job_id}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return f"torchrun-{run_id}" if run_id != "none" else None


def _started_separately(cfg: DictConfig) -> bool:
    """Is this one of several processes started by an outside launcher (not by Lightning)?"""
    return int(os.environ.get("WORLD_SIZE") or 1) > 1 or int(cfg.trainer.get("num_nodes") or 1) > 1


def _new_run_dir(cfg: DictConfig) -> Path:
    name = cfg.run_name or _launcher_run_name()
    if name is not None:
        run_dir = _model_dir(cfg) / str(name)
        if is_checkpoint(run_dir / "checkpoints" / LAST):
            raise ConfigError(
                f"run folder {run_dir} already holds checkpoints: continue it with resume=auto (or ckpt_path=last), "
                "or pick another run_name"
            )
        return run_dir
    if _started_separately(cfg):
        if _launched_by_torchrun():
            return _run_dir_from_rank_zero(cfg)
        # Each process would stamp its own time (they start seconds apart on different nodes).
        raise ConfigError(
            "this is one of several processes started separately (WORLD_SIZE or trainer.num_nodes > 1) with "
            "no SLURM job id or torchrun --rdzv-id to name the run: give every process the same run_name=<name>"
        )
    return _stamped_run_dir(cfg)


def _stamped_run_dir(cfg: DictConfig) -> Path:
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run_dir, n = _model_dir(cfg) / stamp, 1
    while run_dir.exists():  # two runs started in the same second
        run_dir, n = _model_dir(cfg) / f"{stamp}_{n}", n + 1
    return run_dir


def _launched_by_torchrun() -> bool:
    """Every process of the job started by torchrun (or another launcher that sets the full env://
    contract: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so all of them can join a process group now."""
    return all(os.environ.get(key) for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def _run_dir_from_rank_zero(cfg: DictConfig) -> Path:
    """torchrun without --rdzv-id (a static --master-addr, one command per node): rank zero stamps the
    folder and sends it to the others over the job's process group, brought up here with the env://
    settings torchrun exports. Lightning then finds the group up and uses it instead of making one
    (`_init_dist_connection` returns early); CUDA tensors go over NCCL, CPU ones over gloo, as it would."""
    import torch.distributed as dist

    if not dist.is_initialized():
        gpu = torch.cuda.is_available() and str(cfg.trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda")
        dist.init_process_group("cpu:gloo,cuda:nccl" if gpu else "gloo")
    folder = [str(_stamped_run_dir(cfg)) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(folder, src=0, device=torch.device("cpu"))
    return Path(folder[0])


def _auto_resumed_run(cfg: DictConfig) -> Run:
    """`resume=auto`: this run's folder (run_name, or the SLURM/torchrun job), continued from its
    newest checkpoint if it has one, else started there."""
    if cfg.resume != "auto":
        raise ConfigError(f"resume must be null or auto, got {cfg.resume!r}")
    if cfg.ckpt_path is not None:
        raise ConfigError("resume=auto continues this run from its own folder: drop ckpt_path, or drop resume=auto")
    name = cfg.run_name or _launcher_run_name()
    if name is None:
        raise ConfigError(
            "resume=auto needs a run folder that a relaunch finds again: set run_name=<name> "
            "(a SLURM job's id names it on its own, as does torchrun --rdzv-id)"
        )
    run_dir = _model_dir(cfg) / str(name)
    return Run(run_dir, newest_checkpoint(run_dir))


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The newer of `checkpoints/last.ckpt` (a folder with FSDP's sharded checkpoints) and Lightning's
    SLURM requeue checkpoints (`hpc_ckpt_<n>.ckpt`)."""
    candidates = [p for p in (run_dir / "checkpoints" / LAST, *run_dir.glob("hpc_ckpt_*.ckpt")) if p.exists()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def _resumed_run(cfg: DictConfig) -> Run:
    """`ckpt_path`: "last" (run_name's run, else the newest run of this model), a run folder, or a file."""
    ckpt = str(cfg.ckpt_path)
    if ckpt == "last":
        if cfg.run_name:
            candidates = [_model_dir(cfg) / str(cfg.run_name) / "checkpoints" / LAST]
        else:
            candidates = sorted(_model_dir(cfg).glob(f"*/checkpoints/{LAST}"), key=lambda p: p.stat().st_mtime)
        existing = [c for c in candidates if is_checkpoint(c)]
        if not existing:
            raise ConfigError(
                f"ckpt_path=last: no checkpoint to resume under {_model_dir(cfg)}"
                + (f"/{cfg.run_name}" if cfg.run_name else "")
                + ". Start a new run without ckpt_path, or give a checkpoint file or run folder."
            )
        path = existing[-1]
    else:
        path = Path(ckpt)
        if path.is_dir() and not is_checkpoint(path):  # a run folder
            path = path / "checkpoints" / LAST
        if not is_checkpoint(path):
            raise ConfigError(f"ckpt_path: no checkpoint at '{path}'")
    is_run_folder = path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file()
    return Run(path.parent.parent if is_run_folder else _new_run_dir(cfg), path)


@rank_zero_only
def _save_config(cfg: DictConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    text = OmegaConf.to_yaml(cfg, resolve=True)
    if path.is_file() and path.read_text() != text:  # a resume with other overrides: keep the old one
        n = 1
        while (run_dir / f"config.{n}.yaml").exists():
            n += 1
        path.rename(run_dir / f"config.{n}.yaml")
    path.write_text(text)
