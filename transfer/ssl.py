"""``python -m transfer.ssl (--model DIR | --random tiny|base) [...]``: extraction speed of a
self-supervised checkpoint (seconds of audio per second); the feature kind itself lives in
:mod:`transfer.data.ssl`."""

from __future__ import annotations

from pathlib import Path

from transfer import UserError
from transfer.common.console import main_guard
from transfer.data.kinds import bind, make_spec
from transfer.data.ssl import SUPPORTED, device, random_checkpoint, speed


@main_guard
def main(argv: list[str] | None = None) -> int:
    """``python -m transfer.ssl (--model DIR | --random tiny|base) [...]``: extraction speed."""
    import argparse
    import tempfile

    import torch

    parser = argparse.ArgumentParser(prog="python -m transfer.ssl", description="Extraction "
                                     "speed of an ssl checkpoint (seconds of audio per second).")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a checkpoint folder")
    which.add_argument("--random", choices=["tiny", "base"],
                       help="a randomly initialised model of this size")
    parser.add_argument("--type", choices=sorted(SUPPORTED), default="wavlm")
    parser.add_argument("--layers", default="all", help='"all" or one index')
    parser.add_argument("--segments", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, not {args.threads}")
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(random_checkpoint(Path(tmp) / "m", args.random, args.type))
        layers = args.layers if args.layers == "all" else int(args.layers)
        opts = bind(make_spec("ssl", model=model, layers=layers)).opts
        dev = device() if args.device == "auto" else torch.device(args.device)
        rates = speed(opts, segments=args.segments, seconds=args.seconds, repeats=args.repeats,
                      batch=args.batch, dev=dev)
    name = args.model or f"random {args.random} {args.type}"
    print(f"{name}, layers={args.layers}, {args.segments} x {args.seconds:g} s, on {dev} "
          f"({torch.get_num_threads()} threads): " + ", ".join(f"{r:.0f}" for r in rates)
          + " s of audio per second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
