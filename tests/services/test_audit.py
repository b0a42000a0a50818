"""The audit log: every kind of tampering is found and named; crashes are repaired."""

from __future__ import annotations

import json

import pytest

from llmos.kernel.errors import KernelError
from llmos.services.audit import GENESIS_HASH, AuditLog, entry_hash
from llmos.services.keys import KeyStore
from llmos.services.manifest import canonical_json


def fake_clock():
    ticks = iter(range(1_700_000_000, 1_800_000_000))
    return lambda: float(next(ticks))


@pytest.fixture
def keys(home) -> KeyStore:
    return KeyStore(home)


@pytest.fixture
def log(home, keys) -> AuditLog:
    audit = AuditLog(home, keys, fake_clock())
    for i in range(6):
        audit.append({"type": "test.event", "n": i})
    return audit


def lines(log: AuditLog) -> list[bytes]:
    return log.path.read_bytes().splitlines()


def rewrite(log: AuditLog, new_lines: list[bytes]) -> None:
    log.path.write_bytes(b"".join(line + b"\n" for line in new_lines))


def problem_index(log: AuditLog) -> int:
    problem = log.find_problem()
    assert problem is not None
    with pytest.raises(KernelError) as err:
        log.verify()
    assert err.value.errno == "EIO" and f"at entry {problem.index}" in err.value.message
    return problem.index


def test_entries_chain_by_hash_and_index(log):
    entries = [json.loads(line) for line in lines(log)]
    assert [e["index"] for e in entries] == list(range(6))
    assert entries[0]["prev"] == GENESIS_HASH
    for before, after in zip(entries, entries[1:], strict=False):
        assert after["prev"] == entry_hash(before)
    assert log.verify() == {"entries": 6, "head": entry_hash(entries[-1])}
    assert [e["event"]["n"] for e in log.tail(2)] == [4, 5]
    assert [e["event"]["n"] for e in log.tail(100)] == list(range(6))


def test_an_edited_entry_is_detected_and_named(log):
    original = lines(log)
    entry = json.loads(original[2])
    entry["event"]["n"] = 99
    rewrite(log, original[:2] + [canonical_json(entry)] + original[3:])
    assert problem_index(log) == 2


def test_an_edited_entry_is_detected_even_with_the_chain_recomputed(log):
    entries = [json.loads(line) for line in lines(log)]
    entries[3]["event"]["type"] = "test.innocent"
    for before, after in zip(entries[3:], entries[4:], strict=False):  # an attacker re-links, but cannot re-sign
        after["prev"] = entry_hash(before)
    rewrite(log, [canonical_json(e) for e in entries])
    problem = log.find_problem()
    assert problem is not None and problem.index == 3 and "signature" in problem.reason


def test_a_deleted_entry_is_detected_and_named(log):
    original = lines(log)
    rewrite(log, original[:1] + original[2:])
    assert problem_index(log) == 1


def test_reordered_entries_are_detected_and_named(log):
    original = lines(log)
    rewrite(log, original[:3] + [original[4], original[3]] + original[5:])
    assert problem_index(log) == 3


def test_an_inserted_entry_is_detected_and_named(log):
    original = lines(log)
    forged = json.loads(original[2])
    forged["event"] = {"type": "test.forged"}
    rewrite(log, original[:2] + [original[1], canonical_json(forged)] + original[2:])
    assert problem_index(log) == 2


def test_entries_cut_from_the_end_are_detected_by_the_signed_head(log):
    rewrite(log, lines(log)[:4])
    problem = log.find_problem()
    assert problem is not None and problem.index == 4 and "deleted from the end" in problem.reason


def test_an_altered_head_is_detected(log):
    head = json.loads(log.head_path.read_bytes())
    head["index"] = 3
    log.head_path.write_bytes(canonical_json(head))
    problem = log.find_problem()
    assert problem is not None and "head" in problem.reason


def test_a_restarted_log_continues_the_chain(home, keys, log):
    again = AuditLog(home, keys, fake_clock())
    assert again.append({"type": "test.after"})["index"] == 6
    assert again.verify()["entries"] == 7


def test_a_line_torn_by_a_crash_is_cut_at_the_next_open(home, keys, log):
    with open(log.path, "ab") as handle:
        handle.write(b'{"index":6,"time":1,"ev')  # a crash mid-append: never acknowledged
    again = AuditLog(home, keys, fake_clock())
    assert again.recovered_bytes == len(b'{"index":6,"time":1,"ev')
    assert again.verify()["entries"] == 6
    assert again.append({"type": "test.after"})["index"] == 6


def test_a_crash_between_appending_and_signing_the_head_is_repaired(home, keys, log):
    old_head = log.head_path.read_bytes()
    log.append({"type": "test.last"})
    log.head_path.write_bytes(old_head)  # as if the crash came before the head was rewritten
    assert log.find_problem() is None  # a lag of one entry is the crash window, not tampering
    again = AuditLog(home, keys, fake_clock())
    assert json.loads(again.head_path.read_bytes())["index"] == 6
    assert again.verify()["entries"] == 7


def test_a_log_tampered_at_its_tail_is_kept_as_evidence_and_a_new_chain_starts(home, keys, log):
    rewrite(log, lines(log)[:3])
    again = AuditLog(home, keys, fake_clock())
    evidence = again.dir / "audit.jsonl.tampered-1"
    assert evidence.exists() and len(evidence.read_bytes().splitlines()) == 3
    first = again.tail(1)[0]
    assert first["index"] == 0 and first["event"]["type"] == "security.audit_tampered"
    assert "deleted from the end" in first["event"]["problem"]
    assert again.verify()["entries"] == 1


def test_bad_events_are_refused(log):
    for bad in ({}, {"type": ""}, {"type": 3}, {"type": "x", "blob": b"bytes"}, {"type": "x", "big": "y" * 70000}):
        with pytest.raises(KernelError) as err:
            log.append(bad)
        assert err.value.errno in ("EINVAL", "E2BIG")
    assert log.verify()["entries"] == 6
