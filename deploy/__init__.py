"""Edge side of the inspection kit: torch-free preprocessing and runtimes.

Imports only numpy, OpenCV, onnxruntime and (optionally, inside functions) tensorrt.
"""

from deploy.errors import DeployError, ImageReadError
from deploy.preprocess import (
    PreprocessSpec,
    prepare_image,
    preprocess,
    preprocess_batch,
    read_image,
    to_tensor,
)

__all__ = [
    "DeployError",
    "ImageReadError",
    "PreprocessSpec",
    "prepare_image",
    "preprocess",
    "preprocess_batch",
    "read_image",
    "to_tensor",
]
