"""Load generator: AddOrder + AcceptOrder pairs per second against a running sandbox.

Runs in its own process (the caller's), over raw HTTP/1.1 keep-alive connections, because
an HTTP client library would cost more CPU than the server and measure itself. Each
connection loops: AddOrder → read ``orderid`` → AcceptOrder(autosetup) → next.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from sandbox import seed


@dataclass
class BenchResult:
    pairs: int
    seconds: float
    errors: int

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0


def _request(host: str, path: str, form: dict[str, str]) -> bytes:
    body = urlencode(form).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
            f"application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> dict:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return json.loads(await reader.readexactly(length))


async def _worker(url: str, auth: dict[str, str], first_client: int, clients: int,
                  deadline_pairs: list[int], out: BenchResult, worker_no: int) -> None:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    host = parts.netloc
    n = 0
    try:
        while deadline_pairs[0] > 0:
            deadline_pairs[0] -= 1
            client_id = first_client + (worker_no * 7919 + n) % clients
            n += 1
            add = {**auth, "action": "AddOrder", "clientid": str(client_id),
                   "paymentmethod": "mailin", "pid[0]": "1", "billingcycle[0]": "monthly",
                   "pid[1]": "5", "billingcycle[1]": "onetime", "noemail": "1",
                   "notes": f"sfOrderId=801BENCH{worker_no:04d}{n:06d}"}
            writer.write(_request(host, parts.path, add))
            resp = await _read_response(reader)
            if resp.get("result") != "success":
                out.errors += 1
                continue
            accept = {**auth, "action": "AcceptOrder", "orderid": str(resp["orderid"]),
                      "autosetup": "1", "sendemail": "0"}
            writer.write(_request(host, parts.path, accept))
            resp = await _read_response(reader)
            if resp.get("result") != "success":
                out.errors += 1
                continue
            out.pairs += 1
    finally:
        writer.close()


async def run_bench(url: str, auth: dict[str, str], *, pairs: int = 5000,
                    concurrency: int = 32, accounts: int = 100) -> BenchResult:
    """Drive ``pairs`` AddOrder+AcceptOrder pairs over ``concurrency`` connections."""
    healthy = [a.whmcs_client_id for a in seed.whmcs_clients(accounts)
               if a.whmcs_client_status == "Active" and a.whmcs_client_id]
    first, count = healthy[0], len(healthy)
    result = BenchResult(0, 0.0, 0)
    remaining = [pairs]
    start = time.perf_counter()
    await asyncio.gather(*(_worker(url, auth, first, count, remaining, result, i)
                           for i in range(concurrency)))
    result.seconds = time.perf_counter() - start
    return result
