"""Edge speed of a finished run: teacher (torch), student (torch eager), student ONNX FP32, ONNX INT8
and TensorRT where available; batch 1 and batch 32; p50/p95 and throughput; model-only and end to
end; with ratios against the teacher and against the eager student measured in the same process
(ratios hold on a noisy machine, absolute times do not).

    python benchmarks/edge_latency.py runs/sample_line/<run-id> [--iters 200] [--threads 0]

Prints a table and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402

from benchmarks.common import append_results, markdown_table  # noqa: E402
from deploy.manifest import read_manifest  # noqa: E402
from deploy.runtimes.tensorrt_backend import tensorrt_unavailable_reason  # noqa: E402
from kit.recipe.schema import LatencyConfig  # noqa: E402
from kit.rundir import read_split  # noqa: E402
from kit.verify.latency import measure  # noqa: E402
from kit.scorers import bundle_scorer, torch_scorer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime CPU threads (0: defaults)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    bundle = args.run_dir / "bundle"
    manifest = read_manifest(bundle)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    factories = [lambda: torch_scorer("teacher", args.run_dir / "teacher.pt", device),
                 lambda: torch_scorer("student", args.run_dir / "student.pt", device)]
    for fmt in manifest.artefacts:
        if fmt.startswith("tensorrt") and tensorrt_unavailable_reason() is not None:
            continue
        factories.append(lambda fmt=fmt: bundle_scorer(bundle, fmt, args.threads))
    cfg = LatencyConfig(batch=args.batch, warmup=20, iters=args.iters, threads=args.threads)
    paths = read_split(args.run_dir, "test")[0]
    result = measure(factories, manifest.preprocess, paths, cfg, takt_ms=None, log=print)
    rows = result["rows"]
    for r in rows:
        base = {m: next(x for x in rows if x["model"] == m and x["mode"] == r["mode"] and x["batch"] == r["batch"])
                for m in ("teacher", "student")}
        r["speedup_vs_teacher"] = base["teacher"]["p50_ms"] / r["p50_ms"]
        r["speedup_vs_student_eager"] = base["student"]["p50_ms"] / r["p50_ms"]
    rows.sort(key=lambda r: (r["mode"], r["batch"]))
    columns = ["model", "mode", "batch", "p50_ms", "p95_ms", "images_per_s", "speedup_vs_teacher",
               "speedup_vs_student_eager", "file_mb"]
    th = result["threads"]
    title = (f"Edge latency: {args.run_dir.name} ({manifest.extra.get('line', '?')}, "
             f"{manifest.preprocess.image_size[0]} px, {manifest.extra.get('student', {}).get('arch', '?')}), "
             f"torch threads {th['torch_threads']}, ONNX Runtime threads {th['onnxruntime_intra_op_threads']}")
    table = markdown_table(rows, columns)
    print(title)
    print(table)
    if not args.no_record:
        append_results(title, table, notes="speed-ups are p50 ratios within this one process; "
                                           "end_to_end = read + preprocess + infer + decide")


if __name__ == "__main__":
    main()
