"""Which ``synref refine`` options apply to which run.

The command line passes on only the options a user set (the config's defaults fill the rest).
:func:`refine_config` builds the :class:`~synref.apps.refine_run.RefineRunConfig` from them and
refuses, with one line naming the option and what it applies to, every set option that the
chosen evidence, refiner, generator or encoder would not use: such an option would otherwise be
accepted and silently have no effect (``--rounds`` with the posterior refiner, ``--epochs``
without ``--train``, ``--clip-model`` with another encoder, ...).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..config import unknown_options
from ..errors import InputError
from ..pipeline import refiners_using
from ..refiners import refiner_used_options
from ..tuned_evidence import FINETUNE_APPLIES, FINETUNE_FLAGS
from .refine_run import FLAT_OPTIONS, RefineRunConfig

__all__ = ["refine_config", "check_options_apply", "option_applies"]

Rule = Tuple[Callable[[RefineRunConfig], bool], Callable[[RefineRunConfig], str], str]


def _evidence(c: RefineRunConfig) -> str:
    return {"train": "with --train", "classifier": "with --classifier",
            "features": "with --features (no encoder runs)"}.get(
        c.evidence_mode, "with pretrained evidence (neither --train nor --classifier)")


def _generator(c: RefineRunConfig) -> str:
    return "without --generate" if c.generator is None else f"to --generator {c.generator}"


def _refiner_rule(option: str) -> Rule:
    return (lambda c: option in refiner_used_options(c.refiner.name), lambda c: f"to --refiner {c.refiner.name}",
            "--refiner " + " / ".join(refiners_using(option)))


#: config field (``generator_options.<key>`` for a generator option) -> (applies to the config?,
#: why not (its context), what it applies to). Fields not listed apply to every run.
RULES: Dict[str, Rule] = {
    "model": (lambda c: c.evidence_mode == "train", lambda c: "without --train", "--train (the network of each fold)"),
    "epochs": (lambda c: c.evidence_mode == "train", lambda c: "without --train",
               "--train (the epochs of each fold network)"),
    "folds": (lambda c: c.evidence_mode != "classifier", _evidence,
              "pretrained evidence and --train (the k of the cross-fitting; a saved classifier is not refit)"),
    "batch_size": (lambda c: c.evidence_mode == "pretrained", _evidence, "pretrained evidence"),
    "workers": (lambda c: c.evidence_mode == "pretrained", _evidence, "pretrained evidence"),
    "chunk_size": (lambda c: c.evidence_mode == "pretrained", _evidence, "pretrained evidence"),
    "image_size": (lambda c: c.evidence_mode != "features", _evidence, "runs that decode images (not --features)"),
    "clip_model": (lambda c: c.space == "clip", lambda c: f"to --encoder {c.space}", "--encoder clip"),
    "generator": (lambda c: c.generator is not None, _generator, "--generate"),
    "per_class": (lambda c: c.generator is not None, _generator, "--generate"),
    "generator_options.model": (lambda c: c.generator == "diffusers", _generator, "--generate --generator diffusers"),
    "generator_options.templates": (lambda c: c.generator == "diffusers", _generator,
                                    "--generate --generator diffusers"),
    "generator_options.root": (lambda c: c.generator == "folder", _generator, "--generate --generator folder"),
    **{option: _refiner_rule(option) for option in ("alpha", "threshold", "calibrate", "target_precision",
                                                     "on_model_check_failure", "neighbor_graph",
                                                     "neighbor_recall")},
    **{option: (lambda c: c.evidence.tuning == "finetune", lambda c: f"with --evidence {c.evidence.tuning}",
                FINETUNE_APPLIES) for option in FINETUNE_FLAGS},
}


def option_applies(config: RefineRunConfig, option: str) -> bool:
    """Whether the config field ``option`` (or ``generator_options.<key>``) is used by ``config``'s run."""
    if option == "rounds":
        return config.evidence_mode != "classifier" and "rounds" in refiner_used_options(config.refiner.name)
    rule = RULES.get(option)
    return rule is None or rule[0](config)


def check_options_apply(config: RefineRunConfig, given: Mapping[str, str]) -> None:
    """InputError naming the first option of ``given`` (config field -> the flag the user wrote)
    that ``config``'s run does not use, and what it applies to."""
    for option, flag in given.items():
        if option_applies(config, option):
            continue
        if option == "rounds":
            users = refiners_using("rounds")
            why = ("with --classifier (a saved classifier is not refit)" if config.evidence_mode == "classifier"
                   else f"to --refiner {config.refiner.name}")
            raise InputError(f"{flag} does not apply {why}; it applies to --refiner {' / '.join(users)} with "
                             "pretrained evidence or --train")
        _, why, where = RULES[option]
        raise InputError(f"{flag} does not apply {why(config)}; it applies to {where}")


def refine_config(values: Mapping[str, Any], given: Optional[Mapping[str, str]] = None) -> RefineRunConfig:
    """The :class:`RefineRunConfig` of the options a user set (``values``: option -> value, the
    command line's flat vocabulary: ``train``, ``epochs``, ``alpha``, ...; the defaults fill the
    rest), checked by :func:`check_options_apply` against ``given`` (option or
    ``generator_options.<key>`` -> the flag, for every option set, including those that did not
    become a value; default: every option of ``values``, named ``--option``)."""
    unknown: List[str] = sorted(set(unknown_options(RefineRunConfig, values)) - set(FLAT_OPTIONS) - {"refiner"})
    if unknown:
        raise InputError(f"{RefineRunConfig.config_name}: unknown option(s) {', '.join(unknown)}")
    if given is None:
        given = {name: "--" + name.replace("_", "-") for name in values}
    config = RefineRunConfig.from_dict(dict(values))
    check_options_apply(config, given)
    return config
