"""Every limit of the kernel in one place, each with what it bounds (xv6's param.h).

Values here are defaults; a ``KernelConfig`` may override the ones marked configurable.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1  # the "v" field of every message
MAX_FRAME_BYTES = 8 * 1024 * 1024  # largest msgpack payload accepted on any connection (E2BIG above)
MAX_MESSAGE_DEPTH = 16  # nesting of maps/lists in a message; deeper is EINVAL
MAX_STRING_BYTES = 1 * 1024 * 1024  # longest str/bin value msgpack may decode
MAX_ARRAY_LEN = 1 * 1024 * 1024  # longest list msgpack may decode
MAX_MAP_LEN = 4096  # most keys in one map msgpack may decode
MAX_OP_NAME = 64  # longest syscall name
MAX_PENDING_PER_CONNECTION = 256  # requests one connection may have in flight at once

MAX_PROCESSES = 4096  # live (non-reaped) processes in the whole kernel; EAGAIN above
MAX_PROMPT_TOKENS = 131072  # longest prompt accepted by spawn; E2BIG above
MAX_NEW_TOKENS = 65536  # largest max_tokens accepted by spawn; EINVAL above
MAX_FORK_CHILDREN = 64  # largest n accepted by fork
MAX_STOP_IDS = 64  # stop token ids one process may name
NICE_MIN, NICE_MAX = -20, 19  # like Unix: lower is more important
PID_INIT = 1  # the kernel's own process, parent of orphans; never killed

# Scheduler (configurable)
MAX_BATCH_TOKENS = 2048  # token budget of one step: decode tokens + prefill chunk tokens
MAX_SEQS = 64  # sequences in one step

# KV cache (configurable)
BLOCK_SIZE = 16  # tokens per KV block
NUM_KV_BLOCKS = 4096  # blocks in a device's pool
NUM_SWAP_BLOCKS = 4096  # blocks of host swap space per device
ADMISSION_RESERVE = 0.02  # fraction of a pool admissions leave free for running processes to grow into
MIN_RESIDENCY_STEPS = 64  # default steps a (re)admitted process runs before an arrival may evict it: no thrashing
SWAP_BANDWIDTH_BYTES_PER_S = 8e9  # host copy rate assumed when weighing swap against recompute
PREFILL_TOKENS_PER_S = 2000.0  # prefill rate assumed until the device has measured its own
DEFAULT_KV_BYTES_PER_TOKEN = 4096  # for drivers that do not report it (sim)

# Supervisor: a crashed server is restarted after BACKOFF_INITIAL_S, doubling up to BACKOFF_MAX_S;
# a server that stayed up RESTART_RESET_S since its last start gets the initial backoff again.
BACKOFF_INITIAL_S = 0.01
BACKOFF_MAX_S = 2.0
RESTART_RESET_S = 10.0
CALL_TIMEOUT_S = 60.0  # longest a kernel waits for a service or driver reply before ETIMEDOUT

# Scheduling policies (kernel/policies/); each policy's constructor takes these as defaults.
PRIORITY_AGING_S = 2.0  # priority: seconds of waiting that improve a process's nice by one level
RR_QUANTUM_TOKENS = 64  # rr: tokens served before a process goes behind the others
MLFQ_NUM_LEVELS = 8  # mlfq: queues; level i has quantum MLFQ_BASE_QUANTUM_TOKENS * 2**i, the last none
MLFQ_BASE_QUANTUM_TOKENS = 32  # mlfq: quantum of the top level, in (weighted) tokens served
MLFQ_PREFILL_WEIGHT = 1.0  # mlfq: cost of one prompt token relative to a generated one
MLFQ_STARVATION_S = 10.0  # mlfq: seconds unserved after which a process moves up one level
SRPT_AGING_TOKENS_PER_S = 10.0  # srpt: predicted tokens forgiven per second of waiting
VTC_INPUT_WEIGHT = 1.0  # vtc: counter charge per prompt token computed (w_in)
VTC_OUTPUT_WEIGHT = 2.0  # vtc: counter charge per generated token (w_out)
