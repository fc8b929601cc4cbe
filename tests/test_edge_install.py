"""The base install is the edge runtime: ``pip install inspection-kit`` must not pull torch.

Cheap guards on ``pyproject.toml`` instead of a fresh virtual environment: the base dependencies
hold nothing that trains, every third-party module ``deploy/`` imports comes from a base
dependency (optional backends, imported inside functions, from their extra), and every module
``kit/`` imports comes from the base install plus the ``train`` extra.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.edge

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"deploy", "kit"}
TRAINING_ONLY = {"torch", "timm", "albumentations", "onnx", "jinja2"}

# Top-level module -> the distribution that installs it. A new third-party import fails
# test_every_import_is_provided until it is added here and to the right dependency list.
MODULE_TO_DISTRIBUTION = {
    "numpy": "numpy",
    "cv2": "opencv-python-headless",
    "onnxruntime": "onnxruntime",
    "typer": "typer",
    "rich": "rich",
    "scipy": "scipy",
    "matplotlib": "matplotlib",
    "japanize_matplotlib": "japanize-matplotlib",
    "fontTools": "fonttools",
    "weasyprint": "weasyprint",
    "tensorrt": "tensorrt",
    "cuda": "cuda-python",
    "torch": "torch",
    "timm": "timm",
    "albumentations": "albumentations",
    "onnx": "onnx",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic",  # pydantic's own core, installed with it
    "typing_extensions": "pydantic",  # a dependency of pydantic, whose TypedDict it needs on Python < 3.12
    "yaml": "pyyaml",
    "jinja2": "jinja2",
    "huggingface_hub": "huggingface-hub",  # timm's weight hub; kit names its offline errors
    "safetensors": "safetensors",
    "fastapi": "fastapi",  # deploy serve (the serve extra)
    "starlette": "fastapi",  # FastAPI's own foundation, installed with it
    "uvicorn": "uvicorn",
    "prometheus_client": "prometheus-client",
    "paho": "paho-mqtt",  # deploy's line interfaces (the line extra)
    "asyncua": "asyncua",
    "pymodbus": "pymodbus",
}

# Per package: the dependency lists that must provide its module-level imports, and the extras
# that may provide imports made inside a function (an optional backend, used only when installed).
PACKAGES = {
    "deploy": {"required": ("base",), "optional": ("gpu", "plot", "serve", "line")},
    "kit": {"required": ("base", "train"), "optional": ("gpu", "report")},
}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _distribution(requirement: str) -> str:
    """'albumentations>=2.0.5,<3' -> 'albumentations' (normalised as PEP 503 does)."""
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _dependency_lists() -> dict[str, set[str]]:
    """'base' and each extra -> distribution names, with self-references (inspection-kit[x]) expanded."""
    project = _project()
    raw = {"base": project["dependencies"], **project["optional-dependencies"]}

    def expand(key: str) -> set[str]:
        names = set()
        for requirement in raw[key]:
            own = re.fullmatch(r"inspection-kit\[([^\]]+)\]", requirement.strip())
            if own:
                for extra in own.group(1).split(","):
                    names |= expand(extra.strip())
            else:
                names.add(_distribution(requirement))
        return names

    return {key: expand(key) for key in raw}


def _imports(package: str) -> list[tuple[str, bool, str]]:
    """(top-level module, imported inside a function?, where) for every absolute import."""
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found += _imports_in(tree, False, path.relative_to(REPO).as_posix())
    return found


def _third_party_imports(package: str) -> list[tuple[str, bool, str]]:
    return [item for item in _imports(package) if item[0] not in sys.stdlib_module_names and item[0] not in FIRST_PARTY]


def _imports_in(node: ast.AST, in_function: bool, where: str) -> list[tuple[str, bool, str]]:
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import):
            found += [(alias.name.split(".")[0], in_function, f"{where}:{child.lineno}") for alias in child.names]
        elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
            found.append((child.module.split(".")[0], in_function, f"{where}:{child.lineno}"))
        found += _imports_in(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)), where)
    return found


def test_base_install_is_the_edge_runtime():
    base = _dependency_lists()["base"]
    assert not base & TRAINING_ONLY, f"training packages in the base install: {sorted(base & TRAINING_ONLY)}"
    assert {"numpy", "opencv-python-headless", "onnxruntime"} <= base


def test_dev_install_still_trains_and_tests():
    """README's `pip install -e ".[dev]"` must keep giving everything `kit run` and the tests need."""
    lists = _dependency_lists()
    assert TRAINING_ONLY <= lists["train"]
    assert lists["train"] | lists["report"] | {"pytest"} <= lists["dev"]
    assert set(_project()["scripts"]) == {"kit", "deploy"}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_import_is_provided(package):
    lists = _dependency_lists()
    required = set().union(*(lists[key] for key in PACKAGES[package]["required"]))
    optional = set().union(*(lists[key] for key in PACKAGES[package]["optional"]))
    problems = []
    for module, in_function, where in _third_party_imports(package):
        dist = MODULE_TO_DISTRIBUTION.get(module)
        if dist is None:
            problems.append(f"{where}: {module} is not in MODULE_TO_DISTRIBUTION; add it and its dependency")
        elif dist not in required and not (in_function and dist in optional):
            problems.append(f"{where}: {module} ({dist}) is not a dependency of {' + '.join(PACKAGES[package]['required'])}")
    assert not problems, "\n".join(problems)


def test_deploy_never_imports_training_packages():
    """Not even inside a function: the edge box has none of them."""
    bad = [f"{where}: {module}" for module, _, where in _imports("deploy") if module in TRAINING_ONLY | {"kit"}]
    assert not bad, "\n".join(bad)
