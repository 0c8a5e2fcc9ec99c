"""docs/scale.md's scaling table is what benchmarks/scale_table.py prints from the measured records."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scale_doc_table_is_generated_from_the_results_file():
    spec = importlib.util.spec_from_file_location("scale_table", ROOT / "benchmarks" / "scale_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    records = json.loads((ROOT / "docs" / "results" / "scale.json").read_text())
    table = module.scale_table(records)
    # one row per measured setting: shape, anchors per class, noise and extra refine options
    settings = {(r["n"], r["d"], r["c"], r.get("anchors_per_class"), r.get("noise"), r.get("refine_args", ""))
                for r in records}
    assert len(table.splitlines()) == 2 + len(settings)
    assert table in (ROOT / "docs" / "scale.md").read_text()


def test_readme_scale_table_is_the_generated_one():
    spec = importlib.util.spec_from_file_location("scale_table", ROOT / "benchmarks" / "scale_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = module.scale_table(json.loads((ROOT / "docs" / "results" / "scale.json").read_text()))
    assert table in (ROOT / "README.md").read_text()
