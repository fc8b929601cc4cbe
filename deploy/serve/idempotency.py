"""``Idempotency-Key`` on ``POST /v1/inspect``: a client that lost an answer (a timeout, a dropped connection) sends
the same request again with the same key and gets the first decision back: the same ``decision_id``, the same
answer, byte for byte, with ``Idempotent-Replayed: true``; no second decision is made and no second line is logged.

- Keys are 1 to 255 visible ASCII characters (a UUID is the usual choice), scoped per API key name (``--tokens``), so
  two cells never share one; a malformed key is 400 ``bad_idempotency_key``.
- A retry must carry the same image and part id; another image under a used key is 422 ``idempotency_key_reused``.
- A retry that arrives while the first request is still being decided waits for its answer (up to the read
  timeout plus 30 s, else 409 ``idempotency_in_progress``).
- Only a decision (200) is remembered: after a 4xx or 503 the retry is decided afresh.
- Memory is bounded: ``idempotency_ttl_s`` (default 24 h) and ``idempotency_max_keys`` (10 000) answers, and
  ``MAX_ANSWER_BYTES`` in all; the oldest go first.
- Across a restart: each remembered answer is also appended to ``idempotency-YYYY-MM-DD.jsonl`` in the log folder,
  right after its decision-log line, and read back at start (those younger than the TTL). A process killed
  between the two writes (microseconds apart) would decide that part again on a retry; a power cut can lose the
  last second of both files together (the decision log is synced once a second). Without a log folder
  (``--no-log``) keys are remembered within one process only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

from deploy.intake import IntakeError
from deploy.serve.audit import Appender, json_line
from deploy.serve.intake import read_input

HEADER = "idempotency-key"
KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
JOURNAL_PREFIX = "idempotency-"
MAX_ANSWER_BYTES = 64 * 1024 * 1024
IN_PROGRESS_GRACE_S = 30.0


@dataclass
class _Entry:
    created: float  # time.time()
    body: bytes | None = None  # the 200 answer; None while the first request is being decided
    fingerprint: tuple[str, str | None] | None = None  # (image sha256, part id) of the first request
    decision_id: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class IdempotencyStore:
    def __init__(self, ttl_s: float, max_keys: int, journal_dir: str | Path | None = None) -> None:
        self.ttl_s, self.max_keys = ttl_s, max_keys
        self.journal_dir = Path(journal_dir) if journal_dir is not None else None
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._bytes = 0
        self._journal = Appender(durable=False)
        if self.journal_dir is not None:
            self._load()

    def __len__(self) -> int:
        return len(self._entries)

    # -- memory ---------------------------------------------------------------------------------------------
    def begin(self, namespace: str, key: str) -> tuple[_Entry, bool]:
        """(entry, True) for a key not seen (the caller decides, then ``finish`` or ``abandon``), else the entry."""
        self._expire()
        entry = self._entries.get((namespace, key))
        if entry is not None:
            return entry, False
        entry = _Entry(time.time())
        self._entries[(namespace, key)] = entry
        return entry, True

    def finish(self, namespace: str, key: str, entry: _Entry, body: bytes) -> None:
        """The first request's decision (its 200 answer): remembered, journalled, and handed to whoever waits."""
        self._settle((namespace, key), entry, body)
        self._write_journal(namespace, key, entry)
        self._evict()

    def _settle(self, key: tuple[str, str], entry: _Entry, body: bytes) -> None:
        answer = json.loads(body)
        entry.body, entry.decision_id = body, answer.get("decision_id")
        entry.fingerprint = (answer.get("image_sha256"), answer.get("part_id"))
        self._entries[key] = entry
        self._bytes += len(body)
        entry.done.set()

    def abandon(self, namespace: str, key: str, entry: _Entry) -> None:
        """The first request ended without a decision: forget the key, wake whoever waits (they decide afresh)."""
        if self._entries.get((namespace, key)) is entry:
            del self._entries[(namespace, key)]
        entry.done.set()

    def _expire(self) -> None:
        cutoff = time.time() - self.ttl_s
        while self._entries:
            (ns, key), oldest = next(iter(self._entries.items()))
            if oldest.created >= cutoff:
                break
            self._drop(ns, key)
        self._evict()

    def _evict(self) -> None:
        while len(self._entries) > self.max_keys or self._bytes > MAX_ANSWER_BYTES:
            ns, key = next(iter(self._entries))
            self._drop(ns, key)

    def _drop(self, namespace: str, key: str) -> None:
        entry = self._entries.pop((namespace, key))
        self._bytes -= len(entry.body or b"")

    # -- across restarts ------------------------------------------------------------------------------------
    def _write_journal(self, namespace: str, key: str, entry: _Entry) -> None:
        if self.journal_dir is None:
            return
        when = datetime.fromtimestamp(entry.created, timezone.utc)
        record = {"time": entry.created, "namespace": namespace, "key": key, "answer": entry.body.decode("utf-8")}
        try:
            self._journal.write(self.journal_dir / f"{JOURNAL_PREFIX}{when:%Y-%m-%d}.jsonl", json_line(record))
        except OSError as exc:
            print(f"error: idempotency journal in {self.journal_dir}: {exc}; key {key[:40]!r} is remembered until "
                  "a restart only", file=sys.stderr, flush=True)

    def _load(self) -> None:
        """Answers of the last ``ttl_s`` from the journal; older journal files are removed."""
        now = time.time()
        oldest_day = (datetime.fromtimestamp(now - self.ttl_s, timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d")
        for path in sorted(self.journal_dir.glob(f"{JOURNAL_PREFIX}*.jsonl")):
            if path.stem[len(JOURNAL_PREFIX):] < oldest_day:
                path.unlink(missing_ok=True)
                continue
            for raw in path.read_bytes().splitlines(keepends=True):
                self._load_line(raw, now)
        self._evict()

    def _load_line(self, raw: bytes, now: float) -> None:
        try:
            record = json.loads(raw)
            created, body = float(record["time"]), record["answer"].encode("utf-8")
            key = (record["namespace"], record["key"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return  # a crash's partial last line
        if created >= now - self.ttl_s and key not in self._entries:
            self._settle(key, _Entry(created), body)

    def close(self) -> None:
        self._journal.close()


Inspect = Callable[[], Awaitable[Any]]
ErrorResponse = Callable[[str, str, int], Any]


async def inspect_once(request: Any, store: IdempotencyStore, namespace: str, inspect: Inspect, error: ErrorResponse,
                       config: Any):
    """Run ``inspect()`` at most once per (namespace, Idempotency-Key); a retry gets the first answer."""
    key = request.headers.get(HEADER)
    if key is None:
        return await inspect()
    if not KEY.match(key):
        return error("bad_idempotency_key", "Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID, say)",
                     400)
    while True:
        entry, mine = store.begin(namespace, key)
        if mine:
            return await _first(store, namespace, key, entry, inspect)
        if entry.body is None:  # the first request with this key is still being decided: wait for its answer
            try:
                await asyncio.wait_for(entry.done.wait(), config.read_timeout_s + IN_PROGRESS_GRACE_S)
            except asyncio.TimeoutError:
                return error("idempotency_in_progress", "a request with this Idempotency-Key is still being decided; "
                             "retry shortly", 409)
            if entry.body is None:
                continue  # it ended without a decision: this request decides
        return await _replay(request, entry, error, config)


async def _first(store: IdempotencyStore, namespace: str, key: str, entry: _Entry, inspect: Inspect):
    try:
        response = await inspect()
    except BaseException:
        store.abandon(namespace, key, entry)
        raise
    if response.status_code == 200:
        store.finish(namespace, key, entry, bytes(response.body))
    else:
        store.abandon(namespace, key, entry)
    return response


async def _replay(request: Any, entry: _Entry, error: ErrorResponse, config: Any):
    """The first answer again, once the retry is seen to carry the same image and part id."""
    from starlette.responses import Response

    try:
        data, part_id = await read_input(request, config)
    except IntakeError as exc:
        return error(exc.kind, str(exc), exc.status)
    if (hashlib.sha256(data).hexdigest(), part_id) != entry.fingerprint:
        return error("idempotency_key_reused", "this Idempotency-Key was used for another image or part id; use a "
                     "new key for each part", 422)
    headers = {"Idempotent-Replayed": "true", "X-Decision-Id": entry.decision_id or ""}
    return Response(entry.body, status_code=200, media_type="application/json", headers=headers)
