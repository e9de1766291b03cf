"""Stage kind ``ct``: continued training (CT) with a VMix-style aesthetic adapter.

Seedream 2.0 follows pretraining with continued training on a high-quality subset, where an
aesthetic adapter (VMix) learns style attributes. Here:

Model. The pipeline the ``mmdit`` source of ``ct.init_from`` recorded in its stage.json (by default
``<workdir>/pretrain``: components, time shift, tokenizer), with the MMDiT given the style adapter
(``MMDiTConfig.style_tag_sizes = style_tags.TAG_SIZES``, width ``ct.style_dim`` or, when 0, the
model section's ``model.mmdit.style_dim``; the adapter's
formula is in ``models/mmdit.py``): tags -> a tag vector mixed into the image tokens' attention
values through zero-initialised projections, so at step 0 the model equals its source for any tags.
The source has no adapter parameters: ``ct.keep_init`` (path regexes, by default the adapter's
``mmdit/.*style_.*``) names the parameters that may be missing in the source and keep their
(zero) initialisation (``checkpoint/init_from.with_keep_init``); any other missing parameter fails,
naming it. A source that already has the adapter (a CT stage) loads it.

Data. The stage's ``ct.data`` section (else ``cfg.data``), read through ``pretrain.image_data``:
each batch carries the records' style tags (``data/style_tags.py``: a record's ``spec.style``; zeros
for unstyled and real records), ``ct.style_tags`` ({attribute: value}) set over them when given (a
dataset of one style), each style attribute dropped with ``ct.tag_drop_prob`` (so the adapter also
learns the tag-free velocity) and all of a row's style tags with its caption (the CFG drop).
Quality filter (``ct.curation``, ``curated_data_cfg``): when any of its filters is on, the ArrayRecord
dataset is curated once into ``curation.output`` (resumable, ``data/curation``): resolution
(``min_side``), aspect (``max_aspect``), perceptual dedup (``phash`` Hamming threshold, -1 = off)
and a score threshold of any reward of the reward API (``reward``: a registered name, its model
loaded from ``reward_stage`` when given, ``rewards.load_stage``; records scoring below
``min_reward`` are dropped; prompts are the records' English short captions), and the stage trains
on the result.

Optimisation. Everything outside ``ct.frozen`` trains (by default the DiT, adapter included), the
adapter in its own parameter group with its own learning rate (``ct.optimizer.groups.adapter``;
``lr`` 0 in the main group and ``freeze`` give adapter-only training). The loss is pretrain's
flow matching (``pretrain.model_functions``).
"""
import copy
import dataclasses
import logging
from typing import Iterator, List

import numpy as np

from seedream_jax import rewards as rewards_api
from seedream_jax.checkpoint.init_from import parse_sources, with_keep_init
from seedream_jax.checkpoint.stage_dir import StageDescription, open_stage
from seedream_jax.data import curation
from seedream_jax.data import records as records_lib
from seedream_jax.data import style_tags as style_tags_lib
from seedream_jax.eval.grid import image_grid
from seedream_jax.models.partition import merge_params
from seedream_jax.sampling.generate import TextToImage
from seedream_jax.stages import common, pretrain
from seedream_jax.stages.sample import stage_pipeline
from seedream_jax.training import loop

ADAPTER_PATTERN = r"mmdit/.*style_.*"  # every adapter parameter's path (models/mmdit.py)


# ---------------------------------------------------------------------------------------- model

def source_stage(stage_cfg, workdir: str, kind: str = "ct"):
    """The opened stage the DiT starts from (``init_from['mmdit']``)."""
    sources = parse_sources(stage_cfg.init_from, workdir)
    if "mmdit" not in sources:
        raise ValueError(f"{kind}.init_from must name the stage the DiT starts from ('mmdit'), got {dict(sources)}")
    return open_stage(sources["mmdit"][0])


def with_style_adapter(pipe: TextToImage, style_dim: int) -> TextToImage:
    """``pipe`` with the MMDiT's style adapter (``style_tags.TAG_SIZES``, width ``style_dim``); a
    pipeline whose MMDiT already has one is returned as it is (its sizes checked)."""
    sizes = tuple(getattr(pipe.mmdit_cfg, "style_tag_sizes", ()))
    if sizes:
        style_tags_lib.check_sizes(sizes)
        return pipe
    mmdit_cfg = dataclasses.replace(pipe.mmdit_cfg, style_tag_sizes=style_tags_lib.TAG_SIZES, style_dim=int(style_dim))
    sh = pipe.shift
    return TextToImage(pipe.conditioner_cfg, mmdit_cfg, pipe.vae_cfg, pipe.tokenizer,
                       shift_base_tokens=int(sh["base_tokens"]), shift_max_tokens=int(sh["max_tokens"]),
                       shift_base=float(sh["base_shift"]), shift_max=float(sh["max_shift"]))


def adapter_dim(cfg, stage_cfg) -> int:
    """The adapter's width: ``<stage>.style_dim``, or when 0 the model section's ``model.mmdit.style_dim``."""
    return int(stage_cfg.style_dim) or int(cfg.model.mmdit.get("style_dim", 256))


def adapter_pipeline(cfg, stage_cfg, workdir: str, kind: str = "ct") -> TextToImage:
    """The source stage's pipeline with the style adapter (module docstring)."""
    pipe = stage_pipeline(source_stage(stage_cfg, workdir, kind), attention_impl=cfg.model.attention_impl)
    return with_style_adapter(pipe, adapter_dim(cfg, stage_cfg))


def init_sources(stage_cfg, workdir: str) -> dict:
    """``init_from`` parsed, with ``keep_init`` attached (``init_from.with_keep_init``)."""
    return with_keep_init(parse_sources(stage_cfg.init_from, workdir), tuple(stage_cfg.keep_init))


def fixed_tags(stage_cfg):
    """The config's tags (``<stage>.style_tags``, {attribute: value}) as a row [A], or None."""
    names = stage_cfg.get("style_tags", None)
    names = names.to_dict() if hasattr(names, "to_dict") else dict(names or {})
    return style_tags_lib.from_names(names) if names else None


# ----------------------------------------------------------------------------------- curation

class RewardFilter(curation.Filter):
    """Drops ``low_reward`` records: reward ``name`` (``rewards.score``) of the record's image
    (resized to ``image_size`` squared) and prompt (its English short caption, else its first) below
    ``min_reward``. Scores ``batch_size`` records per call; ``stats.extra`` holds the mean score."""
    name = "reward"

    def __init__(self, reward: str, min_reward: float, batch_size: int = 32, image_size: int = 64):
        super().__init__()
        self.reward, self.min_reward = reward, float(min_reward)
        self.batch_size, self.image_size = int(batch_size), int(image_size)
        self._sum = 0.0

    @staticmethod
    def prompt(record: records_lib.Record) -> str:
        caps = record.captions or {}
        if "en" in caps and "short" in caps["en"]:
            return caps["en"]["short"]
        return next((t for by in caps.values() for t in by.values()), "")

    def _flush(self, chunk: List[records_lib.Record]) -> Iterator[records_lib.Record]:
        images = curation.resized_batch(chunk, self.image_size)
        scores = np.asarray(rewards_api.score(self.reward, images, [self.prompt(r) for r in chunk]), np.float64)
        for record, score in zip(chunk, scores):
            self.stats.seen += 1
            self._sum += float(score)
            if score < self.min_reward:
                self.stats.drop(record.key, curation.Drop("low_reward", f"{self.reward} {score:.4f} < {self.min_reward}"))
                curation.release(record)
                continue
            self.stats.kept += 1
            yield record
        self.stats.extra = {"reward": self.reward, "min_reward": self.min_reward,
                            "mean_score": self._sum / max(self.stats.seen, 1)}

    def __call__(self, records):
        chunk = []
        for record in records:
            chunk.append(record)
            if len(chunk) == self.batch_size:
                yield from self._flush(chunk)
                chunk = []
        if chunk:
            yield from self._flush(chunk)


def curation_active(cur) -> bool:
    return bool(int(cur.min_side) > 0 or float(cur.max_aspect) > 0 or int(cur.phash) >= 0 or cur.reward)


def curation_filters(cur, workdir: str, image_size: int) -> list:
    """The filters ``cur`` (a ``<stage>.curation`` section) turns on, in order; loads the reward's
    model from ``cur.reward_stage`` when given."""
    filters = []
    if int(cur.min_side) > 0:
        filters.append(curation.ResolutionFilter(min_side=int(cur.min_side)))
    if float(cur.max_aspect) > 0:
        filters.append(curation.AspectFilter(max_aspect=float(cur.max_aspect)))
    if int(cur.phash) >= 0:
        filters.append(curation.PerceptualDedup("phash", int(cur.phash)))
    if cur.reward:
        if cur.reward_stage:
            rewards_api.load_stage(common.resolve(workdir, cur.reward_stage), name=str(cur.reward))
        rewards_api.get(str(cur.reward))  # an unknown name fails here, naming the registered ones
        filters.append(RewardFilter(str(cur.reward), float(cur.min_reward), int(cur.reward_batch),
                                    int(cur.reward_size) or int(image_size)))
    return filters


def curation_settings(cur) -> dict:
    """What identifies a curated dataset (a rerun with other settings refuses to mix them)."""
    return {k: cur[k] for k in ("min_side", "max_aspect", "phash", "reward", "reward_stage", "min_reward",
                                "reward_size")}


def curated_data_cfg(cfg, stage_cfg, workdir: str, kind: str = "ct"):
    """The stage's data section, pointed at its curated copy when ``<stage>.curation`` turns a filter
    on (written once into ``curation.output``, which a rerun reuses or resumes)."""
    data_cfg = common.stage_data_cfg(cfg, stage_cfg)
    cur = stage_cfg.curation
    if not curation_active(cur):
        return data_cfg
    if str(data_cfg.format) != "arrayrecord":
        raise ValueError(f"{kind}.curation filters a record dataset (data.format='arrayrecord', e.g. the styled world "
                         f"of a 'data' stage with an arrayrecord data section, or tools/make_synthetic.py --format "
                         f"arrayrecord), but the stage's data.format is {str(data_cfg.format)!r}")
    from seedream_jax.data import sources as data_sources

    in_path = data_sources.arrayrecord_path(data_cfg, workdir)
    out = common.resolve(workdir, str(cur.output))
    pipe = curation.Pipeline(curation_filters(cur, workdir, int(data_cfg.image_size)))
    report = curation.curate_dataset(in_path, out, pipe, config=curation_settings(cur), progress=False,
                                     log=logging.info)
    logging.info("%s: curated %s -> %s: kept %s of %s records", kind, in_path, out, report.get("kept"),
                 report.get("seen"))
    if not report.get("kept"):
        raise ValueError(f"{kind}.curation kept no record of {in_path} (report {out}/{curation.pipeline.REPORT})")
    curated = copy.deepcopy(data_cfg)
    curated.path, curated.cache_dir, curated.text_cache_dir = out, "", ""  # the source's caches do not match it
    return curated


def stage_with_data(stage_cfg, data_cfg):
    """A copy of ``stage_cfg`` whose own data section is ``data_cfg``."""
    out = copy.deepcopy(stage_cfg)
    out.data = data_cfg
    return out


# ---------------------------------------------------------------------------------------- task

def tag_grid(pipe: TextToImage, params, prompts, tags, *, height: int, width: int, num_steps: int, solver: str,
             guidance_scale: float, negative_scale: float = 0.0):
    """A captioned grid: each prompt without tags, then with ``tags`` ({attribute: value}), same seeds."""
    pics = list(pipe(params, prompts, height=height, width=width, num_steps=num_steps, solver=solver,
                     guidance_scale=guidance_scale))
    captions = [f"[no tags] {p}" for p in prompts]
    if tags:
        pics += list(pipe(params, prompts, height=height, width=width, num_steps=num_steps, solver=solver,
                          guidance_scale=guidance_scale, style_tags=tags, negative_scale=negative_scale))
        label = ", ".join(f"{k}={v}" for k, v in tags.items())
        captions += [f"[{label}] {p}" for p in prompts]
    return image_grid(pics, captions, columns=min(4, len(prompts)), scale=2)


def grid_evaluation(cfg, stage_cfg, pipe: TextToImage, height: int, width: int, negative_scale: float = 0.0):
    """The Task's ``evaluate``: a ``tag_grid`` of ``stage_cfg.eval_prompts`` without and with
    ``eval_style_tags`` from the EMA weights (None when there are no eval prompts)."""
    prompts = list(stage_cfg.eval_prompts)
    if not prompts:
        return None
    tags = stage_cfg.eval_style_tags.to_dict() if stage_cfg.eval_style_tags else {}

    def evaluate(state, step):
        p = merge_params(state.ema_params or state.params, state.frozen)
        return {"samples": tag_grid(pipe, p, prompts, tags, height=height, width=width,
                                    num_steps=int(stage_cfg.eval_steps), solver=str(cfg.sample.solver),
                                    guidance_scale=float(cfg.sample.guidance_scale), negative_scale=negative_scale)}

    return evaluate


def build_task(cfg, stage_cfg, workdir: str) -> loop.Task:
    """The CT Task (module docstring)."""
    s = stage_cfg
    pipe = adapter_pipeline(cfg, s, workdir)
    sources = init_sources(s, workdir)
    trained = stage_with_data(s, curated_data_cfg(cfg, s, workdir))
    data = pretrain.image_data(cfg, workdir, trained, pipe, sources["vae"][0] if "vae" in sources else None,
                               style_tags=True, fixed_tags=fixed_tags(s))
    height, width = data.image_size
    init_params, loss_fn = pretrain.model_functions(pipe, s, height, width)
    return loop.Task(name="ct", init_params=init_params, loss_fn=loss_fn, data=data, init_sources=sources,
                     evaluate=grid_evaluation(cfg, s, pipe, height, width))


def describe_adapter_stage(cfg, stage_cfg, workdir: str, kind: str) -> StageDescription:
    """The source stage's components with the adapter MMDiT, its time shift and tokenizer."""
    stage = source_stage(stage_cfg, workdir, kind)
    parts = {}
    for name in ("conditioner", "mmdit", "vae"):
        module, config = stage.component(name)
        if name == "mmdit" and not tuple(getattr(config, "style_tag_sizes", ())):
            config = dataclasses.replace(config, style_tag_sizes=style_tags_lib.TAG_SIZES,
                                         style_dim=adapter_dim(cfg, stage_cfg))
        parts[name] = (type(module), config)
    return StageDescription(components=parts, schedule=stage.meta["schedule"], tokenizer=stage.tokenizer())


def describe(cfg, stage_cfg, workdir: str, stage_dir: str, finished=None):
    """Conditioner and VAE as the source recorded them, the MMDiT with its style adapter."""
    return describe_adapter_stage(cfg, stage_cfg, workdir, "ct")
