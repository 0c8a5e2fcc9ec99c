"""``synref`` command line: argument parsing only; every command is one library call.

User errors (``synref.errors.InputError``) print one line ``synref: error: ...`` and exit 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from .anchors import GENERATORS, generator_options
from .errors import InputError, SynrefError
from .experiments.demo import PRESETS
from .experiments.protocol import PROTOCOLS
from .experiments.recipes import DATASETS
from .features import DEFAULT_CLIP_MODEL, DEFAULT_ENCODER, FEATURE_EXTRACTORS, check_space_name
from .models import MODELS
from .noise import PMD_NOISE_TYPES
from .progress import progress_setting
from .refiners import DEFAULT_REFINER, REFINERS
from .refiners.posterior import MODEL_CHECK_FALLBACKS


class _Parser(argparse.ArgumentParser):
    """Usage errors: one line ``synref CMD: error: ...`` (no usage dump), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def only_given(self) -> None:
        """Leave the options a user did not give out of the parsed namespace (every option's
        default becomes SUPPRESS): the command then passes on only what was set, so an option
        that does not apply can be refused by name. ``defaults`` keeps the documented defaults,
        ``flags`` each option's flag."""
        self.defaults: Dict[str, Any] = {}
        self.flags: Dict[str, str] = {}
        for action in self._actions:
            if action.option_strings and action.dest != "help":
                self.defaults[action.dest] = action.default
                self.flags[action.dest] = action.option_strings[0]
                action.default = argparse.SUPPRESS


def _given(args: argparse.Namespace) -> Dict[str, Any]:
    """The options the user set (of a parser made with :meth:`_Parser.only_given`)."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "parser", "command")}


def _unit_float(option: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a number, got {text!r}") from None
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"{option} must be in [0, 1], got {value}")
        return value

    return parse


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole method on the built-in digits data (about a minute on a CPU)",
                       description="Hold out a clean test split of scikit-learn's digits, inject label noise, "
                                   "train Standard, render synthetic anchors, refine, fine-tune, and compare "
                                   "the paper's preset with synref's default.")
    p.add_argument("--noise", default="pmd",
                   help="noise kind (pmd, uniform, asymmetric) with --rate, or a full spec such as "
                        "'pmd-0.35+u-0.3' (u = uniform, a = asymmetric on top). Default: pmd")
    p.add_argument("--rate", type=_unit_float("--rate"), default=0.7,
                   help="noise rate for a plain --noise kind (default 0.7)")
    p.add_argument("--noise-file", type=Path, default=None,
                   help="use these noisy labels for the training split instead (.npy or one per line); "
                        "its length must equal the training split's")
    p.add_argument("--pmd-type", type=int, choices=PMD_NOISE_TYPES, default=1, help="PMD type (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed for splits, noise and training (default 0)")
    p.add_argument("--preset", choices=("both",) + PRESETS, default="both",
                   help="which refinement to run: paper (the paper's recipe: refiner paper on the Standard "
                        "model's own features), synref (cross-fitted evidence and the default refiner); default: "
                        "both rows")
    p.add_argument("--anchors-per-class", type=int, default=100, help="synthetic anchors per class (default 100)")
    p.add_argument("--out", type=Path, default=Path("synref-demo"), help="output folder (default ./synref-demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import dataclasses

    from .experiments.demo import DemoConfig, format_demo_table, run_demo
    from .experiments.protocol import digits_protocol

    protocol = dataclasses.replace(digits_protocol(), anchors_per_class=args.anchors_per_class)
    config = DemoConfig(noise=args.noise, rate=args.rate, pmd_type=args.pmd_type, seed=args.seed,
                        noise_file=None if args.noise_file is None else str(args.noise_file),
                        presets=PRESETS if args.preset == "both" else (args.preset,), protocol=protocol)
    metrics = run_demo(config, out=args.out)
    print(format_demo_table(metrics))
    print(f"wrote {args.out / 'metrics.json'}")
    return 0


def _add_noise(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("noise", help="make noisy label files")
    kinds = p.add_subparsers(dest="noise_command", required=True, metavar="{hybrid,pmd}", parser_class=_Parser)

    h = kinds.add_parser("hybrid", help="apply uniform or asymmetric noise on top of a label file",
                         description="Apply uniform or asymmetric label noise on top of given labels (for example "
                                     "PMD labels), sampled exactly as the community noise files were.")
    h.add_argument("--labels", type=Path, required=True, help="input labels (.npy, or one per line)")
    h.add_argument("--kind", required=True, help="uniform or asymmetric")
    h.add_argument("--rate", type=_unit_float("--rate"), required=True, help="noise rate in [0, 1]")
    h.add_argument("--num-classes", type=int, required=True, help="number of classes C")
    h.add_argument("--seed", type=int, default=77, help="numpy RandomState seed (default 77, as the community files)")
    h.add_argument("--class-map", default=None,
                   help="asymmetric only: a JSON {src: dst} (inline, e.g. '{\"3\": 5}', or a file) or a file of "
                        "'src,dst' lines (default: CIFAR-10 / CIFAR-100 map)")
    h.add_argument("--out", type=Path, required=True, help="output labels: .npy, or .txt / .csv (one per line)")
    h.set_defaults(func=_run_noise_hybrid)

    m = kinds.add_parser("pmd", help="PMD noise from a model's softmax outputs",
                         description="Polynomial-margin-diminishing noise from a model's softmax (N, C) .npy; "
                                     "give --factor, or --rate to calibrate the factor.")
    m.add_argument("--probs", type=Path, required=True, help="(N, C) softmax of a model trained on clean labels (.npy)")
    m.add_argument("--type", dest="noise_type", type=int, choices=PMD_NOISE_TYPES, default=1)
    group = m.add_mutually_exclusive_group(required=True)
    group.add_argument("--rate", type=_unit_float("--rate"), help="target noise rate (calibrates the factor)")
    group.add_argument("--factor", type=float, help="PMD factor")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", type=Path, required=True, help="output labels: .npy, or .txt / .csv (one per line)")
    m.set_defaults(func=_run_noise_pmd)


def _check_labels_out(out: Path, *inputs: Tuple[str, Optional[Path]]) -> None:
    """``synref noise --out``: a labels file (.npy, or .txt / .csv: one per line) that is none of
    the command's input files."""
    import os

    from .io import check_output_file

    check_output_file(out)
    if out.suffix.lower() not in (".npy", ".txt", ".csv"):
        raise InputError(f"--out {out}: write labels to a .npy file, or a .txt / .csv file (one label per line)")
    for option, path in inputs:
        if path is not None and (os.path.abspath(out) == os.path.abspath(path)
                                 or (out.exists() and Path(path).exists() and os.path.samefile(out, path))):
            raise InputError(f"--out {out} is the {option} file: synref will not overwrite its input; choose another "
                             "--out")


def _write_labels(out: Path, labels: Any) -> None:
    """Write labels (N,) as .npy, or as text (one per line) for a .txt / .csv ``out``."""
    from .io import write_npy, write_text

    if out.suffix.lower() == ".npy":
        write_npy(out, labels)
    else:
        write_text(out, "".join(f"{int(v)}\n" for v in labels))


def _run_noise_hybrid(args: argparse.Namespace) -> int:
    from . import noise
    from .data import load_labels_file
    from .validation import check_memory

    _check_labels_out(args.out, ("--labels", args.labels))
    if args.num_classes < 2:
        raise InputError(f"--num-classes must be at least 2, got {args.num_classes}")
    check_memory(8.0 * args.num_classes ** 2, f"--num-classes {args.num_classes} (a {args.num_classes} x "
                 f"{args.num_classes} transition matrix)", "give the number of classes of --labels")
    if args.kind not in noise.NOISE_KINDS:
        raise InputError(f"unknown noise kind {args.kind!r} for --kind; choose {' or '.join(noise.NOISE_KINDS)}")
    labels = load_labels_file(args.labels, num_samples=None, num_classes=args.num_classes)
    class_map = None
    if args.class_map is not None:
        if args.kind != "asymmetric":
            raise InputError("--class-map goes with --kind asymmetric")
        class_map = noise.load_class_map(args.class_map, args.num_classes)
    noisy = noise.hybrid_noise(labels, kind=args.kind, rate=args.rate, num_classes=args.num_classes,
                               seed=args.seed, class_map=class_map)
    _write_labels(args.out, noisy)
    print(f"wrote {args.out}: {len(noisy)} labels, {noise.noise_rate(noisy, labels):.4f} changed "
          f"({args.kind} {args.rate}, seed {args.seed})")
    return 0


def _run_noise_pmd(args: argparse.Namespace) -> int:
    from . import noise
    from .io import read_npy

    _check_labels_out(args.out, ("--probs", args.probs))
    probs = read_npy(args.probs, "--probs")
    if args.factor is not None:
        factor = args.factor
    else:
        factor = noise.calibrate_pmd_factor(probs, noise_type=args.noise_type, target_rate=args.rate)
    noisy = noise.pmd_noise(probs, noise_type=args.noise_type, factor=factor, seed=args.seed)
    _write_labels(args.out, noisy)
    rate = noise.noise_rate(noisy, probs.argmax(1))
    print(f"wrote {args.out}: {len(noisy)} labels, PMD type {args.noise_type}, factor {factor:.4f}, "
          f"{rate:.4f} differ from the model's top-1")
    return 0


#: The CLI flag of each generator option (the options a generator accepts are its factory's).
_GENERATOR_FLAGS = {
    "model": "--model", "templates": "--prompt", "class_prompts_file": "--class-prompts",
    "steps": "--steps", "guidance": "--guidance", "size": "--size", "batch_size": "--batch-size",
    "device": "--device", "root": "--root",
}


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="write a synthetic anchor set to a folder (resumable, multi-GPU)",
        description="Generate --per-class anchors for every class into --out (PNG files, a JSONL "
                    "manifest with sha256 and provenance, anchorset.json). Re-running the same "
                    "command finishes only what is missing; a larger --per-class adds images. "
                    "Under `accelerate launch` the images are split between the processes.")
    p.add_argument("--generator", required=True, choices=GENERATORS.choices(),
                   help="glyph (rendered class text, offline), diffusers (text-to-image model), "
                        "folder (import your own images: --root/<class name>/...)")
    p.add_argument("--classes", required=True,
                   help="class list: a file (one name per line, # comments), a comma-separated "
                        "list, or cifar10 / cifar100 / digits")
    p.add_argument("--per-class", type=int, required=True, help="images per class")
    p.add_argument("--out", type=Path, required=True, help="output folder (the anchor set)")
    p.add_argument("--model", default=None, help="diffusers: model id or local folder")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per generator call (default: the generator's own, else 16)")
    p.add_argument("--steps", type=int, default=None, help="diffusers: inference steps")
    p.add_argument("--guidance", type=float, default=None, help="diffusers: guidance scale")
    p.add_argument("--size", type=int, default=None, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--prompt", action="append", default=None, metavar="TEMPLATE",
                   help="diffusers: prompt template with {category} (repeatable)")
    p.add_argument("--class-prompts", type=Path, default=None, metavar="FILE",
                   help="diffusers: per-class prompts file")
    p.add_argument("--device", default=None,
                   help="diffusers: torch device (default: the accelerate process's device, else auto)")
    p.add_argument("--root", type=Path, default=None, help="folder: one sub-folder per class")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from .anchors.generate import format_summary, generate_anchor_set, parse_class_list
    from .distributed import distributed_context, release_distributed
    from .io import check_output_dir
    from .validation import check_count

    check_output_dir(args.out)
    names = parse_class_list(args.classes)
    check_count(args.per_class, "--per-class")
    check_count(args.seed, "--seed", minimum=0)
    for flag, value in (("--batch-size", args.batch_size), ("--steps", args.steps),
                        ("--size", args.size)):
        if value is not None:
            check_count(value, flag)
    if args.class_prompts is not None and not args.class_prompts.is_file():
        raise InputError(f"--class-prompts file not found: {args.class_prompts}")
    given = {"model": args.model, "templates": args.prompt,
             "class_prompts_file": None if args.class_prompts is None else str(args.class_prompts),
             "steps": args.steps, "guidance": args.guidance, "size": args.size,
             "batch_size": args.batch_size, "device": args.device,
             "root": None if args.root is None else str(args.root)}
    accepted = generator_options(args.generator) or list(given)
    for option, value in given.items():
        if value is not None and option not in accepted and option not in ("batch_size", "device"):
            raise InputError(f"{_GENERATOR_FLAGS[option]} does not apply to "
                             f"--generator {args.generator}")
    if args.generator == "diffusers" and args.model is None:
        raise InputError("--generator diffusers needs --model (a model id or local folder)")
    if args.generator == "folder" and args.root is None:
        raise InputError("--generator folder needs --root (one sub-folder per class)")

    from .anchors import create_generator

    rank, world, device, barrier, state = distributed_context(args.device)
    given["device"] = device
    options = {k: v for k, v in given.items() if k in accepted and v is not None}
    try:
        generator = create_generator(args.generator, **options)
        summary = generate_anchor_set(generator, names, args.per_class, args.out, seed=args.seed,
                                      batch_size=args.batch_size, process_index=rank,
                                      num_processes=world,
                                      barrier=barrier)
        summaries = [summary]
        if world > 1:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                summaries = [None] * world  # type: ignore[list-item]
                dist.all_gather_object(summaries, summary)
    finally:
        release_distributed(state)
    if rank == 0:
        print(format_summary(summaries))
        if summary.get("complete") is False:
            raise SynrefError(f"the anchor set {args.out} is incomplete ({summary['present']} of "
                              f"{summary['total']} images); re-run the same command to finish it")
    return 0


def _add_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features", help="extract image features to OUT/features.npy (streamed, resumable, multi-GPU)",
        description="Extract features of --data with a classifier checkpoint, CLIP or a SimCLR "
                    "encoder into OUT/features.npy (N, D) float32, OUT/features.json (sidecar: "
                    "encoder, working size, chunks, skipped files), OUT/ids.txt and "
                    "OUT/labels.npy. Image folders and CSV manifests are decoded from disk a batch "
                    "at a time. Re-running the same command resumes; under `accelerate launch` "
                    "the chunks are split between the processes.")
    p.add_argument("--data", required=True,
                   help="digits, a CIFAR folder, an image folder or a CSV manifest")
    p.add_argument("--split", default="train", help="split of --data (default train)")
    p.add_argument("--encoder", "--extractor", dest="extractor", required=True, choices=FEATURE_EXTRACTORS.choices(),
                   help="the encoder (--extractor: its older name): classifier (needs --checkpoint), clip "
                        "(--clip-model), ssl / simclr (SimCLR trained "
                        "on --data; one process only), efficientnet-lite0 / -lite1 / -lite2 (ImageNet-pretrained, offline), "
                        "efficientnet-lite-ensemble (Lite1 + Lite2, stages 6-7 + head, mirror-averaged: better "
                        "labels for 3.6x the time of Lite2), hf:ID_OR_FOLDER (any transformers vision backbone: "
                        "a hub id in the Hugging Face cache or a save_pretrained folder)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="classifier checkpoint (synref.models.save_classifier)")
    p.add_argument("--clip-model", default=None,
                   help="CLIP model id or local folder (default openai/clip-vit-large-patch14)")
    p.add_argument("--image-size", type=int, default=None,
                   help="working resolution (square); default: the data's most common size")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--chunk-size", type=int, default=4096,
                   help="rows per cache chunk, the unit of resume and of work sharing (default 4096)")
    p.add_argument("--workers", type=int, default=4,
                   help="decoding threads per process (0 = decode in the main thread; default 4)")
    p.add_argument("--device", default=None,
                   help="torch device (default: the accelerate process's device, else cuda if available)")
    p.add_argument("--skip-bad", action="store_true",
                   help="unreadable images get an all-zero row and are listed in OUT/features.json")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_features)


def _run_features(args: argparse.Namespace) -> int:
    from .data import load_dataset, materialize
    from .device import default_device
    from .distributed import distributed_context, release_distributed
    from .features import ExtractorContext, compute_features, extractor_from_context
    from .io import check_output_dir, write_npy, write_text

    for flag, value, minimum in (("--batch-size", args.batch_size, 1), ("--chunk-size", args.chunk_size, 1),
                                 ("--image-size", args.image_size, 1), ("--workers", args.workers, 0)):
        if value is not None and value < minimum:
            raise InputError(f"{flag} must be an integer >= {minimum}, got {value}")
    if args.extractor == "classifier" and args.checkpoint is None:
        raise InputError("--encoder classifier needs --checkpoint (a save_classifier file)")
    if args.extractor != "classifier" and args.checkpoint is not None:
        raise InputError(f"--checkpoint does not apply to --encoder {args.extractor}")
    if args.extractor != "clip" and args.clip_model is not None:
        raise InputError(f"--clip-model does not apply to --encoder {args.extractor}")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise InputError(f"classifier checkpoint not found: {args.checkpoint}")
    check_output_dir(args.out)
    dataset = load_dataset(args.data, split=args.split)
    size = None if args.image_size is None else (args.image_size, args.image_size)
    name = check_space_name(args.extractor, "--encoder")

    rank, world, device, barrier, state = distributed_context(args.device)
    try:
        context = ExtractorContext(checkpoint=args.checkpoint, clip_model=args.clip_model,
                                   device=device or default_device())
        channels: Optional[int] = 3
        if name == "ssl":
            if world > 1:
                raise InputError(f"--encoder {args.extractor} trains its encoder in the process; run it "
                                 "without accelerate launch (one process)")
            train = materialize(dataset, size=size, skip_bad=args.skip_bad)
            channels = int(train.images.shape[-1])
            size = tuple(train.images.shape[1:3])
            context.images = train.images
        extractor = extractor_from_context(name, context)
        if name == "classifier":
            channels = int(extractor.model.in_channels)
        feats, skipped = compute_features(
            extractor, dataset, path=args.out / "features.npy", process_index=rank,
            num_processes=world, barrier=barrier, batch_size=args.batch_size,
            chunk_size=args.chunk_size, size=size, channels=channels, num_workers=args.workers,
            skip_bad=args.skip_bad)
        if rank == 0:
            write_text(args.out / "ids.txt", "".join(f"{i}\n" for i in dataset.ids))
            write_npy(args.out / "labels.npy", dataset.labels)
            where = f" on {world} processes" if world > 1 else ""
            print(f"wrote {args.out / 'features.npy'}: {feats.shape[0]} x {feats.shape[1]} "
                  f"{extractor.name} features ({extractor.fingerprint()}){where}; "
                  f"{len(skipped)} unreadable image(s) skipped")
        if barrier is not None:
            barrier()
    finally:
        release_distributed(state)
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write OUT/report.html for a results folder of synref refine",
                       description="Read the results folder of `synref refine --out OUT` and write "
                                   "OUT/report.html: one self-contained page (counts per class, "
                                   "transitions, score histograms, the changed samples beside anchors).")
    p.add_argument("out", type=Path, metavar="OUT", help="results folder written by synref refine --out")
    p.add_argument("--max-gallery", type=int, default=60, metavar="N",
                   help="most changed samples shown in the gallery, most confident first (default 60)")
    p.add_argument("--anchors-per-side", type=int, default=4, metavar="K",
                   help="anchors shown for the given and for the suggested class (default 4)")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from .apps.report import write_report

    for flag, value in (("--max-gallery", args.max_gallery), ("--anchors-per-side", args.anchors_per_side)):
        if value < 0:
            raise InputError(f"{flag} must be >= 0, got {value}")
    path = write_report(args.out, max_gallery=args.max_gallery, anchors_per_side=args.anchors_per_side)
    print(path)
    return 0


def _add_review(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("review", help="write OUT/review.html: accept or reject every suggestion in the browser",
                       description="Read the results folder of `synref refine --out OUT` and write OUT/review.html "
                                   "(+ its thumbnails in OUT/review/): every changed or flagged sample beside anchors "
                                   "of its given and suggested class, with filters, sort, accept / reject / another "
                                   "class per item (keys: j/k move, a accept, r reject, c class, u clear, n next "
                                   "undecided, ? help), decisions kept in the browser and downloaded as "
                                   "decisions.csv for `synref apply`. Re-running reuses the thumbnails written.")
    p.add_argument("out", type=Path, metavar="OUT", help="results folder written by synref refine --out")
    p.add_argument("--thumb-px", type=int, default=48, metavar="PX", help="thumbnail side in pixels (default 48)")
    p.add_argument("--anchors-per-class", type=int, default=4, metavar="K",
                   help="anchors shown per class (default 4)")
    p.add_argument("--max-items", type=int, default=200_000, metavar="N",
                   help="most items on the page: changed first, then flagged, most probable first (default 200000)")
    p.add_argument("--workers", type=int, default=2, help="thumbnail decoding threads (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_review)


def _run_review(args: argparse.Namespace) -> int:
    from .apps.review import write_review

    path = write_review(args.out, thumb_px=args.thumb_px, anchors_per_class=args.anchors_per_class,
                        max_items=args.max_items, workers=args.workers)
    print(path)
    return 0


def _add_apply(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("apply", help="write the corrected labels, manifest, folder tree and Label Studio tasks",
                       description="Turn a results folder (+ the review page's decisions.csv) into a corrected "
                                   "label file (labels.csv), a CSV manifest, a folder tree sorted by class (hard "
                                   "links, or copies), a Label Studio import file for the samples left undecided, "
                                   "and with --to datasets a copy of a Hugging Face dataset with a synref_label "
                                   "column. Decisions win; the other changes follow --accept. Nothing is written "
                                   "inside the data folder; re-running rewrites the same files.")
    p.add_argument("out", type=Path, metavar="OUT", nargs="?", help="results folder written by synref refine --out")
    p.add_argument("--decisions", type=Path, default=None, metavar="CSV",
                   help="decisions.csv downloaded from OUT/review.html")
    p.add_argument("--accept", nargs="+", default=["all"], metavar="POLICY",
                   help="changes without a decision: all (default: every change accepted), none, or above P "
                        "(those whose probability is at least P)")
    p.add_argument("--dest", type=Path, default=None, help="output folder (default OUT/applied)")
    p.add_argument("--to", default=None,
                   help="comma-separated outputs: labels, manifest, tree, label-studio, datasets (a Hugging Face "
                        "dataset copy with a synref_label column); default labels,manifest,tree,label-studio "
                        "(labels only for results without images)")
    link = p.add_mutually_exclusive_group()
    link.add_argument("--copy", action="store_true", help="copy the images into the tree (default: hard links)")
    link.add_argument("--move", action="store_true",
                      help="move the images into the tree (the originals are removed; only when asked)")
    p.add_argument("--ls-prefix", default="/data/local-files/?d=",
                   help="Label Studio image URL prefix (default: its local-files serving, /data/local-files/?d=)")
    p.add_argument("--ls-root", default="/",
                   help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT: image paths are written relative to it (default /)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_apply)


def _run_apply(args: argparse.Namespace) -> int:
    from .apps.apply import format_apply_summary, run_apply

    accept, out = list(args.accept), args.out
    if out is None:  # "--accept all OUT": OUT went to --accept
        keep = 2 if accept[0].lower() == "above" else 1
        if len(accept) == keep + 1:
            accept, out = accept[:keep], Path(accept[keep])
    if out is None:
        raise InputError("give the results folder: synref apply OUT [--decisions decisions.csv]")
    summary = run_apply(out, decisions=args.decisions, accept=accept, dest=args.dest, outputs=args.to,
                        copy=args.copy, move=args.move, ls_prefix=args.ls_prefix, ls_root=args.ls_root)
    print(format_apply_summary(summary))
    return 0


def _add_refine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("refine", help="find and correct wrong labels in your own labelled images",
                       description="Score every image against synthetic class anchors and an out-of-sample "
                                   "softmax; write refined_labels.csv, summary.json and report.html. By default "
                                   f"the evidence is pretrained: a frozen {DEFAULT_ENCODER} encoder (offline) "
                                   "and cross-fitted linear heads on its features, with image files decoded "
                                   "from disk a batch at a time (no network is trained; resumable; under "
                                   "`accelerate launch` the feature extraction is split between the processes). "
                                   "--train / --classifier use CNNs instead. --config OUT/config.json re-runs a "
                                   "results folder into a new --out.")
    p.add_argument("--config", type=Path, default=None, help="re-run the config.json of a results folder "
                                                              "(then give only --out and --quiet)")
    p.add_argument("--data", default=None, help="image folder (one sub-folder per class), CSV manifest "
                                                "(path,label), CIFAR python layout, 'digits', or a Hugging Face "
                                                "dataset: a save_to_disk folder or parquet file(s)")
    p.add_argument("--split", default="train", help="split of --data (CIFAR train/test, split folders, CSV split column, "
                                                    "a DatasetDict's split)")
    p.add_argument("--image-column", default=None,
                   help="Hugging Face --data: the image column (default: its first Image feature, else 'image')")
    p.add_argument("--label-column", default=None,
                   help="Hugging Face --data: the label column (default: its first ClassLabel feature, else 'label'); "
                        "class names come from the ClassLabel")
    p.add_argument("--labels", type=Path, default=None, help="label file replacing the dataset's labels (.npy or one per line)")
    anchors = p.add_mutually_exclusive_group()
    anchors.add_argument("--anchors", type=Path, help="anchor set from synref generate")
    anchors.add_argument("--generate", action="store_true", help="generate anchors into OUT/anchors (see --generator)")
    p.add_argument("--generator", default="glyph", choices=GENERATORS.choices(),
                   help="with --generate: glyph, diffusers or folder (default glyph)")
    p.add_argument("--generator-model", default=None, help="with --generator diffusers: model id or local folder")
    p.add_argument("--generator-root", default=None, help="with --generator folder: folder with one sub-folder per class")
    p.add_argument("--prompt", action="append", default=None, help="with --generator diffusers: prompt template(s)")
    p.add_argument("--per-class", type=int, default=100, help="anchors per class to generate (default 100)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--classifier", type=Path, help="classifier checkpoint (synref.models.save_classifier) "
                                                        "instead of pretrained evidence")
    source.add_argument("--train", action="store_true",
                        help="train k-fold cross-fitted CNNs for out-of-sample pred_probs instead of pretrained "
                             "evidence (images decoded into memory)")
    p.add_argument("--arch", default="small_cnn", choices=MODELS.names(), help="network for --train (default small_cnn)")
    p.add_argument("--epochs", type=int, default=30, help="epochs per fold model (default 30)")
    p.add_argument("--folds", type=int, default=4, help="k of the cross-fitting (default 4)")
    p.add_argument("--rounds", type=int, default=1, help="refinement rounds (default 1; 3 in the demo)")
    p.add_argument("--encoder", dest="encoder", default=None, choices=FEATURE_EXTRACTORS.choices(),
                   help=f"feature space: a frozen pretrained encoder ({DEFAULT_ENCODER}, the default: ImageNet, "
                        "offline; clip with --clip-model; hf:ID_OR_FOLDER: any transformers vision backbone such as "
                        "hf:facebook/dinov2-base, from the Hugging Face cache or a save_pretrained folder; any "
                        "registered one), or with --train / --classifier: classifier (their default) or ssl (simclr)")
    p.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help="CLIP model id or local folder")
    own = p.add_argument_group("bring your own embeddings (no encoder runs; --data optional, for the report's images)")
    own.add_argument("--features", type=Path, default=None, metavar="FEATURES.npy",
                     help="(N, D) embeddings of the samples you already have (CLIP, DINOv2, your model), "
                          "memory-mapped; with --labels, --anchor-features, --anchor-labels")
    own.add_argument("--anchor-features", type=Path, default=None, metavar="ANCHOR_FEATURES.npy",
                     help="(M, D) embeddings of the anchors in the same space")
    own.add_argument("--anchor-labels", type=Path, default=None, metavar="ANCHOR_LABELS.npy",
                     help="the anchors' labels (.npy or one per line)")
    own.add_argument("--class-names", type=Path, default=None, metavar="NAMES",
                     help="class names: a text file (one per line) or a JSON list (default: 0..C-1 or --data's)")
    p.add_argument("--refiner", default=DEFAULT_REFINER, choices=REFINERS.choices(),
                   help=f"the refinement rule (default {DEFAULT_REFINER}: the estimated posterior of the true class "
                        f"decides; paper = the paper's published score rule, raw cosine; crossfit = calibrated "
                        f"score rule)")
    p.add_argument("--target-precision", type=_unit_float("--target-precision"), default=None,
                   help="posterior refiner: change only as many labels as keep the estimated precision of the "
                        "changes at least this (e.g. 0.9; the posterior first calibrated on planted anchors, about "
                        "3x the refiner's time); default: every label whose most probable class differs")
    p.add_argument("--on-model-check-failure", default="confident-learning", choices=MODEL_CHECK_FALLBACKS,
                   help="posterior refiner: when neighbours' given labels agree far more than the model predicts "
                        "(the anchors do not describe the images): confident-learning (default: cleanlab on the "
                        "given labels and pred_probs alone decides) or keep (change nothing)")
    p.add_argument("--neighbor-graph", choices=("auto", "exact", "hnsw", "ivf"), default="auto",
                   help="posterior refiner: the kNN graph over the features: exact, hnsw (a faiss HNSW graph, its "
                        "efSearch raised until the recall@k on sampled rows reaches 0.95), ivf (a faiss IVF index) "
                        "or auto (default: exact up to 20,000 rows, hnsw above); the approximate graph's recall is "
                        "measured and recorded in summary.json")
    p.add_argument("--neighbor-recall", type=_unit_float("--neighbor-recall"), default=0.95,
                   help="posterior refiner, hnsw graph: the recall@k on sampled rows its efSearch is raised to "
                        "(default 0.95; lower is faster: at 10^6 synthetic rows efSearch 32 reached 0.90 and the refinement "
                        "took 460 s, the 0.95 target chose efSearch 88-96 and took 631-726 s; docs/scale.md)")
    p.add_argument("--alpha", type=_unit_float("--alpha"), default=0.5, help="score-rule refiners (paper, crossfit): weight of anchor similarity (default 0.5)")
    p.add_argument("--threshold", type=_unit_float("--threshold"), default=0.6, help="score-rule refiners: relabel threshold (default 0.6)")
    p.add_argument("--no-calibrate", action="store_true", help="use raw cosine similarity (the paper) instead of "
                                                               "anchor-calibrated probabilities")
    p.add_argument("--image-size", type=int, default=None,
                   help="working resolution (square); pretrained evidence: the encoder input side, image files decoded "
                        "straight to it (default 160); --train / --classifier: decoding size (default: the data's)")
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out and list them in summary.json")
    p.add_argument("--batch-size", type=int, default=64, help="pretrained evidence: images per encoder pass (default 64)")
    p.add_argument("--workers", type=int, default=2,
                   help="pretrained evidence: decoding threads, ahead of the encoder (default 2)")
    p.add_argument("--chunk-size", type=int, default=4096,
                   help="pretrained evidence: rows per feature-cache chunk, the unit of resume and of work sharing "
                        "between processes (default 4096)")
    _add_finetune_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="results folder (re-run the same command to resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_refine, parser=p)
    p.only_given()


def _add_finetune_options(p: argparse.ArgumentParser, what: str = "pretrained evidence") -> None:
    """The ``--evidence`` / ``--finetune-*`` group (``what``: the evidence it tunes, as the command
    says it)."""
    from .pipeline import TUNINGS
    from .tuned_evidence import FINETUNE_DEFAULTS as d

    g = p.add_argument_group("fine-tuned evidence (docs/finetune.md)")
    g.add_argument("--evidence", choices=TUNINGS, default="frozen",
                   help=f"{what}: frozen (default: the frozen encoder alone) or finetune (then a k-fold "
                        "fine-tuned EfficientNet-Lite0, trained on the frozen pass's posterior and the anchors, adds "
                        "its out-of-fold softmax as a separate view; the --folds and --seed of the run; a GPU is "
                        "advised beyond a few thousand images)")
    g.add_argument("--finetune-epochs", type=int, default=d["finetune_epochs"],
                   help=f"--evidence finetune: epochs per fold, the best by held-out anchors kept "
                        f"(default {d['finetune_epochs']})")
    g.add_argument("--finetune-size", type=int, default=d["finetune_size"],
                   help=f"--evidence finetune: the side the images are fine-tuned at (default {d['finetune_size']})")
    g.add_argument("--finetune-lr", type=float, default=d["finetune_lr"],
                   help=f"--evidence finetune: AdamW learning rate of the backbone (default {d['finetune_lr']:g})")
    g.add_argument("--anchor-weight", type=float, default=d["anchor_weight"],
                   help=f"--evidence finetune: loss weight of an anchor relative to an image "
                        f"(default {d['anchor_weight']:g})")
    g.add_argument("--no-finetune-flip", action="store_true",
                   help="--evidence finetune: no mirrored training images (digits, text: whatever a mirror turns "
                        "into another class)")


def _saved_config(given: Dict[str, Any], parser: _Parser, cls: type) -> object:
    """The ``cls`` saved in ``--config``; no other option (but --out and --quiet) may be given,
    as the config replaces them all."""
    from .config import load_config

    others = [parser.flags[dest] for dest in given if dest not in ("out", "quiet", "config")]
    if others:
        raise InputError(f"--config re-runs a saved config: give only --out (and --quiet), not {', '.join(others)}")
    return load_config(given["config"], cls)


def _run_refine(args: argparse.Namespace) -> int:
    from .apps.refine_options import refine_config
    from .apps.refine_run import RefineRunConfig, format_refine_summary, run_refine

    given = _given(args)
    if "config" in given:
        config = _saved_config(given, args.parser, RefineRunConfig)
    else:
        values, flags = _refine_values(given, args.parser.flags)
        config = refine_config(values, flags)
        if config.generator == "diffusers" and "model" not in config.generator_options:
            raise InputError("--generator diffusers needs --generator-model (a model id or local folder)")
        if config.generator == "folder" and "root" not in config.generator_options:
            raise InputError("--generator folder needs --generator-root")
    summary = run_refine(config, out=args.out)
    if summary is not None:  # process 0 of a multi-process launch (or the only one)
        print(format_refine_summary(summary, args.out))
    return 0


#: ``synref refine`` options whose config field has another name.
_REFINE_FIELDS = {"arch": "model", "generator_model": "generator_options.model",
                  "generator_root": "generator_options.root", "prompt": "generator_options.templates",
                  "no_calibrate": "calibrate", "no_finetune_flip": "finetune_flip"}


def _refine_values(given: Dict[str, Any], flags: Dict[str, str]) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """The RefineRunConfig fields of the ``synref refine`` options the user set, and each set
    option's field -> its flag (a generator option is ``generator_options.<key>``)."""
    values: Dict[str, Any] = {}
    set_flags: Dict[str, str] = {}
    generate = bool(given.get("generate"))
    for dest, value in given.items():
        if dest in ("out", "quiet", "generate"):
            continue
        field = _REFINE_FIELDS.get(dest, dest)
        set_flags[field] = flags[dest]
        if isinstance(value, Path):
            value = str(value)
        if field in ("calibrate", "finetune_flip"):  # --no-calibrate, --no-finetune-flip
            value = not value
        if field.startswith("generator_options."):
            if generate:
                values.setdefault("generator_options", {})[field.split(".", 1)[1]] = (
                    list(value) if isinstance(value, list) else value)
        elif field != "generator":
            values[field] = value
    if generate:
        values["generator"] = given.get("generator", "glyph")
    return values, set_flags


def _finetune_values(given: Dict[str, Any]) -> Dict[str, Any]:
    """The fine-tuned evidence options a user set (``--finetune-*``, ``--anchor-weight``,
    ``--no-finetune-flip``) as :class:`~synref.tuned_evidence.FinetuneOptions` fields."""
    from .tuned_evidence import FINETUNE_FLAGS

    values = {_REFINE_FIELDS.get(dest, dest): value for dest, value in given.items()
              if _REFINE_FIELDS.get(dest, dest) in FINETUNE_FLAGS}
    if "finetune_flip" in values:  # --no-finetune-flip
        values["finetune_flip"] = not values["finetune_flip"]
    return values


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="synref next to cleanlab on the same out-of-sample pred_probs")
    p.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="dataset with known clean labels (default digits)")
    p.add_argument("--noise", default="pmd-0.7", help="digits: noise setting, e.g. pmd-0.7 or 'pmd-0.35+u-0.3'")
    p.add_argument("--data", default=None, help="CIFAR: folder with the official python layout")
    p.add_argument("--noise-file", default=None, help="CIFAR: noisy labels of the first 45,000 training images")
    p.add_argument("--subset", type=int, default=10000,
                   help="CIFAR: first N of the 45,000 (CPU protocol; default 10000)")
    p.add_argument("--epochs", type=int, default=None,
                   help="digits: epochs of each fold network (default: the protocol's 30); CIFAR's evidence trains "
                        "no network")
    p.add_argument("--out", type=Path, default=None,
                   help="keep the shared steps (encoder features, noisy labels, models) and each finished row "
                        "in OUT: a re-run resumes, other noise settings reuse the features (default: keep nothing)")
    p.add_argument("--seed", type=int, default=0, help="seed for split, noise and training (default 0)")
    p.add_argument("--encoder", default=None, choices=FEATURE_EXTRACTORS.choices(),
                   help="the refinement's frozen feature space (default: digits a SimCLR encoder, CIFAR "
                        "efficientnet-lite-ensemble), e.g. hf:ID_OR_FOLDER (any transformers vision backbone)")
    _add_finetune_options(p, "CIFAR: the evidence every row reads (the cpu protocol's pretrained evidence)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_compare, parser=p)
    p.only_given()


def _run_compare(args: argparse.Namespace) -> int:
    from .experiments.compare import check_compare_options, format_compare_table, run_compare

    given, parser = _given(args), args.parser
    args = argparse.Namespace(**{**parser.defaults, **given})
    check_compare_options(args.dataset, {k: parser.flags[k] for k in given})
    if args.dataset == "digits":
        title = f"digits, noise {args.noise}"
    else:
        if not args.data or not args.noise_file:
            raise InputError(f"--dataset {args.dataset} needs --data (official python layout) and --noise-file")
        title = (f"{args.dataset}, first {args.subset} training images, labels {Path(args.noise_file).name}, "
                 f"real-anchor stand-in" + (", fine-tuned evidence" if args.evidence == "finetune" else ""))
    rows = run_compare(args.dataset, noise=args.noise, seed=args.seed, data=args.data, noise_file=args.noise_file,
                       subset=args.subset, epochs=args.epochs, out=args.out, encoder=args.encoder,
                       evidence=args.evidence, finetune=_finetune_values(given))
    print(format_compare_table(rows, title=title))
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="the paper's table: methods x noise settings x seeds (resumable)",
                       description="Run (or resume) a grid of methods (standard, ours, plc, plc+ours, "
                                   "lra-<encoder>[+ours]) x noise settings x seeds; writes OUT/results.csv and "
                                   "OUT/results.md. Finished cells are kept: re-run the same command to resume.")
    p.add_argument("--config", type=Path, default=None, help="re-run the config.json of a bench folder "
                                                              "(then give only --out and --quiet)")
    p.add_argument("--protocol", choices=PROTOCOLS.names(), default=None,
                   help="paper: the paper's CIFAR training settings (ResNet-34, its refiner on the Standard "
                        "model; GPU); cpu: 10,000-image subset, small CNN, short "
                        "schedules; digits: the built-in data; pretrained: your own data (default: digits for "
                        "--dataset digits, pretrained for a folder / CSV, else cpu)")
    p.add_argument("--dataset", default="digits",
                   help=f"{', '.join(DATASETS)}, or your own data: an image folder (one sub-folder per class; "
                        "train/ test/ split folders) or a CSV manifest (path,label[,split]); your own data runs the "
                        "correction methods (given, cleanlab, refine-<refiner>) on pretrained evidence "
                        "(--protocol pretrained) and needs --anchors and clean labels")
    p.add_argument("--data", default=None, help="CIFAR: folder with the official python layout")
    p.add_argument("--labels", default=None,
                   help="your own data: the given (noisy) labels, a file (.npy or one per line) in the order of "
                        "--dataset's training split; the dataset's own labels are then the clean ones")
    p.add_argument("--clean-labels", default=None,
                   help="your own data: clean labels (a file, same order) to measure against; the dataset's own "
                        "labels are then the given ones (unless --labels)")
    p.add_argument("--split", default="train", help="your own data: the split refined (default train)")
    p.add_argument("--test-split", default="test",
                   help="your own data: clean test split (CSV split column value or split folder; default test, "
                        "used when present): each method's labels train a linear probe measured there")
    p.add_argument("--methods", default=None,
                   help="comma-separated rows (default: standard,ours,plc,plc+ours and lra-<encoder>[+ours] for "
                        "the protocol's encoders: simclr and efficientnet-lite0; clip in the paper protocol)")
    p.add_argument("--noise", default=None,
                   help="comma-separated settings (default: pmd-0.35,pmd-0.7,pmd-0.35+u-0.3,pmd-0.35+u-0.6,"
                        "pmd-0.35+a-0.3)")
    p.add_argument("--noise-file", action="append", default=[], metavar="PATH",
                   help="a folder of community label files (cifar10-1-0.35.npy, ..._U_0.3.npy, ...), used for "
                        "the matching settings, or one label file (its own column); repeatable. Without it PMD "
                        "is generated")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--anchors", default=None,
                   help="anchor set from synref generate (default: CIFAR: real-anchor stand-in from the clean "
                        "validation split; digits: glyph anchors)")
    p.add_argument("--clip-model", default=None, help="CLIP hub id or local folder for lra-clip")
    p.add_argument("--encoder", default=None, choices=FEATURE_EXTRACTORS.choices(),
                   help="the refinement's frozen feature space (default: the protocol's; pretrained: "
                        f"{DEFAULT_ENCODER}), e.g. hf:ID_OR_FOLDER (any transformers vision backbone)")
    _add_finetune_options(p, "protocols cpu and pretrained: the evidence the correction rows and the + ours rows' "
                             "refinement read (the protocol is then named <protocol>-finetune[-<hex of the options>])")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", required=True, type=Path, help="results folder (resumed when it exists)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_bench, parser=p)
    p.only_given()


def _run_bench(args: argparse.Namespace) -> int:
    from .experiments.bench import BenchConfig, run_bench

    given = _given(args)
    if "config" in given:
        run_bench(_saved_config(given, args.parser, BenchConfig), out=args.out)
    else:
        flags = {k: args.parser.flags[k] for k in given}
        args = argparse.Namespace(**{**args.parser.defaults, **given})
        from .experiments.recipes import is_user_dataset

        protocol = args.protocol or ("digits" if args.dataset == "digits" else
                                     "pretrained" if is_user_dataset(args.dataset) else "cpu")
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise InputError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        run_bench(dataset=args.dataset, protocol=protocol, out=args.out, data=args.data, methods=args.methods,
                  noise=args.noise, seeds=seeds, noise_files=args.noise_file, anchors=args.anchors,
                  device=args.device, clip_model=args.clip_model, split=args.split, labels=args.labels,
                  clean_labels=args.clean_labels, test_split=args.test_split or None, encoder=args.encoder,
                  evidence=args.evidence, finetune=_finetune_values(given), given=flags)
    print((args.out / "results.md").read_text())
    print(f"results: {args.out / 'results.csv'}, {args.out / 'results.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="synref", description="Find and correct wrong labels with synthetic class anchors.")
    parser.add_argument("--version", action="version", version=f"synref {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_demo(sub)
    _add_noise(sub)
    _add_generate(sub)
    _add_features(sub)
    _add_refine(sub)
    _add_report(sub)
    _add_review(sub)
    _add_apply(sub)
    _add_compare(sub)
    _add_bench(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help / --version (0)
        return int(exc.code or 0)
    try:
        with progress_setting(False if getattr(args, "quiet", False) else None):
            return int(args.func(args) or 0)
    except (InputError, SynrefError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"synref: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synref: interrupted", file=sys.stderr)
        return 130


def console_main() -> None:
    """Entry point of the ``synref`` console script."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    console_main()
