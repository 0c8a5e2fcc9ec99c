"""Streaming feature extraction from disk, the distributed chunk cache, and ``synref features``
(including a real two-process ``accelerate launch`` on the CPU)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import synref.data.stream as stream_mod
import synref.features.cache as F
from synref.cli import main
from synref.data import load_image_folder, materialize
from synref.errors import InputError
from synref.features import (FeatureExtractor, cached_features, compute_features, create_extractor,
                             extract_features_distributed)
from synref.models import save_classifier
from synref.models import create_model

from cli_helpers import assert_one_line_error


def _folder(root: Path, per_class=7, hw=(10, 12), classes=("cat", "dog"), seed=0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 256, hw + (3,), dtype=np.uint8)).save(root / c / f"{k:03d}.png")
    return root


def _model(in_channels=3):
    import torch

    torch.manual_seed(0)
    return create_model("small_cnn", num_classes=2, in_channels=in_channels).eval()


class _Mean(FeatureExtractor):
    """numpy-only (thread-safe) extractor: per-image mean and max."""

    name = "mean"

    def fingerprint(self):
        return "mean-1"

    def _extract(self, images, *, batch_size):
        x = images.reshape(len(images), -1).astype(np.float32)
        return np.stack([x.mean(1), x.max(1)], 1)


# --------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_equals_materialized(tmp_path, monkeypatch, workers):
    ds = load_image_folder(_folder(tmp_path / "data"))
    assert ds.is_path_backed
    ex = create_extractor("classifier", model=_model())
    arr = materialize(ds).images            # reference, decoded before patching

    def no_materialize(*a, **k):
        raise AssertionError("the whole set was materialized")

    monkeypatch.setattr(F, "materialize", no_materialize)
    got = cached_features(ex, ds, cache_dir=tmp_path / "c", batch_size=4, chunk_size=8,
                          num_workers=workers)
    np.testing.assert_array_equal(got, ex.extract(arr, batch_size=4))
    side = json.loads(next((tmp_path / "c").glob("*.json")).read_text())
    assert side["image_size"] == [10, 12] and side["channels"] == 3 and side["skipped"] == []
    assert [c["chunk"] for c in side["chunks"]] == [0, 1]

    # an explicit working size: same as materialize at that size; a separate cache entry
    monkeypatch.undo()
    small = materialize(ds, size=(16, 16)).images
    monkeypatch.setattr(F, "materialize", no_materialize)
    got16 = cached_features(ex, ds, cache_dir=tmp_path / "c", batch_size=4, chunk_size=8,
                            size=(16, 16), num_workers=workers)
    np.testing.assert_array_equal(got16, ex.extract(small, batch_size=4))
    assert len(list((tmp_path / "c").glob("*.npy"))) == 2


def test_decoded_images_alive_are_bounded(tmp_path, monkeypatch):
    ds = load_image_folder(_folder(tmp_path / "data", per_class=20))
    lock = threading.Lock()
    state = {"decoded": 0, "consumed": 0, "max_ahead": 0, "batches": []}
    real = stream_mod.decode_file

    def counting(path, size, channels):
        out = real(path, size, channels)
        with lock:
            state["decoded"] += 1
            state["max_ahead"] = max(state["max_ahead"], state["decoded"] - state["consumed"])
        return out

    class Watching(_Mean):
        def _extract(self, images, *, batch_size):
            with lock:
                state["consumed"] += len(images)
            state["batches"].append(len(images))
            return super()._extract(images, batch_size=batch_size)

    monkeypatch.setattr(stream_mod, "decode_file", counting)
    got = cached_features(Watching(), ds, cache_dir=tmp_path / "c", batch_size=3, chunk_size=12,
                          num_workers=2)
    assert got.shape == (40, 2) and state["decoded"] == 40
    assert max(state["batches"]) <= 3
    assert state["max_ahead"] <= 3 * 3        # current batch + 2 prefetched, never the whole set


def test_corrupt_file_raises_or_is_skipped(tmp_path):
    root = _folder(tmp_path / "data", per_class=5)
    good = (root / "cat" / "001.png").read_bytes()
    (root / "cat" / "002.png").write_bytes(good[: len(good) // 2])      # truncated: header ok
    (root / "dog" / "003.png").write_bytes(b"not an image at all")        # unreadable header
    ds = load_image_folder(root)
    ex = _Mean()
    with pytest.raises(InputError, match="cat/002.png"):       # found reading headers (auto size)
        cached_features(ex, ds, cache_dir=tmp_path / "c")
    with pytest.raises(InputError, match="cat/002.png"):       # found decoding (size given)
        cached_features(ex, ds, cache_dir=tmp_path / "c", size=(10, 12), channels=3)

    got, skipped = compute_features(ex, ds, cache_dir=tmp_path / "c2", chunk_size=4, batch_size=2,
                                    skip_bad=True)
    bad = {2: "cat/002.png", 8: "dog/003.png"}
    assert [s["index"] for s in skipped] == sorted(bad)
    assert all(s["file"].endswith(bad[s["index"]]) and s["reason"] for s in skipped)
    assert not got[sorted(bad)].any()
    keep = [i for i in range(len(ds)) if i not in bad]
    ref = ex.extract(materialize(ds.subset(keep)).images)
    np.testing.assert_array_equal(got[keep], ref)
    side = json.loads(next((tmp_path / "c2").glob("*.json")).read_text())
    assert [s["index"] for s in side["skipped"]] == sorted(bad)
    again = compute_features(ex, ds, cache_dir=tmp_path / "c2", chunk_size=4, batch_size=2,
                             skip_bad=True).skipped          # a cache hit reports them too
    assert again == skipped


def _run_ranks(world, fn):
    barrier = threading.Barrier(world, timeout=60)
    results, errors = [None] * world, [None] * world

    def work(rank):
        try:
            results[rank] = fn(rank, barrier.wait)
        except BaseException as exc:  # noqa: BLE001
            errors[rank] = exc

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results, errors


def test_distributed_chunks_threads_resume_and_errors(tmp_path):
    ds = load_image_folder(_folder(tmp_path / "data", per_class=9))
    ex = _Mean()
    ref = ex.extract(materialize(ds).images)
    out = tmp_path / "f" / "features.npy"
    # a previous run left chunk 1 behind: it must not be recomputed
    part = Path(str(out) + ".partial")
    F.write_json(part / "meta.json", {"n": 18, "chunk_size": 4, "fingerprint": "mean-1",
                                      "dataset_key": None, "cache": {
                                          "fingerprint": "mean-1", "n": 18,
                                          "images": F.images_hash(ds), "size": None,
                                          "channels": None}})
    F.write_npy(part / "chunk-000001.npy", ref[4:8])
    results, errors = _run_ranks(3, lambda rank, wait: extract_features_distributed(
        ex, ds, path=out, process_index=rank, num_processes=3, barrier=wait, chunk_size=4,
        batch_size=2))
    assert errors == [None] * 3, errors
    for r in results:
        np.testing.assert_array_equal(r, ref)
    side = json.loads(out.with_suffix(".json").read_text())
    assert [(c["chunk"], c["rank"]) for c in side["chunks"]] == [(0, 0), (2, 2), (3, 0), (4, 1)]
    assert side["num_processes"] == 3 and not part.exists()

    # an unreadable file in rank 1's chunk: every rank raises, none hangs
    (Path(ds.paths[5])).write_bytes(b"garbage")
    results, errors = _run_ranks(2, lambda rank, wait: extract_features_distributed(
        ex, ds, path=tmp_path / "g" / "features.npy", process_index=rank, num_processes=2,
        barrier=wait, chunk_size=4, size=(10, 12), channels=3))
    assert all(isinstance(e, InputError) and "cat/005.png" in str(e) for e in errors), errors


# --------------------------------------------------------------------------- CLI
@pytest.fixture()
def checkpoint(tmp_path):
    path = tmp_path / "clf.pt"
    save_classifier(_model(), path, name="small_cnn")
    return path


@pytest.mark.parametrize("extra, needles", [
    (["--extractor", "classifier"], ["needs --checkpoint"]),
    (["--extractor", "classifier", "--checkpoint", "CKPT", "--clip-model", "x"],
     ["--clip-model does not apply"]),
    (["--extractor", "classifier", "--checkpoint", "missing.pt"], ["checkpoint not found"]),
    (["--extractor", "classifier", "--checkpoint", "CKPT", "--batch-size", "0"],
     ["--batch-size must be an integer >= 1"]),
    (["--extractor", "nope"], ["invalid choice: 'nope'"]),
    (["--extractor", "classifier", "--checkpoint", "CKPT", "--data", "no/such/dir"],
     ["dataset not found"]),
    (["--extractor", "classifier", "--checkpoint", "CKPT", "CORRUPT"], ["cat/004.png"]),
])
def test_features_cli_bad_input(tmp_path, capsys, checkpoint, extra, needles):
    data = _folder(tmp_path / "data", per_class=5)
    if "CORRUPT" in extra:
        (data / "cat" / "004.png").write_bytes(b"garbage")
        extra = [e for e in extra if e != "CORRUPT"]
    extra = [str(checkpoint) if e == "CKPT" else e for e in extra]
    args = ["features", "--out", str(tmp_path / "out"), "--quiet"]
    if "--data" not in extra:
        args += ["--data", str(data)]
    code = main(args + extra)
    captured = capsys.readouterr()
    assert_one_line_error(code, captured.err, *needles)
    assert not (tmp_path / "out" / "features.npy").exists()


def test_features_cli_skip_bad_and_resume(tmp_path, capsys, checkpoint):
    data = _folder(tmp_path / "data", per_class=5)
    (data / "dog" / "000.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    args = ["features", "--data", str(data), "--extractor", "classifier", "--checkpoint",
            str(checkpoint), "--image-size", "16", "--batch-size", "4", "--chunk-size", "4",
            "--skip-bad", "--out", str(out), "--quiet"]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "wrote" in stdout and "10 x 128" in stdout and "1 unreadable" in stdout
    feats = np.load(out / "features.npy")
    assert not feats[5].any() and feats[:5].any()
    side = json.loads((out / "features.json").read_text())
    assert side["image_size"] == [16, 16] and side["skipped"][0]["file"].endswith("dog/000.png")
    assert (out / "ids.txt").read_text().splitlines()[5] == "dog/000.png"
    assert np.load(out / "labels.npy").tolist() == [0] * 5 + [1] * 5
    before = (out / "features.npy").stat().st_mtime_ns
    assert main(args) == 0                              # the same command: a cache hit
    assert (out / "features.npy").stat().st_mtime_ns == before


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_cpu_processes(tmp_path, checkpoint):
    """``accelerate launch --multi_gpu --num_processes 2 -m synref features`` on the CPU (gloo):
    the same features as one process, every chunk computed exactly once, by rank k % 2."""
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("accelerate launcher not installed")
    data = _folder(tmp_path / "data", per_class=9, hw=(14, 14))
    env = dict(os.environ, HF_HUB_OFFLINE="1", SYNREF_NO_PROGRESS="1", ACCELERATE_USE_CPU="1",
               OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"), CUDA_VISIBLE_DEVICES="")
    feature_args = ["features", "--data", str(data), "--extractor", "classifier", "--checkpoint",
                    str(checkpoint), "--image-size", "16", "--batch-size", "2", "--chunk-size", "4",
                    "--workers", "2"]
    two = tmp_path / "two"
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "synref", *feature_args, "--out", str(two)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("wrote") == 1 and "on 2 processes" in proc.stdout, proc.stdout
    one = tmp_path / "one"
    proc1 = subprocess.run([sys.executable, "-m", "synref", *feature_args, "--out", str(one)],
                           capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc1.returncode == 0, proc1.stderr
    f2, f1 = np.load(two / "features.npy"), np.load(one / "features.npy")
    assert f2.shape == (18, 128)
    np.testing.assert_array_equal(f2, f1)
    side = json.loads((two / "features.json").read_text())
    assert side["num_processes"] == 2
    assert [(c["chunk"], c["rank"]) for c in side["chunks"]] == [(k, k % 2) for k in range(5)]
    assert sorted(p.name for p in two.iterdir()) == ["features.json", "features.npy", "ids.txt",
                                                     "labels.npy"]
