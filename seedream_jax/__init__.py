"""seedream-jax: a JAX/Flax framework for a Seedream-2.0-class bilingual text-to-image system."""
from seedream_jax import log_filters as _log_filters
from seedream_jax import xla_defaults as _xla_defaults

_xla_defaults.apply()
_log_filters.install()
