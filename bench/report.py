"""Print a results file as a Markdown table (what bench/README.md shows of a run).

    .venv/bin/python bench/report.py bench/results/<timestamp>.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import fig_text, fmt  # noqa: E402


def figure(fig: dict) -> str:
    return fig_text(fig, markdown=True)


def table(rows: list[dict]) -> str:
    out = ["| benchmark | case | figure | ours: median (min - max) | peers: median | ours / peer | target | met |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        peers = "<br>".join(f"{k}: {figure(v)}" for k, v in r["peers"].items()) or ""
        ratios = "<br>".join(f"{k}: {fmt(v)}x" for k, v in r["ratios"].items()) or ""
        verdict = {True: "met", False: "**missed**", None: "not judged"}
        targets = "<br>".join(f"{t['text']}: is {fmt(t['actual'])}, {verdict[t['met']]}" for t in r["targets"]) or ""
        met = {True: "yes", False: "**NO**", None: "n/a" if r["targets"] else ""}[r["met"]]
        cells = [r["benchmark"], r["label"], r["figure"], figure(r["ours"]), peers, ratios, targets, met]
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rows = [json.loads(line) for line in Path(argv[0]).read_text().splitlines() if line.strip()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
