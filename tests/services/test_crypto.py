"""Encryption at rest: per-tenant AES-GCM blobs, and encrypted KV swap files."""

from __future__ import annotations

import random
import stat

import numpy as np
import pytest

from llmos.kernel.errors import KernelError
from llmos.services.crypto import NONCE_BYTES, EncryptedSwapFile, TenantCipher, load_master_key


@pytest.fixture
def cipher(home) -> TenantCipher:
    return TenantCipher(load_master_key(home)[0])


def kv_blocks(seed: int = 0) -> list:
    """KV-like blocks: fp16 arrays (2 layers x K/V x 16 tokens x 64), raw bytes, an int array."""
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((2, 2, 16, 64)).astype(np.float16),
        rng.standard_normal((2, 2, 16, 64)).astype(np.float16),
        random.Random(seed).randbytes(4096),
        np.arange(1000, dtype=np.int64).reshape(10, 100),
    ]


def raw_bytes(block) -> bytes:
    return block if isinstance(block, bytes) else block.tobytes()


def holds_plaintext_run(haystack: bytes, needle: bytes, run: int = 16) -> bool:
    """True if any ``run``-byte window of ``needle`` appears in ``haystack``."""
    windows = {haystack[i:i + run] for i in range(len(haystack) - run + 1)}
    return any(needle[i:i + run] in windows for i in range(len(needle) - run + 1))


def test_the_master_key_is_made_once_with_mode_0600_and_a_loose_one_is_refused(home):
    key, created = load_master_key(home)
    again, created_again = load_master_key(home)
    assert created and not created_again and key == again and len(key) == 32
    path = home / "keys" / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    with pytest.raises(KernelError) as err:
        load_master_key(home)
    assert err.value.errno == "EACCES" and "master key" in err.value.message


def test_blobs_round_trip_per_tenant_and_fail_for_another_tenant_or_aad(cipher, home):
    blob = cipher.encrypt_blob("alice", b"secret prompt", b"ctx")
    assert b"secret prompt" not in blob and len(blob) == NONCE_BYTES + len(b"secret prompt") + 16
    assert blob[:NONCE_BYTES] != cipher.encrypt_blob("alice", b"secret prompt", b"ctx")[:NONCE_BYTES]
    assert cipher.decrypt_blob("alice", blob, b"ctx") == b"secret prompt"
    restarted = TenantCipher(load_master_key(home)[0])  # same master key after a restart
    assert restarted.decrypt_blob("alice", blob, b"ctx") == b"secret prompt"
    for tenant, aad in (("bob", b"ctx"), ("alice", b"other"), ("alice", b"")):
        with pytest.raises(KernelError) as err:
            cipher.decrypt_blob(tenant, blob, aad)
        assert err.value.errno == "EIO" and "failed authentication" in err.value.message


@pytest.mark.parametrize("offset", [0, NONCE_BYTES, -1])
def test_a_flipped_byte_in_a_blob_is_eio(cipher, offset):
    blob = bytearray(cipher.encrypt_blob("alice", b"x" * 100))
    blob[offset] ^= 0x80
    with pytest.raises(KernelError) as err:
        cipher.decrypt_blob("alice", bytes(blob))
    assert err.value.errno == "EIO"
    with pytest.raises(KernelError) as err:
        cipher.decrypt_blob("alice", bytes(blob[:20]))
    assert err.value.errno == "EIO" and "truncated" in err.value.message


def test_a_swap_file_holds_no_plaintext_of_the_kv_blocks_and_restores_them_exactly(cipher, home):
    blocks = kv_blocks()
    swap = EncryptedSwapFile(home / "swap", cipher, "alice", 42)
    size = swap.write(blocks)
    on_disk = swap.path.read_bytes()
    assert size == len(on_disk) and stat.S_IMODE(swap.path.stat().st_mode) == 0o600
    assert "alice" not in str(swap.path)
    for block in blocks:
        assert not holds_plaintext_run(on_disk, raw_bytes(block))
    restored = EncryptedSwapFile(home / "swap", TenantCipher(load_master_key(home)[0]), "alice", 42).read()
    assert len(restored) == len(blocks)
    for before, after in zip(blocks, restored, strict=True):
        assert type(after) is type(before) and raw_bytes(after) == raw_bytes(before)
        if isinstance(before, np.ndarray):
            assert after.dtype == before.dtype and after.shape == before.shape
    assert swap.discard() and not swap.path.exists() and not swap.discard()


def test_swap_files_restore_torch_tensors_exactly_including_bfloat16(cipher, home):
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    blocks = [torch.randn(2, 16, 8, generator=generator).to(torch.bfloat16),
              torch.randn(4, 4, generator=generator).t(),  # not contiguous
              torch.zeros(0, 3, dtype=torch.float16)]
    swap = EncryptedSwapFile(home / "swap", cipher, "alice", "proc-7")
    swap.write(blocks)
    for before, after in zip(blocks, swap.read(), strict=True):
        assert after.dtype == before.dtype and after.shape == before.shape and torch.equal(after, before)


@pytest.mark.parametrize("where", ["magic", "count", "header", "block", "tag", "truncate", "append"])
def test_a_damaged_swap_file_is_eio_with_a_sentence(cipher, home, where):
    swap = EncryptedSwapFile(home / "swap", cipher, "alice", 1)
    swap.write(kv_blocks())
    data = bytearray(swap.path.read_bytes())
    offsets = {"magic": 0, "count": 9, "header": 20, "block": len(data) // 2, "tag": len(data) - 1}
    if where == "truncate":
        data = data[:-100]
    elif where == "append":
        data += b"\0"
    else:
        data[offsets[where]] ^= 0x01
    swap.path.write_bytes(bytes(data))
    with pytest.raises(KernelError) as err:
        swap.read()
    assert err.value.errno == "EIO" and str(swap.path) in err.value.message


def test_a_swap_file_cannot_be_read_as_another_handle_or_tenant(cipher, home):
    swap = EncryptedSwapFile(home / "swap", cipher, "alice", 1)
    swap.write([b"kv" * 100])
    moved = EncryptedSwapFile(home / "swap", cipher, "alice", 2)
    moved.path.write_bytes(swap.path.read_bytes())
    with pytest.raises(KernelError) as err:
        moved.read()
    assert err.value.errno == "EIO" and "failed authentication" in err.value.message
    stolen = EncryptedSwapFile(home / "swap", cipher, "mallory", 1)
    stolen.path.parent.mkdir(parents=True, exist_ok=True)
    stolen.path.write_bytes(swap.path.read_bytes())
    with pytest.raises(KernelError) as err:
        stolen.read()
    assert err.value.errno == "EIO"
    with pytest.raises(KernelError) as err:
        EncryptedSwapFile(home / "swap", cipher, "alice", 3).read()
    assert err.value.errno == "ENOENT"


@pytest.mark.parametrize("handle", [-1, "../x", ".hidden", "a/b", "", True, 1.5])
def test_bad_swap_handles_are_einval(cipher, home, handle):
    with pytest.raises(KernelError) as err:
        EncryptedSwapFile(home / "swap", cipher, "alice", handle)
    assert err.value.errno == "EINVAL"
