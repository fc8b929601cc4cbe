"""Load a recipe file: safe YAML, schema validation, semantic checks, one-line errors.

Recipes are data. ``yaml.safe_load`` refuses Python tags, nothing is imported by name except
timm architectures and albumentations transforms, which are looked up in those libraries'
own registries.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kit.errors import RecipeError
from kit.io import write_text_atomic
from kit.distill.methods import MethodSettings, get_method, list_methods
from kit.recipe.schema import Recipe

_MAX_VALUE_REPR = 60


def load_recipe(path: str | Path, *, check: bool = True) -> Recipe:
    """Read, validate and resolve a recipe file. ``check=False`` skips the library look-ups."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc})") from None
    return parse_recipe(text, source=str(path), base_dir=path.resolve().parent, check=check)


def parse_recipe(text: str, *, source: str = "<recipe>", base_dir: Path | None = None, check: bool = True) -> Recipe:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: {_yaml_message(exc)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping with line:, data:, views:, teacher:, student:, distill:")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError("\n".join(f"{source}: {line}" for line in format_validation_error(exc, data))) from None
    recipe._base_dir = (base_dir or Path.cwd()).resolve()
    if check:
        try:
            check_recipe(recipe)
        except RecipeError as exc:
            raise RecipeError(f"{source}: {exc}") from None
    return recipe


def check_recipe(recipe: Recipe) -> None:
    """Checks that need timm, albumentations or the file system."""
    from kit.models import check_arch, check_pretrained
    from kit.views import build_view

    for role in ("teacher", "student"):
        cfg = getattr(recipe, role)
        check_arch(cfg.arch, where=f"{role}.arch")
        if cfg.pretrained_file and not recipe.resolve_path(cfg.pretrained_file).is_file():
            raise RecipeError(f"{role}.pretrained_file: file not found: {recipe.resolve_path(cfg.pretrained_file)}")
    if recipe.teacher.checkpoint and not recipe.resolve_path(recipe.teacher.checkpoint).is_file():
        raise RecipeError(f"teacher.checkpoint: file not found: {recipe.resolve_path(recipe.teacher.checkpoint)}")
    _check_ensemble(recipe)
    for role in ("teacher", "student"):
        if getattr(recipe, role).pretrained:
            for arch in _trained_archs(recipe, role):
                check_pretrained(arch, where=role)
    for name in ("weak", "strong"):
        build_view(getattr(recipe.views, name), f"views.{name}", recipe.view_size, recipe.data.num_channels)
    _check_corruptions(recipe)


def _check_ensemble(recipe: Recipe) -> None:
    """Every architecture of ``teacher.ensemble.archs`` exists and every checkpoint is there."""
    from kit.models import check_arch

    ensemble = recipe.teacher.ensemble
    if ensemble is None:
        return
    for i, arch in enumerate(ensemble.archs or []):
        check_arch(arch, where=f"teacher.ensemble.archs[{i}]")
    for i, file in enumerate(ensemble.checkpoints or []):
        if not recipe.resolve_path(file).is_file():
            raise RecipeError(f"teacher.ensemble.checkpoints[{i}]: file not found: {recipe.resolve_path(file)}")


def _trained_archs(recipe: Recipe, role: str) -> list[str]:
    """The architectures a role builds from scratch or from published weights (none for an ensemble of checkpoints)."""
    ensemble = recipe.teacher.ensemble if role == "teacher" else None
    if ensemble is not None and ensemble.checkpoints is not None:
        return []
    if ensemble is not None and ensemble.archs is not None:
        return list(ensemble.archs)
    return [getattr(recipe, role).arch]


def _check_corruptions(recipe: Recipe) -> None:
    """Family names exist and every overridden severity builds a valid albumentations pipeline."""
    import warnings

    from kit.views.corruptions import corruption_pipeline, list_corruptions

    cfg = recipe.verify.corruptions
    known = list_corruptions()
    for where, names in (("verify.corruptions.families", cfg.families or []), ("verify.corruptions.severities", list(cfg.severities))):
        for name in names:
            if name not in known:
                hint = difflib.get_close_matches(name, known, n=1)
                raise RecipeError(f"{where}: unknown corruption family {name!r}"
                                  f"{f' (did you mean {hint[0]}?)' if hint else ''}; choose from {', '.join(known)}")
    for name, levels in cfg.severities.items():
        for i, value in enumerate(levels):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    corruption_pipeline(name, value)
            except (ValueError, TypeError, UserWarning) as exc:
                msg = str(exc).strip().splitlines()
                detail = next((m.strip().removeprefix("Value error, ") for m in msg if "Value error" in m), msg[0] if msg else "")
                raise RecipeError(f"verify.corruptions.severities.{name}[{i}]: {value!r} is not a valid severity ({detail})") from None


def _yaml_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in str(exc):
        tag = str(exc.problem).split("'")[1] if "'" in str(exc.problem) else "a tag"
        return f"{where}YAML tag {tag} is not allowed; recipes are plain data (no Python objects)"
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{where}invalid YAML: {problem}"


def format_validation_error(exc: ValidationError, data: Any = None) -> list[str]:
    """One line per error: field path, what is wrong, the bad value (``data``: the raw recipe, which
    names the distillation method whose fields a typo is matched against)."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = _format_loc(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            known = _fields_at(loc[:-1], data)
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            suffix = f" (did you mean {hint[0]}?)" if hint else (f"; known fields: {', '.join(known)}" if known else "")
            lines.append(f"{path}: unknown field{suffix}")
            continue
        if kind == "missing":
            lines.append(f"{path}: required field is missing")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        value = repr(err.get("input"))
        if len(value) > _MAX_VALUE_REPR:
            value = value[: _MAX_VALUE_REPR - 3] + "..."
        lines.append(f"{path}: {msg} (got {value})" if "input" in err and loc else f"{path or 'recipe'}: {msg}")
    return lines


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fields_at(loc: tuple[Any, ...], data: Any = None) -> list[str]:
    model: Any = Recipe
    for part in loc:
        data = _child(data, part)
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = _model_in(field.annotation)
        if model is MethodSettings:  # the method named in the data decides which settings apply
            name = data.get("method", "crld") if isinstance(data, dict) else "crld"
            model = get_method(name).settings if name in list_methods() else model
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _child(data: Any, part: Any) -> Any:
    if isinstance(data, dict):
        return data.get(part)
    if isinstance(data, list) and isinstance(part, int) and part < len(data):
        return data[part]
    return None


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    return recipe.model_dump(mode="json")


def recipe_hash(recipe: Recipe) -> str:
    """sha256 of the canonical resolved recipe: two runs with the same hash trained the same thing."""
    canonical = json.dumps(recipe_to_dict(recipe), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_recipe_lock(recipe: Recipe, path: str | Path, source: str | Path | None = None) -> Path:
    """The resolved recipe next to every output, with its hash and where it came from."""
    body = {
        "recipe_hash": recipe_hash(recipe),
        "source": str(source) if source else None,
        "base_dir": str(recipe._base_dir),
        "recipe": recipe_to_dict(recipe),
    }
    return write_text_atomic(path, yaml.safe_dump(body, sort_keys=False, allow_unicode=True))


def read_recipe_lock(path: str | Path) -> Recipe:
    """Rebuild the recipe a run was made with; relative paths resolve as they did then."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe lock not found; is this a run directory?")
    body = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        recipe = Recipe.model_validate(body["recipe"])
    except (ValidationError, KeyError, TypeError) as exc:
        raise RecipeError(f"{path}: not a valid recipe lock ({type(exc).__name__})") from None
    recipe._base_dir = Path(body.get("base_dir") or path.parent)
    return recipe
