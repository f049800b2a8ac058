"""A local web page to try trained models: `make demo RUN=<run>[,<run2>...]`, one tab per run.

    python -m genlab.demo logs/diffusion/<run>                         # or: genlab-demo ..., make demo RUN=...
    python -m genlab.demo logs/diffusion/<run>,logs/gpt/<run> port=7861

Each tab offers the controls its family's `sample()` / `generate()` takes (`controls`: N and seed
always; label for conditional image models; steps and guidance for diffusion and flow matching;
temperature for flows and GPTs; prompt and length for GPTs) and draws exactly what `make sample`
draws with the same options (one seeded stream, `genlab.sampling.draw`; the grid is `save_grid`'s).
Bad input (a label outside the classes, steps=0) is one line in the page, never a traceback.

The page is Gradio's (the convention of model demos). It is served from this machine only and
never calls out: analytics off, the default theme's fonts ship in the wheel, no share link.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image

from genlab.errors import ConfigError, GenlabError
from genlab.sample import generate_text, load, parse_args, save_grid
from genlab.sampling import BATCH_SIZE, accepts, class_labels, draw, is_conditional, num_classes

log = logging.getLogger(__name__)

OPTIONS: dict[str, tuple[type, str]] = {
    "run": (str, "run folders, .ckpt files or exported model folders, separated by commas (one tab each)"),
    "host": (str, "address to serve on (default 127.0.0.1: this machine only)"),
    "port": (int, "port (default 7860)"),
    "device": (str, "cpu, cuda, ... (default: cuda when available)"),
}
MAX_N = 256  # samples one click may ask for: the page waits for all of them
TEXT_SEPARATOR = "\n\n----------\n\n"  # as `make sample` writes texts
# The grid fills its box, scaled up with sharp pixels (8x8 digits) instead of a blur.
CSS = ".genlab-grid img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"
IN_TURN = "classes in turn"  # the label menu's first entry: label None, as `make sample` without LABEL


@dataclass(frozen=True)
class Control:
    """One input of a tab: the keyword it fills, its kind and default (None: left to the model)."""

    name: str  # n, seed, label, steps, guidance, temperature, prompt, length
    kind: type  # int, float or str
    default: Any
    info: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[int, ...] = ()  # a pick from these, or None: the default


@dataclass
class Entry:
    """A model served in one tab."""

    title: str
    model: L.LightningModule
    config: dict[str, Any]


def is_text(model: L.LightningModule) -> bool:
    """Text families generate from a prompt (the family contract: `generate(prompt, ...)`)."""
    return hasattr(model, "generate")


def controls(model: L.LightningModule, config: dict[str, Any]) -> list[Control]:
    """The inputs a model's family takes, read from its methods' signatures (as `make sample` checks
    them) with the defaults of its config."""
    hp = model.hparams
    if is_text(model):
        temperature = hp.get("temperature", 0.8)
        return [
            Control("n", int, 4, "number of texts", 1, MAX_N),
            Control("seed", int, 0, "same seed, same texts"),
            Control("prompt", str, hp.get("sample_prompt", "\n"), "the start of every text"),
            Control("temperature", float, temperature, "below 1: more conservative; 0: greedy", 0),
            Control("length", int, hp.get("sample_length", 256), "tokens to generate", 1),
        ]
    taken = accepts(model.sample)
    found = [
        Control("n", int, 16, "number of images", 1, MAX_N),
        Control("seed", int, 0, "same seed, same images (as make sample)"),
    ]
    if is_conditional(model):
        classes = num_classes(model, config)
        found.append(Control("label", int, None, "every sample of this class", choices=tuple(range(classes))))
    if "steps" in taken:
        found.append(Control("steps", int, default_steps(model), f"sampling steps ({hp.get('sampler')} sampler)"))
    if "guidance" in taken and is_conditional(model):  # guidance needs an unconditional branch
        found.append(Control("guidance", float, hp.get("guidance"), "classifier-free guidance; 1: none"))
    if "temperature" in taken:
        found.append(Control("temperature", float, hp.get("sample_temperature"), "latent scale; below 1: cleaner"))
    return found


def default_steps(model: L.LightningModule) -> int:
    """What `sample()` takes when given no steps: every timestep for DDPM, else `sample_steps`."""
    hp = model.hparams
    return int(model.process.num_timesteps if hp.get("sampler") == "ddpm" else hp.get("sample_steps"))


def generate(
    entry: Entry, values: dict[str, Any], progress: Callable[[int, int | None], None] | None = None
) -> tuple[Image.Image | None, str | None, str]:
    """What one click shows: (grid, texts, status line). Bad input gives (None, None, the one-line
    error); anything else unexpected too, with its traceback in the server's log only. `progress`
    hears (net calls so far, the number expected or None) while a denoiser samples."""
    model, start = entry.model, time.perf_counter()
    values = {k: v for k, v in values.items() if v is not None and v != ""}
    n, seed = int(values.pop("n", 16)), int(values.pop("seed", 0))
    try:
        if n < 1 or n > MAX_N:
            raise ConfigError(f"n: give 1..{MAX_N} samples, got {n}")
        if is_text(model):
            texts = generate_text(model, n, seed, **values)
            return None, TEXT_SEPARATOR.join(texts), _done(f"{n} texts", start, seed, values)
        label = values.pop("label", None)
        label = None if label in (None, IN_TURN) else int(label)
        labels = class_labels(n, num_classes(model, entry.config), label) if is_conditional(model) else None
        with counting_calls(model, progress, expected_calls(model, n, values.get("steps"))):
            samples = draw(model, n, seed, labels, BATCH_SIZE, **values)
        return grid_image(samples), None, _done(f"{n} images", start, seed, values | {"label": label})
    except GenlabError as err:
        return None, None, f"error: {err}"
    except Exception as err:  # a bug, not bad input: the page gets one line, the log the traceback
        log.exception("genlab demo: sampling failed")
        return None, None, f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def expected_calls(model: L.LightningModule, n: int, steps: int | None) -> int | None:
    """Net calls of a diffusion / flow matching draw (steps, Heun: 2 steps - 1, per batch), else None."""
    sampler = model.hparams.get("sampler")
    if sampler not in ("ddim", "ddpm", "euler", "heun"):
        return None
    steps = default_steps(model) if steps is None else int(steps)
    return (2 * steps - 1 if sampler == "heun" else steps) * -(-n // BATCH_SIZE)


@contextlib.contextmanager
def counting_calls(model: L.LightningModule, progress: Callable | None, total: int | None) -> Iterator[None]:
    """Reports each call of the net that samples (the EMA copy where the family keeps one)."""
    net = getattr(getattr(model, "ema", None), "shadow", None)
    net = getattr(model, "net", None) if net is None else net
    if progress is None or not isinstance(net, torch.nn.Module):
        yield
        return
    calls = 0

    def hook(*_: Any) -> None:
        nonlocal calls
        calls += 1
        progress(calls, total)

    handle = net.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def grid_image(samples: Any) -> Image.Image:
    """The grid `make sample` writes (`save_grid`: one file format, and whatever it adds to images)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "grid.png"
        save_grid(samples, path)
        with Image.open(path) as image:
            return image.copy()


def _done(what: str, start: float, seed: int, values: dict[str, Any]) -> str:
    options = "".join(f", {k} {v!r}" if k == "prompt" else f", {k} {v}" for k, v in values.items() if v is not None)
    return f"{what} in {time.perf_counter() - start:.1f} s (seed {seed}{options})"


def load_entries(runs: str, device: str | None = None) -> list[Entry]:
    """`a,b,...` (run folders, checkpoints, exported folders) loaded with genlab's loading code."""
    paths = [p.strip() for p in runs.split(",") if p.strip()]
    if not paths:
        raise ConfigError("run: give at least one run folder, .ckpt or exported model folder")
    entries = []
    for path in paths:
        model, _, config = load(path, device)
        family = type(model).__name__.removesuffix("Module").lower()
        entries.append(Entry(f"{family}: {Path(path).name}", model, config))
    return entries


def build_app(entries: list[Entry]):
    """The Gradio page: one tab per entry, its controls, a generate button, the grid or the texts and
    a status line. Element ids end in the tab's index (`n-0`, `generate-0`, `grid-0`, `status-0`)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio reads it: no calls out
    try:
        import gradio as gr
    except ImportError:
        raise ConfigError("the demo page needs gradio: pip install -e '.[demo]' (make demo installs it)") from None

    with gr.Blocks(title="genlab demo", analytics_enabled=False) as app:
        gr.Markdown("# genlab demo")
        with gr.Tabs():
            for i, entry in enumerate(entries):
                with gr.Tab(entry.title, id=i):
                    _tab(gr, i, entry)
    return app


def _tab(gr: Any, i: int, entry: Entry) -> None:
    found = controls(entry.model, entry.config)
    with gr.Row():
        with gr.Column(scale=1):
            inputs = [_input(gr, control, i) for control in found]
            button = gr.Button("Generate", variant="primary", elem_id=f"generate-{i}")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id=f"status-{i}")
            if is_text(entry.model):
                output = gr.Textbox(label="samples", lines=16, elem_id=f"text-{i}", interactive=False)
            else:
                output = gr.Image(
                    label="samples",
                    format="png",  # not webp: lossless pixels
                    type="pil",
                    height=480,
                    buttons=["download", "fullscreen"],
                    elem_id=f"grid-{i}",
                    elem_classes=["genlab-grid"],
                )

    def on_click(*values: Any, progress: Any = gr.Progress()) -> tuple[Any, str]:  # noqa: B008 (Gradio's way)
        progress(0, desc="sampling")  # the page shows it, with a timer, until the samples arrive

        def calls(done: int, total: int | None) -> None:
            progress((done, total), desc="sampling", unit="net calls")

        image, text, line = generate(entry, dict(zip((c.name for c in found), values, strict=True)), calls)
        return (text if is_text(entry.model) else image), line

    # One draw at a time across all tabs: a draw seeds torch's global RNG (fork_rng), which two threads
    # sampling at once would share, and a second draw would only slow the first on the same cores.
    button.click(on_click, inputs=inputs, outputs=[output, status], concurrency_limit=1, concurrency_id="draw")


def _input(gr: Any, control: Control, i: int) -> Any:
    elem_id = f"{control.name}-{i}"
    if control.choices:
        choices = [(IN_TURN, IN_TURN), *((str(c), str(c)) for c in control.choices)]
        return gr.Dropdown(choices, value=IN_TURN, label=control.name, info=control.info, elem_id=elem_id)
    if control.kind is str:
        return gr.Textbox(control.default, label=control.name, info=control.info, lines=2, elem_id=elem_id)
    return gr.Number(
        control.default,
        label=control.name,
        info=control.info,
        precision=0 if control.kind is int else None,
        minimum=control.minimum,
        maximum=control.maximum,
        step=1 if control.kind is int else 0.1,
        elem_id=elem_id,
    )


def launch(app: Any, host: str = "127.0.0.1", port: int | None = None, block: bool = True) -> str:
    """Serve the page; returns its address (with `block=False` the server runs in a thread:
    `app.close()` stops it)."""
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        share=False,
        ssr_mode=False,  # plain client-side page: no Node server
        prevent_thread_lock=not block,
        quiet=True,
        css=CSS,
        footer_links=[],
    )
    return url


def usage() -> str:
    options = "\n".join(f"  {k:<8} {help_}" for k, (_, help_) in OPTIONS.items())
    return f"usage: genlab-demo <run>[,<run2>...] [key=value ...]\n{__doc__.split(chr(10))[0]}\n{options}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or {"-h", "--help"} & set(argv):
        print(usage())
        return 0 if argv else 2
    try:
        args = parse_args(argv, OPTIONS, "genlab-demo")
        app = build_app(load_entries(args["run"], args.get("device")))
        host, port = args.get("host") or "127.0.0.1", args.get("port") or 7860
        print(f"genlab-demo: serving http://{host}:{port} (Ctrl-C stops it)", flush=True)
        launch(app, host, port)
    except KeyboardInterrupt:  # Ctrl-C while loading (once serving, Gradio closes the server itself)
        return 130
    except GenlabError as err:
        print(f"genlab-demo: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the port is taken, say
        print(f"genlab-demo: error: {str(err).splitlines()[0]} (choose another: port=...)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
