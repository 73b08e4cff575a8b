"""``python -m bench.soak --orders 1000000``: memory over a long run (not part of make test).

The whole pipeline (``bench.harness``) provisions ``--orders`` Orders at its sustainable rate:
Orders are seeded and approved a chunk at a time, and the next chunk is approved once
``--next-at`` (80 %) of the previous one is written back — and every Order of the chunk
before it: at most two chunks in flight — so the pipeline never idles on a chunk's last
Orders and never builds an unbounded backlog; at the end every Order is waited for. (Soaks
before this approved the next chunk only once the whole previous one was written back;
``soak.json`` now records ``next_at``.) Every ``--sample-s`` seconds the resident memory
(VmRSS) of every process — connector, worker, sink, both sandboxes, the broker — is
recorded with the number of Orders written back so far, into ``soak.json`` and a plot
``soak.png`` (``--out``; the samples so far are in ``soak.partial.json`` while it runs). At
the end it prints each process's growth from the moment ``--after`` Orders were done to the
end; the target, for the connector, worker and sink, is at most 10 MB (the sandboxes and the
broker are reported beside them: the Salesforce sandbox keeps every Order it is seeded with,
as an org does). Exits 1 when a pipeline process grew more, a WHMCS order was duplicated, or the
run left fewer than four samples after ``--after`` Orders (nothing measured).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import FINAL_STATES, Pipeline
from bench.side_by_side import cpu_pids

RESULTS = Path(__file__).resolve().parent / "results"
PIPELINE = ("connector", "worker", "sink")  # what the target judges


NEXT_AT = 0.8  # --next-at: the share of a chunk written back before the next is approved
POLL_S = 2.0  # how often the Orders in flight are read while waiting
SETTLE_TIMEOUT_S = 3600.0  # a wait that ends with Orders unsettled: they are stuck
SERIES_SKIP = ("t_s", "orders", "threads")  # a sample's keys that are no process's RSS
MIN_SAMPLES = 4  # after --after Orders: two at each end of the growth, none shared


def status(pid: int | None) -> tuple[float | None, int | None]:
    """RSS in MB and the thread count of ``pid`` (None, None once it is gone)."""
    if not pid:
        return None, None
    rss = threads = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    except OSError:
        return None, None
    return rss, threads


class Sampler(threading.Thread):
    def __init__(self, p: Pipeline, every_s: float, done: list[int],
                 partial: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.p, self.every_s, self.done, self.partial = p, every_s, done, partial
        self.samples: list[dict[str, Any]] = []
        self.halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.halt.wait(self.every_s):
            row: dict[str, Any] = {"t_s": round(time.monotonic() - self.t0, 1),
                                   "orders": self.done[0]}
            threads: dict[str, int | None] = {}
            for name, pid in cpu_pids(self.p).items():
                row[name], count = status(pid)
                if name in PIPELINE:
                    threads[name] = count
            # beside the RSS: a step in a process's RSS that comes with a new thread is most
            # likely that thread's stack and malloc arena, not a leak
            row["threads"] = threads
            self.samples.append(row)
            if self.partial is not None and len(self.samples) % 6 == 0:
                # the samples so far, once a minute: a run that dies still leaves them
                self.partial.write_text(json.dumps({"samples": self.samples}) + "\n")


def _unsettled(rows: dict[str, dict[str, Any]], ids: list[str]) -> list[str]:
    return [oid for oid in ids if rows.get(oid, {}).get("Activation_Status__c")
            not in FINAL_STATES]


def _count(rows: dict[str, dict[str, Any]], ids: list[str], done: list[int]) -> list[str]:
    """``ids`` not written back; ``done[0]`` counts the others, ``done[1]`` those of them
    written back ``Failed`` (a soak of the failure path measures nothing it should)."""
    left = _unsettled(rows, ids)
    settled = set(ids) - set(left)
    done[0] += len(settled)
    done[1] += sum(rows[oid].get("Activation_Status__c") == "Failed" for oid in settled)
    return left


def _settle(p: Pipeline, ids: list[str], allowed_left: int, done: list[int]) -> list[str]:
    """Wait until at most ``allowed_left`` of ``ids`` are not written back, or
    ``SETTLE_TIMEOUT_S`` passed; those not written back. ``done[0]`` counts the rest as
    they are seen (the sampler's Orders written back so far), ``done[1]`` those Failed."""
    if allowed_left <= 0:  # all of them: the harness's wait
        return _count(p.wait_settled(ids, timeout=SETTLE_TIMEOUT_S, poll=POLL_S), ids, done)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        left = _count(p.wait_settled(ids, timeout=0, poll=POLL_S), ids, done)  # one read
        if len(left) <= allowed_left or time.monotonic() >= deadline:
            return left
        ids = left  # read only the Orders still in flight
        time.sleep(POLL_S)


def soak(directory: Path, orders: int, chunk: int, every_s: float,
         partial: Path | None = None, next_at: float = 0.8) -> dict[str, Any]:
    """``next_at``: the share of the newest chunk written back before the next is approved
    (the one before it entirely: at most two chunks in flight); 1.0 waits for the whole
    chunk. ``main`` passes ``--next-at`` (``NEXT_AT``)."""
    done = [0, 0]  # Orders written back, and of them Failed (_settle)
    with Pipeline(directory, accounts=500, orders=chunk, broken_every=0, partitions=6) as p:
        sampler = Sampler(p, every_s, done, partial)
        sampler.start()
        newest: list[str] = p.sf.approve(chunk)  # the newest chunk's Orders in flight
        older: list[str] = []  # the rest of the chunk before it
        size, seeded, approved = len(newest), chunk, len(newest)
        more = approved < orders
        # ends once every Order is approved and written back, or some are stuck
        while True:
            if seeded < orders:
                p.sf.seed(accounts=0, orders=min(chunk, orders - seeded), broken_every=0)
                seeded += min(chunk, orders - seeded)
            if older:  # the chunk before the newest is written back before the next goes in
                older = _settle(p, older, 0, done)
                if older:  # the wait timed out: these are missing, the soak cannot go on
                    break
            # the last chunk: every Order; before it, the next chunk once next_at of this one
            allowed = size - min(size, math.ceil(round(next_at * size, 6))) if more else 0
            newest = _settle(p, newest, allowed, done)
            print(f"  {done[0]} Orders written back, {time.monotonic() - sampler.t0:.0f} s",
                  flush=True)
            if len(newest) > allowed or not more:  # stuck, or every Order written back
                break
            following = p.sf.approve(min(chunk, orders - approved))
            approved += len(following)
            more = approved < orders and bool(following)
            if following:
                older, newest, size = newest, following, len(following)
        pending = older + newest
        if pending:  # stopped on a stuck Order: one last read of every Order in flight
            pending = _settle(p, pending, len(pending), done)
        sampler.halt.set()
        sampler.join()
        counters = p.whmcs.counters()
        per_marker = counters.get("orders_by_marker") or {}
        duplicates = counters.get("duplicates") or {k: v for k, v in per_marker.items() if v > 1}
        invariants = {"approved": approved, "written_back": done[0], "failed": done[1],
                      "missing": len(pending), "missing_orders": sorted(pending)[:20],
                      "whmcs_orders": sum(per_marker.values()), "duplicates": len(duplicates),
                      # Orders with a WHMCS order: one written back without (Failed: the
                      # soak seeds none that should) is counted, quick, as done
                      "created": len(per_marker)}
    return {"orders": done[0], "next_at": next_at, "samples": sampler.samples,
            "invariants": invariants}


def growth(samples: list[dict[str, Any]], after: int) -> dict[str, float]:
    """MB each process grew between the first sample with ``after`` Orders done and the end,
    averaging up to three samples at each end (so one GC's swing does not count) — never
    the same sample at both ends: with 4 or 5 samples two at each end. Fewer than
    ``MIN_SAMPLES`` measure nothing (``{}``; :func:`verdict` fails the run)."""
    later = [s for s in samples if s["orders"] >= after]
    if len(later) < MIN_SAMPLES:
        return {}
    window = min(3, len(later) // 2)
    head, tail = later[:window], later[-window:]
    names = [k for k in later[0] if k not in SERIES_SKIP]
    out = {}
    for name in names:
        a = [s[name] for s in head if s.get(name) is not None]
        b = [s[name] for s in tail if s.get(name) is not None]
        if a and b:
            out[name] = round(sum(b) / len(b) - sum(a) / len(a), 1)
    return out


def verdict(grown: dict[str, float], invariants: dict[str, Any], after: int
            ) -> tuple[int, str]:
    """The soak's exit code and its last line: 0 when every pipeline process was measured
    and grew at most 10 MB after ``after`` Orders, no WHMCS order was duplicated and no
    approved Order was left unsettled."""
    missing = [name for name in PIPELINE if name not in grown]
    if missing:
        return 1, (f"no growth measured for {', '.join(missing)}: fewer than four samples "
                   f"after {after} Orders (two at each end; a longer run, or a lower "
                   f"--after)")
    worst = max(grown[name] for name in PIPELINE)
    line = (f"largest growth of the pipeline's processes after {after} Orders: {worst:.1f} MB "
            f"(target <= 10); the sandboxes and the broker are reported, not judged: the "
            f"Salesforce sandbox holds every Order it is seeded with, and the broker's JVM "
            f"grows its heap up to -Xmx")
    if invariants["duplicates"]:
        line += f"; {invariants['duplicates']} WHMCS orders duplicated"
    unsettled = invariants.get("missing", 0)
    if unsettled:
        line += (f"; {unsettled} Orders not written back when the wait timed out, e.g. "
                 f"{', '.join(invariants.get('missing_orders', [])[:5])}")
    # soaks recorded before the count have no "created"
    written = invariants.get("written_back", 0)
    uncreated = max(0, written - invariants.get("created", written))
    if uncreated:
        line += f"; {uncreated} Orders written back without a WHMCS order (Failed)"
    # Failed with a WHMCS order too (an AcceptOrder refused, an order not Active): every
    # Order the soak seeds is provisionable, and its memory must be provisioning's
    failed = invariants.get("failed", 0)  # soaks recorded before the count have none
    if failed:
        line += f"; {failed} Orders written back Failed"
    return (0 if worst <= 10 and not invariants["duplicates"] and not unsettled
            and not uncreated and not failed else 1), line


def thread_changes(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where a pipeline process's thread count changed: the Orders done by then, the
    process, the count before and after, and its RSS before and after (MB)."""
    changes: list[dict[str, Any]] = []
    for before, after in itertools.pairwise(samples):
        for name, count in (after.get("threads") or {}).items():
            was = (before.get("threads") or {}).get(name)
            if count is not None and was is not None and count != was:
                changes.append({"orders": after["orders"], "process": name,
                                "threads": [was, count],
                                "rss_mb": [before.get(name), after.get(name)]})
    return changes


def plot(samples: list[dict[str, Any]], path: Path, after: int | None = None) -> None:
    """Two panels: the pipeline's processes (what the target judges) on a scale of their own,
    with the band of 10 MB above each one's size at ``after`` Orders; below them the
    sandboxes and the broker, whose growth (the Salesforce sandbox keeps every Order) would
    otherwise flatten the pipeline's lines to the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 8), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    names = [k for k in samples[0] if k not in SERIES_SKIP] if samples else []
    orders = [s["orders"] for s in samples]
    start = next((s for s in samples if after is not None and s["orders"] >= after), None)
    for name in names:
        ax = top if name in PIPELINE else bottom
        line, = ax.plot(orders, [s.get(name) for s in samples], label=name)
        if ax is top and start is not None and start.get(name) is not None:
            ax.axhspan(start[name], start[name] + 10, color=line.get_color(), alpha=0.12)
    if start is not None:
        for ax in (top, bottom):
            ax.axvline(start["orders"], color="grey", linestyle=":", linewidth=1)
    top.set_ylabel("RSS (MB)")
    top.set_title("the pipeline's processes (shaded: 10 MB above each one's RSS at "
                  f"{after:,} Orders, the target)" if start is not None else
                  "the pipeline's processes", fontsize=10)
    top.legend(fontsize=8)
    bottom.set_ylabel("RSS (MB)")
    bottom.set_xlabel("Orders written back")
    bottom.set_title("beside them (reported, not judged)", fontsize=10)
    bottom.legend(fontsize=8)
    fig.suptitle("resident memory over the soak")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=5000)
    parser.add_argument("--after", type=int, default=100_000,
                        help="growth is measured from when this many Orders are done")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--next-at", type=float, default=NEXT_AT,
                        help="approve the next chunk once this share of the previous one is "
                             "written back (and all of the one before; 1: the whole chunk)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not 0 < args.next_at <= 1:
        parser.error("--next-at: a share of a chunk, above 0 and at most 1")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sfprov-soak-") as tmp:
        result = soak(Path(tmp), args.orders, args.chunk, args.sample_s,
                      partial=args.out / "soak.partial.json", next_at=args.next_at)
    result["growth_mb_after"] = {"after_orders": args.after,
                                 "mb": growth(result["samples"], args.after)}
    result["thread_changes"] = thread_changes(result["samples"])
    (args.out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "soak.partial.json").unlink(missing_ok=True)
    plot(result["samples"], args.out / "soak.png", after=args.after)
    print(json.dumps(result["growth_mb_after"]))
    print(json.dumps(result["invariants"]))
    for change in result["thread_changes"]:
        print(f"{change['process']}: {change['threads'][0]} -> {change['threads'][1]} threads "
              f"at {change['orders']} Orders (RSS {change['rss_mb'][0]} -> "
              f"{change['rss_mb'][1]} MB)")
    code, line = verdict(result["growth_mb_after"]["mb"], result["invariants"], args.after)
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
