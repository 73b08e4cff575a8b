"""Client CPU per WHMCS call: httpx (httpcore pool) vs httpx on Http11Transport vs aiohttp,
and the worker's own :class:`common.whmcs.WhmcsClient` (httpx requests on that transport).

``python -m bench.http_clients [--calls 2000] [--concurrency 16] [--kinds K,...]`` against a
WHMCS sandbox it starts itself. Prints calls/s and the client process's CPU per call for
each. The reason the WHMCS client runs httpx on
:class:`common.http_transport.Http11Transport`.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from common.http_transport import Http11Transport
from common.settings import WhmcsSettings
from common.whmcs import WhmcsClient
from sandbox.whmcs.harness import whmcs_sandbox


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _measure(kind: str, url: str, form: dict[str, str], calls: int, conc: int,
                   env: dict[str, str]) -> None:
    sem = asyncio.Semaphore(conc)
    session: Any = None
    client: Any = None
    if kind == "WhmcsClient":
        client = WhmcsClient(WhmcsSettings.load(env))

        async def one() -> None:
            async with sem:
                await client.call("GetProducts")
    elif kind == "aiohttp":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

        async def one() -> None:
            async with sem, session.post(url, data=form) as r:
                await r.read()
    else:
        client = httpx.AsyncClient(
            transport=Http11Transport() if kind == "httpx+http11-transport" else None,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))

        async def one() -> None:
            async with sem:
                (await client.post(url, data=form)).read()
    await asyncio.gather(*[one() for _ in range(50)])  # warm the pool
    t0, c0 = time.perf_counter(), _cpu()
    await asyncio.gather(*[one() for _ in range(calls)])
    elapsed, cpu = time.perf_counter() - t0, _cpu() - c0
    print(f"{kind:26s} {calls / elapsed:8.0f} calls/s   client CPU {cpu / calls * 1000:.3f} ms/call")
    if session is not None:
        await session.close()
    if client is not None:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_clients")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kinds", default="httpx,httpx+http11-transport,aiohttp,WhmcsClient",
                        help="comma-separated: httpx, httpx+http11-transport, aiohttp, "
                             "WhmcsClient")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, whmcs_sandbox(Path(tmp)) as wh:
        form = {"identifier": wh.identifier, "secret": wh.secret, "action": "GetProducts",
                "responsetype": "json"}
        for kind in args.kinds.split(","):
            asyncio.run(_measure(kind, wh.api_url, form, args.calls, args.concurrency,
                                 wh.env()))


if __name__ == "__main__":
    main()
