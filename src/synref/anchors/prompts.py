"""Text prompts for text-to-image anchors.

The paper's prompt is ``"A photo of {category}."`` with the class name as the category. A
:class:`PromptSpec` holds one or more templates (image ``k`` uses template
``k % len(templates)``, a deterministic mix) and optional per-class prompts that override the
templates for that class (image ``k`` uses ``class_prompts[name][k % len(...)]``).

>>> spec = PromptSpec()
>>> spec.prompt_for("pickup_truck", 0)
'A photo of pickup truck.'
>>> spec = PromptSpec(templates=["A photo of {category}.", "A drawing of a {category}."])
>>> [spec.prompt_for("cat", k) for k in range(3)]
['A photo of cat.', 'A drawing of a cat.', 'A photo of cat.']
"""
from __future__ import annotations

import csv
import io
import json
import os
import string
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..errors import InputError

DEFAULT_TEMPLATE = "A photo of {category}."

PathLike = Union[str, "os.PathLike[str]"]


def category_text(class_name: str) -> str:
    """The class name as words for a prompt: ``"pickup_truck"`` -> ``"pickup truck"``.

    Underscores become spaces and runs of whitespace collapse to one space; case is kept.
    """
    return " ".join(str(class_name).replace("_", " ").split())


def validate_template(template: Any) -> str:
    """``template`` if it is a string with exactly the ``{category}`` field (possibly repeated);
    InputError naming the template otherwise (no field, other fields, bad braces)."""
    if not isinstance(template, str) or not template.strip():
        raise InputError(f"prompt template must be a non-empty string, got {template!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise InputError(f"prompt template {template!r} is malformed ({exc}); "
                         "write literal braces as {{ and }}") from None
    if "category" not in fields:
        raise InputError(f"prompt template {template!r} has no {{category}} placeholder, "
                         "e.g. 'A photo of {category}.'")
    other = sorted({f for f in fields if f != "category"})
    if other:
        raise InputError(f"prompt template {template!r} has an unknown placeholder "
                         f"{{{other[0]}}}; only {{category}} is filled in")
    return template


def _prompt_list(value: Any, where: str) -> List[str]:
    """A class's prompt(s) as a non-empty list of non-empty strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise InputError(f"{where}: expected a prompt string or a non-empty list of prompts, "
                         f"got {value!r}")
    out = []
    for p in items:
        if not isinstance(p, str) or not p.strip():
            raise InputError(f"{where}: empty or non-string prompt {p!r}")
        out.append(p.strip())
    return out


@dataclass
class PromptSpec:
    """Which prompt image ``k`` of a class gets.

    Args:
        templates: prompt templates with a ``{category}`` placeholder (filled with
            :func:`category_text` of the class name); image ``k`` uses
            ``templates[k % len(templates)]``.
        class_prompts: per-class literal prompts (a string or a list, cycled over ``k``) that
            win over the templates for that class.
    """

    templates: List[str] = field(default_factory=lambda: [DEFAULT_TEMPLATE])
    class_prompts: Dict[str, List[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        templates = self.templates
        if isinstance(templates, str):
            templates = [templates]
        if templates is None or not list(templates):
            raise InputError("prompt templates: give at least one template, "
                             "e.g. 'A photo of {category}.'")
        self.templates = [validate_template(t) for t in templates]
        if self.class_prompts is None:
            self.class_prompts = {}
        if not isinstance(self.class_prompts, Mapping):
            raise InputError(f"class_prompts must map class name -> prompt(s), "
                             f"got {type(self.class_prompts).__name__}")
        self.class_prompts = {str(k): _prompt_list(v, f"class_prompts[{k!r}]")
                              for k, v in self.class_prompts.items()}

    def prompt_for(self, class_name: str, k: int) -> str:
        """The prompt of image ``k`` (>= 0) of ``class_name``."""
        own = self.class_prompts.get(str(class_name))
        if own:
            return own[k % len(own)]
        template = self.templates[k % len(self.templates)]
        return template.format(category=category_text(class_name))

    def prompts_for(self, class_name: str, count: int) -> List[str]:
        """Prompts of images ``0 .. count-1``."""
        return [self.prompt_for(class_name, k) for k in range(count)]

    def unused_classes(self, class_names: Sequence[str]) -> List[str]:
        """Classes with own prompts that are not in ``class_names`` (likely typos)."""
        names = set(map(str, class_names))
        return sorted(c for c in self.class_prompts if c not in names)

    def to_dict(self) -> Dict[str, Any]:
        return {"templates": list(self.templates),
                "class_prompts": {k: list(v) for k, v in self.class_prompts.items()}}


def load_class_prompts(path: PathLike) -> Dict[str, List[str]]:
    """Per-class prompts from a file.

    Formats (by content, not extension):

    * JSON object ``{"class": "prompt", "other": ["prompt 1", "prompt 2"]}``;
    * text/CSV/TSV, one ``class<TAB>prompt`` or ``class,prompt`` per line (a tab wins over a
      comma; the prompt is everything after the first separator, so it may contain commas;
      CSV quoting ``"class","prompt"`` is honoured too). Repeated classes collect several prompts.
      Blank lines and lines starting with ``#`` are skipped.

    InputError names the file (and line) on a missing file or a bad row.
    """
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8-sig") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise InputError(f"class prompts file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read class prompts file {path}: {exc}") from None
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"class prompts file {path}: invalid JSON at line {exc.lineno}: "
                             f"{exc.msg}") from None
        if not isinstance(data, dict):
            raise InputError(f"class prompts file {path}: expected a JSON object "
                             f"{{\"class\": \"prompt\" or [prompts]}}, got {type(data).__name__}")
        if not data:
            raise InputError(f"class prompts file {path}: no classes")
        out: Dict[str, List[str]] = {}
        for key, val in data.items():
            if not str(key).strip():
                raise InputError(f"class prompts file {path}: empty class name")
            out[str(key)] = _prompt_list(val, f"class prompts file {path}, class {key!r}")
        return out

    out = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"class prompts file {path}, line {lineno}"
        if "\t" in line:
            name, _, prompt = line.partition("\t")
        elif "," in line:
            name, _, prompt = line.partition(",")
            if name.lstrip().startswith('"') or prompt.lstrip().startswith('"'):
                try:  # CSV quoting: "class","a prompt, with a comma"
                    row = next(csv.reader(io.StringIO(line), skipinitialspace=True))
                except (csv.Error, StopIteration) as exc:
                    raise InputError(f"{where}: {exc}") from None
                if len(row) != 2:
                    raise InputError(f"{where}: expected 2 CSV fields (class, prompt), "
                                     f"got {len(row)}")
                name, prompt = row
        else:
            raise InputError(f"{where}: expected 'class<TAB>prompt' or 'class,prompt', "
                             f"got {line.strip()!r}")
        name, prompt = name.strip(), prompt.strip()
        if not name:
            raise InputError(f"{where}: empty class name")
        if not prompt:
            raise InputError(f"{where}: class {name!r} has an empty prompt")
        out.setdefault(name, []).append(prompt)
    if not out:
        raise InputError(f"class prompts file {path}: no 'class<TAB>prompt' rows")
    return out


def build_prompt_spec(prompts: Optional[PromptSpec] = None,
                      templates: Optional[Sequence[str]] = None,
                      class_prompts_file: Optional[PathLike] = None,
                      class_prompts: Optional[Mapping[str, Any]] = None) -> PromptSpec:
    """One PromptSpec from the generator options: ``prompts`` as the base, ``templates``
    replacing its templates, file and mapping prompts added over its class prompts."""
    if prompts is not None and not isinstance(prompts, PromptSpec):
        raise InputError(f"prompts must be a PromptSpec, got {type(prompts).__name__}")
    base = prompts or PromptSpec()
    tmpl = list(base.templates) if templates is None else (
        [templates] if isinstance(templates, str) else list(templates))
    per_class: Dict[str, Any] = dict(base.class_prompts)
    if class_prompts_file is not None:
        per_class.update(load_class_prompts(class_prompts_file))
    if class_prompts:
        per_class.update(class_prompts)
    return PromptSpec(templates=tmpl, class_prompts=per_class)
