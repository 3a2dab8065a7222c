"""Real-data checks (not CI tests): does our TIM-Net match the official one on real CASIA?

``python -m transfer.checks timnet-casia [--root DIR] [--epochs N] [--protocol random10|loso|both]
[--json OUT]``

The official feature recipe (librosa's 22.05 kHz, 39 MFCC, n_fft 2048, hop 512, each clip
centre-padded/cropped to 88000 samples -> 172 frames, no normalisation) and training protocol
(Adam 1e-3, betas 0.93/0.98, batch 64, label smoothing 0.1, last-epoch weights, Keras
BatchNorm momentum), under a random 10-fold split (the published protocol, speakers and texts
mixed) and under leave-one-speaker-out.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.model_selection import KFold, LeaveOneGroupOut

import backbones
from transfer.common.config import TrainConfig
from transfer.common.console import console, main_guard
from transfer.data.audio import SegmentSpec
from transfer.data.corpora import build_manifest
from transfer.data.features import load_features
from transfer.data.kinds import make_spec
from transfer.evaluate.metrics import classification
from transfer.train.device import pick_device, to_device
from transfer.train.engine import fit
from transfer.train.infer import predict_proba
from transfer.train.strategies import Context
from transfer.train.strategies.scratch import Scratch, ScratchOptions
from transfer.train.tensors import DomainTensors, Standardizer

OFFICIAL_SEGMENT = SegmentSpec(seconds=88000 / 22050, mode="pad", align="center",
                               sample_rate=22050)
OFFICIAL_FEATURES = make_spec("mfcc", sample_rate=22050, n_mfcc=39, deltas=0, n_fft=2048,
                                 hop=512, n_mels=128)


def timnet_casia(root: str | None, epochs: int, protocol: str, device: torch.device,
                 seed: int = 46) -> dict:
    """Train and test the official TIM-Net set-up on real CASIA under one protocol.

    Args:
        root: the CASIA folder (None: the card's default, e.g. ``$CASIA_ROOT``).
        epochs: epochs per fold; the last epoch's weights are tested.
        protocol: ``random10`` (10-fold random split of the clips) or ``loso`` (leave one
            speaker out).
        seed: the fold split's seed; fold i trains with ``seed + i``.

    Returns:
        A JSON-ready dict: WAR (accuracy) and UAR mean and std over folds, seconds per epoch,
        the per-fold WARs, the device and thread count.
    """
    manifest = build_manifest("casia", root)
    feats = load_features(manifest, OFFICIAL_SEGMENT, OFFICIAL_FEATURES)
    labels = sorted(set(feats.segments["label"]))
    y = feats.segments["label"].map({lab: i for i, lab in enumerate(labels)}).to_numpy()
    groups = feats.segments["speaker"].to_numpy()
    x = to_device(feats.x, device)
    yt = to_device(y, device)
    norm = Standardizer.fit(x, None, enabled=False)
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=1e-3, betas=[0.93, 0.98],
                      label_smoothing=0.1, select="last")
    if protocol == "random10":
        folds = list(KFold(10, shuffle=True, random_state=seed).split(feats.x))
    else:
        folds = list(LeaveOneGroupOut().split(feats.x, y, groups))

    def make(k: int, runs: int = 1) -> torch.nn.Module:
        return backbones.create("timnet", runs=runs, in_features=39, filters=39, blocks=8,
                                num_classes=k, dropout=0.1, bn_momentum=0.01)

    accs, uars, secs = [], [], []
    for i, (tr, te) in enumerate(folds):
        torch.manual_seed(seed + i)
        dom = DomainTensors(x, yt, norm, to_device(tr, device), None)
        strategy = Scratch(Context(make, len(labels), label_smoothing=0.1), ScratchOptions())
        result = fit(strategy, dom, None, cfg, seed + i, device)
        prob = predict_proba(strategy, dom, to_device(te, device)).cpu().numpy()
        m = classification(y[te], prob)
        accs.append(m["acc"])
        uars.append(m["uar"])
        secs.append(result.seconds / epochs)
        console.print(f"{protocol} fold {i + 1}/{len(folds)}: WAR {m['acc']:.4f} "
                      f"UAR {m['uar']:.4f} ({result.seconds / epochs:.2f} s/epoch)")
    return {"protocol": protocol, "folds": len(folds), "epochs": epochs, "device": str(device),
            "threads": torch.get_num_threads(), "war_mean": float(np.mean(accs)),
            "war_std": float(np.std(accs)), "uar_mean": float(np.mean(uars)),
            "uar_std": float(np.std(uars)), "seconds_per_epoch": float(np.mean(secs)),
            "fold_war": [round(a, 4) for a in accs]}


@main_guard
def main(argv: list[str] | None = None) -> int:
    """``python -m transfer.checks`` (see the module docstring); ``argv`` defaults to the
    command line. Prints the results as JSON; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m transfer.checks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=["timnet-casia"])
    parser.add_argument("--root", help="CASIA folder (default $CASIA_ROOT)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--protocol", choices=["random10", "loso", "both"], default="both")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    protocols = ["random10", "loso"] if args.protocol == "both" else [args.protocol]
    t0 = time.perf_counter()
    results = [timnet_casia(args.root, args.epochs, p, device) for p in protocols]
    for r in results:
        console.print(f"{r['protocol']}: WAR {r['war_mean']:.4f} ± {r['war_std']:.4f}, "
                      f"UAR {r['uar_mean']:.4f} ± {r['uar_std']:.4f}, {r['folds']} folds x "
                      f"{r['epochs']} epochs on {r['device']}, {r['seconds_per_epoch']:.2f} s/epoch")
    console.print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
