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

from ..config import ConfigMixin
from ..errors import InputError
from ..evidence import FEATURE_SPACES, HEADS, CrossFitEvidenceConfig
from ..features import DEFAULT_ENCODER, FEATURE_EXTRACTORS, check_space_name, is_label_free
from ..hashing import digest
from ..models import MODELS
from ..noise import PMD_NOISE_TYPES
from ..refiners import (DEFAULT_ALPHA, DEFAULT_REFINER, DEFAULT_THRESHOLD, Refiner, create_refiner,
                        refiner_option_names)
from ..registry import Registry
from ..train import LRAConfig, PLCConfig, SSLConfig, TrainConfig
from ..validation import check_unit_interval
from .recipes import DATASETS, cpu_cifar_schedule, digits_standard, digits_synref_finetune, is_user_dataset

__all__ = ["Protocol", "PROTOCOLS", "REFINE_RECIPES", "protocol_for", "protocol_names", "with_refine_encoder"]

#: how a protocol gets its refined labels: ``paper`` = the paper's rule on the Standard model's
#: own (in-sample) features and softmax; ``synref`` = cross-fitted evidence + ``refiner``.
REFINE_RECIPES = ("paper", "synref")


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
        refine: ``paper`` (the paper's rule, :data:`REFINE_RECIPES`) or ``synref`` (cross-fitted
            evidence and the refiner ``refiner``).
        refiner: the :data:`~synref.refiners.REFINERS` entry of the ``synref`` recipe.
        refine_encoder: the ``synref`` recipe's fixed feature space: a feature extractor name
            (features cached), or None for ``refine_features``.
        refine_features: without an encoder: ``ssl`` (a SimCLR encoder trained on the training
            images + anchors) or ``classifier`` (each fold network's own space).
        refine_head: ``network`` (a ``model`` per fold, ``standard``'s recipe) or ``linear`` (a
            linear softmax head per fold on the fixed features).
        refine_folds, refine_rounds: the cross-fitting and the refiner's rounds. alpha,
            threshold: the score rule (both recipes).
        encoders: the ``lra-<encoder>`` rows run by default. encoder_size: input side of
            pretrained CNN encoders. ssl, ssl_model: the SimCLR encoder's recipe.
        eta_model, eta: network / recipe of the clean-label model whose softmax drives
            generated PMD noise (None: :func:`~synref.experiments.recipes.eta_schedule`).
            pmd_type: PMD type I / II / III of generated noise.
        anchors_per_class: stand-in anchors (CIFAR) or glyph anchors (digits) per class.
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
    refine: str = "synref"
    refiner: str = DEFAULT_REFINER
    refine_encoder: Optional[str] = "efficientnet-lite0"
    refine_features: str = "ssl"
    refine_head: str = "linear"
    refine_folds: int = 4
    refine_rounds: int = 3
    alpha: float = DEFAULT_ALPHA
    threshold: float = DEFAULT_THRESHOLD
    encoders: Tuple[str, ...] = ("simclr", "efficientnet-lite0")
    encoder_size: int = 224
    ssl: SSLConfig = field(default_factory=SSLConfig)
    ssl_model: str = "small_cnn"
    eta_model: str = "small_cnn"
    eta: Optional[TrainConfig] = None
    pmd_type: int = 1
    anchors_per_class: int = 100

    def __post_init__(self) -> None:
        self.encoders = tuple(self.encoders)
        if self.refine not in REFINE_RECIPES:
            raise InputError(f"bench protocol: refine must be one of {', '.join(REFINE_RECIPES)}, got {self.refine!r}")
        if self.refine_head not in HEADS:
            raise InputError(f"bench protocol: refine_head must be network or linear, got {self.refine_head!r}")
        if self.refine_features not in FEATURE_SPACES:
            raise InputError(f"protocol: refine_features must be one of {', '.join(FEATURE_SPACES)}, "
                             f"got {self.refine_features!r}")
        for name in ("model", "eta_model", "ssl_model"):
            if getattr(self, name) not in MODELS:
                raise InputError(f"protocol: unknown {name} {getattr(self, name)!r}; choose one of: "
                                 f"{', '.join(MODELS.names())}")
        for encoder in self.encoders:
            FEATURE_EXTRACTORS.canonical(encoder)
        if self.refine_encoder:
            check_space_name(self.refine_encoder, "protocol refine_encoder")
        if self.pmd_type not in PMD_NOISE_TYPES:
            raise InputError(f"--pmd-type must be one of 1, 2, 3, got {self.pmd_type}")
        if int(self.anchors_per_class) < 1:
            raise InputError(f"--anchors-per-class must be at least 1, got {self.anchors_per_class}")
        check_unit_interval("val_fraction", self.val_fraction)
        check_unit_interval("test_fraction", self.test_fraction)
        if self.refine_folds < 2:
            raise InputError(f"protocol: refine_folds must be at least 2, got {self.refine_folds}")
        self.refiner_for_run()  # the refinement options go through the refiner's own config class

    # -- refinement ---------------------------------------------------------------------
    def refiner_name(self) -> str:
        """The refiner of the run: ``paper`` for the paper's recipe, else ``refiner``."""
        return "paper" if self.refine == "paper" else self.refiner

    def refiner_options(self) -> Dict[str, Any]:
        """alpha, threshold and, when the refiner has them, ``rounds``: validated by the
        refiner's ``Options`` class in :meth:`refiner_for_run`."""
        options: Dict[str, Any] = {"alpha": self.alpha, "threshold": self.threshold}
        if "rounds" in refiner_option_names(self.refiner_name()):
            options["rounds"] = self.refine_rounds
        return options

    def refiner_for_run(self, **overrides: Any) -> Refiner:
        """The refiner this protocol refines with (its options through the refiner's config class)."""
        return create_refiner(self.refiner_name(), **{**self.refiner_options(), **overrides})

    def evidence_config(self, seed: int, device: Optional[str] = None) -> CrossFitEvidenceConfig:
        """The cross-fitted evidence of the ``synref`` recipe for ``seed``."""
        train = dataclasses.replace(self.standard, seed=seed, device=device or self.standard.device)
        return CrossFitEvidenceConfig(folds=self.refine_folds, head=self.refine_head, model=self.model, train=train,
                                      features=self.refine_features, ssl=self.ssl, seed=seed)


# ------------------------------------------------------------------------------ named protocols
PROTOCOLS: Registry[Protocol] = Registry("protocol")


@PROTOCOLS.register("paper")
def paper_protocol() -> Protocol:
    """The paper's CIFAR settings (ResNet-34, 45,000 / 5,000 / 10,000, 200 + 50 epochs, PLC 180
    epochs, LRA 200 epochs, the paper's rule on the Standard model). For a GPU."""
    return Protocol(
        name="paper", model="resnet34", train_size=None, test_size=None,
        standard=TrainConfig.paper_standard(), finetune=TrainConfig.paper_finetune(),
        plc=PLCConfig.paper(), lra=LRAConfig.paper(), refine="paper", refine_encoder=None,
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
        lra=dataclasses.replace(LRAConfig.paper(), epochs=50, cosine_epochs=None), refine="synref",
        # refinement space chosen on the clean validation split (efficientnet-lite-ensemble's docstring)
        refine_encoder="efficientnet-lite-ensemble", refine_head="linear", refine_rounds=5,
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
        lra=dataclasses.replace(LRAConfig.paper(), batch_size=100), refine="synref", refine_encoder=None,
        refine_features="ssl", refine_head="network", refine_rounds=3,
        encoders=("simclr", "efficientnet-lite0"), encoder_size=64,
        ssl=SSLConfig(), ssl_model="small_cnn", eta_model="small_cnn", eta=None, anchors_per_class=100)


@PROTOCOLS.register("pretrained")
def pretrained_protocol() -> Protocol:
    """A user's own dataset (``--dataset DIR_OR_CSV``), correction methods only: the frozen
    :data:`~synref.features.DEFAULT_ENCODER` at 160 px, features streamed from the files, 4-fold
    cross-fitted linear heads (what ``synref refine`` does by default); no network is trained."""
    return Protocol(
        name="pretrained", model="small_cnn", train_size=None, test_size=None, refine="synref",
        refine_encoder=DEFAULT_ENCODER, refine_head="linear", refine_folds=4, refine_rounds=1,
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
    changed = dataclasses.replace(protocol, refine_encoder=name)
    if rename:
        base, value = FEATURE_EXTRACTORS.split(name)
        changed.name = f"{protocol.name}-{base}" + ("" if value is None else f"-{digest(name, length=8)}")
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
