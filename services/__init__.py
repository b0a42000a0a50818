"""llmos.services: message-passing servers the kernel supervises (DESIGN.md, Services).

Layout (each server keeps its state under ``LLMOS_HOME``, see ``home.py``, so that a restart
by the supervisor finds it again):

- security.py      the security server (``SecurityServer``): the ops, thin shims over
  - keys.py          local Ed25519 key pair, trusted public keys, sign/verify
  - manifest.py      model manifests (sha256 of every checkpoint file) and their signatures
  - crypto.py        AES-GCM at rest under per-tenant HKDF keys; encrypted KV swap files;
                     per-version model store keys
  - sealed_manifest.py  manifests of an encrypted store version (hashed by decrypting in memory)
  - capabilities.py  HMAC-signed capability handles, revocation
  - audit.py         the hash-chained, signed audit log
  - securefiles.py   crash-safe writes and 0600 secrets
- models.py        the model manager (``ModelServer``): store, versions, residency, import --encrypt
- resources.py     tenant quotas and telemetry (``ResourceServer``)
- swap_disk.py     ``EncryptedDiskSwap``: torch drivers' swapped KV blocks on disk, per-tenant keys
- home.py          ``llmos_home()``: where state lives
"""
