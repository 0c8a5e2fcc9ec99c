"""The default refinement at scale: row views that never copy, neighbour graphs (exact, HNSW,
IVF) with their measured recall, the streamed head engine, given embeddings
(``synref refine --features``), no copy of the features under --skip-bad / --target-precision,
and many classes."""
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from synref.arrays import UnitRows, bytes_served
from synref.cli import main
from synref.evidence import Evidence
from synref.neighbors import exact_knn, graph_recall, knn_graph
from synref.refiners import refine
from synref.train.linear import HeadProblem, fit_heads_lbfgs, held_out_logits


def _clustered(n, d, c, seed=0, spread=0.6):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(c, d))
    y = rng.integers(0, c, n)
    return (means[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


def test_unit_rows_select_append_and_normalise_per_block(tmp_path):
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32) * 3
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    extra = np.eye(8, dtype=np.float32)[:3] * 2
    rows = UnitRows(mapped, index=np.arange(50, 200, 3), extra=extra)
    assert rows.shape == (50 + 3, 8)
    np.testing.assert_allclose(rows.block(0, 53), np.vstack([unit[50:200:3], extra / 2]), rtol=1e-6)
    np.testing.assert_allclose(rows.take(np.array([52, 0, 7])), np.vstack([extra[2] / 2, unit[50], unit[71]]),
                               rtol=1e-6)
    sub = UnitRows(UnitRows(mapped, index=np.arange(50, 200, 3)), index=np.array([1, 2]))  # a view of a view
    np.testing.assert_allclose(sub.block(0, 2), unit[[53, 56]], rtol=1e-6)
    served = bytes_served()
    rows[10:20]
    assert bytes_served() - served == 10 * 8 * 4
    # rows that are unit already are served as views of the memory map, not copies
    np.save(tmp_path / "u.npy", unit)
    plain = UnitRows(np.load(tmp_path / "u.npy", mmap_mode="r"))
    assert np.shares_memory(plain.block(5, 9), plain.base)


@pytest.mark.parametrize("method", ["hnsw", "ivf"])
def test_approximate_graphs_measure_their_recall(method):
    pytest.importorskip("faiss")
    x, _ = _clustered(3000, 32, 8)
    graph = knn_graph(x, 10, method=method, recall_queries=300)
    info = graph.describe()
    assert info["method"] == method and info["k"] == 10 and graph.indices.shape == (3000, 10)
    assert not (graph.indices == np.arange(3000)[:, None]).any()  # never the row itself
    measured = graph_recall(x, graph.indices, rows=slice(0, 3000), num_queries=3000)
    assert graph.recall >= 0.9 and abs(graph.recall - measured) < 0.05, (graph.recall, measured)


def test_hnsw_ef_search_is_calibrated_to_the_target_recall():
    """efSearch rises from 32 in steps until the sampled recall reaches the target; the first that
    reaches it is kept, and the graph's own (separately sampled) recall agrees; a given efSearch
    is used as is."""
    pytest.importorskip("faiss")
    x = np.random.default_rng(0).normal(size=(4000, 48)).astype(np.float32)  # no structure: a hard graph
    easy = knn_graph(x, 10, method="hnsw", m=6, target_recall=0.5, recall_queries=500).describe()
    assert easy["ef_search"] == 32 and list(easy["calibration"]["recall_by_ef_search"]) == ["32"]
    hard = knn_graph(x, 10, method="hnsw", m=6, target_recall=0.9, recall_queries=500)
    info = hard.describe()
    tried = {int(ef): r for ef, r in info["calibration"]["recall_by_ef_search"].items()}
    assert info["calibration"]["reached"] and info["ef_search"] == max(tried) > 32
    assert tried[info["ef_search"]] >= 0.9 and all(r < 0.9 for ef, r in tried.items() if ef < info["ef_search"])
    assert hard.recall > 0.87 and hard.recall > easy["recall"] + 0.1
    fixed = knn_graph(x, 10, method="hnsw", m=6, ef_search=48, recall_queries=0).describe()
    assert fixed["ef_search"] == 48 and "calibration" not in fixed


def test_auto_graph_is_exact_below_the_threshold(monkeypatch):
    import synref.neighbors as nb
    x, _ = _clustered(600, 16, 4)
    assert knn_graph(x, 5).method == "exact"
    monkeypatch.setattr(nb, "EXACT_MAX_ROWS", 100)
    pytest.importorskip("faiss")
    assert knn_graph(x, 5).method == nb.APPROXIMATE_METHOD
    brute = exact_knn(x, 5, block=64)
    assert np.array_equal(knn_graph(x, 5, method="exact").indices, brute)


def test_head_engine_gradient_is_the_autograd_gradient():
    """The hand-written block gradient of K soft-target heads with per-fold masks, extra rows and
    the per-row penalty equals autograd's on the same loss."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 7)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t = rng.dirichlet(np.ones(5), 90).astype(np.float32)
    t[:4] = 0  # rows without targets do not count
    folds = rng.integers(0, 3, 90)
    extra_x, extra_y, extra_f = x[:12], rng.integers(0, 5, 12), rng.integers(-1, 3, 12)
    problem = HeadProblem(x, t, num_heads=3, num_classes=5, folds=folds, extra=(extra_x, extra_y, extra_f),
                          scale=10.0, penalty=2.0)
    w = torch.randn(15, 7) * 0.1
    b = torch.randn(15) * 0.1
    loss, gw, gb = problem.loss_and_grad(w, b)
    wr, br = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    total = torch.zeros(())
    for k in range(3):
        mass = float(t[folds != k].sum() + (extra_f != k).sum())
        logp = torch.log_softmax(10 * torch.as_tensor(x) @ wr[5 * k:5 * k + 5].T + br[5 * k:5 * k + 5], dim=1)
        lx = -(torch.as_tensor(t) * logp).sum(dim=1)[torch.as_tensor(folds != k)].sum()
        logp_e = torch.log_softmax(10 * torch.as_tensor(extra_x) @ wr[5 * k:5 * k + 5].T + br[5 * k:5 * k + 5], dim=1)
        le = -logp_e[torch.arange(12), torch.as_tensor(extra_y)][torch.as_tensor(extra_f != k)].sum()
        total = total + (lx + le) / mass + 2.0 / mass * (wr[5 * k:5 * k + 5] ** 2).sum()
    total.backward()
    assert abs(loss - float(total.detach())) < 1e-4
    torch.testing.assert_close(gw, wr.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gb, br.grad, atol=1e-5, rtol=1e-4)
    # and the fitted heads predict each row with the head that held it out
    w_fit, b_fit = fit_heads_lbfgs(problem, 5)
    logits = held_out_logits(x, w_fit, b_fit, num_classes=5, scale=10.0, folds=folds)
    for i in (0, 50, 89):
        k = folds[i]
        np.testing.assert_allclose(logits[i], (10 * x[i] @ w_fit[5 * k:5 * k + 5].T.numpy() + b_fit[5 * k:5 * k + 5].numpy()),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 7, 20])
def test_lbfgs_takes_torch_lbfgs_steps(steps):
    """fit_heads_lbfgs (no optimiser object) ends where torch.optim.LBFGS with the strong Wolfe
    line search ends from the same start: the same algorithm, the same arithmetic."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 9)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t = rng.dirichlet(np.ones(4), 300).astype(np.float32)
    problem = HeadProblem(x, t, num_heads=2, num_classes=4, folds=rng.integers(0, 2, 300), scale=10.0, penalty=0.5)
    init = (torch.randn(8, 9) * 0.1, torch.randn(8) * 0.1)
    w, b = fit_heads_lbfgs(problem, steps, init=init)
    wr, br = init[0].clone().requires_grad_(True), init[1].clone().requires_grad_(True)
    opt = torch.optim.LBFGS([wr, br], lr=1.0, max_iter=steps, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        loss, gw, gb = problem.loss_and_grad(wr.detach(), br.detach())
        wr.grad, br.grad = gw, gb
        return torch.tensor(loss, dtype=torch.float32)

    opt.step(closure)
    assert not torch.equal(w, init[0])  # it moved
    torch.testing.assert_close(w, wr.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b, br.detach(), atol=1e-6, rtol=1e-5)


def _files(tmp_path: Path, n=2000, d=24, c=5, nan_row=None):
    rng = np.random.default_rng(1)
    means = rng.normal(size=(c, d))
    y = rng.integers(0, c, n)
    x = (means[y] + 0.9 * rng.normal(size=(n, d))).astype(np.float32) * 4  # not unit rows, like CLIP's
    if nan_row is not None:
        x[nan_row, 3] = np.nan
    ya = np.repeat(np.arange(c), 15)
    a = (means[ya] + 0.9 * rng.normal(size=(len(ya), d)) + 0.1).astype(np.float32)
    given = y.copy()
    flip = rng.random(n) < 0.3
    given[flip] = rng.integers(0, c, int(flip.sum()))
    paths = {k: tmp_path / f"{k}.npy" for k in ("f", "l", "a", "al")}
    for k, v in zip(paths, (x, given, a, ya)):
        np.save(paths[k], v)
    return paths, y, given


def _run(args, capsys):
    code = main(args)
    return code, capsys.readouterr()


def test_given_embeddings_refine_like_any_space(tmp_path, capsys):
    p, y, given = _files(tmp_path)
    (tmp_path / "names.json").write_text(json.dumps(["cat", "dog", "=HYPERLINK(1)", "ant", "owl"]))
    out = tmp_path / "out"
    code, io = _run(["refine", "--features", str(p["f"]), "--labels", str(p["l"]), "--anchor-features", str(p["a"]),
                     "--anchor-labels", str(p["al"]), "--class-names", str(tmp_path / "names.json"), "--out",
                     str(out), "--quiet"], capsys)
    assert code == 0, io.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evidence"]["mode"] == "features" and summary["class_names"][0] == "cat"
    assert summary["neighbor_graph"]["method"] == "exact" and summary["num_samples"] == 2000
    assert {r["stage"] for r in summary["stages"]} >= {"anchor head", "prior", "neighbours", "self-training"}
    import pandas as pd
    rows = pd.read_csv(out / "refined_labels.csv")
    assert np.mean(rows["suggested_label"].to_numpy() == y) > np.mean(given == y) + 0.15
    assert (out / "report.html").is_file() and np.load(out / "scores.npy").shape == (2000, 5)
    # the same labels from the Python API on the same arrays (the CLI adds nothing)
    ev = Evidence(np.load(p["l"]), 5, np.load(p["al"]), features=np.load(p["f"]), anchor_features=np.load(p["a"]))
    np.testing.assert_array_equal(refine(ev).refined_labels, rows["suggested_label"].to_numpy())


def test_neighbor_recall_reaches_the_hnsw_calibration(tmp_path, capsys):
    """--neighbor-recall is the calibration's target (recorded in summary.json and config.json);
    a refiner without a neighbour graph refuses it in one line."""
    pytest.importorskip("faiss")
    p, _, _ = _files(tmp_path)
    args = ["refine", "--features", str(p["f"]), "--labels", str(p["l"]), "--anchor-features", str(p["a"]),
            "--anchor-labels", str(p["al"]), "--neighbor-graph", "hnsw", "--quiet"]
    code, io = _run(args + ["--neighbor-recall", "0.6", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, io.err
    graph = json.loads((tmp_path / "out" / "summary.json").read_text())["neighbor_graph"]
    assert graph["method"] == "hnsw" and graph["calibration"]["target_recall"] == 0.6
    assert "0.6" in (tmp_path / "out" / "config.json").read_text()
    args.remove("--neighbor-graph"), args.remove("hnsw")
    code, io = _run(args + ["--refiner", "paper", "--neighbor-recall", "0.6", "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and "--neighbor-recall" in io.err and len(io.err.strip().splitlines()) == 1, io.err


@pytest.mark.parametrize("drop, extra, needle", [
    ("al", [], "--features needs --anchor-labels"),
    (None, ["--anchors", "x"], "--anchors does not apply with --features"),
    (None, ["--encoder", "efficientnet-lite0"], "--encoder does not apply with --features"),
    ("nan", [], "row 17 has a NaN"),
])
def test_given_embeddings_bad_input_is_one_line(tmp_path, capsys, drop, extra, needle):
    p, _, _ = _files(tmp_path, nan_row=17 if drop == "nan" else None)
    args = ["refine", "--features", str(p["f"]), "--labels", str(p["l"]), "--anchor-features", str(p["a"]),
            "--anchor-labels", str(p["al"]), "--out", str(tmp_path / "out"), "--quiet"] + extra
    if drop == "al":
        i = args.index("--anchor-labels")
        del args[i:i + 2]
    code, io = _run(args, capsys)
    assert code == 2 and needle in io.err and len(io.err.strip().splitlines()) == 1, io.err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_skipped_rows_and_target_precision_copy_no_features(tmp_path, monkeypatch):
    """A row subset (skipped files) and the planted calibration (target precision) read the
    memory-mapped features through views: with small row blocks, what Python allocates stays far
    below the features (a copy of the kept rows would be 24 MB; the (N, k) graph and (N, C)
    arrays are 3 MB)."""
    import synref.arrays as arrays
    import synref.neighbors as neighbors
    monkeypatch.setattr(arrays, "BLOCK_ELEMENTS", 1 << 16)
    monkeypatch.setattr(neighbors, "EXACT_BLOCK", 256)
    n, d, c = 6000, 1024, 4
    x, y = _clustered(n, d, c, spread=2.4)
    np.save(tmp_path / "x.npy", x / np.linalg.norm(x, axis=1, keepdims=True))
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    anchors, ya = _clustered(80, d, c, seed=0, spread=2.4)
    keep = np.flatnonzero(np.arange(n) % 50 != 7)
    given = y[keep].copy()
    given[::5] = (given[::5] + 1) % c
    ev = Evidence(given, c, ya, features=UnitRows(mapped, index=keep), anchor_features=anchors)
    refine(Evidence(given[:300], c, ya, features=UnitRows(mapped, index=keep[:300]), anchor_features=anchors),
           "posterior", target_precision=0.9, self_training_rounds=1)  # first-use imports are not the refiner's
    tracemalloc.start()
    result = refine(ev, "posterior", target_precision=0.9, self_training_rounds=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.num_changed() > 0 and "precision_temperature" in result.info
    assert peak < 0.3 * mapped.nbytes, (peak, mapped.nbytes)


def test_many_classes_work_in_blocks():
    """C = 300 classes (more columns than feature dimensions): the anchor head's penalty search,
    T, purity and the posterior run in blocks and fix most of the wrong labels."""
    c, d = 300, 64
    x, y = _clustered(3000, d, c, seed=5, spread=0.25)
    ya = np.repeat(np.arange(c), 4)
    a = (np.random.default_rng(5).normal(size=(c, d))[ya] + 0.25  # the same class means as x * np.random.default_rng(6).normal(size=(len(ya), d))
         ).astype(np.float32)
    given = y.copy()
    given[::4] = (given[::4] + 7) % c
    # 10 rows per class: below the minimum evidence (20) that makes a real set change nothing; off here,
    # where the classes are well separated and the test is about the blocks
    result = refine(Evidence(given, c, ya, features=x, anchor_features=a), "posterior", self_training_rounds=1,
                    min_rows_per_class=0)
    assert result.scores.shape == (3000, c)
    assert np.mean(result.refined_labels == y) > np.mean(given == y) + 0.1


def _many_class_problem():
    """40 classes x 2,400 rows (96-d), 5 anchors per class, every fourth label wrong:
    (evidence, true labels, given labels)."""
    c, d = 40, 96
    x, y = _clustered(2400, d, c, seed=3, spread=0.5)
    ya = np.repeat(np.arange(c), 5)
    a = (np.random.default_rng(3).normal(size=(c, d))[ya]
         + 0.5 * np.random.default_rng(4).normal(size=(len(ya), d))).astype(np.float32)
    given = y.copy()
    given[::4] = (given[::4] + 3) % c
    return Evidence(given, c, ya, features=x, anchor_features=a), y, given


def test_self_training_heads_on_principal_components_when_the_full_heads_cost_too_much(monkeypatch):
    """Many classes x many rows: the self-training heads read the rows projected on their leading
    principal components (recorded in the facts), and still fix the wrong labels about as well
    as the full heads; below the work threshold the heads read the full rows."""
    import synref.refiners.posterior as posterior
    ev, y, given = _many_class_problem()
    full = refine(ev, "posterior", self_training_rounds=1, min_rows_per_class=0)
    assert '"head_space"' not in json.dumps(full.info, default=str)
    monkeypatch.setattr(posterior, "HEAD_PROJECTIONS", ((10 ** 9, 16), (1000, 48)))  # any run is "too costly" now
    projected = refine(ev, "posterior", self_training_rounds=1, min_rows_per_class=0)
    facts = json.dumps(projected.info, default=str)
    assert '"head_space": {"dims": 48' in facts
    acc_full, acc_proj = np.mean(full.refined_labels == y), np.mean(projected.refined_labels == y)
    assert acc_proj > np.mean(given == y) + 0.15 and abs(acc_full - acc_proj) < 0.03, (acc_full, acc_proj)
    explicit = refine(ev, "posterior", self_training_rounds=1, min_rows_per_class=0, head_dims=0)
    np.testing.assert_array_equal(explicit.refined_labels, full.refined_labels)


def test_graph_and_heads_projections_share_one_eigendecomposition(monkeypatch):
    """The approximate graph's 128 and the heads' projection read one cached eigendecomposition:
    the leading components are the same columns, and eigh runs once per refinement."""
    import synref.refiners.posterior as posterior
    from synref import neighbors

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 40)).astype(np.float32)
    rows = UnitRows(x)
    cache = {}
    mean, small = neighbors.pca_basis(rows, 8, 0, cache=cache)
    calls = []
    real_eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda m: calls.append(1) or real_eigh(m))
    mean2, large = neighbors.pca_basis(rows, 20, 0, cache=cache)
    assert calls == [] and large.shape == (40, 20)
    np.testing.assert_array_equal(large[:, :8], small)
    np.testing.assert_array_equal(mean2, mean)
    np.testing.assert_array_equal(neighbors.pca_basis(rows, 8, 0)[1], small)  # uncached: the same basis
    assert len(calls) == 1
    # a refinement with an approximate graph and projected heads: one eigendecomposition
    calls.clear()
    y = rng.integers(0, 4, 600)
    x[:, :4] += 3 * np.eye(4, dtype=np.float32)[y]
    ev = Evidence(y, 4, np.repeat(np.arange(4), 6), features=x, anchor_features=np.repeat(np.eye(4, 40), 6, axis=0).astype(np.float32))
    monkeypatch.setattr(posterior, "HEAD_PROJECTIONS", ((1000, 24),))
    result = refine(ev, "posterior", neighbor_graph="hnsw", min_rows_per_class=0, self_training_rounds=1)
    assert result.info["neighbor_graph"]["method"] == "hnsw" and result.info["head_space"]["dims"] == 24
    assert len(calls) == 1


def test_many_anchors_and_classes_fit_the_anchor_head_on_principal_components(monkeypatch):
    """Above ANCHOR_HEAD_WORK multiply-adds per pass the anchor head and its prior read the
    heads' projected rows (recorded as anchor_head_space), self-training reuses them, and the
    wrong labels are fixed about as well as on the full rows."""
    import synref.refiners.posterior as posterior
    ev, y, given = _many_class_problem()
    full = refine(ev, "posterior", self_training_rounds=1, min_rows_per_class=0)
    assert "anchor_head_space" not in full.info
    monkeypatch.setattr(posterior, "ANCHOR_HEAD_WORK", 1000)
    monkeypatch.setattr(posterior, "HEAD_PROJECTIONS", ((1000, 48),))
    projected = refine(ev, "posterior", self_training_rounds=1, min_rows_per_class=0)
    assert projected.info["anchor_head_space"]["dims"] == 48 and projected.info["head_space"]["dims"] == 48
    acc_full, acc_proj = np.mean(full.refined_labels == y), np.mean(projected.refined_labels == y)
    assert acc_proj > np.mean(given == y) + 0.15 and abs(acc_full - acc_proj) < 0.03, (acc_full, acc_proj)
    # head_dims=0 asks for the full rows everywhere
    explicit = refine(ev, "posterior", self_training_rounds=1, min_rows_per_class=0, head_dims=0)
    assert "anchor_head_space" not in explicit.info
    np.testing.assert_array_equal(explicit.refined_labels, full.refined_labels)


def test_cross_fit_linear_on_many_rows_and_classes_reads_principal_components_by_lbfgs(monkeypatch):
    """Above CROSS_FIT_LARGE_WORK the cross-fitted pred_probs come from L-BFGS heads on the
    leading principal components (no Adam step): still out-of-sample probabilities that
    recover the clean class about as often as the full heads."""
    from synref.train import linear
    c, d = 20, 64
    x, y = _clustered(1600, d, c, seed=5, spread=0.6)
    given = y.copy()
    given[::5] = (given[::5] + 1) % c
    full = linear.cross_fit_linear(x, given, num_classes=c, folds=4, seed=0)
    monkeypatch.setattr(linear, "CROSS_FIT_LARGE_WORK", 1000)
    monkeypatch.setattr(linear, "CROSS_FIT_LARGE_DIMS", 24)
    monkeypatch.setattr(linear, "fit_heads_adam", lambda *a, **k: pytest.fail("Adam ran on the large path"))
    seen = []
    real = linear.principal_rows
    monkeypatch.setattr(linear, "principal_rows", lambda *a, **k: seen.append(a[1]) or real(*a, **k))
    large = linear.cross_fit_linear(x, given, num_classes=c, folds=4, seed=0)
    assert seen == [24] and large.shape == (1600, c) and large.dtype == np.float32
    np.testing.assert_allclose(large.sum(axis=1), 1.0, atol=1e-4)
    acc_full, acc_large = np.mean(full.argmax(1) == y), np.mean(large.argmax(1) == y)
    assert acc_large > np.mean(given == y) and acc_large > acc_full - 0.03, (acc_full, acc_large)


def test_hnsw_index_takes_every_row_when_added_in_chunks(monkeypatch):
    """The projected rows are gathered into adds of ADD_ROWS rows (the last one partial): every
    row is in the graph and the neighbours match the exact ones."""
    from synref import arrays, neighbors
    monkeypatch.setattr(arrays, "BLOCK_ELEMENTS", 32 * 24)   # feature blocks of 24 rows
    monkeypatch.setattr(neighbors, "ADD_ROWS", 100)          # adds of 120 rows, the last of 20
    x, _ = _clustered(500, 32, 5, seed=7)
    built = knn_graph(x, 5, method="hnsw")
    exact = exact_knn(x, 5)
    assert built.indices.shape == (500, 5) and built.indices.min() >= 0
    # the last, partial add is in the graph: the tail rows are found where they are exact neighbours
    expected = [(i, j) for i in range(500) for j in exact[i] if j >= 480]
    assert len(expected) > 20 and np.mean([j in built.indices[i] for i, j in expected]) > 0.9
    recall = np.mean([len(np.intersect1d(a, b)) / 5 for a, b in zip(built.indices, exact)])
    assert recall > 0.95, recall
