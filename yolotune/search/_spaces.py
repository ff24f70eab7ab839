"""Load the search space a study uses: the default one, a YAML file narrowing it, or a callable."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from yolotune import _yaml
from yolotune._warn import warn_once
from yolotune.errors import YolotuneError, yaml_problem
from yolotune.spaces import CompressionPlan, DefaultSpace, Space

__all__ = ["load_space"]

logger = logging.getLogger(__name__)


def _import_attr(spec: str) -> Any:
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise YolotuneError(f"space file {path} not found")
            mod_spec = importlib.util.spec_from_file_location(f"yolotune_user_space_{path.stem}", path)
            assert mod_spec is not None and mod_spec.loader is not None
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_spec.name] = module
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except YolotuneError:
        raise
    except ModuleNotFoundError as exc:
        hint = f"; a file here? write {module_name}.py:{attr}" if Path(f"{module_name}.py").is_file() else ""
        raise YolotuneError(
            f"cannot import space '{spec}': {exc} (a module must be importable: on PYTHONPATH, or name its file, "
            f"my_space.py:space){hint}"
        ) from exc
    except Exception as exc:
        raise YolotuneError(f"cannot import space '{spec}': {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attr):
        raise YolotuneError(f"space '{spec}': {module_name} has no attribute '{attr}'")
    return getattr(module, attr)


def load_space(spec: str | None, *, default: DefaultSpace) -> Space:
    """The space named by ``spec``.

    Args:
        spec: ``None`` (the default space), a YAML file of ``DefaultSpace`` options
            (``max_ratio: 0.3``, ``precisions: [int8]``, ``units: {stem: [backbone.0]}``, ...),
            or ``module:attr`` / ``path/to/file.py:attr`` naming a callable ``trial → CompressionPlan``
            (a function, or a factory called with ``default`` when it takes one argument named
            ``default``).
        default: The model's default space (groups, target precisions, calibration bound).

    Raises:
        YolotuneError: The file or callable cannot be loaded, or the options are invalid.
    """
    if spec is None:
        return default
    if spec.endswith((".yaml", ".yml")):
        path = Path(spec)
        if not path.is_file():
            raise YolotuneError(f"space file {path} not found")
        try:
            options = _yaml.load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise YolotuneError(f"space file {path} is not valid YAML: {yaml_problem(exc)}") from exc
        if not isinstance(options, dict):
            raise YolotuneError(f"space file {path} must hold a mapping of options")
        if default.fine:  # --fine: one unit per group, unless the file says otherwise
            options = {"fine": True, **options}
        narrowed = DefaultSpace.from_options(
            options,
            groups=default.groups,
            precisions=default.precisions,
            max_calibration_images=default.max_calibration_images,
            activations=default.activations,
            fine_tune=default.fine_tune,
        )
        if "calibration_sizes" in options:
            _warn_clamped(narrowed, path)
        if "epochs" in options and not narrowed.fine_tune and any(e > 0 for e in narrowed.epochs):
            warn_once(
                logger,
                f"space file {path}: epochs {list(narrowed.epochs)} are not searched: no plan fine-tunes on this "
                "data (its training split has no labels, or shares images with 'val')",
            )
        return narrowed
    if ":" not in spec:
        raise YolotuneError(f"--space must be a .yaml file or module:callable (file.py:callable); got '{spec}'")
    obj = _import_attr(spec)
    if not callable(obj):
        raise YolotuneError(f"space '{spec}' is not callable")
    import inspect

    try:
        params = list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        params = []
    if params == ["default"]:
        obj = obj(default)
    space: Space = obj
    _first_draw(space, spec, groups=default.groups)
    return space


def _warn_clamped(space: DefaultSpace, path: Path) -> None:
    """Say so when a space file asks for more calibration images than the training split holds."""
    over = [n for n in space.calibration_sizes if n > space.max_calibration_images]
    if over:
        warn_once(
            logger,
            f"space file {path}: calibration_sizes {', '.join(map(str, over))} exceed the "
            f"{space.max_calibration_images} images calibration and recovery can use (the training split, at most "
            f"256); the search samples from {list(space.calibration_choices())}",
        )


def _first_draw(space: Space, spec: str, *, groups: Sequence[str]) -> None:
    """Draw one plan from a throwaway study, so a broken space is found before any trial is recorded.

    The plan must name the model's layer groups only: a space that names another model's would
    fail every trial.

    Spaces are pure (``trial.suggest_*`` only), so the draw builds and writes nothing.
    """
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        trial = optuna.create_study().ask()
        plan = space(trial)
    except YolotuneError as exc:
        raise YolotuneError(f"space '{spec}' failed on a first draw: {exc}") from exc
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise YolotuneError(f"space '{spec}' failed on a first draw: {type(exc).__name__}: {reason[:150]}") from exc
    finally:
        optuna.logging.set_verbosity(verbosity)
    if not isinstance(plan, CompressionPlan):
        raise YolotuneError(f"space '{spec}' returned {type(plan).__name__}, not a CompressionPlan")
    try:
        plan.check_groups(groups)
    except YolotuneError as exc:
        raise YolotuneError(f"space '{spec}' drew a plan for another model: {exc}") from exc
