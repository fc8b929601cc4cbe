"""TensorRT engines (``model.fp16.plan``, ``model.int8.plan``), run with NVIDIA's own bindings.

Needs the ``gpu`` extra (tensorrt, cuda-python) and a CUDA device; both are imported inside
functions so the edge runtime imports cleanly without them. An engine only runs on the
TensorRT version and GPU it was built for: the manifest's fingerprint is checked first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deploy.errors import DeployError
from deploy.manifest import BundleError, Manifest


class TensorRTUnavailable(DeployError):
    """No tensorrt package, no cuda-python, or no CUDA device on this machine."""


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError:
            raise TensorRTUnavailable("cuda-python is not installed (pip install 'inspection-kit[gpu]')") from None
    return cudart


def _check(result: tuple) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise DeployError(f"CUDA call failed: {err}")
    return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)


def tensorrt_unavailable_reason() -> str | None:
    """None when engines can be built and run here, else why not (one line)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed (pip install 'inspection-kit[gpu]')"
    try:
        cudart = _cudart()
    except TensorRTUnavailable as exc:
        return str(exc)
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        return "no CUDA device is visible"
    return None


def machine_fingerprint(device: int = 0) -> dict[str, Any]:
    """What a TensorRT plan is tied to: TensorRT version, GPU model, compute capability."""
    import tensorrt as trt

    cudart = _cudart()
    prop = _check(cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return {"tensorrt": trt.__version__, "gpu": name.strip("\x00 "), "compute_capability": f"{prop.major}.{prop.minor}"}


def check_fingerprint(plan_path: Path, built_for: dict[str, Any] | None, here: dict[str, Any]) -> None:
    """A plan runs only on the TensorRT version, GPU model and compute capability it was built on."""
    if not built_for:
        raise BundleError(f"{plan_path}: the manifest has no build fingerprint for this engine; re-export the bundle")
    for key in ("tensorrt", "gpu", "compute_capability"):
        if built_for.get(key) != here.get(key):
            raise BundleError(
                f"{plan_path}: engine was built for {key} {built_for.get(key)!r}, this machine has {here.get(key)!r}; "
                "rebuild it here with `kit export RUN_DIR --formats onnx,tensorrt-fp16,tensorrt-int8`"
            )


class TensorRTBackend:
    def __init__(self, name: str, plan_path: Path, expected_fingerprint: dict[str, Any] | None) -> None:
        reason = tensorrt_unavailable_reason()
        if reason:
            raise TensorRTUnavailable(f"{plan_path}: cannot run a TensorRT engine here: {reason}")
        import tensorrt as trt

        here = machine_fingerprint()
        check_fingerprint(plan_path, expected_fingerprint, here)
        self.name, self.fingerprint = name, here
        self._cudart = _cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise BundleError(f"{plan_path}: TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        # Every output needs a device address; the decision reads "logits" (the only output of older bundles).
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.output_name = "logits" if "logits" in self.output_names else self.output_names[0]
        # declared shapes, None for a dynamic dimension (TensorRT reports -1: the batch of a dynamic profile)
        self.output_shapes = {n: [d if d >= 0 else None for d in self.engine.get_tensor_shape(n)] for n in self.output_names}
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self.stream = _check(self._cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self._cudart.cudaFree(ptr))
            ptr = _check(self._cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, [self.output_name])[0]

    def run_named(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the engine by name, in one pass (an anomaly bundle's score, anomaly_map, kind_distance).
        Each chunk of at most ``max_batch`` images copies every output back; the chunks are joined per output."""
        return dict(zip(self.output_names, self._run(images, list(self.output_names))))

    def run_with_heatmap(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and the in-graph ``heatmap`` output (batch x classes x h x w), in one pass."""
        if "heatmap" not in self.output_names:
            raise DeployError(f"{self.name}: the engine has no 'heatmap' output (outputs: {', '.join(self.output_names)})")
        logits, heatmap = self._run(images, [self.output_name, "heatmap"])
        return logits, heatmap

    def _run(self, images: np.ndarray, names: list[str]) -> list[np.ndarray]:
        chunks = [self._run_chunk(images[i : i + self.max_batch], names) for i in range(0, len(images), self.max_batch)]
        if not chunks:
            return [np.zeros((0, 0), np.float32) for _ in names]
        return [np.concatenate([chunk[k] for chunk in chunks]) for k in range(len(names))]

    def _run_chunk(self, images: np.ndarray, names: list[str]) -> list[np.ndarray]:
        cudart = self._cudart
        x = np.ascontiguousarray(images, dtype=np.float32)
        self.context.set_input_shape(self.input_name, x.shape)
        kind = cudart.cudaMemcpyKind
        d_in = self._device_buffer("in", x.nbytes)
        _check(cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, kind.cudaMemcpyHostToDevice, self.stream))
        self.context.set_tensor_address(self.input_name, d_in)
        host: dict[str, tuple[np.ndarray, int]] = {}
        for name in self.output_names:  # all bound, only the asked-for ones copied back
            out = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=np.float32)
            host[name] = (out, self._device_buffer(f"out:{name}", out.nbytes))
            self.context.set_tensor_address(name, host[name][1])
        if not self.context.execute_async_v3(int(self.stream)):
            raise DeployError(f"{self.name}: TensorRT execution failed")
        for name in names:
            out, d_out = host[name]
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, kind.cudaMemcpyDeviceToHost, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return [host[name][0] for name in names]

    def describe(self) -> str:
        return f"{self.name} on TensorRT {self.fingerprint['tensorrt']} ({self.fingerprint['gpu']})"

    def __del__(self) -> None:
        try:
            for ptr, _size in self._buffers.values():
                self._cudart.cudaFree(ptr)
            self._cudart.cudaStreamDestroy(self.stream)
        except Exception:  # interpreter shutdown: the driver frees everything anyway
            pass


def _factory(fmt: str):
    def build(plan_path: Path, manifest: Manifest, options: dict[str, Any]) -> TensorRTBackend:
        return TensorRTBackend(fmt, plan_path, manifest.artefacts.get(fmt, {}).get("fingerprint"))

    return build


# What this backend runs, by bundle format; ``deploy.runtimes`` registers these when a runtime is
# first asked for (a backend never imports the registry: the registry imports the backends).
RUNTIMES = {"tensorrt-fp16": _factory("tensorrt-fp16"), "tensorrt-int8": _factory("tensorrt-int8")}
