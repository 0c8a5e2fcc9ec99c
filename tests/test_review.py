"""synref review: the review page's items, thumbnails (sprite sheets: small, bounded, written once),
escaping, and the command. The page in a real browser: tests/test_review_browser.py."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from review_helpers import CLASSES, image_folder_results, large_results, synthetic_image, write_results
from synref.apps import review
from synref.apps.results_folder import CHANGED, FLAGGED, read_results
from synref.apps.review import SHEET_SIDE, TILE_BYTES, write_review
from synref.cli import main
from synref.errors import InputError


def page_data(path):
    text = path.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="synref-data">(.*?)</script>', text, re.S)
    assert match, "no data element"
    return json.loads(match.group(1)), text


@pytest.fixture
def folder(tmp_path):
    return image_folder_results(tmp_path)


def test_items_are_the_changed_and_the_flagged_rows(folder):
    info = folder
    scores, given, suggested = info["scores"], info["given"], info["suggested"]
    best = scores.argmax(1)
    changed = np.flatnonzero(given != suggested)
    flagged = np.flatnonzero((given == suggested) & (best != given))
    assert changed.size >= 5 and flagged.size >= 5  # the fixture has both kinds
    results = read_results(info["out"])
    assert sorted(results.items[results.kind == CHANGED]) == sorted(changed)
    assert sorted(results.items[results.kind == FLAGGED]) == sorted(flagged)
    # the suggestion of a flagged row is its best class; p is the suggestion's score
    for row, proposal, p in zip(results.items, results.proposal, results.p):
        expected = suggested[row] if row in changed else best[row]
        assert proposal == expected and p == pytest.approx(float(scores[row, expected]))

    data, _ = page_data(write_review(info["out"]))
    items = data["items"]
    assert len(items["index"]) == changed.size + flagged.size == data["num_items"] == data["shown"]
    assert items["p"] == sorted(items["p"], reverse=True)  # most probable first
    for k, row in enumerate(items["index"]):
        assert items["given"][k] == given[row] and items["kind"][k] == (0 if row in changed else 1)
        assert items["id"][k] == f"img-{row}" and items["path"][k] == info["paths"][row]
    assert data["classes"] == CLASSES and data["num_changed"] == changed.size


def test_without_scores_only_changed_rows(folder):
    (folder["out"] / "scores.npy").unlink()
    data, _ = page_data(write_review(folder["out"]))
    changed = set(np.flatnonzero(folder["given"] != folder["suggested"]).tolist())
    assert set(data["items"]["index"]) == changed and set(data["items"]["kind"]) == {0}
    assert data["has_scores"] is False


def test_thumbnails_are_small_packed_sheets(folder):
    out = folder["out"]
    data, _ = page_data(write_review(out, thumb_px=32))
    sheets = data["thumbs"]["sheets"]
    n = len(data["items"]["index"])
    assert len(sheets) == -(-n // SHEET_SIDE ** 2) == 1
    sheet = out / "review" / sheets[0]
    with Image.open(sheet) as img:
        assert img.format == "JPEG" and img.width == SHEET_SIDE * 32 and img.height == -(-n // SHEET_SIDE) * 32
        # tile k shows item k: compare its centre with the source image's (12 x 12 px, scaled to 32)
        tiles = np.asarray(img.convert("RGB"), dtype=float)
    for k in (0, n - 1):
        row = data["items"]["index"][k]
        src = np.asarray(Image.open(folder["paths"][row]).convert("RGB").resize((32, 32), Image.NEAREST), dtype=float)
        tile = tiles[(k // SHEET_SIDE) * 32:(k // SHEET_SIDE + 1) * 32, (k % SHEET_SIDE) * 32:(k % SHEET_SIDE + 1) * 32]
        assert np.abs(tile - src).mean() < 40  # JPEG of noise: close, not exact
    assert sheet.stat().st_size <= review.tile_budget(32) * n
    # anchors: a sheet of its own, up to 4 per class, each class's tiles listed
    assert len(data["thumbs"]["anchor_sheets"]) == 1 and [len(a) for a in data["anchors"]] == [4, 4, 4]
    assert data["items"]["thumb"] == list(range(n))
    # no file in OUT/review but the sheets and their sidecars
    assert sorted(p.suffix for p in (out / "review").iterdir()) == [".jpg", ".jpg", ".json", ".json"]


def test_tile_bytes_are_bounded_even_for_noise():
    rng = np.random.default_rng(0)
    tiles = [review._array_tile(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), 48) for _ in range(256)]
    data, quality = review._encode_sheet(tiles, 48)
    assert len(data) <= TILE_BYTES * 256 and quality < 80  # noise needed a lower quality to fit
    smooth = [review._array_tile(synthetic_image(i), 48) for i in range(256)]
    data, quality = review._encode_sheet(smooth, 48)
    assert quality == 80 and len(data) <= TILE_BYTES * 256
    big = review._array_tile(rng.integers(0, 256, (1000, 700, 3), dtype=np.uint8), 48)
    assert big.size == (48, 48)  # never the full image


def test_rerun_reuses_the_sheets_and_a_new_list_replaces_them(folder, monkeypatch):
    out = folder["out"]
    write_review(out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "review").iterdir()}
    opened = []
    real = review._file_tile
    monkeypatch.setattr(review, "_file_tile", lambda path, px: opened.append(path) or real(path, px))
    write_review(out)
    assert opened == []  # nothing decoded again
    assert {p.name: p.stat().st_mtime_ns for p in (out / "review").iterdir()} == before
    # another item list (one more changed row): new sheet, the old one removed
    csv_path = out / "refined_labels.csv"
    lines = csv_path.read_text().splitlines()
    row = next(k for k, line in enumerate(lines[1:], 1) if line.endswith(",no") and line.split(",")[3] == "0")
    parts = lines[row].split(",")
    parts[5], parts[6], parts[-1] = "2", "a&b", "yes"
    lines[row] = ",".join(parts)
    csv_path.write_text("\n".join(lines) + "\n")
    data, _ = page_data(write_review(out))
    assert len(opened) == len(data["items"]["index"])
    names = sorted(p.name for p in (out / "review").iterdir() if p.name.startswith("s"))
    assert names == sorted([data["thumbs"]["sheets"][0], data["thumbs"]["sheets"][0].replace(".jpg", ".json")])


def test_a_killed_run_resumes_at_the_missing_sheet(tmp_path, monkeypatch):
    out = tmp_path / "OUT"
    large_results(out, 600, num_classes=5)
    calls = []

    def image_of(index):
        calls.append(index)
        if len(calls) > 300:
            raise KeyboardInterrupt  # killed while making the second sheet
        return synthetic_image(index)

    with pytest.raises(KeyboardInterrupt):
        write_review(out, image_of=image_of, workers=0)
    assert not (out / "review.html").exists()
    assert len(list((out / "review").glob("s*.jpg"))) == 1 and not list((out / "review").glob(".*"))
    calls.clear()
    data, _ = page_data(write_review(out, image_of=lambda i: calls.append(i) or synthetic_image(i), workers=0))
    assert len(calls) == 600 - 256  # the first sheet was kept
    assert len(data["thumbs"]["sheets"]) == 3 and all(data["thumbs"]["sheets"])


def test_no_images_no_thumbnails(tmp_path):
    """A features-only run (no paths, no loadable data): the page works without thumbnails."""
    from review_helpers import consistent_scores

    scores, given, suggested = consistent_scores(40, 3)
    out = tmp_path / "OUT"
    write_results(out, given=given, suggested=suggested, scores=scores, paths=[""] * 40,
                  data="features.npy", extra={"path_backed": False})
    data, _ = page_data(write_review(out))
    assert data["thumbs"]["sheets"] == [None] and set(data["items"]["thumb"]) == {-1}
    assert not list((out / "review").glob("*.jpg"))
    assert data["anchors"] == [[], [], []]


def test_nothing_to_review(tmp_path):
    given = np.array([0, 1, 2, 1])
    scores = np.eye(3, dtype=np.float32)[given]
    write_results(tmp_path / "OUT", given=given, suggested=given, scores=scores, paths=[""] * 4)
    data, text = page_data(write_review(tmp_path / "OUT"))
    assert data["items"]["index"] == [] and data["thumbs"]["sheets"] == [] and data["num_items"] == 0
    assert "Nothing to review" in text


def test_unreadable_images_get_no_thumbnail(folder):
    data, _ = page_data(write_review(folder["out"]))
    first = data["items"]["index"][0]
    with open(folder["paths"][first], "wb") as handle:
        handle.write(b"not a png")
    data, _ = page_data(write_review(folder["out"]))
    assert data["items"]["thumb"][0] == -1 and data["items"]["thumb"][1] == 1


def test_every_user_string_is_escaped(tmp_path):
    from review_helpers import consistent_scores

    names = ["</script><script>alert(1)</script>", "a&amp;b", 'q"uote\u2028']
    scores, given, suggested = consistent_scores(30, 3)
    ids = [f"id</script><img src=x onerror=alert({i})>" for i in range(30)]
    out = tmp_path / "OUT"
    write_results(out, given=given, suggested=suggested, scores=scores, paths=[f"/x/<b>{i}.png" for i in range(30)],
                  ids=ids, class_names=names, data="<data>&", extra={"path_backed": True})
    data, text = page_data(write_review(out))
    body = text[text.index('id="synref-data">'):text.index("</script>", text.index('id="synref-data">'))]
    assert "<" not in body.replace('id="synref-data">', "") and "&" not in body
    assert text.count("</script>") == 2  # the data element's and the script's own
    assert "<title>synref review \u2014 &lt;data&gt;&amp;</title>" in text
    assert data["classes"] == names and data["items"]["id"][0].startswith("id</script>")
    # the script sets names as text only
    script = review.REVIEW_JS
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script


def test_max_items_keeps_the_changed_first(folder):
    results = read_results(folder["out"])
    n_changed = int((results.kind == CHANGED).sum())
    data, text = page_data(write_review(folder["out"], max_items=n_changed + 1))
    assert data["shown"] == n_changed + 1 and data["num_items"] == len(results.items)
    assert data["items"]["kind"].count(1) == 1


@pytest.mark.parametrize("remove, needle", [("summary.json", "has no summary.json"),
                                            ("refined_labels.csv", "has no refined_labels.csv")])
def test_missing_pieces(folder, remove, needle):
    (folder["out"] / remove).unlink()
    with pytest.raises(InputError, match=needle):
        write_review(folder["out"])
    assert not (folder["out"] / "review.html").exists()


def test_bad_scores_and_rows(folder):
    out = folder["out"]
    np.save(out / "scores.npy", np.zeros((3, 3), np.float32))
    with pytest.raises(InputError, match=r"scores.npy has shape \(3, 3\), expected \(60, 3\)"):
        write_review(out)
    (out / "scores.npy").unlink()
    text = (out / "refined_labels.csv").read_text()
    (out / "refined_labels.csv").write_text(text.replace(",yes\n", ",maybe\n", 1))
    with pytest.raises(InputError, match=r"refined_labels.csv row \d+: bad value"):
        write_review(out)


def test_cli_review(folder, capsys):
    out = folder["out"]
    assert main(["review", str(out), "--thumb-px", "40", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "review.html")
    data, _ = page_data(out / "review.html")
    assert data["thumbs"]["px"] == 40
    for args, needle in ((["review", str(out / "nowhere")], "results folder not found"),
                         (["review", str(out), "--thumb-px", "4"], "thumb_px")):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("synref: error: ") and needle in err[0]


def test_parsed_columns_read_what_the_row_iterator_reads(folder, monkeypatch):
    """The fast path (pandas' parser) and the row iterator give the same Results, empty scores,
    padded numbers and yes/no spellings included; a value the fast path refuses falls back to the
    iterator, which names the row."""
    import synref.apps.results_folder as rf

    out = folder["out"]
    lines = (out / "refined_labels.csv").read_text().splitlines()
    header = lines[0].split(",")
    at = {name: header.index(name) for name in ("best_score", "changed")}
    cells = lines[3].split(",")
    cells[at["best_score"]], cells[at["changed"]] = "", " Yes"
    lines[3] = ",".join(cells)
    (out / "refined_labels.csv").write_text("\n".join(lines) + "\n")
    assert rf._parsed_columns(out / "refined_labels.csv") is not None
    fast = read_results(out)
    monkeypatch.setattr(rf, "_parsed_columns", lambda path: None)
    slow = read_results(out)
    for name in ("given", "suggested", "best_score", "given_score", "changed", "items", "proposal", "p", "kind"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
    assert np.isnan(fast.best_score).any() and fast.changed.sum() == slow.changed.sum()
    monkeypatch.undo()
    cells[at["changed"]] = "maybe"
    lines[3] = ",".join(cells)
    (out / "refined_labels.csv").write_text("\n".join(lines) + "\n")
    assert rf._parsed_columns(out / "refined_labels.csv") is None
    with pytest.raises(InputError, match=r"refined_labels.csv row 3: bad value"):
        read_results(out)


def test_row_strings_are_the_rows_ids_and_paths(folder):
    """The review's ids and paths, read in chunks by pandas, are the row iterator's, in the order
    asked for (file order or not), blank ids falling back to the index."""
    from synref.apps.results_folder import iter_rows, row_strings

    out = folder["out"]
    truth = {row["index"]: (row["id"], row["path"]) for row in iter_rows(out)}
    assert any(path for _, path in truth.values())
    rows = np.array([17, 3, 59, 0])
    ids, paths = row_strings(out, rows)
    assert list(zip(ids, paths)) == [truth[int(r)] for r in rows]
    lines = (out / "refined_labels.csv").read_text().splitlines()
    at = lines[0].split(",").index("id")
    cells = lines[4].split(",")
    cells[at] = ""
    lines[4] = ",".join(cells)
    (out / "refined_labels.csv").write_text("\n".join(lines) + "\n")
    index = int(cells[lines[0].split(",").index("index")])
    assert row_strings(out, np.array([index]))[0] == [str(index)]
