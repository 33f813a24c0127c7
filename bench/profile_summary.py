"""Summarise a py-spy collapsed-stack file: where the samples are, by function (self and inclusive).

    .venv/bin/python bench/profile_summary.py bench/results/<run>-relays-tower.txt [--top 15]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("/site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m['func']} ({path})"


def summarise(path: Path, top: int = 15) -> dict:
    self_time, inclusive, processes, total = Counter(), Counter(), Counter(), 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [frame_name(f) for f in stack.split(";")]
        proc = ([f for f in frames if f.startswith("process ")] or ["process ?"])[-1]  # the innermost one
        processes[re.sub(r"^process \d+:", "", proc).strip('"')[:100]] += n
        frames = [f for f in frames if not f.startswith(("process ", "thread "))] or frames
        self_time[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    return {"samples": total, "processes": processes.most_common(top), "self": self_time.most_common(top),
            "inclusive": inclusive.most_common(top)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    for path in args.files:
        s = summarise(path, args.top)
        print(f"== {path}: {s['samples']} samples")
        for kind in ("processes", "self", "inclusive"):
            print(f"-- top {kind}")
            for name, n in s[kind]:
                print(f"{100 * n / max(1, s['samples']):6.1f} %  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
