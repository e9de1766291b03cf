"""Import HF transformers / diffusers weights into a stage directory that training can start from.

Reads safetensors only (a folder with only .bin / .pt pickles is refused: unpickling can run
code), accepts fp32, bf16 and fp16 weights (stored as float32), and checks every key and shape:
a mismatch lists the missing, unexpected and mis-shaped keys. The result is an Orbax checkpoint
in the layout of a trained stage (``<out>/checkpoints/0/`` and ``<out>/stage.json`` recording the
imported components' configs), with the parameters at their pretrain-stage paths:

    --text-encoder DIR  HF Qwen2Model / Qwen2ForCausalLM  -> conditioner/text_encoder/llm
    --byt5 DIR          HF T5EncoderModel (or T5 with decoder, ignored) -> conditioner/byt5
    --conditioner DIR   an exported conditioner/ folder    -> conditioner/{glyph_mapper, context_proj,
                                                              text_encoder/adapter}
    --transformer DIR   diffusers FluxTransformer2DModel   -> mmdit
    --vae DIR           diffusers AutoencoderKL            -> vae
    --pipeline DIR      a whole export of tools/export_weights.py (all of the above)

A stage then starts from it through its config, e.g. in configs/<name>.py:

    c.pretrain.init_from['conditioner/text_encoder/llm'] = '/path/to/out'
    c.pretrain.init_from['vae'] = '/path/to/out'

With --config (or --size), the imported shapes are checked against that run config first, so
a mismatch is reported here rather than when the stage starts.

Examples:
    python tools/import_weights.py --text-encoder ~/models/Qwen2.5-0.5B --out imports/qwen --size small
    python tools/import_weights.py --pipeline exports/tiny --out imports/tiny --config configs/tiny.py

Imports ``seedream_jax`` from the checkout this file is in, whatever copy is installed or on
PYTHONPATH (``tools/_bootstrap.py``), so it can be run from any directory.
"""
import _bootstrap  # noqa: F401  (first: this checkout's seedream_jax)
import argparse
import os
import sys

from seedream_jax import config_lib
from seedream_jax.checkpoint.stage_dir import StageDescription, write_stage_meta
from seedream_jax.interop import convert, orbax_io, pipeline
from seedream_jax.models.conditioner import Conditioner
from seedream_jax.models.mmdit import MMDiT
from seedream_jax.models.vae import AutoencoderKL

# imported config name -> (component in stage.json, its module)
_STAGE_COMPONENTS = {"conditioner": ("conditioner", Conditioner), "transformer": ("mmdit", MMDiT),
                     "vae": ("vae", AutoencoderKL)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="stage directory to create (must not hold checkpoints yet)")
    p.add_argument("--pipeline", help="a whole-pipeline export folder (seedream_pipeline.json)")
    for name, what in (("text-encoder", "HF Qwen2 folder"), ("byt5", "HF T5 encoder folder"),
                       ("conditioner", "exported conditioner/ folder (needs the LLM and ByT5 configs)"),
                       ("transformer", "diffusers Flux transformer folder"), ("vae", "diffusers AutoencoderKL folder")):
        p.add_argument(f"--{name}", help=what)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--config", help="check the imported shapes against this run config (configs/<name>.py)")
    which.add_argument("--size", choices=["tiny", "small", "full"], help="check against a size preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--step", type=int, default=0, help="checkpoint step number to write (default 0)")
    return p


def _expected_configs(cfg):
    conditioner_cfg, mmdit_cfg, vae_cfg = config_lib.build_model_configs(cfg.model)
    return {"text_encoder": conditioner_cfg.text_encoder.llm, "byt5": conditioner_cfg.byt5,
            "conditioner": conditioner_cfg, "transformer": mmdit_cfg, "vae": vae_cfg}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    folders = {"text_encoder": args.text_encoder, "byt5": args.byt5, "conditioner": args.conditioner,
               "transformer": args.transformer, "vae": args.vae}
    if not args.pipeline and not any(folders.values()):
        print("error: nothing to import: pass --pipeline or component folders (see --help)", file=sys.stderr)
        return 2
    if args.pipeline and any(folders.values()):
        print("error: pass either --pipeline or component folders, not both", file=sys.stderr)
        return 2
    try:
        cfg = (config_lib.load_run_config(args.config, args.size, args.set)
               if (args.config or args.size) else None)
        expected = _expected_configs(cfg) if cfg is not None else {}
        if args.pipeline:
            cond, mmdit, vae, params = pipeline.import_pipeline(args.pipeline)
            configs = {"text_encoder": cond.text_encoder.llm, "byt5": cond.byt5, "conditioner": cond,
                       "transformer": mmdit, "vae": vae}
            sources = {"pipeline": os.path.abspath(args.pipeline)}
        else:
            mmdit_overrides = None
            if "transformer" in expected:
                m = expected["transformer"]
                mmdit_overrides = dict(rope_rule=m.rope_rule, rope_base_grid=m.rope_base_grid, text_ids=m.text_ids,
                                       patch_size=m.patch_size)
            configs, params = pipeline.import_components(
                **folders, conditioner_cfg=expected.get("conditioner") if args.conditioner else None,
                mmdit_overrides=mmdit_overrides)
            sources = {k: os.path.abspath(v) for k, v in folders.items() if v}
        problems = []
        for name, imported in configs.items():
            if name in expected and imported is not None and expected[name] is not None:
                ignore = ("dtype", "attention_impl", "remat_policy") + (
                    ("scaling_factor", "shift_factor") if name == "vae" else ())  # fitted per VAE
                problems += [f"{name}.{d}" for d in pipeline.config_differences(imported, expected[name], ignore)]
        if problems:
            raise ValueError("the imported weights do not fit the run config:\n  " + "\n  ".join(problems))
        step_dir = orbax_io.write_params_checkpoint(args.out, params, step=args.step,
                                                    info={"imported_from": sources})
        write_stage_meta(args.out, "import", "import", StageDescription(components={
            name: (module_class, configs[key]) for key, (name, module_class) in _STAGE_COMPONENTS.items()
            if configs.get(key) is not None}))
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(int(getattr(v, "size", 0)) for v in convert.flatten(params).values())
    print(f"imported {n / 1e6:.2f}M parameters into {step_dir}")
    paths = {"text_encoder": "conditioner/text_encoder/llm", "byt5": "conditioner/byt5",
             "conditioner": "conditioner/{glyph_mapper,context_proj,text_encoder/adapter}", "transformer": "mmdit",
             "vae": "vae"}
    for name in configs:
        if configs[name] is not None:
            print(f"  {name:13s} -> {paths[name]}")
    print(f"start a stage from it with init_from entries such as "
          f"c.pretrain.init_from['conditioner/text_encoder/llm'] = {os.path.abspath(args.out)!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
