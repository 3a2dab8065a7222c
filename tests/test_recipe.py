"""Recipe validation: unknown keys and wrong types are errors naming the key and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from transfer import UserError
from transfer.grid.recipe import apply_set, load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
BASE = {"target": {"corpus": "modma"}, "strategies": [{"name": "scratch"}]}


def test_defaults_fill_in():
    r = parse_recipe(dict(BASE))
    assert r.protocol.name == "subject-kfold" and r.protocol.folds == 5 and r.seeds == [0, 1, 2]
    assert r.train.betas == [0.93, 0.98] and r.backbone.name == "timnet"


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(UserError, match=r"unknown recipe key 'train\.lrr'.*allowed:.*\blr\b"):
        parse_recipe({**BASE, "train": {"lrr": 0.1}})
    with pytest.raises(UserError, match=r"unknown recipe key 'seed'.*seeds"):
        parse_recipe({**BASE, "seed": 1})


def test_wrong_type_names_key():
    with pytest.raises(UserError, match=r"'train\.epochs' must be an integer, got 'ten'"):
        parse_recipe({**BASE, "train": {"epochs": "ten"}})
    with pytest.raises(UserError, match=r"'protocol\.name' must be one of 'subject-kfold'"):
        parse_recipe({**BASE, "protocol": {"name": "random"}})


def test_strategy_options_are_checked():
    with pytest.raises(UserError, match=r"strategy 'finetune'.*unknown option.*general_lr_scale"):
        parse_recipe({**BASE, "strategies": [{"name": "finetune", "lr_scale": 0.2}]})
    with pytest.raises(UserError, match="unknown strategy 'magic'.*scratch"):
        parse_recipe({**BASE, "strategies": [{"name": "magic"}]})
    with pytest.raises(UserError, match="need a \\[source\\]"):
        parse_recipe({**BASE, "strategies": [{"name": "freeze"}]})
    r = parse_recipe({**BASE, "source": {"corpus": "casia"},
                      "strategies": [{"name": "finetune", "general_lr_scale": 0.2},
                                     {"name": "finetune", "label": "ft_slow"}]})
    assert [s.label for s in r.strategies] == ["finetune", "ft_slow"]
    assert r.strategies[0].options.general_lr_scale == 0.2


def test_set_uses_dotted_names():
    data = {**BASE, "source": [{"corpus": "casia"}],
            "strategies": [{"name": "scratch"}, {"name": "dann"}]}
    for s in ("train.epochs=3", "protocol.name=loso", "seeds=[4, 5]", "source.root=/x",
              "strategies.dann.adv_weight=0.5", "backbone.options.filters=8"):
        apply_set(data, s)
    r = parse_recipe(data)
    assert r.train.epochs == 3 and r.protocol.name == "loso" and r.seeds == [4, 5]
    assert r.source[0].root == "/x" and r.strategies[1].options.adv_weight == 0.5
    assert r.backbone.options == {"filters": 8}
    with pytest.raises(UserError, match="no strategy labelled 'ddg'"):
        apply_set(data, "strategies.ddg.mu=0.1")
    with pytest.raises(UserError, match="key=value"):
        apply_set(data, "train.epochs")


def test_every_shipped_recipe_validates():
    recipes = sorted((ROOT / "recipes").glob("*.toml"))
    assert {"demo.toml", "casia_to_modma_ddg.toml"} <= {p.name for p in recipes}
    for path in recipes:
        assert load_recipe(path).strategies


@pytest.mark.slow
def test_dry_run_prints_plan_and_bad_recipe_is_clean_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "transfer.run", str(ROOT / "recipes/demo.toml"),
                          "--dry-run", "--set", "train.epochs=2"],
                         capture_output=True, text=True, check=True)
    assert '"epochs": 2' in out.stdout and "planned runs: 7 strategies x 4 fold(s)" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[target]\ncorpus = "modma"\n[train]\nepoch = 3\n[[strategies]]\nname="scratch"\n')
    res = subprocess.run([sys.executable, "-m", "transfer.run", str(bad), "--dry-run"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "train.epoch" in res.stderr and "Traceback" not in res.stderr


# Issue 28 case 6, with the probe's own values: each trained to a silent wrong table (or passed
# --dry-run) before strategy and backbone options declared their ranges.
@pytest.mark.parametrize("assignment, key", [
    ("backbone.options.bn_momentum=7.5", "bn_momentum"),
    ("strategies.ddg.mu=5", "mu"),
    ("strategies.ddg.align_lr=0", "align_lr"),
    ("strategies.mmd_ae.align_every=-2", "align_every"),
    ("strategies.dann.disc_hidden=0", "disc_hidden"),
    ("strategies.dann.adv_weight=-3", "adv_weight"),
    ("backbone.options.no_such_option=1", "no_such_option"),
])
def test_out_of_range_strategy_and_backbone_options_are_refused_at_load(assignment, key):
    with pytest.raises(UserError, match=key) as err:
        load_recipe(ROOT / "recipes" / "demo.toml", [assignment])
    assert "\n" not in str(err.value)
