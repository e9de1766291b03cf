"""The framework's default XLA flags: added when missing, never overriding the user's, and
left out of multi-device CPU processes (where YNNPACK rejects SPMD layouts)."""
from seedream_jax import xla_defaults

FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise"


def test_adds_missing_flag_after_user_flags():
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    flags = xla_defaults.apply(env)
    assert flags == "--xla_dump_to=/tmp/x " + FLAG == env["XLA_FLAGS"]
    assert xla_defaults.apply(env) == flags  # idempotent


def test_user_value_wins_opt_out_and_multi_device():
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    assert xla_defaults.apply(env) == "--xla_cpu_experimental_ynn_fusion_type=dot"
    env = {"SEEDREAM_XLA_DEFAULTS": "0"}
    assert xla_defaults.apply(env) == "" and "XLA_FLAGS" not in env
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_defaults.apply(env) == "--xla_force_host_platform_device_count=8"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    assert FLAG in xla_defaults.apply(env)
