"""One protocol config for every experiment (``synref demo``, ``compare``, ``bench``), and the
named protocols.

A :class:`Protocol` fixes everything a run does besides its grid (methods x noise settings x
seeds): the network and its recipes, the splits, the anchors, how the labels are refined, the
robust trainers, the encoders. :data:`PROTOCOLS` holds the named ones (``paper``, ``cpu``,
``digits``, ``pretrained``: a user's own data); :func:`protocol_for` builds one for a dataset.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

from ..config import ConfigMixin, check_value_type
from ..errors import InputError
from ..features import DEFAULT_ENCODER, FEATURE_EXTRACTORS, check_space_name, is_label_free
from ..hashing import digest
from ..models import MODELS
from ..noise import PMD_NOISE_TYPES
from ..pipeline import EvidenceSpec, RefinerSpec, describe_evidence
from ..refiners import DEFAULT_REFINER, REFINERS, refiner_used_options
from ..registry import Registry
from ..train import LRAConfig, PLCConfig, SSLConfig, TrainConfig
from ..tuned_evidence import FinetuneOptions, describe_finetune, finetune_config
from ..validation import check_unit_interval
from .recipes import DATASETS, cpu_cifar_schedule, digits_standard, digits_synref_finetune, is_user_dataset

__all__ = ["Protocol", "PROTOCOLS", "REFINE_RECIPES", "PAPER_EVIDENCE", "protocol_for", "protocol_names",
           "with_refine_encoder", "with_finetune_evidence", "FLAT_PROTOCOL_OPTIONS"]

#: how a protocol gets its refined labels: ``paper`` = the paper's rule on the Standard model's
#: own (in-sample) features and softmax; ``synref`` = cross-fitted evidence + a refiner.
REFINE_RECIPES = ("paper", "synref")
#: the paper's evidence: the Standard model's own softmax and penultimate features (in-sample).
PAPER_EVIDENCE = EvidenceSpec(source="classifier", encoder="classifier")
#: the protocol options of the flat layout (bench records and config.json files of synref <= 0.4)
#: that now live in :class:`~synref.pipeline.EvidenceSpec` / :class:`~synref.pipeline.RefinerSpec`.
FLAT_PROTOCOL_OPTIONS: Dict[str, Any] = {
    "refine": str, "refine_encoder": Optional[str], "refine_features": str, "refine_head": str, "refine_folds": int,
    "refine_rounds": int, "alpha": float, "threshold": float,
}


def _nest_protocol(values: Dict[str, Any]) -> Dict[str, Any]:
    """A :class:`Protocol` dict of the flat layout: ``refine``, ``refine_encoder``,
    ``refine_features``, ``refine_head``, ``refine_folds`` become its ``evidence``; ``refiner``
    (a name), ``refine_rounds``, ``alpha``, ``threshold`` its ``refiner`` (the options the
    refiner uses)."""
    d = dict(values)
    flat = {k: d.pop(k) for k in list(d) if k in FLAT_PROTOCOL_OPTIONS}
    if isinstance(d.get("refiner"), str):
        flat["refiner"] = d.pop("refiner")
    if not flat:
        return d
    for name, value in flat.items():
        check_value_type(Protocol.config_name, name, value, FLAT_PROTOCOL_OPTIONS.get(name, str))
    if flat.get("refine", "synref") not in REFINE_RECIPES:
        raise InputError(f"bench protocol: refine must be one of {', '.join(REFINE_RECIPES)}, got {flat['refine']!r}")
    if flat.get("refine") == "paper":
        evidence: Dict[str, Any] = PAPER_EVIDENCE.to_dict()
        name = "paper"
    else:
        encoder = flat.get("refine_encoder", "efficientnet-lite0") or flat.get("refine_features", "ssl")
        evidence = {"encoder": encoder, "head": flat.get("refine_head", "linear"),
                    "folds": flat.get("refine_folds", 4)}
        name = flat.get("refiner", DEFAULT_REFINER)
    if name not in REFINERS:
        raise InputError(f"protocol: unknown refiner {name!r}; choose one of: {', '.join(REFINERS.choices())}")
    used = refiner_used_options(name)
    defaults = REFINERS.get(name).Options()  # type: ignore[attr-defined]
    flat["rounds"] = flat.get("refine_rounds", 3)
    options = {k: flat[k] for k in ("alpha", "threshold", "rounds")
               if k in flat and k in used and flat[k] != getattr(defaults, k)}
    return {**d, "evidence": d.get("evidence", evidence), "refiner": d.get("refiner", {"name": name, "options": options})}


@dataclass
class Protocol(ConfigMixin):
    """Everything a protocol fixes (recorded next to the results, e.g. ``OUT/bench-<dataset>-<protocol>.json``).

    Attributes:
        name: protocol name. model: the classifier of standard / ours / control / PLC.
        train_size: first N training images (CIFAR; None = all 45,000). test_size: first N test
            images (None = all). val_fraction, test_fraction: the digits split.
        standard, finetune: training recipes of Standard and of the fine-tuning on refined labels
            (``ours``; ``control`` fine-tunes on the noisy labels with the same recipe).
        plc, lra: the robust trainers' recipes.
        evidence: the refinement's evidence (:class:`~synref.pipeline.EvidenceSpec`): source
            ``crossfit`` (synref's recipe: a frozen encoder's features, or ``ssl`` / the fold
            networks' own, and cross-fitted heads; fold networks use ``model`` and, unless it names
            its own, the ``standard`` recipe) or :data:`PAPER_EVIDENCE` (the paper's recipe: the
            Standard model's own softmax and features).
        refiner: the refiner and its options (:class:`~synref.pipeline.RefinerSpec`; the paper's
            recipe: ``paper``).
        encoders: the ``lra-<encoder>`` rows run by default. encoder_size: input side of
            pretrained CNN encoders (LRA's and, unless the evidence names its own, the
            refinement's). ssl, ssl_model: the SimCLR recipe (LRA's ``simclr`` and the evidence's
            ``ssl`` unless it names its own).
        eta_model, eta: network / recipe of the clean-label model whose softmax drives
            generated PMD noise (None: :func:`~synref.experiments.recipes.eta_schedule`).
            pmd_type: PMD type I / II / III of generated noise.
        anchors_per_class: stand-in anchors (CIFAR) or glyph anchors (digits) per class.
        finetune_evidence: with ``evidence.tuning`` ``finetune`` (``--evidence finetune``), the
            options of the fine-tuned view (:class:`~synref.tuned_evidence.FinetuneOptions`; the
            folds are the evidence's, the seed the cell's); None for frozen evidence.

    ``from_dict`` also reads the flat layout of older records (``refine``, ``refine_encoder``,
    ``refine_head``, ``alpha``, ...).
    """

    config_name = "protocol"

    name: str = "cpu"
    model: str = "small_cnn"
    train_size: Optional[int] = 10000
    test_size: Optional[int] = None
    val_fraction: float = 0.10
    test_fraction: float = 0.25
    standard: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(default_factory=TrainConfig.paper_finetune)
    plc: PLCConfig = field(default_factory=PLCConfig.paper)
    lra: LRAConfig = field(default_factory=LRAConfig.paper)
    evidence: EvidenceSpec = field(default_factory=lambda: EvidenceSpec(encoder="efficientnet-lite0"))
    refiner: RefinerSpec = field(default_factory=RefinerSpec)
    encoders: Tuple[str, ...] = ("simclr", "efficientnet-lite0")
    encoder_size: int = 224
    ssl: SSLConfig = field(default_factory=SSLConfig)
    ssl_model: str = "small_cnn"
    eta_model: str = "small_cnn"
    eta: Optional[TrainConfig] = None
    pmd_type: int = 1
    anchors_per_class: int = 100
    finetune_evidence: Optional[FinetuneOptions] = None

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Protocol":
        if not isinstance(d, dict):
            raise InputError(f"{cls.config_name}: expected a JSON object, got {type(d).__name__}")
        return super().from_dict(_nest_protocol(d))

    def __post_init__(self) -> None:
        self.encoders = tuple(self.encoders)
        for name in ("model", "eta_model", "ssl_model"):
            if getattr(self, name) not in MODELS:
                raise InputError(f"protocol: unknown {name} {getattr(self, name)!r}; choose one of: "
                                 f"{', '.join(MODELS.names())}")
        for encoder in self.encoders:
            FEATURE_EXTRACTORS.canonical(encoder)
        if self.evidence.encoder == "given":
            raise InputError("protocol: the evidence's encoder computes the features (not 'given')")
        if self.evidence.source == "classifier" and self.evidence.encoder != "classifier":
            raise InputError("protocol: the paper's evidence is the Standard model's own (encoder classifier)")
        if self.pmd_type not in PMD_NOISE_TYPES:
            raise InputError(f"--pmd-type must be one of 1, 2, 3, got {self.pmd_type}")
        if int(self.anchors_per_class) < 1:
            raise InputError(f"--anchors-per-class must be at least 1, got {self.anchors_per_class}")
        check_unit_interval("val_fraction", self.val_fraction)
        check_unit_interval("test_fraction", self.test_fraction)
        self._check_tuning()

    def _check_tuning(self) -> None:
        """Fine-tuned evidence follows a frozen pass of pretrained evidence (a frozen encoder and
        cross-fitted linear heads) and feeds the posterior refiner; its options go with it only."""
        e = self.evidence
        if e.tuning != "finetune":
            if self.finetune_evidence is not None:
                raise InputError(f"{self.config_name}: finetune_evidence applies with evidence tuning finetune "
                                 f"(--evidence finetune), not {e.tuning}")
            return
        if not (e.source == "crossfit" and e.head == "linear" and e.frozen_encoder):
            raise InputError(f"--evidence finetune fine-tunes after a frozen encoder's pass (pretrained evidence: "
                             f"bench's cpu and pretrained protocols, compare on CIFAR); protocol {self.name} refines on "
                             f"{describe_evidence(self.evidence_spec())}")
        if self.refiner.name != "posterior":
            raise InputError(f"--evidence finetune feeds the posterior refiner (the fine-tuned softmax as a separate "
                             f"view); protocol {self.name} refines with refiner {self.refiner.name}")
        if self.finetune_evidence is None:
            self.finetune_evidence = FinetuneOptions()

    # -- refinement ---------------------------------------------------------------------
    @property
    def refine(self) -> str:
        """The refinement recipe (:data:`REFINE_RECIPES`): ``paper`` for the Standard model's own
        evidence, else ``synref``."""
        return "paper" if self.evidence.source == "classifier" else "synref"

    def evidence_spec(self) -> EvidenceSpec:
        """The evidence with the protocol's defaults filled in: fold networks train with the
        ``standard`` recipe, ``ssl`` with the ``ssl`` recipe, encoders at ``encoder_size``."""
        e = self.evidence
        return dataclasses.replace(e, train=e.train or self.standard, ssl=e.ssl or self.ssl,
                                   encoder_size=e.encoder_size or self.encoder_size)

    def describe_evidence(self) -> str:
        """One line: the evidence of the refinement and of the correction rows (the fine-tuned
        view included)."""
        text = describe_evidence(self.evidence_spec())
        if self.finetune_evidence is not None:
            config = finetune_config(self.finetune_evidence, folds=self.evidence.folds, seed=0)
            text += f", then {describe_finetune(config)}"
        return text

    def describe_refinement(self) -> str:
        """One line: how this protocol refines the labels."""
        if self.refine == "paper":
            return ("the paper's rule: Standard model's softmax + cosine to the anchor prototypes in its penultimate "
                    f"features, alpha {self.refiner.value('alpha'):g}, threshold {self.refiner.value('threshold'):g}, "
                    "one pass")
        text = f"synref {self.refiner.name} refiner on {self.describe_evidence()}"
        if "rounds" in refiner_used_options(self.refiner.name):
            text += (f", alpha {self.refiner.value('alpha'):g}, threshold {self.refiner.value('threshold'):g}, "
                     f"{self.refiner.value('rounds')} rounds (round r trains on round r-1's labels, re-scores the "
                     "given ones)")
        return text


# ------------------------------------------------------------------------------ named protocols
PROTOCOLS: Registry[Protocol] = Registry("protocol")


@PROTOCOLS.register("paper")
def paper_protocol() -> Protocol:
    """The paper's CIFAR settings (ResNet-34, 45,000 / 5,000 / 10,000, 200 + 50 epochs, PLC 180
    epochs, LRA 200 epochs, the paper's rule on the Standard model). For a GPU."""
    return Protocol(
        name="paper", model="resnet34", train_size=None, test_size=None,
        standard=TrainConfig.paper_standard(), finetune=TrainConfig.paper_finetune(),
        plc=PLCConfig.paper(), lra=LRAConfig.paper(), evidence=PAPER_EVIDENCE, refiner=RefinerSpec("paper"),
        encoders=("simclr", "clip"), encoder_size=224,
        ssl=SSLConfig(epochs=200, batch_size=512, hflip=True), ssl_model="resnet18",
        eta_model="preact_resnet34",
        eta=TrainConfig(epochs=25, batch_size=128, lr=1e-3, milestones=[], warmup_epochs=0, hflip=True),
        anchors_per_class=100)


@PROTOCOLS.register("cpu")
def cpu_protocol() -> Protocol:
    """The same grid on the first 10,000 CIFAR training images with a small CNN and short
    schedules (about 1.5 hours on 2 CPU cores); refinement by the default refiner in the frozen
    ``efficientnet-lite-ensemble`` space at 160 px (Lite1 + Lite2, chosen on the clean
    validation split; docs/posterior-refiner.md, Encoders), ``pred_probs`` from a cross-fitted
    linear head."""
    standard = cpu_cifar_schedule(15, 0.05)
    plc_train = dataclasses.replace(cpu_cifar_schedule(15, 0.05), nesterov=True)
    return Protocol(
        name="cpu", model="small_cnn", train_size=10000, test_size=None,
        standard=standard,
        # fine-tuning (re-initialised head) with Standard's own schedule: chosen on the clean
        # validation split at 35 % PMD (best val accuracy: this 0.621; 10 epochs at lr 0.03 0.596;
        # the paper's recipe at lr 1e-2 for 10 epochs 0.565, which lost to Standard)
        finetune=cpu_cifar_schedule(15, 0.05),
        plc=PLCConfig(train=plc_train, warmup_epochs=5, window=5, delta_start=0.3, delta_step=0.1,
                      delta_max=0.9, min_change_fraction=0.001),
        # LRA as the paper but 50 epochs (200 take ~4 min per cell here), cosine over those 50
        lra=dataclasses.replace(LRAConfig.paper(), epochs=50, cosine_epochs=None),
        # refinement space chosen on the clean validation split (efficientnet-lite-ensemble's docstring)
        evidence=EvidenceSpec(encoder="efficientnet-lite-ensemble", head="linear"),
        encoders=("simclr", "efficientnet-lite0"), encoder_size=160,
        ssl=SSLConfig(epochs=20, batch_size=256, hflip=True), ssl_model="small_cnn",
        eta_model="small_cnn", eta=None, anchors_per_class=100)


@PROTOCOLS.register("digits")
def digits_protocol() -> Protocol:
    """scikit-learn's digits with ``synref demo``'s split (65 / 10 / 25 %), noise, glyph anchors
    and refinement (a SimCLR space + a cross-fitted small CNN, 3 rounds); minutes."""
    standard = digits_standard()
    return Protocol(
        name="digits", model="small_cnn", train_size=None, test_size=None, val_fraction=0.10, test_fraction=0.25,
        standard=standard, finetune=digits_synref_finetune(),
        plc=PLCConfig(train=dataclasses.replace(standard, nesterov=True), warmup_epochs=8, window=5),
        lra=dataclasses.replace(LRAConfig.paper(), batch_size=100),
        evidence=EvidenceSpec(encoder="ssl", head="network"),
        encoders=("simclr", "efficientnet-lite0"), encoder_size=64,
        ssl=SSLConfig(), ssl_model="small_cnn", eta_model="small_cnn", eta=None, anchors_per_class=100)


@PROTOCOLS.register("pretrained")
def pretrained_protocol() -> Protocol:
    """A user's own dataset (``--dataset DIR_OR_CSV``), correction methods only: the frozen
    :data:`~synref.features.DEFAULT_ENCODER` at 160 px, features streamed from the files, 4-fold
    cross-fitted linear heads (what ``synref refine`` does by default); no network is trained."""
    return Protocol(
        name="pretrained", model="small_cnn", train_size=None, test_size=None,
        evidence=EvidenceSpec(encoder=DEFAULT_ENCODER, head="linear", folds=4),
        encoders=(), encoder_size=160)


def with_refine_encoder(protocol: Protocol, encoder: str, *, rename: bool = False) -> Protocol:
    """``protocol`` with the ``synref`` refinement in the frozen, label-free space ``encoder``
    (``--encoder``: any registered one, ``hf:ID_OR_FOLDER`` included). ``rename`` appends the
    encoder to the protocol's name (``digits-efficientnet-lite0``, ``cpu-hf-<8 hex>``), so the
    shared steps it caches under that name are never mistaken for another encoder's."""
    if protocol.refine != "synref":
        raise InputError(f"--encoder applies to synref's refinement; protocol {protocol.name} refines with the "
                         "paper's rule in the Standard model's own features")
    name = check_space_name(encoder, "--encoder")
    if not is_label_free(name):
        raise InputError(f"--encoder {encoder} sees the labels; the refinement's fixed space must be label-free")
    changed = dataclasses.replace(protocol, evidence=dataclasses.replace(protocol.evidence, encoder=name))
    if rename:
        base, value = FEATURE_EXTRACTORS.split(name)
        changed.name = f"{protocol.name}-{base}" + ("" if value is None else f"-{digest(name, length=8)}")
    return changed


def with_finetune_evidence(protocol: Protocol, options: FinetuneOptions) -> Protocol:
    """``protocol`` with fine-tuned evidence (``--evidence finetune`` and its ``options``): the
    frozen pass of its pretrained evidence, then the cross-fitted fine-tuning
    (:mod:`synref.tuned_evidence`). The protocol's name gains ``-finetune`` (and, for options other
    than the defaults, 8 hex digits of them: ``cpu-finetune-1a2b3c4d``), so the cells and shared
    steps it caches under that name are never mistaken for frozen ones or other options'; one
    ``--out`` can hold a frozen and a fine-tuned grid side by side. A protocol without pretrained
    evidence is refused in one line."""
    changed = dataclasses.replace(protocol, evidence=dataclasses.replace(protocol.evidence, tuning="finetune"),
                                  finetune_evidence=options)
    values = dataclasses.asdict(options)
    suffix = "" if values == dataclasses.asdict(FinetuneOptions()) else f"-{digest(values, length=8)}"
    changed.name = f"{protocol.name}-finetune{suffix}"
    return changed


def protocol_names() -> Tuple[str, ...]:
    return tuple(PROTOCOLS.names())


def protocol_for(name: str, dataset: str,
                 overrides: Optional[Callable[[Protocol], None]] = None) -> Protocol:
    """The protocol ``name`` (paper, cpu, digits, pretrained) for ``dataset`` (cifar10, cifar100,
    digits, or a user dataset's name: ``pretrained`` only); ``overrides`` may edit it (tests shrink
    the schedules)."""
    if name not in PROTOCOLS:
        raise InputError(f"unknown --protocol {name!r}; choose one of: {', '.join(PROTOCOLS.names())}")
    if is_user_dataset(dataset) != (name == "pretrained"):
        if name == "pretrained":
            raise InputError(f"--protocol pretrained is for your own data (--dataset DIR_OR_CSV), not {dataset}")
        raise InputError(f"--protocol {name} does not apply to your own data ({dataset}): use --protocol pretrained")
    if (name == "digits") != (dataset == "digits") and not is_user_dataset(dataset):
        raise InputError(f"--protocol {name} does not apply to --dataset {dataset}: use --protocol digits with "
                         f"--dataset digits, and --protocol paper or cpu with CIFAR")
    protocol = PROTOCOLS.create(name)
    if overrides is not None:
        overrides(protocol)
    return protocol
