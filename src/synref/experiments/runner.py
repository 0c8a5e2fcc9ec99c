"""The one resumable experiment runner: a grid of methods x noise settings x seeds under a
protocol, each finished cell saved at once.

``synref demo``, ``synref compare`` and ``synref bench`` are calls of :func:`run_experiment`.
With an ``out`` folder every finished cell is written to ``out/cells/<cell>.json`` and the
expensive shared steps of each (noise setting, seed) -- the noisy labels, the Standard model,
the refined labels, the encoder features -- are cached under ``out/work/<dataset>-<protocol>/``,
so a killed run re-run with the same arguments resumes at the first missing cell. Without
``out`` everything stays in memory.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..arrays import l2_normalize
from ..evidence import Evidence
from ..errors import InputError
from ..features import ExtractorContext, encode_sets, extractor_from_context
from ..hashing import digest, sha256_file
from ..io import check_output_dir, remove_stale_temp_files, write_json, write_npy
from ..models import load_classifier, save_classifier
from ..noise import format_noise_spec, parse_noise_spec
from ..progress import progress as progress_bar
from ..pipeline import build_evidence, build_refiner
from ..refiners import RefinementResult, refine
from ..train import TrainConfig, checkpoint_folder, clear_checkpoints
from ..tuned_evidence import finetune_config, finetuned_evidence
from .methods import create_method
from .protocol import Protocol
from .recipes import (GIVEN, NOISE_SETTINGS, ExperimentData, load_experiment_data, load_user_data,
                      noise_files as find_noise_files, noisy_labels)
from .results import cell_name, read_cells, safe_name, write_all

__all__ = ["run_experiment", "Experiment", "Runner", "NoiseRun", "SharedSteps", "parse_noise_settings",
           "find_noise_files"]


@dataclasses.dataclass
class SharedSteps:
    """Data, noisy labels and Standard models shared by runs of several protocols in one process
    (the demo's two rows), keyed by what produced them."""

    data: Dict[str, ExperimentData] = dataclasses.field(default_factory=dict)
    noisy: Dict[str, Tuple[np.ndarray, Dict[str, Any]]] = dataclasses.field(default_factory=dict)
    standard: Dict[str, Tuple[Any, Dict[str, Any]]] = dataclasses.field(default_factory=dict)


def parse_noise_settings(text: Optional[str], default: Sequence[str] = NOISE_SETTINGS) -> List[str]:
    """``"pmd-0.35,pmd-0.7"`` -> normalised settings (None: ``default``)."""
    if text is None:
        return list(default)
    settings = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        setting = GIVEN if part.lower() == GIVEN else format_noise_spec(parse_noise_spec(part))
        if setting not in settings:
            settings.append(setting)
    if not settings:
        raise InputError("--noise: no noise setting given")
    return settings


class NoiseRun:
    """The shared, cached steps of one (noise setting, seed): noisy labels, the Standard model,
    the out-of-sample evidence and the refined labels."""

    def __init__(self, runner: "Runner", noise: str, seed: int) -> None:
        self.runner, self.noise, self.seed = runner, noise, seed
        self.dir = None if runner.work is None else runner.work / f"seed{seed}" / safe_name(noise)
        self._noisy: Optional[np.ndarray] = None
        self.noise_info: Dict[str, Any] = {}
        self._standard = None
        self._evidence: Optional[Evidence] = None
        #: wall time (s) of building the evidence (and its pred_probs, once asked for) in this process
        self.evidence_seconds: Optional[float] = None
        #: fine-tuned evidence: ``{"tuning": "finetune", "finetune": facts}`` (what every row that
        #: reads the evidence records); empty for frozen evidence
        self.evidence_info: Dict[str, Any] = {}
        self._refined: Optional[np.ndarray] = None
        self.refine_info: Dict[str, Any] = {}
        self.refine_seconds: Optional[float] = None

    # -- keys of what produced a step (shared across protocols of one process) --------------
    def _noisy_key(self) -> str:
        r, p = self.runner, self.runner.protocol
        source = str(r.noise_files.get(self.noise, ""))
        return digest(r.data.key, self.noise, self.seed, source, p.eta_model, None if p.eta is None else
                      p.eta.to_dict(), p.pmd_type)

    def _standard_key(self) -> str:
        p = self.runner.protocol
        return digest(self._noisy_key(), p.model, p.standard.to_dict(), self.runner.device)

    # -- steps ------------------------------------------------------------------------------
    def noisy(self) -> np.ndarray:
        if self._noisy is None:
            r = self.runner
            cached = None if self.dir is None else (self.dir / "noisy.npy", self.dir / "noisy.json")
            if cached is not None and cached[0].is_file() and cached[1].is_file():
                self._noisy = np.load(cached[0])
                self.noise_info = json.loads(cached[1].read_text())
            else:
                key = self._noisy_key()
                if key in r.shared.noisy:
                    self._noisy, self.noise_info = r.shared.noisy[key]
                else:
                    self._noisy, self.noise_info = noisy_labels(self.noise, r.noise_files, r.data, r.protocol,
                                                                self.seed)
                    self.noise_info["noise_rate"] = float(np.mean(self._noisy != r.data.train.labels))
                    r.shared.noisy[key] = (self._noisy, self.noise_info)
                if cached is not None:
                    write_npy(cached[0], self._noisy)
                    write_json(cached[1], self.noise_info)
        return self._noisy

    @property
    def noise_rate(self) -> float:
        self.noisy()
        return float(self.noise_info["noise_rate"])

    def standard_model(self):
        """The Standard model (trained by the ``standard`` cell, or now; cached)."""
        if self._standard is None:
            path = None if self.dir is None else self.dir / "standard.pt"
            if path is not None and path.is_file():
                self._standard = load_classifier(path)
            elif self.shared_standard() is not None:
                self.set_standard(*self.shared_standard())  # type: ignore[misc]
            else:
                self.runner.run_cell("standard", self)
                assert self._standard is not None
        return self._standard

    def shared_standard(self) -> Optional[Tuple[Any, Dict[str, Any]]]:
        """``(model, {"val_acc", "best_epoch"})`` of the same Standard training done for another
        protocol in this process, or None."""
        return self.runner.shared.standard.get(self._standard_key())

    def set_standard(self, model, meta: Dict[str, Any]) -> None:
        if self.dir is not None:
            save_classifier(model, self.dir / "standard.pt", name=self.runner.protocol.model)
        self.runner.shared.standard[self._standard_key()] = (model, meta)
        self._standard = model

    def evidence(self) -> Evidence:
        """The out-of-sample evidence of the protocol's refinement (round 0; in memory)."""
        if self._evidence is None:
            t0 = time.perf_counter()
            self._evidence, self.evidence_info = self.runner.evidence(self)
            self.evidence_seconds = time.perf_counter() - t0
        return self._evidence

    def shared_evidence(self) -> Evidence:
        """:meth:`evidence` with its ``pred_probs`` computed (when it has them): what the
        correction rows share, built before any of them is timed (``evidence_seconds``)."""
        evidence = self.evidence()
        if evidence.pred_probs is None and evidence.has_pred_probs:
            t0 = time.perf_counter()
            evidence.resolve_pred_probs()
            self.evidence_seconds = (self.evidence_seconds or 0.0) + time.perf_counter() - t0
        return evidence

    def refined(self) -> np.ndarray:
        if self._refined is None:
            cached = None if self.dir is None else (self.dir / "refined.npy", self.dir / "refined.json")
            if cached is not None and cached[0].is_file() and cached[1].is_file():
                self._refined = np.load(cached[0])
                self.refine_info = json.loads(cached[1].read_text())
                self.refine_seconds = float(self.refine_info["seconds"])
            else:
                r, p = self.runner, self.runner.protocol
                if p.refine == "synref" and p.evidence.frozen_encoder:
                    r.features(p.evidence.encoder, self.seed, sets=("train", "anchors"))  # shared encoder time, counted apart
                t0 = time.time()
                self._refined, info = r.refine(self)
                self.refine_seconds = time.time() - t0
                info.update(seconds=self.refine_seconds,
                            label_acc=float(np.mean(self._refined == r.data.train.labels)),
                            num_changed=int(np.sum(self._refined != self.noisy())))
                self.refine_info = info
                if cached is not None:
                    write_npy(cached[0], self._refined)
                    write_json(cached[1], info)
        return self._refined


class Runner:
    """The cells of one dataset + protocol on one seed's data (see :func:`run_experiment`)."""

    def __init__(self, dataset: str, protocol: Protocol, data: ExperimentData, out: Optional[Path],
                 noise_files: Dict[str, Path], *, device: Optional[str] = None, clip_model: Optional[str] = None,
                 shared: Optional[SharedSteps] = None) -> None:
        self.dataset, self.protocol, self.data, self.out = dataset, protocol, data, out
        self.noise_files, self.device, self.clip_model = noise_files, device, clip_model
        self.shared = shared if shared is not None else SharedSteps()
        self.work = None if out is None else out / "work" / f"{dataset}-{protocol.name}"
        self._features: Dict[Tuple[str, int], Dict[str, np.ndarray]] = {}

    # -- shared pieces ---------------------------------------------------------------------
    def train_config(self, config: TrainConfig, seed: int) -> TrainConfig:
        return dataclasses.replace(config, seed=seed, device=self.device or config.device)

    def features(self, encoder: str, seed: int,
                 sets: Sequence[str] = ("train", "val", "test", "anchors")) -> Dict[str, np.ndarray]:
        """L2-normalised features of ``sets`` (of train / val / test / anchors) in ``encoder``'s
        space (cached; a set is encoded only when first asked for)."""
        memo = self._features.setdefault((encoder, seed), {})
        missing = [name for name in sets if name not in memo]
        if missing:
            t0 = time.time()
            p = self.protocol
            extractor = extractor_from_context(encoder, ExtractorContext(
                images=self.data.train.images, ssl_config=dataclasses.replace(p.ssl, seed=seed), ssl_model=p.ssl_model,
                size=p.encoder_size, clip_model=self.clip_model, device=self.device))
            d = self.data
            # path-backed splits (a user dataset) are streamed from their files; empty ones are left out
            parts = {"train": d.train, "val": d.val, "test": d.test, "anchors": d.anchors}
            todo = {name: (parts[name].images if parts[name].images is not None else parts[name])
                    for name in missing if len(parts[name])}
            if self.work is None:
                memo.update({name: l2_normalize(extractor.extract(imgs)) for name, imgs in todo.items()})
            else:
                cache = self.work / "features"
                memo.update(encode_sets(extractor, todo, cache_dir=cache, key_prefix=self.data.key,
                                        size=extractor.input_side or p.encoder_size, num_workers=2))
                timing = cache / f"{safe_name(encoder)}-seed{seed}.seconds.json"
                seconds = round(time.time() - t0, 2)
                if timing.is_file():  # the computing runs' wall time, summed over the sets they encoded
                    done = json.loads(timing.read_text())
                    if set(missing) - set(done.get("sets", [])):
                        write_json(timing, {**done, "sets": sorted(set(done.get("sets", [])) | set(missing)),
                                            "seconds": round(float(done["seconds"]) + seconds, 2)})
                else:
                    write_json(timing, {"encoder": encoder, "seed": seed, "sets": sorted(missing), "seconds": seconds})
        return {name: memo[name] for name in sets if name in memo}

    def evidence(self, run: NoiseRun) -> Tuple[Evidence, Dict[str, Any]]:
        """Round-0 evidence of ``run``'s noisy labels (:func:`~synref.pipeline.build_evidence` of
        the protocol's evidence: the Standard model's own for the paper's recipe, else
        cross-fitted; a frozen encoder's features come from this runner's cache) and, for
        fine-tuned evidence, its facts (else ``{}``).

        Fine-tuned evidence (``evidence.tuning`` ``finetune``): the protocol's refiner runs on the
        frozen evidence, then :func:`~synref.tuned_evidence.finetuned_evidence` fine-tunes over
        it (kept in the noise run's folder: a re-run loads it, other options train anew)."""
        p, d = self.protocol, self.data
        spec = p.evidence_spec()
        fixed = None
        if spec.source == "crossfit" and spec.frozen_encoder:
            feats = self.features(spec.encoder, run.seed, sets=("train", "anchors"))
            fixed = (feats["train"], feats["anchors"])
        evidence = build_evidence(spec, d.train, d.anchors, seed=run.seed, labels=run.noisy(), features=fixed,
                                  classifier=run.standard_model() if spec.source == "classifier" else None,
                                  val=d.val, device=self.device)
        if spec.tuning != "finetune":
            return evidence, {}
        assert fixed is not None and p.finetune_evidence is not None  # Protocol checks both
        frozen = refine(evidence, build_refiner(p.refiner))
        config = finetune_config(p.finetune_evidence, folds=spec.folds, seed=run.seed, device=self.device)
        tuned, facts = finetuned_evidence(frozen, d.train, d.anchors, fixed[0], fixed[1], config, run.dir,
                                          space=spec.encoder, what=f"--dataset {self.dataset}")
        return tuned, {"tuning": "finetune", "finetune": facts["finetune"]}

    def probe_accuracy(self, labels: np.ndarray, seed: int) -> Optional[float]:
        """Test accuracy of a linear head fitted on the training features with ``labels``: how
        good a classifier the labels give (user datasets with a clean test split; else None)."""
        p, d = self.protocol, self.data
        if d.given is None or not p.evidence.frozen_encoder or len(d.test) == 0:
            return None
        import torch

        from ..train import fit_linear_head

        feats = self.features(p.evidence.encoder, seed)
        head = fit_linear_head(feats["train"], labels, d.num_classes)
        with torch.no_grad():
            predicted = head(torch.as_tensor(np.ascontiguousarray(feats["test"]))).argmax(1).numpy()
        return float(np.mean(predicted == d.test.labels))

    def refine(self, run: NoiseRun) -> Tuple[np.ndarray, Dict[str, Any]]:
        """Refined labels of ``run``'s noisy labels with the protocol's recipe, and what was done."""
        p = self.protocol
        result: RefinementResult = refine(run.evidence(), build_refiner(p.refiner, keep_scores=False),
                                          true_labels=self.data.train.labels)
        info: Dict[str, Any] = {"rule": p.refine, "refiner": p.refiner.name,
                                "decision": result.decision.to_dict()}
        if run.evidence_info:
            info["evidence"] = run.evidence_info
        if result.decision.rule is not None:
            info.update(alpha=result.alpha, threshold=result.threshold)
        if p.refine == "synref":
            encoder = {"ssl": "simclr (trained on train + anchors)",
                       "classifier": "each fold network's own features"}.get(p.evidence.encoder, p.evidence.encoder)
            info.update(encoder=encoder, head=p.evidence.head, rounds=result.info.get("rounds"),
                        temperatures=result.info.get("temperatures"))
        return result.refined_labels, info

    # -- cells -------------------------------------------------------------------------------
    def cell_path(self, method: str, noise: str, seed: int) -> Optional[Path]:
        if self.out is None:
            return None
        return self.out / "cells" / f"{cell_name(self.dataset, self.protocol.name, method, noise, seed)}.json"

    def run_cell(self, method: str, run: NoiseRun) -> Dict[str, Any]:
        """Run one cell and save it (with an ``out`` folder). Its training loops checkpoint every
        epoch under ``work/checkpoints/<cell>/`` (a killed cell resumes inside its training), and
        the checkpoints are deleted once the cell is saved."""
        path = self.cell_path(method, run.noise, run.seed)
        folder = None if path is None or self.work is None else self.work / "checkpoints" / path.stem
        with checkpoint_folder(folder):
            row = create_method(method).run(self, run)
        if path is not None:
            write_json(path, row)
        if folder is not None:
            clear_checkpoints(folder)
        return row


def _check_protocol_record(out: Path, dataset: str, protocol: Protocol, anchors: Optional[str],
                           data_note: Optional[Dict[str, Any]] = None, *,
                           inputs: Optional[Dict[str, Any]] = None) -> None:
    """Record the protocol in ``out/bench-<dataset>-<protocol>.json``; refuse a different one there.
    ``inputs``: content keys of the inputs (``data_key``: a user dataset's files and label files;
    ``noise_files``: setting -> sha256 of its label file); a cell computed from other content is
    never reported again."""
    path = out / f"bench-{dataset}-{protocol.name}.json"
    record = {"dataset": dataset, "protocol": protocol.to_dict(), "anchors_option": anchors, **(inputs or {})}
    old: Dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        try:  # read through Protocol: a record of an older layout (or version) compares in today's
            old["protocol"] = Protocol.from_dict(old["protocol"]).to_dict()
        except (InputError, KeyError, TypeError):
            pass
        changed = [k for k in record if k in old and old[k] != record[k] and k != "noise_files"]
        if isinstance(old.get("noise_files"), dict) and isinstance(record.get("noise_files"), dict):
            if any(old["noise_files"].get(s, h) != h for s, h in record["noise_files"].items()):
                changed.append("noise_files")  # a setting's file has other content (a new setting may join)
            record["noise_files"] = {**old["noise_files"], **record["noise_files"]}
        if changed:
            what = {"protocol": "protocol", "anchors_option": "--anchors", "dataset": "dataset",
                    "data_key": "data or label files (their content)", "noise_files": "--noise-file content"}
            raise InputError(f"--out {out} holds a {dataset} / {protocol.name} bench run with a different "
                             f"{' and '.join(what[k] for k in changed)}; use another --out (or delete "
                             f"{path.name} and {out / 'cells'})")
    write_json(path, {**old, **record, **(data_note or {})})


def _data_note(d: ExperimentData, p: Protocol, methods: Sequence[str]) -> Dict[str, Any]:
    """The notes of a results table: what the grid's ``methods`` used (the network only when a row
    trains one, the refinement only for "+ Ours" rows, the evidence for correction rows, the LRA
    encoders for LRA rows)."""
    built = [create_method(m) for m in methods]
    trains = any(m.kind == "train" for m in built)
    note: Dict[str, Any] = {"anchors": d.anchor_source,
                            "data": f"{len(d.train)} train (noisy) / {len(d.val)} val (clean) / {len(d.test)} test"
                                    + (f", model {p.model}" if trains else "")}
    if any(m.kind == "correct" for m in built):
        note["evidence"] = f"every correction row reads the same evidence: {p.describe_evidence()}"
    if any(m.refined for m in built):
        note["refinement"] = p.describe_refinement()
    lra = sorted({m[4:].replace("+ours", "") for m in methods if m.startswith("lra-")})
    if lra:
        note["encoders"] = f"LRA conditioning encoders {', '.join(lra)} at {p.encoder_size} px (pretrained CNNs)" + (
            f", SimCLR {p.ssl_model} {p.ssl.epochs} epochs" if {"simclr", "ssl"} & set(lra) else "")
    return note


class Experiment:
    """A dataset under a protocol: its data, its shared steps and its cells, one seed at a time.

    :meth:`run` runs (or, with ``out``, resumes) a grid; :meth:`noise_run` gives the shared steps
    of one (noise setting, seed) (noisy labels, Standard model, evidence, refined labels),
    loading what a finished run cached in ``out/work``.
    """

    def __init__(self, dataset: str, protocol: Protocol, *, out: Optional[Path] = None, data: Optional[str] = None,
                 noise_files: Optional[Dict[str, Path]] = None, anchors: Optional[str] = None,
                 device: Optional[str] = None, clip_model: Optional[str] = None,
                 shared: Optional[SharedSteps] = None, record: bool = True,
                 user_data: Optional[Dict[str, Any]] = None) -> None:
        self.dataset, self.protocol, self.out, self.data_spec = dataset, protocol, out, data
        #: a user dataset's options of :func:`~synref.experiments.recipes.load_user_data` (split,
        #: labels, clean_labels, test_split); None for the built-in datasets.
        self.user_data = user_data
        self.noise_files = dict(noise_files or {})
        self.anchors, self.device, self.clip_model, self.record = anchors, device, clip_model, record
        self.shared = shared if shared is not None else SharedSteps()
        self._runner: Optional[Runner] = None
        self._seed: Optional[int] = None
        self._runs: Dict[str, NoiseRun] = {}

    def data(self, seed: int) -> ExperimentData:
        """The splits and anchors of ``seed`` (one seed's data is held at a time)."""
        return self.runner(seed).data

    def runner(self, seed: int) -> Runner:
        if self._runner is None or self._seed != seed:
            p = self.protocol
            key = digest(self.dataset, self.data_spec, self.anchors, seed, p.val_fraction, p.test_fraction,
                         p.train_size, p.test_size, p.anchors_per_class, self.user_data)
            if key not in self.shared.data:
                if self.user_data is not None:
                    data = load_user_data(str(self.data_spec), anchors=self.anchors, **self.user_data)
                else:
                    data = load_experiment_data(self.dataset, p, data=self.data_spec, anchors=self.anchors, seed=seed)
                self.shared.data = {key: data}
            data = self.shared.data[key]
            self._runner = Runner(self.dataset, self.protocol, data, self.out, self.noise_files, device=self.device,
                                  clip_model=self.clip_model, shared=self.shared)
            self._seed, self._runs = seed, {}
        return self._runner

    def noise_run(self, setting: str, seed: int) -> NoiseRun:
        runner = self.runner(seed)
        if setting not in self._runs:
            self._runs[setting] = NoiseRun(runner, setting, seed)
        return self._runs[setting]

    def input_keys(self, seed: int) -> Dict[str, Any]:
        """Content keys of what the cells are computed from: a user dataset's files and label
        files (its data key) and each noise file's sha256."""
        keys: Dict[str, Any] = {"noise_files": {setting: sha256_file(path)
                                                for setting, path in sorted(self.noise_files.items())}}
        if self.user_data is not None:
            keys["data_key"] = self.data(seed).key  # ("data" is the table note's line)
        return keys

    def cell_done(self, method: str, noise: str, seed: int) -> bool:
        return self.out is not None and (self.out / "cells" /
                                         f"{cell_name(self.dataset, self.protocol.name, method, noise, seed)}.json"
                                         ).is_file()

    def run(self, methods: Sequence[str], noise: Sequence[str], seeds: Sequence[int],
            preflight: Optional[Any] = None) -> List[Dict[str, Any]]:
        """Run the grid ``seeds`` x ``noise`` x ``methods`` (seed-major: the data is loaded once
        per seed) and return its rows, in grid order.

        With ``out``: finished cells are read back instead of run, each new one is saved at once,
        ``out/results.csv`` / ``out/results.md`` are rebuilt after every cell, and (``record``)
        the protocol is recorded in ``out/bench-<dataset>-<protocol>.json`` (a different protocol
        under the same name there is refused). ``preflight(data)`` checks the first seed's data
        before anything is written.
        """
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise InputError("--seeds: no seed given")
        for method in methods:
            create_method(method)
        out = self.out
        if out is not None:
            check_output_dir(out)
        grid = [(seed, n, m) for seed in seeds for n in noise for m in methods]
        todo = [(seed, n, m) for seed, n, m in grid if not self.cell_done(m, n, seed)]
        if preflight is not None:
            preflight(self.data(seeds[0]))
        elif todo:
            self.data(todo[0][0])  # the inputs (data, anchors, seed) are checked before anything is written
        inputs = self.input_keys(seeds[0])
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(out)
            if self.record:
                _check_protocol_record(out, self.dataset, self.protocol, self.anchors, inputs=inputs)
        rows: Dict[Tuple[int, str, str], Dict[str, Any]] = {}
        bar = progress_bar(total=len(grid), desc=f"{self.dataset}/{self.protocol.name}", unit="cell")
        bar.update(len(grid) - len(todo))
        recorded: Optional[int] = None
        try:
            for seed, setting, method in todo:
                run = self.noise_run(setting, seed)
                if out is not None and self.record and recorded != seed:
                    _check_protocol_record(out, self.dataset, self.protocol, self.anchors,
                                           _data_note(run.runner.data, self.protocol, methods), inputs=inputs)
                    recorded = seed
                bar.set_postfix_str(f"{method} / {setting} / seed {seed}")
                rows[(seed, setting, method)] = run.runner.run_cell(method, run)
                bar.update(1)
                if out is not None:
                    write_all(out)
        finally:
            bar.close()
        if out is not None:
            write_all(out)
            saved = {(int(r["seed"]), r["noise"], r["method"]): r for r in read_cells(out)
                     if r["dataset"] == self.dataset and r["protocol"] == self.protocol.name}
            rows = {**saved, **rows}
        return [rows[key] for key in grid]


def run_experiment(*, dataset: str, protocol: Protocol, methods: Sequence[str], noise: Sequence[str],
                   seeds: Sequence[int], **options: Any) -> List[Dict[str, Any]]:
    """``Experiment(dataset, protocol, **options).run(methods, noise, seeds)``: the rows of the grid."""
    preflight = options.pop("preflight", None)
    return Experiment(dataset, protocol, **options).run(methods, noise, seeds, preflight=preflight)
