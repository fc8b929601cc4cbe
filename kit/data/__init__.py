"""The line's data: index, split, decode once, serve views.

The public names load lazily: ``kit.data.index`` (file listing, no torch) is used by ``kit ingest``
without importing the torch datasets."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DecodedSplit": "kit.data.dataset", "PairedViewDataset": "kit.data.dataset", "ViewDataset": "kit.data.dataset", "decode_line": "kit.data.dataset", "decode_split": "kit.data.dataset", "decode_teacher_splits": "kit.data.dataset", "preprocess_spec": "kit.data.dataset", "teacher_preprocess_spec": "kit.data.dataset",
    "LineIndex": "kit.data.index", "Sample": "kit.data.index", "index_line": "kit.data.index",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
