"""Tiny random-weight ``transformers`` vision backbones, built offline, for tests of the ``hf:``
feature space.

``build_tiny_hf(path, arch)`` saves a model (``save_pretrained``: config.json + model.safetensors)
and its image processor (``preprocessor_config.json``) into ``path``, so the folder loads with
``AutoModel`` / ``AutoImageProcessor`` like a hub snapshot. Architectures (:data:`TINY_ARCHS`):
``dinov2`` (BitImageProcessor: shortest edge 36, crop 32), ``vit`` (ViTImageProcessor: 32 x 32),
``clip-vision`` (CLIPImageProcessor), ``convnext`` (ConvNextImageProcessor: crop_pct), ``siglip-vision``
(SiglipImageProcessor), ``clip`` (the joint image-text CLIPModel: image embeddings),
``vit-classifier`` (ViTForImageClassification: a checkpoint without the ViT pooler). Each is
32 px, 2 layers, a few kB.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Union

TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                image_size=32, patch_size=8)
TINY_ARCHS = ("dinov2", "vit", "clip-vision", "convnext", "siglip-vision", "clip", "vit-classifier")


def _parts(arch: str) -> Any:
    import transformers as T

    pil = lambda name: getattr(T, f"{name}Pil", None) or getattr(T, name)  # noqa: E731 - 5.x PIL class / 4.x slow
    if arch == "dinov2":
        return T.Dinov2Model(T.Dinov2Config(**TINY_VIT)), pil("BitImageProcessor")(
            size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    if arch == "vit":
        return T.ViTModel(T.ViTConfig(**TINY_VIT)), pil("ViTImageProcessor")(size={"height": 32, "width": 32})
    if arch == "vit-classifier":
        return (T.ViTForImageClassification(T.ViTConfig(**TINY_VIT, num_labels=3)),
                pil("ViTImageProcessor")(size={"height": 32, "width": 32}))
    if arch == "clip-vision":
        return T.CLIPVisionModel(T.CLIPVisionConfig(**TINY_VIT, projection_dim=16)), pil("CLIPImageProcessor")(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    if arch == "clip":
        text = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        config = T.CLIPConfig(text_config=text, vision_config=TINY_VIT, projection_dim=16)
        return T.CLIPModel(config), pil("CLIPImageProcessor")(size={"shortest_edge": 32},
                                                              crop_size={"height": 32, "width": 32})
    if arch == "convnext":
        config = T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32)
        return T.ConvNextModel(config), pil("ConvNextImageProcessor")(size={"shortest_edge": 32})
    if arch == "siglip-vision":
        return T.SiglipVisionModel(T.SiglipVisionConfig(**TINY_VIT)), pil("SiglipImageProcessor")(
            size={"height": 32, "width": 32})
    raise ValueError(f"unknown tiny architecture {arch!r}; one of {TINY_ARCHS}")


def fill_hub_cache(cache: Union[str, os.PathLike], repo_id: str, folder: Union[str, os.PathLike]) -> Path:
    """Put the files of ``folder`` into a Hugging Face hub cache at ``cache`` as ``repo_id``
    (blobs named by their sha256, a snapshot of symlinks, refs/main), as ``hf download`` leaves
    them; returns the snapshot folder."""
    import hashlib

    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    rev = "0" * 40
    snap = repo / "snapshots" / rev
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    for f in Path(folder).iterdir():
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    return snap


def build_tiny_hf(path: Union[str, os.PathLike], arch: str, *, seed: int = 0,
                  processor: Union[Dict[str, Any], None] = None) -> Path:
    """Save the tiny ``arch`` model (weights drawn with ``seed``) and its image processor (its
    attributes overridden by ``processor``, e.g. ``{"image_mean": [0, 0, 0]}``) into ``path``."""
    import torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, proc = _parts(arch)
    for key, value in (processor or {}).items():
        setattr(proc, key, value)
    model.eval().save_pretrained(path)
    proc.save_pretrained(path)
    return path
