"""The framework's default XLA flags: added when missing, never overriding the user's."""
from seedream_jax import xla_defaults


def test_adds_missing_flag_after_user_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    flags = xla_defaults.apply(env)
    assert flags.startswith("--xla_force_host_platform_device_count=8 ")
    assert "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise" in env["XLA_FLAGS"]
    assert xla_defaults.apply(env) == flags  # idempotent


def test_user_value_wins_and_opt_out():
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    assert xla_defaults.apply(env) == "--xla_cpu_experimental_ynn_fusion_type=dot"
    env = {"SEEDREAM_XLA_DEFAULTS": "0"}
    assert xla_defaults.apply(env) == "" and "XLA_FLAGS" not in env


def test_applied_in_this_process():
    import os
    import seedream_jax  # noqa: F401
    assert "--xla_cpu_experimental_ynn_fusion_type" in os.environ["XLA_FLAGS"]
