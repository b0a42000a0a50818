"""The scheduling policies, one small module each, behind ``policy.Policy``.

Layout::

    priority.py   by nice, FCFS among equals; aging by time waiting
    rr.py         round robin with a quantum in tokens
    mlfq.py       skip-join multi-level feedback queue (FastServe); promotion after starvation
    srpt.py       shortest predicted remaining output first; hints and an online predictor; aging
    vtc.py        Virtual Token Counter: fair share of weighted tokens per tenant
    edf.py        earliest deadline first; no aging

``kernel/policy.py`` holds the protocol, the base class with the hooks' contract, FCFS and the
registry ``POLICIES`` that ``make_policy`` reads.
"""

from __future__ import annotations

# BasePolicy first. Whichever of policy.py and this package is imported first, policy.py
# defines BasePolicy before it imports the modules below, so there is no import cycle.
from ..policy import BasePolicy
from .edf import EDF
from .mlfq import MLFQ
from .priority import Priority
from .rr import RoundRobin
from .srpt import SRPT
from .vtc import VTC

__all__ = ["EDF", "MLFQ", "SRPT", "VTC", "BasePolicy", "Priority", "RoundRobin"]
