"""What the equal-CPU-time comparisons share (bench/vae_vs_reference.py, bench/flow_vs_reference.py):
each side trains in a process of its own on one thread until that process's CPU time since the start
of training passes the budget, then its samples are scored with the project's FID (the code `make eval`
runs: the digits classifier's features, `genlab.metrics.image_metrics`) against genlab's training split.

CPU time, not wall time: on a machine shared with other jobs, waiting for a core costs no budget, so
a figure means what one idle core would reach in that time. The parent runs the children one after
another and prints one table.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as L
import torch
from omegaconf import open_dict

from genlab.config import compose
from genlab.instantiate import instantiate
from genlab.metrics import image_metrics, make_features, split_tensors
from genlab.train import train

RESULT = "RESULT "  # the line a child prints its figures on, as JSON


class CPUBudget(L.Callback):
    """Stops training once this process's CPU time since `on_fit_start` passes `seconds` (checked
    after every step), and keeps the module for scoring. Forces one thread."""

    last: dict[str, Any] = {}

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_fit_start(self, trainer, pl_module) -> None:
        torch.set_num_threads(1)
        self.start = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.process_time() - self.start > self.seconds:
            trainer.should_stop = True

    def on_fit_end(self, trainer, pl_module) -> None:
        CPUBudget.last = {"module": pl_module, "steps": trainer.global_step, "cpu_s": time.process_time() - self.start}


def genlab_run(overrides: list[str], seconds: float) -> tuple[L.LightningModule, dict[str, Any]]:
    """`python -m genlab.train <overrides>` with the budget callback; -> (trained module, run facts).
    The module is the one at the end of training (what `make eval RUN=<run>` scores: last.ckpt)."""
    with tempfile.TemporaryDirectory() as log_dir:
        cfg = compose([f"log_dir={log_dir}", *overrides])
        with open_dict(cfg):
            cfg.callbacks.cpu_budget = {"_target_": f"{__name__}.CPUBudget", "seconds": seconds}
        train(cfg)
    last = CPUBudget.last
    module = last["module"].cpu().eval()
    return module, {"steps": last["steps"], "cpu_s": round(last["cpu_s"], 1)}


def digits(overrides: list[str]) -> tuple[L.LightningDataModule, torch.Tensor, torch.Tensor]:
    """genlab's data module for these overrides (default: the digits, the default split) and its train
    and test images `(N, C, H, W)` in [-1, 1]."""
    datamodule = instantiate(compose(overrides).data)
    return datamodule, split_tensors(datamodule, "train")[0], split_tensors(datamodule, "test")[0]


def sample_scores(samples: torch.Tensor, datamodule, train_x, test_x, seed: int) -> dict[str, float]:
    """The project's FID and friends of `samples` (as `make eval`: N samples vs the training split)."""
    features = make_features(datamodule, None, "data")
    scores = image_metrics(samples.float().clamp(-1, 1), train_x, test_x, features=features, seed=seed)
    return {k: round(float(scores[k]), 4) for k in ("fid", "kid", "precision", "recall", "coverage")}


def load_reference(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child_result(figures: dict[str, Any]) -> None:
    print(RESULT + json.dumps(figures), flush=True)


def run_children(script: str, sides: list[str], budgets: list[float], extra: list[str]) -> list[dict[str, Any]]:
    """Each (side, budget) in a fresh one-thread process, one at a time; their figures."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rows = []
    for budget in budgets:
        for side in sides:
            cmd = [sys.executable, script, "--child", side, "--budget", str(budget), *extra]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT)]
            if out.returncode or not lines:
                sys.stderr.write(out.stderr[-3000:])
                raise SystemExit(f"{side} at {budget} s failed (exit {out.returncode})")
            rows.append({"side": side, "budget_s": budget, **json.loads(lines[-1][len(RESULT) :])})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    print("| CPU budget | side | " + " | ".join(columns) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in columns) + " |")
    for row in rows:
        cells = [str(row.get(c, "")) for c in columns]
        print(f"| {row['budget_s']:g} s | {row['side']} | " + " | ".join(cells) + " |")


def here() -> Path:
    return Path(__file__).resolve().parent
