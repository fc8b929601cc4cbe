"""API keys for ``deploy serve --tokens FILE``: the token file, ``deploy token add | list | revoke``, and the check
of ``Authorization: Bearer KEY`` on every request.

A key is ``isk_<key id>.<secret>``: 12 hex characters that find its line, then 256 random bits. The file holds one
JSON line per key, never the key itself::

    {"name": "cell-7", "key_id": "3f9a0c...", "scopes": ["inspect"], "hash": "scrypt$16384$8$1$<salt>$<digest>", ...}

The hash is salted scrypt (``hashlib.scrypt``, RFC 7914), compared with ``hmac.compare_digest``. Keys carry 256 random
bits, so the slow hash is a second line of defence for a copied token file, not the first; a request must not pay
50 ms for it every time. The first request with a key runs scrypt, and the station then remembers the key's sha256
for its key id: later requests cost one sha256 and one constant-time compare. A key id not in the file is refused
without any hashing, and a wrong secret that was already tried is refused from a memory of recent failures (by
sha256, ``REMEMBERED_FAILURES``).

A flood of fresh wrong secrets for a real key id must not starve inspections (60 threads of them slowed every
inspection from 3 ms to 600 ms: scrypt ran one at a time in the thread pool that decodes images). So scrypt runs on
its own thread (``TokenStore.check``, never the decode pool), and at most once per ``SLOW_CHECK_INTERVAL_S`` per
key id after a burst of ``SLOW_CHECK_BURST`` (a token bucket, so a mistyped key and then the right one both get
checked): another unverified secret for that id is refused at once, as ``invalid_key``. A check that passes refills
the bucket. The cost: a key's very first request, during a flood aimed at its key id, may be refused and must be
retried; a key already verified is never affected.

Scopes form a ladder, each including those below it: ``metrics`` (GET /metrics: a Prometheus scraper's key),
``inspect`` (inspect parts, read decisions and the model summary), ``admin`` (also reload the model).
The station re-reads the file when it changes (checked at most once a second): a key added or revoked with
``deploy token`` takes effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.atomic import write_text_atomic
from deploy.errors import DeployError

if TYPE_CHECKING:
    from deploy.serve.config import AccessConfig

SCOPES = ("metrics", "inspect", "admin")  # a ladder: each scope includes the ones before it
KEY_PREFIX = "isk_"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # 16 MB and about 50 ms per check on one core
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
REFRESH_S = 1.0  # the token file is looked at (stat) at most this often
REMEMBERED_FAILURES = 1024
SLOW_CHECK_INTERVAL_S = 1.0  # one scrypt per key id per this many seconds, after a burst of SLOW_CHECK_BURST
SLOW_CHECK_BURST = 3


@dataclass(frozen=True)
class ApiKey:
    """One line of the token file: who (``name``, what the logs and the audit record carry), what (``scopes``)."""

    name: str
    key_id: str
    scopes: tuple[str, ...]
    hash: str
    created_at: str = ""

    def allows(self, scope: str) -> bool:
        """Does this key grant ``scope``? (``admin`` grants ``inspect`` and ``metrics``; ``inspect`` grants ``metrics``.)"""
        need = SCOPES.index(scope)
        return any(SCOPES.index(s) >= need for s in self.scopes)

    def to_line(self) -> str:
        return json.dumps({"name": self.name, "key_id": self.key_id, "scopes": list(self.scopes), "hash": self.hash,
                           "created_at": self.created_at}, ensure_ascii=False) + "\n"


def hash_key(key: str, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$<salt hex>$<digest hex>`` of a key."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(key.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_key(key: str, stored: str) -> bool:
    """Constant-time check of ``key`` against a stored ``hash_key`` value."""
    try:
        algorithm, n, r, p, salt, digest = stored.split("$")
        if algorithm != "scrypt":
            return False
        got = hashlib.scrypt(key.encode("utf-8"), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(digest) // 2, maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, bytes.fromhex(digest))


def key_id_of(token: str) -> str | None:
    """The key id of a presented key, or None when it does not have the form ``isk_<id>.<secret>``."""
    if not token.startswith(KEY_PREFIX) or "." not in token or len(token) > 200:
        return None
    return token[len(KEY_PREFIX):].split(".", 1)[0] or None


def read_token_file(path: str | Path) -> dict[str, ApiKey]:
    """key id -> ``ApiKey``; a line that is not a key is an error naming the file and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DeployError(f"{path}: no such token file; create it with deploy token add --file {path} --name NAME "
                          "--scope inspect") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployError(f"{path}: cannot read the token file ({exc})") from None
    keys: dict[str, ApiKey] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            key = ApiKey(name=d["name"], key_id=d["key_id"], scopes=tuple(d["scopes"]), hash=d["hash"],
                         created_at=d.get("created_at", ""))
        except (ValueError, KeyError, TypeError):
            raise DeployError(f"{path}:{number}: not a key line (written by deploy token add)") from None
        unknown = [s for s in key.scopes if s not in SCOPES]
        if unknown or not key.scopes:
            raise DeployError(f"{path}:{number}: scopes {list(key.scopes)}: each must be one of {', '.join(SCOPES)}")
        keys[key.key_id] = key
    return keys


def _write_token_file(path: Path, keys: list[ApiKey]) -> None:
    """Atomically, then readable by its owner alone (the file holds salted hashes, never a key)."""
    write_text_atomic(path, "".join(k.to_line() for k in keys))
    os.chmod(path, 0o600)


def add_token(path: str | Path, name: str, scopes: list[str]) -> str:
    """Add a key named ``name`` with ``scopes`` to the token file (created if missing); returns the key, which is
    stored nowhere: the caller shows it once."""
    path = Path(path)
    if not NAME.match(name):
        raise DeployError(f"token name {name!r}: use 1 to 64 letters, digits, '.', '_', '@' or '-' (e.g. cell-7)")
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise DeployError(f"--scope {bad[0] if bad else ''!r}: use one of {', '.join(SCOPES)} (admin includes inspect, "
                          "inspect includes metrics)")
    keys = read_token_file(path) if path.exists() else {}
    if any(k.name == name for k in keys.values()):
        raise DeployError(f"{path}: a key named {name!r} exists; revoke it first (deploy token revoke --file {path} "
                          f"--name {name}) or pick another name")
    key_id = secrets.token_hex(6)
    token = f"{KEY_PREFIX}{key_id}.{secrets.token_urlsafe(32)}"
    entry = ApiKey(name=name, key_id=key_id, scopes=tuple(dict.fromkeys(scopes)), hash=hash_key(token),
                   created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    _write_token_file(path, [*keys.values(), entry])
    return token


def revoke_token(path: str | Path, name: str) -> None:
    """Remove the key named ``name``; a running station refuses it within a second."""
    path = Path(path)
    keys = read_token_file(path)
    kept = [k for k in keys.values() if k.name != name]
    if len(kept) == len(keys):
        raise DeployError(f"{path}: no key named {name!r} (names: {', '.join(sorted(k.name for k in keys.values())) or 'none'})")
    _write_token_file(path, kept)


def token_file_warnings(path: str | Path) -> list[str]:
    """A token file others may write lets them add a key."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return []
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return [f"{path} is writable by others, who could add a key: chmod 600 {path}"]
    return []


class TokenStore:
    """The keys of a running station, re-read when the file changes. ``quick`` answers from memory;
    ``verify`` (scrypt) runs where ``quick`` could not decide, on the store's own thread (``check``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._keys = read_token_file(self.path)
        if not self._keys:
            raise DeployError(f"{self.path}: no keys; add one with deploy token add --file {self.path} --name NAME "
                              "--scope admin")
        self._signature = self._stat()
        self._checked = time.monotonic()
        self._verified: dict[str, bytes] = {}  # key id -> sha256 of the key that passed scrypt
        self._failed: OrderedDict[bytes, None] = OrderedDict()  # sha256 of keys that failed it, most recent last
        self._slow_budget: dict[str, tuple[float, float]] = {}  # key id -> (slow checks left, when counted)
        self._lock = threading.Lock()  # guards the caches and the keys
        self._slow = threading.Lock()  # one scrypt at a time
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="key-check")  # never the pool that decodes images

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            s = self.path.stat()
        except OSError:
            return None
        return s.st_mtime_ns, s.st_size, s.st_ino

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < REFRESH_S:
            return
        self._checked = now
        signature = self._stat()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            keys = read_token_file(self.path)
        except DeployError as exc:  # keep serving with the keys read before, and say why
            print(f"error: {exc}; keeping the {len(self._keys)} keys read before", file=sys.stderr, flush=True)
            return
        with self._lock:  # a key whose line did not change stays verified: a flood cannot lock it out after an edit
            kept = {i: d for i, d in self._verified.items() if i in keys and self._keys.get(i) == keys[i]}
            self._keys, self._verified, self._failed = keys, kept, OrderedDict()

    def quick(self, token: str) -> tuple[ApiKey | None, bool]:
        """(key or None, decided). Undecided: a well-formed key of a known id not seen before; call ``verify``."""
        self._refresh()
        key_id = key_id_of(token)
        with self._lock:
            key = self._keys.get(key_id) if key_id else None
            if key is None:
                return None, True
            digest = hashlib.sha256(token.encode("utf-8")).digest()
            known = self._verified.get(key.key_id)
            if known is not None and hmac.compare_digest(known, digest):
                return key, True
            if digest in self._failed:
                return None, True
            if not self._take_slow_check(key.key_id):
                return None, True  # this key id's slow checks are spent for now: refused, unhashed
        return None, False

    def _take_slow_check(self, key_id: str) -> bool:
        """A token bucket per key id (called with the lock held): ``SLOW_CHECK_BURST`` at most, one more each
        ``SLOW_CHECK_INTERVAL_S``."""
        now = time.monotonic()
        left, at = self._slow_budget.get(key_id, (float(SLOW_CHECK_BURST), now))
        left = min(float(SLOW_CHECK_BURST), left + (now - at) / SLOW_CHECK_INTERVAL_S)
        if left < 1.0:
            self._slow_budget[key_id] = (left, now)
            return False
        self._slow_budget[key_id] = (left - 1.0, now)
        return True

    def check(self, token: str) -> "Future[ApiKey | None]":
        """``verify`` on the store's own thread: a flood of bad keys waits there, never in the decode pool."""
        return self._checker.submit(self.verify, token)

    def close(self) -> None:
        self._checker.shutdown(wait=False, cancel_futures=True)

    def verify(self, token: str) -> ApiKey | None:
        """The slow check (scrypt); remembers the answer for ``quick``."""
        key_id = key_id_of(token)
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        with self._slow:
            with self._lock:
                key = self._keys.get(key_id) if key_id else None
            ok = key is not None and verify_key(token, key.hash)
            with self._lock:
                if ok:
                    self._verified[key.key_id] = digest
                    self._slow_budget.pop(key.key_id, None)  # the owner's check passed: the bucket is full again
                else:
                    self._failed[digest] = None
                    while len(self._failed) > REMEMBERED_FAILURES:
                        self._failed.popitem(last=False)
        return key if ok else None


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def access_warnings(host: str, access: "AccessConfig") -> list[str]:
    """What ``deploy serve`` says at start about a station others can reach."""
    warnings = []
    if not is_loopback(host) and access.tokens_file is None:
        warnings.append(f"listening on {host} without --tokens: anyone who reaches this port can inspect parts, read "
                        "decisions and switch the model (deploy token add, then deploy serve --tokens FILE)")
    if not is_loopback(host) and access.tokens_file is not None and access.tls_cert is None:
        warnings.append(f"listening on {host} without --tls-cert/--tls-key: API keys and images cross the network in "
                        "clear text")
    if access.tokens_file is not None:
        warnings += token_file_warnings(access.tokens_file)
    return warnings
