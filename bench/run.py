"""Every benchmark of the project in one go, and `bench/RESULTS.md` from their figures.

What it does
    Runs bench/serve.py, accel.py, upload.py, miss.py, gc.py, admin.py, rclone.py and cluster.py
    one after the other, each as a subprocess with `--json` into a temp directory, with their
    shortest options under --quick or their defaults otherwise. A script that fails (or is missing a
    tool: nginx, wrk, rclone) is recorded as such and the others still run. Then it writes
    the report: the date, the machine (cores, memory, CPU model, load average, how busy the
    CPUs were before and after), the versions, and a table per benchmark: each figure beside
    its reference measured in the same run (nginx for local serving, plain aioboto3 for
    transfers and misses, an exact LRU for the GC, the 10-file store for the admin pages,
    rclone `serve http --vfs-cache-mode full` over the same moto bucket for cold and warm
    reads), the ratio, the target and whether it was met. Each script's own printout lands
    beside its JSON (kept with --keep).

Why
    A ratio against a reference taken minutes apart on the same machine says more than an
    absolute figure from a shared 2-core VM; one command makes the whole set repeatable.

Usage
    python bench/run.py [--quick] [--only serve,accel,...] [--out bench/RESULTS.md] [--keep]

Exit status 0 when every selected script ran (a missed target is a finding, not a failure),
1 when one failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from benchlib import (
    cpu_busy,
    find_tool,
    git_revision,
    log,
    nproc,
    package_versions,
    temp_directory,
)

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"

# name -> (options under --quick, options of the full profile); in the order they run.
PROFILES: dict[str, tuple[list[str], list[str]]] = {
    "serve": (["--duration", "1s", "--warmup", "1s", "--runs", "1", "--put-size", "64MiB"], []),
    # Three runs in the full profile: the static tree's ratios swing by a tenth run to run.
    "accel": (["--duration", "1s", "--warmup", "1s", "--runs", "1"], ["--runs", "3"]),
    "upload": (["--small-count", "20", "--large-count", "1", "--large-size", "8MiB",
                "--big", "0"], []),
    "miss": (["--size", "1MiB", "--runs", "1", "--warm-runs", "3", "--concurrency", "4"], []),
    "gc": (["--quick"], []),
    "admin": (["--quick"], []),
    "rclone": (["--size", "1MiB", "--runs", "1", "--warm-runs", "2"], []),
    "cluster": (["--quick"], []),
}
TIMEOUT = {True: 900.0, False: 3600.0}  # seconds a script may take, quick / full


@dataclasses.dataclass
class Outcome:
    """One script's run."""

    name: str
    argv: list[str]
    status: int | None  # exit status; None: not run or timed out
    seconds: float
    data: dict[str, Any] | None  # its JSON
    stdout: str
    stderr_tail: str
    note: str = ""  # why it did not run or failed


@dataclasses.dataclass
class Row:
    """One line of a benchmark's table."""

    figure: str
    value: str
    reference: str
    ratio: str
    target: str
    met: bool | None  # None: no target


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Run every benchmark and write bench/RESULTS.md (figures, references, "
                    "ratios, targets).")
    parser.add_argument("--quick", action="store_true",
                        help="each script's shortest options (a few minutes in all)")
    parser.add_argument("--only", default=None, metavar="NAME,...",
                        help=f"only these benchmarks (of {','.join(PROFILES)})")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="the report to write (default bench/RESULTS.md)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp directory (each script's JSON, output and log)")
    parser.add_argument("--merge", action="store_true",
                        help="with --only: replace those benchmarks' rows and sections in the "
                             "existing report and keep the rest")
    args = parser.parse_args(argv)
    names = list(PROFILES)
    if args.only is not None:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in PROFILES]
        if unknown or not names:
            parser.error(f"--only: unknown benchmark(s) {','.join(unknown) or '(none)'}; "
                         f"choose from {','.join(PROFILES)}")
    args.names = names
    if args.merge and (args.only is None or not args.out.exists()):
        parser.error("--merge needs --only and an existing report to merge into")
    return args


# -- machine and versions -------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text()
    total = re.search(r"^MemTotal:\s*(\d+)", meminfo, re.MULTILINE)
    return {
        "cores": str(nproc()),
        "memory": f"{int(total.group(1)) / 1024**2:.1f} GiB" if total else "?",
        "cpu": model.group(1).strip() if model else platform.processor() or "?",
        "kernel": platform.release(),
    }


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def tool_version(name: str, argv: list[str], pattern: str) -> str | None:
    path = find_tool(name)
    if path is None:
        return None
    out = subprocess.run([path, *argv], capture_output=True, text=True, check=False)
    found = re.search(pattern, out.stdout + out.stderr)
    return found.group(1) if found else "?"


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0], "filestore git": git_revision() or "?"}
    for name, argv, pattern in (("nginx", ["-v"], r"nginx/(\S+)"),
                                ("wrk", ["-v"], r"wrk (\S+)"),
                                ("rclone", ["version"], r"rclone (\S+)")):
        found[name] = tool_version(name, argv, pattern) or "not installed"
    found.update(package_versions("uvicorn", "starlette", "aioboto3", "moto"))
    return found


# -- running the scripts --------------------------------------------------------------------------


def run_script(name: str, quick: bool, work: Path) -> Outcome:
    options = PROFILES[name][0 if quick else 1]
    json_path = work / f"{name}.json"
    argv = [sys.executable, str(BENCH / f"{name}.py"), *options, "--json", str(json_path)]
    shown = ["python", f"bench/{name}.py", *options, "--json", f"<tmp>/{name}.json"]
    if name == "rclone" and find_tool("rclone") is None:
        return Outcome(name, shown, None, 0.0, None, "", "", "rclone is not installed")
    log(f"{name}: {' '.join(shown)}")
    started = time.monotonic()
    out_path, err_path = work / f"{name}.out", work / f"{name}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                cwd=BENCH.parent, start_new_session=True)
        try:
            status: int | None = proc.wait(TIMEOUT[quick])
        except subprocess.TimeoutExpired:
            proc.terminate()  # run_main stops its servers on SIGTERM
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
            status = None
    seconds = time.monotonic() - started
    stdout = out_path.read_text(errors="replace")
    stderr_tail = "\n".join(err_path.read_text(errors="replace").splitlines()[-8:])
    data = None
    note = ""
    if status == 0:
        try:
            data = json.loads(json_path.read_text())
        except (OSError, ValueError) as exc:
            note = f"no results: {exc}"
    elif status is None:
        note = f"timed out after {TIMEOUT[quick]:.0f} s"
    else:
        note = f"exit status {status}"
    log(f"{name}: {note or 'done'} in {seconds:.0f} s")
    return Outcome(name, shown, status, seconds, data, stdout, stderr_tail, note)


# -- the figures of each script -------------------------------------------------------------------


def bench_module(name: str) -> ModuleType:
    """bench/<name>.py, for its target constants (loaded by path: `gc` is also a builtin)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def x(value: float) -> str:
    return f"{value:.2f}x"


def ge(ratio: float, target: float) -> tuple[str, bool]:
    return f">= {target}x", ratio >= target


def serve_rows(data: dict[str, Any]) -> list[Row]:
    m = bench_module("serve")
    found = {(r["target"], r["size"]): r for r in data["results"]}
    targets = {"1k": ("rps", m.TARGET_1K_RPS_RATIO), "32m": ("mbps", m.TARGET_32M_MBPS_RATIO)}
    rows = []
    for (target, size), fs in found.items():
        if target != "filestore":
            continue
        key, goal = targets.get(size, ("rps", None))
        unit = "req/s" if key == "rps" else "MB/s"
        for other in ("nginx", "starlette", "asgi"):
            if (other, size) not in found:  # (a run of an older serve.py had no asgi)
                continue
            ref = found[other, size]
            ratio = fs[key] / ref[key]
            if other == "asgi":
                asgi_goal = m.TARGET_ASGI_RATIOS.get(size)
                text, met = ge(ratio, asgi_goal) if asgi_goal else ("-", None)
            else:
                text, met = ge(ratio, goal) if goal and other == "nginx" else ("-", None)
            rows.append(Row(f"GET {size} {unit}, filestore vs {other}", f"{fs[key]:,.0f}",
                            f"{ref[key]:,.0f}", x(ratio), text, met))
    put = data.get("put")
    if put:
        growth = put["growth_mib"]
        rows.append(Row(f"PUT {put['size'] // 2**20} MiB: worker RSS growth", f"{growth:.1f} MiB",
                        "-", "-", f"< {m.PUT_RSS_TARGET_MIB} MiB",
                        growth < m.PUT_RSS_TARGET_MIB))
    return rows


def accel_rows(data: dict[str, Any]) -> list[Row]:
    m = bench_module("accel")
    found = {(r["target"], r["size"]): r for r in data["results"]}
    goals = {"1k": m.TARGET_1K_RPS_RATIO, "32m": m.TARGET_32M_MBPS_RATIO}
    rows = []
    for size in dict.fromkeys(size for _, size in found):
        ref = found["nginx", size]
        for target in ("nginx+filestore", "nginx+static", "filestore"):
            if (target, size) not in found:  # (a run of an older accel.py had no static)
                continue
            fs = found[target, size]
            # As accel.py reports it: the median of the runs' ratios (taken seconds apart).
            ratios = sorted(a["rps"] / b["rps"] for a, b in zip(fs["runs"], ref["runs"],
                                                                   strict=True))
            ratio = ratios[len(ratios) // 2] if len(ratios) % 2 else \
                (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2
            goal = (m.TARGET_STATIC_RATIO if target == "nginx+static"
                    else goals.get(size) if target == "nginx+filestore" else None)
            text, met = ge(ratio, goal) if goal else ("-", None)
            rows.append(Row(f"GET {size} req/s, {target} vs nginx", f"{fs['rps']:,.0f}",
                            f"{ref['rps']:,.0f}", x(ratio), text, met))
    cost = data.get("put_cost")
    if cost:
        rows.append(Row("PUT 1 KiB median ms, static_hits on vs off",
                        f"{cost['static']['median_ms']:.2f}", f"{cost['plain']['median_ms']:.2f}",
                        x(cost["ratio"]), "- (context)", None))
    return rows


def upload_rows(data: dict[str, Any]) -> list[Row]:
    fs, ref = data["filestore"], data["reference"]
    text, met = ge(fs["ratio"], fs["target_ratio"])
    rows = [Row(f"queue drain MB/s vs aioboto3 ({data['workload']['description']})",
                f"{fs['mbps']:,.1f}", f"{ref['mbps']:,.1f}", x(fs["ratio"]), text, met)]
    big = data.get("big")
    if big:
        peak = big["peak_rss_mib"]
        rows.append(Row(f"peak RSS uploading {big['size'] // 2**20} MiB", f"{peak:.1f} MiB", "-",
                        "-", f"< {big['target_peak_mib']:.0f} MiB",
                        peak < big["target_peak_mib"]))
    return rows


def miss_rows(data: dict[str, Any]) -> list[Row]:
    m = bench_module("miss")
    cold, crowd, warm = data["cold"], data["concurrent"], data["warm"]
    fs, direct = cold["filestore"], cold["direct"]
    return [
        Row("cold GET TTFB ms, filestore vs aioboto3", f"{fs['ttfb_ms']:.1f}",
            f"{direct['ttfb_ms']:.1f}", x(cold["ttfb_ratio"]),
            f"<= {m.TTFB_FACTOR}x + {m.TTFB_SLACK_MS:g} ms", cold["ttfb_ok"]),
        Row("cold GET total ms, filestore vs aioboto3", f"{fs['total_ms']:.1f}",
            f"{direct['total_ms']:.1f}", x(cold["total_ratio"]), f"<= {m.TOTAL_FACTOR}x",
            cold["total_ok"]),
        Row(f"{crowd['clients']} concurrent cold GETs: TTFB max vs first client",
            "-", f"{crowd['first_ttfb_ms']:.1f}", x(crowd["ttfb_ratio_max"]),
            f"<= {m.JOIN_FACTOR}x, 1 GET at moto ({crowd['moto_gets']})", crowd["ok"]),
        Row("warm GET total ms, cached vs local file", f"{warm['cached_total_ms']:.1f}",
            f"{warm['local_total_ms']:.1f}", x(warm["ratio"]), f"<= {m.WARM_FACTOR}x",
            warm["ok"]),
    ]


def gc_rows(data: dict[str, Any]) -> list[Row]:
    m = bench_module("gc")
    rows = [Row(f"hit ratio, cache {h['cache']} of the objects, sampled LRU vs exact LRU",
                f"{h['filestore']:.4f}", f"{h['lru']:.4f}", x(h["ratio"]),
                *ge(h["ratio"], m.HIT_RATIO_TARGET)) for h in data["hits"]]
    flat = data["flat"]
    rows.append(Row(f"eviction cost, {flat['largest']} index rows vs {flat['smallest']}", "-",
                    "-", x(flat["ratio"]), f"<= {m.FLAT_TARGET}x",
                    flat["ratio"] <= m.FLAT_TARGET))
    return rows


def admin_rows(data: dict[str, Any]) -> list[Row]:
    small, large = data["http"]["small"], data["http"]["large"]
    files = data["stores"]["large"].get("files", data["settings"]["files"])
    rows = []
    # Pages by position: the prefix page's name differs between the stores.
    for (_, lo), (name, hi) in zip(small.items(), large.items(), strict=True):
        rows.append(Row(f"{name} median ms, {files:,} files vs {data['settings']['small']}",
                        f"{hi['median_ms']:.2f}", f"{lo['median_ms']:.2f}",
                        x(hi["median_ms"] / lo["median_ms"]), f"< {data['target_ms']:g} ms",
                        hi["median_ms"] < data["target_ms"]))
    return rows


def rclone_rows(data: dict[str, Any]) -> list[Row]:
    rows = []
    for kind in ("cold", "warm"):
        r = data[kind]
        for figure, key in (("TTFB", "ttfb"), ("total", "total")):
            rows.append(Row(f"{kind} GET {figure} ms, filestore vs rclone",
                            f"{r['filestore'][f'{key}_ms']:.1f}",
                            f"{r['rclone'][f'{key}_ms']:.1f}", x(r[f"{key}_ratio"]),
                            "- (context)", None))
    return rows


def cluster_rows(data: dict[str, Any]) -> list[Row]:
    put, tp = data["put"], data["throughput"]["results"]
    rows = [Row("PUT 1 KiB median ms, PostgreSQL registry vs SQLite",
                f"{put['postgres']['median_ms']:.2f}", f"{put['sqlite']['median_ms']:.2f}",
                x(put["ratio"]), f"<= {put['target']}x", put["met"]),
            Row("PUT 1 KiB p95 ms, PostgreSQL registry vs SQLite",
                f"{put['postgres']['p95_ms']:.2f}", f"{put['sqlite']['p95_ms']:.2f}",
                x(put["ratio_p95"]), "- (context)", None)]
    if "replicas" in put:  # cluster.replicas = 1 (a two-node cluster of its own)
        rows += [Row("PUT 1 KiB median ms, cluster.replicas = 1 vs SQLite",
                     f"{put['replicas']['median_ms']:.2f}", f"{put['sqlite']['median_ms']:.2f}",
                     x(put["replicas_ratio"]), f"<= {put['replicas_target']}x",
                     put["replicas_met"]),
                 Row("PUT 1 KiB p95 ms, cluster.replicas = 1 vs SQLite",
                     f"{put['replicas']['p95_ms']:.2f}", f"{put['sqlite']['p95_ms']:.2f}",
                     x(put["replicas_ratio_p95"]), "- (context)", None)]
    for peer in data["peer"]:
        size = f"{peer['size'] // 2**20} MiB" if peer["size"] >= 2**20 else \
            f"{peer['size'] // 2**10} KiB"
        local = peer["local"]
        for kind, name, key, goal in (("peer_cold", "peer (cold)", "ttfb", peer["target"]),
                                      ("peer_cold", "peer (cold)", "total", None),
                                      ("peer_warm", "warm on B", "ttfb", None),
                                      ("peer_warm", "warm on B", "total", None)):
            value, ref = peer[kind][f"{key}_ms"], local[f"{key}_ms"]
            rows.append(Row(f"GET {size} {key.upper() if key == 'ttfb' else key} ms, {name} vs "
                            "local on A", f"{value:.2f}", f"{ref:.2f}", x(value / ref),
                            f"<= {goal}x" if goal else "- (context)",
                            value / ref <= goal if goal else None))
    base = tp["one sqlite node"]["rps"]
    for target in ("3 nodes behind nginx", "one postgres node (n1)"):
        rows.append(Row(f"GET 1 KiB req/s, {target} vs one SQLite node",
                        f"{tp[target]['rps']:,.0f}", f"{base:,.0f}", x(tp[target]["rps"] / base),
                        "- (context)", None))
    return rows


TABLES: dict[str, tuple[str, str, Callable[[dict[str, Any]], list[Row]]]] = {
    "serve": ("Local serving (bench/serve.py)", "nginx, bare Starlette and a do-nothing ASGI "
              "app under filestore's own server serving the same files, wrk", serve_rows),
    "accel": ("nginx offload (bench/accel.py)", "nginx alone serving the data directory",
              accel_rows),
    "upload": ("Upload queue (bench/upload.py)", "a plain aioboto3 script uploading the same "
               "files to the same moto", upload_rows),
    "miss": ("Cache miss (bench/miss.py)", "a plain aioboto3 GET from the same moto; the "
             "local-only file", miss_rows),
    "gc": ("Cache GC (bench/gc.py)", "an exact LRU on the same Zipf trace", gc_rows),
    "admin": ("Admin pages (bench/admin.py)", "the same pages of a 10-file store", admin_rows),
    "rclone": ("rclone (bench/rclone.py)", "`rclone serve http --vfs-cache-mode full` over the "
               "same moto bucket", rclone_rows),
    "cluster": ("Cluster (bench/cluster.py)", "a node with the default SQLite registry for "
                "PUTs and GET throughput; node A's own local read for peer reads", cluster_rows),
}


# -- the report -----------------------------------------------------------------------------------


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def report(args: argparse.Namespace, outcomes: list[Outcome], info: dict[str, Any]) -> str:
    profile = "quick (--quick: each script's shortest options)" if args.quick else \
        "full (each script's defaults)"
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python bench/run.py{' --quick' if args.quick else ''}"
        f"{f' --only {args.only}' if args.only else ''}` on {info['date']}; profile: "
        f"**{profile}**. Each figure is beside its reference measured in the same run on the "
        "same machine; the ratios are steadier than the figures.",
        "",
        "## Machine",
        "",
        *(f"- {k}: {v}" for k, v in info["machine"].items()),
        f"- load average before / after: {info['load_before']} / {info['load_after']}",
        f"- CPUs busy with other work before / after (incl. hypervisor steal): "
        f"{info['busy_before']:.0%} / {info['busy_after']:.0%}",
        "",
        "## Versions",
        "",
        ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        "",
        "## Summary",
        "",
        "| benchmark | status | seconds | targets met |",
        "|---|---|---:|---|",
    ]
    tables: list[str] = []
    for outcome in outcomes:
        row, section = summary_and_section(outcome)
        lines.append(row)
        tables += section
    return "\n".join([*lines, *tables, ""])


def summary_and_section(outcome: Outcome, note: str = "") -> tuple[str, list[str]]:
    """The benchmark's row of the summary table and its section (from a blank line and its
    `## title` on); `note` goes under the title."""
    title, reference, rows_of = TABLES[outcome.name]
    rows: list[Row] = []
    problem = outcome.note
    if outcome.data is not None:
        try:
            rows = rows_of(outcome.data)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            problem = f"its results could not be read: {exc!r}"
    judged = [r for r in rows if r.met is not None]
    met = sum(1 for r in judged if r.met)
    status = "ok" if outcome.status == 0 and not problem else (problem or "failed")
    row = (f"| {outcome.name} | {cell(status)} | {outcome.seconds:.0f} | "
           f"{f'{met}/{len(judged)}' if judged else '-'} |")
    tables = ["", f"## {title}", *(["", note] if note else []), "", f"Reference: {reference}.",
              "", f"Command: `{' '.join(outcome.argv)}`"]
    if rows:
        tables += ["", "| figure | filestore | reference | ratio | target | result |",
                   "|---|---:|---:|---:|---|---|"]
        tables += [f"| {cell(r.figure)} | {r.value} | {r.reference} | {r.ratio} | "
                   f"{cell(r.target)} | "
                   f"{'-' if r.met is None else ('met' if r.met else '**missed**')} |"
                   for r in rows]
    if problem:
        tables += ["", f"Not measured: {problem}."]
        if outcome.stderr_tail:
            tables += ["", "```", outcome.stderr_tail, "```"]
    if outcome.data and outcome.data.get("problems"):
        tables += ["", "Problems the script reported:", ""]
        tables += [f"- {cell(str(p))}" for p in outcome.data["problems"]]
    return row, tables


def merged(existing: str, args: argparse.Namespace, outcomes: list[Outcome],
           info: dict[str, Any]) -> str:
    """`existing` (a report of this script) with the summary rows and sections of the
    benchmarks just run replaced (added, if it had none), the others as they were; each new
    section says when, where and at which revision it was measured."""
    note = (f"Regenerated on its own by `python bench/run.py{' --quick' if args.quick else ''} "
            f"--only {args.only} --merge` on {info['date']} (filestore git "
            f"{info['versions'].get('filestore git', '?')}; load average before / after "
            f"{info['load_before']} / {info['load_after']}; CPUs busy with other work "
            f"{info['busy_before']:.0%} / {info['busy_after']:.0%}); the rest of the report is "
            "the earlier run's.")
    new = {o.name: summary_and_section(o, note) for o in outcomes}
    titles = {f"## {TABLES[name][0]}": name for name in new}
    lines = existing.rstrip("\n").split("\n")
    out: list[str] = []
    skipping = False
    for line in lines:
        if line.startswith("## "):
            if skipping:
                out.append("")  # the blank line before this title went with the old section
            skipping = line in titles
            if skipping:
                if out and out[-1] == "":
                    out.pop()
                out += new.pop(titles[line])[1]
                continue
        if skipping:
            continue
        name = line.split("|")[1].strip() if line.startswith("| ") else ""
        if name in new and line.count("|") == 5:  # its summary row: replace it, keep the section
            out.append(new[name][0])
            continue
        out.append(line)
    for _, section in new.values():  # benchmarks the report had no section of yet
        out += section
    return "\n".join([*out, ""])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(),
                            "versions": versions(), "load_before": load_average()}
    info["busy_before"] = cpu_busy()
    outcomes = []
    with temp_directory("filestore-bench-run-", args.keep) as work:
        try:
            for name in args.names:
                outcomes.append(run_script(name, args.quick, work))
        except KeyboardInterrupt:
            print("bench/run.py: interrupted; no report written", file=sys.stderr)
            return 130
    info["busy_after"] = cpu_busy()
    info["load_after"] = load_average()
    if args.merge:
        args.out.write_text(merged(args.out.read_text(), args, outcomes, info))
    else:
        args.out.write_text(report(args, outcomes, info))
    log(f"report written to {args.out}")
    failed = [o.name for o in outcomes if o.status != 0 and o.note != "rclone is not installed"]
    if failed:
        print(f"bench/run.py: failed: {', '.join(failed)} (see {args.out})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
