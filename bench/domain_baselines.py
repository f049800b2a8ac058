"""A trained GPT's domain scores next to a character n-gram model's, on the same split.

    python bench/domain_baselines.py RUN [n=1000] [threads=2] [orders=2,3,4,5,6,8] [temperature=...] [top_p=...]
                                         [prompt=...] [split=test]

RUN is a run folder (its last checkpoint) of a text-like data set with a `score()` (molecules,
chorales, code). Both models are scored on `n` samples that start where the GPT's samples start
(`model.sample_prompt`): the GPT's of the model's `sample_length` tokens at the model's own
temperature unless `temperature=` is given, the n-gram's as many characters as the GPT's hold on
average. The n-gram model (`genlab.baselines.NgramModel`) is fitted on the same training split;
its order is the one of `orders` with the lowest bits per character on the validation split (the
baseline's best shot). Scores are against `split` (test; choose sampling settings with split=val).
A third column scores real text of the other split cut the same way (the characters after each
place the prompt occurs): the ceiling. Prints one table; writes
`<RUN>/domain_baselines-<split>-T<temperature>-p<top_p>.json`.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
import time
from pathlib import Path

import torch

from genlab.baselines import NgramModel
from genlab.instantiate import instantiate
from genlab.sample import checkpoint_config, draw, load


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    run = Path(argv[0])
    n, threads = int(args.get("n", 1000)), int(args.get("threads", 2))
    orders = [int(o) for o in args.get("orders", "2,3,4,5,6,8").split(",")]
    torch.set_num_threads(threads)
    model, ckpt, _ = load(run, device="cpu")
    if "temperature" in args:
        model.hparams.temperature = float(args["temperature"])
    if "top_p" in args:
        model.hparams.top_p = float(args["top_p"])
    if "prompt" in args:  # escapes as in Python: prompt='\n|'
        model.hparams.sample_prompt = args["prompt"].encode().decode("unicode_escape")
    split = args.get("split", "test")
    datamodule = instantiate(checkpoint_config(ckpt)["data"], "data")
    datamodule.setup("fit")
    texts = datamodule.split_texts()
    train_text, val_text = "".join(texts["train"]), "".join(texts["val"])
    prompt, length = model.hparams.sample_prompt, model.hparams.sample_length

    began = time.perf_counter()
    gpt_samples = draw(model, n, seed=0, batch_size=250)
    gpt_seconds = time.perf_counter() - began
    gpt_scores = datamodule.score(gpt_samples, split=split)

    began = time.perf_counter()
    fitted = {order: NgramModel(order).fit(train_text) for order in orders}
    bpc = {order: ngram.bits_per_char(val_text) for order, ngram in fitted.items()}
    best = min(bpc, key=bpc.get)
    # As many characters as the GPT's samples hold on average (its sample_length counts tokens: BPE ones are longer).
    chars = round(sum(map(len, gpt_samples)) / len(gpt_samples))
    ngram_samples = fitted[best].sample(n, chars, prompt=prompt, seed=0)
    ngram_seconds = time.perf_counter() - began
    ngram_scores = datamodule.score(ngram_samples, split=split)
    # The ceiling: real text of the other split, cut like a sample (as many characters after each
    # place the prompt occurs, up to n of them): what a perfect model would score.
    real_text = "".join(texts["val" if split == "test" else "test"])
    starts = [match.end() for match in re.finditer(re.escape(prompt), real_text)]
    real_samples = [sample for i in starts if (sample := real_text[i : i + chars]).strip()][:n]
    real_scores = datamodule.score(real_samples, split=split) if real_samples else dict.fromkeys(gpt_scores, math.nan)

    with open(run / "metrics.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("val/bpc")]
    # val/bpc is bits per character; runs from before val/bpt was logged beside it logged bits per TOKEN
    # as val/bpc: per character that is times the validation split's tokens per character.
    val = datamodule.splits["val"]
    per_char = 1.0 if rows and rows[-1].get("val/bpt") else (val.stop - val.start) / len(val_text)
    metrics = {"val/bpc": float(rows[-1]["val/bpc"]) * per_char if rows else math.nan}

    settings = f"T={model.hparams.temperature} top_p={model.hparams.top_p}"
    print(f"run: {run}  n={n}  threads={threads}  prompt={prompt!r}  length={length} tokens, {chars} characters")
    print(f"GPT sampling: {settings}; scores against the {split} split")
    print(f"n-gram val bits/char by order: {', '.join(f'{o}: {b:.3f}' for o, b in bpc.items())} -> order {best}")
    held_out = f"(held-out: {len(real_samples)} real samples of the other split)"
    print(f"{'':16} {'GPT':>10} {'n-gram':>10} {'held-out':>10}   {held_out}")
    print(f"{'val bits/char':16} {metrics['val/bpc']:>10.3f} {bpc[best]:>10.3f}")
    for key in gpt_scores:
        print(f"{key:16} {gpt_scores[key]:>10.4f} {ngram_scores[key]:>10.4f} {real_scores[key]:>10.4f}")
    print(f"{'sampling s':16} {gpt_seconds:>10.1f} {ngram_seconds:>10.1f}   (n-gram: fitting all orders too)")
    report = {
        "n": n,
        "threads": threads,
        "temperature": model.hparams.temperature,
        "top_p": model.hparams.top_p,
        "split": split,
        "gpt": {"val/bpc": metrics["val/bpc"], **gpt_scores, "sampling_seconds": gpt_seconds},
        "ngram": {"order": best, "characters": chars, "val/bpc": bpc[best], **ngram_scores, "seconds": ngram_seconds},
        "held_out": {"n": len(real_samples), **real_scores},
        "ngram_bpc_by_order": bpc,
    }
    stem = f"domain_baselines-{split}-T{model.hparams.temperature}-p{model.hparams.top_p}"
    (run / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    examples = {"gpt": gpt_samples[:3], "ngram": ngram_samples[:3]}
    (run / f"{stem}_samples.json").write_text(json.dumps(examples, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
