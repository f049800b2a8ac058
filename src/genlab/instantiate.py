"""Build objects from config nodes, and check the nodes against the constructors before building.

A node with `_target_: pkg.module.Name` is built as `Name(**other_keys)` (nested nodes first);
`_partial_: true` gives a `functools.partial` instead, for objects the module finishes itself
(an optimizer needs the parameters). `_recursive_: false` passes the nested nodes as plain dicts:
a LightningModule given its nets' config (not the built nets) saves it as hyperparameters and builds
them itself, so `Module.load_from_checkpoint(path)` rebuilds it the Lightning way.

This is the small part of Hydra's `instantiate` we need, without Hydra's process-level state,
which breaks under DDP (lightning-hydra-template#393).
"""

from __future__ import annotations

import collections.abc
import difflib
import functools
import importlib
import inspect
import os
import types
import typing
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from genlab.errors import ConfigError, GenlabError

SPECIAL_KEYS = ("_target_", "_partial_", "_recursive_")


def locate(path: str) -> Any:
    """Import `a.b.C` (the longest importable module prefix, then attributes)."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        module = ".".join(parts[:split])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name is not None and not module.startswith(err.name):  # the module exists, a dependency is missing
                raise ConfigError(
                    f"_target_: '{path}' needs the package '{err.name}', which is not installed: "
                    f"pip install it into this environment (.venv/bin/pip install {err.name.split('.')[0]})"
                ) from None
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise ConfigError(f"_target_: cannot import '{path}'; check the spelling of the module and class")


# The config keys of the nodes a `_recursive_: false` object was given as plain dicts, by identity
# (id -> (key, node); the entry holds the node, so its id is not reused while it is here). A module
# that builds them itself (`instantiate(self.hparams.optimizer)`, often much later, in
# configure_optimizers) then gets errors naming `model.optimizer`, not just 'Adam'. Oldest entries
# go first past MAX_KEYED (a process that builds many models, such as the tests).
_KEY_OF: dict[int, tuple[str, Any]] = {}
MAX_KEYED = 10_000


def instantiate(node: Any, config_key: str = "", **kwargs: Any) -> Any:
    """Build the object a node describes; `kwargs` are runtime arguments (callbacks, loggers).

    A constructor that refuses its arguments (a library's ValueError, Lightning's "no GPU here")
    becomes one ConfigError naming `config_key` (the node's place in the config, e.g. "trainer") and
    the reason, instead of a traceback; GENLAB_TRACEBACK=1 lets the original error through. Without
    `config_key`, a node handed unbuilt to a `_recursive_: false` object is named by its own key.
    """
    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not config_key:
        key, kept = _KEY_OF.get(id(node), ("", None))
        config_key = key if kept is node else ""
    return _build(node, config_key, kwargs)


def _remember_keys(node: Any, where: str) -> None:
    """Record the key of `node` and of every dict or list inside it (see `_KEY_OF`)."""
    if not where or not isinstance(node, dict | list):
        return
    _KEY_OF.pop(id(node), None)  # re-inserted last: the newest entries are kept longest
    _KEY_OF[id(node)] = (where, node)
    while len(_KEY_OF) > MAX_KEYED:
        del _KEY_OF[next(iter(_KEY_OF))]
    children = node.items() if isinstance(node, dict) else ((f"[{i}]", v) for i, v in enumerate(node))
    for key, value in children:
        _remember_keys(value, f"{where}{key}" if key.startswith("[") else _join(where, key))


def _build(node: Any, where: str, extra: dict[str, Any] | None = None) -> Any:
    if isinstance(node, dict):
        if "_target_" not in node:
            return {key: _build(value, _join(where, key)) for key, value in node.items()}
        recursive = node.get("_recursive_", True)
        args = {
            key: _build(value, _join(where, key)) if recursive else value
            for key, value in node.items()
            if key not in SPECIAL_KEYS
        }
        if not recursive:
            for key, value in args.items():
                _remember_keys(value, _join(where, key))
        args.update(extra or {})
        target = locate(node["_target_"])
        name = node["_target_"].rsplit(".", 1)[-1]
        if node.get("_partial_"):  # finished later (an optimizer given its parameters): errors named then
            return functools.partial(_call, target, where or name, name, **args)
        return _call(target, where or name, name, **args)
    if isinstance(node, list):
        return [_build(value, f"{where}[{i}]") for i, value in enumerate(node)]
    return node


def _call(target: Any, where: str, name: str, /, *args: Any, **kwargs: Any) -> Any:
    """`target(*args, **kwargs)`, its failure a one-line ConfigError naming `where` (positional-only
    parameters: a constructor may itself take `name` or `target`)."""
    try:
        return target(*args, **kwargs)
    except GenlabError:
        raise
    except Exception as err:
        if os.environ.get("GENLAB_TRACEBACK"):
            raise
        reason = (str(err).strip().splitlines() or [""])[0][:300]
        raise ConfigError(
            f"'{where}': {name} could not be built: {type(err).__name__}: {reason} (GENLAB_TRACEBACK=1 shows where)"
        ) from err


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _signatures(target: Any) -> list[Any]:
    """The callables whose arguments `target` takes: for a class, its `__init__` and, while each
    passes `**kwargs` on, the `__init__`s up its MRO (so a subclass's forwarded keys are known)."""
    if not inspect.isclass(target):
        return [target]
    inits = []
    for cls in inspect.getmro(target):
        if "__init__" not in vars(cls) or cls is object:
            continue
        inits.append(cls.__init__)
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()):
            break
    return inits or [target]


def accepted_keys(target: Any) -> set[str] | None:
    """Argument names `target` accepts, or None when it takes arbitrary **kwargs (anything goes)."""
    names: set[str] = set()
    open_ended = False
    for fn in _signatures(target):
        params = inspect.signature(fn).parameters.values()
        open_ended = any(p.kind is p.VAR_KEYWORD for p in params)
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return None if open_ended else names - {"self"}


def suggest(word: str, choices: collections.abc.Iterable[str]) -> str:
    """' Did you mean: a, b?' for the nearest choices, or '' when none is near."""
    near = difflib.get_close_matches(word, sorted(choices), n=3, cutoff=0.6)
    return f" Did you mean: {', '.join(near)}?" if near else ""


def validate(node: Any, where: str = "") -> None:
    """Check every `_target_` node: importable, no unknown keys, simple types right, nothing missing.

    Runs on the resolved config before anything is built, so a typo fails in a second, not after
    the data has loaded.
    """
    if isinstance(node, list):
        for i, item in enumerate(node):
            validate(item, f"{where}[{i}]")
        return
    if not isinstance(node, dict):
        return
    if "_target_" in node:
        _validate_target_node(node, where)
    for key, value in node.items():
        validate(value, f"{where}.{key}" if where else key)


def _validate_target_node(node: dict[str, Any], where: str) -> None:
    target = locate(node["_target_"])
    name = node["_target_"].rsplit(".", 1)[-1]
    accepted = accepted_keys(target)
    hints = _type_hints(target)
    for key, value in node.items():
        if key in SPECIAL_KEYS:
            continue
        if accepted is not None and key not in accepted:
            raise ConfigError(
                f"unknown key '{where}.{key}': {name} takes no argument '{key}'."
                + suggest(key, accepted)
                + f" It takes: {', '.join(sorted(accepted))}."
            )
        hint = hints.get(key)
        is_object = isinstance(value, dict) and "_target_" in value
        if hint is not None and not is_object and not matches(value, hint):
            raise ConfigError(f"'{where}.{key}' = {value!r} has the wrong type: {name} expects {_show(hint)}.")
    if not node.get("_partial_"):
        params = inspect.signature(_signatures(target)[0]).parameters.values()
        required = {
            p.name
            for p in params
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
        }
        missing = sorted(required - set(node))
        if missing:
            raise ConfigError(f"'{where}' is missing {', '.join(repr(m) for m in missing)}, needed by {name}.")


def type_hint(target_path: str, key: str) -> Any:
    """The type hint of argument `key` of `target_path`'s constructor (None when it has none)."""
    return _type_hints(locate(target_path)).get(key)


def _type_hints(target: Any) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for fn in reversed(_signatures(target)):  # the subclass's hints win
        try:
            hints.update(typing.get_type_hints(fn))
        except Exception:  # unresolvable forward references in a library: skip type checks there
            continue
    return hints


def matches(value: Any, hint: Any) -> bool:
    """A deliberately small type check: scalars, None, unions, literals, lists, dicts."""
    origin = typing.get_origin(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    container = origin or hint
    if container in (list, tuple, collections.abc.Sequence):
        return isinstance(value, list | tuple)
    if container in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    return True  # classes, callables, paths...: the constructor will say


def _show(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
