"""Stages by kind: every entry of ``cfg.stages`` is a name, its config section ``cfg.<name>``
names the kind (``cfg.<name>.kind``, defaulting to the name), and the kind is a module.

A kind is either a module of this package (``seedream_jax/stages/<kind>.py``: data, tokenizer,
vae, pretrain, reward, aesthetic, glyph_align, rlhf, ct, sft, pe_sft, pe_pref, refiner, sample,
eval; ``builtin_kinds()``) or a dotted module path (``my_project.stages.distill``), so a
user's stage runs without an edit to this package. One kind can run under several names: ``sft`` is
``kind='pretrain'`` with its own data; ``rlhf_refl`` and ``rlhf_grpo`` two runs of one kind.

A kind module exposes either
  ``build_task(cfg, stage_cfg, workdir) -> training.loop.Task`` (a training stage: the shared
  runner, ``stages/runner.py``, runs the loop, writes ``stage.json`` and the summary; optional
  ``describe`` says what the checkpoint holds and optional ``finish`` runs after training), or
  ``run(cfg, stage_cfg, workdir, name) -> dict`` (any other stage; returns its summary).
"""
import importlib
import pkgutil
from types import ModuleType

from ml_collections import ConfigDict

# modules of this package that are not stage kinds
_HELPERS = {"common", "plan", "ranked_samples", "record_data", "runner"}


def builtin_kinds() -> list:
    """The stage kinds of this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _HELPERS)


def stage_section(cfg: ConfigDict, name: str):
    """The config section of stage ``name`` (an empty ConfigDict when the config has none)."""
    section = cfg.get(name)
    return section if isinstance(section, ConfigDict) else ConfigDict()


def stage_kind(cfg: ConfigDict, name: str) -> str:
    """``cfg.<name>.kind`` if set, else ``name``."""
    return str(stage_section(cfg, name).get("kind", name))


def load_kind(kind: str) -> ModuleType:
    """The module implementing ``kind``; an unknown kind fails naming the known ones."""
    module_name = kind if "." in kind else f"{__name__}.{kind}"
    if "." not in kind and kind not in builtin_kinds():
        raise ValueError(f"unknown stage kind {kind!r}; known kinds: {builtin_kinds()} "
                         "(or a dotted module path such as 'my_package.my_stage')")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"stage kind {kind!r}: cannot import module {module_name!r} ({e}); known kinds: "
                         f"{builtin_kinds()}") from e
    if not (hasattr(module, "build_task") or hasattr(module, "run")):
        raise ValueError(f"stage kind {kind!r}: module {module_name} defines neither build_task nor run")
    return module
