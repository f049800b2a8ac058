"""Sampled code from a trained `experiment=gpt_code` run against the character n-gram baseline fitted on the
same training files, scored the same way (`CodeDataModule.score`: parse, complete, unique), plus each one's
bits per character on the validation files; and the BPE tokenizer's encoding speed on the corpus.

    python bench/code_vs_ngram.py logs/gpt/<run> [--n 1000] [--orders 3,4,5,6] [--threads 1]

The n-gram's order is the one with the lowest validation bits/char among `--orders` (a tuned baseline);
it samples as many characters as the GPT's `sample_length` (the GPT's are tokens: for a BPE run, longer).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch

from genlab.baselines import NgramModel
from genlab.instantiate import instantiate
from genlab.sample import draw, load
from genlab.tokenizers import BPETokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--orders", default="3,4,5,6")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bpe-vocab", type=int, default=2048, help="vocab_size of the BPE timed on the corpus")
    parser.add_argument("--prompt", default=None, help="instead of the run's data.prompt (and the model's)")
    parser.add_argument("--parts", default="gpt,ngram,bpe", help="what to measure (the n-gram fit takes minutes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, _, config = load(args.run, "cpu")
    if args.prompt is not None:
        config["data"]["prompt"] = model.hparams.sample_prompt = args.prompt
    datamodule = instantiate(config["data"])
    datamodule.setup("fit")
    texts = datamodule.split_texts()
    length = int(model.hparams.sample_length)

    parts = set(args.parts.split(","))
    if "gpt" in parts:
        start = time.perf_counter()
        samples = list(draw(model, args.n, seed=0))
        gpt_time = time.perf_counter() - start
        gpt = datamodule.score(samples)
        print(
            f"GPT ({datamodule.tokenizer_kind}, {datamodule.vocab_size} ids): {args.n} samples of {length} tokens "
            f"in {gpt_time:.0f} s: " + ", ".join(f"{k} {v:.3f}" for k, v in gpt.items())
        )
    val_chars = sum(len(t) for t in texts["val"])
    val = datamodule.splits["val"]
    print(
        f"  validation split: {val_chars} characters, {val.stop - val.start} tokens "
        f"({val_chars / (val.stop - val.start):.3f} characters per token)"
    )

    metrics = Path(args.run) / "metrics.csv"
    if metrics.is_file():  # the run's last val/loss (nats per token) in bits per CHARACTER
        with open(metrics, newline="") as file:
            loss = [float(row["val/loss"]) for row in csv.DictReader(file) if row.get("val/loss")][-1]
        tokens_per_char = (val.stop - val.start) / val_chars
        print(f"GPT: last val/loss {loss:.4f} nats/token = {loss / math.log(2) * tokens_per_char:.4f} bits/char")
    if "ngram" in parts:
        ngram_baseline(texts, [int(o) for o in args.orders.split(",")], args.n, length, datamodule)
    if "bpe" in parts:
        bpe_speed(texts, args.bpe_vocab)


def ngram_baseline(texts, orders, n, length, datamodule) -> None:
    start = time.perf_counter()
    full = NgramModel(max(orders)).fit(texts["train"])
    fit_time = time.perf_counter() - start
    best = None
    for order in orders:  # the lower orders are the first counts of the highest
        ngram = NgramModel(order)
        ngram.counts, ngram._stats, ngram.vocab = full.counts[:order], full._stats[:order], full.vocab
        bpc = ngram.bits_per_char(texts["val"])
        print(f"n-gram order {order}: validation {bpc:.3f} bits/char")
        if best is None or bpc < best[1]:
            best = (ngram, bpc)
    ngram, bpc = best
    start = time.perf_counter()
    baseline = datamodule.score(ngram.sample(n, length, prompt=datamodule.prompt, seed=0))
    print(
        f"n-gram order {ngram.order} (fit {fit_time:.0f} s, sampled {time.perf_counter() - start:.0f} s), "
        f"{n} samples of {length} characters: " + ", ".join(f"{k} {v:.3f}" for k, v in baseline.items())
    )


def bpe_speed(texts, vocab_size) -> None:
    corpus = [t for docs in texts.values() for t in docs]
    chars = sum(len(t) for t in corpus)
    tokenizer = BPETokenizer.train(texts["train"], vocab_size)
    start = time.perf_counter()
    ids = tokenizer.encode_many(corpus)
    seconds = time.perf_counter() - start
    tokens = sum(len(i) for i in ids)
    print(
        f"BPE {vocab_size}: encoded {chars / 1e6:.1f}M characters into {tokens / 1e6:.2f}M tokens in "
        f"{seconds:.1f} s: {tokens / seconds / 1e3:.0f}k tokens/s, {chars / seconds / 1e6:.2f}M characters/s "
        f"({chars / tokens:.2f} characters per token)"
    )


if __name__ == "__main__":
    main()
