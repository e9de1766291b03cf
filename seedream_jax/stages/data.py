"""Stage kind ``data``: build the synthetic bilingual world in ``data.dir``."""

from seedream_jax.data import synthetic
from seedream_jax.stages.common import resolve


def world_config(cfg) -> "synthetic.SyntheticWorldConfig":
    """The synthetic world of ``cfg.data`` (size, seed) and ``cfg.data.world`` (the scene mix)."""
    d = cfg.data
    return synthetic.SyntheticWorldConfig(num_images=int(d.num_images), image_size=int(d.image_size), seed=int(d.seed),
                                          **d.world.to_dict())


def run(cfg, stage_cfg, workdir: str, name: str = "data") -> dict:
    """Write the synthetic dataset unless an identical one is already there."""
    out_dir = resolve(workdir, cfg.data.dir)
    synthetic.write_dataset(world_config(cfg), out_dir)
    images, records = synthetic.load_dataset(out_dir)
    return {"data_dir": out_dir, "num_images": len(records), "image_shape": tuple(images.shape[1:])}
