"""A review queue of the sample line, made in about a second without torch: the edge bundle
(``tests/edge_bundle.py``) decides sample images, ``deploy review-queue`` queues them with heatmap overlays.

One part carries an id a hostile camera PC could send (a script tag); the page must show it as text.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from deploy.predictor import Predictor
from deploy.replay import replay_images
from deploy.review_queue import ReviewPolicy, build_review_queue
from tests.edge_bundle import make_bundle, sample_images

HOSTILE_ID = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


def sample_queue(folder: Path, per_class: int = 16) -> Path:
    """QUEUE_DIR of ``3 * per_class`` sample parts (every part queued: abstained first, then least confident)."""
    bundle = make_bundle(folder / "bundle")
    images = sample_images(per_class)
    hostile = images[per_class + 1]  # a scratch part

    def part_id(path: Path) -> str:
        return HOSTILE_ID if path == hostile else path.stem

    replay_images(Predictor.from_bundle(bundle), images, folder / "logs", part_id=part_id,
                  start=datetime(2026, 12, 1, 8, tzinfo=timezone.utc))
    build_review_queue([folder / "logs"], None, folder / "queue", ReviewPolicy(lowest=len(images), audit_rate=0),
                       bundle=bundle)
    return folder / "queue"
