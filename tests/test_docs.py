"""The documentation's walkthroughs work as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import torch

from transfer.common.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def test_the_add_a_strategy_walkthrough_trains_a_pack(scoped_strategies):
    """docs/architecture.md's strategy, as written: it registers, has typed and ranged options
    with a search space, and trains three runs as one pack."""
    from transfer.common.options import search_space
    from transfer.train.engine import fit_runs
    from transfer.train.packs import build_pack
    from transfer.train.strategies import Context, get_strategy, names
    from transfer.train.tensors import DomainTensors, Standardizer

    (code,) = _python_blocks(ROOT / "docs" / "architecture.md")
    module = types.ModuleType("walkthrough")  # a module of its own, as the file would be
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "docs/architecture.md", "exec"), module.__dict__)  # noqa: S102
    finally:
        del sys.modules[module.__name__]
    cls = get_strategy("scratch_ls")
    assert "scratch_ls" in names() and "entropy_weight" in search_space(cls.Options)

    import backbones

    def factory(k, runs=1):
        return backbones.create("timnet", runs=runs, in_features=6, filters=4, blocks=2, split=1,
                                num_classes=k, stem="bn")

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (60,), generator=g)
    x = torch.randn(60, 6, 16, generator=g)
    train, val = torch.arange(40), torch.arange(40, 60)
    target = DomainTensors(x, y, Standardizer.fit(x, train), [train] * 3, [val] * 3)
    pack = build_pack(cls, Context(factory, 2), [cls.Options(w) for w in (0.0, 0.1, 1.0)],
                      [0, 1, 2])
    results = fit_runs(pack, target, None, TrainConfig(epochs=2, batch_size=16, amp=False),
                       [0, 1, 2], torch.device("cpu"))
    assert [len(r.curves) for r in results] == [2, 2, 2]
    assert all("entropy" in r.curves[-1] for r in results)


def test_the_walkthrough_strategy_is_gone_after_its_test():
    from transfer.train.strategies import names

    assert "scratch_ls" not in names()
