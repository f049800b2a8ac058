"""Step time of fine-tuning from feedback (model=gpt_feedback), per generated token, next to plain
`generate()` of the same tokens and to a plain PyTorch loop doing the same step.

    python bench/gpt_feedback_step_time.py [--init-from RUN] [--objective grpo|dpo] [--clock wall|cpu]
                                           [--steps 10] [--rounds 3] [config overrides ...]

A step samples prompts_per_step x group_size completions of completion_length tokens (the KV-cached
`GPT.generate`), scores them, and updates the policy (forward of policy and reference over prompt +
completion, the loss, backward, clipping, AdamW). Three figures, in ms per generated token:
- generate: `GPT.generate` alone for the same batch of prompts (the floor: sampling is most of a step);
- plain step: the whole step in a hand-written PyTorch loop (same module methods, no Lightning);
- genlab step: the step through `python -m genlab.train` (Lightning, logging, callbacks).
Rounds alternate between them so machine noise hits all alike. Without --init-from, the base is the
default GPT after one training step (the weights do not change the cost). Validation is off.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import lightning as L
import timing
import torch

from genlab.config import compose
from genlab.instantiate import instantiate
from genlab.models.feedback_losses import advantages, dpo_loss, policy_gradient_loss
from genlab.train import train


def make_base(log_dir: str) -> Path:
    """The default GPT after one step: a checkpoint to start from."""
    overrides = ["model=gpt", f"log_dir={log_dir}", "run_name=base", "trainer.max_steps=1", "model.sample_length=8"]
    overrides += ["trainer.limit_val_batches=1", "callbacks.samples.num_samples=1", "callbacks.progress.refresh_rate=0"]
    train(compose([*overrides, "trainer.enable_model_summary=false"]))
    return Path(log_dir) / "gpt" / "base"


def plain_steps(overrides: list[str], steps: int, clock) -> tuple[float, float]:
    """(seconds per step of `generate` alone, of the whole step) in a hand-written loop."""
    cfg = compose(overrides)
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    datamodule.setup("fit")
    model.load_base(cfg.model.init_from)
    hp = model.hparams
    optimizers = model.configure_optimizers()
    optimizer, schedule = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    clip = cfg.trainer.gradient_clip_val
    batches = iter(datamodule.train_dataloader())
    generate_times, step_times = [], []
    for step in range(steps + 1):  # the first is warm-up
        x, _ = next(batches)
        prompts = model.prompts_for(x, hp.prompts_per_step)
        start = clock()
        with torch.no_grad():
            model.net.generate(torch.cat(prompts).repeat_interleave(hp.group_size, 0), hp.completion_length)
        middle = clock()
        with torch.no_grad():
            rows, texts = model.rollout(prompts, hp.group_size)
        rewards = model.score(texts).view(hp.prompts_per_step, hp.group_size)
        logp = model.logprobs(rows, model.net)
        with torch.no_grad():
            ref_logp = model.logprobs(rows, model.reference)
        if hp.objective == "grpo":
            loss, _ = policy_gradient_loss(logp, ref_logp, advantages(rewards, hp.advantage).flatten(), hp.kl_coef)
        else:
            seq, ref = logp.sum(-1).view_as(rewards), ref_logp.sum(-1).view_as(rewards)
            rows_ = torch.arange(len(rewards))
            best, worst = (rows_, rewards.argmax(1)), (rows_, rewards.argmin(1))
            loss, _ = dpo_loss(seq[best], seq[worst], ref[best], ref[worst], hp.dpo_beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.net.parameters(), clip)
        optimizer.step()
        schedule.step()
        end = clock()
        if step:
            generate_times.append(middle - start)
            step_times.append(end - middle)
    return statistics.median(generate_times), statistics.median(step_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init-from", help="a GPT run folder or .ckpt (default: the default GPT after one step)")
    parser.add_argument("--objective", choices=("grpo", "dpo"), default="grpo")
    parser.add_argument("--steps", type=int, default=10, help="steps per measurement (after one of warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each")
    parser.add_argument("--clock", choices=tuple(timing.CLOCKS), default="wall", help=timing.CLOCK_HELP)
    args, overrides = parser.parse_known_args()
    timing.use_clock(args.clock)
    clock = timing.CLOCKS[args.clock]
    generate, plain, ours = [], [], []
    with tempfile.TemporaryDirectory() as log_dir:
        base = args.init_from or make_base(log_dir)
        overrides = [
            "model=gpt_feedback",
            f"model.init_from={base}",
            f"model.objective={args.objective}",
            f"trainer.limit_train_batches={args.steps}",
            "callbacks.progress.refresh_rate=0",
            "trainer.enable_model_summary=false",
            *overrides,
        ]
        for _ in range(args.rounds):
            g, p = plain_steps(overrides, args.steps, clock)
            generate.append(g)
            plain.append(p)
            ours.append(timing.genlab_epochs(overrides, 2, log_dir)[0])
    hp = compose(overrides).model
    tokens = hp.prompts_per_step * hp.group_size * hp.completion_length
    g, p, o = (statistics.median(v) / tokens * 1e3 for v in (generate, plain, ours))
    print(f"config: {' '.join(overrides[1:])}  threads: {torch.get_num_threads()}  clock: {args.clock}")
    print(
        f"{tokens} generated tokens a step ({hp.prompts_per_step} prompts x {hp.group_size} x {hp.completion_length})"
    )
    print(f"generate() alone     : {g:7.4f} ms/token")
    print(f"plain PyTorch step   : {p:7.4f} ms/token   {p / g:.2f} x generate")
    print(f"genlab step          : {o:7.4f} ms/token   {o / g:.2f} x generate, {o / p:.3f} x the plain step")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
