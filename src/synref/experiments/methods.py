"""The methods an experiment runs (the rows of its tables), one registry.

Training methods give a test accuracy: ``standard`` (train on the noisy labels), ``ours``
(fine-tune the Standard model on the refined labels), ``control`` (the same fine-tuning on the
noisy labels: what the extra training alone adds), ``plc`` / ``plc+ours`` (PLC on the noisy /
refined labels), ``lra-<encoder>`` / ``lra-<encoder>+ours`` (LRA-diffusion conditioned on a
frozen, label-free encoder). Correction methods give label-correction metrics on the shared
out-of-sample evidence: ``given`` (no correction), ``argmax`` (argmax of ``pred_probs``),
``prototype`` (nearest anchor prototype), ``cleanlab`` (cleanlab's ``find_label_issues`` +
argmax), ``refine-<refiner>`` (a :data:`~synref.refiners.REFINERS`
entry, one round).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..evidence import Evidence
from ..features import label_free_extractors
from ..models import create_model, evaluate_accuracy
from ..pipeline import RefinerSpec, build_refiner
from ..refiners import REFINERS, refine, refiner_option_names
from ..refiners.confident import confident_learning_correction
from ..registry import Registry
from ..train import fine_tune, fit, predict_lra, train_lra, train_plc

if TYPE_CHECKING:  # the runner imports this module
    from .runner import NoiseRun, Runner

__all__ = ["METHODS", "Method", "create_method", "method_base", "parse_methods", "BASE_METHODS",
           "correction_row", "COMPARE_COLUMNS", "method_names", "method_title", "row_refiner"]

#: the paper's rows before the LRA ones, in table order.
BASE_METHODS = ("standard", "ours", "plc", "plc+ours")
#: the columns of a correction row (plus ``method``).
COMPARE_COLUMNS = ("label_acc_after_correction", "flagged", "flagged_precision", "flagged_recall", "fix_precision",
                   "seconds")

#: ``correct(evidence, refiner) -> (row title, corrected labels (N,), flagged (N,) bool)``: a
#: correction on the evidence alone (``refiner``: the spec of a ``refine-<refiner>`` row).
Corrector = Callable[[Evidence, Optional[RefinerSpec]], Tuple[str, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Method:
    """One row of a table. ``kind``: ``train`` (a test accuracy) or ``correct`` (correction
    metrics). ``refined``: trains on the refined labels (a ``+ ours`` row). ``title``: its name
    in the results tables. ``correct``: a correction row's correction on the evidence alone
    (what ``synref compare``'s rows over arrays run too)."""

    name: str
    kind: str
    refined: bool
    run: Callable[["Runner", "NoiseRun"], Dict[str, Any]]
    title: str
    correct: Optional[Corrector] = None


METHODS: Registry[Method] = Registry("method")


# ------------------------------------------------------------------------------ training rows
def _train_row(runner: "Runner", run: "NoiseRun", method: str, refined: bool) -> Dict[str, Any]:
    d = runner.data
    labels = run.refined() if refined else run.noisy()
    return {"dataset": runner.dataset, "protocol": runner.protocol.name, "method": method, "noise": run.noise,
            "seed": run.seed, "label_acc": float(np.mean(labels == d.train.labels)), "noise_rate": run.noise_rate,
            "anchors": d.anchor_source}


def _finish(row: Dict[str, Any], res: Any, test_acc: float, t0: float, run: "NoiseRun",
            refined: bool) -> Dict[str, Any]:
    row.update(val_acc=res.best_val_acc, best_epoch=res.best_epoch)
    row["test_acc"] = float(test_acc)
    row["seconds"] = round(time.time() - t0, 2)
    row["refine_seconds"] = round(float(run.refine_seconds or 0.0), 2) if refined else None
    if refined and run.refine_info.get("evidence"):  # the refined labels came from fine-tuned evidence
        row["evidence"] = run.refine_info["evidence"]
    return row


@METHODS.register("standard")
def _standard() -> Method:
    def run_(runner: "Runner", run: "NoiseRun") -> Dict[str, Any]:
        p, d, seed = runner.protocol, runner.data, run.seed
        row = _train_row(runner, run, "standard", False)
        t0 = time.time()
        shared = run.shared_standard()
        if shared is not None:  # the same training, done for another protocol in this process
            model, meta = shared
            run.set_standard(model, meta)
        else:
            model = create_model(p.model, num_classes=d.num_classes, in_channels=d.train.images.shape[-1], seed=seed)
            res = fit(model, d.train.images, run.noisy(), val_images=d.val.images, val_labels=d.val.labels,
                      config=runner.train_config(p.standard, seed), desc="standard")
            model, meta = res.model, {"val_acc": res.best_val_acc, "best_epoch": res.best_epoch}
            run.set_standard(model, meta)
        row.update(meta)
        row["test_acc"] = float(evaluate_accuracy(model, d.test.images, d.test.labels))
        row["seconds"] = round(time.time() - t0, 2)
        row["refine_seconds"] = None
        return row

    return Method("standard", "train", False, run_, "Standard")


def row_labels(run: "NoiseRun", refined: bool) -> np.ndarray:
    """The labels a row trains on: the refined ones (a ``+ ours`` row) or the noisy ones."""
    return run.refined() if refined else run.noisy()


#: ``train(runner, run, labels) -> (result with best_val_acc / best_epoch, test accuracy, extra row fields)``.
Trainer = Callable[["Runner", "NoiseRun", np.ndarray], Tuple[Any, float, Dict[str, Any]]]


def _trained(name: str, title: str, refined: bool, train: Trainer) -> Method:
    """A training row: ``train`` on the row's labels, timed on its own (shared steps excluded)."""
    def run_(runner: "Runner", run: "NoiseRun") -> Dict[str, Any]:
        row = _train_row(runner, run, name, refined)
        labels = row_labels(run, refined)
        t0 = time.time()
        res, test_acc, extra = train(runner, run, labels)
        if "t0" in extra:  # the trainer's own start (after the shared steps it needed)
            t0 = extra.pop("t0")
        row = _finish(row, res, test_acc, t0, run, refined)
        row.update(extra)
        return row

    return Method(name, "train", refined, run_, title)


def _finetune_standard(runner: "Runner", run: "NoiseRun", labels: np.ndarray) -> Tuple[Any, float, Dict[str, Any]]:
    """Fine-tune the Standard model (the paper's "+ Ours" step; ``control`` on the noisy labels)."""
    p, d = runner.protocol, runner.data
    standard = run.standard_model()
    t0 = time.time()  # the Standard model is the standard cell's cost
    res = fine_tune(standard, d.train.images, labels, val_images=d.val.images, val_labels=d.val.labels,
                    config=runner.train_config(p.finetune, run.seed), desc="fine-tune")
    return res, evaluate_accuracy(res.model, d.test.images, d.test.labels), {"t0": t0}


def _plc_train(runner: "Runner", run: "NoiseRun", labels: np.ndarray) -> Tuple[Any, float, Dict[str, Any]]:
    """PLC from scratch on ``labels``."""
    p, d, seed = runner.protocol, runner.data, run.seed
    model = create_model(p.model, num_classes=d.num_classes, in_channels=d.train.images.shape[-1], seed=seed)
    config = replace(p.plc, train=runner.train_config(p.plc.train, seed))
    res = train_plc(model, d.train.images, labels, val_images=d.val.images, val_labels=d.val.labels, config=config,
                    true_labels=d.train.labels, desc="plc")
    return (res, evaluate_accuracy(res.model, d.test.images, d.test.labels),
            {"corrected_label_acc": float(np.mean(res.corrected_labels == d.train.labels))})


METHODS.register("ours")(lambda: _trained("ours", "Ours (re-labeled)", True, _finetune_standard))
METHODS.register("control")(lambda: _trained("control", "Control (fine-tuned on the noisy labels)", False,
                                             _finetune_standard))
METHODS.register("plc")(lambda: _trained("plc", "PLC", False, _plc_train))
METHODS.register("plc+ours")(lambda: _trained("plc+ours", "PLC + Ours", True, _plc_train))

#: how the LRA rows name their encoders.
_ENCODER_TITLES = {"simclr": "SimCLR", "ssl": "SimCLR", "clip": "CLIP", "efficientnet-lite0": "EfficientNet-Lite0"}


@METHODS.register("lra")
def _lra(encoder: str, refined: bool = False) -> Method:
    """``lra-<encoder>`` (``+ours``: on the refined labels): LRA-diffusion on the frozen encoder."""
    def train(runner: "Runner", run: "NoiseRun", labels: np.ndarray) -> Tuple[Any, float, Dict[str, Any]]:
        p, d, seed = runner.protocol, runner.data, run.seed
        feats = runner.features(encoder, seed)
        t0 = time.time()  # encoder features are shared by every cell (listed separately)
        config = replace(p.lra, seed=seed, device=runner.device or p.lra.device)
        res = train_lra(feats["train"], labels, num_classes=d.num_classes, config=config,
                        val_features=feats["val"], val_labels=d.val.labels)
        return res, float(np.mean(predict_lra(res.model, feats["test"]) == d.test.labels)), {"t0": t0}

    title = f"LRA ({_ENCODER_TITLES.get(encoder, encoder)})" + (" + Ours" if refined else "")
    return _trained(f"lra-{encoder}" + ("+ours" if refined else ""), title, refined, train)


# ------------------------------------------------------------------------------ correction rows
def correction_row(method: str, labels_noisy: np.ndarray, true_labels: np.ndarray, corrected: np.ndarray,
                   flagged: np.ndarray, seconds: float) -> Dict[str, Any]:
    """One correction row.

    label_acc_after_correction: mean(corrected == true);
    flagged: number of flagged samples;
    flagged_precision: of the flagged samples, the fraction whose given label was wrong;
    flagged_recall: of the wrong given labels, the fraction flagged;
    fix_precision: of the flagged samples, the fraction whose corrected label is the true one.
    Precisions are 0 when nothing is flagged; recall is 0 when no label is wrong.
    """
    noisy = np.asarray(labels_noisy)
    true = np.asarray(true_labels)
    corrected = np.asarray(corrected)
    flagged = np.asarray(flagged, dtype=bool)
    if not (noisy.shape == true.shape == corrected.shape == flagged.shape):
        raise InputError(f"arrays differ in length: {noisy.shape}, {true.shape}, {corrected.shape}, {flagged.shape}")
    wrong = noisy != true
    n_flagged = int(flagged.sum())
    return {
        "method": method,
        "label_acc_after_correction": float(np.mean(corrected == true)) if len(true) else 0.0,
        "flagged": n_flagged,
        "flagged_precision": float(np.mean(wrong[flagged])) if n_flagged else 0.0,
        "flagged_recall": float(np.mean(flagged[wrong])) if wrong.any() else 0.0,
        "fix_precision": float(np.mean(corrected[flagged] == true[flagged])) if n_flagged else 0.0,
        "seconds": float(seconds),
    }


def refiner_row_name(spec: RefinerSpec) -> str:
    """The table name of a ``refine-<refiner>`` row."""
    if spec.name == "paper":
        return f"synref paper rule (alpha {spec.value('alpha'):g}, thr {spec.value('threshold'):g})"
    if spec.name == "crossfit":
        return "synref calibrated similarity"
    return f"synref {spec.name}"


def row_refiner(refiner: str, protocol_refiner: Optional[RefinerSpec]) -> RefinerSpec:
    """The spec of a ``refine-<refiner>`` row: the protocol's own when it names that refiner
    (its options), else the refiner's defaults."""
    if protocol_refiner is not None and protocol_refiner.name == REFINERS.canonical(refiner):
        return protocol_refiner
    return RefinerSpec(refiner)


def _correction_cell(runner: "Runner", run: "NoiseRun", name: str, row: Dict[str, Any],
                     corrected: np.ndarray) -> Dict[str, Any]:
    """A correction cell: the metrics of :func:`correction_row`, ``label_acc`` (= accuracy after
    correction) and, on a user dataset with a clean test split, ``test_acc`` of a linear probe
    trained on the corrected labels (:meth:`~synref.experiments.runner.Runner.probe_accuracy`)."""
    test_acc = runner.probe_accuracy(corrected, run.seed)
    return {"dataset": runner.dataset, "protocol": runner.protocol.name, "method": name, "noise": run.noise,
            "seed": run.seed, "noise_rate": run.noise_rate, "anchors": runner.data.anchor_source,
            **{k: v for k, v in row.items() if k != "method"}, "title": row["method"],
            "label_acc": row["label_acc_after_correction"], "test_acc": test_acc,
            "evidence_seconds": None if run.evidence_seconds is None else round(run.evidence_seconds, 2),
            **({"evidence": run.evidence_info} if run.evidence_info else {})}


def _correction(name: str, title: str, correct: Corrector, refiner: Optional[str] = None) -> Method:
    """A correction row on the shared out-of-sample evidence (built, its ``pred_probs`` included,
    before the clock starts: ``seconds`` is the correction's own time, the evidence's is
    ``evidence_seconds``, shared by the rows of one noise setting and seed)."""
    def run_(runner: "Runner", run: "NoiseRun") -> Dict[str, Any]:
        evidence = run.shared_evidence()
        spec = None if refiner is None else row_refiner(refiner, runner.protocol.refiner)
        t0 = time.perf_counter()
        row_title, corrected, flagged = correct(evidence, spec)
        row = correction_row(row_title, run.noisy(), runner.data.train.labels, corrected, flagged,
                             time.perf_counter() - t0)
        return _correction_cell(runner, run, name, row, corrected)

    return Method(name, "correct", False, run_, title, correct)


def _given_correction(evidence: Evidence, refiner: Optional[RefinerSpec]) -> Tuple[str, np.ndarray, np.ndarray]:
    return "given labels (no correction)", evidence.labels, np.zeros(len(evidence.labels), bool)


def _cleanlab_correction(evidence: Evidence, refiner: Optional[RefinerSpec]) -> Tuple[str, np.ndarray, np.ndarray]:
    corrected, flagged = confident_learning_correction(evidence.labels, evidence.resolve_pred_probs())
    return "cleanlab find_label_issues + argmax", corrected, flagged


def _argmax_correction(evidence: Evidence, refiner: Optional[RefinerSpec]) -> Tuple[str, np.ndarray, np.ndarray]:
    corrected = np.asarray(evidence.resolve_pred_probs()).argmax(axis=1)
    return "argmax of pred_probs", corrected, corrected != evidence.labels


def _prototype_correction(evidence: Evidence, refiner: Optional[RefinerSpec]) -> Tuple[str, np.ndarray, np.ndarray]:
    best = refine(evidence, "paper", alpha=1.0, threshold=0.0, keep_scores=False).best_class
    return "nearest anchor prototype", best, best != evidence.labels


METHODS.register("given")(lambda: _correction("given", "Given labels", _given_correction))
METHODS.register("cleanlab")(lambda: _correction("cleanlab", "cleanlab", _cleanlab_correction))
METHODS.register("argmax")(lambda: _correction("argmax", "argmax of pred_probs", _argmax_correction))
METHODS.register("prototype")(lambda: _correction("prototype", "Nearest anchor prototype", _prototype_correction))


@METHODS.register("refine")
def _refine(refiner: str) -> Method:
    """``refine-<refiner>``: the refiner, one round, on the shared out-of-sample evidence (the
    protocol's options when the protocol refines with it)."""
    name = REFINERS.canonical(refiner)

    def correct(evidence: Evidence, spec: Optional[RefinerSpec]) -> Tuple[str, np.ndarray, np.ndarray]:
        spec = spec if spec is not None else RefinerSpec(name)
        one_round = {"rounds": 1} if "rounds" in refiner_option_names(name) else {}
        result = refine(evidence, build_refiner(spec, keep_scores=False, **one_round))
        return refiner_row_name(spec), result.refined_labels, result.changed

    return _correction(f"refine-{name}", f"Refined ({name})", correct, refiner=name)


def method_title(method: str) -> str:
    """The results tables' name of ``method`` (its own title: ``argmax of pred_probs``,
    ``LRA (SimCLR) + Ours``, ...)."""
    try:
        return create_method(method).title
    except InputError:
        return method


# ------------------------------------------------------------------------------ names
def create_method(name: str) -> Method:
    """The method named ``name`` (``standard``, ``ours``, ``lra-simclr+ours``, ``refine-paper``, ...)."""
    if name in ("lra", "refine"):
        raise InputError(f"unknown method {name!r}: name the encoder or refiner (lra-<encoder>, refine-<refiner>)")
    if name.startswith("lra-"):
        base = name[:-len("+ours")] if name.endswith("+ours") else name
        encoder = base[4:]
        if encoder not in label_free_extractors():
            raise InputError(f"unknown method {name!r}: lra-<encoder> needs a label-free encoder, one of: "
                             f"{', '.join(label_free_extractors())}")
        return METHODS.create("lra", encoder=encoder, refined=name.endswith("+ours"))
    if name.startswith("refine-"):
        return METHODS.create("refine", refiner=name[len("refine-"):])
    return METHODS.create(name)


def method_names() -> List[str]:
    """Every method name a user may give."""
    fixed = [m for m in METHODS.names() if m not in ("lra", "refine")]
    return (fixed + [f"lra-{e}{s}" for e in label_free_extractors() for s in ("", "+ours")]
            + [f"refine-{r}" for r in REFINERS.names()])


def method_base(method: str) -> Optional[str]:
    """The row a ``+ ours`` method is compared with (``ours`` -> ``standard``); None otherwise."""
    if method == "ours":
        return "standard"
    if method.endswith("+ours"):
        return method[:-len("+ours")]
    return None


def parse_methods(text: Optional[str], encoders: Sequence[str]) -> List[str]:
    """``"standard,ours,lra-simclr"`` -> methods in table order (None: the protocol's default
    rows: :data:`BASE_METHODS` and ``lra-<encoder>[+ours]`` for ``encoders``)."""
    default = list(BASE_METHODS) + [m for e in encoders for m in (f"lra-{e}", f"lra-{e}+ours")]
    if text is None:
        return default
    chosen = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not chosen:
        raise InputError("--methods: no method given")
    for method in chosen:
        try:
            create_method(method)
        except InputError:
            raise InputError(f"unknown method {method!r} in --methods; choose from standard, ours, control, plc, "
                             f"plc+ours, lra-<encoder>[+ours] with encoder one of: "
                             f"{', '.join(label_free_extractors())}, given, argmax, prototype, cleanlab, "
                             f"refine-<refiner> with refiner one of: {', '.join(REFINERS.names())}") from None
    order = {m: i for i, m in enumerate(default)}
    return sorted(dict.fromkeys(chosen), key=lambda m: (order.get(m, len(order)), m))
