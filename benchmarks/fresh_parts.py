"""A bundle on parts it has never seen: new images of a synthetic line, drawn with another seed (issue 19).

The sparse line's test split has 5 images per defect class, so one image moves a class's recall by 0.2 and a
"0 of 5 escaped" bounds the escape rate only below 52 %. The generators are deterministic per (seed, class, index),
so a different seed gives as many new parts as wanted, from the same camera model. This scores a bundle on them
through the edge side's own reading and preprocessing (PNG files, ``deploy.preprocess``, ``deploy.predictor``), at
argmax, and prints per-class recall with 95 % Clopper-Pearson intervals, macro-F1 and the escaped share (appended to
RESULTS.md unless ``--no-record``). Macro-F1 depends on the mix of classes (precision does): say which mix.

    python benchmarks/fresh_parts.py runs/sparse_line/<run>/bundle --line sparse --per-class 100 --ok 300 --seed 7
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np  # noqa: E402

from benchmarks.common import append_results, markdown_table  # noqa: E402
from deploy.predictor import Predictor  # noqa: E402
from deploy.preprocess import load_and_preprocess  # noqa: E402
from kit.data.index import images_in  # noqa: E402
from kit.evaluate import classification_metrics  # noqa: E402
from kit.sample_line import SAMPLE_LINES, generate_line  # noqa: E402
from kit.verify.escapes import escape_table  # noqa: E402
from kit.verify.stats import rate  # noqa: E402


def _cells(r: dict) -> dict[str, str]:
    return {"recall": f"{r['k']}/{r['n']} = {r['rate']:.3f}", "95 % interval": f"{r['low']:.3f}-{r['high']:.3f}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--line", default="sparse", choices=sorted(SAMPLE_LINES))
    parser.add_argument("--per-class", type=int, default=100, help="new images per defect class")
    parser.add_argument("--ok", type=int, default=300, help="new images of the good-part class")
    parser.add_argument("--ok-class", default="ok")
    parser.add_argument("--seed", type=int, default=7, help="not the seed the training data was made with (0)")
    parser.add_argument("--runtime", default="onnx")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.seed == 0:
        parser.error("--seed 0 re-draws the training data's own images; pick another seed")
    predictor = Predictor.from_bundle(args.bundle, args.runtime)
    classes = list(predictor.manifest.classes)
    counts = {c: (args.ok if c == args.ok_class else args.per_class) for c in classes}
    with tempfile.TemporaryDirectory() as tmp:
        generate_line(args.line, Path(tmp), counts=counts, seed=args.seed)
        paths = [(p, k) for k, c in enumerate(classes) for p in images_in(Path(tmp) / c)]
        spec = predictor.manifest.preprocess
        probs = np.concatenate([predictor.probabilities(np.stack([load_and_preprocess(p, spec) for p, _ in paths[s:s + 64]]))
                                for s in range(0, len(paths), 64)])
    labels = np.array([k for _, k in paths])
    pred = probs.argmax(1)
    m = classification_metrics(labels, pred, classes)
    ok = classes.index(args.ok_class) if args.ok_class in classes else None
    escapes = escape_table(probs, labels, classes, ok, threshold=None)  # at argmax: every part decided by the model
    rows = []
    for k, c in enumerate(classes):
        row = {"class": c, "n": int((labels == k).sum()),
               **_cells(rate(int(((labels == k) & (pred == k)).sum()), int((labels == k).sum())))}
        if escapes is not None and k != ok:
            row[f"called {args.ok_class}"] = escapes["classes"][c]["k"]
        rows.append(row)
    if escapes is not None:
        defect_rows = [r for r in escapes["classes"].values() if r["kind"] == "escape"]
        total = rate(sum(r["k"] for r in defect_rows), sum(r["n"] for r in defect_rows))
        rows.append({"class": f"escaped (defective called {args.ok_class})", "n": total["n"], **_cells(total)})
    rows.append({"class": "macro-F1 (this mix)", "n": len(labels), "recall": f"{m['macro_f1']:.3f}", "95 % interval": ""})
    table = markdown_table(rows, ["class", "n", "recall", "95 % interval"] + ([f"called {args.ok_class}"] if escapes else []))
    title = f"Fresh parts: {args.bundle} on {len(labels)} new {args.line} parts (seed {args.seed})"
    print(title)
    print(table)
    if not args.no_record:
        append_results(title, table, notes=f"runtime {args.runtime}, argmax; {args.per_class} new images per defect class and "
                       f"{args.ok} of {args.ok_class} (a mix chosen for the recall intervals, not production's); "
                       "intervals are Clopper-Pearson")


if __name__ == "__main__":
    main()
