"""Self-supervised features (kind = "ssl") on tiny random WavLM / HuBERT / wav2vec 2.0 models,
the layer-weighted sum front, and a tiny recipe end to end.

Tests that need ``transformers`` skip when it is absent (``pip install -e ".[ssl]"``); the
errors for a missing extra or a bad checkpoint are tested without it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_recipe

import backbones
from backbones.ssl_front import LayerWeightedSum
from transfer import UserError
from transfer.data import ssl
from transfer.data.audio import SegmentSpec
from transfer.data.corpora import build_manifest
from transfer.data.features import FeatureSpec, extract, load_features
from transfer.data.kinds import bind, make_spec
from transfer.grid.recipe import load_recipe

HIDDEN, LAYERS = 32, 2  # -> 3 hidden states


def save_tiny(path: Path, model_type: str = "wavlm", seed: int = 0,
              do_normalize: bool | None = None) -> Path:
    """A randomly initialised 2-layer, hidden-32 model whose convolutional front strides by
    320 samples (50 frames per second at 16 kHz, as the real ones), saved with save_pretrained."""
    pytest.importorskip("transformers")
    ssl.random_checkpoint(path, "tiny", model_type, seed)
    if do_normalize is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(
            {"do_normalize": do_normalize, "sampling_rate": 16000}))
    return path


@pytest.fixture(scope="module")
def tiny_wavlm(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("wavlm"))


def audio(n: int = 3, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((n, int(seconds * 16000)))
            ).astype(np.float32)


# --- errors that need no transformers ----------------------------------------------------------
def test_missing_transformers_is_an_error_naming_the_extra(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text('{"model_type": "wavlm"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    monkeypatch.setattr(ssl, "_MODELS", {})
    with pytest.raises(UserError, match=r'transformers: pip install -e "\.\[ssl\]"'):
        extract(audio(1), 16000, make_spec(kind="ssl", model=str(tmp_path)))


def test_missing_or_wrong_checkpoint_says_what_to_put_there(tmp_path):
    with pytest.raises(UserError, match="needs features.model.*save_pretrained"):
        make_spec(kind="ssl")
    cases = {tmp_path / "nowhere": "no checkpoint folder", tmp_path / "empty": "no config.json",
             tmp_path / "noweights": "no weights", tmp_path / "bert": "'bert' model"}
    (tmp_path / "empty").mkdir()
    for name, config in (("noweights", {"model_type": "wavlm"}), ("bert", {"model_type": "bert"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    (tmp_path / "bert" / "model.safetensors").write_bytes(b"")
    for path, message in cases.items():
        with pytest.raises(UserError, match=message) as err:
            ssl.checkpoint_dir(str(path))
        assert "save_pretrained" in str(err.value) or "supported: wavlm" in str(err.value)


def test_bad_ssl_settings_in_a_recipe_are_clean_errors(tmp_path):
    for features, message in (('kind = "ssl"', "needs features.model"),
                              ('kind = "ssl"\nmodel = "m"\nlayers = []', "non-empty list"),
                              ('kind = "ssl"\nmodel = "m"\nlayers = "some"', "features.layers"),
                              ('kind = "ssl"\nmodel = "m"\npool_frames = 0', "pool_frames")):
        path = tiny_recipe(tmp_path / "r.toml", ["scratch"], extra=f"[features]\n{features}\n")
        with pytest.raises(UserError, match=message):
            load_recipe(path)


def test_inspect_lists_the_ssl_options(capsys):
    from transfer.inspect import main

    assert main(["features"]) == 0
    out = capsys.readouterr().out
    assert "'ssl'" in out and "pool_frames" in out and "layers" in out and "save_pretrained" in out


# --- the layer-weighted sum ----------------------------------------------------------------
def test_layer_weighted_sum_matches_softmax_formula_and_its_gradient():
    torch.manual_seed(0)
    front = LayerWeightedSum(2, 3).double()  # 2 runs, 3 layers: a softmax per run
    with torch.no_grad():
        front.weight.copy_(torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -3.0]]))
    x = torch.randn(2, 3, 3 * 2, 4, dtype=torch.double)  # (K, B, L*D, T)
    out = front(x)
    assert out.shape == (2, 3, 2, 4)
    for k in range(2):
        w = torch.softmax(front.weight[k].detach(), 0)
        expected = sum(w[i] * x[k, :, 2 * i:2 * (i + 1)] for i in range(3))
        torch.testing.assert_close(out[k], expected)
    x.requires_grad_(True)  # the hand-written backward, for the input and the weights
    assert torch.autograd.gradcheck(lambda inp, wt: torch.func.functional_call(
        front, {"weight": wt}, (inp,)), (x, front.weight.detach().clone().requires_grad_()),
        fast_mode=True)
    front(x).pow(2).sum().backward()
    assert front.weight.grad.abs().min() > 0


def test_timnet_with_layer_weights_keeps_the_split_and_trains_the_weights():
    plain = backbones.create("timnet", in_features=32, filters=8, blocks=3, split=1, stem="bn")
    m = backbones.create("timnet", in_features=3 * 32, filters=8, blocks=3, split=1, stem="bn",
                         layer_weights=3)
    count = sum(p.numel() for p in m.parameters())
    assert count == sum(p.numel() for p in plain.parameters()) + 3  # only the 3 weights
    general = {id(p) for p in m.general.parameters()}
    assert id(m.general["stem"][0].weight) in general
    assert m.general["stem"][0].weight.shape == (1, 3)  # (K, L), packed like every parameter
    m(torch.randn(4, 96, 20)).sum().backward()
    assert m.general["stem"][0].weight.grad.abs().sum() > 0
    official = backbones.create("timnet", in_features=39, filters=39, blocks=8, num_classes=6)
    assert sum(p.numel() for p in official.parameters()) == 104_456  # unchanged when unused
    with pytest.raises(backbones.OptionError, match="layer_weights"):
        backbones.create("timnet", in_features=97, layer_weights=3)


def test_layer_weights_are_set_from_stacked_features(monkeypatch):
    """The backbone decides what stacked layers set (its ``options_for_features`` hook); the
    engine only says how many there are."""
    from backbones import registry

    def opts(options, layers):
        return backbones.options_for_features("timnet", options, in_features=13 * 4,
                                              stacked_layers=layers)

    assert opts({"filters": 8}, 13) == {"filters": 8, "in_features": 52, "layer_weights": 13}
    assert opts({"layer_weights": 0}, 13)["layer_weights"] == 0
    with pytest.raises(backbones.OptionError, match="stack 13 layers"):
        opts({"layer_weights": 12}, 13)
    with pytest.raises(backbones.OptionError, match="needs stacked layers"):
        opts({"layer_weights": 13}, 0)
    assert opts({"filters": 8}, 0) == {"filters": 8, "in_features": 52}

    class Plain:  # a backbone without the hook: the L x dim channels are plain features
        pass

    monkeypatch.setitem(registry._REGISTRY, "_plain", (Plain, object))
    assert backbones.options_for_features("_plain", {"filters": 8}, in_features=52,
                                          stacked_layers=13) == {"filters": 8, "in_features": 52}


# --- extraction on a tiny model ------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["wavlm", "hubert", "wav2vec2"])
def test_shapes_per_model_type(tmp_path, model_type):
    path = save_tiny(tmp_path / model_type, model_type)
    x = audio(3, 1.0)
    last = extract(x, 16000, make_spec(kind="ssl", model=str(path), layers=-1))
    spec_all = make_spec(kind="ssl", model=str(path))
    stacked = extract(x, 16000, spec_all)
    pooled = extract(x, 16000, make_spec(kind="ssl", model=str(path), pool_frames=3))
    frames = 50  # 16000 samples, stride 320
    assert last.shape == (3, HIDDEN, frames) and last.dtype == np.float32
    assert stacked.shape == (3, (LAYERS + 1) * HIDDEN, frames) == (3, bind(spec_all).dim, frames)
    assert pooled.shape == (3, (LAYERS + 1) * HIDDEN, 17)  # ceil(50 / 3)
    bound = bind(spec_all)
    assert bound.frames(16000) == frames and ssl.stacked_layers(bound.opts) == LAYERS + 1
    np.testing.assert_allclose(pooled[..., 0], stacked[..., :3].mean(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled[..., -1], stacked[..., -2:].mean(-1), rtol=1e-5, atol=1e-6)
    assert np.isfinite(stacked).all()


def test_layer_selection(tiny_wavlm):
    x = audio(2, 0.5)
    stacked = extract(x, 16000, make_spec(kind="ssl", model=str(tiny_wavlm)))
    blocks = stacked.reshape(2, LAYERS + 1, HIDDEN, -1)  # layer-major
    for index in (0, 1, 2, -1):
        one = extract(x, 16000, make_spec(kind="ssl", model=str(tiny_wavlm), layers=index))
        np.testing.assert_allclose(one, blocks[:, index], rtol=1e-5, atol=1e-6)
    assert not np.allclose(blocks[:, 0], blocks[:, 2])
    avg = extract(x, 16000, make_spec(kind="ssl", model=str(tiny_wavlm), layers=[0, 2]))
    np.testing.assert_allclose(avg, blocks[:, [0, 2]].mean(1), rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="index 3 is out of range.*3 hidden states"):
        extract(x, 16000, make_spec(kind="ssl", model=str(tiny_wavlm), layers=3))
    with pytest.raises(UserError, match="expects 16000 Hz"):
        extract(x, 8000, make_spec(kind="ssl", model=str(tiny_wavlm)))


def test_input_normalisation_follows_the_preprocessor_config(tmp_path):
    x = audio(1, 0.5)
    for flag in (True, False):
        path = save_tiny(tmp_path / str(flag), do_normalize=flag)
        spec = make_spec(kind="ssl", model=str(path), layers=-1)
        same = np.allclose(extract(x, 16000, spec), extract(10 * x, 16000, spec), atol=1e-4)
        assert same == flag  # normalised input: the scale of the audio does not matter


def test_speed_command_runs(capsys):
    pytest.importorskip("transformers")
    before = torch.get_num_threads()
    try:
        from transfer.ssl import main

        assert main(["--random", "tiny", "--segments", "2", "--seconds", "1", "--repeats",
                     "1", "--device", "cpu", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "(1 threads)" in out and "s of audio per second" in out


def test_unloadable_checkpoint_is_a_user_error(tmp_path):
    path = save_tiny(tmp_path / "m")
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot load the checkpoint.*save_pretrained"):
        extract(audio(1), 16000, make_spec(kind="ssl", model=str(path)))


def test_cache_hit_and_a_changed_checkpoint_is_a_miss(tiny_casia, tmp_path):
    model = save_tiny(tmp_path / "m")
    manifest = build_manifest("casia", tiny_casia)
    seg = SegmentSpec(seconds=1.0, mode="pad")
    spec = make_spec(kind="ssl", model=str(model), pool_frames=2)
    first = load_features(manifest, seg, spec, progress=False, root=tmp_path / "c")
    assert not first.cache_hit and first.x.shape == (len(manifest.frame), 3 * HIDDEN, 25)
    again = load_features(manifest, seg, spec, progress=False, root=tmp_path / "c")
    assert again.cache_hit and again.key == first.key
    np.testing.assert_array_equal(again.x, first.x)
    pooled = load_features(manifest, seg, spec, progress=False, root=tmp_path / "c2", workers=2)
    assert not pooled.cache_hit  # audio read in 2 worker processes, the model here: same result
    np.testing.assert_allclose(pooled.x, first.x, rtol=1e-5, atol=1e-6)
    assert pooled.segments.equals(first.segments)
    moved = tmp_path / "elsewhere"
    model.rename(moved)  # the key is the checkpoint's content, not its path
    spec = make_spec(kind="ssl", model=str(moved), pool_frames=2)
    assert load_features(manifest, seg, spec, progress=False, root=tmp_path / "c").cache_hit
    save_tiny(moved, seed=1)  # new weights in the same folder
    changed = load_features(manifest, seg, spec, progress=False, root=tmp_path / "c")
    assert not changed.cache_hit and changed.key != first.key
    assert not np.allclose(changed.x, first.x)
    other = make_spec(kind="ssl", model=str(moved), pool_frames=2, layers=-1)
    assert load_features(manifest, seg, other, progress=False, root=tmp_path / "c").key \
        not in (first.key, changed.key)


def test_ssl_options_are_not_mfcc_options_and_defaults_key_alike(tiny_casia):
    """Each kind has its own options: an ssl option on an mfcc spec is an error naming the
    kind's options; a spec with its options left out keys the cache as one that spells out
    the defaults."""
    from transfer.data.features import cache_key

    with pytest.raises(UserError, match=r"'features.layers' is not an option of features.kind "
                                        r"= 'mfcc'; its options: deltas, hop, n_fft"):
        make_spec(layers=3)
    manifest = build_manifest("casia", tiny_casia)
    seg = SegmentSpec(seconds=1.0, mode="pad")
    assert cache_key(manifest, seg, FeatureSpec()) == cache_key(
        manifest, seg, make_spec(n_mfcc=13, deltas=2, n_fft=800, hop=512, n_mels=128))
    assert cache_key(manifest, seg, FeatureSpec()) != cache_key(manifest, seg, make_spec(hop=256))


def test_tiny_recipe_end_to_end(tmp_path, tiny_modma):
    from backbones.timnet import upgrade_state
    from transfer.predict import predict_files
    from transfer.run import run_recipe
    from transfer.train.package import build_model, load_package

    model = save_tiny(tmp_path / "wavlm")
    path = tiny_recipe(tmp_path / "r.toml", ["freeze"], name="ssl",
                       extra=f'[features]\nkind = "ssl"\nmodel = "{model}"\npool_frames = 4\n')
    recipe = load_recipe(path)
    recipe.export = True
    out, table, failed = run_recipe(recipe, results_dir=tmp_path / "res", progress=False)
    assert failed == 0 and len(table) == 1
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert {r["status"] for r in records} == {"ok"} and len(records) == 2
    package = load_package(out / "models" / "freeze.pt")
    assert package["options"]["layer_weights"] == LAYERS + 1
    assert package["options"]["in_features"] == (LAYERS + 1) * HIDDEN
    layer_weights = package["state"]["general.stem.0.weight"]
    assert layer_weights.shape == (1, LAYERS + 1)  # one run
    assert layer_weights.abs().sum() > 0  # trained in source pretraining (they start at 0)
    built = build_model(package)  # the layout of this version: upgrade_state leaves it alone
    assert upgrade_state(package["state"], built.options) is package["state"]
    assert torch.equal(built.general["stem"][0].weight, package["state"]["general.stem.0.weight"])
    assert package["features"]["kind"] == "ssl" and package["features"]["model"] == str(model)
    subject = sorted(p for p in tiny_modma.iterdir() if p.is_dir())[0]
    preds, problems = predict_files(package, sorted(subject.glob("*.wav")))
    assert not problems and set(preds["predicted"]) <= {"MDD", "HC"}
