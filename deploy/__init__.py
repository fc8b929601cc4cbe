"""Edge side of the inspection kit: torch-free preprocessing, runtimes and the Predictor.

Imports only what the base install (``pip install inspection-kit``) provides: numpy, OpenCV,
onnxruntime, typer (the CLI) and scipy (monitor); optionally, inside functions, tensorrt and
cuda-python (the ``gpu`` extra) and matplotlib (``plot``, for drift.png). Never imports ``kit``,
torch, timm or albumentations; tests/test_edge_install.py checks both.

    predictor = Predictor.from_bundle("runs/sample_line/RUN/bundle")
    decisions = predictor.predict(["part_0001.png", "part_0002.png"])   # or an image array
"""

from deploy.errors import DeployError, ImageReadError
from deploy.manifest import BundleError, Manifest, read_manifest
from deploy.predictor import Decision, Predictor
from deploy.preprocess import PreprocessSpec, prepare_image, preprocess, preprocess_batch, read_image, to_tensor

__all__ = [
    "BundleError", "Decision", "DeployError", "ImageReadError", "Manifest", "Predictor", "PreprocessSpec",
    "prepare_image", "preprocess", "preprocess_batch", "read_image", "read_manifest", "to_tensor",
]
