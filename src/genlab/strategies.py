"""Lightning strategies built from plain config values, a launch preflight, and the global batch size.

Lightning's strategy classes take `timedelta`s and module classes, which YAML cannot spell; these
factories take seconds and class paths (`genlab.nets.gpt.Block`), resolved only when the
strategy is built, so a preset may name a class that only one family provides.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Literal

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing
from torch import nn

from genlab.errors import ConfigError
from genlab.instantiate import locate


def ddp_strategy(
    timeout_s: float = 1800, find_unused_parameters: bool = False, static_graph: bool = False
) -> DDPStrategy:
    """DDP whose collectives fail after `timeout_s` instead of hanging the job (pytorch-lightning#9611)."""
    return DDPStrategy(
        timeout=timedelta(seconds=timeout_s),
        find_unused_parameters=find_unused_parameters,
        static_graph=static_graph,
    )


class ShardedDataParallel(FSDPStrategy):
    """Lightning's FSDP strategy, which also runs on CPU processes (gloo). Lightning refuses an
    `FSDPStrategy` without a GPU by an exact type check; torch's FSDP itself supports CPU, and a
    2-process CPU run is how the FSDP path (sharded optimizer, sampling, checkpoints, resume) is
    tested here, where CI has no GPU."""

    def setup(self, trainer: L.Trainer) -> None:
        super().setup(trainer)
        # Lightning's FSDPPrecision refuses norm clipping (`gradient_clip_val`, which the GPT family sets);
        # FSDP's own `clip_grad_norm_` computes the norm over every rank's shards, which is what it means.
        self.precision_plugin.clip_grad_by_norm = self._clip_grad_by_norm

    def _clip_grad_by_norm(self, optimizer: torch.optim.Optimizer, clip_val: float) -> None:
        self.model.clip_grad_norm_(clip_val)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        # torch's FSDP must be told the CPU by name (device_id); Lightning passes the device's index,
        # None for the CPU, and FSDP then looks for an accelerator and fails. The rest is Lightning's.
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,
            **self.kwargs,
        )
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model


@contextmanager
def full_weights(trainer: L.Trainer | None) -> Iterator[None]:
    """Within it the model's parameters are whole on every rank, so code outside the training
    forward (sampling, `generate`, a callback's metric) can run the nets as usual. A no-op except
    under FSDP, where they are shards between forward passes; there every rank must enter it together
    (it gathers), and the weights are read-only (`writeback=False`)."""
    strategy = trainer.strategy if trainer is not None else None
    if not isinstance(strategy, FSDPStrategy) or strategy.model is None:
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(strategy.model, writeback=False, recurse=True):
        yield


def fsdp_strategy(
    auto_wrap: list[str],
    activation_checkpointing: bool | list[str] = False,
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
    state_dict_type: Literal["full", "sharded"] = "full",
    cpu_offload: bool = False,
    timeout_s: float = 1800,
) -> FSDPStrategy:
    """FSDP that shards each instance of the `auto_wrap` classes (a transformer's block) as one unit.

    `activation_checkpointing`: true recomputes the `auto_wrap` blocks' activations in the backward
    pass (less memory, ~30% more compute), or a list of other class paths to recompute.
    `state_dict_type: full` gathers one ordinary checkpoint file on rank zero (loadable anywhere);
    `sharded` writes a folder of per-rank shards (fast for very large models).
    """
    wrap = {_module_class(path) for path in auto_wrap}
    if activation_checkpointing is True:
        recompute = wrap
    elif activation_checkpointing:
        recompute = {_module_class(path) for path in activation_checkpointing}
    else:
        recompute = None
    return ShardedDataParallel(
        auto_wrap_policy=wrap,
        activation_checkpointing_policy=recompute,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        timeout=timedelta(seconds=timeout_s),
    )


def _module_class(path: str) -> type[nn.Module]:
    cls = locate(path)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"'{path}' is not an nn.Module class, so FSDP cannot wrap or checkpoint it")
    return cls


def check_launch(num_nodes: int) -> None:
    """Fail at once, not after the rendezvous timeout, when several nodes are asked for but nothing
    tells this process who the others are."""
    if num_nodes <= 1 or SLURMEnvironment.detect() or TorchElasticEnvironment.detect():
        return
    if os.environ.get("MASTER_ADDR") and (os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK")):
        return
    raise ConfigError(
        f"trainer.num_nodes={num_nodes} but this process was not started by a multi-node launcher: use srun "
        "(scripts/slurm.sh) or torchrun on every node, or set MASTER_ADDR, MASTER_PORT and NODE_RANK on each "
        "node (see configs/trainer/ddp_multinode.yaml)"
    )


def global_batch_size(per_device: int, trainer: L.Trainer) -> int:
    """Samples per optimizer step: per-device batch x devices per node x nodes x accumulation."""
    return per_device * trainer.num_devices * trainer.num_nodes * trainer.accumulate_grad_batches


def describe_batch(per_device: int, trainer: L.Trainer) -> str:
    return (
        f"Global batch: {per_device} per device x {trainer.num_devices} device(s) x {trainer.num_nodes} node(s) "
        f"x {trainer.accumulate_grad_batches} accumulated = {global_batch_size(per_device, trainer)} samples per "
        "optimizer step (the learning rate is used as configured, not rescaled)"
    )
