"""The one training entrypoint for every family.

    python -m genlab.train model=vae trainer.max_epochs=5      # or: genlab-train --model=vae ...
    python -m genlab.train --print-config model=vae data=mnist  # show the resolved config, no run

`main` parses the command line (see `genlab.config`), `train` wires data, model, callbacks,
loggers and Trainer from the config and fits.
"""

from __future__ import annotations

import os
import sys
import warnings

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from genlab.callbacks import RunInfoInCheckpoint
from genlab.config import EXPERIMENT, GROUPS, choices_of, compose, to_yaml
from genlab.errors import GenlabError
from genlab.faults import PREEMPTED_EXIT_CODE, PreemptionCheckpoint, slurm_environment
from genlab.instantiate import instantiate
from genlab.loggers import wandb_run_id
from genlab.run import RESUME_ENV, RUN_DIR_ENV, launch_rank, prepare_run
from genlab.strategies import check_launch, describe_batch

# Our samplers resume mid-epoch exactly (genlab.data.images.EpochPosition), which Lightning cannot see.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model; returns the final logged metrics."""
    saved_env = {key: os.environ.get(key) for key in (RUN_DIR_ENV, RESUME_ENV)}
    try:
        rank_zero_only.rank = launch_rank()  # only rank zero writes, also before the Trainer knows the rank
        check_launch(cfg.trainer.num_nodes)
        run = prepare_run(cfg)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)

        datamodule = instantiate(cfg.data)
        model = instantiate(cfg.model)
        if cfg.compile:  # in place: state_dict keys stay free of `_orig_mod.` (pytorch-lightning#17415)
            for net in model.children():
                net.compile()

        config = OmegaConf.to_container(cfg, resolve=True)
        callbacks = [instantiate(node) for node in cfg.callbacks.values()]
        callbacks.append(RunInfoInCheckpoint(config, wandb_run_id(run.dir), cfg.seed))
        # Always on, whatever the callbacks group says: a preempted run must not be lost.
        callbacks.append(PreemptionCheckpoint(run.dir / "checkpoints", cfg.preempt_signal))
        loggers = [instantiate(node) for node in cfg.logger.values()]
        trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
        plugins = trainer_cfg.pop("plugins", None) or []
        plugins = instantiate(plugins if isinstance(plugins, list) else [plugins])
        trainer: L.Trainer = instantiate(
            trainer_cfg,
            callbacks=callbacks,
            logger=loggers or False,
            default_root_dir=str(run.dir),
            plugins=plugins + slurm_environment(),
        )
        if hasattr(datamodule, "batch_size"):
            rank_zero_info(describe_batch(datamodule.batch_size, trainer))
        for logger in loggers:
            logger.log_hyperparams(config)
        ckpt_path = str(run.resume_from) if run.resume_from else None
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)  # never unpickle code
        return {key: float(value) for key, value in trainer.callback_metrics.items()}
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
