"""``synref generate``: happy path, bad input (exit 2, one line, nothing written), ``python -m``,
and a real two-process run under ``accelerate launch`` on the CPU."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synref.anchors.glyph import GlyphGenerator
from synref.anchors.store import load_anchor_set

from cli_helpers import assert_one_line_error, run
from synref.anchors.generate import generate_anchor_set

REPO = Path(__file__).resolve().parents[1]


def test_generate_glyph_happy_path_and_resume(tmp_path, capsys):
    out = tmp_path / "anchors"
    args = ["generate", "--generator", "glyph", "--classes", "cat,dog", "--per-class", "3",
            "--size", "16", "--out", out, "--quiet"]
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    assert "wrote" in stdout and "generated 6" in stdout and "complete" in stdout
    assert (out / "anchorset.json").is_file() and (out / "manifest.jsonl").is_file()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        f"images/{c}_{n}/{k}.png" for c, n in enumerate(["cat", "dog"]) for k in range(3)]
    ds = load_anchor_set(out, verify=True)
    assert ds.images.shape == (6, 16, 16, 1)
    expected = GlyphGenerator(size=16).generate(["cat", "dog"], 3)
    np.testing.assert_array_equal(ds.images, expected.images)
    code, stdout, _ = run(args, capsys)
    assert code == 0 and "generated 0, kept 6" in stdout


def test_generate_classes_file_and_folder(tmp_path, capsys):
    from PIL import Image

    classes = tmp_path / "classes.txt"
    classes.write_text("# two\nred\ngreen\n")
    root = tmp_path / "mine"
    for name, value in (("red", (255, 0, 0)), ("green", (0, 255, 0))):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (9, 7), value).save(root / name / "a.png")
    out = tmp_path / "set"
    code, stdout, err = run(["generate", "--generator", "folder", "--root", root, "--classes", classes,
                             "--per-class", "1", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    ds = load_anchor_set(out)
    assert ds.class_names == ["red", "green"] and ds.images.shape == (2, 7, 9, 3)
    assert tuple(ds.images[1, 0, 0]) == (0, 255, 0)


@pytest.mark.parametrize("extra, needles", [
    (["--classes", "cat,dog,cat"], ["duplicate class names", "'cat'"]),
    (["--classes", "cat,,dog"], ["empty class name"]),
    (["--classes", "cat", "--generator", "nope"], ["invalid choice: 'nope'"]),
    (["--classes", "cat,dog", "--steps", "4"], ["--steps does not apply to --generator glyph"]),
    (["--classes", "cat,dog", "--per-class", "0"], ["--per-class must be an integer >= 1"]),
    (["--classes", "cat,dog", "--generator", "folder"], ["needs --root"]),
    (["--classes", "cat,dog", "--generator", "diffusers"], ["needs --model"]),
    (["--classes", "missing/list.txt"], ["class list file not found"]),
])
def test_generate_bad_input(tmp_path, capsys, extra, needles):
    out = tmp_path / "out"
    base = {"--generator": "glyph", "--per-class": "2"}
    args = ["generate", "--out", out, "--quiet"]
    for flag, value in base.items():
        if flag not in extra:
            args += [flag, value]
    code, stdout, err = run(args + extra, capsys)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


def test_generate_mismatched_rerun(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["generate", "--generator", "glyph", "--classes", "a,b", "--per-class", "1", "--out", out,
            "--size", "8", "--quiet"]
    assert run(args, capsys)[0] == 0
    code, _, err = run(args[:-3] + ["--size", "12", "--quiet"], capsys)
    assert_one_line_error(code, err, "size=[8, 8]", "size=[12, 12]")


def test_python_m_synref_generate(tmp_path):
    out = tmp_path / "set"
    env = dict(os.environ, HF_HUB_OFFLINE="1", SYNREF_NO_PROGRESS="1")
    proc = subprocess.run([sys.executable, "-m", "synref", "generate", "--generator", "glyph",
                           "--classes", "digits", "--per-class", "1", "--size", "8", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and len(load_anchor_set(out)) == 10


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_cpu_processes(tmp_path):
    """Two real processes (torchrun via ``accelerate launch``, gloo on CPU). ``--cpu`` would make
    accelerate run a single process (CPU multi-process needs MPI), so ``--multi_gpu`` asks for
    the torchrun launcher and synref picks the CPU backend because there is no GPU."""
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("accelerate launcher not installed")
    out = tmp_path / "two"
    env = dict(os.environ, HF_HUB_OFFLINE="1", SYNREF_NO_PROGRESS="1", ACCELERATE_USE_CPU="1",
               OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"), CUDA_VISIBLE_DEVICES="")
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "synref", "generate", "--generator", "glyph", "--classes", "a,b,c",
           "--per-class", "5", "--size", "12", "--batch-size", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("wrote") == 1, proc.stdout  # only the main process prints
    assert "on 2 processes" in proc.stdout and "generated 15" in proc.stdout
    assert not (out / "manifest.jsonl").exists()
    keys = []
    for rank in (0, 1):
        rows = [json.loads(line) for line in (out / f"manifest.{rank}.jsonl").read_text().splitlines()]
        assert rows, rank
        keys += [(r["class_index"], r["k"]) for r in rows]
    assert sorted(keys) == [(c, k) for c in range(3) for k in range(5)]  # each exactly once
    single = tmp_path / "one"
    generate_anchor_set(GlyphGenerator(size=12), ["a", "b", "c"], 5, single)
    two, rows2 = load_anchor_set(out, verify=True, with_manifest=True)
    one, rows1 = load_anchor_set(single, verify=True, with_manifest=True)
    np.testing.assert_array_equal(two.images, one.images)
    np.testing.assert_array_equal(two.labels, one.labels)
    assert [r["sha256"] for r in rows2] == [r["sha256"] for r in rows1]


def test_generate_with_tiny_sdxl_pipeline_end_to_end(tmp_path):
    """synref generate --generator diffusers on a tiny SDXL-shaped pipeline saved with
    save_pretrained: the real loading path, the manifest's provenance, and resume."""
    import torch
    from tiny_models import build_tiny_sdxl_pipeline

    from synref.anchors.store import load_anchor_set
    from synref.cli import main

    model_dir = tmp_path / "tiny-sdxl"
    build_tiny_sdxl_pipeline(model_dir)
    out = tmp_path / "anchors"
    args = ["generate", "--generator", "diffusers", "--model", str(model_dir), "--classes", "cat,pickup_truck",
            "--per-class", "2", "--size", "32", "--steps", "1", "--batch-size", "2", "--seed", "3",
            "--prompt", "A photo of {category}.", "--out", str(out), "--quiet"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args) == 0
        anchors, rows = load_anchor_set(out, verify=True, with_manifest=True)
        assert anchors.images.shape == (4, 32, 32, 3) and anchors.images.dtype == np.uint8
        assert list(anchors.labels) == [0, 0, 1, 1]
        prompts = sorted({row["prompt"] for row in rows})
        assert prompts == ["A photo of cat.", "A photo of pickup truck."]
        for row in rows:
            assert row["model"] == str(model_dir) and row["steps"] == 1 and row["size"] == [32, 32]
            assert row["guidance"] == 0.0 and isinstance(row["image_seed"], int)
        # Re-running the same command finds everything present and generates nothing.
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
        assert main(args) == 0
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before
    finally:
        torch.set_num_threads(threads)
