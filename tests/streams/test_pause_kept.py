"""A partition the lanes paused stays paused: faust's own buffer-pressure bookkeeping must not
fetch it again behind the lanes' back.

The lanes pause a partition whose uncommitted span passed ``WORKER_PARTITION_WINDOW`` (a hung
event, many finished behind it: the memory bound; ``ConsumerSeam.pause`` →
``Consumer.pause_partitions``). faust takes a partition out of its fetch when the agent's
queue fills (``Consumer.on_buffer_full``) and puts it back when the queue drains
(``Consumer.on_buffer_drop``, called by the conductor's per-partition handler) — whether or
not it was paused meanwhile. Unguarded, the paused partition was fetched again and, still
paused in the lanes' eyes, never paused again: the span, the checkpoint's finished set and the
commit's log-check reads grew past the window. The seam keeps a paused partition out of the
fetch on a buffer drop (first line); the lanes ask for the pause again while the span stays
past the window (second line).
"""

from __future__ import annotations

import asyncio
import inspect

import pytest
from faust.types import TP

from streams import faust_seam
from streams.checkpoint import Checkpoint
from streams.lanes import Admitted, Lanes

TOPIC = "requests-pause-test"
P, Q = TP(TOPIC, 2), TP(TOPIC, 3)


def _pressure_callbacks(app, tp: TP, how: str):
    """(on_pressure_high, on_pressure_drop) of the handler faust's conductor builds for
    ``tp`` at an assignment — the compiled ``ConductorHandler`` or, without faust's Cython
    extension, ``ConductorCompiler.build``'s closures — as the agent's queue calls them."""
    import faust.transport.conductor as conductor_module

    conductor = app.topics
    channels = {app.topic(TOPIC)}
    if how == "compiled":
        if conductor_module.ConductorHandler is None:
            pytest.skip("faust's Cython conductor is not built here")
        handler = conductor._build_handler(tp, channels)
        assert type(handler).__name__ == "ConductorHandler"
        return handler.on_pressure_high, handler.on_pressure_drop
    on_message = conductor._compiler.build(conductor, tp, channels)
    closure = inspect.getclosurevars(on_message).nonlocals
    return closure["on_pressure_high"], closure["on_pressure_drop"]


@pytest.mark.parametrize("how", ["compiled", "pure-python"])
def test_a_partition_the_lanes_paused_stays_out_of_the_fetch_when_fausts_buffer_drains(how):
    """Pause P through the seam while faust's queue pressure had taken it out of the fetch;
    the queue drains (faust's pressure-drop callback for P): P must stay out of the fetch
    (``_get_active_partitions``) until the lanes resume it. Q, not paused, goes back into
    the fetch on its drop as faust does (the control)."""
    async def run() -> dict[str, set[TP]]:
        app = faust_seam.build_app("pause-kept-test", broker="kafka://127.0.0.1:1",
                                   web_enabled=False, autodiscover=False)
        seam = faust_seam.ConsumerSeam(app, TOPIC)
        consumer = app.consumer
        consumer.assignment = lambda: {P, Q}
        consumer._set_active_tps({P, Q})  # as its on_partitions_assigned does
        assert not app.in_recovery  # on_buffer_full acts only out of recovery
        high_p, drop_p = _pressure_callbacks(app, P, how)
        high_q, drop_q = _pressure_callbacks(app, Q, how)
        seen: dict[str, set[TP]] = {"assigned": set(consumer._get_active_partitions())}
        high_p()  # the agent's queue passed its high-pressure mark with P's records
        high_q()
        seam.pause([P.partition])  # the lanes: P's span passed the window
        seen["paused"] = set(consumer._get_active_partitions())
        drop_p()  # the agent drained its queue
        drop_q()
        seen["drained"] = set(consumer._get_active_partitions())
        seen["buffered"] = set(consumer._buffered_partitions)
        seam.pause([P.partition])  # the lanes ask again (their second line): still paused
        high_p()  # pressure again while paused
        drop_p()
        seen["again"] = set(consumer._get_active_partitions())
        seam.resume([P.partition])  # the span halved
        seen["resumed"] = set(consumer._get_active_partitions())
        return seen

    seen = asyncio.run(run())
    assert seen["assigned"] == {P, Q}
    assert seen["paused"] == set()  # P paused, Q out for its buffer
    assert seen["drained"] == {Q}, "faust's buffer drop fetched the paused partition again"
    assert seen["buffered"] == set()  # P's buffer mark goes with the drop all the same
    assert seen["again"] == {Q}
    assert seen["resumed"] == {P, Q}


def test_the_seam_wraps_the_buffer_drop_faust_calls_not_a_copy():
    """faust's conductor takes ``app.consumer.on_buffer_drop`` when it builds a partition's
    handler (at each assignment, after the worker built its seam): the seam's wrap must be
    what it takes, on the consumer instance."""
    async def run() -> tuple[object, object]:
        app = faust_seam.build_app("pause-kept-wrap-test", broker="kafka://127.0.0.1:1",
                                   web_enabled=False, autodiscover=False)
        faust_seam.ConsumerSeam(app, TOPIC)
        app.consumer.assignment = lambda: {P}
        on_message = app.topics._compiler.build(app.topics, P, {app.topic(TOPIC)})
        drop = inspect.getclosurevars(on_message).nonlocals["on_pressure_drop"]
        return inspect.getclosurevars(drop).nonlocals["consumer_on_buffer_drop"], \
            app.consumer.on_buffer_drop

    taken, wrapped = asyncio.run(run())
    assert taken == wrapped
    assert getattr(wrapped, "__sfprov_original__", None) is not None


def test_the_compiled_conductors_source_is_in_the_contract():
    files = {(package, path) for package, path, _v in faust_seam.CONTRACT_FILES.values()}
    assert ("faust", "transport/_cython/conductor.pyx") in files


def test_the_lanes_ask_for_the_pause_again_while_the_span_stays_past_the_window():
    """Something fetched the paused partition again (faust's buffer drop did): its events
    keep coming, the span grows past the window. The lanes paused it once and, the
    partition still paused in their eyes, never asked again. They ask again — at most once
    per ``repause_interval_s`` — and resume it once, when it halves."""
    fetching = {2: True}  # what the consumer does with partition 2
    pauses: list[set[int]] = []
    resumes: list[set[int]] = []

    def pause(partitions: set[int]) -> None:
        pauses.append(set(partitions))
        for p in partitions:
            fetching[p] = False

    def resume(partitions: set[int]) -> None:
        resumes.append(set(partitions))
        for p in partitions:
            fetching[p] = True

    async def go() -> tuple[list[bool], int]:
        async def commit(_offsets):
            return True
        checkpoint = Checkpoint(lambda wanted: {p: (0, list(range(o)))
                                                for p, o in wanted.items()},
                                commit=commit, seek=lambda _p, _o: None)
        lanes = Lanes(checkpoint, lambda _m: None, max_in_flight=500, partition_window=10,
                      pause=pause, resume=resume)
        lanes.repause_interval_s = 0.0  # every event past the window asks (the test's pace)
        hang = asyncio.Event()

        async def hung() -> bool:
            await hang.wait()
            return True

        async def quick() -> bool:
            return True

        await lanes.admit("801HUNG", Admitted(2, 0, object(), hung, generation=1))
        kept: list[bool] = []
        for offset in range(1, 60):
            fetching[2] = True  # faust undid the pause behind the lanes' back
            await lanes.admit(f"801O{offset}", Admitted(2, offset, object(), quick,
                                                        generation=1))
            await asyncio.sleep(0)
            if checkpoint.span(2) > lanes.partition_window:
                kept.append(not fetching[2])
        span = checkpoint.span(2)
        hang.set()
        while lanes.in_flight:
            await asyncio.sleep(0.001)
        await checkpoint.commit()
        lanes.committed()
        return kept, span

    kept, span = asyncio.run(go())
    assert span == 60
    assert kept and all(kept), "the lanes never asked for the pause again"
    assert all(p == {2} for p in pauses) and len(pauses) == len(kept)
    assert resumes == [{2}]


def test_the_lanes_ask_again_at_most_once_per_interval():
    """The second line costs one pause call per paused partition per interval, however
    many of its events arrive (those faust had fetched before the pause held, or after it
    was undone)."""
    pauses: list[set[int]] = []

    async def go() -> None:
        checkpoint = Checkpoint(lambda w: {}, commit=lambda o: asyncio.sleep(0, True),
                                seek=lambda _p, _o: None)
        lanes = Lanes(checkpoint, lambda _m: None, partition_window=10,
                      pause=pauses.append)
        assert lanes.repause_interval_s >= 1.0
        hang = asyncio.Event()

        async def hung() -> bool:
            await hang.wait()
            return True

        for offset in range(200):
            await lanes.admit(f"801A{offset}", Admitted(2, offset, object(), hung))
        lanes.repause_interval_s = 0.0
        await lanes.admit("801B", Admitted(2, 200, object(), hung))
        hang.set()
        await asyncio.sleep(0.01)

    asyncio.run(go())
    assert pauses == [{2}, {2}]
