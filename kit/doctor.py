"""``kit doctor``: what this machine offers the kit, and the combinations known to fail."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass
class Finding:
    topic: str
    value: str
    status: str = "ok"  # ok | warn | fail | info
    hint: str = ""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _torch() -> list[Finding]:
    import torch

    out = [Finding("torch", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(Finding(f"cuda:{i}", f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute {p.major}.{p.minor}, "
                                            f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"))
    else:
        out.append(Finding("CUDA devices", "none: training and verification run on the CPU", "info"))
    out.append(Finding("CPU threads", f"torch {torch.get_num_threads()} of {os.cpu_count()} logical cores"))
    return out


def _onnxruntime() -> list[Finding]:
    out: list[Finding] = []
    cpu, gpu = _version("onnxruntime"), _version("onnxruntime-gpu")
    if cpu and gpu:
        out.append(Finding("onnxruntime packages", f"onnxruntime {cpu} and onnxruntime-gpu {gpu}", "fail",
                           "both install the same module and overwrite each other: pip uninstall onnxruntime onnxruntime-gpu, "
                           "then install only the one you need"))
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return out + [Finding("onnxruntime", f"cannot import ({exc})", "fail", "pip install onnxruntime")]
    providers = ort.get_available_providers()
    out.append(Finding("onnxruntime", f"{ort.__version__}; providers {', '.join(providers)}"))
    if gpu and "CUDAExecutionProvider" not in providers:
        out.append(Finding("onnxruntime-gpu", "installed but the CUDA provider is not available", "warn",
                           "its CUDA/cuDNN versions must match the driver; see onnxruntime's install matrix"))
    return out


def _tensorrt() -> list[Finding]:
    from deploy.runtimes.tensorrt_backend import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is None:
        import tensorrt

        return [Finding("TensorRT", f"{tensorrt.__version__}: engines can be built and run here")]
    return [Finding("TensorRT", f"unavailable: {reason}", "info", "only needed for tensorrt-* export formats")]


def _report_deps() -> list[Finding]:
    out = []
    try:
        import weasyprint  # noqa: F401

        out.append(Finding("PDF reports", f"weasyprint {_version('weasyprint')}"))
    except (ImportError, OSError) as exc:
        out.append(Finding("PDF reports", f"unavailable ({type(exc).__name__})", "info",
                           "pip install 'inspection-kit[report]' (needs the pango system library) for kit report --pdf"))
    from kit.report.fonts import FontMissing, cjk_font

    try:
        family, _ = cjk_font()
        out.append(Finding("Japanese font", family))
    except FontMissing as exc:
        out.append(Finding("Japanese font", "none", "info", str(exc).split("; ", 1)[-1]))
    return out


def _disk(out_dir: Path) -> Finding:
    probe = out_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 2**30
    status = "ok" if free >= 5 else "warn"
    return Finding(f"free disk at {out_dir}", f"{free:.1f} GiB", status,
                   "" if status == "ok" else "a run with checkpoints and a bundle needs a few GiB")


def diagnose(out_dir: str | Path = "runs") -> list[Finding]:
    findings = [Finding("Python", f"{platform.python_version()} on {platform.system()} {platform.machine()}")]
    for section in (_torch, _onnxruntime, _tensorrt, _report_deps):
        try:
            findings += section()
        except Exception as exc:  # a broken optional stack is a finding, not a crash of the doctor
            findings.append(Finding(section.__name__.strip("_"), f"check failed: {type(exc).__name__}: {exc}", "fail"))
    for dist in ("timm", "albumentations", "onnx", "opencv-python-headless", "pydantic"):
        v = _version(dist)
        findings.append(Finding(dist, v or "not installed", "ok" if v else "fail", "" if v else f"pip install {dist}"))
    if _version("opencv-python") and _version("opencv-python-headless"):
        findings.append(Finding("OpenCV packages", "opencv-python and opencv-python-headless", "warn",
                                "two OpenCV wheels share the cv2 module; keep only opencv-python-headless"))
    findings.append(_disk(Path(out_dir)))
    return findings
