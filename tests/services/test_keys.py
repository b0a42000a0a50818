"""The local key pair is made once, kept private, and only trusted keys verify."""

from __future__ import annotations

import os
import stat
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from llmos.kernel.errors import KernelError
from llmos.services import securefiles
from llmos.services.keys import KeyStore, public_pem


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_boot_makes_a_private_key_with_mode_0600_and_later_boots_reuse_it(home):
    first = KeyStore(home)
    assert first.created
    assert mode(first.private_path) == 0o600
    assert mode(first.dir) == 0o700 and mode(first.trusted_dir) == 0o700
    assert mode(first.public_path) == 0o644
    again = KeyStore(home)
    assert not again.created and again.key_id == first.key_id
    assert first.public_path.read_bytes() == public_pem(again.public_key)


def test_the_private_key_is_created_exclusively_with_mode_0600_even_under_umask_0(home, monkeypatch):
    opened = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *args, **kwargs):
        opened.append((str(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(securefiles.os, "open", spy)
    old_umask = os.umask(0)  # the file mode must not depend on a kind umask
    try:
        keys = KeyStore(home)
    finally:
        os.umask(old_umask)
    creations = [(flags, m) for path, flags, m in opened if flags & os.O_CREAT and "local.key" in path]
    assert creations, "the private key must be written through os.open"
    for flags, m in creations:
        assert flags & os.O_EXCL and m == 0o600
    assert mode(keys.private_path) == 0o600


@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o666])
def test_a_private_key_readable_by_group_or_others_is_refused_with_eacces(home, bad_mode):
    keys = KeyStore(home)
    keys.private_path.chmod(bad_mode)
    with pytest.raises(KernelError) as err:
        KeyStore(home)
    assert err.value.errno == "EACCES"
    assert str(keys.private_path) in err.value.message and "chmod 600" in err.value.message


def test_an_existing_key_is_never_overwritten_and_stale_temp_files_are_cleared(home):
    keys = KeyStore(home)
    before = keys.private_path.read_bytes()
    stale = keys.dir / ".local.key.abcdef.tmp"
    stale.write_bytes(b"half a key")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert not securefiles.create_exclusive(keys.private_path, b"another key")
    assert KeyStore(home).key_id == keys.key_id
    assert keys.private_path.read_bytes() == before and not stale.exists()


def test_a_signature_verifies_only_for_its_data_and_a_trusted_key(home, tmp_path):
    ours, theirs = KeyStore(home), KeyStore(tmp_path / "elsewhere")
    data = b"some bytes"
    ours.verify(data, ours.sign(data), ours.key_id)
    with pytest.raises(KernelError) as err:
        ours.verify(data + b"!", ours.sign(data), ours.key_id)
    assert err.value.errno == "EACCES" and "does not verify" in err.value.message
    with pytest.raises(KernelError) as err:
        ours.verify(data, theirs.sign(data), theirs.key_id)
    assert err.value.errno == "EACCES" and "untrusted key" in err.value.message
    with pytest.raises(KernelError) as err:  # claiming a trusted key id does not help
        ours.verify(data, theirs.sign(data), ours.key_id)
    assert err.value.errno == "EACCES"
    assert ours.trust(public_pem(theirs.public_key)) == (theirs.key_id, True)
    assert ours.trust(public_pem(theirs.public_key)) == (theirs.key_id, False)
    ours.verify(data, theirs.sign(data), theirs.key_id)
    assert {row["key_id"]: row["local"] for row in KeyStore(home).describe()} == {ours.key_id: True, theirs.key_id: False}


def test_trust_refuses_what_is_not_an_ed25519_public_key(home):
    keys = KeyStore(home)
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = p256.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for bad in (pem, b"not a key", b"x" * 10000):
        with pytest.raises(KernelError) as err:
            keys.trust(bad)
        assert err.value.errno == "EINVAL"


def test_key_ids_come_from_the_key_not_the_file_name_and_writable_trust_files_are_ignored(home, tmp_path):
    keys, other, third = KeyStore(home), KeyStore(tmp_path / "b"), KeyStore(tmp_path / "c")
    (keys.trusted_dir / f"{third.key_id}.pem").write_bytes(public_pem(other.public_key))
    trusted = keys.trusted_keys()
    assert other.key_id in trusted and third.key_id not in trusted
    loose = keys.trusted_dir / "loose.pem"
    loose.write_bytes(public_pem(third.public_key))
    loose.chmod(0o666)
    assert third.key_id not in keys.trusted_keys()
