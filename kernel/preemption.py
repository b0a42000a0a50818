"""Choosing how to preempt: swap the victim's KV out to host memory, or drop it and recompute.

With ``auto`` the kernel compares estimated costs (DESIGN.md, KV-cache memory manager):

    swap      = 2 * bytes of the victim's blocks / host copy bandwidth    (out now, in later)
    recompute = tokens to compute again / the device's measured prefill rate

A victim with a long context and a fast link swaps; a short one on a fast device recomputes.
"""

from __future__ import annotations

import enum

from . import params


class PreemptionMode(enum.Enum):
    AUTO = "auto"
    SWAP = "swap"
    RECOMPUTE = "recompute"


def choose_swap(
    mode: PreemptionMode,
    num_blocks: int,
    bytes_per_block: int,
    num_computed: int,
    tokens_per_s: float,
) -> bool:
    """True to swap the victim out, False to drop its blocks and recompute it later."""
    if mode is PreemptionMode.SWAP:
        return True
    if mode is PreemptionMode.RECOMPUTE or num_blocks == 0:
        return False
    swap_s = 2 * num_blocks * bytes_per_block / params.SWAP_BANDWIDTH_BYTES_PER_S
    recompute_s = num_computed / max(tokens_per_s, 1.0)
    return swap_s < recompute_s
