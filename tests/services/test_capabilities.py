"""Capabilities: unforgeable, bound to one pid and resource, revocable across restarts."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.kernel.errors import KernelError
from llmos.services.capabilities import CapabilityAuthority
from llmos.services.crypto import load_master_key


def authority(home) -> CapabilityAuthority:
    """A fresh instance over ``home``: what a restarted security service builds."""
    return CapabilityAuthority(home, load_master_key(home)[0])


def refused(caps: CapabilityAuthority, handle, pid=7, kind="model", name="llama", right="load") -> str:
    with pytest.raises(KernelError) as err:
        caps.check(handle, pid, kind, name, right)
    assert err.value.errno == "EPERM"
    return err.value.message


def test_a_capability_grants_its_rights_to_its_pid_on_its_resource(home):
    caps = authority(home)
    handle, cap = caps.mint(7, "model", "llama", ["read", "load"])
    assert cap.rights == ("load", "read")
    checked = caps.check(handle, 7, "model", "llama", "load")
    assert checked == cap and checked.to_wire()["rights"] == ["load", "read"]
    assert "does not grant 'unload'" in refused(caps, handle, right="unload")


def test_another_process_s_capability_is_refused(home):
    caps = authority(home)
    handle, _ = caps.mint(7, "model", "llama", ["load"])
    assert "belongs to pid 7, not pid 8" in refused(caps, handle, pid=8)


def test_a_capability_for_another_resource_is_refused(home):
    caps = authority(home)
    handle, _ = caps.mint(7, "model", "llama", ["load"])
    assert "not model 'mistral'" in refused(caps, handle, name="mistral")
    assert "not device 'llama'" in refused(caps, handle, kind="device")


def test_forged_capabilities_are_refused(home, tmp_path):
    caps = authority(home)
    handle, _ = caps.mint(7, "model", "llama", ["load"])
    prefix, body, mac = handle.split(".")
    fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    fields["rights"] = ["load", "unload"]  # widen the rights, keep the old mac
    widened = base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")
    assert "forged" in refused(caps, f"{prefix}.{widened}.{mac}", right="unload")
    other_home = tmp_path / "other"
    foreign, _ = authority(other_home).mint(7, "model", "llama", ["load"])  # another machine's key
    refused(caps, foreign)
    for junk in ("", "cap1", "cap1.a.b", "x.y.z", "cap1.!!!.???", "cap1." + "A" * 5000 + ".b", 42, None):
        assert "minted" in refused(caps, junk) or "forged" in refused(caps, junk)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[CapabilityAuthority, str]:
    """One authority and handle for every hypothesis example of the test below."""
    caps = authority(tmp_path_factory.mktemp("shared-home"))
    return caps, caps.mint(7, "model", "llama", ["load"])[0]


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), replacement=st.characters(codec="ascii"))
def test_changing_any_one_character_of_a_handle_makes_it_useless(shared, position, replacement):
    caps, handle = shared
    position %= len(handle)
    if handle[position] == replacement:
        return
    changed = handle[:position] + replacement + handle[position + 1:]
    with pytest.raises(KernelError) as err:
        caps.check(changed, 7, "model", "llama", "load")
    assert err.value.errno == "EPERM"


def test_handles_minted_before_a_restart_still_verify_after_it(home):
    handle, cap = authority(home).mint(7, "model", "llama", ["load"])
    assert authority(home).check(handle, 7, "model", "llama", "load") == cap


def test_a_revoked_capability_is_refused_also_after_a_restart(home):
    caps = authority(home)
    kept, _ = caps.mint(7, "model", "llama", ["load"])
    gone, cap = caps.mint(7, "model", "llama", ["load"])
    assert caps.revoke(gone) == cap
    caps.revoke(gone)  # twice is harmless
    assert f"capability {cap.cap_id} was revoked" in refused(caps, gone)
    restarted = authority(home)
    refused(restarted, gone)
    restarted.check(kept, 7, "model", "llama", "load")


def test_revoking_a_pid_refuses_all_its_capabilities_and_new_ones_also_after_a_restart(home):
    caps = authority(home)
    a, _ = caps.mint(7, "model", "llama", ["load"])
    b, _ = caps.mint(7, "device", "gpu0", ["use"])
    other, _ = caps.mint(8, "model", "llama", ["load"])
    assert caps.revoke_pid(7) and not caps.revoke_pid(7)
    restarted = authority(home)
    assert "every capability of pid 7" in refused(restarted, a)
    refused(restarted, b, kind="device", name="gpu0", right="use")
    restarted.check(other, 8, "model", "llama", "load")
    with pytest.raises(KernelError) as err:
        restarted.mint(7, "model", "llama", ["load"])
    assert err.value.errno == "EPERM"


def test_a_new_epoch_ends_every_earlier_capability_and_clears_revocations(home):
    caps = authority(home)
    old, _ = caps.mint(7, "model", "llama", ["load"])
    caps.revoke_pid(7)
    caps.new_epoch()
    assert "earlier boot" in refused(authority(home), old)
    fresh, _ = caps.mint(7, "model", "llama", ["load"])  # pid 7 of the new boot is someone else
    authority(home).check(fresh, 7, "model", "llama", "load")


def test_a_revocation_line_torn_by_a_crash_does_not_swallow_the_next_one(home):
    caps = authority(home)
    handle, _ = caps.mint(7, "model", "llama", ["load"])
    with open(caps.dir / "revoked.jsonl", "ab") as torn:
        torn.write(b'{"epoch":"')
    restarted = authority(home)
    restarted.revoke(handle)
    refused(authority(home), handle)


@pytest.mark.parametrize("pid, kind, name, rights", [
    (-1, "model", "x", ["load"]), (True, "model", "x", ["load"]), (1, "Model", "x", ["load"]),
    (1, "model", "", ["load"]), (1, "model", "x" * 300, ["load"]), (1, "model", "x", []),
    (1, "model", "x", ["load", "load"]), (1, "model", "x", ["Load"]), (1, "model", "x", "load"),
])
def test_bad_mint_arguments_are_einval(home, pid, kind, name, rights):
    with pytest.raises(KernelError) as err:
        authority(home).mint(pid, kind, name, rights)
    assert err.value.errno == "EINVAL"
