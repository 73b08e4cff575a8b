"""The worker's SIGUSR1 stack dump (mode's ``_cry``, the stall watchdog's evidence before
its exit 75, README's ``kill -USR1``) names where each thread and task is and leaves their
local variables out: a WHMCS call in flight held the API secret in its request body, which
mode's dump wrote to the worker's log in the clear."""

from __future__ import annotations

import asyncio
import io
import signal
import socket

import faust

from common.settings import WhmcsSettings
from common.whmcs import WhmcsClient
from streams.__main__ import faust_worker

SECRET = "WHSECRET-stack-dump-123"


class Boot:
    process = "worker"
    signalled: list[int] = []
    stopping = False


def test_the_sigusr1_dump_shows_the_stacks_but_not_the_whmcs_secret():
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
    before = {s: signal.getsignal(s) for s in handled}
    loop = asyncio.new_event_loop()
    with socket.socket() as server:  # accepts, never answers: the call stays in flight
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        settings = WhmcsSettings.load({
            "WHMCS_API_URL": f"http://127.0.0.1:{server.getsockname()[1]}/includes/api.php",
            "WHMCS_API_IDENTIFIER": "api-identifier-0001", "WHMCS_API_SECRET": SECRET})
        try:
            app = faust.App("stack-dump", autodiscover=False, web_enabled=False, loop=loop)
            err = io.StringIO()
            runner = faust_worker(Boot())(app, quiet=True, redirect_stdouts=False,
                                          override_logging=False, loop=loop, stderr=err)

            async def go() -> None:
                async with WhmcsClient(settings, timeout_s=30) as client:
                    call = asyncio.ensure_future(client.call("GetOrders", {"id": 1}))
                    await asyncio.sleep(0.5)  # the request is written; no answer comes
                    runner._on_sigusr1()  # what mode's SIGUSR1 handler runs
                    await asyncio.sleep(0.2)
                    call.cancel()
            loop.run_until_complete(go())
        finally:
            for signum in handled:
                signal.signal(signum, before[signum])
            loop.close()
    dump = err.getvalue()
    assert "THREAD MainThread" in dump and "TASKS" in dump
    assert "common/whmcs.py" in dump  # the WHMCS call's task and where it waits
    assert SECRET not in dump
    assert "LOCAL VARIABLES" not in dump
