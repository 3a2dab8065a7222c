"""The recipe's configuration: one typed dataclass per section, whose defaults are the defaults.

Plain data shared by every stage (data reads :class:`CorpusConfig` and :class:`FeaturesConfig`,
training :class:`TrainConfig`, evaluation :class:`ProtocolConfig`); reading and validating a
recipe file is :mod:`transfer.grid.recipe`'s job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class SegmentsConfig:
    """Segmenting of one corpus; unset values come from the corpus card."""

    seconds: float | None = None  # absent = the card's default
    mode: str = ""  # "" = the card's default; pad | window | concat
    overlap_s: float = 2.5
    align: Literal["start", "center"] = "start"


@dataclass
class CorpusConfig:
    """One corpus: a card (name in datasets/ or path) and where its audio is.

    ``synthetic``: instead of ``root``, generate a synthetic corpus of this size (tiny | small |
    demo | full; ``transfer.data.synth.SIZES``) into the cache (casia and modma only).
    ``root`` = "" reads ``$<NAME>_ROOT``.
    ``labelled`` (target only): ``false`` hides the target's labels from training (the
    unlabelled mode: unsupervised, source-free and test-time adaptation); the target's classes,
    after ``label_map`` / ``keep``, must then be the source's, and its labels are read only to
    score the test folds.
    """

    corpus: str = ""
    root: str = ""
    synthetic: str = ""
    synthetic_seed: int = 0
    label_map: dict[str, str] = field(default_factory=dict)
    keep: list[str] = field(default_factory=list)
    max_bad_share: float = 0.05
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    # What a label belongs to (the decision unit): subject | recording | segment; "" = the
    # card's [labels] unit. Checked against the data; metrics are reported per unit.
    unit: Literal["", "subject", "recording", "segment"] = ""
    labelled: bool = True


@dataclass
class FeaturesConfig:
    """Frame features, shared by source and target (the backbone sees one feature size).

    Args:
        kind: ``mfcc`` (n_mfcc coefficients + deltas), ``logmel`` (n_mels log-mel bands) or
            ``ssl`` (hidden states of a WavLM / HuBERT / wav2vec 2.0 checkpoint; needs
            ``pip install -e ".[ssl]"``).
        sample_rate: every recording is resampled to this rate (16000 for ssl checkpoints).
        n_mfcc, deltas: MFCC coefficients and delta orders (0-2): 13 x 3 = 39 dims.
        n_fft, hop, n_mels: STFT window, hop (samples) and mel bands (mfcc and logmel).
        normalize: ``corpus`` standardises each corpus by its training statistics; ``speaker``
            z-scores every speaker's features by that speaker's own mean and standard deviation
            (over its segments and frames; the classic speaker normalisation for emotion,
            refused where the label belongs to the subject); ``none``.
        model: ssl: a local folder holding the checkpoint saved with save_pretrained
            (config.json + model.safetensors); nothing is downloaded.
        layers: ssl: a hidden-state index (0 = convolutional features, -1 = last layer), a list
            of indices (averaged), or "all" (every layer stacked: (segments, layers * dim,
            frames); the TIM-Net backbones learn softmax layer weights, as SUPERB).
        pool_frames: ssl: average every n frames (50 Hz -> 50 / n Hz); 1 = no pooling.
    """

    kind: Literal["mfcc", "logmel", "ssl"] = "mfcc"
    sample_rate: int = 16000
    n_mfcc: int = 13
    deltas: int = 2
    n_fft: int = 800
    hop: int = 512
    n_mels: int = 128
    normalize: Literal["corpus", "speaker", "none"] = "corpus"
    model: str = ""
    layers: int | list[int] | Literal["all"] = "all"
    pool_frames: int = 1


@dataclass
class BackboneConfig:
    name: str = "timnet"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation of a target run (and, in ``[pretrain]``, of source pretraining)."""

    epochs: int = 60
    batch_size: int = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.93, 0.98])
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["none", "step", "cosine"] = "none"
    step_size: int = 30
    gamma: float = 0.3
    label_smoothing: float = 0.1
    grad_clip: float = 0.0  # 0 = off
    patience: int = 0  # early stopping on the validation metric; 0 = off
    select: Literal["val_uar", "val_loss", "last"] = "val_uar"
    amp: bool = True  # bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX)
    compile: bool = False  # torch.compile the model
    pack: int = 0  # runs of one strategy trained together as one model; 0 = by device, 1 = off
    cuda_graph: bool = True  # on CUDA, capture the training step once and replay it


@dataclass
class PretrainConfig(TrainConfig):
    """Source pretraining: a speaker-independent hold-out selects the epoch."""

    epochs: int = 40
    batch_size: int = 64
    val_fraction: float = 0.25  # share of source speakers held out
    seed: int = 0


@dataclass
class ProtocolConfig:
    """Target evaluation protocol.

    ``subject-kfold``: stratified k-fold over subjects; ``loso``: leave one subject out;
    ``segment-random``: the research code's random split of segments (speaker-dependent).
    ``compare``: further protocols run on the same strategies into the same results folder;
    ``["segment-random"]`` writes the leak report (``leak.md``: honest vs leaky scores).
    """

    name: Literal["subject-kfold", "loso", "segment-random"] = "subject-kfold"
    folds: int = 5
    val_fraction: float = 0.2  # share of training subjects used for model selection
    split: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    split_seed: int = 34
    compare: list[Literal["subject-kfold", "loso", "segment-random"]] = field(default_factory=list)


@dataclass
class DiagnosticsConfig:
    """Domain gap of ``general`` features after training (MMD, proxy A-distance)."""

    enabled: bool = True
    max_samples: int = 400  # per domain
    plot: bool = True


@dataclass
class EvaluateConfig:
    """Test-time adaptation of every trained model to its unlabelled test audio.

    Args:
        adapt: one table row per entry: ``none`` (the model as trained), ``adabn`` (BatchNorm
            statistics recomputed on the test audio; Li et al. 2016) and ``tent`` (AdaBN, then
            the BatchNorm scales and shifts trained by entropy minimisation for ``tent_steps``
            steps; Wang et al. 2021). A variant's row is labelled ``<strategy>+<adapt>``; the
            training is shared, only the evaluation differs.
        per: what one adaptation sees: ``fold`` (all test audio of the fold: a new site) or
            ``speaker`` (each test speaker alone; refused where the label belongs to the
            subject, since the speaker's statistics then carry the label).
        tent_steps, tent_lr: TENT's steps (Adam) over batches of the adapted audio.
        batch_size: segments per forward pass while adapting.
    """

    adapt: list[Literal["none", "adabn", "tent"]] = field(default_factory=lambda: ["none"])
    per: Literal["fold", "speaker"] = "fold"
    tent_steps: int = 10
    tent_lr: float = 1e-3
    batch_size: int = 64


@dataclass
class StrategyEntry:
    name: str
    label: str
    options: Any


@dataclass
class Recipe:
    name: str = ""
    description: str = ""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    device: Literal["auto", "cpu", "cuda"] = "auto"
    jobs: int = 0  # packs at once (worker processes); 0 = choose from the device
    # CPU threads per run (0 = torch's default). Runs are small models: on a CPU, one thread
    # per run and one worker process per core is several times faster than threads inside
    # one run, most of all on a busy machine. Results depend on it (reduction order).
    threads: int = 1
    export: bool = False
    source: list[CorpusConfig] = field(default_factory=list)
    target: CorpusConfig = field(default_factory=CorpusConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    strategies: list[StrategyEntry] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["strategies"] = [{"name": s.name, "label": s.label, **dataclasses.asdict(s.options)}
                              for s in self.strategies]
        return data
