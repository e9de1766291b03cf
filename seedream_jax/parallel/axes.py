"""Logical axis names used on every parameter and activation.

Models name the axes of their parameters with these strings (through
``nn.with_logical_partitioning``); the mesh rules in the config map them onto the
``('data', 'fsdp', 'tensor')`` mesh. Models never mention mesh axes directly.
"""

# Parameter axes.
EMBED = "embed"            # model width (d_model / hidden_size)
MLP = "mlp"                # feed-forward hidden width
HEADS = "heads"            # flattened query heads x head_dim
KV = "kv"                  # flattened key/value heads x head_dim
VOCAB = "vocab"            # token vocabulary
NORM = "norm"              # scale / bias vectors of normalisation layers
CONV_IN = "conv_in"        # input channels of a convolution kernel
CONV_OUT = "conv_out"      # output channels of a convolution kernel
RELPOS = "relpos_buckets"  # T5 relative-position buckets
# Activation axes (used with nn.with_logical_constraint).
BATCH = "batch"
LENGTH = "length"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"

ALL_PARAM_AXES = (EMBED, MLP, HEADS, KV, VOCAB, NORM, CONV_IN, CONV_OUT, RELPOS)
