"""Print the scaling table (markdown) of the records ``benchmarks/refine_scale.py --results-file``
wrote: the last record of each shape, sorted by C then N; a stage that did not run shows –.

    python benchmarks/scale_table.py docs/results/scale.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List

STAGES = ("anchor head", "prior", "neighbours", "self-training", "posterior", "decision")


def scale_table(records: List[Dict[str, Any]]) -> str:
    """The markdown table of ``records`` (one row per shape: its last record)."""
    last: Dict[tuple, Dict[str, Any]] = {}
    for record in records:
        last[(record["n"], record["d"], record["c"], record.get("anchors_per_class"), record.get("noise"),
              record.get("refine_args", ""))] = record
    lines = ["| N | D | C | anchors per class | features GiB | refine wall s | " + " | ".join(f"{s} s" for s in STAGES)
             + " | peak RSS − features GiB | graph (recall@10) | decided by | label accuracy given → refined |",
             "|" + "---:|" * (6 + len(STAGES)) + "---:|---|---|---|"]
    for key in sorted(last, key=lambda k: (k[2], k[0], k[1])):
        r = last[key]
        seconds = {s["stage"]: s["seconds"] for s in r.get("stages", [])}
        graph = r.get("graph") or {}
        recall = graph.get("recall")
        graph_text = graph.get("method", "?") + ("" if recall is None else f" ({recall:.3f})")
        lines.append(f"| {r['n']:,} | {r['d']} | {r['c']} | {r.get('anchors_per_class', '?')} | "
                     f"{r['features_gib']:.2f} | {r['wall_s']:.0f} | "
                     # a stage that did not run (e.g. self-training skipped after a failed model check): –
                     + " | ".join(f"{seconds[s]:.1f}" if s in seconds else "–" for s in STAGES)
                     + f" | {r['peak_rss_gib'] - r['features_gib']:.2f} | {graph_text} | {r.get('decided_by', '?')} | "
                       f"{r['given_acc']:.3f} → {r['refined_acc']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="docs/results/scale.json")
    args = parser.parse_args()
    print(scale_table(json.loads(Path(args.results).read_text())))


if __name__ == "__main__":
    main()
