"""Stage kind ``data``: build the synthetic bilingual world in ``data.dir``.

A ``data`` stage with its own data section (``<stage>.data``) builds that section's world (its
size, seed and scene mix) in that section's ``dir`` instead: the single-object world of the layout
curriculum (``configs/tiny_layout.py``). One in the ArrayRecord format
(``<stage>.data = data_section(format='arrayrecord', path=...)``) writes the extended world there
instead (``data/synthetic_records.py``: PNG records with scene specs, a style drawn with
``<stage>.style_probability``, default 0.5): the styled data of the continued-training stage
(``configs/tiny_ct.py``).
"""

from seedream_jax.data import synthetic
from seedream_jax.stages.common import resolve


def world_config(cfg, data_cfg=None) -> "synthetic.SyntheticWorldConfig":
    """The synthetic world of ``cfg.data`` (or ``data_cfg``: size, seed) and its ``world`` (the scene mix)."""
    d = cfg.data if data_cfg is None else data_cfg
    return synthetic.SyntheticWorldConfig(num_images=int(d.num_images), image_size=int(d.image_size), seed=int(d.seed),
                                          **d.world.to_dict())


def run(cfg, stage_cfg, workdir: str, name: str = "data") -> dict:
    """Write the synthetic dataset unless an identical one is already there."""
    own = stage_cfg.get("data", None) if stage_cfg is not None else None
    if own is not None and str(own.format) == "arrayrecord":
        from seedream_jax.data import synthetic_records

        out_dir = resolve(workdir, own.path)
        world = synthetic_records.RecordWorldConfig(world_config(cfg, own),
                                                    style_probability=float(stage_cfg.get("style_probability", 0.5)))
        manifest = synthetic_records.write_record_world(world, out_dir)
        return {"data_dir": out_dir, "num_records": int(manifest.get("num_records", world.world.num_images)),
                "styled": manifest.get("summary", {}).get("counts", {}).get("styled")}
    data_cfg = cfg.data if own is None else own
    out_dir = resolve(workdir, data_cfg.dir)
    synthetic.write_dataset(world_config(cfg, data_cfg), out_dir)
    images, records = synthetic.load_dataset(out_dir)
    return {"data_dir": out_dir, "num_images": len(records), "image_shape": tuple(images.shape[1:])}
