"""Scheduling policies, unit by unit: rank() on hand-built processes, exact orders.

Stateful policies are driven the way the planner drives them (``policy.py``'s contract):
``serve_step`` ranks the runnable processes, takes them in rank order under a token budget and
a sequence cap, calls ``on_step`` before recording progress, then records it and calls
``on_exit`` for processes that reached ``max_tokens``. No kernel, no clock: ``now`` is passed.
"""

from __future__ import annotations

import pytest

from llmos.kernel.batch import SamplingParams
from llmos.kernel.policies import EDF, MLFQ, SRPT, VTC, Priority, RoundRobin
from llmos.kernel.policy import FCFS, POLICIES, BasePolicy, make_policy, split_served
from llmos.kernel.process import ExitReason, ExitStatus, Process, ProcState

TOKEN = 7  # what every simulated step samples


def make_proc(pid: int, *, created_at: float = 0.0, tenant: str = "alice", nice: int = 0,
              deadline: float | None = None, prompt_len: int = 4, max_tokens: int = 100) -> Process:
    return Process(pid=pid, ppid=1, session=1, uid=1000, tenant=tenant, model="tiny", device="sim",
                   prompt_ids=[1] * prompt_len, max_tokens=max_tokens, sampling=SamplingParams(),
                   stop_ids=frozenset(), created_at=created_at, deadline=deadline, nice=nice)


def pids(procs: list[Process]) -> list[int]:
    return [p.pid for p in procs]


def finish(policy: BasePolicy, proc: Process, reason: ExitReason, now: float) -> None:
    proc.state = ProcState.ZOMBIE
    proc.exit_status = ExitStatus(reason)
    policy.on_exit(proc, now)


def serve_step(policy: BasePolicy, procs: list[Process], now: float, *, budget: int = 1 << 20,
               max_seqs: int = 1 << 20, dt: float = 0.0) -> dict[int, int]:
    """One planner step over the live ``procs``; returns tokens computed by pid, in batch order."""
    ranked = policy.rank([p for p in procs if p.alive], now)
    tokens: dict[int, int] = {}
    for proc in ranked:
        if budget <= 0 or len(tokens) >= max_seqs:
            break
        tokens[proc.pid] = min(proc.num_tokens - proc.num_computed, budget)
        budget -= tokens[proc.pid]
    chosen = [p for p in ranked if p.pid in tokens]
    policy.on_step(chosen, tokens, now + dt)
    for proc in chosen:
        proc.acct.time_running_s += dt
        proc.num_computed += tokens[proc.pid]
        if proc.num_computed == proc.num_tokens:
            proc.output_ids.append(TOKEN)
            if len(proc.output_ids) >= proc.max_tokens:
                finish(policy, proc, ExitReason.LENGTH, now + dt)
    return tokens


# -- the registry and the helpers ----------------------------------------------------------

def test_every_policy_is_registered_and_made_by_name():
    assert sorted(POLICIES) == ["edf", "fcfs", "mlfq", "priority", "rr", "srpt", "vtc"]
    for name in POLICIES:
        policy = make_policy(name)
        assert policy.name == name
        policy.on_step([], {}, 0.0)  # every policy takes the hooks
    with pytest.raises(ValueError, match="known: edf, fcfs"):
        make_policy("lottery")


def test_split_served_tells_prompt_from_sampled_tokens():
    proc = make_proc(1, prompt_len=10)
    assert split_served(proc, 6) == (6, 0)  # a first prefill chunk
    proc.num_computed = 6
    assert split_served(proc, 4) == (4, 1)  # the last chunk samples
    proc.num_computed, proc.output_ids = 10, [TOKEN]
    assert split_served(proc, 1) == (0, 1)  # a decode
    proc.num_computed = 0
    assert split_served(proc, 11) == (10, 1)  # recomputing after a preemption


# -- fcfs, edf, priority: stateless ----------------------------------------------------------

def test_fcfs_orders_by_creation_then_pid():
    procs = [make_proc(3, created_at=2.0), make_proc(1, created_at=5.0), make_proc(4, created_at=2.0),
             make_proc(2, created_at=0.5)]
    assert pids(FCFS().rank(procs, 10.0)) == [2, 3, 4, 1]


def test_edf_orders_by_deadline_and_puts_no_deadline_last_fcfs():
    procs = [make_proc(1, created_at=0.0), make_proc(2, created_at=1.0, deadline=9.0),
             make_proc(3, created_at=2.0, deadline=4.0), make_proc(4, created_at=0.5),
             make_proc(5, created_at=3.0, deadline=4.0)]
    assert pids(EDF().rank(procs, 0.0)) == [3, 5, 2, 1, 4]
    # No aging: a process without a deadline never overtakes one with, however long it waits.
    assert pids(EDF().rank(procs, 1e9)) == [3, 5, 2, 1, 4]


def test_priority_orders_by_nice_then_fcfs():
    procs = [make_proc(1, nice=5), make_proc(2, nice=-3, created_at=1.0), make_proc(3, nice=0),
             make_proc(4, nice=-3, created_at=0.5), make_proc(5, nice=19)]
    # Every process was in every step since it was created: nobody waited, nice alone decides.
    for proc in procs:
        proc.acct.time_running_s = 1.0 - proc.created_at
    assert pids(Priority().rank(procs, 1.0)) == [4, 2, 3, 1, 5]


def test_priority_aging_improves_one_level_per_aging_period():
    policy = Priority(aging_s=1.0)
    old = make_proc(1, nice=5, created_at=0.0)
    fresh = make_proc(2, nice=0, created_at=4.9)
    assert policy.effective_nice(old, 4.9) == 1
    assert pids(policy.rank([old, fresh], 4.9)) == [2, 1]
    fresh.created_at = 5.0
    assert policy.effective_nice(old, 5.0) == 0  # equal now, and older
    assert pids(policy.rank([old, fresh], 5.0)) == [1, 2]
    old.acct.time_running_s = 5.0  # served all along: no waiting, no boost
    assert policy.effective_nice(old, 5.0) == 5


def test_priority_aging_ends_starvation_under_a_stream_of_important_work():
    policy = Priority(aging_s=1.0)
    low = make_proc(0, nice=5, created_at=0.0, max_tokens=3)
    procs = [low]
    served_low = []
    for step in range(200):
        now = step / 10
        procs.append(make_proc(step + 1, nice=0, created_at=now, max_tokens=1))  # one a step
        tokens = serve_step(policy, procs, now, max_seqs=1, dt=0.1)
        if low.pid in tokens:
            served_low.append(step)
        if not low.alive:
            break
    # Starved while its 5 levels of boost accrue, then it keeps the boost and finishes.
    assert served_low == [50, 51, 52]
    assert low.exit_status == ExitStatus(ExitReason.LENGTH)


# -- rr ------------------------------------------------------------------------------------------

def test_rr_rotates_after_a_quantum_of_tokens_and_queues_arrivals_at_the_back():
    policy = RoundRobin(quantum=4)
    procs = [make_proc(1, prompt_len=2), make_proc(2, prompt_len=2, created_at=0.1),
             make_proc(3, prompt_len=2, created_at=0.2)]
    order = []
    for step in range(20):
        if step == 4:
            procs.append(make_proc(4, prompt_len=2, created_at=float(step)))
        order += serve_step(policy, procs, float(step), max_seqs=1)
    # A first turn is a 2-token prefill and two decodes (4 tokens); later turns are 4 decodes.
    # Process 4, first seen at step 4, queues behind 1 (rotated at step 2), before 2 (step 5).
    assert order == [1, 1, 1, 2, 2, 2, 3, 3, 3, 1, 1, 1, 1, 4, 4, 4, 2, 2, 2, 2]


def test_rr_forgets_exited_processes():
    policy = RoundRobin(quantum=2)
    proc = make_proc(1, max_tokens=2)
    serve_step(policy, [proc], 0.0)
    serve_step(policy, [proc], 1.0)
    assert not proc.alive
    assert policy._ticket == {} and policy._served == {}


# -- mlfq ----------------------------------------------------------------------------------------

def test_mlfq_skip_join_picks_the_level_by_prompt_length():
    policy = MLFQ(num_levels=4, base_quantum=8)  # quanta 8, 16, 32; level 3 has none
    assert policy.quanta == [8, 16, 32]
    lengths = {1: 5, 2: 8, 3: 20, 4: 31, 5: 32, 6: 1000}
    procs = [make_proc(pid, prompt_len=n, created_at=-pid) for pid, n in lengths.items()]
    ranked = policy.rank(procs, 0.0)
    assert {pid: policy.level_of(pid) for pid in lengths} == {1: 0, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3}
    assert pids(ranked) == [1, 2, 4, 3, 6, 5]  # by level, FCFS (created_at = -pid) within one
    weighted = MLFQ(num_levels=4, base_quantum=8, prefill_weight=0.25)
    weighted.rank([make_proc(7, prompt_len=20)], 0.0)
    assert weighted.level_of(7) == 0  # 20 prompt tokens cost 5 < 8


def test_mlfq_demotes_when_served_tokens_exceed_the_quantum():
    policy = MLFQ(num_levels=4, base_quantum=8)
    short = make_proc(1, prompt_len=5, created_at=1.0)
    other = make_proc(2, prompt_len=10, created_at=0.0)  # joins level 1
    procs = [short, other]
    levels = []
    for step in range(5):
        assert serve_step(policy, procs, float(step), max_seqs=1) == {1: 5 if step == 0 else 1}
        levels.append(policy.level_of(1))
    # 5 prompt tokens, then decodes: 6, 7, 8 served (not more than 8), the 9th demotes.
    assert levels == [0, 0, 0, 0, 1]
    # Demoted to the back of level 1: the process already queued there goes first.
    assert pids(policy.rank(procs, 5.0)) == [2, 1]
    for step in range(5, 5 + 17):
        serve_step(policy, [short], float(step))
    assert policy.level_of(1) == 2  # 17 > 16 tokens in level 1


def test_mlfq_aging_raises_a_starving_process_one_level_per_period():
    policy = MLFQ(num_levels=4, base_quantum=8, starvation_s=5.0)
    long = make_proc(1, prompt_len=20, created_at=0.0)
    fresh = make_proc(2, prompt_len=2, created_at=4.0)
    assert pids(policy.rank([long, fresh], 4.9)) == [2, 1]
    assert policy.level_of(1) == 2
    assert pids(policy.rank([long, fresh], 5.0)) == [2, 1]
    assert policy.level_of(1) == 1  # one level up, and its starvation clock starts again
    assert pids(policy.rank([long, fresh], 9.9)) == [2, 1] and policy.level_of(1) == 1
    assert pids(policy.rank([long, fresh], 10.0)) == [2, 1]  # to the back of the top level
    assert policy.level_of(1) == 0
    later = make_proc(3, prompt_len=2, created_at=11.0)
    assert pids(policy.rank([long, fresh, later], 11.0)) == [2, 1, 3]
    assert pids(policy.rank([long, fresh, later], 20.0)) == [2, 1, 3]  # nothing above the top


def test_mlfq_a_promoted_process_evicts_nobody_until_it_is_served():
    policy = MLFQ(num_levels=4, base_quantum=8, starvation_s=5.0)
    long = make_proc(1, prompt_len=20, created_at=0.0)
    policy.rank([long], 0.0)
    assert policy.may_preempt(long)  # its rank is its own: it may take memory from those below
    policy.rank([long], 5.0)
    assert policy.level_of(1) == 1 and not policy.may_preempt(long)  # a rank from waiting only
    serve_step(policy, [long], 6.0)
    assert policy.may_preempt(long)
    assert policy.may_preempt(make_proc(9)) and BasePolicy.may_preempt(FCFS(), long)


# -- srpt ----------------------------------------------------------------------------------------

def test_srpt_orders_by_predicted_remaining_from_hints():
    policy = SRPT(aging_tokens_per_s=0.0)
    procs = [make_proc(1, max_tokens=100), make_proc(2, max_tokens=100), make_proc(3, max_tokens=100),
             make_proc(4, max_tokens=30), make_proc(5, max_tokens=100, created_at=-1.0)]
    policy.hint(1, 50)
    policy.hint(2, 10)
    policy.hint(3, 30)
    procs[2].output_ids = [TOKEN] * 25  # 5 left
    # 4: no hint, nothing learned -> max_tokens (30); 5: max_tokens (100), older than 1.
    assert [policy.predicted_remaining(p) for p in procs] == [50, 10, 5, 30, 100]
    assert pids(policy.rank(procs, 0.0)) == [3, 2, 4, 1, 5]


def test_srpt_learns_output_lengths_online_per_tenant():
    policy = SRPT(aging_tokens_per_s=0.0)
    fresh = make_proc(10, tenant="alice", max_tokens=500)
    assert policy.predicted_len(fresh) == 500  # nothing known
    for pid, tenant, length, reason in [(1, "alice", 10, ExitReason.STOP), (2, "alice", 30, ExitReason.LENGTH),
                                        (3, "bob", 110, ExitReason.STOP), (4, "alice", 400, ExitReason.SIGNAL)]:
        proc = make_proc(pid, tenant=tenant, max_tokens=500)
        proc.output_ids = [TOKEN] * length
        finish(policy, proc, reason, 1.0)
    assert policy.predicted_len(fresh) == 20  # alice's mean; the killed one taught nothing
    assert policy.predicted_len(make_proc(11, tenant="bob")) == 100  # capped at max_tokens
    assert policy.predicted_len(make_proc(12, tenant="carol", max_tokens=500)) == 50  # all tenants
    fresh.output_ids = [TOKEN] * 25  # outlived its prediction: expected to run as long again
    assert policy.predicted_len(fresh) == 50
    policy.hint(10, 300)
    assert policy.predicted_remaining(fresh) == 275  # a hint beats what was learned
    finish(policy, fresh, ExitReason.SIGNAL, 2.0)
    assert policy._hints == {}


def test_srpt_aging_lets_a_long_job_overtake_fresh_short_ones():
    policy = SRPT(aging_tokens_per_s=10.0)
    long = make_proc(1, max_tokens=100, created_at=0.0)
    policy.hint(1, 100)
    assert pids(policy.rank([long, make_proc(2, max_tokens=10, created_at=8.9)], 8.9)) == [2, 1]
    assert pids(policy.rank([long, make_proc(3, max_tokens=10, created_at=9.0)], 9.0)) == [1, 3]


# -- vtc -----------------------------------------------------------------------------------------

def weighted_service(procs: list[Process], w_in: float, w_out: float) -> dict[str, float]:
    service: dict[str, float] = {}
    for proc in procs:
        done = w_in * min(proc.num_computed, len(proc.prompt_ids)) + w_out * len(proc.output_ids)
        service[proc.tenant] = service.get(proc.tenant, 0.0) + done
    return service


def max_service_gap(policy: BasePolicy) -> tuple[float, dict[str, float]]:
    """Two tenants, 30 processes each (alice's all created first); the largest gap in weighted
    service while both are backlogged."""
    procs = [make_proc(i, tenant="alice", created_at=i, prompt_len=30, max_tokens=20) for i in range(30)]
    procs += [make_proc(100 + i, tenant="bob", created_at=100 + i, prompt_len=30, max_tokens=20)
              for i in range(30)]
    gap = 0.0
    step = 0
    while {p.tenant for p in procs if p.alive} == {"alice", "bob"}:
        serve_step(policy, procs, float(step), budget=64, max_seqs=8)
        service = weighted_service(procs, 1.0, 2.0)
        gap = max(gap, abs(service["alice"] - service["bob"]))
        step += 1
    return gap, service


def test_vtc_keeps_two_backlogged_tenants_within_the_bound():
    policy = VTC(w_in=1.0, w_out=2.0)
    gap, service = max_service_gap(policy)
    bound = 2 * (1.0 * 30 + 2.0 * 64)  # 2U, U = w_in * longest prompt + w_out * step budget
    assert gap <= bound
    assert gap <= 1.0 * 64 + 2.0 * 8  # in fact within one step's charge
    assert min(service.values()) > 1000  # both were served a lot
    assert policy.counters == pytest.approx(service)  # nothing cached or recomputed here
    unfair, _ = max_service_gap(FCFS())
    assert unfair > bound  # what VTC prevents


def test_vtc_lifts_a_newly_backlogged_tenant_to_the_least_backlogged_counter():
    policy = VTC(w_in=1.0, w_out=2.0)
    a1 = make_proc(1, tenant="a", prompt_len=50)
    b1 = make_proc(2, tenant="b", prompt_len=20)
    policy.rank([a1, b1], 0.0)
    policy.on_step([a1, b1], {1: 50, 2: 20}, 0.1)
    assert policy.counters == {"a": 52.0, "b": 22.0}  # prompts plus one sampled token each
    c1 = make_proc(3, tenant="c", created_at=5.0, prompt_len=100)
    assert pids(policy.rank([a1, b1, c1], 5.0)) == [2, 3, 1]  # c lifted to 22, then FCFS
    assert policy.counters["c"] == 22.0
    policy.on_step([c1], {3: 100}, 5.1)
    assert policy.counters["c"] == 124.0
    policy.rank([a1, c1], 6.0)  # b goes idle
    b2 = make_proc(4, tenant="b", created_at=7.0)
    assert pids(policy.rank([a1, c1, b2], 7.0)) == [1, 4, 3]
    assert policy.counters["b"] == 52.0  # lifted from 22: its idle time earned no credit
    policy.rank([], 8.0)  # everyone idle; c had the highest counter
    d1 = make_proc(5, tenant="d", created_at=9.0)
    a2 = make_proc(6, tenant="a", created_at=9.0)
    policy.rank([d1, a2], 9.0)
    assert policy.counters["d"] == 124.0 and policy.counters["a"] == 124.0
    policy.counters["a"] = 500.0
    policy.rank([d1], 10.0)
    policy.rank([d1, a2], 11.0)
    assert policy.counters["a"] == 500.0  # never lowered


def test_vtc_charges_a_prompt_token_once():
    policy = VTC(w_in=1.0, w_out=2.0)
    proc = make_proc(1, prompt_len=10)
    policy.rank([proc], 0.0)
    serve_step(policy, [proc], 0.0, budget=6)
    serve_step(policy, [proc], 1.0, budget=6)
    assert policy.counters["alice"] == 12.0  # 10 prompt tokens, 1 sampled
    proc.num_computed = 0  # preempted, blocks dropped: the step recomputes prompt and output
    assert serve_step(policy, [proc], 2.0) == {1: 11}
    assert policy.counters["alice"] == 14.0  # only the new sampled token
    cached = make_proc(2, prompt_len=16)
    cached.num_computed = 12  # a prefix-cache hit at admission
    serve_step(policy, [proc, cached], 3.0)
    assert policy.counters["alice"] == 14.0 + 2.0 + (4.0 + 2.0)


def test_hooks_ignore_processes_that_died_during_the_step():
    for name in POLICIES:
        policy = make_policy(name)
        proc = make_proc(1)
        policy.rank([proc], 0.0)
        finish(policy, proc, ExitReason.SIGNAL, 0.5)
        policy.on_step([proc], {1: 4}, 1.0)
        for attr in ("_ticket", "_entries", "_prompt_charged", "_hints"):
            assert getattr(policy, attr, {}) == {}, (name, attr)
