"""seedream-jax: a JAX/Flax framework for a Seedream-2.0-class bilingual text-to-image system."""
