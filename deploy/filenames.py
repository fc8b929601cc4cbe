"""File names from the line, which need not be UTF-8.

A Windows camera PC writing ``Prüfteil_ä.png`` in Latin-1 to a share mounted without a UTF-8 charset,
or a FAT stick, gives names whose bytes are not UTF-8. On Linux Python hands them over as ``str`` with
lone surrogates (``os.fsdecode``: the byte 0xFC becomes U+DCFC), which open, rename and stat take
back unchanged, but which no UTF-8 encoder writes: a JSON record, a CSV row or a log line with such a
name raises ``UnicodeEncodeError``.

So a name has two forms here: the exact one, kept for the file system (``name_to_json`` /
``name_from_json`` carry it through JSON as the hex of its bytes, and only when it needs that), and a
readable one for records and messages (``readable``): valid UTF-8, each byte that is not UTF-8
written as ``\\xNN`` (``Pr\\xfcfteil_\\xe4.png``).
"""

from __future__ import annotations

import os
from typing import Any


def readable(text: str) -> str:
    """``text`` as valid UTF-8: the bytes a surrogate-escaped name stands for as ``\\xNN``; any other lone
    surrogate as ``\\udXXX``. Text that is valid already comes back unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate outside U+DC80..U+DCFF: not from a file name
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def name_to_json(entry: dict[str, Any], key: str, name: str) -> None:
    """``entry[key]``: the readable name; ``entry[key + "_bytes"]``: the hex of its exact bytes, when the
    readable form is not the name itself."""
    entry[key] = readable(name)
    if entry[key] != name:
        entry[f"{key}_bytes"] = os.fsencode(name).hex()


def name_from_json(entry: dict[str, Any], key: str) -> str:
    """The exact name ``name_to_json`` stored (an entry written before names had two forms: ``entry[key]``)."""
    raw = entry.get(f"{key}_bytes")
    return os.fsdecode(bytes.fromhex(raw)) if raw else entry[key]
