"""Training throughput: images/s of a teacher step, a KD student step and a CRLD student step,
with the share of step time spent waiting for data, against a compute-only run on cached tensors
(the pipeline's ceiling).

    python benchmarks/train_throughput.py                       # sample line, CPU here
    python benchmarks/train_throughput.py --recipe recipes/x-sdd.yaml --steps 30 --device cuda

Prints a table and appends it, with the command, versions and machine, to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from benchmarks.common import append_results, markdown_table
from kit.data import decode_line, index_line, preprocess_spec
from kit.data.dataset import ViewDataset
from kit.distill.methods import get_method
from kit.models import create_model
from kit.recipe import load_recipe
from kit.distill.methods import CRLDConfig, KDConfig
from kit.device import resolve_device, resolve_workers
from kit.views import build_view

REPO = Path(__file__).resolve().parents[1]
WARMUP = 3


def _steps(kind: str, recipe, splits, spec, pipelines, setup, steps: int, workers: int, cached: bool) -> dict[str, Any]:
    cfg = recipe.teacher if kind == "teacher" else recipe.student
    views = ["weak"] if kind in ("teacher", "kd") else ["weak", "strong"]
    num_classes, chans = len(recipe.data.classes or []) or int(splits["train"].labels.max()) + 1, spec.num_channels
    torch.manual_seed(0)
    model = create_model(cfg.arch, num_classes, chans).to(setup.device)
    teacher = None
    if kind != "teacher":
        teacher = create_model(recipe.teacher.arch, num_classes, chans).to(setup.device).eval()
    if setup.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dataset = ViewDataset(splits["train"], spec, pipelines, views, seed=0)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=setup.device.type == "cuda", persistent_workers=workers > 0)
    batches = []
    if cached:  # the ceiling: the same tensors, already made, already on the device
        first = next(iter(loader))
        batches = [[t.to(setup.device) for t in first]] * (steps + WARMUP)
    method = get_method("crld" if kind == "crld" else "kd") if kind != "teacher" else None
    method_cfg = CRLDConfig() if kind == "crld" else KDConfig()

    def step(batch) -> None:
        *inputs, target = [t.to(setup.device, non_blocking=True) for t in batch]
        with setup.autocast():
            outs = {name: model(x) for name, x in zip(views, inputs)}
            if method is None:
                loss = F.cross_entropy(outs["weak"], target)
            else:
                with torch.inference_mode():
                    t_all = teacher(torch.cat(inputs)).float()
                t_logits = dict(zip(views, t_all.clone().split(len(target))))
                loss, _ = method.loss({k: v.float() for k, v in outs.items()}, t_logits, target, method_cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    it = iter(batches) if cached else _forever(loader)
    for _ in range(WARMUP):  # cudnn autotune, allocator, worker start
        step(next(it))
    wait = compute = 0.0
    images = 0
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        step(batch)
        if setup.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        wait, compute, images = wait + (t1 - t0), compute + (t2 - t1), images + len(batch[-1])
    return {"step": kind, "pipeline": "cached tensors" if cached else f"loader ({workers} workers)",
            "images_per_s": images / (wait + compute), "data_wait_fraction": wait / (wait + compute),
            "ms_per_step": 1000 * (wait + compute) / steps}


def _forever(loader):
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "sample_line.yaml"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    setup = resolve_device(args.device)
    workers = resolve_workers(args.workers if args.workers == "auto" else int(args.workers), setup)
    spec = preprocess_spec(recipe)
    splits, _ = decode_line(index_line(recipe), recipe, spec)
    pipelines = {v: build_view(getattr(recipe.views, v), f"views.{v}", recipe.data.image_size, spec.num_channels)
                 for v in ("weak", "strong")}
    rows = []
    for kind in ("teacher", "kd", "crld"):
        for cached in (False, True):
            rows.append(_steps(kind, recipe, splits, spec, pipelines, setup, args.steps, workers, cached))
    for r in rows:
        loader = next(x for x in rows if x["step"] == r["step"] and x["pipeline"] != "cached tensors")
        ceiling = next(x for x in rows if x["step"] == r["step"] and x["pipeline"] == "cached tensors")
        r["of_ceiling"] = loader["images_per_s"] / ceiling["images_per_s"] if r is loader else 1.0
    columns = ["step", "pipeline", "images_per_s", "ms_per_step", "data_wait_fraction", "of_ceiling"]
    title = (f"Training throughput: {recipe.line.name}, {recipe.data.image_size[0]} px, teacher {recipe.teacher.arch} "
             f"(batch {recipe.teacher.batch_size}), student {recipe.student.arch} (batch {recipe.student.batch_size}), "
             f"{setup.describe()}, {args.steps} steps")
    table = markdown_table(rows, columns)
    print(title)
    print(table)
    if not args.no_record:
        append_results(title, table, notes="kd: one view + teacher; crld: weak and strong views + teacher on both, "
                                           "one batched teacher pass. data_wait_fraction: time blocked on the loader / step time.")


if __name__ == "__main__":
    main()
