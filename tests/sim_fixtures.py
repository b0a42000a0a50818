"""A small kernel configuration on the sim driver, for tests that boot their own kernel."""

from __future__ import annotations

from llmos.userland.system import SystemOptions, build_config


def sim_config(**overrides):
    """A small sim kernel: 64 blocks of 4 tokens unless overridden."""
    options = SystemOptions(kv_blocks=64, block_size=4, max_batch_tokens=64, max_seqs=8)
    services = overrides.pop("services", None)
    overrides.setdefault("device", "sim")
    for key, value in overrides.items():
        setattr(options, key, value)
    config = build_config(options)
    if services is not None:
        config.services = services
    return config
