"""Self-describing model packages: everything needed to apply a trained target model.

A package is a ``torch.save`` of plain data (tensors, numbers, strings, lists, dicts), so it
loads with ``torch.load(..., weights_only=True)``: weights, backbone name and options, segment
and feature settings, the feature standardisation, label names, the recipe hash and the toolkit
version.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from transfer import UserError, __version__
from transfer.common.cache import atomic_path
from transfer.common.config import FeatureSpec, SegmentSpec
from transfer.data.kinds import package_fields, parse

FORMAT = "ser-transfer-model"
FORMAT_VERSION = 2  # 2: fused TIM-Net layout (1 is converted on load)


def make_package(model: torch.nn.Module, *, backbone: str, segments: SegmentSpec,
                 features: FeatureSpec, mean: torch.Tensor, std: torch.Tensor,
                 labels: list[str], positive: str, recipe_hash: str, info: dict[str, Any]
                 ) -> dict[str, Any]:
    """The package of one trained (K = 1) target model, as plain data.

    Args:
        model: the backbone (its ``options`` and ``state_dict`` are stored, on the CPU).
        backbone: its registry name.
        segments, features: how the model's inputs were cut and featurised.
        mean, std: the feature standardisation of its training set, (1, F, 1) each.
        labels: the class names by index; positive: the positive class's name.
        recipe_hash: the content hash of the recipe; info: strategy, fold, seed, recipe name
            and metrics of the run.
    """
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "toolkit_version": __version__,
        "backbone": backbone, "options": dataclasses.asdict(model.options),
        "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "segments": dataclasses.asdict(segments), "features": package_fields(features),
        "norm_mean": mean.detach().cpu(), "norm_std": std.detach().cpu(),
        "labels": list(labels), "positive": positive, "recipe_hash": recipe_hash,
        "info": info,
    }


def save_package(package: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` the package to ``path`` atomically (the old file or the whole new one);
    returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(package, tmp)
    return path


def load_package(path: str | Path) -> dict[str, Any]:
    """Load and check a model package (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no model file {path}")
    try:
        package = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a package"
        why = type(err).__name__
        if "weights only" in str(err).lower():
            why = ("it holds code or objects other than plain data, refused without running "
                   "them")
        raise UserError(f"{path} is not a ser-transfer model package ({why}); "
                        "export one with: python -m transfer.run RECIPE --export") from None
    if not isinstance(package, dict) or package.get("format") != FORMAT:
        raise UserError(f"{path} is not a ser-transfer model package (no '{FORMAT}' header); "
                        "export one with: python -m transfer.run RECIPE --export")
    if package.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer ser-transfer "
                        f"({package.get('toolkit_version')}); upgrade to read it")
    problem = package_problem(package)
    if problem:
        raise UserError(f"{path} is not a usable model package: {problem}; export one with: "
                        "python -m transfer.run RECIPE --export")
    return package


def package_problem(package: dict[str, Any]) -> str:
    """What makes a package unusable ("" when nothing does): a field of the wrong type, an
    unknown backbone, fewer than two labels, segment or feature settings out of range, a
    standardisation that is not finite or divides by zero."""
    import backbones

    fields = {"backbone": str, "options": dict, "state": dict, "segments": dict,
              "features": dict, "labels": list, "norm_mean": torch.Tensor,
              "norm_std": torch.Tensor}
    for name, kind in fields.items():
        if not isinstance(package.get(name), kind):
            return f"{name!r} must be {kind.__name__}, got {type(package.get(name)).__name__}"
    if package["backbone"] not in backbones.names():
        return f"unknown backbone {package['backbone']!r} (known: {', '.join(backbones.names())})"
    labels = package["labels"]
    if (len(labels) < 2 or not all(isinstance(v, str) for v in labels)
            or len(set(labels)) != len(labels) or package.get("positive", "") not in ("", *labels)):
        return (f"'labels' must name two or more distinct classes and 'positive' one of them "
                f"(or none), got {labels!r} and {package.get('positive')!r}")
    if not all(isinstance(v, torch.Tensor) for v in package["state"].values()):
        return "'state' must map names to tensors"
    for what, build in (("segments", lambda: SegmentSpec(**package["segments"])),
                        ("features", lambda: package_spec(package))):
        try:
            build()
        except (TypeError, UserError) as err:
            return f"{what!r} settings: {err}"
    return _norm_problem(package["norm_mean"], package["norm_std"])


def package_spec(package: dict[str, Any]) -> FeatureSpec:
    """The package's feature spec: its kind and that kind's options (a package written before
    every kind had its own options holds all kinds' options; the others are left out)."""
    return parse(package["features"], lenient=True)


def _norm_problem(mean: torch.Tensor, std: torch.Tensor) -> str:
    finite = bool(torch.isfinite(mean).all()) and bool(torch.isfinite(std).all())
    if mean.shape != std.shape or not finite or not bool((std > 0).all()):
        return ("the feature standardisation must be finite, with std > 0 and mean and std of "
                f"one shape (got shapes {tuple(mean.shape)} and {tuple(std.shape)})")
    return ""


def build_model(package: dict[str, Any]) -> torch.nn.Module:
    """The package's model with its weights, in eval mode; options or weights that do not fit
    the backbone are a one-line :class:`UserError` (weights of another shape, a missing or
    extra option or weight)."""
    import backbones

    name = package["backbone"]
    try:
        model = backbones.create(name, **package["options"])
        # a package of an older version (format 1: ser-transfer 0.1's unfused TIM-Net) holds
        # the backbone's older layout; the backbone recognises its own old layouts
        state = backbones.upgrade_state(name, package["state"], model.options)
        model.load_state_dict(state)
    except (backbones.OptionError, TypeError, ValueError, KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"the model package's weights and options do not fit backbone {name!r}: "
                        f"{first}") from None
    classes = getattr(getattr(model, "options", None), "num_classes", len(package["labels"]))
    if classes != len(package["labels"]):
        raise UserError(f"the model package's backbone has {classes} outputs but "
                        f"{len(package['labels'])} labels {package['labels']}")
    return model.eval()
