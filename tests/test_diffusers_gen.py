"""The ``diffusers`` text-to-image anchor generator, on a tiny random-weight SDXL pipeline.

Everything runs offline: the pipeline is built from configs (tests/tiny_models.py), saved with
``save_pretrained`` and loaded through the real ``AutoPipelineForText2Image.from_pretrained``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import build_tiny_sdxl_pipeline, dir_size  # noqa: E402

from synref.anchors.base import GENERATORS, create_generator  # noqa: E402
from synref.anchors.diffusers_gen import (DiffusersGenerator, OutOfMemoryError,  # noqa: E402
                                          image_seed, is_oom_error)
from synref.anchors.prompts import (PromptSpec, category_text,  # noqa: E402
                                    load_class_prompts)
from synref.errors import InputError, SynrefError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = 32
CLASSES = ["cat", "pickup_truck"]


@pytest.fixture(scope="module", autouse=True)
def offline():
    """No hub access in this module: env var and the already-imported hub constant.

    Also one torch thread: the tiny pipeline's ops are too small to gain from two, and on a
    busy 2-core machine OpenMP's spinning threads make each call 2-100x slower.
    """
    import huggingface_hub.constants as hub_constants

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_HUB_OFFLINE", "1")
            mp.setenv("SYNREF_NO_PROGRESS", "1")
            mp.setattr(hub_constants, "HF_HUB_OFFLINE", True)
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, offline):
    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl"))


def make(tiny_dir, **kw):
    opts = dict(model=str(tiny_dir), size=SIZE, steps=1, batch_size=3, device="cpu")
    opts.update(kw)
    return DiffusersGenerator(**opts)


@pytest.fixture(scope="module")
def reference(tiny_dir):
    """2 classes x 3 images at batch size 3 (one pipeline call per class)."""
    gen = make(tiny_dir)
    return gen, gen.generate(CLASSES, per_class=3, seed=0)


def assert_batch_equivalent(a: np.ndarray, b: np.ndarray) -> None:
    """Same image up to float rounding: the per-image noise is identical, but CPU kernels sum
    in a batch-size-dependent order, so a few pixels may round to the neighbouring uint8."""
    assert a.shape == b.shape
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.01


# ---------------------------------------------------------------------- the tiny pipeline
def test_tiny_pipeline_is_small_and_sdxl(tiny_dir):
    assert dir_size(tiny_dir) < 8_000_000
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    for part in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                 "scheduler"):
        assert (tiny_dir / part).is_dir()


def test_registered_and_created_by_name(tiny_dir):
    assert "diffusers" in GENERATORS.names()
    gen = create_generator("diffusers", model=str(tiny_dir), size=SIZE, device="cpu")
    assert isinstance(gen, DiffusersGenerator)
    with pytest.raises(InputError, match="no option 'sizes'"):
        create_generator("diffusers", sizes=32)


def test_defaults_follow_the_paper():
    gen = DiffusersGenerator(device="cpu")  # lazy: nothing is loaded
    cfg = gen.config()
    assert cfg["model"] == "stabilityai/sdxl-turbo"
    assert (cfg["steps"], cfg["guidance"], cfg["size"]) == (1, 0.0, (512, 512))
    assert cfg["templates"] == ["A photo of {category}."]
    assert cfg["dtype"] == "float32" and cfg["device"] == "cpu"
    assert gen._pipe is None


# ---------------------------------------------------------------------- images
def test_generate_shapes_and_ids(reference):
    gen, anchors = reference
    assert anchors.images.shape == (6, SIZE, SIZE, 3)
    assert anchors.images.dtype == np.uint8
    assert anchors.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert anchors.ids[0] == "diffusers-cat-0" and anchors.ids[-1] == "diffusers-pickup_truck-2"
    assert anchors.images.std() > 1  # not blank
    # different k (and classes) give different images
    flat = anchors.images.reshape(6, -1)
    assert all(not np.array_equal(flat[i], flat[j]) for i in range(6) for j in range(i))


def test_deterministic(reference, tiny_dir):
    _, anchors = reference
    again = make(tiny_dir).generate(CLASSES, per_class=3, seed=0)
    np.testing.assert_array_equal(again.images, anchors.images)
    other = make(tiny_dir).generate_one(0, "cat", 0, seed=1)
    assert not np.array_equal(other, anchors.images[0])
    two_steps = make(tiny_dir, steps=2)
    np.testing.assert_array_equal(two_steps.generate_one(0, "cat", 1, seed=3),
                                  two_steps.generate_one(0, "cat", 1, seed=3))


def test_batch_size_does_not_change_images(reference, tiny_dir):
    _, anchors = reference
    one = make(tiny_dir, batch_size=1).generate_batch([(1, "pickup_truck", k) for k in range(3)])
    assert_batch_equivalent(np.stack(one), anchors.images[3:])
    # batch 4 spans both classes: same images as class-by-class batches
    four = make(tiny_dir, batch_size=4).generate(CLASSES, per_class=3, seed=0)
    assert_batch_equivalent(four.images, anchors.images)


def test_generate_batch_matches_generate_one(reference):
    gen, anchors = reference
    batch = gen.generate_batch([(0, "cat", 0), (0, "cat", 1), (0, "cat", 2)], seed=0)
    for k in range(3):  # same chunk as generate(): bit-identical
        np.testing.assert_array_equal(batch[k], anchors.images[k])
    single = gen.generate_one(1, "pickup_truck", 2, seed=0)
    assert single.shape == (SIZE, SIZE, 3) and single.dtype == np.uint8
    assert_batch_equivalent(single[None], anchors.images[5][None])
    assert gen.generate_batch([], seed=0) == []


def test_per_image_seed():
    s = image_seed(0, 1, 2)
    assert s == image_seed(0, 1, 2) and 0 <= s < 2 ** 63
    assert len({image_seed(0, c, k) for c in range(3) for k in range(50)}
               | {image_seed(1, 0, 0)}) == 151


def test_describe(reference):
    gen, _ = reference
    d = gen.describe(1, "pickup_truck", 2, seed=0)
    assert d["prompt"] == "A photo of pickup truck."
    assert d["image_seed"] == image_seed(0, 1, 2)
    assert d["generator"] == "diffusers" and d["steps"] == 1 and d["guidance"] == 0.0
    assert d["size"] == (SIZE, SIZE) and d["model"] == gen.model
    json.dumps(d)


def test_template_mix_and_class_prompts(tiny_dir, tmp_path):
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps({"cat": ["a tabby cat", "a black cat"]}))
    gen = make(tiny_dir, templates=["A photo of {category}.", "A drawing of a {category}."],
               class_prompts_file=str(prompts_file))
    assert [gen.describe(1, "pickup_truck", k)["prompt"] for k in range(3)] == [
        "A photo of pickup truck.", "A drawing of a pickup truck.", "A photo of pickup truck."]
    assert [gen.describe(0, "cat", k)["prompt"] for k in range(3)] == [
        "a tabby cat", "a black cat", "a tabby cat"]
    # the prompt reaches the pipeline: a different prompt, a different image
    base = make(tiny_dir).generate_one(0, "cat", 0)
    np.testing.assert_raises(AssertionError, np.testing.assert_array_equal,
                             gen.generate_one(0, "cat", 0), base)


# ---------------------------------------------------------------------- prompts
def test_prompt_spec():
    assert category_text("pickup_truck") == "pickup truck"
    assert category_text("  sea__lion ") == "sea lion"
    spec = PromptSpec(templates=["{category}", "a {category} photo"],
                      class_prompts={"dog": "a good dog"})
    assert [spec.prompt_for("big_cat", k) for k in range(3)] == [
        "big cat", "a big cat photo", "big cat"]
    assert spec.prompt_for("dog", 5) == "a good dog"
    assert PromptSpec().prompt_for("cat", 0) == "A photo of cat."


@pytest.mark.parametrize("template", ["A photo of a cat.", "A photo of {class}.",
                                      "A {category} in {place}", "A {category"])
def test_bad_template(template, tiny_dir):
    with pytest.raises(InputError) as info:
        PromptSpec(templates=[template])
    assert repr(template) in str(info.value)
    with pytest.raises(InputError):
        make(tiny_dir, templates=[template])


def test_load_class_prompts(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("# class\tprompt\ncat\tA photo of a cat, indoors.\n\ncat\ta kitten\n"
                   "pickup_truck\tA red pickup truck.\n")
    assert load_class_prompts(tsv) == {"cat": ["A photo of a cat, indoors.", "a kitten"],
                                       "pickup_truck": ["A red pickup truck."]}
    csv = tmp_path / "p.csv"
    csv.write_text('cat,A cat, sleeping.\n"dog","A dog, running."\n')
    assert load_class_prompts(csv) == {"cat": ["A cat, sleeping."], "dog": ["A dog, running."]}
    js = tmp_path / "p.json"
    js.write_text('{"cat": "A cat.", "dog": ["A dog.", "A puppy."]}')
    assert load_class_prompts(js) == {"cat": ["A cat."], "dog": ["A dog.", "A puppy."]}


@pytest.mark.parametrize("content, where", [
    ("cat\tA cat.\njust-a-class\n", "line 2"),
    ("cat\tA cat.\n\ndog\t \n", "line 3"),
    ("\tA cat.\n", "line 1"),
    ('{"cat": ""}', "'cat'"),
    ('{"cat": [1]}', "'cat'"),
    ('{"cat": ', "invalid JSON"),
])
def test_load_class_prompts_bad_rows(tmp_path, content, where):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        load_class_prompts(path)
    msg = str(info.value)
    assert str(path) in msg and where in msg and "\n" not in msg


def test_missing_prompts_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        DiffusersGenerator(class_prompts_file=str(tmp_path / "nope.json"), device="cpu")


# ---------------------------------------------------------------------- options and loading
@pytest.mark.parametrize("opts, match", [
    (dict(size=30), "multiple of 8"), (dict(steps=0), "steps"), (dict(batch_size=0), "batch_size"),
    (dict(guidance=-1.0), "guidance"), (dict(dtype="int8"), "dtype"),
    (dict(device="nonsense"), "device"),
])
def test_bad_options(opts, match):
    with pytest.raises(InputError, match=match):
        DiffusersGenerator(**opts)


def test_missing_model_offline_is_one_clear_line():
    from huggingface_hub import constants

    gen = DiffusersGenerator(model="synref-test/no-such-model", device="cpu")
    t0 = time.perf_counter()
    with pytest.raises(InputError) as info:
        gen.generate(["cat"], per_class=1)
    assert time.perf_counter() - t0 < 30  # no network retries
    msg = str(info.value)
    assert "\n" not in msg
    assert "--model" in msg and "synref-test/no-such-model" in msg
    assert str(constants.HF_HUB_CACHE) in msg and "HF_HUB_OFFLINE" in msg
    assert "save_pretrained" in msg


def test_local_dir_that_is_not_a_pipeline(tmp_path, tiny_dir):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(InputError, match=str(tmp_path)) as info:
        make(tmp_path).generate_one(0, "cat", 0)
    assert "model_index.json" in str(info.value)
    with pytest.raises(InputError, match="no such folder"):
        make(tmp_path / "missing").generate_one(0, "cat", 0)
    with pytest.raises(InputError, match="unet"):  # a component folder, not the pipeline
        make(tiny_dir / "unet").generate_one(0, "cat", 0)


# ---------------------------------------------------------------------- out of memory
class FlakyPipe:
    """Wraps a pipeline; the first ``fails`` calls raise CUDA OOM. Records batch sizes."""

    def __init__(self, pipe, fails: int, error=None) -> None:
        self.pipe, self.fails, self.calls = pipe, fails, []
        self.error = error or torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to "
                                                          "allocate 2.00 GiB")

    def __call__(self, **kwargs):
        self.calls.append(len(kwargs["prompt"]))
        if self.fails > 0:
            self.fails -= 1
            raise self.error
        return self.pipe(**kwargs)


def test_oom_is_detected():
    assert is_oom_error(torch.cuda.OutOfMemoryError("CUDA out of memory."))
    assert is_oom_error(RuntimeError("CUDA error: out of memory"))
    assert not is_oom_error(RuntimeError("shape mismatch"))
    assert not is_oom_error(ValueError("out of memory"))


def test_oom_retries_once_with_half_batches(tiny_dir):
    items = [(0, "cat", k) for k in range(4)]
    expected = make(tiny_dir, batch_size=2).generate_batch(items, seed=0)
    gen = make(tiny_dir, batch_size=4)
    gen._pipe = FlakyPipe(gen.pipeline, fails=1)
    with pytest.warns(UserWarning, match="--batch-size 2"):
        got = gen.generate_batch(items, seed=0)
    assert gen._pipe.calls == [4, 2, 2]
    for a, b in zip(got, expected):  # same halves as batch_size=2: bit-identical
        np.testing.assert_array_equal(a, b)
    # the halved batch size is kept for the rest of the run
    gen.generate_batch(items, seed=0)
    assert gen._pipe.calls[3:] == [2, 2]


def test_oom_twice_is_a_clear_error(tiny_dir):
    gen = make(tiny_dir, batch_size=4)
    gen._pipe = FlakyPipe(gen.pipeline, fails=2)
    with pytest.raises(OutOfMemoryError) as info, pytest.warns(UserWarning, match="retrying"):
        gen.generate(["cat"], per_class=4)
    assert isinstance(info.value, SynrefError)
    msg = str(info.value)
    assert "--batch-size" in msg and "out of memory" in msg and "\n" not in msg
    assert gen._pipe.calls == [4, 2]


def test_oom_at_batch_one_and_runtime_error_message(tiny_dir):
    gen = make(tiny_dir, batch_size=1)
    gen._pipe = FlakyPipe(gen.pipeline, fails=1, error=RuntimeError("CUDA out of memory."))
    with pytest.raises(OutOfMemoryError, match="already 1"):
        gen.generate_one(0, "cat", 0)
    assert gen._pipe.calls == [1]


def test_other_errors_are_not_retried(tiny_dir):
    gen = make(tiny_dir, batch_size=2)
    gen._pipe = FlakyPipe(gen.pipeline, fails=1, error=RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        gen.generate_batch([(0, "cat", 0), (0, "cat", 1)])
    assert gen._pipe.calls == [2]
