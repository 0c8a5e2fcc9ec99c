"""The ``hf:ID_OR_FOLDER`` feature space: any transformers vision backbone (tiny random models
saved with save_pretrained; nothing is downloaded: conftest.py sets HF_HUB_OFFLINE=1)."""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from synref.errors import InputError  # noqa: E402
from synref.features import (FEATURE_EXTRACTORS, ExtractorContext, HFExtractor, cached_features,  # noqa: E402
                             check_space_name, clip_preprocess, create_extractor, extractor_from_context,
                             hf_preprocess_config, is_label_free, label_free_extractors)

from cli_helpers import assert_one_line_error, run  # noqa: E402
from tiny_hf import TINY_ARCHS, build_tiny_hf, fill_hub_cache  # noqa: E402

#: what ``pooling="auto"`` picks per architecture, and the feature length of the tiny model
EXPECTED = {"dinov2": ("pooler", 32), "vit": ("pooler", 32), "clip-vision": ("pooler", 32),
            "convnext": ("pooler", 16), "siglip-vision": ("pooler", 32), "clip": ("image-embeds", 16),
            "vit-classifier": ("mean", 32)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {arch: build_tiny_hf(root / arch, arch) for arch in TINY_ARCHS}


def _images(n=5, h=40, w=30, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _processor(folder):
    import transformers

    major = int(transformers.__version__.split(".")[0])
    options = {"backend": "pil"} if major >= 5 else {"use_fast": False}
    return transformers.AutoImageProcessor.from_pretrained(str(folder), **options)


def _reference(arch, folder, images):
    """Pooled output computed directly with transformers (its own processor and model)."""
    import transformers

    pixels = torch.as_tensor(_processor(folder)(images=list(images), return_tensors="np")["pixel_values"])
    with torch.no_grad():
        if arch == "clip":
            model = transformers.CLIPModel.from_pretrained(str(folder)).eval()
            out = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        elif arch == "vit-classifier":
            model = transformers.ViTModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
            out = model(pixel_values=pixels).last_hidden_state.mean(dim=1)
        else:
            out = transformers.AutoModel.from_pretrained(str(folder)).eval()(pixel_values=pixels).pooler_output
    out = out.flatten(1).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


# --------------------------------------------------------------------------- names
def test_hf_names_resolve_through_the_one_registry(tiny):
    name = f"hf:{tiny['vit']}"
    assert name in FEATURE_EXTRACTORS and name in FEATURE_EXTRACTORS.choices()
    assert "hf:MODEL" in FEATURE_EXTRACTORS.choices() and "hf" in FEATURE_EXTRACTORS.names()
    assert FEATURE_EXTRACTORS.split(name) == ("hf", str(tiny["vit"]))
    assert FEATURE_EXTRACTORS.canonical(name) == check_space_name(name) == name
    assert FEATURE_EXTRACTORS.split("simclr") == ("ssl", None)
    assert "hf:" not in FEATURE_EXTRACTORS and "nope:x" not in FEATURE_EXTRACTORS
    for bad, needle in (("clip:x", "takes no ':' value"), ("hf:", "give a value"), ("dinov9", "unknown")):
        with pytest.raises(InputError, match=needle):
            FEATURE_EXTRACTORS.split(bad)
    with pytest.raises(InputError, match="hf:MODEL"):
        check_space_name("hf", "--encoder")
    with pytest.raises(InputError, match="given twice"):
        FEATURE_EXTRACTORS.create(name, model="other")
    ex = FEATURE_EXTRACTORS.create(name, device="cpu")
    assert isinstance(ex, HFExtractor) and ex.model_id == str(tiny["vit"])
    assert extractor_from_context(name, ExtractorContext(device="cpu")).model_id == str(tiny["vit"])
    with pytest.raises(InputError, match="needs a model"):
        extractor_from_context("hf", ExtractorContext())
    assert is_label_free(name) and "hf" not in label_free_extractors() and "clip" in label_free_extractors()
    # argparse takes hf:... where a space is chosen
    from synref.cli import build_parser

    args = build_parser().parse_args(["refine", "--data", "digits", "--generate", "--encoder", name, "--out", "o"])
    assert args.encoder == name


# --------------------------------------------------------------------------- features
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_each_architecture_gives_unit_norm_pooled_features(tiny, arch):
    x = _images()
    ex = create_extractor(f"hf:{tiny[arch]}", device="cpu")
    f = ex.extract(x, batch_size=2)
    pooling, dim = EXPECTED[arch]
    assert f.shape == (5, dim) and f.dtype == np.float32 and ex.resolved_pooling == pooling
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(f, _reference(arch, tiny[arch], x), atol=2e-5)   # = transformers, pooled
    again = create_extractor(f"hf:{tiny[arch]}", device="cpu")
    np.testing.assert_array_equal(again.extract(x, batch_size=2), f)          # deterministic
    np.testing.assert_allclose(again.extract(x, batch_size=5), f, atol=1e-5)  # batching does not matter
    assert ex.fingerprint() == again.fingerprint() and ex.fingerprint().startswith("hf-")
    described = ex.describe()
    assert described["resolved_pooling"] == pooling and described["model_type"]


@pytest.mark.parametrize("arch", ["dinov2", "vit", "clip-vision", "convnext", "siglip-vision"])
def test_preprocessing_equals_the_saved_image_processor(tiny, arch):
    from PIL import Image

    cfg = hf_preprocess_config(tiny[arch])
    proc = _processor(tiny[arch])
    for shape in [(40, 30, 3), (17, 50, 3), (32, 32, 3), (8, 8, 1), (64, 48, 1)]:
        img = _images(1, *shape, seed=sum(shape))[0]
        pil_or_arr = img if shape[-1] == 3 else Image.fromarray(img[..., 0]).convert("RGB")
        want = proc(images=[pil_or_arr], return_tensors="np")["pixel_values"]
        got = clip_preprocess(img[None], cfg).numpy()
        assert got.shape == want.shape == (1, 3, 32, 32), shape
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{arch} {shape}")


def test_a_different_mean_and_std_change_the_features_as_expected(tmp_path, tiny):
    mean, std = [0.2, 0.3, 0.4], [0.5, 0.25, 1.0]
    other = build_tiny_hf(tmp_path / "dinov2-ms", "dinov2", processor={"image_mean": mean, "image_std": std})
    x = _images()
    base = create_extractor("hf", model=str(tiny["dinov2"]), device="cpu")
    moved = create_extractor("hf", model=str(other), device="cpu")
    cfg = moved.preprocess_config()
    assert cfg["mean"] == pytest.approx(mean) and cfg["std"] == pytest.approx(std)
    assert moved.fingerprint() != base.fingerprint()                # same weights, other preprocessing
    got, before = moved.extract(x), base.extract(x)
    assert np.abs(got - before).max() > 1e-3
    # by hand: the resized, cropped pixels / 255, then (x - mean) / std, through the same model
    raw = clip_preprocess(x, {**cfg, "mean": None, "std": None})
    pixels = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    import transformers

    with torch.no_grad():
        want = transformers.AutoModel.from_pretrained(str(other)).eval()(pixel_values=pixels).pooler_output.numpy()
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=2e-5)


def test_convnext_crop_pct_and_the_input_side_follow_the_config(tmp_path, tiny):
    small = hf_preprocess_config(tiny["convnext"])          # shortest edge 32 < 384: 32 / 0.875, crop 32
    assert small["resize"] == ("shortest_edge", 36) and small["crop"] == (32, 32)
    big = build_tiny_hf(tmp_path / "convnext-400", "convnext", processor={"size": {"shortest_edge": 400}})
    cfg = hf_preprocess_config(big)                           # 400 >= 384: a square warp, no crop
    assert cfg["resize"] == ("exact", (400, 400)) and cfg["crop"] is None
    ex = create_extractor("hf", model=str(big), device="cpu")
    assert ex.input_side == 400 and ex.extract(_images(2)).shape == (2, 16)
    assert create_extractor("hf", model=str(tiny["dinov2"])).input_side == 36   # the resize target
    assert create_extractor("hf", model=str(tiny["vit"])).input_side == 32


def test_explicit_poolings(tiny):
    x = _images(3)
    cls = create_extractor("hf", model=str(tiny["dinov2"]), pooling="cls", device="cpu").extract(x)
    mean = create_extractor("hf", model=str(tiny["dinov2"]), pooling="mean", device="cpu").extract(x)
    assert cls.shape == mean.shape == (3, 32) and np.abs(cls - mean).max() > 1e-3
    conv = create_extractor("hf", model=str(tiny["convnext"]), pooling="mean", device="cpu").extract(x)
    assert conv.shape == (3, 16)       # spatial mean of the last feature map
    with pytest.raises(InputError, match="would be random"):
        create_extractor("hf", model=str(tiny["vit-classifier"]), pooling="pooler").extract(x)
    with pytest.raises(InputError, match="no image embedding"):
        create_extractor("hf", model=str(tiny["dinov2"]), pooling="image-embeds").extract(x)
    with pytest.raises(InputError, match="pooling must be one of"):
        create_extractor("hf", model=str(tiny["dinov2"]), pooling="max")


# --------------------------------------------------------------------------- cache, hub
def test_hub_cache_offline_and_a_content_addressed_fingerprint(tmp_path, tiny):
    """A hub id is found in a Hugging Face cache without network; the same files in a folder,
    or copied elsewhere, have the same fingerprint; other weights another one."""
    snap = fill_hub_cache(tmp_path / "hub", "synref-test/tiny-dinov2", tiny["dinov2"])
    hub = create_extractor("hf:synref-test/tiny-dinov2", device="cpu", cache_dir=tmp_path / "hub")
    local = create_extractor("hf", model=str(tiny["dinov2"]), device="cpu")
    copy = shutil.copytree(tiny["dinov2"], tmp_path / "copy")
    assert hub.model_dir() == snap
    assert hub.fingerprint() == local.fingerprint() == create_extractor("hf", model=str(copy)).fingerprint()
    reseeded = build_tiny_hf(tmp_path / "seed1", "dinov2", seed=1)
    assert create_extractor("hf", model=str(reseeded)).fingerprint() != local.fingerprint()
    x = _images(3, 32, 32)
    np.testing.assert_array_equal(hub.extract(x), local.extract(x))


def test_the_feature_cache_reuses_hf_features_without_loading_the_model(tmp_path, tiny, monkeypatch):
    x = _images(6)
    first = create_extractor("hf", model=str(tiny["siglip-vision"]), device="cpu")
    f1 = np.asarray(cached_features(first, x, cache_dir=tmp_path))
    second = create_extractor("hf", model=str(tiny["siglip-vision"]), device="cpu")
    monkeypatch.setattr(HFExtractor, "_load_model", lambda self: (_ for _ in ()).throw(AssertionError("loaded")))
    f2 = np.asarray(cached_features(second, x, cache_dir=tmp_path))
    np.testing.assert_array_equal(f1, f2)
    sidecar = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert sidecar["extractor"]["model"] == str(tiny["siglip-vision"]) and sidecar["shape"] == [6, 32]


# --------------------------------------------------------------------------- errors
def test_errors_are_one_line_and_name_the_model(tmp_path, tiny):
    from huggingface_hub import constants

    def error(**options):
        with pytest.raises(InputError) as err:
            ex = create_extractor("hf", device="cpu", **options)
            ex.fingerprint()
            ex.extract(_images(1))
        msg = str(err.value)
        assert "\n" not in msg
        return msg

    t0 = time.perf_counter()
    msg = error(model="synref-test/no-such-model", cache_dir=tmp_path / "hub")
    assert "no-such-model" in msg and "offline" in msg and str(tmp_path / "hub") in msg
    assert constants.HF_HUB_CACHE in error(model="synref-test/no-such-model")
    assert time.perf_counter() - t0 < 10                              # no network retries
    assert "does not exist" in error(model=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    assert "no config.json" in error(model=str(tmp_path / "empty"))
    no_proc = shutil.copytree(tiny["vit"], tmp_path / "no-proc")
    (no_proc / "preprocessor_config.json").unlink()
    assert "preprocessor_config.json" in error(model=str(no_proc))
    no_weights = shutil.copytree(tiny["vit"], tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    assert "no weights file" in error(model=str(no_weights))
    # a text model is not a vision backbone
    import transformers

    text = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=32, vocab_size=50)).save_pretrained(text)
    shutil.copy(tiny["vit"] / "preprocessor_config.json", text)
    assert "not a vision model" in error(model=str(text))
    # a processor with its own steps (PoolFormer's crop_pct resize) is refused, not approximated
    pool = shutil.copytree(tiny["vit"], tmp_path / "poolformer")
    proc_cls = getattr(transformers, "PoolFormerImageProcessorPil", None) or transformers.PoolFormerImageProcessor
    proc_cls().save_pretrained(pool)
    assert "preprocesses in its own way" in error(model=str(pool))


def test_cli_errors_for_hf_encoders(tmp_path, capsys):
    code, _, err = run(["refine", "--data", "digits", "--generate", "--encoder", "hf", "--out", tmp_path / "o"],
                       capsys)
    assert_one_line_error(code, err, "hf:MODEL")
    code, _, err = run(["features", "--data", "digits", "--extractor", f"hf:{tmp_path / 'nowhere'}",
                        "--out", tmp_path / "f"], capsys)
    assert_one_line_error(code, err, "nowhere", "does not exist")
    code, _, err = run(["refine", "--data", "digits", "--generate", "--encoder", "hf:synref-test/absent",
                        "--out", tmp_path / "o2"], capsys)
    assert_one_line_error(code, err, "synref-test/absent", "offline")


# --------------------------------------------------------------------------- end to end
def test_synref_refine_on_the_digits_with_an_hf_encoder(tmp_path, tiny, capsys):
    name = f"hf:{tiny['dinov2']}"
    code, out, err = run(["refine", "--data", "digits", "--generate", "--per-class", 10, "--encoder", name,
                          "--refiner", "paper", "--out", tmp_path / "out", "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["evidence"]["encoder"] == name and summary["evidence"]["feature_shape"] == [1797, 32]
    assert summary["features"] == name and summary["num_samples"] == 1797
    feats = np.load(tmp_path / "out" / summary["evidence"]["feature_file"])
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["evidence"]["encoder"] == name
    rows = (tmp_path / "out" / "refined_labels.csv").read_text().splitlines()
    assert len(rows) == 1 + 1797


def test_bench_on_your_own_folder_with_an_hf_encoder(tmp_path, tiny):
    """bench's own-data protocol refines in the hf space; image files are decoded at the model's
    input side (36 px: DINOv2's resize target), and the protocol records the encoder."""
    from PIL import Image

    from synref.anchors import create_generator, generate_anchor_set
    from synref.data import load_digits_dataset
    from synref.experiments.bench import run_bench

    digits = load_digits_dataset()
    rng = np.random.default_rng(0)
    clean = []
    for split, count in (("train", 20), ("test", 8)):
        for name in ("0", "1", "7"):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            idx = np.flatnonzero(digits.labels == int(name))
            for k, i in enumerate(idx[(0 if split == "train" else 20):][:count]):
                Image.fromarray(digits.images[i, :, :, 0]).save(folder / f"{k}.png")
                if split == "train":
                    clean.append(["0", "1", "7"].index(name))
    clean = np.asarray(clean)                  # the folder's order: class folders, then files, sorted
    np.save(tmp_path / "noisy.npy", np.where(rng.random(len(clean)) < 0.25, (clean + 1) % 3, clean))
    generate_anchor_set(create_generator("glyph", size=16), ["0", "1", "7"], 10, tmp_path / "anchors")
    name = f"hf:{tiny['dinov2']}"
    rows = run_bench(dataset=str(tmp_path / "data"), protocol="pretrained", out=tmp_path / "out",
                     methods="given,refine-paper", labels=str(tmp_path / "noisy.npy"),
                     anchors=str(tmp_path / "anchors"), encoder=name)
    assert {r["method"] for r in rows} == {"given", "refine-paper"}
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in rows)
    record = json.loads((tmp_path / "out" / "bench-data-pretrained.json").read_text())
    assert record["protocol"]["evidence"]["encoder"] == name
    features = sorted(p.name for p in (tmp_path / "out" / "work").rglob("*.npy"))
    assert any("-train-36x36-c3__hf-" in f for f in features)
    assert list((tmp_path / "out" / "work").rglob("hf_*-seed0.seconds.json"))   # a file-safe name


def test_compare_and_bench_protocols_take_an_encoder(tiny):
    from synref.experiments.bench import bench_config
    from synref.experiments.compare import compare_protocol

    name = f"hf:{tiny['vit']}"
    proto = compare_protocol("digits", encoder=name)
    assert proto.evidence.encoder == name and proto.name.startswith("digits-hf-") and "/" not in proto.name
    assert compare_protocol("digits", encoder="efficientnet-lite0").name == "digits-efficientnet-lite0"
    assert compare_protocol("digits").evidence.encoder == "ssl"  # trained here on the images + anchors
    with pytest.raises(InputError, match="label-free"):
        compare_protocol("digits", encoder="classifier")
    with pytest.raises(InputError, match="paper's rule"):
        bench_config(dataset="cifar10", protocol="paper", data="x", encoder=name)
    assert bench_config(dataset="digits", protocol="digits", encoder=name).protocol.evidence.encoder == name
