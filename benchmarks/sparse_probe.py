"""Can a classifier trained from scratch learn the sparse line at all? (issue 19)

The sparse line has about 23 training images per defect class, defects 1-4 px wide, 90 % good parts.
``kit run`` on its scaffold stops at the teacher check: the teacher never beats calling every part good.
This probe trains one model on the line's training split with the kit's own data path (decode, the
recipe's weak view, class-balanced batches) and prints, per epoch, the training accuracy and the
validation balanced accuracy and macro-F1, so architectures and inputs can be compared quickly.

    python benchmarks/sparse_probe.py --arch resnet18                       # what the scaffold trained before
    python benchmarks/sparse_probe.py --arch local --pool max --flatten     # small receptive field
    python benchmarks/sparse_probe.py --arch local_cnn_m --pool max         # the same as a kit architecture
    python benchmarks/sparse_probe.py --arch tiled:resnet18:32              # resnet18 on 32 px tiles, max over tiles
    python benchmarks/sparse_probe.py --arch local_cnn_m --pool max --device cuda --seed 1 --ema 0.99 --rot90

``local``: five 3x3 conv layers (stride 4 in all, a receptive field of about 20 px) and a global pool.
``tiled:ARCH:PX``: ARCH on PX-px tiles, each standardised, the image's class from its tiles (defect classes
by their most confident tile, the good-part class by its least). ``--flatten``: each image minus its
Gaussian background (sigma 4 px), x3 (``local_cnn_*`` do this inside the graph). ``--ema``: score an exponential
moving average of the weights; ``--rot90``: random 90 deg turns on top of the weak view. The last line gives the
test split's macro-F1 and escaped share (defective parts called good) at the epoch chosen on validation and at the
last epoch. Validation and test have 5 images per defect class, so read the trend, not the third digit. Nothing is
recorded in RESULTS.md (the probe tables there were written by hand).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import kit.models  # noqa: E402,F401  (registers local_cnn_*)
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from kit.data import ViewDataset, decode_line, index_line, preprocess_spec  # noqa: E402
from kit.data.balance import balanced_order  # noqa: E402
from kit.evaluate import classification_metrics  # noqa: E402
from kit.recipe import load_recipe  # noqa: E402
from kit.views import build_view  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPE, DATA = REPO / "recipes" / "sparse_line.yaml", REPO / "sample_data" / "sparse_line"


class Tiled(nn.Module):
    """``base`` on ``tile``-px tiles, each standardised; defect classes take their most confident tile, the
    good-part class its least confident one (a part is good only when every tile is)."""

    def __init__(self, base: str, tile: int, classes: int, ok_index: int, pool: str) -> None:
        super().__init__()
        self.net = timm.create_model(base, num_classes=classes, in_chans=1, global_pool=pool)
        self.tile, self.classes, self.ok_index = tile, classes, ok_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.tile
        tiles = x.reshape(b, c, h // t, t, w // t, t).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, t, t)
        tiles = (tiles - tiles.mean((2, 3), keepdim=True)) / (tiles.std((2, 3), keepdim=True) + 0.05)
        log_p = torch.log_softmax(self.net(tiles), 1).reshape(b, -1, self.classes)
        out = log_p.max(1).values.clone()
        out[:, self.ok_index] = log_p[:, :, self.ok_index].min(1).values
        return out


def local_cnn(classes: int, pool: str) -> nn.Module:
    def block(i: int, o: int, s: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(1, 32, 1), *block(32, 32, 2), *block(32, 64, 1), *block(64, 64, 2), *block(64, 96, 1),
                         nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(96, classes))


def flatten(images: np.ndarray) -> None:
    """In place: each uint8 NxHxWx1 image minus its Gaussian background, x3 around mid-grey."""
    for i in range(len(images)):
        im = images[i, :, :, 0].astype(np.float32)
        images[i, :, :, 0] = np.clip((im - cv2.GaussianBlur(im, (0, 0), 4)) * 3 + 128, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18", help="a timm name, local, or tiled:ARCH:PX")
    parser.add_argument("--pool", choices=["avg", "max"], default="avg")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    parser.add_argument("--flatten", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema", type=float, default=0.0, help="evaluate an exponential moving average of the weights (decay per step)")
    parser.add_argument("--rot90", action="store_true", help="also rotate training images by a random multiple of 90 deg")
    args = parser.parse_args()
    device = torch.device(args.device)
    if not DATA.is_dir():
        from kit.sample_line import generate_line

        generate_line("sparse", DATA)
    recipe = load_recipe(RECIPE)
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"image_size": (args.image_size,) * 2})})
    spec = preprocess_spec(recipe)
    index = index_line(recipe)
    splits, _ = decode_line(index, recipe, spec)
    if args.flatten:
        for split in splits.values():
            flatten(split.images)
    torch.manual_seed(args.seed)
    classes = len(index.classes)
    if args.arch.startswith("tiled:"):
        _, base, tile = args.arch.split(":")
        model = Tiled(base, int(tile), classes, index.classes.index(recipe.line.ok_class), args.pool)
    elif args.arch == "local":
        model = local_cnn(classes, args.pool)
    else:
        model = timm.create_model(args.arch, num_classes=classes, in_chans=1, global_pool=args.pool)
    weak = build_view(recipe.views.weak, "views.weak", spec.image_size, 1)
    train = ViewDataset(splits["train"], spec, {"weak": weak}, ["weak"], seed=args.seed)
    model = model.to(device)
    optimizer = (torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
                 if args.optimizer == "sgd" else torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05))
    batch = 32
    steps = len(splits["train"]) // batch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps, pct_start=0.2)
    rng = np.random.default_rng(args.seed)
    val_x, val_y = splits["val"].tensors(spec), splits["val"].labels
    test_x, test_y = splits["test"].tensors(spec), splits["test"].labels
    best, at_best = (0.0, 0.0), None
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema),
                                               use_buffers=True) if args.ema else None)
    ok = index.classes.index(recipe.line.ok_class)

    def predict(x: torch.Tensor) -> np.ndarray:
        scorer = (ema or model).eval()
        with torch.no_grad():
            return torch.cat([scorer(x[i:i + 64].to(device)).cpu() for i in range(0, len(x), 64)]).argmax(1).numpy()

    def escaped(pred: np.ndarray) -> float:
        return float(np.mean(pred[test_y != ok] == ok))

    for epoch in range(args.epochs):
        started, correct, seen, loss_sum = time.time(), 0, 0, 0.0
        model.train()
        order = balanced_order(splits["train"].labels, rng)
        for step in range(steps):
            items = [train[(epoch, int(i))] for i in order[step * batch:(step + 1) * batch]]
            x, y = torch.stack([it[0] for it in items]).to(device), torch.tensor([it[1] for it in items]).to(device)
            if args.rot90:
                turns = rng.integers(0, 4, len(x))
                x = torch.stack([torch.rot90(xi, int(k), (1, 2)) for xi, k in zip(x, turns)])
            out = model(x)
            loss = F.cross_entropy(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if ema is not None:
                ema.update_parameters(model)
            correct, seen, loss_sum = correct + int((out.argmax(1) == y).sum()), seen + len(y), loss_sum + float(loss.detach()) * len(y)
        model.eval()
        m = classification_metrics(val_y, predict(val_x), index.classes)
        if (m["balanced_accuracy"], m["macro_f1"]) > best:
            best = (m["balanced_accuracy"], m["macro_f1"])
            pred = predict(test_x)
            at_best = classification_metrics(test_y, pred, index.classes), escaped(pred)
        print(f"{args.arch} {args.pool} {args.image_size} px{' flattened' if args.flatten else ''} epoch {epoch + 1}: "
              f"loss {loss_sum / seen:.3f}, train accuracy {correct / seen:.3f}, val balanced accuracy "
              f"{m['balanced_accuracy']:.3f}, val macro-F1 {m['macro_f1']:.3f} ({time.time() - started:.1f} s)", flush=True)
    last = predict(test_x)
    print(f"best val balanced accuracy {best[0]:.3f} (macro-F1 then {best[1]:.3f}); test at that epoch: balanced "
          f"accuracy {at_best[0]['balanced_accuracy']:.3f}, macro-F1 {at_best[0]['macro_f1']:.3f}, escaped {at_best[1]:.3f}; "
          f"test at the last epoch: macro-F1 {classification_metrics(test_y, last, index.classes)['macro_f1']:.3f}, "
          f"escaped {escaped(last):.3f}")


if __name__ == "__main__":
    main()
