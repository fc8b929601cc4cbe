"""Edge side of the inspection kit: torch-free preprocessing, runtimes and the Predictor.

Imports only numpy, OpenCV, onnxruntime and (optionally, inside functions) tensorrt and
cuda-python. Never imports ``kit``, torch, timm or albumentations.
"""

from deploy.errors import DeployError, ImageReadError
from deploy.manifest import BundleError, Manifest, read_manifest
from deploy.predictor import Decision, Predictor
from deploy.preprocess import PreprocessSpec, prepare_image, preprocess, preprocess_batch, read_image, to_tensor

__all__ = [
    "BundleError", "Decision", "DeployError", "ImageReadError", "Manifest", "Predictor", "PreprocessSpec",
    "prepare_image", "preprocess", "preprocess_batch", "read_image", "read_manifest", "to_tensor",
]
