"""The README's test command and .ci/run must stay the same command."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = [line.strip() for line in readme[:12] if line.startswith("    ")]
    assert len(commands) == 2 and commands[0].endswith("synref demo")
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()


def _tables_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_short_and_every_table_is_generated_from_a_results_file():
    tables = _tables_module()
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    blocks = list(tables.MARKER.finditer(text))
    assert {m["name"] for m in blocks} == {"compare-cifar10-cpu", "bench-cifar10-cpu", "scale"}
    for m in blocks:  # each table is its file's, rendered
        assert m["body"] == tables.render(m["name"]), m["name"]
        if m["name"] == "scale":  # the scale benchmark's records, and its command beside the table
            assert (ROOT / "docs" / "results" / "scale.json").is_file()
            assert "benchmarks/refine_scale.py --features-only" in "\n".join(text[:m.start()].splitlines()[-4:])
            continue
        assert (ROOT / "docs" / "results" / f"{m['name']}.csv").is_file()
        # the command that measured it and the one that regenerates it are printed beside it
        before = text[:m.start()].splitlines()[-6:]
        assert any(line.startswith("    synref ") for line in before), m["name"]
        assert any(f"readme_tables.py --import" in line and m["name"] in line for line in before), m["name"]
    outside = tables.MARKER.sub("", text)
    assert not [line for line in outside.splitlines() if line.startswith("|")]  # no table by hand
    for page in tables.PAGES:
        assert tables.regenerate(page.read_text()) == page.read_text(), page.name
    assert "## Scale\n\nHow the default refinement grows with the number of images" in text
    assert "[docs/scale.md](docs/scale.md)" in text


def test_the_tables_script_imports_a_runs_cells(tmp_path, monkeypatch):
    """--import turns a bench / compare folder's cells into the results file the table is made of."""
    import json

    tables = _tables_module()
    cells = tmp_path / "cmp" / "cells"
    cells.mkdir(parents=True)
    for seed, acc in ((0, 0.5), (1, 0.7)):
        (cells / f"c{seed}.json").write_text(json.dumps({
            "dataset": "cifar10", "protocol": "cpu", "method": "refine-posterior", "noise": "pmd-0.7", "seed": seed,
            "label_acc": acc, "test_acc": None, "fix_precision": 0.9, "flagged": 3}))
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    tables.import_cells(tmp_path / "cmp", "compare-x")
    table = tables.render("compare-x")
    assert "| **`posterior` (default)** | **0.600** |" in table  # the mean over seeds
    assert "| precision of its changes | 0.900 |" in table and "70% PMD" in table
