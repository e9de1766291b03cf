"""Model components as data: each config class <-> JSON, each component name -> its Flax module.

A stage directory's ``stage.json`` describes its components with ``describe`` and a reader
rebuilds them with ``build`` (``checkpoint/stage_dir.py``), so sampling, eval and export never
depend on what ``cfg.model`` says today.
"""
import dataclasses
import importlib
import typing
from typing import Any, Dict, Tuple


def config_to_dict(config) -> Dict[str, Any]:
    """A (nested) frozen config dataclass as a JSON-able dict; tuples become lists."""
    return dataclasses.asdict(config)


def _qualname(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _import(qualname: str):
    module, _, name = qualname.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"cannot import {qualname!r} named in a stage description: {e}") from e


def _from_value(hint, value):
    """``value`` (from JSON) as an instance of the type ``hint``: dataclasses and tuples rebuilt."""
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        hint = args[0]
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value)
    if typing.get_origin(hint) is tuple or hint is tuple:
        return tuple(value)
    return value


def config_from_dict(config_class, data: Dict[str, Any]):
    """Inverse of ``config_to_dict`` for ``config_class``; unknown keys fail naming them."""
    hints = typing.get_type_hints(config_class)
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{config_class.__name__}: unknown field(s) {unknown} in a stage description")
    return config_class(**{k: _from_value(hints[k], v) for k, v in data.items()})


def describe(module_class, config) -> Dict[str, Any]:
    """{'class', 'config_class', 'config'}: what ``build`` needs to recreate the component."""
    return {"class": _qualname(module_class), "config_class": _qualname(type(config)),
            "config": config_to_dict(config)}


def build(description: Dict[str, Any], **overrides) -> Tuple[Any, Any]:
    """(Flax module, config) from a ``describe`` entry. ``overrides`` replace config fields that
    belong to the machine reading it rather than to the weights (``attention_impl``, ``dtype``);
    None values are ignored."""
    config = config_from_dict(_import(description["config_class"]), description["config"])
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        config = dataclasses.replace(config, **overrides)
    return _import(description["class"])(config), config
