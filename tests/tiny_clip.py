"""A tiny random-weight CLIP vision tower, built offline, for tests of ``synref.features``.

``build_tiny_clip_vision(path)`` writes ``config.json`` + ``model.safetensors`` (through
``save_pretrained``) and a ``preprocessor_config.json`` (size 32, crop 32, CLIP mean / std), so the
directory loads with ``CLIPVisionModelWithProjection.from_pretrained(path)`` like a hub snapshot.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8, projection_dim=16, num_channels=3)


def build_tiny_clip_vision(path: Union[str, os.PathLike], *, seed: int = 0, size: int = 32,
                           crop: int = 32) -> Path:
    """Save a tiny CLIPVisionModelWithProjection (hidden 32, 2 layers, 2 heads, 32 px, patch 8,
    projection 16; weights drawn with ``seed``) and its preprocessor config into ``path``."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = CLIPVisionConfig(**TINY)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(config)
    model.eval()
    model.save_pretrained(path)
    pre = {
        "crop_size": {"height": crop, "width": crop},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "image_processor_type": "CLIPImageProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": size},
    }
    (path / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    return path


if __name__ == "__main__":  # pragma: no cover - manual helper
    import sys

    print(build_tiny_clip_vision(sys.argv[1] if len(sys.argv) > 1 else "tiny-clip"))
