"""The worker's stack dump on SIGUSR1 without local variables (docs/decisions/0018).

mode's worker answers SIGUSR1 (``kill -USR1``, and the stall watchdog's own before its exit
75) with ``mode.utils.logging.cry``: every thread's stack and every asyncio task's, each
frame with its *local variables*, written to stderr past the log's redaction. A WHMCS call
in flight holds the API identifier and secret in its request body; an aiokafka connection
being made holds the SASL password: both went to the worker's log in the clear. The dump
here writes the same stacks — where each thread and task is, which the stall's diagnosis
needs — with no local variable, and masked as every log line is.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import traceback
from typing import IO

import faust
from mode.worker import Worker as ModeWorker

from common.log import redact
from streams.faust_seam._base import CONTRACT


def stack_dump(file: IO[str], loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Write every thread's stack and ``loop``'s tasks' (code locations only) to ``file``."""
    out = io.StringIO()
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        print(f"THREAD {names.get(ident, ident)}", file=out)
        traceback.print_stack(frame, file=out)
    if loop is not None:
        print("TASKS", file=out)
        for task in asyncio.all_tasks(loop):
            task.print_stack(file=out)  # asyncio's: frames and lines, no local variable
    file.write(redact(out.getvalue()))
    file.flush()


class StackDumpWorker(faust.Worker):
    """faust's worker whose SIGUSR1 dump leaves local variables out."""

    async def _cry(self) -> None:
        stack_dump(self.stderr, asyncio.get_running_loop())


# mode names a service's logger after its class's module; keep faust's (as the seam's other
# subclasses do). Set after the class: mode's __init_subclass__ replaces one in the body.
StackDumpWorker.logger = faust.Worker.logger

CONTRACT.update({
    # the SIGUSR1 handler schedules self._cry() (overridden above)
    "R mode Worker._on_sigusr1": (
        ModeWorker, "_on_sigusr1", "46183ffb2553ce8ecdf062d5bde88f5b"),
    "S mode Worker._cry": (ModeWorker, "_cry", "635733b9ee29cd07d83062e9042f29d1"),
})
