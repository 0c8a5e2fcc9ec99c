"""Tiny random-weight models for offline tests (nothing is downloaded).

``build_tiny_sdxl_pipeline(path)`` saves an SDXL-shaped ``StableDiffusionXLPipeline`` (two CLIP
text encoders, a ``text_time`` UNet, a 2-level VAE, an Euler scheduler with "trailing"
timesteps as SDXL-Turbo uses) with ``save_pretrained``, so tests can exercise the real
``AutoPipelineForText2Image.from_pretrained(path)`` loading path. The configs follow the shapes
of diffusers' own SDXL fast tests (``get_dummy_components``); the CLIP tokenizers are built
in memory from a byte-level vocabulary, no hub download.

Import from a test with::

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import build_tiny_sdxl_pipeline

The saved folder is ~5 MB (4 MB of it the fp32 UNet); images come out at ``size`` (any
multiple of 8; 32 or 64 is fast); the VAE downsamples by 2 (latents are ``size / 2``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

#: Tokens of the tiny CLIP vocabulary (see :func:`tiny_clip_vocab`).
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
#: The dimension both tiny text encoders produce (= UNet cross_attention_dim / 2 per encoder).
TEXT_HIDDEN = 32


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tiny_clip_vocab() -> Tuple[Dict[str, int], List[str]]:
    """A complete byte-level CLIP BPE vocabulary without learned merges except a handful.

    ``<|startoftext|>`` = 0, ``<|endoftext|>`` = 1, then every byte symbol alone and with the
    end-of-word suffix ``</w>`` (so any text tokenizes, one token per character), then a few
    merged tokens ("th", "the</w>", "a</w>" ...). 520 tokens in all.
    """
    chars = list(_bytes_to_unicode().values())
    vocab: Dict[str, int] = {BOS: 0, EOS: 1}
    for ch in chars:
        vocab[ch] = len(vocab)
    for ch in chars:
        vocab[ch + "</w>"] = len(vocab)
    merges = ["t h", "th e</w>", "o f</w>", "p h", "ph o", "pho t", "phot o</w>"]
    for m in merges:
        a, b = m.split(" ")
        vocab.setdefault(a + b, len(vocab))
    return vocab, merges


def build_tiny_clip_tokenizer(model_max_length: int = 77):
    """A ``CLIPTokenizer`` over :func:`tiny_clip_vocab`, built offline."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_clip_vocab()
    try:  # transformers >= 5: tokenizers-backed, takes the vocab in memory
        return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    except TypeError:  # pragma: no cover - transformers 4.x: vocab/merges files
        import json
        import tempfile

        tmp = tempfile.mkdtemp(prefix="tiny-clip-tok-")
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as fh:
            json.dump(vocab, fh)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as fh:
            fh.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"),
                             model_max_length=model_max_length)


def tiny_sdxl_components(seed: int = 0) -> Dict[str, Any]:
    """The components of a tiny random-weight SDXL pipeline (deterministic in ``seed``)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tiny_clip_tokenizer()
    vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        # 6 micro-conditioning ids * addition_time_embed_dim + text_encoder_2's projection_dim
        projection_class_embeddings_input_dim=6 * 8 + TEXT_HIDDEN,
        # text_encoder (32) and text_encoder_2 (32) hidden states are concatenated
        cross_attention_dim=2 * TEXT_HIDDEN,
        norm_num_groups=8,
    )
    # SDXL-Turbo ships EulerAncestral with "trailing" spacing; plain Euler is deterministic
    # given the initial latents, which makes the batch-invariance checks sharper.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="trailing", prediction_type="epsilon",
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[16, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    text_config = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=TEXT_HIDDEN, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab_size,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=TEXT_HIDDEN,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config))
    return {
        "unet": unet, "scheduler": scheduler, "vae": vae,
        "text_encoder": text_encoder, "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2, "tokenizer_2": build_tiny_clip_tokenizer(),
        "image_encoder": None, "feature_extractor": None,
    }


def build_tiny_sdxl_pipeline(path: Union[str, os.PathLike], seed: int = 0) -> Path:
    """Save a tiny random-weight ``StableDiffusionXLPipeline`` to ``path`` and return it.

    Loadable offline with ``AutoPipelineForText2Image.from_pretrained(path)``; ~5 MB.
    """
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(seed))
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(path))
    return path


def dir_size(path: Union[str, os.PathLike]) -> int:
    """Bytes under ``path`` (for checking the tiny pipeline stays tiny)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
