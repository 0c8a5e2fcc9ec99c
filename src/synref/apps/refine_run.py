"""``synref refine`` as one library call: a user's labelled images in, suggested labels out.

    summary = run_refine(RefineRunConfig(data="photos/", anchors="anchors/"), out="out/")

Steps: load the data (image folder, CSV manifest, CIFAR layout or digits; optional label-file
override) -> anchors (an anchor set from ``synref generate``, or generated into ``OUT/anchors``)
matched by class name -> evidence -> :func:`synref.refiners.refine` with the chosen refiner ->
results (``refined_labels.csv``, ``scores.npy``, ``summary.json``, ``config.json``,
``report.html``; see DEVELOPERS.md).

Evidence, three ways (:attr:`RefineRunConfig.evidence_mode`):

- ``pretrained`` (the default: neither ``classifier`` nor ``train``): features of a frozen
  label-free encoder (``features``, default :data:`~synref.features.DEFAULT_ENCODER`) and the
  out-of-sample softmax of cross-fitted linear heads on them. Image files are **streamed**:
  decoded a batch at a time (in ``workers`` threads, ahead of the encoder) at the encoder's input
  size straight into the encoder, never all in memory; the features ``(N, D)`` float32 are the only
  per-sample array, written in chunks to ``OUT/cache`` (a killed run resumes at the first missing
  chunk) and memory-mapped from there. Under ``accelerate launch`` the chunks are split between
  the processes (:func:`~synref.features.compute_features`) and process 0 refines.
- ``train``: k-fold cross-fitted CNNs trained here (images decoded into memory).
- ``classifier``: a saved classifier's softmax (images decoded into memory).

Unreadable images stop the run with one line naming the file, or, with ``skip_bad``, are left
out and listed in the summary. ``OUT/config.json`` re-runs the folder:
``run_refine(RefineRunConfig.load("OUT/config.json"), out="OUT2")`` writes the same
``refined_labels.csv``.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .. import __version__
from ..anchors import create_generator, generate_anchor_set, load_matched_anchors
from ..anchors.store import read_meta
from ..arrays import UnitRows, row_norms
from ..config import ConfigMixin, check_value_type
from ..data import LabeledImages, decode_images, load_dataset, load_labels_file
from ..distributed import distributed_context, process_group, release_distributed
from ..errors import InputError
from ..evidence import Evidence, check_anchor_classes
from ..features import DEFAULT_CLIP_MODEL, DEFAULT_ENCODER, FEATURE_EXTRACTORS, ExtractorContext, \
    extractor_from_context, is_label_free
from ..hashing import digest
from ..io import (absolute_path, atomic_open, check_input_file, check_not_inside, check_output_dir, csv_text,
                  output_lock, read_npy_matrix,
                  remove_stale_temp_files, write_json, write_npy)
from ..models import create_model, load_classifier, read_checkpoint
from ..pipeline import (GIVEN_ENCODER, PRETRAINED_SIZE, EvidenceSpec, RefinerSpec, build_evidence, build_refiner,
                        encode, fold_schedule)
from ..refiners import (DEFAULT_REFINER, REFINERS, Decision, Refiner, RefinementResult, refine,
                        refiner_used_options)
from ..train import activation_bytes, checkpoint_folder, clear_checkpoints, estimate_fit_bytes
from ..validation import check_classes_present, check_memory
from .finetune_evidence import FINETUNE_DEFAULTS, add_finetune_info, check_evidence_options, finetune_refinement
from .refine_guards import check_pretrained_memory, check_results_folder, replaced_results_notice
from .report import write_report
from .review import write_review

__all__ = ["RefineRunConfig", "run_refine", "format_refine_summary", "decode_dataset", "load_data",
           "load_anchors", "nest_options", "PRETRAINED_SIZE", "EVIDENCE_MODES", "FLAT_OPTIONS"]

#: the smallest working image side (``--image-size`` and the data's own size).
MIN_IMAGE_SIZE = 4
#: where the evidence comes from (see the module docstring).
EVIDENCE_MODES = ("pretrained", "train", "classifier", "features")


#: the ``synref refine`` options of the flat layout (config.json of synref <= 0.4 and the command
#: line's vocabulary) that now live in :class:`~synref.pipeline.EvidenceSpec` /
#: :class:`~synref.pipeline.RefinerSpec`, with their types (a hand-edited value is type-checked).
FLAT_OPTIONS: Dict[str, Any] = {
    "train": bool, "model": str, "epochs": int, "folds": int, "encoder": Optional[str], "clip_model": str,
    "rounds": int, "alpha": float, "threshold": float, "calibrate": bool, "target_precision": Optional[float],
    "on_model_check_failure": str, "neighbor_graph": str, "neighbor_recall": float,
}
#: the flat options that are the refiner's options.
REFINER_OPTIONS = ("rounds", "alpha", "threshold", "calibrate", "target_precision", "on_model_check_failure",
                   "neighbor_graph", "neighbor_recall")
#: the refinement rounds of ``synref refine`` when none is given (a refiner with rounds).
DEFAULT_ROUNDS = 1


def nest_options(values: Dict[str, Any]) -> Dict[str, Any]:
    """A :class:`RefineRunConfig` dict of the flat options (the command line's, or an old
    ``config.json``): ``train``, ``model``, ``epochs``, ``folds``, ``encoder``, ``clip_model``
    become its ``evidence`` (:class:`~synref.pipeline.EvidenceSpec`), ``refiner`` and its options
    its ``refiner`` (:class:`~synref.pipeline.RefinerSpec`). A refiner option the refiner does not
    use is left out (:func:`~synref.apps.refine_options.check_options_apply` refuses it when a user
    set it); a value of the wrong type is an InputError naming it."""
    d = dict(values)
    flat = {k: d.pop(k) for k in list(d) if k in FLAT_OPTIONS}
    if isinstance(d.get("refiner"), str):
        flat["refiner"] = d.pop("refiner")
    if isinstance(d.get("evidence"), str):  # --evidence frozen | finetune: the evidence's tuning
        flat["tuning"] = d.pop("evidence")
    if not flat and isinstance(d.get("evidence"), (dict, EvidenceSpec)):
        return d  # the nested layout
    for name, value in flat.items():
        check_value_type(RefineRunConfig.config_name, "evidence" if name == "tuning" else name, value,
                         FLAT_OPTIONS.get(name, str))
    for name in ("evidence", "refiner"):
        if flat and isinstance(d.get(name), (dict, EvidenceSpec, RefinerSpec)):
            raise InputError(f"{RefineRunConfig.config_name}: option(s) {', '.join(sorted(flat))} of the flat layout "
                             f"next to {name!r}: give them inside {name!r}")
    for name, minimum in (("folds", 2), ("rounds", 1), ("epochs", 1)):
        if name in flat and int(flat[name]) < minimum:
            raise InputError(f"--{name} must be at least {minimum}, got {flat[name]}")
    features = d.get("features")
    if features is not None and flat.get("encoder") is None and features in FEATURE_EXTRACTORS \
            and not Path(features).exists():
        # a config.json of synref <= 0.1.0 named the encoder "features"
        flat["encoder"], d["features"] = features, None
    train = bool(flat.get("train", False))
    if d.get("features") is not None:
        for flag, value in (("--train", train or None), ("--encoder", flat.get("encoder"))):
            if value is not None:
                raise InputError(f"{flag} does not apply with --features (the embeddings are given: no "
                                 "encoder runs, the anchors come from --anchor-features)")
        encoder = GIVEN_ENCODER
    elif flat.get("encoder") is not None:
        encoder = flat["encoder"]
    else:
        encoder = "classifier" if (train or d.get("classifier") is not None) else DEFAULT_ENCODER
    pretrained = d.get("features") is None and d.get("classifier") is None and not train
    if pretrained and encoder in FEATURE_EXTRACTORS and FEATURE_EXTRACTORS.canonical(encoder) == "classifier":
        raise InputError("--encoder classifier needs --classifier CKPT or --train; without them the "
                         f"evidence comes from a frozen pretrained encoder (default {DEFAULT_ENCODER})")
    evidence: Dict[str, Any] = {"source": "classifier" if d.get("classifier") is not None else "crossfit",
                                "encoder": encoder, "head": "network" if train else "linear",
                                "folds": int(flat.get("folds", 4)), "model": flat.get("model", "small_cnn"),
                                "clip_model": flat.get("clip_model", DEFAULT_CLIP_MODEL),
                                "tuning": flat.get("tuning", "frozen")}
    if train:
        evidence["train"] = fold_schedule(int(flat.get("epochs", 30))).to_dict()
    if pretrained and d.get("image_size") is not None:  # the encoder's input side
        evidence["encoder_size"] = d.pop("image_size")
    name = flat.get("refiner", DEFAULT_REFINER)
    if name not in REFINERS:
        raise InputError(f"unknown --refiner {name!r}; choose one of: {', '.join(REFINERS.choices())}")
    used = refiner_used_options(name)
    options = {k: flat[k] for k in REFINER_OPTIONS if k in flat and k in used}
    if "rounds" in used:  # the command's own default; a saved classifier is not refit
        options["rounds"] = 1 if d.get("classifier") is not None else options.get("rounds", DEFAULT_ROUNDS)
    if isinstance(d.get("refiner"), (dict, RefinerSpec)):
        return {**d, "evidence": evidence}
    return {**d, "evidence": evidence, "refiner": {"name": name, "options": options}}


@dataclass
class RefineRunConfig(ConfigMixin):
    """Options of one ``synref refine`` run (saved as ``OUT/config.json``; ``--config`` re-runs it).

    Attributes:
        data: "digits", an image folder, a CSV manifest (path,label), a CIFAR python layout, or a
            Hugging Face dataset (a ``save_to_disk`` folder or parquet file(s)).
        split: which split of ``data`` (CIFAR train/test, split folders, a CSV split column, a
            DatasetDict's split).
        image_column, label_column: a Hugging Face dataset's image and label columns (default:
            its Image / ClassLabel features).
        labels: optional label file (.npy or one per line) replacing the dataset's labels.
        anchors: an anchor-set folder from ``synref generate``; or ``generator`` (+ options,
            ``per_class``) to generate one into ``OUT/anchors``.
        classifier: a checkpoint saved with ``synref.models.save_classifier`` (evidence source
            ``classifier``).
        features, anchor_features, anchor_labels, class_names: bring your own embeddings: a
            ``.npy`` (N, D) of the samples (memory-mapped, never copied), a ``.npy`` (M, D) of the
            anchors in the same space and their labels (a label file), optional class names (a
            text file, one per line, or a JSON list). ``labels`` (or ``data``) gives the given
            labels; ``data`` is optional and then names the images behind the rows (same order)
            for the report. No encoder runs (evidence encoder ``given``).
        evidence: which evidence (:class:`~synref.pipeline.EvidenceSpec`): by default the frozen
            :data:`~synref.features.DEFAULT_ENCODER` and 4-fold cross-fitted linear heads
            (``pretrained``); head ``network``: k-fold cross-fitted CNNs trained here (``--train``);
            source ``classifier``: the saved ``classifier``'s softmax.
        refiner: the refiner and the options set for it (:class:`~synref.pipeline.RefinerSpec`;
            default ``posterior``).
        image_size: with ``--train`` / ``--classifier``: the size images are decoded at (None
            keeps the data's). Pretrained evidence decodes image files straight to the encoder's
            input side, ``evidence.encoder_size``.
        skip_bad: leave unreadable images out (listed in the summary) instead of stopping.
        seed: anchors, fold splits, networks, encoders.
        batch_size, workers, chunk_size: pretrained evidence: images per encoder forward pass,
            decoding threads, rows per feature-cache chunk (the unit of resume and of work sharing
            between processes).
        finetune_epochs, finetune_size, finetune_lr, anchor_weight, finetune_flip: with
            ``evidence.tuning`` ``finetune`` (``--evidence finetune``: the pretrained evidence plus a
            cross-fitted fine-tuned backbone's softmax as a separate view,
            :mod:`synref.tuned_evidence`; ``finetune_flip``: mirrored training images, off
            for digits or text).

    ``from_dict`` also reads the flat layout of older ``config.json`` files (:func:`nest_options`).
    """

    config_name = "refine config"

    data: str = ""
    split: str = "train"
    image_column: Optional[str] = None
    label_column: Optional[str] = None
    labels: Optional[str] = None
    anchors: Optional[str] = None
    generator: Optional[str] = None
    generator_options: Dict[str, Any] = field(default_factory=dict)
    per_class: int = 100
    classifier: Optional[str] = None
    features: Optional[str] = None
    anchor_features: Optional[str] = None
    anchor_labels: Optional[str] = None
    class_names: Optional[str] = None
    evidence: EvidenceSpec = field(default_factory=EvidenceSpec)
    refiner: RefinerSpec = field(default_factory=RefinerSpec)
    image_size: Optional[int] = None
    skip_bad: bool = False
    seed: int = 0
    batch_size: int = 64
    workers: int = 2
    chunk_size: int = 4096
    finetune_epochs: int = FINETUNE_DEFAULTS["finetune_epochs"]
    finetune_size: int = FINETUNE_DEFAULTS["finetune_size"]
    finetune_lr: float = FINETUNE_DEFAULTS["finetune_lr"]
    anchor_weight: float = FINETUNE_DEFAULTS["anchor_weight"]
    finetune_flip: bool = FINETUNE_DEFAULTS["finetune_flip"]

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RefineRunConfig":
        if not isinstance(d, dict):
            raise InputError(f"{cls.config_name}: expected a JSON object, got {type(d).__name__}")
        return super().from_dict(nest_options(d))

    def __post_init__(self) -> None:
        if self.features is not None:
            for name in ("anchor_features", "anchor_labels"):
                if getattr(self, name) is None:
                    raise InputError(f"--features needs --{name.replace('_', '-')} (the anchors in the same space)")
            if self.labels is None and not str(self.data).strip():
                raise InputError("--features needs --labels (the given labels of its rows) or --data")
            for flag, value in (("--anchors", self.anchors), ("--generate", self.generator),
                                ("--classifier", self.classifier)):
                if value is not None:
                    raise InputError(f"{flag} does not apply with --features (the embeddings are given: no "
                                     "encoder runs, the anchors come from --anchor-features)")
            if self.evidence.encoder != GIVEN_ENCODER:
                raise InputError(f"--features: the evidence's encoder is {GIVEN_ENCODER!r} (the given embeddings), "
                                 f"not {self.evidence.encoder!r}")
        else:
            for name in ("anchor_features", "anchor_labels", "class_names"):
                if getattr(self, name) is not None:
                    raise InputError(f"--{name.replace('_', '-')} applies with --features FEATURES.npy only")
            if not str(self.data).strip():
                raise InputError("--data is required (an image folder, a CSV manifest, a CIFAR folder or 'digits'),"
                                 " or --features FEATURES.npy with --labels")
            if (self.anchors is None) == (self.generator is None):
                raise InputError("give exactly one of --anchors DIR or --generate (with --generator)")
            if self.evidence.encoder == GIVEN_ENCODER:
                raise InputError(f"evidence encoder {GIVEN_ENCODER!r} needs --features FEATURES.npy")
        # files are stored absolute: OUT/config.json names the same files when re-run from elsewhere
        if str(self.data).strip() and str(self.data).strip().lower() != "digits":
            self.data = absolute_path(self.data)
        for name in ("labels", "anchors", "classifier", "features", "anchor_features", "anchor_labels", "class_names"):
            if getattr(self, name) is not None:
                setattr(self, name, absolute_path(getattr(self, name)))
        if self.generator_options.get("root") is not None:
            self.generator_options = {**self.generator_options, "root": absolute_path(self.generator_options["root"])}
        if self.classifier is not None and self.evidence.trains_networks:
            raise InputError("give at most one of --classifier CKPT or --train (neither: pretrained evidence)")
        if (self.classifier is not None) != (self.evidence.source == "classifier"):
            raise InputError("evidence source classifier goes with --classifier CKPT (and only with it)")
        if self.evidence_mode == "classifier" and int(self.refiner.options.get("rounds", 1)) > 1:
            raise InputError("rounds does not apply with --classifier (a saved classifier is not refit)")
        if self.evidence_mode == "pretrained":
            if self.space == "classifier":
                raise InputError("--encoder classifier needs --classifier CKPT or --train; without them the "
                                 f"evidence comes from a frozen pretrained encoder (default {DEFAULT_ENCODER})")
            if self.space == "ssl":
                raise InputError("--encoder ssl trains a SimCLR encoder on the images in memory: use it with "
                                 "--train (the default evidence uses a frozen pretrained encoder)")
            if not is_label_free(self.space):
                raise InputError(f"--encoder {self.space} sees labels; pretrained evidence needs a "
                                 "label-free encoder")
            if self.image_size is not None:
                raise InputError("image_size: pretrained evidence decodes the images at the encoder's input side, "
                                 "evidence.encoder_size")
        elif self.evidence.encoder_size is not None and self.evidence.encoder == "classifier":
            raise InputError("evidence encoder_size applies to a pretrained encoder")
        for name, minimum in (("per_class", 1), ("batch_size", 1), ("workers", 0), ("chunk_size", 1)):
            if int(getattr(self, name)) < minimum:
                raise InputError(f"--{name.replace('_', '-')} must be at least {minimum}, got {getattr(self, name)}")
        for size in (self.image_size, self.evidence.encoder_size):
            if size is not None and int(size) < MIN_IMAGE_SIZE:
                raise InputError(f"--image-size must be at least {MIN_IMAGE_SIZE}, got {size}")
        check_evidence_options(self)

    @property
    def evidence_mode(self) -> str:
        """``classifier`` (a saved one), ``train`` (cross-fitted CNNs), ``features`` (given
        embeddings) or ``pretrained`` (a frozen encoder + cross-fitted linear heads: the default)."""
        if self.features is not None:
            return "features"
        if self.classifier is not None:
            return "classifier"
        return "train" if self.evidence.trains_networks else "pretrained"

    @property
    def space(self) -> str:
        """The canonical name of the evidence's feature space (``given`` for embeddings brought
        with ``features``)."""
        return self.evidence.encoder

    def encoder_side(self) -> int:
        """Pretrained evidence: the encoder's input side (image files are decoded straight to it)."""
        return int(self.evidence.encoder_size) if self.evidence.encoder_size is not None else PRETRAINED_SIZE


# ----------------------------------------------------------------------------- steps
def load_data(config: RefineRunConfig) -> LabeledImages:
    """The dataset as loaded (image files stay paths: nothing is decoded) with the label-file
    override applied."""
    dataset = load_dataset(config.data, split=config.split, image_column=config.image_column,
                           label_column=config.label_column)
    if len(dataset) == 0:
        raise InputError(f"dataset {config.data} is empty")
    if config.labels is not None:
        labels = load_labels_file(config.labels, num_samples=len(dataset), num_classes=dataset.num_classes,
                                  paths=dataset.paths, ids=dataset.ids, class_names=dataset.class_names)
        dataset = dataset.with_labels(labels)
    check_classes_present(dataset.labels, dataset.class_names, f"--data {config.data}")
    return dataset


def decode_dataset(config: RefineRunConfig, dataset: LabeledImages) -> Tuple[LabeledImages, List[Dict[str, str]]]:
    """``train`` / ``classifier`` runs: the dataset as uint8 (N, H, W, C) at the working size, and
    the skipped files."""
    size = None if config.image_size is None else (int(config.image_size), int(config.image_size))
    check = _working_size_check(config, dataset.num_classes)
    return decode_images(dataset, size=size, skip_bad=config.skip_bad, check=check)


def _num_anchors(config: RefineRunConfig, num_classes: int) -> int:
    """The anchors the run will hold (generated, or the set's own count; 0 when unreadable)."""
    if config.generator is not None:
        return int(config.per_class) * num_classes
    try:
        meta = read_meta(config.anchors)  # type: ignore[arg-type]
        return int(meta["per_class"]) * len(meta["class_names"])
    except InputError:
        return 0  # load_anchors names the problem


def _working_size_check(config: RefineRunConfig, num_classes: int) -> Callable[[Tuple[int, int], int, int], None]:
    """The check of the working geometry, before decoding: images of at least MIN_IMAGE_SIZE px
    and the memory of the images, the anchors and a training or inference step at that size."""
    def check(hw: Tuple[int, int], channels: int, n: int) -> None:
        if config.image_size is None and min(hw) < MIN_IMAGE_SIZE:
            raise InputError(f"the images of --data {config.data} are {hw[0]}x{hw[1]} px, smaller than the "
                             f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} px synref works at; pass --image-size "
                             f"{MIN_IMAGE_SIZE} or more to upscale them, or use larger images")
        anchors = _num_anchors(config, num_classes)
        need = float(n + anchors) * hw[0] * hw[1] * channels
        if config.classifier is not None:
            header, _ = read_checkpoint(config.classifier)
            name, what = str(header.get("name")), "the classifier's forward pass"
            model = create_model(name, num_classes=max(int(header.get("num_classes", 2)), 2), in_channels=channels)
            need += min(n, 512) * activation_bytes(model, hw, channels)
        else:
            name, what = config.evidence.model, f"training {config.evidence.model}"
            model = create_model(name, num_classes=max(num_classes, 2), in_channels=channels)
            need += estimate_fit_bytes(model, hw, channels, min(n, 64))
        check_memory(need, f"working at {hw[0]}x{hw[1]} px ({n} images, {anchors} anchors, {what})",
                     "pass a smaller --image-size (e.g. 64 or 224)")
    return check


def anchor_dir(config: RefineRunConfig, class_names: List[str], out: Path, *, process_index: int = 0,
               num_processes: int = 1, barrier: Optional[Callable[[], Any]] = None) -> Tuple[Path, Dict[str, Any]]:
    """The anchor-set folder (generated into ``out/anchors`` first when asked, split between
    the processes) and its description for the summary."""
    if config.generator is not None:
        directory = out / "anchors"
        generator = create_generator(config.generator, **config.generator_options)
        generate_anchor_set(generator, class_names, config.per_class, directory, seed=config.seed,
                            process_index=process_index, num_processes=num_processes, barrier=barrier)
        return directory, {"generated": config.generator, "dir": str(directory.resolve()),
                           **config.generator_options}
    directory = Path(config.anchors)  # type: ignore[arg-type]
    return directory, {"dir": str(directory.resolve())}


def load_anchors(directory: Path, dataset: LabeledImages, *, decode: bool) -> Tuple[LabeledImages, List[str]]:
    """Anchors relabelled to the dataset's class indices (matched by name): path-backed
    (``decode=False``: streamed into the encoder like the data), or uint8 ``(M, H, W, C)`` at the
    dataset's size and channels (``dataset`` must hold arrays). Also returns the anchor classes
    that are not dataset classes."""
    if not decode:
        return load_matched_anchors(directory, dataset.class_names, decode=False)
    assert dataset.images is not None
    return load_matched_anchors(directory, dataset.class_names, size=dataset.images.shape[1:3],
                                channels=dataset.images.shape[-1])


def _evidence(config: RefineRunConfig, dataset: LabeledImages, anchors: LabeledImages, cache: Path
              ) -> Tuple[Evidence, Dict[str, Any]]:
    """``train`` / ``classifier`` runs: the evidence (a saved classifier's, or cross-fitted) and
    a description of it."""
    num_classes = dataset.num_classes
    if config.classifier is None:
        evidence = build_evidence(config.evidence, dataset, anchors, cache, seed=config.seed)
        return evidence, {"classifier": f"{config.evidence.folds}-fold cross-fitted {config.evidence.model}, "
                                        f"{config.refiner.options.get('rounds', 1)} round(s)"}
    model = load_classifier(config.classifier)
    if model.num_classes != num_classes:
        raise InputError(f"--classifier {config.classifier} has {model.num_classes} classes, "
                         f"the data has {num_classes}")
    if model.in_channels != dataset.images.shape[-1]:  # type: ignore[union-attr]
        raise InputError(f"--classifier {config.classifier} takes {model.in_channels}-channel images, "
                         f"the data has {dataset.images.shape[-1]}")  # type: ignore[union-attr]
    evidence = build_evidence(config.evidence, dataset, anchors, cache, seed=config.seed, classifier=model)
    return evidence, {"classifier": str(config.classifier)}


def _refiner(config: RefineRunConfig) -> Refiner:
    """The run's refiner (a saved classifier is not refit: one round)."""
    return build_refiner(config.refiner, **({"rounds": 1} if config.evidence_mode == "classifier" and
                                            "rounds" in refiner_used_options(config.refiner.name) else {}))


def _score(config: RefineRunConfig, dataset: LabeledImages, anchors: LabeledImages,
           cache: Path) -> Tuple[RefinementResult, Dict[str, Any]]:
    """``train`` / ``classifier`` runs: the refinement (cross-fitted runs cached per
    configuration and data)."""
    refiner = _refiner(config)
    if config.classifier is not None:
        evidence, info = _evidence(config, dataset, anchors, cache)
        result = refine(evidence, refiner)
        info.update(temperatures=result.info.get("temperatures", []))
        return result, info
    # Cross-fitted classifiers trained here: cache the refinement per configuration and data.
    key = digest(dataset.labels, dataset.images, anchors.images, anchors.labels, config.evidence.to_dict(),
                 config.seed, refiner.name, refiner.options.to_dict())
    evidence_file = cache / f"crossfit-{key}.npz"
    saved_info: Dict[str, Any] = {}
    if evidence_file.is_file():
        with np.load(evidence_file) as saved:
            scores, refined = saved["scores"], saved["refined_labels"]
            saved_info = json.loads(str(saved["info"]))
    if "decision" in saved_info:  # (a file of an older synref without it is recomputed)
        info = saved_info
        rows = np.arange(len(scores))
        best = scores.argmax(axis=1)
        # the decision as the run that computed it recorded it (what decided, the model check)
        result = RefinementResult(labels=dataset.labels, refined_labels=refined, best_class=best,
                                  best_score=scores[rows, best], given_score=scores[rows, dataset.labels],
                                  decision=Decision.from_dict(info.pop("decision")), scores=scores)
        info["resumed"] = True
        return result, info
    evidence, info = _evidence(config, dataset, anchors, cache)
    result = refine(evidence, refiner)
    info.update(temperatures=result.info.get("temperatures", []), rounds=result.info.get("rounds", []))
    with atomic_open(evidence_file, "wb") as handle:
        np.savez(handle, scores=result.scores, refined_labels=result.refined_labels,
                 info=np.array(json.dumps({**info, "decision": result.decision.to_dict()})))
    return result, info


# ----------------------------------------------------------------------------- outputs
#: rows of ``refined_labels.csv`` formatted at a time.
CSV_BLOCK_ROWS = 1 << 16
CSV_COLUMNS = ["index", "id", "path", "given_label", "given_class", "suggested_label", "suggested_class",
               "best_score", "given_score", "label_quality", "changed"]


def _write_csv(path: Path, dataset: Any, result: RefinementResult) -> None:
    """``refined_labels.csv``, one row per sample, formatted a block of rows at a time (pandas'
    C writer, no Python object per row) into a temporary file renamed at the end; text cells
    (ids, paths, class names) are neutralised against spreadsheet formulas (:func:`~synref.io.csv_text`)."""
    import pandas as pd

    names = np.asarray([csv_text(name) for name in dataset.class_names], dtype=object)
    quality = result.label_quality
    paths, ids = dataset.paths, dataset.ids
    n = len(result.labels)
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        for start in range(0, max(n, 1), CSV_BLOCK_ROWS):
            stop = min(n, start + CSV_BLOCK_ROWS)
            given, suggested = result.labels[start:stop], result.refined_labels[start:stop]
            index = np.arange(start, stop)
            frame = pd.DataFrame({
                "index": index, "id": index.astype(str) if ids is None else _csv_texts(ids[start:stop]),
                "path": "" if paths is None else _csv_texts(paths[start:stop]),
                "given_label": given, "given_class": names[given], "suggested_label": suggested,
                "suggested_class": names[suggested], "best_score": result.best_score[start:stop],
                "given_score": result.given_score[start:stop], "label_quality": quality[start:stop],
                "changed": np.where(given != suggested, "yes", "no")}, columns=CSV_COLUMNS)
            frame.to_csv(handle, header=start == 0, index=False, float_format="%.6f", lineterminator="\n")


def _csv_texts(values: Any) -> Any:
    """:func:`~synref.io.csv_text` of a column of text cells (a block of rows), vectorised."""
    import pandas as pd

    column = pd.Series(values, dtype=object).astype(str)
    risky = column.str.match(r"[=+\-@\t\r']")
    return column.where(~risky, "'" + column).to_numpy()


def _skip_rows(dataset: LabeledImages, features: np.ndarray, skipped: List[Dict[str, Any]]
               ) -> Tuple[LabeledImages, Any, List[Dict[str, str]]]:
    """Leave the unreadable files (all-zero feature rows of ``skip_bad``) out of the dataset and
    the features: a :class:`~synref.arrays.UnitRows` view of the kept rows, never a copy."""
    if not skipped:
        return dataset, features, []
    bad = np.zeros(len(dataset), bool)
    bad[[int(s["index"]) for s in skipped]] = True
    keep = np.flatnonzero(~bad)
    if keep.size == 0:
        raise InputError(f"none of the {len(dataset)} images could be read (first: {skipped[0]['reason']})")
    listed = [{"file": str(s["file"]), "reason": str(s["reason"])} for s in sorted(skipped, key=lambda s: s["index"])]
    return dataset.subset(keep), UnitRows(features, index=keep), listed


def _refine_features(config: RefineRunConfig, data: Any, anchors: Any, features: Tuple[Any, np.ndarray]
                     ) -> Tuple[RefinementResult, Dict[str, Any]]:
    """The refinement over fixed ``features`` ((N, D) memory-mapped or a row view, (M, D) of the
    anchors) with cross-fitted linear heads (computed only if the refiner reads them), in every
    process of a launch (the refiner shares the rows between them). Returns the result and its
    timings."""
    t0 = time.time()
    evidence = build_evidence(config.evidence, data, anchors, seed=config.seed, features=features)
    result = refine(evidence, _refiner(config))
    stages = list(result.info.get("stages") or [])
    timings = {"refine": round(time.time() - t0, 3), **{r["stage"]: r["seconds"] for r in stages}}
    return result, {"timings": timings, "stages": stages}


def _run_pretrained(config: RefineRunConfig, dataset: LabeledImages, out: Path, cache: Path, *, rank: int,
                    world: int, barrier: Optional[Callable[[], Any]], device: Optional[str]
                    ) -> Optional[Tuple[LabeledImages, RefinementResult, Dict[str, Any]]]:
    """Pretrained evidence: streamed features (every process) -> the refinement (every process
    takes its share of the rows) -> process 0 writes. Returns None in the other processes."""
    # the encoder's model is found (its folder / the hub cache) before any anchor is generated
    extractor_from_context(config.space, ExtractorContext(size=PRETRAINED_SIZE, clip_model=config.evidence.clip_model,
                                                          device="cpu")).fingerprint()
    check_pretrained_memory(config.encoder_side(), num_images=len(dataset), batch_size=config.batch_size,
                            chunk_size=config.chunk_size, workers=config.workers)
    loader_skipped = [{"file": str(s["file"]), "reason": str(s["reason"])} for s in dataset.skipped]
    directory, anchor_info = anchor_dir(config, dataset.class_names, out, process_index=rank, num_processes=world,
                                        barrier=barrier)
    anchors, extra = load_anchors(directory, dataset, decode=not dataset.is_path_backed)
    check_anchor_classes(anchors.labels, dataset.num_classes, dataset.class_names)
    space = encode(config.evidence, dataset, anchors, cache, rank=rank, world=world, barrier=barrier, device=device,
                   skip_bad=config.skip_bad, batch_size=config.batch_size, workers=config.workers,
                   chunk_size=config.chunk_size)
    dataset, features, skipped = _skip_rows(dataset, space.features, space.skipped)
    result, facts = _refine_features(config, dataset, anchors, (features, space.anchor_features))
    tuned = None
    if config.evidence.tuning == "finetune":  # the frozen pass's scores are the targets of a fine-tuned backbone
        result, tuned = finetune_refinement(config, dataset, anchors, features, space.anchor_features, result,
                                            _refiner(config), cache, device=device)
    if rank != 0:
        return None
    info = {"classifier": f"{config.evidence.folds}-fold cross-fitted linear heads on {config.space} features",
            "anchors": {**anchor_info, "num_anchors": len(anchors), "ignored_anchor_classes": extra},
            "num_anchors": len(anchors), "skipped": loader_skipped + skipped, "resumed": space.resumed,
            "image_size": space.image_size, "channels": 3 if dataset.is_path_backed else None,
            "temperatures": result.info.get("temperatures", []), "rounds": result.info.get("rounds", []),
            "evidence": {"mode": "pretrained", "encoder": config.space,
                         "feature_file": str(Path(space.file).relative_to(out.resolve()))
                         if Path(space.file).is_relative_to(out.resolve()) else space.file,
                         "feature_shape": list(space.features.shape), "processes": world},
            "timings": {"features": space.seconds, **facts["timings"]}, "stages": facts["stages"]}
    return dataset, result, info if tuned is None else add_finetune_info(info, tuned)


@dataclass
class FeatureRows:
    """The samples of a run on given embeddings: labels and class names, optionally the images
    (``paths``) behind the rows; what the results writer reads of a :class:`LabeledImages`."""

    labels: np.ndarray
    class_names: List[str]
    paths: Optional[List[str]] = None
    ids: Optional[List[str]] = None
    images: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_path_backed(self) -> bool:
        return self.paths is not None


def _read_class_names(path: str) -> List[str]:
    """Class names from a text file (one per line) or a JSON list."""
    file = check_input_file(Path(path), "--class-names file")
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except ValueError as exc:
            raise InputError(f"--class-names {path}: not JSON ({exc})") from None
        if not isinstance(names, list):
            raise InputError(f"--class-names {path}: expected a JSON list of names")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    names = [str(name) for name in names]
    if len(set(names)) != len(names):
        raise InputError(f"--class-names {path}: names repeat")
    return names


def _run_given_features(config: RefineRunConfig, out: Path, *, rank: int
                        ) -> Optional[Tuple[FeatureRows, RefinementResult, Dict[str, Any]]]:
    """Embeddings brought by the user: ``features`` (N, D) memory-mapped, anchors (M, D) and
    their labels, the given labels; the same refinement as pretrained evidence."""
    features = read_npy_matrix(config.features, "--features")  # type: ignore[arg-type]
    norms = row_norms(features)  # one streamed pass: finite rows, and the norms the refiner scales by
    bad = np.flatnonzero(~np.isfinite(norms))
    if bad.size:
        raise InputError(f"--features {config.features}: row {int(bad[0])} has a NaN or infinite value")
    features = UnitRows(features, norms=norms)
    anchor_features = np.asarray(read_npy_matrix(config.anchor_features, "--anchor-features"),  # type: ignore[arg-type]
                                 dtype=np.float32)
    if anchor_features.shape[1] != features.shape[1]:
        raise InputError(f"--anchor-features {config.anchor_features} has {anchor_features.shape[1]} dimensions, "
                         f"--features {config.features} has {features.shape[1]}")
    dataset = load_data(config) if str(config.data).strip() else None
    names = _read_class_names(config.class_names) if config.class_names is not None else         (dataset.class_names if dataset is not None else None)
    labels = dataset.labels if dataset is not None else         load_labels_file(config.labels, num_samples=len(features), num_classes=None if names is None else len(names))  # type: ignore[arg-type]
    anchor_labels = load_labels_file(config.anchor_labels, num_samples=len(anchor_features),  # type: ignore[arg-type]
                                     num_classes=None if names is None else len(names))
    if len(labels) != len(features):
        raise InputError(f"--features {config.features} has {len(features)} rows, the labels {len(labels)}")
    if names is None:
        names = [str(c) for c in range(int(max(labels.max(initial=0), anchor_labels.max(initial=0))) + 1)]
    check_classes_present(labels, names, f"--labels {config.labels}")
    check_anchor_classes(anchor_labels, len(names), names)
    rows = FeatureRows(labels, names, paths=dataset.paths if dataset is not None else None,
                       ids=dataset.ids if dataset is not None else None)
    result, facts = _refine_features(config, rows, FeatureRows(anchor_labels, names), (features, anchor_features))
    if rank != 0:
        return None
    info = {"classifier": f"{config.evidence.folds}-fold cross-fitted linear heads on the given features",
            "anchors": {"features": str(Path(config.anchor_features).resolve()),  # type: ignore[arg-type]
                        "labels": str(Path(config.anchor_labels).resolve()), "num_anchors": len(anchor_labels)},  # type: ignore[arg-type]
            "num_anchors": len(anchor_labels), "skipped": [], "resumed": False, "image_size": None, "channels": None,
            "temperatures": result.info.get("temperatures", []), "rounds": result.info.get("rounds", []),
            "evidence": {"mode": "features", "encoder": "given", "feature_file": str(Path(config.features).resolve()),  # type: ignore[arg-type]
                         "feature_shape": list(features.shape), "processes": process_group()[1]},
            "timings": facts["timings"], "stages": facts["stages"]}
    return rows, result, info


def _run_in_memory(config: RefineRunConfig, dataset: LabeledImages, out: Path, cache: Path
                   ) -> Tuple[LabeledImages, RefinementResult, Dict[str, Any]]:
    """``train`` / ``classifier`` evidence: the images decoded into memory (one process)."""
    dataset, skipped = decode_dataset(config, dataset)
    directory, anchor_info = anchor_dir(config, dataset.class_names, out)
    anchors, extra = load_anchors(directory, dataset, decode=True)
    t0 = time.time()
    with checkpoint_folder(cache / "checkpoints"):  # a killed training resumes at its last epoch
        result, info = _score(config, dataset, anchors, cache)
    clear_checkpoints(cache / "checkpoints")
    assert dataset.images is not None
    info.update(anchors={**anchor_info, "num_anchors": len(anchors), "ignored_anchor_classes": extra},
                num_anchors=len(anchors), skipped=skipped, image_size=list(dataset.images.shape[1:3]),
                channels=int(dataset.images.shape[-1]),
                evidence={"mode": config.evidence_mode, "features": config.space},
                timings={"evidence_and_refine": round(time.time() - t0, 3)})
    return dataset, result, info


def run_refine(config: RefineRunConfig, *, out: Path) -> Optional[Dict[str, Any]]:
    """Run ``synref refine``; write the results folder ``out``; return the summary dict.

    Under ``accelerate launch`` (or torchrun) with pretrained evidence every process extracts
    its share of the feature chunks and process 0 refines and writes the results; the other
    processes return None."""
    out = Path(out)
    check_output_dir(out)
    if str(config.data).strip():
        check_not_inside(out, config.data)
    check_results_folder(out, anchors=config.anchors, generated=config.generator is not None)
    started = time.time()
    rank, world, device, barrier, state = distributed_context(None)
    try:
        with output_lock(out) if rank == 0 else contextlib.nullcontext():  # one run writes into OUT
            return _run_refine_locked(config, out, started, rank=rank, world=world, device=device, barrier=barrier)
    finally:
        release_distributed(state)


def _run_refine_locked(config: RefineRunConfig, out: Path, started: float, *, rank: int, world: int,
                       device: Optional[str], barrier: Optional[Callable[[], Any]]) -> Optional[Dict[str, Any]]:
    """:func:`run_refine` with the results folder's lock held (by process 0)."""
    remove_stale_temp_files(out)
    if rank == 0:
        replaced_results_notice(out, config)
    if world > 1 and config.evidence_mode not in ("pretrained", "features"):
        raise InputError(f"--{'train' if config.evidence_mode == 'train' else 'classifier'} runs in one process; a multi-process "
                         "launch splits the pretrained encoder's features (leave out --train / --classifier)")
    cache = out / "cache"
    if config.evidence_mode == "features":
        done_features = _run_given_features(config, out, rank=rank)
        if done_features is None:
            return None
        rows, result, info = done_features
        return _write_results(config, rows, result, info, out, started)
    dataset = load_data(config)
    if config.evidence_mode == "pretrained":
        done = _run_pretrained(config, dataset, out, cache, rank=rank, world=world, barrier=barrier,
                               device=device)
        if done is None:
            return None
        dataset, result, info = done
    else:
        dataset, result, info = _run_in_memory(config, dataset, out, cache)
    return _write_results(config, dataset, result, info, out, started)


def _write_results(config: RefineRunConfig, dataset: Any, result: RefinementResult,
                   info: Dict[str, Any], out: Path, started: float) -> Dict[str, Any]:
    num_classes = dataset.num_classes
    changed = result.changed
    transitions = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(transitions, (result.labels[changed], result.refined_labels[changed]), 1)
    temperatures = info.get("temperatures") or []
    image_size = info.get("image_size")
    channels = info.get("channels")
    if image_size is None and getattr(dataset, "images", None) is not None:
        image_size, channels = list(dataset.images.shape[1:3]), int(dataset.images.shape[-1])
    summary: Dict[str, Any] = {
        "data": str(config.data), "split": config.split, "labels_file": config.labels,
        "num_samples": len(dataset), "num_classes": num_classes, "class_names": dataset.class_names,
        "image_size": image_size, "channels": channels, "path_backed": dataset.is_path_backed,
        "anchors": info["anchors"], "num_anchors": info["num_anchors"], "features": config.space,
        "evidence": info.get("evidence"), "classifier": info.get("classifier"), "refiner": config.refiner.name,
        "refiner_options": _refiner(config).options.to_dict(),
        # the score rule's alpha / threshold (None when no score rule decided: the posterior)
        "alpha": result.alpha, "threshold": result.threshold,
        "temperature": float(np.mean(temperatures)) if temperatures else None,
        "num_changed": int(changed.sum()),
        # how the changes were decided: what decided, the model check, estimated precision, graph
        "decision": result.decision.to_dict(),
        "counts_before": np.bincount(result.labels, minlength=num_classes).tolist(),
        "counts_after": np.bincount(result.refined_labels, minlength=num_classes).tolist(),
        "transitions": transitions.tolist(), "skipped": info.get("skipped", []), "rounds": info.get("rounds", []),
        "resumed": bool(info.get("resumed", False)), "timings": info.get("timings", {}),
        # the kNN graph the refiner built (exact or approximate, with its measured recall) and
        # each stage's wall time, peak RSS and feature bytes read
        "neighbor_graph": result.decision.neighbor_graph, "stages": info.get("stages", []),
        "synref_version": __version__,
    }
    write_npy(out / "scores.npy", result.scores)
    _write_csv(out / "refined_labels.csv", dataset, result)
    config.save(out / "config.json")
    summary["seconds"] = round(time.time() - started, 2)
    write_json(out / "summary.json", summary)
    write_report(out)
    write_review(out, workers=max(int(config.workers), 1))
    return summary


def format_refine_summary(summary: Dict[str, Any], out: Path) -> str:
    evidence = summary.get("evidence") or {}
    where = f" on {evidence['processes']} processes" if evidence.get("processes", 1) > 1 else ""
    decision = Decision.from_dict(summary["decision"])
    rule = "" if decision.rule is None else f", threshold {decision.rule.threshold:.3g}"
    lines = [f"{summary['num_changed']} of {summary['num_samples']} labels changed "
             f"({100 * summary['num_changed'] / max(summary['num_samples'], 1):.1f} %), "
             f"encoder {summary['features']}{where}, refiner {summary['refiner']}, "
             f"decided by {decision.decided_by}{rule}"]
    if not decision.model_check_passed:
        lines.append(f"model check {decision.model_check}")
    if decision.minimum_evidence != "met":
        lines.append(decision.minimum_evidence)
    if summary["skipped"]:
        lines.append(f"skipped {len(summary['skipped'])} files (unreadable images, special, hidden or non-image "
                     f"files, linked folders; listed in summary.json)")
    lines.append(f"wrote {out / 'refined_labels.csv'}, {out / 'summary.json'}, {out / 'report.html'}, "
                 f"{out / 'review.html'} in {summary['seconds']:.1f} s")
    return "\n".join(lines)
