"""``GET /v1/decisions/{decision_id}`` and ``GET /v1/decisions?part_id=P&limit=N``: decisions read back from the
decision log, for the line software that lost an answer or wants a part's history.

The log is the source (``deploy.decision_log``: one JSON-lines file per UTC day), searched newest day first, with a
byte-level match before a line is parsed, in a thread, two searches at once; a search by part
id stops at ``limit`` (default 100, at most 1000). 404 ``not_found`` when the log holds no such decision, 404
``decision_log_off`` when the station writes no log (``--no-log``), 400 ``bad_request`` for a malformed id.

No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at runtime.
"""

import json
import re
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from deploy.decision_log import LOG_PREFIX, LOG_SUFFIX, DecisionRecord
from deploy.serve.access import access_of
from deploy.serve.state import StationState, json_response, station_of

DECISION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000


def build_router():
    from fastapi import APIRouter, Request
    from fastapi.responses import Response

    router = APIRouter()

    @router.get("/v1/decisions/{decision_id}")
    async def decision_by_id(request: Request, decision_id: str) -> Response:
        return await find_decision(request, decision_id)

    @router.get("/v1/decisions")
    async def decisions_of_part(request: Request) -> Response:
        return await find_part(request)

    return router


async def find_decision(request: Any, decision_id: str):
    station = station_of(request)
    if not DECISION_ID.match(decision_id):
        return station.error_response("bad_request", "a decision id is 1 to 64 letters, digits, '-' or '_' (the "
                                      "decision_id of an answer)", 400)
    folder = _log_folder(station)
    if folder is None:
        return _no_log(station)
    needle = b'"decision_id":' + json.dumps(decision_id).encode()
    found = await _search(request, folder, needle, lambda r: r.decision_id == decision_id, 1)
    if not found:
        return station.error_response("not_found", f"no decision {decision_id} in the decision log ({folder})", 404)
    return json_response(_shown(found[0]))


async def find_part(request: Any):
    station, query = station_of(request), request.query_params
    part_id, limit = query.get("part_id"), query.get("limit", str(DEFAULT_LIMIT))
    if not part_id:
        return station.error_response("bad_request", "give ?part_id=P (or GET /v1/decisions/DECISION_ID)", 400)
    if not is_ascii_number(limit) or not 1 <= int(limit) <= MAX_LIMIT:
        return station.error_response("bad_request", f"limit must be a whole number from 1 to {MAX_LIMIT} (got "
                                      f"{limit[:20]!r})", 400)
    folder = _log_folder(station)
    if folder is None:
        return _no_log(station)
    needle = b'"part_id":' + json.dumps(part_id, ensure_ascii=False).encode("utf-8", "replace")
    found = await _search(request, folder, needle, lambda r: r.part_id == part_id, int(limit) + 1)
    if not found:
        return station.error_response("not_found", f"no decision for part {part_id[:80]!r} in the decision log", 404)
    return json_response({"part_id": part_id, "decisions": [_shown(r) for r in found[: int(limit)]],
                          "truncated": len(found) > int(limit)})


def is_ascii_number(text: str) -> bool:
    """ASCII digits only, at most 9 of them. ``str.isdigit`` also takes U+00B2 (superscript two) and other digits that
    ``int`` refuses, which made ``?limit=%C2%B2`` a 500."""
    return 0 < len(text) <= 9 and text.isascii() and text.isdigit()


def _log_folder(station: StationState) -> Path | None:
    return Path(station.config.log_dir) if station.config.log_dir is not None else None


def _no_log(station: StationState):
    return station.error_response("decision_log_off", "this station writes no decision log (--no-log): there is "
                                  "nothing to read decisions from", 404)


def _shown(record: DecisionRecord) -> dict[str, Any]:
    return asdict(record)


async def _search(request: Any, folder: Path, needle: bytes, match: Callable[[DecisionRecord], bool],
                  limit: int) -> list[DecisionRecord]:
    from starlette.concurrency import run_in_threadpool

    async with access_of(request).search_slots:  # reading the log from disk: the cores are for inspecting
        return await run_in_threadpool(search_log, folder, needle, match, limit)


def search_log(folder: Path, needle: bytes, match: Callable[[DecisionRecord], bool], limit: int) -> list[DecisionRecord]:
    """Up to ``limit`` records that ``match``, newest first: files by day, newest day first, each streamed (memory
    holds ``limit`` records, never a file). A line is parsed only when it holds ``needle`` (the field as the log
    writes it); a crash's partial last line is skipped."""
    found: list[DecisionRecord] = []
    for path in sorted(folder.glob(f"{LOG_PREFIX}*{LOG_SUFFIX}"), reverse=True):
        newest: deque[DecisionRecord] = deque(maxlen=limit - len(found))
        try:
            with open(path, "rb") as fh:
                for raw in fh:
                    if needle in raw and raw.endswith(b"\n"):
                        record = _parse(raw)
                        if record is not None and match(record):
                            newest.append(record)
        except OSError:
            continue
        found.extend(reversed(newest))
        if len(found) >= limit:
            break
    return found


def _parse(raw: bytes) -> DecisionRecord | None:
    try:
        d = json.loads(raw)
        return DecisionRecord.from_dict(d) if isinstance(d, dict) else None
    except (ValueError, TypeError):
        return None
