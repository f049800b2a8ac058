"""The one training entrypoint for every family.

    python -m genlab.train model=vae trainer.max_epochs=5      # or: genlab-train --model=vae ...
    python -m genlab.train --print-config model=vae data=mnist  # show the resolved config, no run

`main` parses the command line (see `genlab.config`), `train` wires data, model, callbacks,
loggers and Trainer from the config and fits.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar as AnyProgressBar
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from genlab.callbacks import ProgressBar, RunInfoInCheckpoint
from genlab.checkpoints import read_checkpoint
from genlab.config import EXPERIMENT, GROUPS, SEED_ENV, choices_of, compose, to_yaml
from genlab.errors import ConfigError, GenlabError
from genlab.faults import PREEMPTED_EXIT_CODE, PreemptionCheckpoint, slurm_environment
from genlab.instantiate import instantiate
from genlab.loggers import wandb_run_id
from genlab.run import RESUME_ENV, RUN_DIR_ENV, launch_rank, prepare_run
from genlab.strategies import check_launch, describe_batch


class _NoAdverts(logging.Filter):
    """Lightning's "Tip: ... litlogger / litmodels" lines, printed on every run: not our users' business."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())
# Our samplers resume mid-epoch exactly (genlab.data.images.EpochPosition), which Lightning cannot see.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
# The EMA copies (genlab.nets.ema) stay in eval mode on purpose: they only ever sample.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
# Lightning 2.6 with torch >= 2.10 warns on every run about its own use of a torch API.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model; returns the final logged metrics."""
    saved_env = {key: os.environ.get(key) for key in (RUN_DIR_ENV, RESUME_ENV, SEED_ENV, THREADS_ENV)}
    saved_threads = torch.get_num_threads()
    try:
        choose_threads(cfg.get("threads"), processes=1)  # a bad value fails before the run folder is made
        rank_zero_only.rank = launch_rank()  # only rank zero writes, also before the Trainer knows the rank
        check_launch(cfg.trainer.num_nodes)
        run = prepare_run(cfg)  # a resumed run takes back the seed it started with
        os.environ[SEED_ENV] = str(cfg.seed)  # the DDP ranks Lightning starts compose with it (seed=null)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)

        datamodule = instantiate(cfg.data, "data")
        model = instantiate(cfg.model, "model")
        if cfg.compile:  # in place: state_dict keys stay free of `_orig_mod.` (pytorch-lightning#17415)
            for net in model.children():
                net.compile()

        config = OmegaConf.to_container(cfg, resolve=True)
        callbacks = [instantiate(node, f"callbacks.{name}") for name, node in cfg.callbacks.items()]
        if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(c, AnyProgressBar) for c in callbacks):
            callbacks.append(ProgressBar())  # in place of the bar Lightning would add: plain lines in a log file
        callbacks.append(RunInfoInCheckpoint(config, wandb_run_id(run.dir), cfg.seed))
        # Always on, whatever the callbacks group says: a preempted run must not be lost.
        callbacks.append(PreemptionCheckpoint(run.dir / "checkpoints", cfg.preempt_signal))
        loggers = [instantiate(node, f"logger.{name}") for name, node in cfg.logger.items()]
        trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
        plugins = trainer_cfg.pop("plugins", None) or []
        plugins = instantiate(plugins if isinstance(plugins, list) else [plugins], "trainer.plugins")
        trainer: L.Trainer = instantiate(
            trainer_cfg,
            "trainer",
            callbacks=callbacks,
            logger=loggers or False,
            default_root_dir=str(run.dir),
            plugins=plugins + slurm_environment(),
        )
        threads, source = choose_threads(cfg.get("threads"), processes=trainer.num_devices)  # DDP: per node
        torch.set_num_threads(threads)
        os.environ[THREADS_ENV] = str(threads)  # what the DDP ranks Lightning starts use (it leaves a set one alone)
        rank_zero_info(f"Torch threads: {threads} ({source})")
        if hasattr(datamodule, "batch_size"):
            rank_zero_info(describe_batch(datamodule.batch_size, trainer))
        for logger in loggers:
            logger.log_hyperparams(config)
        ckpt_path = str(run.resume_from) if run.resume_from else None
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)  # never unpickle code
        except RuntimeError as err:
            if ckpt_path and "Error(s) in loading state_dict" in str(err):  # a wall of key names otherwise
                raise ConfigError(weights_do_not_fit(Path(ckpt_path), cfg)) from None
            raise
        if not trainer.interrupted:
            rank_zero_info(run_summary(trainer, cfg, run.dir))
        return {key: float(value) for key, value in trainer.callback_metrics.items()}
    finally:
        torch.set_num_threads(saved_threads)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


THREADS_ENV = "OMP_NUM_THREADS"


def choose_threads(threads: int | str | None, processes: int) -> tuple[int, str]:
    """torch's thread count for this process, and where it comes from: `threads` from the config, else
    an OMP_NUM_THREADS the environment sets, else the cores this process may use (its CPU affinity:
    what SLURM, taskset or a container grant, not the machine's count) shared by this node's
    `processes`. More threads than cores make them wait for each other: on a shared machine at load
    14, the default VAE took 31 min with 2 threads instead of 25 s."""
    if isinstance(threads, str) and threads.strip().isdigit():  # a top-level null key reads `threads=2` as text
        threads = int(threads)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be a whole number >= 1, or null (as many as the cores): {threads!r}")
        return threads, f"threads={threads}"
    if env := os.environ.get(THREADS_ENV, "").strip():
        try:  # "4,2" (OpenMP's nested levels) reads as 4
            return max(1, int(env.split(",")[0])), f"{THREADS_ENV}={env} from the environment; threads=<n> overrides it"
        except ValueError:
            raise ConfigError(f"{THREADS_ENV}={env!r} is not a thread count: unset it, or set threads=<n>") from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    shared = f" shared by {processes} processes" if processes > 1 else ""
    return max(1, cores // processes), f"the {cores} cores this process may use{shared}; threads=<n> sets it"


def run_summary(trainer: L.Trainer, cfg: DictConfig, run_dir: Path) -> str:
    """What a finished run left and what to do next: its folder, best checkpoint, newest samples,
    and the commands that sample from it and continue it."""
    lines = [f"Run finished: {run_dir}"]
    if trainer.global_step == 0:  # not in this launch nor before (a resumed run counts its earlier steps)
        batches = trainer.num_training_batches  # inf when Lightning skipped training (limit_train_batches=0)
        counted = f" ({int(batches)} training batches per epoch)" if math.isfinite(batches) else ""
        lines.append(
            f"  no training step ran{counted}, so there is no trained model to sample from. Look at the data "
            "set: did its training split give any batch (readable examples, data.batch_size)? Or is "
            "trainer.limit_train_batches 0?"
        )
        return "\n".join(lines)
    best = trainer.checkpoint_callback
    if best is not None and best.best_model_path and best.best_model_score is not None:
        lines.append(f"  best {best.monitor}: {float(best.best_model_score):.4g} in {best.best_model_path}")
    samples = sorted((run_dir / "samples").glob("samples_*"), key=lambda p: p.stat().st_mtime)
    if samples:
        lines.append(f"  samples: {samples[-1]}")
    lines.append(f"  sample from it:  make sample RUN={run_dir}   (or: python -m genlab.sample {run_dir})")
    lines.append(f"  score it:        make eval RUN={run_dir}")
    budget = "max_steps" if (cfg.trainer.get("max_steps") or -1) > 0 else "max_epochs"
    more = f"trainer.{budget}=<more than {getattr(trainer, budget)}>"
    # The run's own recipe: without its experiment (and data) a relaunch would build the family's default
    # net on the default data and fail to load the checkpoint.
    recipe = " ".join(f"{g}={cfg.groups[g]}" for g in ("model", EXPERIMENT, "data") if cfg.groups.get(g))
    lines.append(
        f"  train it longer: python -m genlab.train {recipe} ckpt_path={run_dir} {more}"
        "   (plus any other key=value the run was given)"
    )
    return "\n".join(lines)


def weights_do_not_fit(ckpt: Path, cfg: DictConfig) -> str:
    """One line for a relaunch whose command builds other nets than the checkpoint's (an experiment or
    `model.*` size left out): the recipe the run was trained with, read from its checkpoint. The
    checkpoint itself is untouched."""
    saved = read_checkpoint(ckpt, mmap=True).get("genlab", {}).get("config", {})
    groups = saved.get("groups") or {}
    recipe = " ".join(f"{g}={groups[g]}" for g in ("model", EXPERIMENT, "data") if groups.get(g))
    given = " ".join(f"{g}={cfg.groups[g]}" for g in ("model", EXPERIMENT, "data") if cfg.groups.get(g))
    return (
        f"ckpt_path={ckpt}: its weights do not fit the nets this command builds ({given}); the run was trained "
        f"with {recipe or 'other settings'}: relaunch with those and the same model.* overrides it was given "
        f"(its config.yaml lists them)"
    )


def usage() -> str:
    groups = "\n".join(f"  {g:<11} {', '.join(choices_of(g))}" for g in (*GROUPS, EXPERIMENT))
    return f"""usage: python -m genlab.train [--print-config] [GROUP=CHOICE ...] [KEY=VALUE ...]

Keys are dotted paths into the config (model.latent_dim=8); --key=value works too (W&B agents).
Values are YAML: null/None, true/false, numbers, [lists]. Groups and their choices (configs/):
{groups}
Examples:
  python -m genlab.train model=vae trainer.max_epochs=5
  python -m genlab.train model=vae data=mnist logger=csv,wandb trainer=ddp
  python -m genlab.train model=vae ckpt_path=last        # resume the newest vae run
  python -m genlab.train model=vae run_name=a resume=auto  # continue run a if it was stopped, else start it"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(usage())
        return 0
    print_only = "--print-config" in argv
    argv = [a for a in argv if a != "--print-config"]
    try:
        cfg = compose(argv)
        if print_only:
            print(to_yaml(cfg))
            return 0
        train(cfg)
    except GenlabError as err:
        print(f"genlab: error: {err}", file=sys.stderr)
        return 2
    except SIGTERMException:  # preempted: PreemptionCheckpoint saved the run
        print(
            f"genlab: stopped by a signal; saved {cfg.run_dir}/checkpoints/last.ckpt. "
            "Run the same command with resume=auto to continue.",
            file=sys.stderr,
        )
        return PREEMPTED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
