"""Self-supervised speech features: WavLM, HuBERT and wav2vec 2.0 hidden states from a local
checkpoint (``[features] kind = "ssl"``).

This module owns everything about the checkpoint: finding and checking it, its content hash
(part of the feature cache key), loading it offline, and turning batches of 16-kHz segments
into frame features on the GPU when there is one. ``transformers`` is an optional extra
(``pip install -e ".[ssl]"``) and is imported only here, only when ``kind = "ssl"``; nothing is
ever downloaded (``HF_HUB_OFFLINE`` and ``local_files_only``).

Layers: the model gives ``L = num_hidden_layers + 1`` hidden states (index 0 is the input of
the first Transformer layer, i.e. the projected convolutional features; ``L - 1`` the last
layer). ``layers`` picks one index (negative counts from the end), a list whose states are
averaged, or ``"all"``.

Shape of the features: (segments, dim, frames) for one index or a list; with ``"all"``
(segments, L * dim, frames), layer-major (channel ``l * dim + d`` is dimension ``d`` of layer
``l``), so every backbone and strategy consumes it as ordinary features; the TIM-Net family
adds a learnable softmax-weighted sum over the ``L`` layers in front of its stem
(:mod:`backbones.ssl_front`, part of ``general``). ``pool_frames = p`` averages every ``p``
frames (50 Hz -> 50 / p Hz; a partial last window is averaged over what it holds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transfer import UserError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

    from transfer.data.kinds import SslOptions

#: ``model_type`` in config.json -> the name users know.
SUPPORTED = {"wavlm": "WavLM", "hubert": "HuBERT", "wav2vec2": "wav2vec 2.0"}
EXTRA = 'pip install -e ".[ssl]"'
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
            "pytorch_model.bin.index.json")
_HASHED_SUFFIXES = (".json", ".safetensors", ".bin")
HOW_TO_SAVE = (
    "put a folder there with a WavLM, HuBERT or wav2vec 2.0 checkpoint saved by transformers' "
    "save_pretrained (config.json + model.safetensors, and preprocessor_config.json); on a "
    "machine with internet: python -c \"from transformers import AutoModel, AutoFeatureExtractor; "
    "n = 'microsoft/wavlm-base-plus'; d = 'checkpoints/wavlm-base-plus'; "
    "AutoModel.from_pretrained(n).save_pretrained(d); "
    "AutoFeatureExtractor.from_pretrained(n).save_pretrained(d)\" and copy the folder over")


def require_transformers() -> Any:
    """The ``transformers`` module, imported offline; a :class:`UserError` naming the extra if
    it is not installed."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # never reach the network, whatever else is set
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError:
        raise UserError('features.kind = "ssl" needs the optional package transformers: '
                        f'{EXTRA} (or pip install transformers)') from None
    return transformers


# --- the checkpoint ----------------------------------------------------------------------------
def checkpoint_dir(model: str) -> Path:
    """The checkpoint folder named by ``features.model`` (``~`` and ``$VARS`` expanded; a file
    inside the folder also names it), checked for a config and weights."""
    if not model:
        raise UserError(f'features.kind = "ssl" needs features.model = "<folder>": {HOW_TO_SAVE}')
    path = Path(os.path.expandvars(os.path.expanduser(model))).resolve()
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise UserError(f"features.model: no checkpoint folder {path}; {HOW_TO_SAVE}")
    if not (path / "config.json").is_file():
        raise UserError(f"features.model: {path} has no config.json, so it is not a saved "
                        f"transformers checkpoint; {HOW_TO_SAVE}")
    if not any((path / name).is_file() for name in _WEIGHTS):
        raise UserError(f"features.model: {path} has a config.json but no weights "
                        f"({' or '.join(_WEIGHTS[:2])}); {HOW_TO_SAVE}")
    model_type = read_config(path).get("model_type")
    if model_type not in SUPPORTED:
        raise UserError(f"features.model: {path} holds a {model_type!r} model; supported: "
                        f"{', '.join(f'{k} ({v})' for k, v in SUPPORTED.items())}")
    return path


def read_config(path: Path) -> dict[str, Any]:
    """The checkpoint's config.json."""
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"features.model: cannot read {path / 'config.json'}: {err}") from None


def _preprocessor(path: Path) -> dict[str, Any]:
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"features.model: cannot read {file}: {err}") from None


def input_normalization(path: Path) -> bool:
    """Whether the model expects each segment normalised to zero mean and unit variance:
    ``do_normalize`` of preprocessor_config.json, else the convention of the checkpoints
    published with a layer-norm convolutional front (``feat_extract_norm = "layer"``)."""
    pre = _preprocessor(path)
    if "do_normalize" in pre:
        return bool(pre["do_normalize"])
    return read_config(path).get("feat_extract_norm", "group") == "layer"


def expected_rate(path: Path) -> int:
    """The sample rate the checkpoint expects (preprocessor_config.json, else 16000)."""
    return int(_preprocessor(path).get("sampling_rate", 16000))


_HASHES: dict[tuple, str] = {}


def checkpoint_hash(model: str) -> str:
    """sha256 over the names and contents of the checkpoint's config and weight files
    (memoised per process by their sizes and modification times)."""
    import hashlib

    path = checkpoint_dir(model)
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix in _HASHED_SUFFIXES)
    stamp = (str(path), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if stamp not in _HASHES:
        digest = hashlib.sha256()
        for p in files:
            digest.update(p.name.encode() + b"\0")
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
        _HASHES[stamp] = digest.hexdigest()
    return _HASHES[stamp]


def num_states(model: str) -> int:
    """Hidden states the model returns: Transformer layers + 1."""
    return int(read_config(checkpoint_dir(model)).get("num_hidden_layers", 12)) + 1


def layer_indices(spec: SslOptions, states: int) -> list[int]:
    """The hidden-state indices ``spec.layers`` selects (non-negative, checked)."""
    chosen = list(range(states)) if spec.layers == "all" else (
        [spec.layers] if isinstance(spec.layers, int) else list(spec.layers))
    out = []
    for i in chosen:
        if not -states <= i < states:
            raise UserError(f"features.layers: index {i} is out of range; this checkpoint has "
                            f"{states} hidden states (0 = the convolutional features, "
                            f"{states - 1} = the last layer; negative counts from the end)")
        out.append(i % states)
    return out


def stacked_layers(spec: SslOptions) -> int:
    """``L`` when the features stack every hidden state (``layers = "all"``), else 0."""
    return num_states(spec.model) if spec.layers == "all" else 0


def feature_dim(spec: SslOptions) -> int:
    """Channels of the features: hidden size, times ``L`` with ``layers = "all"``."""
    hidden = int(read_config(checkpoint_dir(spec.model)).get("hidden_size", 768))
    return hidden * (stacked_layers(spec) or 1)


def frames(spec: SslOptions, samples: int) -> int:
    """Frames of a segment of ``samples`` samples: the convolutional front's output length,
    then ``pool_frames`` (ceil)."""
    cfg = read_config(checkpoint_dir(spec.model))
    n = samples
    for kernel, stride in zip(cfg.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2]),
                              cfg.get("conv_stride", [5, 2, 2, 2, 2, 2, 2])):
        n = (n - kernel) // stride + 1
    return max(0, -(-n // spec.pool_frames))


def cache_fields(spec: SslOptions) -> dict[str, Any]:
    """What determines ssl features, for the feature cache key: the checkpoint's content (not
    its path), the layers and the pooling."""
    layers = spec.layers if isinstance(spec.layers, (int, str)) else list(spec.layers)
    return {"kind": "ssl", "checkpoint": checkpoint_hash(spec.model), "layers": layers,
            "pool_frames": spec.pool_frames, "normalize_input":
            input_normalization(checkpoint_dir(spec.model))}


@contextlib.contextmanager
def _no_hf_bars(transformers: Any) -> Iterator[None]:
    """transformers' own progress bars off (ours only), restored afterwards."""
    hf_logging = transformers.utils.logging
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def random_checkpoint(path: str | Path, size: str = "tiny", model_type: str = "wavlm",
                      seed: int = 0) -> Path:
    """Save a randomly initialised model with ``save_pretrained`` (tests and speed checks).

    ``tiny``: 2 layers, hidden 32, a two-layer convolutional front that strides 320 samples as
    the published models do (50 frames per second at 16 kHz); ``base``: the published base
    configuration (12 layers, hidden 768, 7 convolutions).
    """
    import torch

    transformers = require_transformers()
    cls = {"wavlm": transformers.WavLMConfig, "hubert": transformers.HubertConfig,
           "wav2vec2": transformers.Wav2Vec2Config}[model_type]
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                conv_dim=(16, 16), conv_kernel=(20, 16), conv_stride=(20, 16),
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    cfg = cls(**tiny) if size == "tiny" else cls()
    torch.manual_seed(seed)
    with _no_hf_bars(transformers):
        transformers.AutoModel.from_config(cfg).save_pretrained(str(path))
    return Path(path)


# --- the model ---------------------------------------------------------------------------------
_MODELS: dict[tuple, Any] = {}


def device() -> torch.device:
    """Where extraction runs: the GPU when there is one."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(model: str, dev: torch.device | None = None) -> Any:
    """The checkpoint as a transformers model in eval mode on ``dev`` (kept for reuse)."""
    path = checkpoint_dir(model)
    dev = dev or device()
    key = (str(path), checkpoint_hash(model), str(dev))
    if key not in _MODELS:
        transformers = require_transformers()
        try:
            with _no_hf_bars(transformers):
                net = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
        except Exception as err:  # noqa: BLE001 - any loading failure is a bad checkpoint
            raise UserError(f"features.model: cannot load the checkpoint in {path} "
                            f"({type(err).__name__}: {err}); {HOW_TO_SAVE}") from None
        _MODELS.clear()  # one model at a time: they are large
        _MODELS[key] = net.float().eval().to(dev)
    return _MODELS[key]


def release() -> None:
    """Drop the loaded model (and its GPU memory)."""
    import torch

    _MODELS.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def extract(segments: np.ndarray, sample_rate: int, spec: SslOptions, *,
            dev: torch.device | None = None, batch: int | None = None) -> np.ndarray:
    """Features of a batch of equal-length segments.

    Shape: (N, samples) -> (N, dim, frames), or (N, L * dim, frames) with ``layers = "all"``;
    float32. Runs under ``torch.inference_mode()`` in batches of ``batch`` segments (default
    16 on a GPU, 8 on the CPU).
    """
    import torch

    path = checkpoint_dir(spec.model)
    rate = expected_rate(path)
    if sample_rate != rate:
        raise UserError(f"features.sample_rate is {sample_rate} but the checkpoint in {path} "
                        f"expects {rate} Hz audio: set features.sample_rate = {rate}")
    dev = dev or device()
    net = load_model(spec.model, dev)
    normalize = input_normalization(path)
    picks = layer_indices(spec, int(net.config.num_hidden_layers) + 1)
    batch = batch or (16 if dev.type == "cuda" else 8)
    out = []
    with torch.inference_mode():
        for i in range(0, len(segments), batch):
            wav = torch.from_numpy(np.ascontiguousarray(segments[i:i + batch],
                                                        dtype=np.float32)).to(dev)  # (B, S)
            if normalize:  # as the checkpoint's feature extractor does (do_normalize)
                wav = (wav - wav.mean(-1, keepdim=True)) / torch.sqrt(
                    wav.var(-1, keepdim=True, unbiased=False) + 1e-7)
            states = net(wav, output_hidden_states=True).hidden_states  # L x (B, T, D)
            chosen = torch.stack([states[j] for j in picks], 1)  # (B, k, T, D)
            if spec.layers != "all":
                chosen = chosen.mean(1, keepdim=True)  # (B, 1, T, D)
            b, k, t, d = chosen.shape
            h = chosen.permute(0, 1, 3, 2).reshape(b, k * d, t)  # (B, k*D, T), layer-major
            if spec.pool_frames > 1:
                h = torch.nn.functional.avg_pool1d(h, spec.pool_frames, spec.pool_frames,
                                                   ceil_mode=True)  # (B, k*D, T')
            out.append(h.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0, 0), np.float32)


def run_jobs(jobs: list, workers: int, progress: bool, title: str, reader: Any) -> list:
    """The ssl counterpart of the feature workers: audio is read and cut in ``workers``
    processes (a few jobs ahead), the model runs in this process, batched, on the GPU when
    there is one. Returns one (features, metadata) pair per job, in order."""
    from transfer.common.progress import progress_bar

    if not jobs:
        return []
    spec = jobs[0][2].opts  # the jobs' kind with its options (transfer.data.kinds.Bound)
    dev = device()
    t0 = time.perf_counter()
    results: list = []
    seconds = 0.0
    try:
        load_model(spec.model, dev)  # a bad checkpoint fails before any audio is read
        with progress_bar(progress) as bar:
            task = bar.add_task(f"{title} on {dev.type}", total=len(jobs))

            def consume(waves: np.ndarray, meta: list) -> None:
                nonlocal seconds
                results.append((extract(waves, jobs[0][1].sample_rate, spec, dev=dev), meta))
                seconds += waves.size / jobs[0][1].sample_rate
                bar.advance(task)

            if workers <= 1:
                for job in jobs:
                    consume(*reader(job))
            else:
                with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                    ahead = 2 * workers  # bounded read-ahead: audio never piles up in memory
                    pending = [pool.submit(reader, job) for job in jobs[:ahead]]
                    for i in range(len(jobs)):
                        waves, meta = pending[i].result()
                        if i + ahead < len(jobs):
                            pending.append(pool.submit(reader, jobs[i + ahead]))
                        pending[i] = None  # free the audio once used
                        consume(waves, meta)
    finally:
        release()  # the GPU memory goes back to training
    elapsed = time.perf_counter() - t0
    if progress:
        log.info(f"{title}: {seconds:.0f} s of segments in {elapsed:.1f} s on {dev.type} "
                 f"({seconds / max(elapsed, 1e-9):.1f} s of audio per second)")
    return results


def speed(spec: SslOptions, *, segments: int = 64, seconds: float = 10.0, repeats: int = 3,
          batch: int | None = None, dev: torch.device | None = None) -> list[float]:
    """Extraction speed in seconds of audio per second, once per repeat (after a warm-up)."""
    x = (0.1 * np.random.default_rng(0).standard_normal((segments, int(seconds * 16000)))
         ).astype(np.float32)
    batch = batch or (16 if (dev or device()).type == "cuda" else 8)
    extract(x[:batch], 16000, spec, dev=dev, batch=batch)  # load + warm-up
    rates = []
    for _ in range(repeats):
        if (dev or device()).type == "cuda":
            import torch

            torch.cuda.synchronize()
        t = time.perf_counter()
        extract(x, 16000, spec, dev=dev, batch=batch)  # returns on the host: synchronised
        rates.append(segments * seconds / (time.perf_counter() - t))
    return rates
