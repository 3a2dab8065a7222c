"""The recipe's configuration: one typed dataclass per section, whose defaults are the defaults.

Plain data shared by every stage (data reads :class:`CorpusConfig`, :class:`SegmentSpec` and
:class:`FeatureSpec`, training :class:`TrainConfig`, evaluation :class:`ProtocolConfig`);
reading and validating a recipe file is :mod:`transfer.grid.recipe`'s job. One file on
purpose, above ~400 lines: it is the recipe's whole schema, read top to bottom as one.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from transfer.common.options import FieldError, LogUniform, Naming, check, field_info, opt

#: How recordings become segments; the allowed values are written here only.
SegmentMode = Literal["pad", "window", "concat"]
SEGMENT_MODES: tuple[str, ...] = typing.get_args(SegmentMode)
#: Where a short clip sits in its padded segment, and which part of a long clip ``pad`` keeps.
Align = Literal["start", "center"]


@dataclass(frozen=True)
class SegmentSpec:
    """How recordings become fixed-length segments: the one segment spec (audio code, feature
    cache keys, model packages); recipes and corpus cards give parts of it as
    :class:`SegmentsConfig`.

    Args:
        seconds: segment length.
        mode: ``pad`` (shorter -> zero-padded, longer -> truncated: one segment per file),
            ``window`` (longer -> windows of ``seconds`` overlapping by ``overlap_s``, the last
            one zero-padded; shorter -> padded) or ``concat`` (a subject's recordings
            concatenated, then cut into ``seconds`` pieces).
        overlap_s: overlap between successive windows (``window`` mode).
        align: ``start`` (research code) or ``center`` (official TIM-Net features).
        sample_rate: every recording is resampled (soxr) to this rate first.
        naming: how errors name the keys (not a field): ``Naming(prefix="target.segments")``
            for a recipe's corpus; default ``segments: 'seconds'``.
    """

    seconds: float = opt(10.0, gt=0)
    mode: SegmentMode = "window"
    overlap_s: float = opt(2.5, ge=0)
    align: Align = "start"
    sample_rate: int = opt(16000, ge=1)
    naming: dataclasses.InitVar[Naming | None] = None

    def __post_init__(self, naming: Naming | None) -> None:
        check(self, naming or Naming("segments", noun="key"))

    def validate(self) -> None:
        """Lengths that each pass their range but not together; the one place they are
        checked."""
        if self.mode == "window" and self.overlap_s >= self.seconds:
            raise FieldError("overlap_s", f"must be < seconds ({self.seconds:g}) in window mode, "
                             f"got {self.overlap_s:g}; a window-mode segment overlaps the next by "
                             "overlap_s (2.5 s unless set): set a smaller one")
        if self.length < 1:
            raise FieldError("seconds", f"is {self.seconds:g}: segments of {self.seconds:g} s "
                             f"hold no sample at {self.sample_rate} Hz; use segments of at least "
                             f"{1 / self.sample_rate:.2g} s")

    @property
    def length(self) -> int:
        """Segment length in samples."""
        return int(round(self.seconds * self.sample_rate))


def _unset(name: str, hint: str = "") -> Any:
    """:class:`SegmentSpec`'s declaration of field ``name`` (its valid range), with None (not
    set) as the default and ``hint`` added to its errors: the range is declared once, on the
    spec."""
    info = field_info(SegmentSpec.__dataclass_fields__[name])
    return opt(None, **dataclasses.asdict(info.bounds), hint=hint or info.hint)


@dataclass
class SegmentsConfig:
    """The segment settings a recipe's corpus or a corpus card gives: :class:`SegmentSpec`'s
    fields, each optional (None = not set here). A recipe's settings override its card's,
    the card's override the spec's defaults (:meth:`resolve`)."""

    seconds: float | None = _unset("seconds", "leave it out for the default: the corpus "
                                               "card's, else 10 s")
    mode: SegmentMode | None = _unset("mode")
    overlap_s: float | None = _unset("overlap_s")
    align: Align | None = _unset("align")

    def resolve(self, *below: SegmentsConfig, sample_rate: int,
                naming: Naming | None = None) -> SegmentSpec:
        """The segment spec of these settings over ``below`` (e.g. the card's; later ones win,
        these last), the rest :class:`SegmentSpec`'s defaults; checked, errors named by
        ``naming``."""
        values: dict[str, Any] = {}
        for given in (*below, self):
            values.update({k: v for k, v in dataclasses.asdict(given).items() if v is not None})
        return SegmentSpec(**values, sample_rate=sample_rate, naming=naming)


@dataclass
class CorpusConfig:
    """One corpus: a card (name in datasets/ or path) and where its audio is.

    ``synthetic``: instead of ``root``, generate a synthetic corpus of this size (tiny | small |
    demo | full; ``transfer.data.synth.SIZES``) into the cache (casia, modma and emodb).
    ``root`` = "" reads ``$<NAME>_ROOT``. ``positive``: the positive class of a binary target
    (what sensitivity and specificity refer to); "" = the card's ``[labels] positive``.
    ``labelled`` (target only): ``false`` hides the target's labels from training (the
    unlabelled mode: unsupervised, source-free and test-time adaptation); the target's classes,
    after ``label_map`` / ``keep``, must then be the source's, and its labels are read only to
    score the test folds.
    """

    corpus: str = ""
    root: str = ""
    synthetic: str = ""
    synthetic_seed: int = opt(0, ge=0, le=2**31 - 1)
    label_map: dict[str, str] = field(default_factory=dict)
    keep: list[str] = field(default_factory=list)
    max_bad_share: float = opt(0.05, ge=0, le=1)
    positive: str = ""
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    # What a label belongs to (the decision unit): subject | recording | segment; "" = the
    # card's [labels] unit. Checked against the data; metrics are reported per unit.
    unit: Literal["", "subject", "recording", "segment"] = ""
    labelled: bool = True


@dataclass(frozen=True)
class FeatureSpec:
    """Frame features, shared by source and target (the backbone sees one feature size): the
    one feature spec of recipes (``[features]``), feature cache keys and model packages.

    A recipe's ``[features]`` table is flat: ``kind``, ``sample_rate``, ``normalize`` and the
    kind's own options (``n_mfcc = 13``). Each kind declares its options, extractor and frame
    count in :mod:`transfer.data.kinds`, which also checks them (``options`` holds them as
    given or completed there; {} = the kind's defaults).

    Args:
        kind: a registered feature kind: ``mfcc`` (n_mfcc coefficients + deltas), ``logmel``
            (n_mels log-mel bands), ``ssl`` (hidden states of a WavLM / HuBERT / wav2vec 2.0
            checkpoint; needs ``pip install -e ".[ssl]"``); ``python -m transfer.inspect
            features`` lists them with their options.
        sample_rate: every recording is resampled to this rate (16000 for ssl checkpoints).
        normalize: ``corpus`` standardises each corpus by its training statistics; ``speaker``
            z-scores every speaker's features by that speaker's own mean and standard deviation
            (over its segments and frames; the classic speaker normalisation for emotion,
            refused where the label belongs to the subject); ``none``.
        options: the kind's options by name.
    """

    kind: str = "mfcc"
    sample_rate: int = opt(16000, ge=1000)
    normalize: Literal["corpus", "speaker", "none"] = "corpus"
    options: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        """The spec as a recipe's flat ``[features]`` table."""
        return {"kind": self.kind, "sample_rate": self.sample_rate, "normalize": self.normalize,
                **self.options}


@dataclass
class BackboneConfig:
    """``[backbone]``: a registered backbone and its options (``python -m transfer.inspect
    backbones``)."""
    name: str = "timnet"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation of a target run (and, in ``[pretrain]``, of source pretraining)."""

    epochs: int = opt(60, ge=1, hint="0 epochs would report an untrained model")
    batch_size: int = opt(32, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = opt(1e-3, gt=0, hint="a learning rate of 0 or less trains nothing",
                    search=LogUniform(1e-4, 1e-2))
    betas: list[float] = opt(ge=0, lt=1, length=2, factory=lambda: [0.93, 0.98])
    momentum: float = opt(0.9, ge=0, per_run=False)
    weight_decay: float = opt(0.0, ge=0, search=LogUniform(1e-6, 1e-2))
    schedule: Literal["none", "step", "cosine"] = "none"
    step_size: int = opt(30, ge=1)
    gamma: float = opt(0.3, gt=0, per_run=False)
    # cross_entropy takes one smoothing for the whole batch: draws that differ never share a pack
    label_smoothing: float = opt(0.1, ge=0, lt=1, per_run=False)
    grad_clip: float = opt(0.0, ge=0, hint="0 turns clipping off", per_run=False)
    patience: int = opt(0, ge=0, hint="0 turns early stopping off")  # on the validation metric
    select: Literal["val_uar", "val_loss", "last"] = "val_uar"
    amp: bool = True  # bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX)
    compile: bool = False  # torch.compile the model
    # runs of one strategy trained together as one model; 0 = by device, 1 = off
    pack: int = opt(0, ge=0)
    cuda_graph: bool = True  # on CUDA, capture the training step once and replay it


@dataclass
class PretrainConfig(TrainConfig):
    """Source pretraining: a speaker-independent hold-out selects the epoch."""

    epochs: int = opt(40, ge=1, hint="0 epochs would report an untrained model")
    batch_size: int = opt(64, ge=1)
    val_fraction: float = opt(0.25, gt=0, lt=1)  # share of source speakers held out
    seed: int = opt(0, ge=0, le=2**31 - 1)  # the range numpy and scikit-learn accept


@dataclass
class ProtocolConfig:
    """Target evaluation protocol.

    ``subject-kfold``: stratified k-fold over subjects; ``loso``: leave one subject out;
    ``segment-random``: the research code's random split of segments (speaker-dependent).
    ``compare``: further protocols run on the same strategies into the same results folder;
    ``["segment-random"]`` writes the leak report (``leak.md``: honest vs leaky scores).
    """

    name: Literal["subject-kfold", "loso", "segment-random"] = "subject-kfold"
    folds: int = opt(5, ge=1)
    val_fraction: float = opt(0.2, gt=0, lt=1)  # share of training subjects for model selection
    split: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    split_seed: int = opt(34, ge=0, le=2**31 - 1)
    compare: list[Literal["subject-kfold", "loso", "segment-random"]] = field(default_factory=list)

    def validate(self) -> None:
        """Rules that depend on the protocol."""
        if self.name == "subject-kfold" and self.folds < 2:
            raise FieldError("folds", f"must be >= 2, got {self.folds}; subject-kfold needs a "
                             "training and a test part; for one held-out subject per fold use "
                             'protocol.name = "loso"')
        if self.name == "segment-random" and not (
                len(self.split) == 3 and all(math.isfinite(v) and v > 0 for v in self.split)
                and abs(sum(self.split) - 1) <= 1e-6):
            raise FieldError("split", "must be three shares > 0 (train, validation, test) that "
                             f"sum to 1, got {self.split!r}")


@dataclass
class DiagnosticsConfig:
    """Domain gap of ``general`` features after training (MMD, proxy A-distance)."""

    enabled: bool = True
    max_samples: int = opt(400, ge=2)  # per domain
    plot: bool = True


@dataclass
class ReportConfig:
    """What the report adds to the comparison table; none of it changes what a run computes,
    so a results folder can be rebuilt with other settings (``python -m transfer.report``).

    Args:
        threshold: how the decision threshold on the positive class's probability is chosen on
            each run's validation speakers (never the test fold): ``youden`` maximises
            sensitivity + specificity - 1; ``specificity`` takes the lowest threshold whose
            validation specificity reaches ``specificity``.
        specificity: the target specificity of ``threshold = "specificity"``.
        bands: per numeric subject covariate, the band edges of its subgroups (``age = [40]``:
            under 40 and 40 or more); a numeric covariate without bands is split at its median.
        temperature: show calibration after temperature scaling (fitted on each run's
            validation segments) beside the raw probabilities.
    """

    threshold: Literal["youden", "specificity"] = "youden"
    specificity: float = opt(0.8, gt=0, lt=1)
    bands: dict[str, list[float]] = field(default_factory=lambda: {"age": [40.0]})
    temperature: bool = True

    def validate(self) -> None:
        """Band edges: finite and increasing."""
        for name, edges in self.bands.items():
            if not edges or not all(math.isfinite(e) for e in edges) \
                    or list(edges) != sorted(set(edges)):
                raise FieldError(f"bands.{name}", "must be a non-empty list of increasing "
                                 f"numbers (band edges), got {edges!r}")


@dataclass
class LogConfig:
    """Optional logs next to the results.

    Args:
        tensorboard: write every run's curves (training loss, alignment losses, validation UAR
            and loss, per epoch) as TensorBoard event files; needs the optional package
            (``pip install -e ".[tensorboard]"``).
        tensorboard_dir: where; "" = ``tensorboard/`` in the results folder.
    """

    tensorboard: bool = False
    tensorboard_dir: str = ""


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
    tent_steps: int = opt(10, ge=1)
    tent_lr: float = opt(1e-3, gt=0)
    batch_size: int = opt(64, ge=1)

    def validate(self) -> None:
        """At least one variant, none twice."""
        if not self.adapt or len(set(self.adapt)) != len(self.adapt):
            raise FieldError("adapt", f"must list distinct values of 'none', 'adabn', 'tent' "
                                      f"(at least one), got {self.adapt!r}")


@dataclass
class SweepConfig:
    """Random search over every strategy's hyperparameters (``[sweep]``; DomainBed's protocol).

    Draw 0 of a strategy is its recipe settings; draws 1..N-1 are drawn from the search spaces
    (declared beside each option, narrowed or replaced in the recipe), the same for every fold
    and seed. Per (strategy, fold, seed) the draw with the best validation score is selected.

    Args:
        draws: settings per strategy (1 = no sweep: the recipe's settings only).
        seed: the draws' seed (a draw's values depend on it, the strategy's label and the draw).
        halving: successive halving inside a pack: at each rung the worse half of the draws of
            a (fold, seed) stops (draw 0 never does).
        rungs: the rungs, as fractions of ``train.epochs``.
        train: search spaces of the shared training settings (``lr = [1e-4, 1e-2]`` narrows
            the declared space, ``{log_uniform = [a, b]}`` replaces it, ``false`` keeps the
            recipe value).
        backbone: search spaces of the backbone's options, the same way.
        select: what selects a draw: ``validation`` (the target's validation subjects: unit
            UAR, ties by loss) or, with ``[target] labelled = false``, a label-free rule of
            :mod:`transfer.evaluate.selection` (``source_acc``, ``iwv``, ``dev``, ``entropy``,
            ``info_max``, ``snd``; the selection report shows how far each can be trusted).
    """

    draws: int = opt(1, ge=1, le=10000)
    seed: int = opt(0, ge=0, le=2**31 - 1)
    halving: bool = False
    rungs: list[float] = opt(gt=0, lt=1, factory=lambda: [0.25, 0.5])
    train: dict[str, Any] = field(default_factory=dict)
    backbone: dict[str, Any] = field(default_factory=dict)
    select: Literal["validation", "source_acc", "iwv", "dev", "entropy", "info_max",
                    "snd"] = "validation"


@dataclass
class StrategyEntry:
    """One ``[[strategies]]`` entry: the strategy, its label in tables, its options, and its
    search space (field -> :class:`~transfer.common.options.Space`; ``train.lr``,
    ``backbone.dropout`` and the strategy's own options), resolved from the declarations and
    the recipe's ``[sweep]`` and ``search`` tables."""

    name: str
    label: str
    options: Any
    search: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    """A whole recipe: one field per section (:mod:`transfer.grid.recipe` reads it)."""
    name: str = ""
    description: str = ""
    seeds: list[int] = opt(ge=0, le=2**31 - 1, factory=lambda: [0, 1, 2])
    device: Literal["auto", "cpu", "cuda"] = "auto"
    jobs: int = opt(0, ge=0, hint="0 chooses from the device")  # packs at once (workers)
    # CPU threads per run (0 = torch's default). Runs are small models: on a CPU, one thread
    # per run and one worker process per core is several times faster than threads inside
    # one run, most of all on a busy machine. Results depend on it (reduction order).
    threads: int = opt(1, ge=0, hint="0 uses torch's default")
    export: bool = False
    source: list[CorpusConfig] = field(default_factory=list)
    target: CorpusConfig = field(default_factory=CorpusConfig)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    log: LogConfig = field(default_factory=LogConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    strategies: list[StrategyEntry] = field(default_factory=list)

    def validate(self) -> None:
        """Rules over several keys."""
        if len(set(self.seeds)) != len(self.seeds):
            raise FieldError("seeds", f"must be distinct seeds, got {self.seeds!r}")
        if not self.seeds:
            raise FieldError("seeds", "must list at least one seed")

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (``recipe.json``)."""
        data = dataclasses.asdict(self)
        data["features"] = self.features.flat()
        data["strategies"] = [{"name": s.name, "label": s.label, **dataclasses.asdict(s.options)}
                              for s in self.strategies]
        if self.sweep.draws > 1:
            for entry, out in zip(self.strategies, data["strategies"], strict=True):
                out["search"] = {k: v.describe() for k, v in entry.search.items()}
        return data
