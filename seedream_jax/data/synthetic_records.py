"""The synthetic world written as a record dataset (ArrayRecord shards, ``records.py`` schema).

Record ``i`` is scene ``i`` of the world (``synthetic.scene_at(cfg, i)``), extended with draws
from its own stream ``default_rng([seed, i, 7])`` (so the base scene is unchanged):

- with ``style_probability`` a ``synthetic.Style`` (palette, lighting, texture, composition,
  each uniform over its values);
- the word's font redrawn over every face of its language including the extended ones
  (``fonts.fonts_for(lang, extended=True)``);
- a (height, width) from ``sizes`` (all of about ``image_size``**2 pixels; aspect-ratio buckets).

It is stored as a PNG (``image_format="png"``), with ``synthetic.all_captions`` (zh and en:
``short``, ``long``, ``text`` where there is a word, ``style`` where there is a style), the scene
spec in ``spec`` and ``meta = {"world_index": i}``. Writing resumes after an interruption
(``arrayrecord_io.ShardedWriter``; the world is deterministic, so the records already stored
are skipped) and the result is byte-identical to an uninterrupted write.
"""
import collections
import dataclasses
import io
from typing import Sequence, Tuple

import numpy as np
from PIL import Image

from seedream_jax.data import arrayrecord_io, fonts, records as records_lib, synthetic

_EXTENSION_STREAM = 7


@dataclasses.dataclass(frozen=True)
class RecordWorldConfig:
    """The extended world: ``world`` (scenes, base ``image_size``), ``style_probability``, and the
    (height, width) sizes records are drawn at, uniformly (default: square ``image_size``)."""
    world: synthetic.SyntheticWorldConfig
    style_probability: float = 0.5
    sizes: Tuple[Tuple[int, int], ...] = ()

    def record_sizes(self) -> Tuple[Tuple[int, int], ...]:
        s = self.world.image_size
        return tuple(tuple(int(v) for v in hw) for hw in self.sizes) or ((s, s),)


def extended_scene(cfg: RecordWorldConfig, index: int) -> Tuple[synthetic.Scene, Tuple[int, int]]:
    """(scene ``index`` with its style and font draws, (height, width) to render it at)."""
    scene = synthetic.scene_at(cfg.world, index)
    rng = np.random.default_rng([cfg.world.seed, index, _EXTENSION_STREAM])
    style_draws = rng.integers(0, 1 << 30, size=len(synthetic.STYLES))
    styled = rng.random() < cfg.style_probability
    font_draw, size_draw = rng.integers(0, 1 << 30, size=2)
    if styled:
        scene.style = synthetic.Style(**{name: list(table)[int(d) % len(table)]
                                         for (name, table), d in zip(synthetic.STYLES.items(), style_draws)})
    if scene.text is not None:
        faces = fonts.fonts_for(scene.text.language, extended=True)
        scene.text.font = faces[int(font_draw) % len(faces)]
    sizes = cfg.record_sizes()
    return scene, sizes[int(size_draw) % len(sizes)]


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of uint8 [H, W, 3] pixels."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def scene_record(scene: synthetic.Scene, size: Tuple[int, int], index: int) -> records_lib.Record:
    """The record of world scene ``index`` rendered at ``size`` = (height, width)."""
    image = synthetic.render_scene(scene, size)
    return records_lib.Record(key=f"synthetic/{index:08d}", image=png_bytes(image), image_format="png",
                              width=int(size[1]), height=int(size[0]), captions=synthetic.all_captions(scene),
                              source="synthetic", spec=scene.to_dict(), meta={"world_index": index})


def _identity(cfg: RecordWorldConfig) -> dict:
    return {"synthetic_format_version": synthetic.FORMAT_VERSION, "world": dataclasses.asdict(cfg.world),
            "style_probability": cfg.style_probability, "sizes": [list(s) for s in cfg.record_sizes()]}


def counts(specs: Sequence[dict], captions: Sequence[dict]) -> dict:
    """Summary of a written world: records, text words by language/orientation/font, styled
    records, and captions per (language, type)."""
    texts = [s["text"] for s in specs if s.get("text")]
    kinds = collections.Counter(f"{lang}/{kind}" for c in captions for lang, by in c.items() for kind in by)
    return {"records": len(specs),
            "text": {"total": len(texts), "zh": sum(t["language"] == "zh" for t in texts),
                     "en": sum(t["language"] == "en" for t in texts),
                     "vertical": sum(t["orientation"] == "vertical" for t in texts),
                     "fonts": dict(sorted(collections.Counter(t["font"] for t in texts).items()))},
            "styled": sum(1 for s in specs if s.get("style")),
            "captions": dict(sorted(kinds.items()))}


def write_record_world(cfg: RecordWorldConfig, out_dir: str, records_per_shard: int = 1024) -> dict:
    """Writes (or finishes writing) the world as an ArrayRecord dataset in ``out_dir``; returns
    its manifest (``summary`` holds ``counts``). A complete dataset of the same config is left as
    it is; one of another config raises ``arrayrecord_io.DatasetError``."""
    writer = arrayrecord_io.ShardedWriter(out_dir, records_per_shard, config=_identity(cfg))
    if writer.complete:
        return writer.close()
    specs, caps = [], []
    for i in range(cfg.world.num_images):
        scene, size = extended_scene(cfg, i)
        specs.append(scene.to_dict())
        caps.append(synthetic.all_captions(scene))
        if i >= writer.records_done:
            writer.write(records_lib.encode_record(scene_record(scene, size, i)))
    return writer.close({"counts": counts(specs, caps)})
