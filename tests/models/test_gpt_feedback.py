"""Fine-tuning a trained GPT toward a reward: short real runs from a tiny trained GPT."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import column, read_metrics, tiny_gpt_data_args

from genlab.config import compose
from genlab.errors import ConfigError
from genlab.instantiate import instantiate
from genlab.models.gpt_feedback import GPTFeedbackModule, completion_logprobs
from genlab.run import load_model, read_checkpoint
from genlab.train import main, train

COUNT_E = "model.reward={_target_: genlab.rewards.substring_count, _partial_: true, text: e}"


def feedback_argv(base: Path, log_dir: Path, *extra: str) -> list[str]:
    return [
        "model=gpt_feedback",
        f"model.init_from={base}",
        f"log_dir={log_dir}",
        *tiny_gpt_data_args(base),
        "model.prompt_length=4",
        "model.completion_length=16",
        "model.group_size=4",
        "model.prompts_per_step=4",
        "model.val_prompts=4",
        "model.sample_length=16",
        "model.warmup_steps=0",
        "model.optimizer.lr=1e-2",
        "callbacks.samples.num_samples=2",
        "trainer.limit_train_batches=10",
        "trainer.limit_val_batches=2",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.enable_model_summary=false",
        "trainer.num_sanity_val_steps=0",
        "callbacks.progress.refresh_rate=0",
        COUNT_E,
        *extra,
    ]


def _module(base: Path, tmp_path: Path, *extra: str) -> GPTFeedbackModule:
    model = instantiate(compose(feedback_argv(base, tmp_path, *extra)).model)
    model.load_base(str(base))
    return model


def test_kl_to_the_reference_is_zero_before_the_first_update(tiny_gpt_run: Path, tmp_path: Path) -> None:
    model = _module(tiny_gpt_run, tmp_path)
    prompts = [torch.tensor([[1, 2, 3, 4]]), torch.tensor([[5, 6, 7, 8]]), torch.tensor([[2, 3]])]
    torch.manual_seed(0)
    rows, texts = model.rollout(prompts, 4)  # equal-length neighbours are sampled in one batch
    assert [r.shape for r in rows] == [(8, 20), (4, 18)] and len(texts) == 12
    assert torch.equal(rows[0][:4, :4], prompts[0].expand(4, -1)) and torch.equal(
        rows[0][4:, :4], prompts[1].expand(4, -1)
    )
    assert texts[4] == model.tokenizer.decode(rows[0][4, 4:].tolist())
    logp = completion_logprobs(model.net, rows[0], 4, 1.0)
    ref = completion_logprobs(model.reference, rows[0], 4, 1.0)
    assert logp.shape == (8, 16) and (logp < 0).all()
    assert torch.equal(logp, ref)
    rewards, kl = model.evaluate_prompts(prompts)
    assert rewards.shape == (12,) and kl.shape == (12, 16)
    assert torch.equal(kl, torch.zeros_like(kl))  # exactly: the same weights give the same logits
    assert not any(p.requires_grad for p in model.reference.parameters())


def test_a_reward_naming_prompts_is_given_each_completions_prompt(tiny_gpt_run: Path, tmp_path: Path) -> None:
    """python_parses and known_words score the prompt and the completion together (the prompt may
    end inside a word or a `def `); a reward without a `prompts` keyword is called as before."""
    model = _module(tiny_gpt_run, tmp_path, "model.reward={_target_: genlab.rewards.python_parses, _partial_: true}")
    assert model.reward_takes_prompts
    seen = {}

    def recorder(samples: list[str], prompts: list[str] | None = None) -> list[float]:
        seen["prompts"] = prompts
        return [0.0] * len(samples)

    model.reward_fn = recorder
    prompts = [torch.tensor([[1, 2, 3, 4]]), torch.tensor([[5, 6, 7, 8]])]
    rows, texts = model.rollout(prompts, 2)
    model.score(texts, rows)
    decoded = [model.tokenizer.decode(p[0].tolist()) for p in prompts]
    assert seen["prompts"] == [decoded[0], decoded[0], decoded[1], decoded[1]]
    assert not _module(tiny_gpt_run, tmp_path).reward_takes_prompts  # substring_count: samples only


@pytest.mark.parametrize("objective", ["grpo", "dpo"])
def test_a_short_run_raises_a_toy_reward_and_leaves_the_reference_alone(
    objective: str, tiny_gpt_run: Path, tmp_path: Path
) -> None:
    argv = feedback_argv(tiny_gpt_run, tmp_path, f"model.objective={objective}", "trainer.max_steps=20")
    train(compose([*argv, "run_name=ft"]))
    run = tmp_path / "gpt_feedback" / "ft"
    rows = read_metrics(run)
    reward, kl, val_loss = column(rows, "val/reward"), column(rows, "val/kl"), column(rows, "val/loss")
    assert len(reward) == 2  # two epochs of 10 steps
    before = float((run / "samples" / "feedback_before.txt").read_text().split("mean reward ")[1].split()[0])
    assert reward[-1] > before + 1.0  # more e's in 16 characters, same prompts and seed
    assert 0 < kl[-1] < 5 and all(v < 10 for v in val_loss)
    assert (run / "samples" / "feedback_after.txt").is_file()
    assert {"train/reward", "train/reward_std", "train/kl", "train/loss"} <= set(rows[0]) | set(rows[-1])
    # The reference in the checkpoint is still the base GPT; the policy moved.
    base = read_checkpoint(tiny_gpt_run / "checkpoints" / "last.ckpt")["state_dict"]
    state = read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    for name, value in base.items():
        assert torch.equal(state[name.replace("net.", "reference.", 1)], value), name
    assert not torch.equal(state["net.tok_emb.weight"], base["net.tok_emb.weight"])
    assert not any(name.startswith("reference.") for name in _optimized_names(run))


def _optimized_names(run: Path) -> list[str]:
    """Names of the parameters the checkpointed optimizer holds, matched by count (AdamW state)."""
    checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
    (optimizer,) = checkpoint["optimizer_states"]
    held = sum(len(group["params"]) for group in optimizer["param_groups"])
    policy = [n for n in checkpoint["state_dict"] if n.startswith("net.") and n != "net.lm_head.weight"]  # tied
    assert held == len(policy)
    return policy


def test_resume_continues_exactly_and_the_checkpoint_alone_samples(tiny_gpt_run: Path, tmp_path: Path) -> None:
    whole = feedback_argv(tiny_gpt_run, tmp_path, "trainer.max_steps=6", "trainer.limit_train_batches=3")
    train(compose([*whole, "run_name=whole"]))
    base = shutil.copytree(tiny_gpt_run, tmp_path / "base")
    train(compose([*whole, "run_name=parts", "trainer.max_steps=3", f"model.init_from={base}"]))
    shutil.rmtree(base)  # the checkpoint holds the reference: resuming does not need the base run
    train(compose([*whole, "run_name=parts", "resume=auto", f"model.init_from={base}"]))
    states = [read_checkpoint(tmp_path / "gpt_feedback" / r / "checkpoints" / "last.ckpt") for r in ("whole", "parts")]
    assert states[0]["global_step"] == states[1]["global_step"] == 6
    for name, value in states[0]["state_dict"].items():
        assert torch.equal(value, states[1]["state_dict"][name]), name
    # make sample: the policy, from the checkpoint alone (the base run is not read)
    model = load_model(tmp_path / "gpt_feedback" / "whole" / "checkpoints" / "last.ckpt")
    assert isinstance(model, GPTFeedbackModule)
    texts = model.sample(3)
    assert len(texts) == 3 and all(len(t) == 16 for t in texts)
    from genlab.sample import main as sample_main

    assert sample_main([str(tmp_path / "gpt_feedback" / "whole"), "n=2", f"out={tmp_path / 'out'}"]) == 0
    assert (tmp_path / "out" / "sample-n2-seed0.txt").read_text().count("----------") == 1


def test_fine_tuning_a_fine_tuned_policy_starts_from_its_policy(tiny_gpt_run: Path, tmp_path: Path) -> None:
    train(compose([*feedback_argv(tiny_gpt_run, tmp_path, "trainer.max_steps=2"), "run_name=first"]))
    first = tmp_path / "gpt_feedback" / "first"
    model = _module(first, tmp_path, f"model.init_from={first}")
    policy = read_checkpoint(first / "checkpoints" / "last.ckpt")["state_dict"]
    for name, value in model.reference.state_dict().items():
        assert torch.equal(value, policy[f"net.{name}"])


def _one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_bad_input_is_one_line(tiny_gpt_run: Path, tmp_path: Path, capsys) -> None:
    argv = feedback_argv(tiny_gpt_run, tmp_path, "trainer.max_steps=1")
    no_init = [a for a in argv if not a.startswith("model.init_from")]
    assert "'model.init_from' is required" in _one_line_error(no_init, capsys)
    with pytest.raises(ConfigError, match="model.init_from is required"):
        GPTFeedbackModule(init_from=None, reward={"_target_": "genlab.rewards.python_parses"}, optimizer={})

    other = tmp_path / "vae.ckpt"  # what a VAE run's checkpoint carries, as far as the check reads
    torch.save({"genlab": {"config": {"model": {"_target_": "genlab.models.vae.VAEModule"}}}, "state_dict": {}}, other)
    assert "holds a VAEModule checkpoint; give a GPT run" in _one_line_error(
        [*argv, f"model.init_from={other}"], capsys
    )
    assert "model.init_from: no checkpoint at" in _one_line_error([*argv, f"model.init_from={tmp_path}/nope"], capsys)

    wrong = "model.reward={_target_: misbehaving_rewards.too_few, _partial_: true}"
    line = _one_line_error([*argv, wrong], capsys)
    assert re.search(
        r"model.reward: misbehaving_rewards.too_few returned 1 scores for \d+ samples; a reward returns one", line
    )

    too_long = _one_line_error([*argv, "model.completion_length=40"], capsys)
    assert "exceeds the base GPT's block_size 32" in too_long


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tiny_gpt_run: Path, tmp_path: Path) -> None:
    """Two ranks, each sampling its own prompts; the gradients are averaged and one run folder written."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("GENLAB_RUN_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parents[2] / "src"), env.get("PYTHONPATH")) if p)
    argv = feedback_argv(tiny_gpt_run, tmp_path, "trainer=ddp", "trainer.devices=2", "trainer.max_steps=3")
    argv += ["trainer.limit_train_batches=3", "run_name=ddp", "model.objective=dpo"]
    result = subprocess.run(
        [sys.executable, "-m", "genlab.train", *argv], capture_output=True, text=True, timeout=240, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "gpt_feedback" / "ddp"
    checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 3
    assert len(column(read_metrics(run), "val/reward")) == 1
    assert (run / "samples" / "feedback_after.txt").is_file()
