"""Scale-out: two nodes on loopback, the launch environment, strategies built from config values."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

import genlab
import genlab.run
from genlab.config import compose
from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.run import RESUME_ENV, RUN_DIR_ENV, launch_rank, prepare_run
from genlab.strategies import check_launch, fsdp_strategy, global_batch_size

SRC = Path(genlab.__file__).resolve().parents[1]
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR")
LAUNCH_VARS += ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in (RUN_DIR_ENV, RESUME_ENV):
        monkeypatch.setenv(key, "")  # recorded, so what prepare_run exports is undone
    for key in LAUNCH_VARS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 15-25 s: two processes / a discriminator run; make test-all runs it
def test_two_nodes_on_loopback_share_one_run_folder(tmp_path: Path) -> None:
    """Two processes, each its own node (num_nodes=2, devices=1), ranks from the environment as a
    per-node launch sets them: both finish, rank zero alone writes the one run folder."""
    argv = ["model=vae", "trainer=ddp_multinode", "trainer.accelerator=cpu", "trainer.devices=1"]
    argv += ["trainer.strategy.timeout_s=60", "trainer.max_epochs=2", "trainer.limit_train_batches=5"]
    argv += ["trainer.limit_val_batches=2", "trainer.num_sanity_val_steps=0", "trainer.enable_model_summary=false"]
    argv += ["trainer.log_every_n_steps=1", "callbacks.progress.refresh_rate=0", "callbacks.samples.num_samples=4"]
    argv += ["data.batch_size=32", "model.iw_samples=2", f"log_dir={tmp_path}", "run_name=two"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENLAB_", "SLURM_")) and k not in LAUNCH_VARS}
    env.update(PYTHONPATH=f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}", MASTER_ADDR="127.0.0.1")
    env.update(MASTER_PORT=str(free_port()), WORLD_SIZE="2", LOCAL_RANK="0", OMP_NUM_THREADS="1")
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "genlab.train", *argv],
            env={**env, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [node.communicate(timeout=150)[0] for node in nodes]  # a hang fails here, not forever
    finally:
        for node in nodes:
            node.kill()
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output

    assert os.listdir(tmp_path / "vae") == ["two"]
    run_dir = tmp_path / "vae" / "two"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 10  # 2 epochs x 5 steps, each step on both nodes' batches
    assert (run_dir / "samples" / "samples_final.png").is_file() and (run_dir / "config.yaml").is_file()
    assert "= 64 samples per optimizer step" in outputs[0]  # 32 per device x 2 nodes
    assert "Run folder" not in outputs[1] and "Global batch" not in outputs[1]
    # Lightning warns when epoch-level metrics are logged without sync_dist under DDP.
    assert not any("sync_dist=True" in output for output in outputs)


@pytest.mark.slow  # 15-25 s: two processes / a discriminator run; make test-all runs it
def test_torchrun_without_a_rendezvous_id_shares_rank_zeros_folder(tmp_path: Path) -> None:
    """The plain torchrun command (static --master-addr, no --rdzv-id, no run_name): rank zero stamps
    the run folder and tells the other rank, and Lightning trains on the process group genlab brought up."""
    argv = ["model=vae", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1"]
    argv += ["trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"]
    argv += [
        "trainer.enable_model_summary=false",
        "callbacks.progress.refresh_rate=0",
        "callbacks.samples.num_samples=4",
    ]
    argv += ["data.batch_size=16", "model.iw_samples=2", f"log_dir={tmp_path}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENLAB_", "SLURM_")) and k not in LAUNCH_VARS}
    env.update(PYTHONPATH=f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1"]
    torchrun += [f"--master-port={free_port()}", "-m", "genlab.train", *argv]
    done = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr

    (run_dir,) = (tmp_path / "vae").iterdir()  # one folder, named by rank zero's clock
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    assert "= 32 samples per optimizer step" in done.stdout + done.stderr  # 16 per process x 2: one DDP job


def test_separately_started_processes_need_a_shared_name(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def run_dir(*argv: str) -> Path:
        clean_env.setenv(RUN_DIR_ENV, "")  # as in a fresh process
        return prepare_run(compose(["model=vae", f"log_dir={tmp_path}", *argv])).dir

    clean_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="same run_name"):  # timestamps could differ between the processes
        run_dir()
    with pytest.raises(ConfigError, match="same run_name"):
        run_dir("trainer.num_nodes=2")
    assert run_dir("run_name=mine") == tmp_path / "vae" / "mine"
    clean_env.setenv("TORCHELASTIC_RUN_ID", "job42")  # torchrun --rdzv-id=job42
    assert run_dir() == tmp_path / "vae" / "torchrun-job42"
    clean_env.delenv("TORCHELASTIC_RUN_ID")
    clean_env.setenv("SLURM_JOB_ID", "1234")
    clean_env.setenv("SLURM_JOB_NAME", "genlab")
    assert run_dir() == tmp_path / "vae" / "slurm-1234"  # a requeued job keeps its id, so resume=auto finds it
    clean_env.setenv("SLURM_JOB_NAME", "interactive")  # salloc sessions: no job-wide name
    with pytest.raises(ConfigError, match="same run_name"):
        run_dir()


def test_launch_rank_tells_rank_zero_before_the_trainer(clean_env: pytest.MonkeyPatch) -> None:
    assert launch_rank() == 0
    clean_env.setenv("NODE_RANK", "1")
    clean_env.setenv("LOCAL_RANK", "0")
    assert launch_rank() != 0  # Lightning's own guess (LOCAL_RANK) would say 0 on every node
    clean_env.setenv("RANK", "0")
    assert launch_rank() == 0


def test_multinode_without_a_launcher_fails_at_once(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="num_nodes=2"):
        check_launch(2)
    check_launch(1)
    clean_env.setenv("MASTER_ADDR", "10.0.0.1")
    clean_env.setenv("NODE_RANK", "1")
    check_launch(2)


def test_global_batch_size_counts_devices_nodes_and_accumulation() -> None:
    trainer = SimpleNamespace(num_devices=8, num_nodes=2, accumulate_grad_batches=4)
    assert global_batch_size(32, trainer) == 32 * 8 * 2 * 4


def test_fsdp_factory_resolves_class_paths() -> None:
    strategy = fsdp_strategy(
        auto_wrap=["torch.nn.TransformerEncoderLayer"], activation_checkpointing=True, sharding_strategy="SHARD_GRAD_OP"
    )
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {torch.nn.TransformerEncoderLayer}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {
        torch.nn.TransformerEncoderLayer
    }
    assert strategy.sharding_strategy.name == "SHARD_GRAD_OP"
    assert not fsdp_strategy(auto_wrap=["torch.nn.Linear"])._activation_checkpointing_kwargs
    with pytest.raises(ConfigError, match=r"genlab\.nets\.nothing\.Block"):
        fsdp_strategy(auto_wrap=["genlab.nets.nothing.Block"])
    with pytest.raises(ConfigError, match=r"not an nn\.Module"):
        fsdp_strategy(auto_wrap=["torch.optim.Adam"])


def test_strategy_presets_compose_and_build() -> None:
    cfg = compose(["model=vae", "trainer=fsdp", "trainer.strategy.auto_wrap=[torch.nn.TransformerEncoderLayer]"])
    assert isinstance(instantiate(cfg.trainer.strategy), FSDPStrategy)
    cfg = compose(["model=vae", "trainer=ddp_multinode", "trainer.strategy.timeout_s=60"])
    ddp = instantiate(cfg.trainer.strategy)
    assert isinstance(ddp, DDPStrategy) and ddp._timeout.total_seconds() == 60 and cfg.trainer.num_nodes == 2


def _run_module(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENLAB_", "SLURM_", "WANDB_", *LAUNCH_VARS))}
    env.update(PYTHONPATH=os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "genlab.train", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


# slow: two processes for ~50 s on 2 cores; make test-all runs it (DDP stays in make test: test_train.py)
@pytest.mark.slow
def test_fsdp_fit_samples_checkpoints_and_resumes_on_two_cpu_processes(tmp_path: Path) -> None:
    """Lightning's FSDP strategy for real (gloo, 2 processes), sharded checkpoints: the GPT trains
    with weight decay on its matrices, samples at every epoch end (whole weights gathered), writes a
    `last.ckpt/` folder of shards, and every way of naming that folder resumes or loads it."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat and saw a big red dog.\n" * 400, encoding="utf-8")
    argv = [
        "model=gpt", "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
        "trainer.strategy.state_dict_type=sharded", f"log_dir={tmp_path}", "run_name=sharded", f"data.path={corpus}",
        "data.block_size=16", "data.batch_size=4", "model.net.n_layer=2", "model.net.n_head=2", "model.net.n_embd=32",
        "model.sample_length=8", "model.lr_decay_steps=6", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0", "trainer.enable_model_summary=false", "callbacks.progress.refresh_rate=0",
        "callbacks.samples.every_n_epochs=1", "callbacks.samples.num_samples=2",
    ]  # fmt: skip
    first = _run_module([*argv, "trainer.max_steps=4"])
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "gpt" / "sharded"
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / "meta.pt").is_file()  # a folder of shards
    assert (run / "samples" / "samples_epoch=001.txt").is_file() and (run / "samples" / "samples_final.txt").is_file()

    state = genlab.run.read_checkpoint(last)
    decay, no_decay = state["optimizer_0"]["param_groups"]
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    n_matrices = 2 + 4 * 2  # token and position embeddings; qkv, proj, fc and proj of each block
    assert len(decay["params"]) == n_matrices and len(no_decay["params"]) == 1 + 2 * 2  # final and block norms

    again = _run_module(argv)  # the same run_name without resume: refused, the shards are kept
    assert again.returncode == 2 and "already holds checkpoints" in again.stderr
    resumed = _run_module([*argv, "ckpt_path=last", "trainer.max_steps=6"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert genlab.run.read_checkpoint(last)["global_step"] == 6

    model = genlab.load_model(last)  # the shards gathered into one model, on one process
    assert model.net.tok_emb.weight.dim() == 2 and len(model.generate("the ", max_new_tokens=5)) == 9


def test_a_sharded_checkpoint_folder_is_found_every_way(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    run = tmp_path / "vae" / "sharded"
    (run / "checkpoints" / "last.ckpt").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt" / "meta.pt").write_bytes(b"")  # what FSDP's sharded save leaves
    (run / "config.yaml").write_text("{}\n")
    for how in (
        "ckpt_path=last",
        "ckpt_path=last run_name=sharded",
        f"ckpt_path={run}",
        "resume=auto run_name=sharded",
    ):
        cfg = compose(["model=vae", f"log_dir={tmp_path}", *how.split()])
        clean_env.setenv(RUN_DIR_ENV, "")  # as a new launch: prepare_run exports the folder for other ranks
        resumed = prepare_run(cfg)
        assert (resumed.dir, resumed.resume_from) == (run, run / "checkpoints" / "last.ckpt"), how
    clean_env.setenv(RUN_DIR_ENV, "")
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        prepare_run(compose(["model=vae", f"log_dir={tmp_path}", "run_name=sharded"]))
