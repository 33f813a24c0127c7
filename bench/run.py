"""Run hpc-edge's benchmarks side by side with their peers; print a table, write JSON lines.

    .venv/bin/python bench/run.py                 # everything, full sizes, 3 repeats (tens of minutes)
    .venv/bin/python bench/run.py --quick         # small sizes, 1-2 repeats (about 2 minutes): CI smoke
    .venv/bin/python bench/run.py --only throughput tower_scale

Each line of bench/results/<timestamp>.jsonl is one figure: the benchmark, its parameters, our
figure (median, min, max over the repeats), the peers' figures from the same run, the ratios, the
targets and whether they are met, and the machine. The harness checks that it works; it never
fails because a figure misses its target (it exits 1 only when a benchmark could not run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import allocation, batch, eventservice, relays, throughput, tower_scale  # noqa: E402
from bench.harness import BENCH, Context, Record, ensure_peers_venv, ensure_py_spy, machine_facts, unavailable  # noqa: E402

BENCHMARKS = {
    "throughput": throughput,
    "allocation": allocation,
    "tower_scale": tower_scale,
    "relays": relays,
    "eventservice": eventservice,
    "batch": batch,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes and 1-2 repeats (the CI smoke run)")
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), metavar="NAME",
                    help=f"run only these benchmarks ({', '.join(BENCHMARKS)})")
    ap.add_argument("--repeats", type=int, default=None, help="repeats of every figure (default 3; quick 1-2)")
    ap.add_argument("--throughput-n", type=int, nargs="+", default=None, metavar="N",
                    help="payload counts of the throughput benchmark (default 5000 20000; quick 1000)")
    ap.add_argument("--no-parsl", action="store_true", help="do not install or run Parsl (reported as skipped)")
    ap.add_argument("--out", type=Path, default=BENCH / "results", help="where the .jsonl goes")
    ap.add_argument("--profile", action="store_true",
                    help="sample the tower and ranks with py-spy (installed into bench/.peers-venv) into "
                         "<out>/<timestamp>-profiles/; summarise with bench/profile_summary.py")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the scratch directory (for a post-mortem)")
    return ap.parse_args(argv)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raise_fd_limit() -> None:
    """Towers and relay simulators started from here inherit this process's open-file limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _terminated(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raise_fd_limit()
    signal.signal(signal.SIGTERM, _terminated)  # so the benchmarks' finally blocks stop what they started
    names = args.only or list(BENCHMARKS)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    out_path = args.out / f"{stamp}{'-quick' if args.quick else ''}.jsonl"
    tmp = Path(tempfile.mkdtemp(prefix="hpc-edge-bench-"))
    machine = machine_facts()
    run_info = {"started": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "quick": args.quick,
                "command": " ".join([Path(sys.executable).name, "bench/run.py", *(sys.argv[1:] if argv is None
                                                                                    else argv)])}
    peers_status = "skipped: --no-parsl given" if args.no_parsl else None
    if peers_status is None and ("throughput" in names or "batch" in names):
        why = ensure_peers_venv(log)
        peers_status = None if why is None else f"skipped: {why}"
    profile_dir = None
    if args.profile:
        why = ensure_py_spy(log)
        if why is None:
            profile_dir = args.out / f"{stamp}-profiles"
            profile_dir.mkdir(parents=True, exist_ok=True)
            run_info["profiled"] = True  # figures of a profiled run carry the sampler's cost
        else:
            log(f"profile: {why}; running without profiles")
    ctx = Context(quick=args.quick, tmp=tmp, log=log, peers_status=peers_status,
                  options={"repeats": args.repeats, "throughput_n": args.throughput_n, "profile_dir": profile_dir})
    log(f"results -> {out_path}  (scratch {tmp})")
    all_rows: list[dict] = []
    failed = 0
    try:
        with open(out_path, "w") as out:
            for name in names:
                started = time.monotonic()
                load_before = [round(x, 2) for x in os.getloadavg()]
                log(f"== {name} (load average {load_before})")
                try:
                    records = BENCHMARKS[name].run(ctx)
                except Exception as exc:  # noqa: BLE001 - one benchmark's failure is reported, the rest go on
                    failed += 1
                    log(f"{name} failed:\n{traceback.format_exc()}")
                    records = [Record(name, "(benchmark failed)", {}, unavailable(f"error: {exc}"))]
                took = round(time.monotonic() - started, 1)
                load = {"loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
                for record in records:
                    row = record.as_dict(machine, {**run_info, "benchmark_s": took, **load})
                    if row["status"].startswith("error"):
                        failed += 1
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    all_rows.append(row)
                log(f"== {name} done in {took} s")
    finally:
        if args.keep_tmp:
            log(f"scratch kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print_table(all_rows, machine, run_info, out_path)
    return 1 if failed else 0


# ---- the table ------------------------------------------------------------------------------------
def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def fig_text(fig: dict, markdown: bool = False) -> str:
    """A figure as median (min-max over the repeats): terse for the terminal, spelled out for markdown."""
    if fig["status"] != "ok":
        return fig["status"]
    if fig["repeats"] == 1:
        return f"{fmt(fig['median'])} {fig['unit']}"
    if markdown:
        return f"{fmt(fig['median'])} {fig['unit']} ({fmt(fig['min'])} - {fmt(fig['max'])}, {fig['repeats']} runs)"
    return f"{fmt(fig['median'])} {fig['unit']} [{fmt(fig['min'])}-{fmt(fig['max'])}] x{fig['repeats']}"


def print_table(rows: list[dict], machine: dict, run_info: dict, out_path: Path) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"hpc-edge bench ({'quick' if run_info['quick'] else 'full'}) on {machine['hostname']}: "
                        f"{machine['cpu_count']} cpus, Python {machine['python']}", show_lines=True)
    for col in ("benchmark", "case", "figure", "ours: median [min-max] xrepeats", "peers (median)",
                "ours / peer", "target", "met"):
        table.add_column(col, overflow="fold")
    for r in rows:
        peers = "\n".join(f"{k}: {fig_text(v)}" for k, v in r["peers"].items())
        ratios = "\n".join(f"{k}: {fmt(v)}x" for k, v in r["ratios"].items())
        targets = "\n".join(f"{t['text']} (is {fmt(t['actual'])})" for t in r["targets"])
        met = {True: "[green]yes", False: "[red]NO", None: "-" if not r["targets"] else "[yellow]n/a"}[r["met"]]
        cells = [r["benchmark"], r["label"], r["figure"], fig_text(r["ours"]), peers, ratios, targets]
        table.add_row(*map(escape, cells), met)
    console = Console(width=max(160, Console().width))
    console.print(table)
    console.print(f"JSON lines: {out_path}")


if __name__ == "__main__":
    sys.exit(main())
