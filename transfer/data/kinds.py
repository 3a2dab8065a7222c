"""Feature kinds: the one place a kind of frame features is declared (like strategies and
backbones, by decorator).

A kind is a :class:`FeatureKind` subclass registered with :func:`register`: its name, its
typed options (a dataclass of :func:`transfer.common.options.opt` fields: the recipe's
``[features]`` keys besides ``kind``, ``sample_rate`` and ``normalize``), its extractor and
its frame count and size. Recipes, the feature cache, model packages and ``python -m
transfer.inspect features`` read the registry; nothing else names a kind::

    @dataclass
    class RmsOptions:
        hop: int = opt(512, ge=1)

    @register("rms")
    class Rms(FeatureKind):
        Options = RmsOptions

        def extract(self, segments, sample_rate, opts):
            ...  # (N, samples) -> (N, 1, frames)

        def dim(self, opts):
            return 1

        def frames(self, opts, samples):
            return 1 + samples // opts.hop

The built-in kinds: ``mfcc`` and ``logmel`` (librosa) here, ``ssl`` (its checkpoint logic in
:mod:`transfer.data.ssl`) below. One file on purpose, above ~400 lines: the registry and every
kind's declaration together are what "adding a kind touches one file" means.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from transfer import UserError
from transfer.common import options
from transfer.common.config import FeatureSpec, SegmentSpec
from transfer.common.options import FieldError, Naming, opt

_REGISTRY: dict[str, FeatureKind] = {}
_SHARED = tuple(f.name for f in dataclasses.fields(FeatureSpec) if f.name != "options")
_NAMING = Naming(prefix="features")


class FeatureKind:
    """A kind of frame features. Subclasses set ``Options`` (a dataclass) and implement
    :meth:`extract`, :meth:`dim` and :meth:`frames`; the other hooks have defaults.

    ``frames_known``: whether :meth:`frames` needs nothing but the options (a recipe's
    ``--dry-run`` then checks that a segment gives enough frames).
    """

    name: str = ""
    Options: type = type(None)
    frames_known: bool = True

    def extract(self, segments: np.ndarray, sample_rate: int, opts: Any) -> np.ndarray:
        """Features of a batch of equal-length segments.

        Shape: (N, samples) -> (N, :meth:`dim`, :meth:`frames`), float32.
        """
        raise NotImplementedError

    def dim(self, opts: Any) -> int:
        """Feature channels per frame."""
        raise NotImplementedError

    def frames(self, opts: Any, samples: int) -> int:
        """Frames of a segment of ``samples`` samples."""
        raise NotImplementedError

    def min_samples(self, opts: Any) -> int:
        """The shortest audio that gives one frame (shorter files are skipped)."""
        return 1

    def frame_setting(self, opts: Any) -> str:
        """The setting that decides the frame rate, for errors (``hop 512``)."""
        return ""

    def fewer_frames_fix(self, opts: Any, seg: SegmentSpec, seconds_key: str,
                         needed: int) -> str:
        """What to change when a segment gives fewer than ``needed`` frames."""
        return f"use a longer {seconds_key}"

    def work_bytes(self, opts: Any, frames: int) -> int:
        """Working memory of extracting one segment besides its audio (an STFT), bytes."""
        return 0

    def cache_fields(self, opts: Any) -> dict[str, Any]:
        """What determines the features, for the feature cache key."""
        return {"kind": self.name, **dataclasses.asdict(opts)}

    def canonical(self, opts: Any) -> Any:
        """The options as a model package keeps them (e.g. an absolute checkpoint path)."""
        return opts

    def prepare(self, opts: Any) -> None:
        """Checks that need more than the options (a checkpoint), before any audio is read."""

    def stacked_layers(self, opts: Any) -> int:
        """``L`` when every frame stacks ``L`` layers of a model (the backbone may weight
        them), else 0."""
        return 0

    def run_jobs(self, jobs: list, workers: int, progress: bool, title: str,
                 reader: Callable) -> list | None:
        """Run the extraction jobs another way than the default worker processes (ssl: the
        model in this process, on the GPU); None = the default."""
        return None


def register(name: str) -> Callable[[type[FeatureKind]], type[FeatureKind]]:
    """Class decorator: make a feature kind available as ``[features] kind = name``."""

    def deco(cls: type[FeatureKind]) -> type[FeatureKind]:
        if name in _REGISTRY:
            raise ValueError(f"feature kind {name!r} registered twice")
        clash = sorted(set(_SHARED) & {f.name for f in dataclasses.fields(cls.Options)})
        if clash:
            raise ValueError(f"feature kind {name!r}: options {clash} are [features] keys of "
                             "every kind; name them otherwise")
        cls.name = name
        _REGISTRY[name] = cls()
        return cls

    return deco


def names() -> list[str]:
    """Names of the registered feature kinds, in registration order."""
    return list(_REGISTRY)


def get_kind(name: str) -> FeatureKind:
    """The kind registered as ``name``; a one-line error listing the kinds otherwise."""
    if name not in _REGISTRY:
        raise UserError(f"recipe key 'features.kind' must be one of "
                        f"{', '.join(repr(n) for n in names())}, got {name!r}")
    return _REGISTRY[name]


@dataclass(frozen=True)
class Bound:
    """A feature spec's kind with its options built (checked, typed)."""

    kind: FeatureKind
    opts: Any

    def extract(self, segments: np.ndarray, sample_rate: int) -> np.ndarray:
        """Shape: (N, samples) -> (N, dim, frames), float32."""
        return self.kind.extract(segments, sample_rate, self.opts)

    @property
    def dim(self) -> int:
        """Feature channels per frame."""
        return self.kind.dim(self.opts)

    def frames(self, samples: int) -> int:
        """Frames of a segment of ``samples`` samples."""
        return self.kind.frames(self.opts, samples)

    @property
    def min_samples(self) -> int:
        """The shortest audio that gives one frame."""
        return self.kind.min_samples(self.opts)


def bind(spec: FeatureSpec, naming: Naming = _NAMING) -> Bound:
    """The kind of ``spec`` with its options built and checked (errors name the key)."""
    kind = get_kind(spec.kind)
    return Bound(kind, options.build(kind.Options, dict(spec.options), naming))


def parse(data: Any, naming: Naming = _NAMING, *, lenient: bool = False) -> FeatureSpec:
    """A flat ``[features]`` table (a recipe's, a model package's) as a checked spec whose
    ``options`` hold every option of its kind. A key that is no option of the kind is an
    error naming the kind's options; ``lenient`` drops keys that are options of other kinds
    (packages written before kinds had their own options held every kind's)."""
    if not isinstance(data, dict):
        raise UserError(f"recipe key '{naming.prefix}' must be a table, got {data!r}")
    kind_name = data.get("kind", FeatureSpec.kind)
    if not isinstance(kind_name, str):
        raise UserError(f"recipe key '{naming.prefix}.kind' must be a string, got {kind_name!r}")
    kind = get_kind(kind_name)
    own = {f.name for f in dataclasses.fields(kind.Options)}
    given = {k: v for k, v in data.items() if k not in _SHARED}
    if lenient:
        given = {k: v for k, v in given.items() if k in own}
    unknown = sorted(set(given) - own)
    if unknown:
        key = f"{naming.prefix}.{unknown[0]}" if naming.prefix else unknown[0]
        raise UserError(f"recipe key '{key}' is not an option of features.kind = "
                        f"{kind_name!r}; its options: {', '.join(sorted(own)) or '(none)'}; "
                        f"shared by every kind: {', '.join(_SHARED)}")
    shared = options.build(FeatureSpec, {k: v for k, v in data.items() if k in _SHARED}, naming)
    opts = options.build(kind.Options, given, naming)
    return dataclasses.replace(shared, options=dataclasses.asdict(opts))


def make_spec(kind: str = "mfcc", *, sample_rate: int = 16000,
         normalize: Literal["corpus", "speaker", "none"] = "corpus", **opts: Any) -> FeatureSpec:
    """A checked feature spec from keyword arguments (``make_spec("logmel", n_mels=40)``)."""
    return parse({"kind": kind, "sample_rate": sample_rate, "normalize": normalize, **opts})


def resolve(spec: FeatureSpec) -> FeatureSpec:
    """``spec`` checked, with every option of its kind, in the form a model package keeps
    (:meth:`FeatureKind.canonical`: an ssl checkpoint path made absolute, so that an exported
    model finds it again)."""
    bound = bind(spec)
    opts = bound.kind.canonical(bound.opts)
    return dataclasses.replace(spec, options=dataclasses.asdict(opts))


def package_fields(spec: FeatureSpec) -> dict[str, Any]:
    """What a model package stores of the features: the kind and its options (the sample rate
    is the segments')."""
    return {"kind": spec.kind, **dataclasses.asdict(bind(spec).opts)}


# --- mfcc and logmel ----------------------------------------------------------------------------
@dataclass
class StftOptions:
    """Args:
        n_fft, hop: STFT window and hop in samples (800 = 50 ms and 512 at 16 kHz: 10 s -> 313
            frames).
        n_mels: mel bands (the MFCC filterbank, or the log-mel features).
    """

    n_fft: int = opt(800, ge=1)
    hop: int = opt(512, ge=1)
    n_mels: int = opt(128, ge=1)


@dataclass
class MfccOptions:
    """Args:
        n_mfcc, deltas: MFCC coefficients and delta orders (0-2): 13 x 3 = 39 dims, the
            research code's "order 3".
        n_fft, hop, n_mels: as ``logmel``'s.
    """

    n_mfcc: int = opt(13, ge=1)
    deltas: int = opt(2, ge=0, le=2)
    n_fft: int = opt(800, ge=1)
    hop: int = opt(512, ge=1)
    n_mels: int = opt(128, ge=1)

    def validate(self) -> None:
        """The MFCC are the DCT of the mel bands."""
        if self.n_mfcc > self.n_mels:
            raise FieldError("n_mfcc", f"must be <= features.n_mels ({self.n_mels}), got "
                             f"{self.n_mfcc}: the MFCC are the DCT of n_mels mel bands, so "
                             "there are at most n_mels of them")


class StftKind(FeatureKind):
    """A kind computed from an STFT with ``n_fft`` and ``hop`` (librosa, centred frames)."""

    def frames(self, opts: Any, samples: int) -> int:
        """Centred frames: one per hop, plus one."""
        return 1 + samples // opts.hop

    def min_samples(self, opts: Any) -> int:
        """One STFT window."""
        return opts.n_fft

    def frame_setting(self, opts: Any) -> str:
        """The hop."""
        return f"hop {opts.hop}"

    def fewer_frames_fix(self, opts: Any, seg: SegmentSpec, seconds_key: str,
                         needed: int) -> str:
        """The largest hop or the shortest segment that gives ``needed`` frames."""
        longest_hop = seg.length // (needed - 1)
        shortest = (needed - 1) * opts.hop / seg.sample_rate
        hop = f"use features.hop <= {longest_hop} or " if longest_hop >= 1 else "use "
        return f"{hop}{seconds_key} >= {shortest:g}"

    def work_bytes(self, opts: Any, frames: int) -> int:
        """The STFT of one segment."""
        return (opts.n_fft // 2 + 1) * frames * 8  # complex64 bins per frame


@register("mfcc")
class Mfcc(StftKind):
    """``n_mfcc`` MFCC plus ``deltas`` orders of deltas (librosa)."""

    Options = MfccOptions

    def extract(self, segments: np.ndarray, sample_rate: int, opts: Any) -> np.ndarray:
        """Shape: (N, samples) -> (N, n_mfcc * (1 + deltas), frames)."""
        import librosa  # heavy import kept out of module import time

        mfcc = librosa.feature.mfcc(y=segments, sr=sample_rate, n_mfcc=opts.n_mfcc,
                                    n_fft=opts.n_fft, hop_length=opts.hop,
                                    n_mels=opts.n_mels)  # (N, n_mfcc, T)
        parts = [mfcc]
        width = min(9, mfcc.shape[-1] - (1 - mfcc.shape[-1] % 2))  # odd, <= frames
        for order in range(1, opts.deltas + 1):
            parts.append(librosa.feature.delta(mfcc, order=order, width=max(width, 3), axis=-1))
        return np.concatenate(parts, axis=1).astype(np.float32)  # (N, n_mfcc * (1 + deltas), T)

    def dim(self, opts: Any) -> int:
        """Coefficients times (1 + delta orders)."""
        return opts.n_mfcc * (1 + opts.deltas)


@register("logmel")
class Logmel(StftKind):
    """``n_mels`` log-mel bands in dB (librosa)."""

    Options = StftOptions

    def extract(self, segments: np.ndarray, sample_rate: int, opts: Any) -> np.ndarray:
        """Shape: (N, samples) -> (N, n_mels, frames)."""
        import librosa

        mel = librosa.feature.melspectrogram(y=segments, sr=sample_rate, n_fft=opts.n_fft,
                                             hop_length=opts.hop, n_mels=opts.n_mels)
        return librosa.power_to_db(mel, ref=1.0).astype(np.float32)  # (N, n_mels, T)

    def dim(self, opts: Any) -> int:
        """The mel bands."""
        return opts.n_mels


# --- ssl ----------------------------------------------------------------------------------------
#: The receptive field of one frame of the wav2vec 2.0 / HuBERT / WavLM convolutional front
#: (25 ms at 16 kHz): audio shorter than this gives no ssl frame.
SSL_MIN_SAMPLES = 400


@dataclass
class SslOptions:
    """Args:
        model: a local folder holding the checkpoint saved with save_pretrained (config.json +
            model.safetensors); nothing is downloaded.
        layers: a hidden-state index (0 = convolutional features, -1 = last layer), a list of
            indices (averaged), or "all" (every layer stacked: (segments, layers * dim,
            frames); the backbones learn softmax layer weights, as SUPERB).
        pool_frames: average every n frames (50 Hz -> 50 / n Hz); 1 = no pooling.
    """

    model: str = ""
    layers: int | list[int] | Literal["all"] = "all"
    pool_frames: int = opt(1, ge=1, hint="1 = no pooling")

    def validate(self) -> None:
        """A checkpoint folder is named; a list of layers is not empty."""
        from transfer.data.ssl import HOW_TO_SAVE

        if not self.model:
            raise FieldError("model", 'must name a checkpoint folder: features.kind = "ssl" '
                             f'needs features.model = "<folder>"; {HOW_TO_SAVE}')
        if isinstance(self.layers, list) and not self.layers:
            raise FieldError("layers", 'must be a layer index, a non-empty list of indices '
                             '(averaged) or "all", got []')


@register("ssl")
class Ssl(FeatureKind):
    """Hidden states of a WavLM / HuBERT / wav2vec 2.0 checkpoint (:mod:`transfer.data.ssl`)."""

    Options = SslOptions
    frames_known = False  # the checkpoint's convolutional front decides

    def extract(self, segments: np.ndarray, sample_rate: int, opts: Any) -> np.ndarray:
        """Shape: (N, samples) -> (N, dim, frames) (:func:`transfer.data.ssl.extract`)."""
        from transfer.data import ssl

        return ssl.extract(segments, sample_rate, opts)

    def dim(self, opts: Any) -> int:
        """Hidden size, times the layers when they are stacked."""
        from transfer.data import ssl

        return ssl.feature_dim(opts)

    def frames(self, opts: Any, samples: int) -> int:
        """The convolutional front's output length, then the pooling."""
        from transfer.data import ssl

        return ssl.frames(opts, samples)

    def min_samples(self, opts: Any) -> int:
        """The receptive field of one frame."""
        return SSL_MIN_SAMPLES

    def frame_setting(self, opts: Any) -> str:
        """The pooling."""
        return f"pool_frames {opts.pool_frames}"

    def fewer_frames_fix(self, opts: Any, seg: SegmentSpec, seconds_key: str,
                         needed: int) -> str:
        """Longer segments or less pooling."""
        return f"use a longer {seconds_key} or a smaller features.pool_frames"

    def cache_fields(self, opts: Any) -> dict[str, Any]:
        """The checkpoint's content (not its path), the layers and the pooling."""
        from transfer.data import ssl

        return ssl.cache_fields(opts)

    def canonical(self, opts: Any) -> Any:
        """The checkpoint path made absolute (``~`` and ``$VARS`` expanded)."""
        path = str(Path(os.path.expandvars(opts.model)).expanduser().resolve())
        return dataclasses.replace(opts, model=path)

    def prepare(self, opts: Any) -> None:
        """The checkpoint folder exists and holds a supported model."""
        from transfer.data import ssl

        ssl.checkpoint_dir(opts.model)

    def stacked_layers(self, opts: Any) -> int:
        """The hidden states with ``layers = "all"``, else 0."""
        from transfer.data import ssl

        return ssl.stacked_layers(opts)

    def run_jobs(self, jobs: list, workers: int, progress: bool, title: str,
                 reader: Callable) -> list | None:
        """Audio read in workers, the model here (:func:`transfer.data.ssl.run_jobs`)."""
        from transfer.data import ssl

        return ssl.run_jobs(jobs, workers, progress, f"ssl {title}", reader)
