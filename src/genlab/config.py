"""Compose a run's config from `configs/` with plain OmegaConf, and apply command-line overrides.

    configs/train.yaml              top-level keys and the default group choices
    configs/<group>/<choice>.yaml   model, data, trainer, logger, callbacks: placed under `<group>:`
    configs/experiment/<name>.yaml  a whole recipe: group choices plus values anywhere

Precedence, lowest first: train.yaml and the group files it names by default, a model file's
`_global_` section (family defaults for other groups, e.g. its trainer length or its best checkpoint's
metric), the group files chosen by the model file, the experiment or the command line (presets such
as trainer=debug beat family defaults), the experiment's values, the keys a trainer preset named on the
command line sets itself (trainer=debug stays short under any experiment), the command line. A model
file names its default data (`defaults: [data: digits]`), so `model=vae` alone is a complete run.

The command line takes `key=value` and `--key=value` (what `wandb agent` passes), with dotted keys
and YAML values (`null`/`None`, `true`/`True`, numbers, `[a, b]`). A key naming a group selects a
file (`data=mnist`, `logger=csv,wandb`). Every rank parses the same argv, so DDP ranks agree.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import re
import secrets
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, InterpolationResolutionError, MissingMandatoryValue

from genlab.errors import ConfigError
from genlab.instantiate import SPECIAL_KEYS, locate, matches, suggest, type_hint, validate

log = logging.getLogger(__name__)

GROUPS = ("model", "data", "trainer", "logger", "callbacks")
MULTI_CHOICE_GROUPS = ("logger", "callbacks")  # several files merge: logger=csv,wandb
EXPERIMENT = "experiment"


def _product(*factors: int) -> int:
    return math.prod(factors)


# `${mul:2,${model.latent_dim}}`: sizes that are products of other sizes.
OmegaConf.register_resolver("mul", _product, replace=True, annotation_validation="off")


def config_dir() -> Path:
    """`$GENLAB_CONFIG_DIR`, else the `configs/` of the checkout this package was imported from (it is
    installed editable): a clone that imports another checkout's package reads that checkout's configs."""
    return Path(os.environ.get("GENLAB_CONFIG_DIR", Path(__file__).resolve().parents[2] / "configs"))


NULL_SPELLINGS = ("None", "none", "null", "~", "")


def parse_value(text: str) -> Any:
    """A command-line value as YAML, plus the spellings W&B and Python use (`None`, `1e-3`).

    PyYAML follows YAML 1.1, whose surprises are undone: `2024-01-05` stays a string (not a date),
    `12:30` a string (not 750, base 60), `0123` is 123 (not 83, octal); `yes`/`no`/`on`/`off` stay
    strings. Keys whose value is a string keep the raw text anyway (see `set_key`).
    """
    if text in NULL_SPELLINGS:
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, bool):
        return value if text.lower() in ("true", "false") else text
    if isinstance(value, int):
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else text  # sexagesimal, octal, hex, 1_000
    if isinstance(value, datetime.date):
        return text
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 as a string
        except ValueError:
            return value
    return value


class Override(tuple):
    """A parsed `(key, value)` pair that remembers the text it was typed as."""

    text: str

    def __new__(cls, key: str, value: Any, text: str) -> Override:
        pair = super().__new__(cls, (key, value))
        pair.text = text
        return pair


def parse_argv(argv: list[str]) -> list[Override]:
    """`k=v`, `--k=v` and `--k v` into (key, value) pairs, in order."""
    pairs: list[Override] = []
    tokens = iter(argv)
    for token in tokens:
        key, eq, text = token.lstrip("-").partition("=")
        if not eq:
            if not token.startswith("--"):
                raise ConfigError(f"cannot read argument '{token}': write key=value, e.g. trainer.max_epochs=5")
            text = next(tokens, None)
            if text is None:
                raise ConfigError(f"'{token}' needs a value: {token}=VALUE")
        if not key:
            raise ConfigError(f"cannot read argument '{token}': the key is empty")
        pairs.append(Override(key, parse_value(text), text))
    return pairs


def choices_of(group: str, root: Path | None = None) -> list[str]:
    folder = (root or config_dir()) / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_yaml(path: Path) -> dict[str, Any]:
    content = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values")
    return content


def load_group_file(group: str, choice: str, root: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """A group file's body (with same-group bases merged under it) and its other-group selections.

    `defaults:` entries are either a file of the same group to start from (`- default`) or a
    selection for another group (`- data: digits`).
    """
    path = root / group / f"{choice}.yaml"
    if not path.is_file():
        available = choices_of(group, root)
        raise ConfigError(
            f"no config '{choice}' for {group} (looked for {path})."
            + suggest(str(choice), available)
            + f" Available: {', '.join(available) or 'none'}."
        )
    body = load_yaml(path)
    base: dict[str, Any] = {}
    selections: list[dict[str, str]] = []
    for entry in body.pop("defaults", []):
        if isinstance(entry, str):
            parent, parent_selections = load_group_file(group, entry, root)
            base = _merge(base, parent)
            selections += parent_selections
        else:
            selections.append(entry)
    return _merge(base, body), selections


def compose(argv: list[str] | None = None, root: Path | None = None) -> DictConfig:
    """The resolved, validated run config for a command line (see the module docstring)."""
    root = root or config_dir()
    cfg = load_yaml(root / "train.yaml")
    choices: dict[str, Any] = {}
    for entry in cfg.pop("defaults", []):
        choices.update(entry)

    pairs = parse_argv(argv or [])
    selected = {key: value for key, value in pairs if key in (*GROUPS, EXPERIMENT)}
    overrides = [pair for pair in pairs if pair[0] not in selected]

    experiment: dict[str, Any] = {}
    exp_choices: dict[str, Any] = {}
    exp_name = selected.get(EXPERIMENT, choices.get(EXPERIMENT))
    if exp_name is not None:
        experiment, exp_selections = load_group_file(EXPERIMENT, exp_name, root)
        for entry in exp_selections:
            exp_choices.update(entry)

    # Model first: its file names the defaults of the other groups.
    choices.update({k: v for k, v in exp_choices.items() if k == "model"})
    choices.update({k: v for k, v in selected.items() if k == "model"})
    if choices.get("model") is None:
        raise ConfigError(f"choose a model: model=<name>, one of {', '.join(choices_of('model', root))}")
    model, model_selections = load_group_file("model", choices["model"], root)
    family_globals = model.pop("_global_", {})
    picked = set()  # groups whose file someone chose: the model file, the experiment or the command line
    for entries in (model_selections, [exp_choices], [selected]):
        for entry in entries:
            choices.update(entry)
            picked.update(entry)
    choices[EXPERIMENT] = exp_name

    cfg["model"] = model
    cfg = _merge(cfg, {key: value for key, value in family_globals.items() if key not in GROUPS})
    for group in GROUPS[1:]:
        # A family's defaults beat train.yaml's default files (gpt_feedback keeps the best checkpoint on
        # val/reward) and lose to a file chosen on purpose (trainer=debug is short for every family).
        preset, family = _load_choices(group, choices.get(group), root), family_globals.get(group) or {}
        first, last = (family, preset) if group in picked else (preset, family)
        cfg[group] = _merge(_merge(cfg.get(group) or {}, first), last)
    cfg = _merge(cfg, experiment)
    if experiment and selected.get("trainer") is not None:
        # A trainer preset named on the command line beats the experiment's trainer values for the keys
        # the preset's file sets itself (not its base, default.yaml): `experiment=gpt_code trainer=debug`
        # is a few steps, not the experiment's 4,000; the experiment's other keys (accumulation...) stay.
        cfg["trainer"] = _merge(cfg["trainer"], _own_keys("trainer", selected["trainer"], root))
    cfg["groups"] = {group: choices.get(group) for group in (*GROUPS, EXPERIMENT)}

    for override in overrides:
        set_key(cfg, override[0], override[1], override.text)
    _drop_bodiless_nodes(cfg)
    if cfg.get("seed", 0) is None:
        cfg["seed"] = choose_seed()

    conf = OmegaConf.create(cfg)
    # run_dir is decided at start-up (genlab.run); a stand-in lets everything else resolve now.
    try:
        resolved = OmegaConf.to_container(_with_run_dir_stand_in(conf), resolve=True, throw_on_missing=True)
    except (InterpolationKeyError, InterpolationResolutionError) as err:
        raise ConfigError(_mismatch_message(err, choices)) from None
    except MissingMandatoryValue as err:
        raise ConfigError(f"'{err.full_key}' is required: add {err.full_key}=... to the command line") from None
    validate(resolved)
    check_module_builds_its_nets(resolved["model"], choices.get("model"), root)
    OmegaConf.set_struct(conf, True)
    return conf


def check_module_builds_its_nets(node: dict[str, Any], choice: Any, root: Path) -> None:
    """A LightningModule given object nodes (`net: {_target_: ...}`) must take them unbuilt
    (`_recursive_: false`): it saves them as hyperparameters and builds its nets itself, so
    `Module.load_from_checkpoint(path)` can rebuild it. Built for it, it would get `nn.Module`s, which
    `save_hyperparameters` cannot save; training and `load_model` still work, so nothing else would
    tell a fork's new family until a user's load_from_checkpoint failed."""
    import lightning as L

    if node.get("_recursive_", True) is False or not isinstance(node.get("_target_"), str):
        return
    target = locate(node["_target_"])
    if not (isinstance(target, type) and issubclass(target, L.LightningModule)):
        return
    nested = sorted(key for key, value in node.items() if _holds_object(value))
    if nested:
        raise ConfigError(
            f"model ({root / 'model' / f'{choice}.yaml'}): {target.__name__} is given object nodes "
            f"({', '.join('model.' + key for key in nested)}) but the file lacks `_recursive_: false`: add it, "
            "so the module gets the nodes, saves them as hyperparameters and builds its nets itself "
            "(Module.load_from_checkpoint needs that)"
        )


def _holds_object(value: Any) -> bool:
    if isinstance(value, dict):
        return "_target_" in value or any(_holds_object(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_object(v) for v in value)
    return False


SEED_ENV = "GENLAB_SEED"  # the seed the launching process chose for seed=null, read by the ranks it starts


def choose_seed() -> int:
    """`seed: null`: a fresh random seed, logged and saved with the run (config.yaml) so the run can
    be repeated. The DDP ranks Lightning starts take the launching process's choice (`train` exports
    it); processes started separately (torchrun, srun) could not agree, so they must be given one."""
    if os.environ.get(SEED_ENV):
        return int(os.environ[SEED_ENV])
    if int(os.environ.get("WORLD_SIZE") or 1) > 1:
        raise ConfigError(
            "seed=null: processes started separately (torchrun, srun) cannot agree on a random seed; "
            "give every process the same seed=<n>"
        )
    seed = secrets.randbelow(2**31)
    log.warning("seed=null: chose seed=%d (saved in the run's config.yaml; seed=%d repeats the run)", seed, seed)
    return seed


def _load_choices(group: str, choice: Any, root: Path) -> dict[str, Any]:
    if choice is None:
        if group == "data":
            raise ConfigError(f"choose data: data=<name>, one of {', '.join(choices_of('data', root))}")
        return {}
    if isinstance(choice, str) and group in MULTI_CHOICE_GROUPS:
        choice = [part.strip() for part in choice.split(",") if part.strip()]
    if isinstance(choice, list):
        if group not in MULTI_CHOICE_GROUPS:
            raise ConfigError(f"{group} takes one choice, got {choice}")
        merged: dict[str, Any] = {}
        for part in choice:
            merged = _merge(merged, load_group_file(group, part, root)[0])
        return merged
    return load_group_file(group, str(choice), root)[0]


def _own_keys(group: str, choice: Any, root: Path) -> dict[str, Any]:
    """What a group file sets itself, without the same-group files it starts from (`defaults:`)."""
    body = load_yaml(root / group / f"{choice}.yaml")
    body.pop("defaults", None)
    return body


def set_key(cfg: dict[str, Any], dotted: str, value: Any, text: str | None = None) -> None:
    """Set `a.b.c` in a plain dict config; the path must exist, or its parent must be an object
    node whose constructor takes the new key (checked by `validate`). `text`, the value as typed,
    is kept as it is for a key that holds a string, or a null that means a name or path
    (`run_name=0123` names folder "0123")."""
    if dotted.split(".")[0] == "groups":
        raise ConfigError("'groups' records the chosen files; select a file with model=..., data=... instead")
    node = cfg
    parts = dotted.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            _unknown_key(dotted, ".".join(parts[:depth]), node, part)
        node = child
    leaf = parts[-1]
    old = node.get(leaf)
    if isinstance(value, dict) and isinstance(old, dict) and not _other_class(old, value):
        # `model.net={n_layer: 2}` merges into the node, as OmegaConf and Hydra do: each key is set (and
        # checked) as if given alone. A new `_target_` replaces the node instead (another class).
        for key, item in value.items():
            set_key(cfg, f"{dotted}.{key}", item)
        return
    if leaf not in node:
        if "_target_" not in node:
            _unknown_key(dotted, ".".join(parts[:-1]), node, leaf)
        node[leaf] = value
        return
    if text is not None and text not in NULL_SPELLINGS and _holds_text(node, leaf):
        value = text
    node[leaf] = _typed_like(dotted, node[leaf], value, checked_later="_target_" in node)


def _holds_text(node: dict[str, Any], leaf: str) -> bool:
    """Does `node[leaf]` take free text? A string value does; a null does at the top level (run_name,
    ckpt_path...) and where the constructor's type hint allows a string but no number."""
    old = node[leaf]
    if isinstance(old, str):
        return "${" not in old
    if old is not None:
        return False
    if "_target_" not in node:
        return True
    hint = type_hint(node["_target_"], leaf)
    if hint is None:
        return False
    return matches("x", hint) and not matches(0.5, hint) and not matches(1, hint)


def _drop_bodiless_nodes(cfg: dict[str, Any]) -> None:
    """An experiment may tune a callback or logger (`callbacks.samples.every_n_epochs: 5`) that the
    chosen group file leaves out (`callbacks=none`): what remains has no `_target_` and cannot be
    built, so it is dropped, with a warning naming it."""
    for group in MULTI_CHOICE_GROUPS:
        for name, node in list((cfg.get(group) or {}).items()):
            if isinstance(node, dict) and "_target_" not in node:
                del cfg[group][name]
                log.warning(
                    "%s.%s: ignored (%s), since %s=%s has no '%s' to apply it to",
                    group,
                    name,
                    ", ".join(f"{k}={v}" for k, v in node.items()),
                    group,
                    cfg.get("groups", {}).get(group) or "none",
                    name,
                )


def _unknown_key(dotted: str, parent: str, node: Any, part: str) -> None:
    keys = [k for k in node if k not in SPECIAL_KEYS] if isinstance(node, dict) else []
    where = f"under '{parent}'" if parent else "at the top level"
    raise ConfigError(
        f"unknown key '{dotted}': there is no '{part}' {where}."
        + suggest(part, keys)
        + (f" Valid keys there: {', '.join(sorted(keys))}." if keys else "")
    )


def _typed_like(dotted: str, old: Any, new: Any, checked_later: bool) -> Any:
    """Keep plain keys' types (an object's arguments are checked against its signature instead)."""
    if checked_later or old is None or new is None or "${" in str(old):
        return new
    if isinstance(old, bool) != isinstance(new, bool):
        raise ConfigError(f"'{dotted}' must be true or false, got {new!r}")
    if isinstance(old, str) and isinstance(new, int | float):
        return str(new)
    if isinstance(old, float) and isinstance(new, int):
        return float(new)
    if isinstance(old, int | float) and not isinstance(new, int | float):
        raise ConfigError(f"'{dotted}' must be a number, got {new!r}")
    if isinstance(old, dict | list) and not isinstance(new, type(old)):
        raise ConfigError(f"'{dotted}' must be a {type(old).__name__}, got {new!r}")
    return new


def _mismatch_message(err: Exception, choices: dict[str, Any]) -> str:
    key = getattr(err, "full_key", "?")
    text = str(err).splitlines()[0]
    missing = text.split("'")[1] if "'" in text else text
    if missing.startswith("data."):
        return (
            f"model '{choices.get('model')}' does not fit data '{choices.get('data')}': {key} needs "
            f"'{missing}', which that data does not provide. Pick data made for this model "
            f"(its default is in configs/model/{choices.get('model')}.yaml)."
        )
    return f"cannot resolve '{key}': {text}"


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of plain dicts; `update` wins. A `_target_` change replaces the whole node
    (different class, different arguments)."""
    out = dict(base)
    for key, value in update.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and not _other_class(old, value):
            out[key] = _merge(old, value)
        else:
            out[key] = value
    return out


def _with_run_dir_stand_in(cfg: DictConfig) -> DictConfig:
    copy = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    if copy.get("run_dir") is None:
        copy.run_dir = "<run_dir>"
    return copy


def _other_class(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return "_target_" in old and "_target_" in new and old["_target_"] != new["_target_"]


def to_yaml(cfg: DictConfig, root: Path | None = None) -> str:
    """The resolved config as YAML (`<run_dir>` stands for the folder a run will pick), under a comment
    naming the config folder it was composed from (`root`, default `config_dir()`)."""
    header = f"# composed from {root or config_dir()} (GENLAB_CONFIG_DIR, else the package's checkout)\n"
    return header + OmegaConf.to_yaml(_with_run_dir_stand_in(cfg), resolve=True)
