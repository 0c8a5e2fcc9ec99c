"""Hostile and careless input (issue 12): one test per row of the issue's table.

Each case ends in exit code 2 with one line naming the file or option (never advising an unsafe
load) and nothing written, or, where a user expects it (a symbolic-link loop, a named pipe), the
item is skipped and listed in summary.json. Data and models are tiny: the file runs in seconds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import synref.validation
from cli_helpers import assert_one_line_error, run
from synref.anchors import create_generator, generate_anchor_set
from synref.anchors.store import LOCK_FILE, load_anchor_set
from synref.errors import InputError
from synref.models import create_model, save_classifier

SRC = str(Path(__file__).resolve().parents[1] / "src")
GiB = 2 ** 30


# --------------------------------------------------------------------------------- helpers
def make_folder(root: Path, *, n: int = 6, size: int = 8, classes=("0", "1")) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def anchors(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("anchors") / "set"
    generate_anchor_set(create_generator("glyph", size=8), ["0", "1"], 3, out)
    return out


def refine_args(data: Path, anchors: Path, out: Path, *extra) -> list:
    return ["refine", "--data", data, "--anchors", anchors, "--train", "--epochs", "1", "--folds", "2",
            "--out", out, "--quiet", *extra]


def synref_cli(*args, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC, SYNREF_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "synref", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def listing(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------- 1: output not writable
def test_row01_unwritable_output_generate_noise_report(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, _, err = run(["generate", "--generator", "glyph", "--classes", "0,1", "--per-class", "3",
                        "--out", blocker / "sub"], capsys)
    assert_one_line_error(code, err, "--out", "afile")
    np.save(tmp_path / "l.npy", np.array([0, 1, 0, 1]))
    code, _, err = run(["noise", "hybrid", "--labels", tmp_path / "l.npy", "--kind", "uniform", "--rate", "0.3",
                        "--num-classes", "2", "--out", blocker / "noisy.npy"], capsys)
    assert_one_line_error(code, err, "--out", "afile")
    # a results folder the user may not write to (root ignores permissions: simulate the check's answer)
    results = tmp_path / "results"
    results.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == results else real_access(p, mode))
    code, _, err = run(["report", results], capsys)
    assert_one_line_error(code, err, "results", "writable")
    assert blocker.read_text() == "x" and listing(results) == []


# --------------------------------------------------------------------- 2: --out is a folder
def test_row02_noise_out_is_a_folder(tmp_path, capsys):
    np.save(tmp_path / "l.npy", np.array([0, 1, 0, 1]))
    folder = tmp_path / "outdir"
    folder.mkdir()
    code, _, err = run(["noise", "hybrid", "--labels", tmp_path / "l.npy", "--kind", "uniform", "--rate", "0.3",
                        "--num-classes", "2", "--out", folder], capsys)
    assert_one_line_error(code, err, "--out", "outdir", "folder")
    assert listing(folder) == [] and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    results = tmp_path / "res"
    (results / "report.html").mkdir(parents=True)
    code, _, err = run(["report", results], capsys)
    assert_one_line_error(code, err, "report.html", "folder")


# --------------------------------------------------------------------- 3: --data /dev/zero
def test_row03_data_is_a_device(tmp_path, capsys, anchors):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero here")
    out = tmp_path / "out"
    code, _, err = run(refine_args(Path("/dev/zero"), anchors, out), capsys)
    assert_one_line_error(code, err, "/dev/zero", "not a folder or a regular file")
    assert not out.exists()


# --------------------------------------------------------------------- 4: a named pipe
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_row04_named_pipe_is_skipped_and_listed(tmp_path, anchors):
    data = make_folder(tmp_path / "data")
    os.mkfifo(data / "1" / "pipe.png")
    out = tmp_path / "out"
    done = synref_cli(*refine_args(data, anchors, out), timeout=240)  # the old code hangs here forever
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_samples"] == 12
    assert [s["file"] for s in summary["skipped"]] == [str(data / "1" / "pipe.png")]
    assert "regular file" in summary["skipped"][0]["reason"]


# --------------------------------------------------------------------- 5: a symlink loop
def test_row05_symlink_loop_is_skipped_and_listed(tmp_path, capsys, anchors):
    data = make_folder(tmp_path / "data")
    os.symlink(".", data / "loop")
    out = tmp_path / "out"
    code, _, err = run(refine_args(data, anchors, out), capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class_names"] == ["0", "1"] and summary["num_samples"] == 12
    assert [s["file"] for s in summary["skipped"]] == [str(data / "loop")]
    assert "loop" in summary["skipped"][0]["reason"]


# --------------------------------------------------------------------- 6: --out inside --data
def test_row06_out_inside_data_is_refused(tmp_path, capsys, anchors):
    data = make_folder(tmp_path / "data")
    before = listing(data)
    code, _, err = run(refine_args(data, anchors, data / "results"), capsys)
    assert_one_line_error(code, err, "--out", "inside --data", "outside")
    assert listing(data) == before


# --------------------------------------------------------------------- 7: memory
@pytest.fixture
def memory_16gib(monkeypatch):
    """A machine with 16 GiB free, whatever runs the tests."""
    monkeypatch.setattr(synref.validation, "available_memory", lambda: 16 * GiB)


def test_row07a_huge_photos_without_image_size(tmp_path, capsys, anchors, memory_16gib):
    data = tmp_path / "photos"
    for c in ("0", "1"):
        (data / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (4000, 3000), (40 * i, 90, 200)).save(data / c / f"{i}.png")  # tiny files
    out = tmp_path / "out"
    code, _, err = run(refine_args(data, anchors, out), capsys)
    assert_one_line_error(code, err, "3000x4000", "memory", "--image-size")
    assert not out.exists()


def test_row07b_huge_image_size(tmp_path, capsys, anchors, memory_16gib):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "out"
    code, _, err = run(refine_args(data, anchors, out, "--image-size", "100000"), capsys)
    assert_one_line_error(code, err, "100000x100000", "memory", "--image-size")
    assert not out.exists()


def test_row07c_huge_per_class(tmp_path, capsys, memory_16gib):
    out = tmp_path / "set"
    code, _, err = run(["generate", "--generator", "glyph", "--classes", "0,1", "--per-class", "1000000000",
                        "--out", out], capsys)
    assert_one_line_error(code, err, "1000000000", "memory", "--per-class")
    assert not out.exists()


def test_row07d_huge_num_classes(tmp_path, capsys, memory_16gib):
    np.save(tmp_path / "l.npy", np.array([0, 1, 0, 1]))
    code, _, err = run(["noise", "hybrid", "--labels", tmp_path / "l.npy", "--kind", "uniform", "--rate", "0.3",
                        "--num-classes", "1000000000", "--out", tmp_path / "n.npy"], capsys)
    assert_one_line_error(code, err, "--num-classes 1000000000", "memory")
    assert not (tmp_path / "n.npy").exists()


def test_row07e_checkpoint_header_with_a_billion_classes(tmp_path, capsys, anchors):
    ckpt = tmp_path / "model.pt"
    save_classifier(create_model("small_cnn", num_classes=2, in_channels=3, seed=0), ckpt, name="small_cnn")
    blob = torch.load(ckpt, weights_only=True)
    header = json.loads(blob["header"])
    header["num_classes"] = 10 ** 9
    torch.save({"header": json.dumps(header), "state_dict": blob["state_dict"]}, ckpt)
    data = make_folder(tmp_path / "data")
    out = tmp_path / "out"
    code, _, err = run(["refine", "--data", data, "--anchors", anchors, "--classifier", ckpt, "--out", out,
                        "--quiet"], capsys)
    assert_one_line_error(code, err, str(ckpt), "1000000000 classes")
    assert not out.exists()


# --------------------------------------------------------------------- 8: failed generate
def test_row08_failed_generate_leaves_nothing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "set"
    code, _, err = run(["generate", "--generator", "glyph", "--classes", "0,1", "--per-class", "3",
                        "--size", "100000", "--out", out], capsys)
    assert_one_line_error(code, err, "--size")
    assert not out.exists()
    # a generator that fails on its first batch: the new set is undone, the corrected re-run works
    from synref.anchors.glyph import GlyphGenerator

    def broken(self, items, seed=0):
        raise OSError("invalid pixel size")

    with monkeypatch.context() as m:
        m.setattr(GlyphGenerator, "generate_batch", broken)
        code, _, err = run(["generate", "--generator", "glyph", "--classes", "0,1", "--per-class", "3",
                            "--size", "9", "--out", out], capsys)
    assert_one_line_error(code, err, "glyph", "invalid pixel size", "--size")
    assert not out.exists()
    code, out_text, err = run(["generate", "--generator", "glyph", "--classes", "0,1", "--per-class", "3",
                               "--size", "8", "--out", out], capsys)
    assert code == 0 and "(complete)" in out_text, err
    assert len(load_anchor_set(out)) == 6


# --------------------------------------------------------------------- 9: unsafe or absent advice
def test_row09_errors_never_advise_unsafe_loads(tmp_path, capsys, anchors):
    junk = tmp_path / "probs.npy"
    junk.write_bytes(np.random.default_rng(0).bytes(1000))
    code, _, err = run(["noise", "pmd", "--probs", junk, "--rate", "0.3", "--out", tmp_path / "n.npy"], capsys)
    assert_one_line_error(code, err, str(junk))
    assert "allow_pickle" not in err and "unsafe" not in err

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"header": "{}", "state_dict": {}, "x": Evil()}, evil)
    data = make_folder(tmp_path / "data")
    code, _, err = run(["refine", "--data", data, "--anchors", anchors, "--classifier", evil,
                        "--out", tmp_path / "o", "--quiet"], capsys)
    assert_one_line_error(code, err, str(evil), "refuses")
    assert "weights_only" not in err and "False" not in err


@pytest.mark.parametrize("args, option", [
    (["demo", "--seed", "-5"], "--seed"),
    (["bench", "--seeds", "-1", "--methods", "standard", "--noise", "pmd-0.35"], "--seeds"),
])
def test_row09_negative_seeds(tmp_path, capsys, args, option):
    out = tmp_path / "out"
    code, _, err = run(args + ["--out", out, "--quiet"], capsys)
    assert_one_line_error(code, err, option, ">= 0")
    assert "stratify" not in err and not out.exists()


def test_row09_empty_class_list(tmp_path, capsys):
    code, _, err = run(["generate", "--generator", "glyph", "--classes", "", "--per-class", "3",
                        "--out", tmp_path / "set"], capsys)
    assert_one_line_error(code, err, "--classes", "empty")
    assert "folder" not in err


# --------------------------------------------------------------------- 10: bench writes first
def test_row10_refused_bench_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["bench", "--methods", "standard", "--noise", "pmd-0.35", "--anchors", tmp_path / "none",
                        "--out", out, "--quiet"], capsys)
    assert_one_line_error(code, err, "none")
    assert not out.exists() or listing(out) == []


# --------------------------------------------------------------------- 11: 1x1 images
def test_row11_one_pixel_images_are_refused(tmp_path, capsys, anchors):
    data = tmp_path / "tiny"
    for c in ("0", "1"):
        (data / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((1, 1, 3), 40 * i, np.uint8)).save(data / c / f"{i}.png")
    out = tmp_path / "out"
    code, _, err = run(refine_args(data, anchors, out), capsys)
    assert_one_line_error(code, err, "1x1 px", "--image-size")
    assert not out.exists()


# --------------------------------------------------------------------- 12: stale temp files
def test_row12_stale_temp_files_are_removed(tmp_path, capsys, anchors):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "out"
    (out / "cache").mkdir(parents=True)
    stale = [out / ".refined_labels.csv.k3j_x9ab.tmp", out / "cache" / ".images.npy.0a1b2c3d.tmp"]
    for path in stale:
        path.write_text("half written")
    keep = out / "notes.tmp"
    keep.write_text("the user's")
    code, _, err = run(refine_args(data, anchors, out), capsys)
    assert code == 0, err
    assert not any(p.exists() for p in stale) and keep.exists()
    assert not [p for p in out.rglob(".*.tmp")]


# --------------------------------------------------------------------- 13: concurrent generate
def test_row13_concurrent_generate_waits_for_the_lock(tmp_path):
    from filelock import FileLock

    out = tmp_path / "set"
    assert synref_cli("generate", "--generator", "glyph", "--classes", "0,1", "--per-class", "3", "--size", "8",
                      "--out", out, "--quiet").returncode == 0
    lock = FileLock(str(out / LOCK_FILE))
    lock.acquire()
    env = dict(os.environ, PYTHONPATH=SRC, SYNREF_NO_PROGRESS="1")
    proc = subprocess.Popen([sys.executable, "-m", "synref", "generate", "--generator", "glyph", "--classes",
                             "0,1,2", "--per-class", "5", "--size", "8", "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()  # blocks until the run reports that it waits
        assert "waiting for another run" in line
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting: nothing was written meanwhile
        assert len(load_anchor_set(out)) == 6
    finally:
        lock.release()
    out_text, err = proc.communicate(timeout=240)
    assert proc.returncode == 2, (out_text, err)
    assert "other classes" in err and "Traceback" not in err
    assert len(load_anchor_set(out)) == 6


def test_row13_racing_generate_runs_never_exit_0_incomplete(tmp_path):
    out = tmp_path / "set"
    results = {}

    def go(per_class: int) -> None:
        results[per_class] = synref_cli("generate", "--generator", "glyph", "--classes", "0,1", "--per-class",
                                        per_class, "--size", "8", "--out", out)

    threads = [threading.Thread(target=go, args=(n,)) for n in (20, 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for per_class, done in results.items():
        if done.returncode == 0:
            assert "(complete)" in done.stdout and f"x {per_class})" in done.stdout, done.stdout
        else:
            assert done.returncode == 2 and per_class == 20 and "already holds 40" in done.stderr, done.stderr
    assert results[40].returncode == 0
    final = load_anchor_set(out)
    assert len(final) == 80 and np.bincount(final.labels).tolist() == [40, 40]


def test_row13_library_lock_is_released_and_not_foreign(tmp_path):
    out = tmp_path / "set"
    gen = create_generator("glyph", size=8)
    generate_anchor_set(gen, ["a", "b"], 2, out)
    generate_anchor_set(gen, ["a", "b"], 3, out)  # the lock file is no foreign file, and was released
    assert len(load_anchor_set(out)) == 6 and (out / LOCK_FILE).exists()
    with pytest.raises(InputError, match="other classes"):
        generate_anchor_set(gen, ["a", "c"], 3, out)


# --------------------------------------------------------------------- 14: resume inside long steps
class Killed(BaseException):
    """Stands for kill -9 right after a checkpoint (nothing of the run's own handling runs)."""


@pytest.fixture
def kill_after(monkeypatch):
    """``kill_after(n)``: the n-th checkpoint save (0 = never) is followed by a kill; returns the
    list of (loop, epoch) saved, to count the epochs a run trained."""
    from synref.train.checkpoint import LoopCheckpoint

    original = LoopCheckpoint.save

    def arm(n: int) -> list:
        saved: list = []

        def save(self, state):
            original(self, state)
            saved.append((self.path.name.split("-")[0], int(state["epoch"])))
            if len(saved) == n:
                raise Killed()

        monkeypatch.setattr(LoopCheckpoint, "save", save)
        return saved

    return arm


def _tiny_data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (32, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 3, 32)
    vx = rng.integers(0, 255, (9, 8, 8, 1), dtype=np.uint8)
    vy = rng.integers(0, 3, 9)
    return x, y, vx, vy


def _loops():
    from synref.train import (LRAConfig, PLCConfig, SSLConfig, TrainConfig, cross_fit, fine_tune, fit,
                              train_lra, train_plc, train_simclr)

    x, y, vx, vy = _tiny_data()
    cfg = TrainConfig(epochs=4, batch_size=8, lr=0.05, milestones=[2], hflip=True)
    feats = np.random.default_rng(1).normal(size=(32, 6)).astype(np.float32)
    vfeats = np.random.default_rng(2).normal(size=(9, 6)).astype(np.float32)

    def model():
        return create_model("small_cnn", num_classes=3, in_channels=1, seed=0)

    def weights(m):
        return {k: v.clone() for k, v in m.state_dict().items()}

    return {
        "fit": (lambda: fit(model(), x, y, val_images=vx, val_labels=vy, config=cfg),
                lambda r: (weights(r.model), r.best_epoch, r.history), 4),
        "fine_tune": (lambda: fine_tune(model(), x, y, config=cfg), lambda r: (weights(r.model), r.history), 4),
        "plc": (lambda: train_plc(model(), x, y, val_images=vx, val_labels=vy,
                                  config=PLCConfig(train=cfg, warmup_epochs=1, window=2)),
                lambda r: (weights(r.model), r.corrected_labels.tolist(), r.history), 4),
        "simclr": (lambda: train_simclr(x, model_name="small_cnn", config=SSLConfig(epochs=3, batch_size=16)),
                   lambda r: (weights(r), r.ssl_history), 3),
        "lra": (lambda: train_lra(feats, y, num_classes=3, val_features=vfeats, val_labels=vy,
                                  config=LRAConfig(epochs=4, batch_size=16, warmup_epochs=0, eval_every=1, hidden=16,
                                                   timesteps=20, ddim_steps=5, k=5)),
                lambda r: (weights(r.model), r.best_epoch, r.history), 4),
        "cross_fit": (lambda: cross_fit(x, y, model_name="small_cnn", num_classes=3, config=cfg, folds=2,
                                        extra_images=vx),
                      lambda r: (r.pred_probs.tobytes(), r.features.tobytes(), r.extra_features.tobytes(),
                                 r.histories), 8),
    }


def _equal(a, b) -> bool:
    if isinstance(a, dict) and a and all(isinstance(v, torch.Tensor) for v in a.values()):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b))
    return a == b


@pytest.mark.parametrize("loop", ["fit", "fine_tune", "plc", "simclr", "lra", "cross_fit"])
def test_row14_training_loops_resume_after_a_kill_with_the_same_result(tmp_path, kill_after, loop):
    from synref.train import checkpoint_folder

    train, outcome, epochs = _loops()[loop]
    reference = outcome(train())  # uninterrupted, no checkpoints
    kill_at = epochs // 2 + 1  # in cross_fit: inside the second fold
    kill_after(kill_at)
    with checkpoint_folder(tmp_path / "ckpt"), pytest.raises(Killed):
        train()
    assert list((tmp_path / "ckpt").glob("*.ckpt"))
    saved = kill_after(0)
    with checkpoint_folder(tmp_path / "ckpt"):
        resumed = outcome(train())
    assert len(saved) == epochs - kill_at  # only the epochs after the last checkpoint were trained
    assert _equal(resumed, reference)


def _refine_csv(out: Path) -> bytes:
    return (out / "refined_labels.csv").read_bytes()


def test_row14_refine_killed_during_training_resumes(tmp_path, capsys, anchors, kill_after):
    data = make_folder(tmp_path / "data")
    args = lambda out: refine_args(data, anchors, out)[:-1] + ["--epochs", "4"] + ["--quiet"]  # noqa: E731
    full = kill_after(0)
    assert run(args(tmp_path / "whole"), capsys)[0] == 0
    trained = len(full)
    assert trained == 8 and not (tmp_path / "whole" / "cache" / "checkpoints").exists()
    kill_after(5)  # in the second fold's training
    with pytest.raises(Killed):
        run(args(tmp_path / "out"), capsys)
    assert not (tmp_path / "out" / "summary.json").exists()
    resumed = kill_after(0)
    assert run(args(tmp_path / "out"), capsys)[0] == 0
    assert len(resumed) == trained - 5
    assert _refine_csv(tmp_path / "out") == _refine_csv(tmp_path / "whole")
    assert not (tmp_path / "out" / "cache" / "checkpoints").exists()


@pytest.mark.skipif(not hasattr(os, "kill"), reason="needs kill -9")
def test_row14_refine_kill_9_mid_training_resumes(tmp_path, anchors):
    import signal

    data = make_folder(tmp_path / "data")
    args = lambda out: refine_args(data, anchors, out)[:-1] + ["--epochs", "4"]  # noqa: E731
    whole = synref_cli(*args(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=SRC, SYNREF_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    # the same command, slowed after each checkpoint (results unchanged) so the kill lands mid-training
    slowed = ("import sys, time\n"
              "from synref.train.checkpoint import LoopCheckpoint\n"
              "save = LoopCheckpoint.save\n"
              "LoopCheckpoint.save = lambda self, state: (save(self, state), time.sleep(0.3))[0]\n"
              "from synref.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.Popen([sys.executable, "-c", slowed, *map(str, args(out))], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(list((out / "cache" / "checkpoints").glob("*.ckpt"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists(), "the run ended before it could be killed"
    again = synref_cli(*args(out))
    assert again.returncode == 0, again.stderr
    assert _refine_csv(out) == _refine_csv(tmp_path / "whole")
    assert not [p for p in out.rglob("*") if p.name.endswith((".tmp", ".ckpt"))]


def test_row14_bench_cell_resumes_inside_training(tmp_path, kill_after):
    from synref.experiments.bench import run_bench
    from synref.train import TrainConfig

    def small(proto):
        proto.standard = TrainConfig(epochs=4, batch_size=128, lr=0.05, milestones=[2], warmup_epochs=0)
        proto.anchors_per_class = 2

    grid = dict(dataset="digits", protocol="digits", methods="standard", noise="u-0.3", seeds=[0],
                protocol_overrides=small)
    full = kill_after(0)
    whole = run_bench(out=tmp_path / "whole", **grid)
    assert full == [("fit", e) for e in range(4)]  # Standard's 4 epochs
    kill_after(2)  # Standard killed after its epoch 1
    with pytest.raises(Killed):
        run_bench(out=tmp_path / "out", **grid)
    assert not list((tmp_path / "out").glob("cells/*.json"))
    resumed = kill_after(0)
    rows = run_bench(out=tmp_path / "out", **grid)
    assert resumed == [("fit", 2), ("fit", 3)]  # the noisy labels were cached, Standard resumed at epoch 2
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert [strip(r) for r in rows] == [strip(r) for r in whole]
    assert not list((tmp_path / "out" / "work").rglob("*.ckpt"))
