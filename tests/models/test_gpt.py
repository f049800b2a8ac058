import itertools
import math
import os
import random
import re
import signal

import pytest
import torch
from conftest import read_metrics

import genlab
from genlab.config import compose
from genlab.data.text import TextDataModule
from genlab.errors import ConfigError, DataError
from genlab.faults import PREEMPTED_EXIT_CODE
from genlab.instantiate import instantiate
from genlab.models import gpt as gpt_module
from genlab.models.gpt import GPTModule, warmup_cosine
from genlab.tokenizers import CharTokenizer
from genlab.train import main, train

WORDS = ("the", "cat", "sat", "on", "a", "mat", "and", "saw", "one", "big", "red", "dog", "run", "to", "his", "old")


def write_corpus(path, seed: int = 0) -> None:
    """~30k characters of short sentences: learnable in a few hundred tiny steps, English-like."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(1500)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def tiny_run_argv(tmp_path, corpus, *extra: str) -> list[str]:
    return [
        "model=gpt",
        f"log_dir={tmp_path}",
        "run_name=tiny",
        f"data.path={corpus}",
        "data.block_size=32",
        "data.batch_size=16",
        "model.net.n_layer=2",
        "model.net.n_head=2",
        "model.net.n_embd=64",
        "model.warmup_steps=10",
        "model.optimizer.lr=3e-3",
        "model.sample_length=48",
        "trainer.max_steps=120",
        "trainer.limit_train_batches=40",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "callbacks.progress.refresh_rate=0",
        "trainer.enable_model_summary=false",
        "callbacks.samples.num_samples=4",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("gpt")
    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus)
    metrics = train(compose(tiny_run_argv(tmp_path, corpus)))
    return tmp_path, corpus, metrics


def test_a_short_run_learns(trained):
    tmp_path, corpus, metrics = trained
    vocab = len(set(corpus.read_text()))
    assert metrics["val/loss"] < 0.45 * math.log(vocab)  # uniform guessing: ln(vocab), ~3 nats
    assert metrics["val/bpc"] == pytest.approx(metrics["val/loss"] / math.log(2))
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-4)
    run = tmp_path / "gpt" / "tiny"
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert {"train/loss", "train/tokens_per_sec", "train/lr", "val/bpc", "val/ppl"} <= set(header.split(","))
    samples = (run / "samples" / "samples_final.txt").read_text()
    assert len(set(re.findall(r"[a-z]+", samples)) & set(WORDS)) >= 6  # the corpus's words, spelled right
    assert (run / "tokenizer.json").is_file()


def test_checkpoint_reloads_with_its_vocabulary(trained):
    tmp_path, corpus, _ = trained
    model = genlab.load_model(tmp_path / "gpt" / "tiny" / "checkpoints" / "last.ckpt")
    assert model.tokenizer == CharTokenizer("".join(sorted(set(corpus.read_text()))))
    torch.manual_seed(0)
    first = model.generate("the cat", max_new_tokens=40)
    torch.manual_seed(0)
    assert model.generate("the cat", max_new_tokens=40) == first  # fixed seed: the same text
    assert first.startswith("the cat") and len(first) == 47
    assert model.generate("the ", max_new_tokens=20, temperature=0).startswith("the ")
    with pytest.raises(DataError, match="not in the vocabulary"):
        model.generate("THE CAT €")
    assert len(model.sample(3)) == 3
    lightning_way = GPTModule.load_from_checkpoint(tmp_path / "gpt" / "tiny" / "checkpoints" / "last.ckpt")
    assert lightning_way.tokenizer == model.tokenizer
    for key, value in model.state_dict().items():
        assert torch.equal(lightning_way.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.top_k=0", "top_k must be null or at least 1"),
        ("model.top_p=0", r"top_p must be null or in \(0, 1\]"),
        ("model.temperature=-0.5", "temperature must be >= 0"),
    ],
)
def test_bad_sampling_settings_fail_at_construction(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        instantiate(compose(["model=gpt", override]).model)


def test_resuming_on_text_with_another_vocabulary_is_an_error(trained, tmp_path):
    run_dir, _, _ = trained
    other = tmp_path / "other.txt"
    other.write_text("Quite another text, with CAPITALS and digits 0123456789.\n" * 200, encoding="utf-8")
    cfg = compose(tiny_run_argv(tmp_path, other, f"ckpt_path={run_dir / 'gpt' / 'tiny' / 'checkpoints' / 'last.ckpt'}"))
    with pytest.raises(DataError, match="vocabulary differs"):
        train(cfg)


def test_a_resumed_run_ends_where_an_unbroken_run_ends(tmp_path):
    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus)
    argv = [
        *tiny_run_argv(tmp_path, corpus),
        "model.net.n_layer=1",
        "model.lr_decay_steps=60",
        "trainer.limit_train_batches=20",
        "callbacks.samples.num_samples=1",
    ]
    unbroken = train(compose([*argv, "run_name=unbroken", "trainer.max_steps=60"]))
    train(compose([*argv, "run_name=resumed", "trainer.max_steps=40"]))
    resumed = train(compose([*argv, "run_name=resumed", "ckpt_path=last", "trainer.max_steps=60"]))
    assert resumed["val/loss"] == pytest.approx(unbroken["val/loss"], rel=1e-5)  # the same batches, not a replay


def test_learning_rate_schedule():
    factors = [warmup_cosine(s, warmup_steps=10, decay_steps=100, min_ratio=0.1) for s in range(120)]
    assert factors[0] < 0.1 and factors[9] == pytest.approx(10 / 11)
    assert max(factors) == pytest.approx(1.0) and factors.index(max(factors)) == 10
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))  # cosine decay
    assert factors[100:] == [0.1] * 20


def test_weight_decay_only_on_matrices_and_built_from_the_data():
    cfg = compose(["model=gpt", "model.lr_decay_steps=100"])
    model = instantiate(cfg.model)
    assert model.net is None  # no vocabulary yet
    dm = TextDataModule(block_size=16)
    dm.setup()
    model.build(dm.tokenizer)
    assert model.net.vocab_size == dm.vocab_size and model.net.block_size == cfg.data.block_size
    optimizer = model.configure_optimizers()["optimizer"]
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.net.parameters()))


def test_a_signal_mid_epoch_then_resume_equals_an_unbroken_run(tmp_path, monkeypatch):
    """A real SIGUSR1 in the middle of an epoch: the resumed run draws the rest of that epoch's
    windows (not a fresh stream) and its dropout continues, so the weights match an unbroken run."""
    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus)
    argv = [*tiny_run_argv(tmp_path, corpus), "model.net.n_layer=1", "model.net.dropout=0.1"]
    argv += ["model.lr_decay_steps=30", "trainer.limit_train_batches=20", "trainer.max_steps=30"]
    argv += ["callbacks.samples.num_samples=1", "callbacks.progress.refresh_rate=0"]
    assert main([*argv, "run_name=unbroken"]) == 0

    original = GPTModule.training_step

    def preempted(self, batch, batch_idx):
        if self.global_step == 24:
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(GPTModule, "training_step", preempted)
    assert main([*argv, "run_name=stopped", "resume=auto"]) == PREEMPTED_EXIT_CODE
    monkeypatch.setattr(GPTModule, "training_step", original)
    assert main([*argv, "run_name=stopped", "resume=auto"]) == 0
    unbroken, resumed = (
        torch.load(tmp_path / "gpt" / name / "checkpoints" / "last.ckpt", weights_only=True)
        for name in ("unbroken", "stopped")
    )
    assert resumed["global_step"] == unbroken["global_step"] == 30
    for key, value in unbroken["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_logged_rate_and_throughput_are_the_training_steps_own(tmp_path, monkeypatch):
    """train/lr is the rate the logged step's update used (not the next one), and tokens/s leaves
    out validation time. A fake clock makes it exact: 10 ms per training step, 5 s per validation batch."""
    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus)
    clock = [0.0]
    monkeypatch.setattr(gpt_module.time, "perf_counter", lambda: clock[0])
    for hook, seconds in (("training_step", 0.01), ("validation_step", 5.0)):
        original = getattr(GPTModule, hook)

        def timed(self, batch, batch_idx, _original=original, _seconds=seconds):
            clock[0] += _seconds
            return _original(self, batch, batch_idx)

        monkeypatch.setattr(GPTModule, hook, timed)
    argv = tiny_run_argv(tmp_path, corpus, "model.net.n_layer=1", "model.warmup_steps=4", "model.lr_decay_steps=12")
    argv += ["trainer.max_steps=12", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2"]
    argv += ["trainer.log_every_n_steps=2", "callbacks.samples.every_n_epochs=100", "model.sample_length=4"]
    train(compose(argv))
    rows = read_metrics(tmp_path / "gpt" / "tiny")
    rates = [float(r["train/tokens_per_sec"]) for r in rows if r.get("train/tokens_per_sec")]
    assert len(rates) >= 4 and rates == pytest.approx([2 * 16 * 32 / 0.02] * len(rates))  # 2 steps of 16 x 32 tokens
    lr = {int(r["step"]): float(r["train/lr"]) for r in rows if r.get("train/lr")}
    assert len(lr) >= 4
    for step, value in lr.items():  # logged beside the loss of step `step`, whose update used schedule(step)
        assert value == pytest.approx(3e-3 * warmup_cosine(step, warmup_steps=4, decay_steps=12, min_ratio=0.1))

    train(compose([*argv, "run_name=silent", "trainer.log_every_n_steps=0", "trainer.max_steps=4"]))  # no logging


def test_generation_runs_in_eval_mode_and_restores_the_callers_mode() -> None:
    """GPTModule.load_from_checkpoint returns a module in train mode: generate() and sample() must
    not sample with dropout on (another distribution), and must leave the caller's mode as it was."""
    net = {"_target_": "genlab.nets.gpt.GPT", "_partial_": True, "block_size": 16, "n_layer": 2, "n_head": 2}
    model = GPTModule(
        net={**net, "n_embd": 32, "dropout": 0.5},
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True},
        sample_prompt="ab",
        sample_length=12,
        temperature=1.0,
    )
    model.build(CharTokenizer("abcdefgh\n"))

    def draw() -> tuple[str, list[str]]:
        torch.manual_seed(0)
        text = model.generate("ab", 12, temperature=1.0)
        torch.manual_seed(1)
        return text, model.sample(4)

    model.train()
    in_train_mode = draw()
    assert model.training and model.net.training  # restored
    model.eval()
    assert draw() == in_train_mode  # dropout was off in both
    assert not model.training and not model.net.training


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_bits_per_character_counts_the_decoded_characters_for_every_tokenizer(tokenizer, tmp_path) -> None:
    """val/bpc is total bits / characters of the decoded validation text, val/bpt bits per token:
    they differ by the characters per token under BPE and are equal for characters."""
    import lightning as L

    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus)
    dm = TextDataModule(path=str(corpus), tokenizer=tokenizer, vocab_size=320, block_size=16, batch_size=4)
    net = {"_target_": "genlab.nets.gpt.GPT", "_partial_": True, "block_size": 16, "n_layer": 1, "n_head": 1}
    model = GPTModule(net={**net, "n_embd": 16}, optimizer={"_target_": "torch.optim.AdamW", "_partial_": True})
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=3, default_root_dir=tmp_path,
    )  # fmt: skip
    (logged,) = trainer.validate(model, datamodule=dm, verbose=False)
    targets = [y for _, (_, y) in zip(range(3), dm.val_dataloader(), strict=False)]
    tokens = sum(y.numel() for y in targets)
    chars = sum(len(dm.tokenizer.decode(row)) for y in targets for row in y.tolist())  # ASCII: rows decode whole
    assert logged["val/bpt"] == pytest.approx(logged["val/loss"] / math.log(2))
    assert logged["val/bpc"] == pytest.approx(logged["val/bpt"] * tokens / chars, rel=1e-5)
    if tokenizer == "char":
        assert logged["val/bpc"] == pytest.approx(logged["val/bpt"])
    else:
        assert chars / tokens > 1.5  # BPE merges: several characters a token, so far fewer bits per character
