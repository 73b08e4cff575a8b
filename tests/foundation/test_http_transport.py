"""common.http_transport against scripted HTTP servers (raw asyncio sockets, real TCP/TLS).

Each server answers the requests of each connection from a script, so every framing and
failure the transport must tell apart is on the wire as a real server would send it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from common import http_transport
from common.clock import lease_clock
from common.http_transport import SEND_DEADLINE, Http11Transport, NotSent
from sandbox.salesforce.tlsgen import tls_material
from streams.__main__ import use_event_loop

# one answer: bytes to write (split into pieces written apart), or a coroutine (writer) -> None
Answer = bytes | list[bytes] | Callable[[asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n" \
     b'{"result":"ok"}\n'


class Scripted:
    """A server answering request *i* of the whole run with ``answers[i]``; the last answer
    repeats. Records each request (head and body) and the connection it came on."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.requests: list[tuple[int, bytes, bytes]] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.url = ""

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/includes/api.php"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                body = await reader.readexactly(length)
                self.requests.append((conn, head, body))
                answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
                if callable(answer):
                    await answer(writer)
                else:
                    for piece in answer if isinstance(answer, list) else [answer]:
                        writer.write(piece)
                        await writer.drain()
                        await asyncio.sleep(0.01)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def event_loop_kind(request: pytest.FixtureRequest) -> object:
    """Every test under Python's loop and under uvloop, the worker's (its own transports,
    TLS and timers), each installed as the worker installs it."""
    use_event_loop(request.param)
    loop = asyncio.new_event_loop()
    assert type(loop).__module__.startswith(request.param), type(loop)
    loop.close()
    yield request.param
    asyncio.set_event_loop_policy(None)


def post(transport: Http11Transport, url: str, body: bytes = b"action=GetProducts",
         **timeouts: float) -> Awaitable[httpx.Response]:
    limits = httpx.Timeout(5.0).as_dict() | timeouts
    return transport.handle_async_request(httpx.Request(
        "POST", url, stream=httpx.ByteStream(body), extensions={"timeout": limits},
        headers={"Content-Type": "application/x-www-form-urlencoded"}))


def run(coro: Awaitable[object]) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def exchanges(answers: list[Answer], n: int) -> tuple[Scripted, list[httpx.Response]]:
    """``n`` requests in a row through one transport to a server scripted with ``answers``."""
    async def go() -> tuple[Scripted, list[httpx.Response]]:
        async with Scripted(answers) as srv:
            t = Http11Transport()
            responses = [await post(t, srv.url) for _ in range(n)]
            await t.aclose()
            return srv, responses
    return asyncio.run(go())


def test_keep_alive_reuses_one_connection_and_writes_a_complete_request():
    async def go():
        async with Scripted([OK]) as srv:
            t = Http11Transport()
            answers = [await post(t, srv.url, b"action=GetProducts&n=%d" % i) for i in range(3)]
            await t.aclose()
            return srv, answers
    srv, answers = run(go())
    assert [(r.status_code, r.json()) for r in answers] == [(200, {"result": "ok"})] * 3
    assert answers[0].headers["content-type"] == "application/json"
    assert srv.connections == 1 and [c for c, _, _ in srv.requests] == [1, 1, 1]
    head = srv.requests[2][1].decode()
    port = srv.url.split(":")[2].split("/")[0]
    assert head.startswith("POST /includes/api.php HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{port}\r\n" in head
    assert "\r\nContent-Length: 22\r\n" in head
    assert "\r\nContent-Type: application/x-www-form-urlencoded\r\n" in head
    assert srv.requests[2][2] == b"action=GetProducts&n=2"


def test_chunked_answers_are_reassembled_from_any_split():
    body = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\n{\"res\r\n" b"a\r\nult\":\"ok\"}\r\n" b"0\r\nX-Trailer: t\r\n\r\n")
    byte_by_byte = [body[i:i + 1] for i in range(len(body))]
    no_trailer = body.replace(b"X-Trailer: t\r\n", b"")

    srv, answers = exchanges([byte_by_byte, no_trailer, OK], 3)
    assert [r.json() for r in answers] == [{"result": "ok"}] * 3
    assert srv.connections == 1  # a chunked answer leaves the connection reusable


@pytest.mark.parametrize("answer", [
    OK.replace(b"Content-Type", b"Connection: close\r\nContent-Type"),
    b"HTTP/1.0 200 OK\r\nContent-Length: 16\r\n\r\n{\"result\":\"ok\"}\n",
], ids=["connection-close", "http-1.0"])
def test_an_answer_that_ends_the_connection_is_not_reused(answer):
    srv, answers = exchanges([answer], 2)
    assert [r.json() for r in answers] == [{"result": "ok"}] * 2
    assert srv.connections == 2


def test_a_body_framed_by_the_connections_end_is_read_to_the_end():
    async def close_after(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>PHP Fatal")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b" error</html>")
        writer.close()

    srv, (first, second) = exchanges([close_after, OK], 2)
    assert first.text == "<html>PHP Fatal error</html>" and second.json() == {"result": "ok"}
    assert srv.connections == 2


def test_interim_answers_are_skipped():
    _, (answer,) = exchanges([[b"HTTP/1.1 100 Continue\r\n\r\n", OK]], 1)
    assert answer.json() == {"result": "ok"}


async def _closes(writer: asyncio.StreamWriter) -> None:
    writer.close()


async def _truncates(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"result\":")
    await writer.drain()
    writer.close()


async def _hangs(writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


@pytest.mark.parametrize("answer,error", [
    (_closes, httpx.RemoteProtocolError),
    (_truncates, httpx.ReadError),
    (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", httpx.RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000, httpx.RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
     httpx.RemoteProtocolError),
    (_hangs, httpx.ReadTimeout),
], ids=["closed-unanswered", "truncated-body", "not-http", "endless-head", "conflicting-length",
        "silent"])
def test_a_lost_answer_is_the_error_that_says_the_request_was_sent(answer, error):
    """Each of these means "sent, answer lost": the client treats a mutating call as unknown."""
    async def go():
        async with Scripted([answer, OK]) as srv:
            t = Http11Transport()
            with pytest.raises(error) as caught:
                await post(t, srv.url, read=0.3)
            after = await post(t, srv.url)  # and the pool recovers on a new connection
            await t.aclose()
            return srv, caught.value, after
    srv, exc, after = run(go())
    assert exc.request.url == httpx.URL(srv.url)
    assert after.json() == {"result": "ok"} and srv.connections == 2


def test_the_read_timeout_is_for_silence_not_for_the_whole_answer():
    pieces = [OK[i:i + 8] for i in range(0, len(OK), 8)]  # 12 pieces, 0.1 s apart

    async def drip(writer: asyncio.StreamWriter) -> None:
        for piece in pieces:
            writer.write(piece)
            await asyncio.sleep(0.1)

    async def go():
        async with Scripted([drip]) as srv:
            t = Http11Transport()
            started = time.monotonic()
            r = await post(t, srv.url, read=0.4)
            await t.aclose()
            return r, time.monotonic() - started
    r, took = run(go())
    assert r.json() == {"result": "ok"} and took > 0.8  # longer than the read timeout


def test_nothing_sent_errors_connect_refused_and_pool_timeout():
    async def go():
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        t = Http11Transport()
        with pytest.raises(httpx.ConnectError):
            await post(t, f"http://127.0.0.1:{port}/includes/api.php")
        async with Scripted([_hangs]) as srv:
            one = Http11Transport(max_connections=1)
            hung = asyncio.ensure_future(post(one, srv.url))
            await asyncio.sleep(0.1)
            with pytest.raises(httpx.PoolTimeout):
                await post(one, srv.url, pool=0.2)
            hung.cancel()
            await one.aclose()
            return srv
    srv = run(go())
    assert len(srv.requests) == 1  # the request that timed out waiting was never written


def test_a_cancelled_exchange_closes_its_connection():
    async def go():
        async with Scripted([_hangs, OK]) as srv:
            t = Http11Transport()
            task = asyncio.ensure_future(post(t, srv.url))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            r = await post(t, srv.url)
            await t.aclose()
            return srv, r
    srv, r = run(go())
    assert r.json() == {"result": "ok"} and srv.connections == 2


def test_idle_connections_the_server_closed_or_too_old_are_not_used(monkeypatch):
    async def close_after(writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # a server's keep-alive timeout: closed while idle

    async def go():
        async with Scripted([close_after, OK]) as srv:
            t = Http11Transport()
            await post(t, srv.url)
            await asyncio.sleep(0.2)
            await post(t, srv.url)  # not on the closed connection: no error
            monkeypatch.setattr(http_transport, "KEEPALIVE_EXPIRY_S", 0.05)
            await asyncio.sleep(0.1)
            await post(t, srv.url)  # idle past the expiry: a new connection
            await t.aclose()
            return srv
    srv = run(go())
    assert [c for c, _, _ in srv.requests] == [1, 2, 3]


def test_bytes_after_an_answer_make_the_connection_unusable():
    srv, (a, b) = exchanges([OK + b"HTTP/1.1 200 OK\r\n", OK], 2)
    assert a.json() == b.json() == {"result": "ok"} and srv.connections == 2


def test_a_passed_send_deadline_writes_nothing_and_keeps_the_connection():
    async def go():
        async with Scripted([OK]) as srv:
            t = Http11Transport()
            await post(t, srv.url)
            request = httpx.Request("POST", srv.url, content=b"action=AddOrder", extensions={
                SEND_DEADLINE: lease_clock() - 0.001})
            with pytest.raises(NotSent, match="send deadline passed"):
                await t.handle_async_request(request)
            await post(t, srv.url)
            await t.aclose()
            return srv
    srv = run(go())
    assert [body for _, _, body in srv.requests] == [b"action=GetProducts"] * 2
    assert srv.connections == 1


def test_on_write_is_told_after_the_connect_and_never_when_nothing_was_written(monkeypatch):
    """The moment an unanswered write's settle moment counts from (streams.provision): told
    once the connection is ours (after the connect) and the deadline checked, right before
    the bytes go — and not at all for a request that was not sent, or had no connection."""
    events: list[str] = []
    original = http_transport._Pool.connect

    async def connect(self, timeout):
        events.append("connect")
        return await original(self, timeout)
    monkeypatch.setattr(http_transport._Pool, "connect", connect)

    async def go():
        async with Scripted([OK]) as srv:
            t = Http11Transport()
            url = httpx.URL(srv.url)
            data = http_transport.request_bytes(b"POST", url, [], b"action=GetProducts")
            timeouts = httpx.Timeout(5.0).as_dict()
            written = lambda: events.append(f"write {len(srv.requests)}")  # noqa: E731
            await t.exchange(url, data, timeouts, on_write=written)
            with pytest.raises(NotSent):
                await t.exchange(url, data, timeouts, send_deadline=lease_clock() - 0.001,
                                 on_write=written)
            await t.exchange(url, data, timeouts, on_write=written)  # the kept connection
            await t.aclose()
            closed = httpx.URL(f"http://127.0.0.1:{unused_port()}/")
            with pytest.raises(httpx.ConnectError):
                await t.exchange(closed, data, timeouts, on_write=written)
            return srv
    srv = run(go())
    assert len(srv.requests) == 2
    assert events == ["connect", "write 0", "write 1", "connect"]


def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_https_verifies_the_servers_certificate(tmp_path):
    tls = tls_material(tmp_path / "tls")  # a local CA and a server certificate it signed
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls["cert"], tls["key"])

    async def go():
        srv = Scripted([OK])
        srv.server = await asyncio.start_server(srv._serve, "127.0.0.1", 0, ssl=server_ctx)
        port = srv.server.sockets[0].getsockname()[1]
        url = f"https://localhost:{port}/includes/api.php"
        untrusting = Http11Transport()
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await post(untrusting, url)
        trusting = Http11Transport(ssl_context=ssl.create_default_context(cafile=str(tls["ca"])))
        answers = [await post(trusting, url) for _ in range(2)]
        await trusting.aclose()
        await srv.__aexit__()
        return srv, answers
    srv, answers = run(go())
    assert [r.json() for r in answers] == [{"result": "ok"}] * 2
    # one connection for both (the refused handshake never reached the server's callback)
    assert [c for c, _, _ in srv.requests] == [1, 1]


def test_one_transport_serves_successive_event_loops():
    """A CLI runs one ``asyncio.run`` per command with one client: the pool made under the
    first loop is dropped, not used from the second."""
    t = Http11Transport()

    async def once(srv_url: str) -> int:
        return (await post(t, srv_url)).status_code

    async def serve_twice() -> Scripted:
        async with Scripted([OK]) as srv:
            loop = asyncio.get_running_loop()
            codes = [await loop.run_in_executor(None, asyncio.run, once(srv.url))
                     for _ in range(2)]
            assert codes == [200, 200]
            return srv
    srv = run(serve_twice())
    assert srv.connections == 2


def test_a_cancel_that_comes_as_a_pool_slot_frees_is_not_lost():
    """Python 3.11's ``asyncio.wait_for`` returns the result and drops a cancellation that
    arrives in the loop turn its inner wait completes: a WHMCS call cancelled (a revoke, a
    stop) as it got its connection slot went on and wrote its request after the cancel."""
    async def go():
        async with Scripted([OK]) as srv:
            t = Http11Transport(max_connections=1)
            slots = t._pool(httpx.URL(srv.url), asyncio.get_running_loop()).slots
            await slots.acquire()  # the one slot, held: the call below waits for it
            task = asyncio.ensure_future(post(t, srv.url, pool=5.0))
            await asyncio.sleep(0.05)
            slots.release()  # the slot frees and the cancel comes in the same loop turn
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.1)
            free = not slots.locked()
            await t.aclose()
            return srv, free
    srv, free = run(go())
    assert srv.requests == [], "a cancelled call wrote its request"
    assert free, "the cancelled call kept the connection slot"


def test_a_cancel_that_comes_as_the_connection_opens_is_not_lost(monkeypatch):
    """The same for the connect: cancelled in the loop turn its connection opened, the call
    must end cancelled, not write its request on the new connection."""
    gate: list[asyncio.Future[None]] = []
    real_get_running_loop = asyncio.get_running_loop

    class GatedLoop:
        """The running loop, but ``create_connection`` returns only when the test says."""
        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self._loop = loop

        def __getattr__(self, name: str) -> object:
            return getattr(self._loop, name)

        async def create_connection(self, *args: object, **kwargs: object) -> object:
            made = await self._loop.create_connection(*args, **kwargs)  # type: ignore[arg-type]
            try:
                await gate[0]
            except asyncio.CancelledError:
                made[0].close()
                raise
            return made

    async def go():
        async with Scripted([OK]) as srv:
            t = Http11Transport()
            loop = real_get_running_loop()
            gate.append(loop.create_future())
            monkeypatch.setattr(http_transport.asyncio, "get_running_loop",
                                lambda: GatedLoop(real_get_running_loop()))
            task = asyncio.ensure_future(post(t, srv.url, connect=5.0))
            await asyncio.sleep(0.1)
            gate[0].set_result(None)  # the connection is open, the cancel comes with it
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            monkeypatch.undo()
            await asyncio.sleep(0.1)
            await t.aclose()
            return srv
    srv = run(go())
    assert srv.requests == [], "a cancelled call wrote its request"
