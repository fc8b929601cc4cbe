"""The line's data: index, split, decode once, serve views."""

from kit.data.dataset import (DecodedSplit, PairedViewDataset, ViewDataset, decode_line, decode_split, decode_teacher_splits,
                              preprocess_spec, teacher_preprocess_spec)
from kit.data.index import LineIndex, Sample, index_line

__all__ = ["DecodedSplit", "LineIndex", "PairedViewDataset", "Sample", "ViewDataset", "decode_line", "decode_split",
           "decode_teacher_splits", "index_line", "preprocess_spec", "teacher_preprocess_spec"]
