"""Block hashes for prefix caching, and the per-tenant salts that keep tenants apart.

A FULL block's hash chains its parent's hash, its own token ids and its tenant's salt::

    h0 = H(None, tokens[0:B],  salt)      B = block_size
    h1 = H(h0,   tokens[B:2B], salt)
    h2 = H(h1,   tokens[2B:3B], salt)     ... so h_i names the whole prefix tokens[0:(i+1)B]

Two blocks with equal hashes hold the same KV (same model, same prefix, same tenant), so the
second process may share the first one's block instead of recomputing it. Partial blocks are
never hashed: their contents still change.

Why a salt: without one, a tenant could learn that another tenant's prompt started with some
text by timing its own prefill (a hit is faster). The kernel derives one secret salt per tenant
(``TenantSalts``); since the salt enters every block's hash, tenants never share cached blocks
even for identical tokens.

Why blake2b and not ``hash()``: Python's ``hash`` is randomised per run and only 64 bits. The
encoding below is length-prefixed, so no two different (parent, tokens, salt) triples feed the
same bytes to the hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import sys
from array import array
from collections.abc import Iterator, Sequence

BlockHash = bytes  # a HASH_BYTES-byte blake2b digest naming a full block and its whole prefix
HASH_BYTES = 32  # 256-bit digests: accidental collisions are out of the question
_PERSON = b"llmos-kv-block"  # blake2b personalisation: these digests mean nothing elsewhere


def hash_block(parent: BlockHash | None, token_ids: Sequence[int], salt: bytes) -> BlockHash:
    """Hash one full block.

    Args:
        parent: the hash of the previous block of the sequence, or None for block 0.
        token_ids: the block's token ids (exactly block_size of them; not checked here).
        salt: the tenant's secret salt (``TenantSalts.salt``).

    Returns:
        A HASH_BYTES-byte digest, identical across runs and machines for the same inputs.
    """
    return hash_blocks(parent, token_ids, len(token_ids), salt)[0]


def hash_blocks(parent: BlockHash | None, token_ids: Sequence[int], block_size: int, salt: bytes) -> list[BlockHash]:
    """Hash consecutive full blocks at once: ``token_ids`` holds whole blocks, the first
    of which follows ``parent``. Equal to chaining ``hash_block`` over them, in a fraction of
    the time: the tokens are packed in one call, not one per block (this runs for every full
    block of every process)."""
    packed = array("q", token_ids)
    if sys.byteorder != "little":
        packed.byteswap()
    data = memoryview(packed.tobytes())
    # What every block's bytes share after the parent: the salt and the block length.
    middle = b"".join((_LENGTH.pack(len(salt)), salt, _LENGTH.pack(block_size)))
    stride = 8 * block_size
    head = b"\x00" if parent is None else b"\x01" + parent
    hashes = []
    offsets = range(0, len(data) - stride + 1, stride) if stride else (0,)  # size 0: one empty block
    for offset in offsets:
        h = _BLANK.copy()  # copying a keyed-up state is cheaper than setting one up per block
        h.update(head)
        h.update(middle)
        h.update(data[offset : offset + stride])
        digest = h.digest()
        hashes.append(digest)
        head = b"\x01" + digest
    return hashes


_LENGTH = struct.Struct("<Q")
_BLANK = hashlib.blake2b(digest_size=HASH_BYTES, person=_PERSON)  # never updated: only copied


def iter_block_hashes(
    token_ids: Sequence[int],
    block_size: int,
    salt: bytes,
    *,
    parent: BlockHash | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[BlockHash]:
    """Yield the hashes of the full blocks ``start, start + 1, ...`` of a sequence, lazily.

    Lazy so that a prefix lookup stops hashing at its first miss.

    Args:
        token_ids: the whole sequence (only the blocks asked for are read).
        block_size: tokens per block.
        salt: the tenant's salt.
        parent: the hash of block ``start - 1`` (None when ``start`` is 0).
        start: the first block index to hash.
        stop: one past the last block index; defaults to the number of full blocks, and is
            clamped to it: a partial block is never hashed.
    """
    num_full = len(token_ids) // block_size
    stop = num_full if stop is None else min(stop, num_full)
    for i in range(start, stop):
        parent = hash_block(parent, token_ids[i * block_size : (i + 1) * block_size], salt)
        yield parent


class TenantSalts:
    """The kernel's per-tenant salts: ``salt(tenant)`` is stable for one kernel boot.

    Salts are derived (HMAC-blake2b of the tenant name under a boot secret), so nothing needs
    storing and a tenant always gets the same salt while the kernel runs. Tests may pass a fixed
    ``secret`` for reproducible salts.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secrets.token_bytes(32) if secret is None else secret
        self._cache: dict[str, bytes] = {}  # the planner asks every step; an HMAC costs ~20 us

    def salt(self, tenant: str) -> bytes:
        """The salt of ``tenant`` (16 bytes)."""
        salt = self._cache.get(tenant)
        if salt is None:
            salt = self._cache[tenant] = hmac.new(self._secret, tenant.encode(), hashlib.blake2b).digest()[:16]
        return salt
