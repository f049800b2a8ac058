"""Step time of the GPT trained through genlab vs a plain PyTorch loop doing the same math.

    python bench/gpt_step_time.py                                   # the CPU default (configs/model/gpt.yaml)
    python bench/gpt_step_time.py --size shakespeare --device cuda --compile --bf16 --peak-tflops 989
    python bench/gpt_step_time.py ... [config overrides, e.g. data.batch_size=16]

Both train the same model (same init, the same batches from the same TextDataModule, the same
AdamW parameter groups, warm-up/cosine schedule and gradient clipping, the loss read back every
log_every_n_steps as nanoGPT's loop does) in one process; rounds alternate between them so machine
noise hits both alike. A round times `--steps` steps after `--warmup` steps, from the start of one
step to the start of the step after the last (data loading, forward, backward, clipping,
optimizer, scheduler, and all Lightning and genlab do per step: logging, progress bar, callbacks),
with a device sync at both ends. Validation and checkpoints are off in both (they are per-epoch
costs, not per-step). `--size shakespeare` is nanoGPT's shakespeare_char model (6x384, block 256,
batch 64) on the embedded corpus, so it runs without network.

`--nanogpt DIR` also times nanoGPT's own model.py from a checkout (its fused AdamW set-up,
`torch.compile(model)` as its train.py does) in the same plain loop, on the same batches.

Tokens/s count input tokens; MFU is 6 * N * tokens + attention FLOPs (GPT.flops_per_token)
over `--peak-tflops` (e.g. 989 for an H100 SXM in bf16, dense).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, open_dict

from genlab.config import compose
from genlab.instantiate import instantiate
from genlab.models.gpt import GPTModule, warmup_cosine
from genlab.train import train

SIZES = {
    "default": [],
    "shakespeare": [
        "data.block_size=256",
        "data.batch_size=64",
        "model.net.n_layer=6",
        "model.net.n_head=6",
        "model.net.n_embd=384",
        "model.net.dropout=0.2",
        "model.optimizer.lr=1e-3",
    ],
}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class WindowTimer(L.Callback):
    """Seconds from the start of step `first` to the start of step `first + steps`."""

    seconds: float = 0.0

    def __init__(self, first: int, steps: int, device: str) -> None:
        self.first, self.steps, self.device = first, steps, device

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.first:
            sync(self.device)
            self._start = time.perf_counter()
        elif step == self.first + self.steps:
            sync(self.device)
            WindowTimer.seconds = time.perf_counter() - self._start


def genlab_round(cfg: DictConfig, warmup: int, steps: int, device: str, log_dir: str) -> float:
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.log_dir = log_dir
        cfg.trainer.max_steps = warmup + steps + 1
        cfg.threads = torch.get_num_threads()  # the plain loop's count (train() would take the cores it may use)
        del cfg.callbacks.checkpoint, cfg.callbacks.last  # per-epoch costs, off in both
        cfg.callbacks.timer = {"_target_": "__main__.WindowTimer", "first": warmup, "steps": steps, "device": device}
    train(cfg)
    return WindowTimer.seconds / steps


def genlab_net(cfg: DictConfig, tokenizer, device: str, compile: bool) -> tuple:
    """genlab's net and the module's own loss, optimizer and schedule, without Lightning."""
    model: GPTModule = instantiate(cfg.model)
    model.build(tokenizer)
    model.to(device).train()
    if compile:
        model.net.compile()
    config = model.configure_optimizers()
    return model, model.loss, config["optimizer"], config["lr_scheduler"]["scheduler"]


def nanogpt_net(cfg: DictConfig, tokenizer, device: str, compile: bool, repo: Path) -> tuple:
    """nanoGPT's own model.py (from a checkout at `repo`) with its optimizer set-up (fused AdamW on
    CUDA), the same hyper-parameters and the same schedule; compiled the way its train.py does."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", repo / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net_cfg, opt_cfg = cfg.model.net, cfg.model.optimizer
    config = module.GPTConfig(
        block_size=net_cfg.block_size,
        vocab_size=tokenizer.vocab_size,
        n_layer=net_cfg.n_layer,
        n_head=net_cfg.n_head,
        n_embd=net_cfg.n_embd,
        dropout=net_cfg.dropout,
        bias=net_cfg.bias,
    )
    model = module.GPT(config).to(device).train()
    optimizer = model.configure_optimizers(opt_cfg.weight_decay, opt_cfg.lr, tuple(opt_cfg.betas), device)
    schedule = partial(
        warmup_cosine,
        warmup_steps=cfg.model.warmup_steps,
        decay_steps=cfg.model.lr_decay_steps,
        min_ratio=cfg.model.min_lr_ratio,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    forward = torch.compile(model) if compile else model
    return model, lambda batch: forward(*batch)[1], optimizer, scheduler


def plain_round(
    cfg: DictConfig, warmup: int, steps: int, device: str, bf16: bool, compile: bool, nanogpt: Path | None = None
) -> float:
    """The loop a careful user writes by hand (nanoGPT's train.py, minus evaluation)."""
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    if nanogpt is None:
        model, loss_fn, optimizer, scheduler = genlab_net(cfg, datamodule.tokenizer, device, compile)
    else:
        model, loss_fn, optimizer, scheduler = nanogpt_net(cfg, datamodule.tokenizer, device, compile, nanogpt)
    loader = datamodule.train_dataloader()
    log_every, clip = cfg.trainer.log_every_n_steps, cfg.trainer.gradient_clip_val
    step, epoch, start = 0, 0, 0.0
    while True:
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            if step == warmup:
                sync(device)
                start = time.perf_counter()
            elif step == warmup + steps:
                sync(device)
                return (time.perf_counter() - start) / steps
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn((x, y))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if step % log_every == 0:
                loss.item()  # what a loop that prints its loss pays (a host sync on a GPU)
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, allocator)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each")
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the net (both sides)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (Lightning: bf16-mixed)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--nanogpt", type=Path, default=None, help="a nanoGPT checkout: time its model.py too")
    args, overrides = parser.parse_known_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [
        "model=gpt",
        *SIZES[args.size],
        f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
        "trainer.devices=1",
        f"trainer.precision={'bf16-mixed' if args.bf16 else '32-true'}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_model_summary=false",
        f"compile={str(args.compile).lower()}",
        "model.lr_decay_steps=5000",  # the same schedule without a Trainer to ask the run's length
        "model.sample_length=8",  # the end-of-run sample, after the timed window
        "callbacks.samples.num_samples=1",
        *(["model.optimizer.fused=true"] if args.device == "cuda" else []),
        *overrides,
    ]
    cfg = compose(overrides)
    plain, ours, nano = [], [], []
    timing = (args.warmup, args.steps, args.device, args.bf16, args.compile)
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(args.rounds):
            plain.append(plain_round(cfg, *timing))
            ours.append(genlab_round(cfg, args.warmup, args.steps, args.device, log_dir))
            if args.nanogpt:
                nano.append(plain_round(cfg, *timing, nanogpt=args.nanogpt))
    tokens = cfg.data.batch_size * cfg.data.block_size
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    model: GPTModule = instantiate(cfg.model)
    model.build(datamodule.tokenizer)
    flops_per_token = model.net.flops_per_token(cfg.data.block_size)
    print(f"\nconfig: {' '.join(overrides)}")
    print(
        f"device: {args.device}  threads: {torch.get_num_threads()}  "
        f"params: {model.net.num_params() / 1e6:.2f}M  tokens/step: {tokens}  (median of {args.rounds} rounds)"
    )
    contestants = [("plain PyTorch loop", plain), ("genlab (Lightning)", ours), ("nanoGPT model.py  ", nano)]
    for name, times in [(name, times) for name, times in contestants if times]:
        step = statistics.median(times)
        line = f"{name} : {step * 1e3:8.2f} ms/step  {tokens / step:10.0f} tokens/s"
        if args.peak_tflops:
            line += f"  MFU {flops_per_token * tokens / step / (args.peak_tflops * 1e12):6.1%}"
        print(line + f"   rounds: {', '.join(f'{t * 1e3:.1f}' for t in times)} ms")
    ratio = statistics.median(ours) / statistics.median(plain)
    print(f"ratio genlab / plain: {ratio:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
