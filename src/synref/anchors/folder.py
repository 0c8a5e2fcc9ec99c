"""``folder``: anchors a user already has, one sub-folder per class.

``root/<class name>/**/<image>``: the sub-folder names must be exactly the requested class
names. Image ``k`` of a class is its ``k``-th image file in sorted order (relative POSIX paths,
recursively, hidden files and folders skipped; the extensions of
:data:`synref.data.IMAGE_EXTENSIONS`). Images decode to uint8 RGB; ``size`` resizes them, and
without it every image must have the same size.

>>> gen = create_generator("folder", root="my_anchors", size=64)          # doctest: +SKIP
>>> gen.generate(["cat", "dog"], per_class=20)                            # doctest: +SKIP
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.decode import decode_image, is_image_file, probe_image
from ..errors import InputError
from ..validation import check_size
from .base import GENERATORS, AnchorGenerator, Size


def _short(names: Sequence[str], limit: int = 8) -> str:
    text = ", ".join(repr(n) for n in list(names)[:limit])
    return text + (f", ... ({len(names)} in all)" if len(names) > limit else "")


@GENERATORS.register("folder")
class FolderGenerator(AnchorGenerator):
    """Reads anchors from ``root/<class name>/``.

    Args:
        root: folder with one sub-folder per class (folder name = class name).
        size: resize every image to this int or ``(H, W)``; None keeps the images' own size,
            which must then be the same for all of them.
    """

    name = "folder"

    def __init__(self, *, root: str, size: Optional[Size] = None) -> None:
        if root is None or not str(root).strip():
            raise InputError("folder: give root, the folder with one sub-folder per class")
        self.root = Path(os.path.expanduser(str(root))).resolve()
        if not self.root.is_dir():
            raise InputError(f"folder: anchor folder not found: {self.root}")
        self.size: Optional[Tuple[int, int]] = None if size is None else check_size(size)
        self._files: Dict[str, List[Path]] = {}
        self._checked: set = set()

    def config(self) -> Dict[str, Any]:
        return {"root": str(self.root), "size": self.size}

    def describe(self, class_index: int, class_name: str, k: int, seed: int = 0) -> Dict[str, Any]:
        files = self.files(class_name)
        source = files[k].relative_to(self.root).as_posix() if k < len(files) else None
        return {"generator": self.name, "source": source,
                "root": str(self.root), "size": self.size}

    # ------------------------------------------------------------------ files
    def class_folders(self) -> List[str]:
        try:
            return sorted(p.name for p in self.root.iterdir()
                          if p.is_dir() and not p.name.startswith("."))
        except OSError as exc:
            raise InputError(f"folder: cannot read {self.root}: {exc}") from None

    def files(self, class_name: str) -> List[Path]:
        """The image files of a class, sorted (the k-th is image k)."""
        files = self._files.get(class_name)
        if files is None:
            folder = self.root / class_name
            if not folder.is_dir():
                raise InputError(f"folder: no sub-folder {class_name!r} in {self.root}")
            found: List[str] = []
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel = Path(dirpath).relative_to(folder)
                found.extend((rel / f).as_posix() for f in filenames if is_image_file(f))
            files = [folder / rel for rel in sorted(found)]
            self._files[class_name] = files
        return files

    def available(self, class_name: str) -> int:
        """How many images class ``class_name`` has."""
        return len(self.files(class_name))

    def prepare(self, class_names: Sequence[str]) -> None:
        """Class folders must match ``class_names`` exactly; without ``size`` all images must
        have one size."""
        key = tuple(class_names)
        if key in self._checked:
            return
        present = self.class_folders()
        missing = [n for n in class_names if n not in present]
        extra = [n for n in present if n not in class_names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing class folders: {_short(missing)}")
            if extra:
                parts.append(f"folders of classes not requested: {_short(extra)}")
            raise InputError(f"folder: {self.root} does not match the class list ({'; '.join(parts)})")
        for name in class_names:
            if not self.files(name):
                raise InputError(f"folder: class folder {self.root / name} has no images")
        if self.size is None:
            sizes: Counter = Counter()
            example: Dict[Tuple[int, int], Path] = {}
            for name in class_names:
                for path in self.files(name):
                    _, hw = probe_image(str(path))
                    sizes[hw] += 1
                    example.setdefault(hw, path)
            if len(sizes) > 1:
                (a, _), (b, _) = sizes.most_common(2)
                raise InputError(
                    f"folder: images in {self.root} differ in size ({a[0]}x{a[1]} in "
                    f"{example[a]}, {b[0]}x{b[1]} in {example[b]}); pass size")
        self._checked.add(key)

    # ------------------------------------------------------------------ one image
    def generate_one(self, class_index: int, class_name: str, k: int, seed: int = 0) -> np.ndarray:
        """uint8 ``(H, W, 3)``: the k-th image of the class folder (``seed`` is unused)."""
        files = self.files(class_name)
        if k >= len(files):
            raise InputError(f"folder: class {class_name!r} has {len(files)} images in "
                             f"{self.root / class_name}, fewer than the {k + 1} requested")
        return decode_image(str(files[k]), self.size, 3)
