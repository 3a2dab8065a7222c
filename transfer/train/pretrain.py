"""Source pretraining: the backbone learns the emotion task on the source corpus.

A speaker-independent hold-out (``pretrain.val_fraction`` of the speakers) selects the epoch and
gives the reported source accuracy/UAR. The result is cached under a content hash of everything
that determines it (the source features, labels, backbone and options, pretraining settings,
seed), so every strategy, fold and later recipe reuses it. The cached file carries its
checksum and is loaded with ``weights_only=True``: a damaged or tampered file (a pickle that
would run code included) is reported in one line and retrained, never used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import GroupShuffleSplit

from transfer import UserError
from transfer.common.cache import (
    cache_dir,
    content_hash,
    discard_entry,
    entry_lock,
    find_entry,
    store_entry,
)
from transfer.common.config import Recipe
from transfer.data import Domain
from transfer.evaluate.metrics import classification
from transfer.train.device import to_device
from transfer.train.engine import fit
from transfer.train.infer import predict_proba
from transfer.train.strategies import Context
from transfer.train.strategies.scratch import Scratch, ScratchOptions
from transfer.train.tensors import DomainTensors, Standardizer

log = logging.getLogger(__name__)

PRETRAIN_VERSION = 2  # 2: fused TIM-Net layout


@dataclass
class Pretrained:
    """A source-pretrained model: its state dict (on the CPU), held-out metrics
    (``source_acc``, ``source_uar``, ``source_best_epoch``, ``source_seconds``), its cache key,
    and whether it came from the cache."""

    state: dict[str, torch.Tensor]
    metrics: dict[str, float]
    key: str
    cache_hit: bool


def source_split(domain: Domain, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The source's speaker-independent hold-out: sorted segment indices of the training
    speakers and of the held-out ones (``fraction`` of the speakers, rounded, at least one and
    at most all but one). A source with one speaker is a :class:`UserError`."""
    speakers = np.unique(domain.groups)
    if len(speakers) < 2:
        raise UserError(f"source {domain.name} has one speaker: a speaker-independent hold-out "
                        "needs at least two")
    n_val = min(max(1, int(round(fraction * len(speakers)))), len(speakers) - 1)
    gss = GroupShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
    train, val = next(gss.split(domain.x, domain.y, groups=domain.groups))
    return np.sort(train), np.sort(val)


def pretrain_key(recipe: Recipe, domain: Domain) -> str:
    """The cache key of the pretrained model: a content hash of the source data's keys and
    labels, the backbone and its options, the feature width, the ``[pretrain]`` settings
    (seed included), the normalisation and :data:`PRETRAIN_VERSION`."""
    return content_hash({
        "data": domain.keys, "labels": domain.labels, "backbone": dataclasses.asdict(recipe.backbone),
        "in_features": int(domain.x.shape[1]), "pretrain": dataclasses.asdict(recipe.pretrain),
        "normalize": recipe.features.normalize, "version": PRETRAIN_VERSION,
    })


def backbone_options(recipe: Recipe, in_features: int, stacked_layers: int = 0
                     ) -> dict[str, Any]:
    """The recipe's backbone options completed for features of this shape (F = ``in_features``;
    ``stacked_layers`` L > 0 when they stack L ssl layers): what the backbone derives from the
    features is its own business (:func:`backbones.options_for_features`)."""
    import backbones

    with backbone_errors():
        return backbones.options_for_features(recipe.backbone.name, recipe.backbone.options,
                                              in_features=in_features,
                                              stacked_layers=stacked_layers)


@contextlib.contextmanager
def backbone_errors() -> Iterator[None]:
    """A backbone's option or contract error as one line naming the recipe section."""
    import backbones

    try:
        yield
    except backbones.OptionError as err:
        raise UserError(f"[backbone.options]: {err}") from None
    except backbones.ContractError as err:
        raise UserError(f"[backbone]: {err}") from None


def make_backbone_factory(recipe: Recipe, in_features: int, stacked_layers: int = 0
                          ) -> Callable[..., torch.nn.Module]:
    """(num_classes, runs) -> a fresh backbone of the recipe, for features of ``in_features``
    dims that stack ``stacked_layers`` ssl layers (0: they do not)."""
    import backbones

    opts = backbone_options(recipe, in_features, stacked_layers)

    def make(num_classes: int, runs: int = 1) -> torch.nn.Module:
        with backbone_errors():
            return backbones.create(recipe.backbone.name, runs=runs,
                                    **{**opts, "num_classes": num_classes})

    return make


def pretrain(recipe: Recipe, domain: Domain, device: torch.device, *, root: Path | None = None
             ) -> Pretrained:
    """Load the pretrained source model from the cache, or train it."""
    cfg = recipe.pretrain
    train_idx, val_idx = source_split(domain, cfg.val_fraction, cfg.seed)
    key = pretrain_key(recipe, domain)
    folder = (root or cache_dir()) / "pretrained"
    blob = _load_cached(folder, key)  # no lock on the common path: a verified load
    if blob is None:
        with entry_lock(folder, key, f"pretraining on {domain.name}"):
            blob = _load_cached(folder, key)
            if blob is None:
                return _train(recipe, domain, device, train_idx, val_idx, folder, key)
    return Pretrained(blob["state"], blob["metrics"], key, True)


def _load_cached(folder: Path, key: str) -> dict[str, Any] | None:
    """A verified cached model, or None (a damaged one is reported and removed)."""
    path = find_entry(folder, key, ".pt")
    if path is None:
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if (not isinstance(blob, dict) or not {"state", "norm", "metrics"} <= set(blob)
                or not {"mean", "std"} <= set(blob["norm"])):
            raise ValueError("not a pretrained-model entry")
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - whatever a bad file raises, it is retrained
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        discard_entry(path, f"cannot be loaded: {type(err).__name__}: {first}")
        return None
    return blob


def _train(recipe: Recipe, domain: Domain, device: torch.device, train_idx: np.ndarray,
           val_idx: np.ndarray, folder: Path, key: str) -> Pretrained:
    cfg = recipe.pretrain
    log.info(f"pretraining {recipe.backbone.name} on {domain.name} "
             f"({len(train_idx)} train / {len(val_idx)} held-out segments, {cfg.epochs} epochs)")
    torch.manual_seed(cfg.seed)
    x = to_device(domain.x, device)
    tr, va = to_device(train_idx, device), to_device(val_idx, device)
    norm = Standardizer.fit(x, tr, recipe.features.normalize == "corpus")
    dom = DomainTensors(x, to_device(domain.y, device), norm, tr, va)
    make = make_backbone_factory(recipe, domain.x.shape[1], domain.stacked_layers)
    ctx = Context(make, len(domain.labels), label_smoothing=cfg.label_smoothing)
    strategy = Scratch(ctx, ScratchOptions())
    result = fit(strategy, dom, None, cfg, cfg.seed, device)
    prob = predict_proba(strategy, dom, va).cpu().numpy()
    held = classification(domain.y[val_idx], prob)
    metrics = {"source_acc": held["acc"], "source_uar": held["uar"],
               "source_best_epoch": result.best_epoch, "source_seconds": round(result.seconds, 2)}
    state = {k: v.detach().cpu() for k, v in strategy.model.state_dict().items()}
    blob = {"state": state, "norm": norm.to_dict(), "metrics": metrics, "labels": domain.labels}
    store_entry(folder, key, ".pt", lambda tmp: _save(blob, tmp))
    log.info(f"source held-out accuracy {metrics['source_acc']:.3f}, "
             f"UAR {metrics['source_uar']:.3f}")
    return Pretrained(state, metrics, key, False)


def _save(blob: dict[str, Any], path: Path) -> None:
    # Through a file object, the archive's inner folder is always "archive", not the temporary
    # file's name: the same model gives the same bytes, hence the same checksum.
    with open(path, "wb") as fh:
        torch.save(blob, fh)
