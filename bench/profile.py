"""Where the worker's CPU goes: a summary of a py-spy profile (raw folded stacks).

    .venv/bin/python -m bench.profile FILE [--top N]

``FILE`` is what ``py-spy record --format raw`` writes (``bench.stages --backlog N
--profile FILE`` records one of the worker during the backlog): one line per distinct stack,
``frame;frame;...;frame COUNT``, outermost first, each frame ``function (file:line)``.

Prints the samples' share by **area** (the innermost frame's file, grouped: our HTTP
transport, the WHMCS client, the table seam, aiokafka, faust, asyncio, ...; a helper of the
standard library no area names, such as ``urllib.parse`` or ``_weakrefset``, counts for the
nearest caller that has one), by file, and the
**inclusive** share of the functions most often on the stack (a function counted once per
sample however deep it recurs). Self time says where the interpreter is; inclusive says which
step of an Order costs what.

A sample is the thread holding the GIL (``--gil``) at that moment, running or not. On a busy
2-core box a socket write that wakes the receiver (the broker, a sandbox) is often where the
kernel switches to it while the writer still holds the GIL, so writes read larger than the
CPU they cost; ``/proc``'s system time (~10 % of the worker's CPU) bounds them.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
# the innermost frame's file → the area it belongs to (first match wins)
AREAS: list[tuple[str, str]] = [
    ("common/http_transport.py", "our HTTP transport"),
    ("common/whmcs.py", "WHMCS client"),
    ("streams/mapping.py", "Order → AddOrder mapping"),
    ("streams/phpserial.py", "Order → AddOrder mapping"),
    ("streams/faust_seam/", "faust seam (tables, writer, consumer)"),
    ("streams/state.py", "state values (dedupe, intents)"),
    ("streams/", "worker flow (handler, lanes, lease, checkpoint, ...)"),
    ("common/avro.py", "Avro"),
    ("fastavro/", "Avro"),
    ("common/log.py", "logging"),
    ("logging/", "logging"),
    ("common/", "common (settings, backoff, errors, ...)"),
    ("aiokafka/", "aiokafka"),
    ("faust/", "faust"),
    ("mode/", "mode (faust's services; the loop's own C)"),
    ("rocksdict/", "RocksDB"),
    ("orjson", "JSON"),
    ("json/", "JSON"),
    ("prometheus_client/", "metrics"),
    ("asyncio/streams.py", "aiokafka"),  # its connections are asyncio streams; ours are not
    ("asyncio/", "asyncio"),
    ("uvloop/", "asyncio"),
    ("<string>", "dataclass __init__s"),
]


def area_of(path: str) -> str:
    """The area of a :func:`short_path`: its start, not a substring anywhere (a library's
    own ``streams/`` or ``common/`` folder, as in ``anyio/streams/tls.py`` or
    ``opentelemetry/…/_common/``, is that library's, not ours)."""
    for marker, area in AREAS:
        if path.startswith(marker):
            return area
    return "other"


#: the checkout this module runs from: a worker started from it (``bench.stages``) has its
#: files under it, wherever the checkout is (a worktree, not only ``/work/main``)
_REPO = str(Path(__file__).resolve().parents[1]) + "/"
_STDLIB = re.compile(r"/lib/python3\.\d+/")


def short_path(path: str) -> str:
    """``…/site-packages/aiokafka/conn.py`` → ``aiokafka/conn.py``; the repo's own files
    relative to the repo; the standard library's relative to its directory."""
    for cut in ("site-packages/", _REPO, "/work/main/"):
        at = path.rfind(cut)
        if at >= 0:
            return path[at + len(cut):]
    stdlib = _STDLIB.search(path)  # any Python 3 the Makefile takes (3.11 to 3.13)
    return path[stdlib.end():] if stdlib else path


def parse_frame(frame: str) -> tuple[str, str]:
    """``"send (/x/common/http_transport.py:154)"`` → ``("send", "common/http_transport.py")``."""
    m = _FRAME.match(frame)
    if m is None:
        return frame, frame
    return m.group("function"), short_path(m.group("file"))


@dataclass
class Summary:
    samples: int = 0
    by_area: Counter[str] = field(default_factory=Counter)
    by_file: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)

    def share(self, count: int) -> float:
        return 100.0 * count / self.samples if self.samples else 0.0


def summarize(lines: list[str] | str) -> Summary:
    """The summary of raw folded stacks (the text, or its lines)."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    out = Summary()
    for raw in lines:
        raw = raw.strip()
        if not raw:
            continue
        stack, _, count_text = raw.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            raise ValueError(f"not a folded stack line (no sample count): {raw[:80]!r}") \
                from None
        frames = [parse_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        out.samples += count
        _function, innermost = frames[-1]
        area = next((a for a in (area_of(path) for _fn, path in reversed(frames))
                     if a != "other"), "other")
        out.by_area[area] += count
        out.by_file[innermost] += count
        for name in {f"{fn} ({path})" for fn, path in frames}:
            out.inclusive[name] += count
    return out


def render(summary: Summary, top: int = 25) -> str:
    rows = [f"{summary.samples} samples"]
    rows.append("self time by area:")
    rows += [f"  {summary.share(n):5.1f} %  {name}" for name, n in summary.by_area.most_common()]
    rows.append(f"self time by file (top {top}):")
    rows += [f"  {summary.share(n):5.1f} %  {name}"
             for name, n in summary.by_file.most_common(top)]
    rows.append(f"inclusive, by function (top {top} below the entry points):")
    # the entry points (every sample under them) say nothing
    kept = [(name, n) for name, n in summary.inclusive.most_common()
            if n < 0.95 * summary.samples]
    rows += [f"  {summary.share(n):5.1f} %  {name}" for name, n in kept[:top]]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", type=Path, help="py-spy raw folded stacks")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    summary = summarize(args.file.read_text())
    if not summary.samples:
        print(f"{args.file}: no samples", file=sys.stderr)
        return 1
    print(render(summary, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
