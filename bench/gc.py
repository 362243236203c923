"""Cache GC benchmark: sampled-LRU hit ratio against an exact LRU, and the cost of an eviction.

What is measured
    1. Hit ratio. A trace of --requests requests (default 200,000) over --objects objects
       (default 20,000), drawn from a Zipf(--alpha, default 0.9) popularity with a fixed --seed,
       each object a size drawn log-uniformly between --min-size and --max-size (4 KiB and 4 MiB),
       is replayed against two caches holding at most the same number of bytes: each of
       --cache-sizes (default 1%, 5% and 20% of the total bytes of all objects).
       - filestore: the real `CacheGC` (cache/gc.py) over a migrated `SqliteRegistry` and a
         `LocalStore` in a fresh data directory (under /dev/shm when there is one, so an fsync
         costs nothing), with `CacheSettings(max_size=budget, min_free=0, sample=--sample)`.
         A request is a hit when the object's file is in the cache area (`data_dir/cache/`),
         as for filestore's read path. A miss makes the file (sparse, `ftruncate` to its size),
         indexes it (`tx.cache.add`, in one registry transaction) and then evicts until the cache
         is within its budget again (`gc.collect(0)`, when `gc.over_budget()` says so, as
         filestore's upkeep does). A hit notes its time in memory; the notes are written with
         `tx.cache.touch` every --flush-every requests (default 1,000), as filestore batches access
         times (cache/usage.py) about once a second.
       - exact LRU: an OrderedDict with byte accounting, which on a miss evicts from its least
         recently used end until the new object fits.
       The clock is the request's sequence number, not the wall clock, so the run is
       deterministic for a seed and as fast as the registry allows. An object larger than the
       whole budget is never cached by either (filestore streams such a file through): a miss
       every time. Reported per size: request hit ratio (hits / requests) of each, and
       filestore / LRU (target >= 0.97x). The registry's `cache.bytes` counter must be within the
       budget after every miss's eviction round (the peak is shown) and at the end, when it must
       also agree with the index and with the files in the cache area. The GC sees the hits not
       yet written through the same hook filestore gives it (`last_read`), and the index's
       slots must be dense at the end (0..rows-1: `cache.sample` draws slots uniformly).
    2. Eviction cost as the index grows. For each of --index-sizes (default 10k, 100k, 1M) a fresh
       migrated registry gets that many `cache_entries` rows (one transaction, random
       `last_access`; rows only, no files: `drop_cached` finds none and the row goes all the
       same) and is kept as built. Then, --rounds times (default 5; --quick 3), each index in
       turn is copied afresh from that state and --evictions calls (default 2,000) of
       `CacheGC._evict_one` are timed on the copy, 64 to a transaction as `_evict_batch` does
       it, after 8 untimed ones. Timing stops at the end of the first batch that ends after
       --time-limit seconds (default 20; --quick 5), so that an eviction that scans the index
       cannot hold the run up for long; the evictions timed are listed (the fewest of a round).
       Reported: microseconds per eviction (commits included; each round's mean, their median
       and range, and the median over all batches), the ratio of the medians to the smallest
       index (target <= 1.3x, issue #17: an eviction costs `sample` index seeks, never a
       scan), and how busy the machine was meanwhile with other processes: the rounds take
       turns, so a burst of other work does not land on one index size only, and the median
       leaves out a round it spoilt.

    --quick shrinks both parts (20,000 requests over 2,000 objects; indexes of 10k and 100k, 5 s
    of evictions each at most, 3 rounds) to well under a minute; the full run takes a few
    minutes on 2 cores. --only runs one part (`--only evictions`: the eviction cost alone,
    about a minute, most of it building the 1M index). Each part's time is printed.

Why
    Sampled LRU trades a little hit ratio for evictions whose cost does not grow with the cache.
    Both halves of that trade are measured here against the same-run reference: an exact LRU
    with the same byte budget on the same trace, and the same eviction on a small index.

Usage
    python bench/gc.py [--quick] [--only hits|evictions] [--requests 200000] [--objects 20000]
                       [--alpha 0.9] [--cache-sizes 1,5,20] [--sample 5] [--flush-every 1000]
                       [--index-sizes 10k,100k,1m] [--evictions 2000] [--rounds 5]
                       [--time-limit 20] [--seed 1] [--json PATH] [--keep]

Stdlib and filestore only; nothing is served and nothing listens.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import itertools
import math
import os
import random
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchlib import (
    KIB,
    MIB,
    BenchError,
    add_output_options,
    apply_profile,
    args_json,
    count_text,
    count_value,
    git_revision,
    log,
    nproc,
    parse_size,
    print_rows,
    ratio_text,
    run_main,
    size_text,
    verdict,
    write_json,
)

from filestore.cache.gc import CacheGC
from filestore.config import CacheSettings
from filestore.local import LocalStore
from filestore.registry import SqliteRegistry

HIT_RATIO_TARGET = 0.97  # filestore's request hit ratio / the exact LRU's
FLAT_TARGET = 1.3  # eviction cost at the largest index / at the smallest (issue #17)
EVICT_BATCH = 64  # evictions per transaction: cache/gc.py's _BATCH
EVICT_WARMUP = 8  # untimed evictions first: statements prepared, the index's pages cached

QUICK = {"requests": 20_000, "objects": 2_000, "index_sizes": [10_000, 100_000],
         "time_limit": 5.0, "rounds": 3}
FULL = {"requests": 200_000, "objects": 20_000, "index_sizes": [10_000, 100_000, 1_000_000],
        "time_limit": 20.0, "rounds": 5}
PARTS = ("hits", "evictions")


# -- arguments ------------------------------------------------------------------------------------


def parse_counts(text: str) -> list[int]:
    """`10k,100k,1m`: decimal counts (k = 1,000, m = 1,000,000)."""
    counts = []
    for part in text.split(","):
        count = count_value(part)
        if count is None or count < 1:
            raise argparse.ArgumentTypeError(f"not a list of counts: {text!r} (e.g. 10k,100k,1m)")
        counts.append(count)
    return counts


def parse_percents(text: str) -> list[float]:
    """`1,5,20`: cache sizes in percent of the working set's bytes."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of percentages: {text!r}") from None
    if not all(0 < value <= 100 for value in values):
        raise argparse.ArgumentTypeError("percentages must be above 0 and at most 100")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/gc.py",
        description="Hit ratio of filestore's sampled-LRU cache GC vs an exact LRU on a Zipf "
                    "trace; eviction cost as the cache index grows.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="20,000 requests over 2,000 objects, indexes up to 100k rows")
    parser.add_argument("--only", choices=PARTS, default=None,
                        help="run one part: hits (the hit ratio) or evictions (their cost)")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests in the trace (default 200,000; --quick 20,000)")
    parser.add_argument("--objects", type=int, default=None,
                        help="distinct objects (default 20,000; --quick 2,000)")
    parser.add_argument("--alpha", type=float, default=0.9,
                        help="Zipf exponent of the popularity (default 0.9)")
    parser.add_argument("--min-size", type=parse_size, default=4 * KIB,
                        help="smallest object (default 4KiB)")
    parser.add_argument("--max-size", type=parse_size, default=4 * MIB,
                        help="largest object (default 4MiB); sizes are log-uniform between")
    parser.add_argument("--cache-sizes", type=parse_percents, default=[1.0, 5.0, 20.0],
                        help="cache budgets in %% of all objects' bytes (default 1,5,20)")
    parser.add_argument("--sample", type=int, default=5,
                        help="cache.sample: entries drawn per eviction (default 5)")
    parser.add_argument("--flush-every", type=int, default=1000,
                        help="requests between writes of the batched access times (default 1000)")
    parser.add_argument("--index-sizes", type=parse_counts, default=None,
                        help="index rows for the eviction cost (default 10k,100k,1m; "
                             "--quick 10k,100k)")
    parser.add_argument("--evictions", type=int, default=2000,
                        help="timed evictions per index size and round (default 2000)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of timed evictions, each index size in turn, each on a "
                             "fresh copy of its index (default 5; --quick 3)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds of timed evictions per index size and round, after "
                             "which timing stops at the end of the batch (default 20; --quick 5)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    add_output_options(parser, "data directories, registries")
    args = parser.parse_args(argv)
    apply_profile(args, QUICK, FULL)
    if args.requests < 1 or args.objects < 1:
        parser.error("--requests and --objects must be at least 1")
    if not 1 <= args.min_size <= args.max_size:
        parser.error("--min-size must be at least 1 byte and at most --max-size")
    if not 1 <= args.sample <= 64:
        parser.error("--sample must be from 1 to 64 (as cache.sample)")
    if args.flush_every < 1 or args.evictions < 1 or args.rounds < 1:
        parser.error("--flush-every, --evictions and --rounds must be at least 1")
    if args.time_limit <= 0:
        parser.error("--time-limit must be above 0")
    if any(n <= args.evictions + EVICT_WARMUP for n in args.index_sizes):
        parser.error(f"every --index-sizes entry must exceed --evictions + {EVICT_WARMUP} "
                     "(the warm-up)")
    return args


# -- the workload ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    sizes: list[int]  # bytes of object i
    trace: list[int]  # the object each request asks for

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)


def make_workload(args: argparse.Namespace) -> Workload:
    """Log-uniform sizes and a Zipf(alpha) trace: object i is the (i+1)-th most popular. Sizes
    are drawn independently of popularity, so popular objects are neither small nor large."""
    rng = random.Random(args.seed)
    low, high = math.log(args.min_size), math.log(args.max_size)
    sizes = [int(math.exp(rng.uniform(low, high))) for _ in range(args.objects)]
    weights = itertools.accumulate(1 / rank**args.alpha for rank in range(1, args.objects + 1))
    trace = rng.choices(range(args.objects), cum_weights=list(weights), k=args.requests)
    return Workload(sizes, trace)


def object_path(obj: int) -> str:
    # One directory level, as real paths have, so that eviction's pruning of emptied
    # directories is part of what is measured.
    return f"bench/{obj % 256:02x}/{obj}.bin"


# -- exact LRU ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CacheRun:
    hits: int
    evictions: int
    seconds: float
    peak_bytes: int = 0  # filestore: the highest `cache.bytes` after a miss's eviction round
    rows: int = 0  # filestore: index rows at the end


def run_lru(workload: Workload, budget: int) -> CacheRun:
    started = time.perf_counter()
    cache: collections.OrderedDict[int, int] = collections.OrderedDict()
    used = hits = evictions = 0
    for obj in workload.trace:
        if obj in cache:
            hits += 1
            cache.move_to_end(obj)
            continue
        size = workload.sizes[obj]
        if size > budget:
            continue  # streamed through, never cached
        while used + size > budget:
            _, freed = cache.popitem(last=False)
            used -= freed
            evictions += 1
        cache[obj] = size
        used += size
    return CacheRun(hits, evictions, time.perf_counter() - started)


# -- filestore's GC -------------------------------------------------------------------------------


@contextlib.contextmanager
def data_directory(base: Path, name: str,
                   exists: bool = False) -> Iterator[tuple[SqliteRegistry, LocalStore]]:
    """A fresh data directory (`exists`: one made already, its registry in place) with a
    migrated registry and a local store; closed afterwards."""
    data_dir = base / name
    if not exists:
        data_dir.mkdir()
    registry = SqliteRegistry(data_dir / "registry.sqlite3")
    try:
        registry.migrate()
        yield registry, LocalStore(data_dir, min_free=0)
    finally:
        registry.close()


def counter(registry: SqliteRegistry, name: str) -> int:
    return registry.read.counters.get(name)


def make_sparse(file: Path, size: int) -> None:
    """The object's bytes in the cache area: a sparse file, so no bytes are written."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def flush_accesses(registry: SqliteRegistry, accessed: dict[str, float]) -> None:
    """What cache/usage.py writes once a second: the batched access times."""
    if accessed:
        with registry.transaction() as tx:
            tx.cache.touch([(when, path) for path, when in accessed.items()])
        accessed.clear()


def run_gc(workload: Workload, budget: int, args: argparse.Namespace, base: Path) -> CacheRun:
    started = time.perf_counter()
    with data_directory(base, f"hit-{budget}") as (registry, local):
        settings = CacheSettings(max_size=budget, min_free=0, sample=args.sample)
        accessed: dict[str, float] = {}
        # As in filestore, the GC also sees the reads not written to the index yet.
        gc = CacheGC(registry, local, settings, rng=random.Random(args.seed),
                     last_read=accessed.get)
        paths = [object_path(obj) for obj in range(len(workload.sizes))]
        files = [local.cache_root / path for path in paths]
        hits = peak = 0
        for now, obj in enumerate(workload.trace, start=1):
            size = workload.sizes[obj]
            if files[obj].exists():
                hits += 1
                accessed[paths[obj]] = float(now)
            elif size <= budget:
                make_sparse(files[obj], size)
                with registry.transaction() as tx:
                    tx.cache.add(paths[obj], 1, size, "x", float(now))
                # The cheap check first, as filestore's upkeep does: collect() always takes a
                # write transaction, even when there is nothing to evict.
                if gc.over_budget() and not gc.collect(0).fits:
                    raise BenchError(f"gc.collect(0) could not get within {budget} bytes")
                peak = max(peak, gc.cached_bytes())
            if now % args.flush_every == 0:
                flush_accesses(registry, accessed)
        check_consistent(registry, local, budget)
        with contextlib.closing(sqlite3.connect(registry.path)) as conn:
            rows, top = conn.execute(
                "SELECT count(*), coalesce(max(slot) + 1, 0) FROM cache_entries").fetchone()
        if rows != top:
            raise BenchError(f"{rows} index rows in slots 0..{top - 1}: the slots have holes")
        return CacheRun(hits, counter(registry, "cache.evictions"),
                        time.perf_counter() - started, peak, rows)


def check_consistent(registry: SqliteRegistry, local: LocalStore, budget: int) -> None:
    """The budget held, and the counters, the index and the cache area agree."""
    cached = counter(registry, "cache.bytes")
    entries = counter(registry, "cache.entries")
    with contextlib.closing(sqlite3.connect(registry.path)) as conn:
        rows, row_bytes = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM cache_entries").fetchone()
    on_disk = [os.path.join(d, f) for d, _, names in os.walk(local.cache_root) for f in names]
    disk_bytes = sum(os.stat(f).st_size for f in on_disk)
    if cached > budget:
        raise BenchError(f"cache.bytes {cached} is over the budget {budget} at the end")
    if (cached, entries) != (row_bytes, rows) or (rows, row_bytes) != (len(on_disk), disk_bytes):
        raise BenchError(
            f"counters ({entries} entries, {cached} bytes), index ({rows} rows, {row_bytes} "
            f"bytes) and cache area ({len(on_disk)} files, {disk_bytes} bytes) disagree")


# -- eviction cost --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BuiltIndex:
    rows: int
    registry: Path  # the registry as built (WAL checkpointed): each round times a copy
    build_seconds: float
    db_bytes: int


@dataclasses.dataclass(frozen=True)
class EvictRound:
    evictions: int  # timed (fewer than --evictions if --time-limit cut them short)
    mean_us: float  # total time / evictions, commits included
    batches_us: list[float]  # per batch: its time / its evictions


@dataclasses.dataclass(frozen=True)
class EvictCost:
    rows: int
    build_seconds: float
    db_bytes: int
    evictions: int  # timed in each round (the fewest of a round)
    mean_us: float  # the median over rounds of each round's mean
    rounds_us: list[float]  # each round's mean, in the order they ran
    median_us: float  # median over every round's batches of (batch time / its evictions)


def fill_index(registry: SqliteRegistry, rows: int, rng: random.Random) -> None:
    """`rows` index rows in one transaction: random sizes and access times, no files."""
    with registry.transaction() as tx:
        tx._conn.executemany(
            "INSERT INTO cache_entries (path, version, size, sha256, last_access, slot) "
            "VALUES (?, 1, ?, 'x', ?, ?)",
            ((object_path(i), rng.randint(4 * KIB, 4 * MIB), rng.uniform(0, rows), i)
             for i in range(rows)),
        )


def timed_batches(gc: CacheGC, evictions: int, limit: float) -> list[tuple[float, int]]:
    """Run `evictions` `_evict_one` calls, EVICT_BATCH to a transaction, or fewer if `limit`
    seconds have passed at the end of a batch: (seconds, evicted) per batch."""
    batches: list[tuple[float, int]] = []
    done = 0
    while done < evictions and sum(seconds for seconds, _ in batches) < limit:
        count = min(EVICT_BATCH, evictions - done)
        started = time.perf_counter()
        with gc.registry.transaction() as tx:
            for _ in range(count):
                if gc._evict_one(tx) is None:
                    raise BenchError("_evict_one found nothing to evict in a full index")
        batches.append((time.perf_counter() - started, count))
        done += count
    return batches


def build_index(rows: int, args: argparse.Namespace, base: Path) -> BuiltIndex:
    """A migrated registry with `rows` index rows, closed (so its WAL is checkpointed into the
    database file and removed): what every round of `time_round` starts from."""
    with data_directory(base, f"index-{rows}") as (registry, _):
        started = time.perf_counter()
        fill_index(registry, rows, random.Random(args.seed))
        build_seconds = time.perf_counter() - started
        if counter(registry, "cache.entries") != rows:
            raise BenchError(f"cache.entries is {counter(registry, 'cache.entries')}, "
                             f"not the {rows} rows inserted")
    if any(registry.path.parent.glob("registry.sqlite3-*")):  # closing checkpoints the WAL
        raise BenchError(f"the index of {rows:,} rows still has a WAL after closing")
    built = base / f"index-{rows}.sqlite3"
    os.replace(registry.path, built)
    shutil.rmtree(registry.path.parent)
    return BuiltIndex(rows, built, build_seconds, built.stat().st_size)


def time_round(index: BuiltIndex, number: int, args: argparse.Namespace,
               base: Path) -> EvictRound:
    """--evictions timed evictions on a fresh copy of `index` (after EVICT_WARMUP untimed)."""
    name = f"round-{number}-{index.rows}"
    (base / name).mkdir()
    shutil.copyfile(index.registry, base / name / "registry.sqlite3")
    try:
        with data_directory(base, name, exists=True) as (registry, local):
            # max_size 0: _evict_one ignores the budget, but nothing should count as fitting.
            settings = CacheSettings(max_size=0, min_free=0, sample=args.sample)
            gc = CacheGC(registry, local, settings, rng=random.Random(args.seed + number))
            timed_batches(gc, EVICT_WARMUP, math.inf)
            batches = timed_batches(gc, args.evictions, args.time_limit)
            evicted = sum(n for _, n in batches)
            left = counter(registry, "cache.entries")
            if left != index.rows - EVICT_WARMUP - evicted:
                raise BenchError(f"{left} index rows left after the evictions, expected "
                                 f"{index.rows - EVICT_WARMUP - evicted}")
    finally:
        shutil.rmtree(base / name, ignore_errors=True)
    total = sum(seconds for seconds, _ in batches)
    return EvictRound(evicted, total / evicted * 1e6, [seconds / n * 1e6 for seconds, n in batches])


def measure_evictions(args: argparse.Namespace, base: Path) -> list[EvictCost]:
    """Every index built, then --rounds rounds, each timing every index in turn."""
    built = []
    for rows in args.index_sizes:
        log(f"eviction cost: building an index of {rows:,} rows")
        built.append(build_index(rows, args, base))
    rounds: list[list[EvictRound]] = [[] for _ in built]
    for number in range(args.rounds):
        log(f"eviction cost: round {number + 1} of {args.rounds}")
        for index, done in zip(built, rounds, strict=True):
            done.append(time_round(index, number, args, base))
    return [EvictCost(index.rows, index.build_seconds, index.db_bytes,
                      min(r.evictions for r in done),
                      statistics.median(r.mean_us for r in done), [r.mean_us for r in done],
                      statistics.median(us for r in done for us in r.batches_us))
            for index, done in zip(built, rounds, strict=True)]


class MachineLoad:
    """How busy the CPUs were with other processes while this one ran: the busy ticks of
    /proc/stat (steal included) less this process's own CPU time, over the CPUs' time."""

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        ticks = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + fields[4]  # idle + iowait
        own = os.times()
        return (sum(fields[:8]) - idle) / ticks, sum(fields[:8]) / ticks, own.user + own.system

    def others(self) -> float:
        """The fraction of all CPUs' time that other processes took since the start."""
        busy0, total0, own0 = self._start
        busy1, total1, own1 = self._sample()
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(total1 - total0, 1e-9)


# -- report ---------------------------------------------------------------------------------------


def hit_ratio_part(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """Part 1: print the hit-ratio table; its figures for --json."""
    started = time.perf_counter()
    workload = make_workload(args)
    total = workload.total_bytes
    distinct = len(set(workload.trace))
    print(f"1. Request hit ratio, filestore's CacheGC (sample {args.sample}, access times "
          f"written every {args.flush_every:,} requests) vs exact LRU")
    print(f"   {args.requests:,} requests, Zipf({args.alpha}) over {args.objects:,} objects of "
          f"{size_text(args.min_size)}-{size_text(args.max_size)} (log-uniform, seed "
          f"{args.seed}), {total / MIB:,.1f} MiB in all; {distinct:,} objects requested, so "
          f"at most {1 - distinct / args.requests:.3f} of requests can hit")
    print()
    rows = [["cache size", "budget MiB", "filestore hits", "LRU hits", "filestore / LRU",
             "evictions fs / LRU", "peak cache.bytes", "index rows at end", "fs s",
             "LRU s"]]
    all_ok = True
    figures = []
    for percent in args.cache_sizes:
        budget = int(total * percent / 100)
        if budget < 1:
            raise BenchError(f"a cache of {percent:g}% of {total} bytes holds nothing")
        log(f"hit ratio: cache {percent:g}% ({budget / MIB:,.1f} MiB)")
        lru = run_lru(workload, budget)
        fs = run_gc(workload, budget, args, base)
        if fs.peak_bytes > budget:
            raise BenchError(f"cache.bytes reached {fs.peak_bytes}, over the budget {budget}")
        fs_ratio, lru_ratio = fs.hits / args.requests, lru.hits / args.requests
        ok = fs_ratio >= HIT_RATIO_TARGET * lru_ratio
        all_ok &= ok
        figures.append({
            "cache": f"{percent:g}%", "budget_bytes": budget,
            "filestore": fs_ratio, "lru": lru_ratio, "ratio": fs_ratio / lru_ratio, "ok": ok,
            "evictions": {"filestore": fs.evictions, "lru": lru.evictions},
            "peak_bytes": fs.peak_bytes, "index_rows": fs.rows,
            "seconds": {"filestore": fs.seconds, "lru": lru.seconds},
        })
        rows.append([f"{percent:g}%", f"{budget / MIB:,.1f}", f"{fs_ratio:.4f}",
                     f"{lru_ratio:.4f}", ratio_text(fs_ratio, lru_ratio, 3),
                     f"{fs.evictions:,} / {lru.evictions:,}",
                     f"{fs.peak_bytes / budget:.4f} of budget",
                     f"{fs.rows:,}", f"{fs.seconds:.1f}",
                     f"{lru.seconds:.2f}"])
    print_rows(rows, right_align=True)
    print(f"filestore / LRU hit ratio {verdict(all_ok)} the target >= {HIT_RATIO_TARGET}x at "
          "every size; cache.bytes within budget and counters, index and cache area agree "
          "after every run")
    seconds = time.perf_counter() - started
    print(f"part 1 took {seconds:.1f} s")
    return {"total_bytes": total, "distinct_objects": distinct, "target": HIT_RATIO_TARGET,
            "ok": all_ok, "sizes": figures, "seconds": seconds}


def eviction_part(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """Part 2: print the eviction-cost table; its figures for --json."""
    started = time.perf_counter()
    print(f"2. Eviction cost, CacheGC._evict_one (sample {args.sample}), up to "
          f"{args.evictions:,} timed evictions per index and round (at most "
          f"~{args.time_limit:g} s), {EVICT_BATCH} to a transaction, after {EVICT_WARMUP} "
          f"untimed; {args.rounds} round{'s' if args.rounds > 1 else ''}, the indexes in turn, "
          "each on a fresh copy")
    print()
    load = MachineLoad()
    results = measure_evictions(args, base)
    others = load.others()
    smallest = results[0]
    table = [["index rows", "build s", "registry MiB", "evictions timed", "us/eviction",
              "rounds' range", "us/eviction (p50 batch)", f"vs {count_text(smallest.rows)}"]]
    for cost in results:
        table.append([count_text(cost.rows), f"{cost.build_seconds:.1f}",
                      f"{cost.db_bytes / MIB:,.1f}", f"{cost.evictions:,}", f"{cost.mean_us:,.1f}",
                      f"{min(cost.rounds_us):,.1f}-{max(cost.rounds_us):,.1f}",
                      f"{cost.median_us:,.1f}", ratio_text(cost.mean_us, smallest.mean_us, 3)])
    print_rows(table, right_align=True)
    largest = results[-1]
    flat = largest.mean_us <= FLAT_TARGET * smallest.mean_us
    print(f"us/eviction: the median of the rounds' means. {count_text(largest.rows)} / "
          f"{count_text(smallest.rows)}: {ratio_text(largest.mean_us, smallest.mean_us, 3)} "
          f"{verdict(flat)} the target: flat (<= {FLAT_TARGET}x)")
    print(f"other processes kept the CPUs {others:.0%} busy meanwhile"
          + (" (absolute figures unreliable, ratios less so)" if others > 0.15 else ""))
    seconds = time.perf_counter() - started
    print(f"part 2 took {seconds:.1f} s")
    return {"largest": count_text(largest.rows), "smallest": count_text(smallest.rows),
            "ratio": largest.mean_us / smallest.mean_us, "target": FLAT_TARGET, "ok": flat,
            "indexes": [dataclasses.asdict(cost) for cost in results], "cpu_busy_others": others,
            "seconds": seconds}


# -- main -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, base: Path) -> int:
    started = time.perf_counter()
    print(f"Cache GC benchmark{' (--quick)' if args.quick else ''}: python "
          f"{sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, {nproc()} CPUs, git "
          f"{git_revision() or '?'}, data directories in {base}")
    print()
    figures: dict[str, Any] = {}
    if args.only in (None, "hits"):
        hits = hit_ratio_part(args, base)
        figures.update({"hits": hits.pop("sizes"), "hit_ratio": hits})
        print()
    if args.only in (None, "evictions"):
        figures["flat"] = eviction_part(args, base)
        print()
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.1f} s")
    # "hits" and "flat" hold what bench/run.py reports; the rest is for a closer look.
    write_json(args.json, {
        "versions": {"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version,
                     "git": git_revision()},
        "cpus": nproc(),
        "settings": {k: v for k, v in args_json(args).items() if k not in ("json", "keep")},
        **figures,
        "elapsed_s": elapsed,
    })
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # In memory when possible: an fsync (synchronous = FULL on every commit) then costs
    # nothing, so the figures are the GC's own work, not the disk's.
    return run_main("bench/gc.py", "filestore-gc-", args.keep, lambda base: run(args, base),
                    in_memory=True)


if __name__ == "__main__":
    sys.exit(main())
