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
from transfer.data.audio import SegmentSpec
from transfer.data.features import FeatureSpec

FORMAT = "ser-transfer-model"
FORMAT_VERSION = 2  # 2: fused TIM-Net layout (1 is converted on load)


def make_package(model: torch.nn.Module, *, backbone: str, segments: SegmentSpec,
                 features: FeatureSpec, mean: torch.Tensor, std: torch.Tensor,
                 labels: list[str], positive: str, recipe_hash: str, info: dict[str, Any]
                 ) -> dict[str, Any]:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "toolkit_version": __version__,
        "backbone": backbone, "options": dataclasses.asdict(model.options),
        "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "segments": dataclasses.asdict(segments), "features": dataclasses.asdict(features),
        "norm_mean": mean.detach().cpu(), "norm_std": std.detach().cpu(),
        "labels": list(labels), "positive": positive, "recipe_hash": recipe_hash,
        "info": info,
    }


def save_package(package: dict[str, Any], path: str | Path) -> Path:
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
    return package


def build_model(package: dict[str, Any]) -> torch.nn.Module:
    import backbones

    model = backbones.create(package["backbone"], **package["options"])
    # a package of an older version (format 1: ser-transfer 0.1's unfused TIM-Net) holds the
    # backbone's older layout; the backbone recognises its own old layouts
    state = backbones.upgrade_state(package["backbone"], package["state"], model.options)
    model.load_state_dict(state)
    return model.eval()
