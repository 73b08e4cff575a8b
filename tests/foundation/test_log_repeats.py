"""A library's repeated log line is shown once per window, with how many were left out
(common.log.RepeatFilter); the pipeline's own lines all pass."""

from __future__ import annotations

import io
import json
import logging

import pytest

from common.log import RepeatFilter, setup_logging


def _record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_repeats_within_the_window_are_counted_and_the_next_line_says_how_many():
    now = [100.0]
    keep = RepeatFilter(window_s=30, clock=lambda: now[0])
    first = _record("aiokafka", "Unable connect to node with id %s: %s", 2, "refused")
    assert keep.filter(first) and first.getMessage() == \
        "Unable connect to node with id 2: refused"
    for node in (2, 3, 2):  # the template counts, whatever its arguments
        now[0] += 1
        assert not keep.filter(_record("aiokafka", "Unable connect to node with id %s: %s",
                                       node, "refused"))
    now[0] = 131.0
    later = _record("aiokafka", "Unable connect to node with id %s: %s", 2, "refused")
    assert keep.filter(later)
    assert later.getMessage() == ("Unable connect to node with id 2: refused (3 more like it "
                                  "in the last 31 s, not shown)")
    now[0] = 200.0  # nothing left out since: shown as it is
    alone = _record("aiokafka", "Unable connect to node with id %s: %s", 2, "refused")
    assert keep.filter(alone) and alone.getMessage().endswith("refused")


@pytest.mark.parametrize("name", ["aiokafka.consumer.fetcher", "faust.transport", "grpc"])
def test_each_message_of_each_library_logger_counts_on_its_own(name):
    keep = RepeatFilter(window_s=30, clock=lambda: 5.0)
    assert keep.filter(_record(name, "Failed fetch messages from %s", 2))
    assert not keep.filter(_record(name, "Failed fetch messages from %s", 2))
    assert keep.filter(_record(name, "Failed fetch offsets from %s", 2))  # another message
    assert keep.filter(_record(name, "Failed fetch messages from %s", 2,
                               level=logging.WARNING))  # another level
    assert keep.filter(_record(f"{name}x", "Failed fetch messages from %s", 2))  # not ours


def test_what_it_remembers_stays_bounded_when_messages_carry_their_values():
    now = [0.0]
    keep = RepeatFilter(window_s=30, clock=lambda: now[0])
    for i in range(5000):  # an f-string message: each one its own template
        now[0] = i / 10
        assert keep.filter(_record("faust", f"partition {i} fell behind"))
    assert len(keep._seen) <= 1025
    assert not keep.filter(_record("faust", "partition 4999 fell behind"))  # still counted


def test_the_pipelines_own_lines_all_pass():
    keep = RepeatFilter(window_s=30, clock=lambda: 5.0)
    for _ in range(3):
        assert keep.filter(_record("streams.app", "fenced: %s", "partition 1"))
        assert keep.filter(_record("aiokafkax", "same"))  # only the libraries' loggers


def test_the_process_log_collapses_a_flood_of_a_librarys_lines(monkeypatch):
    out = io.StringIO()
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    setup_logging("worker", stream=out)
    for _ in range(50):
        logging.getLogger("aiokafka").error("Unable connect to node with id %s: %s", 2,
                                            "[Errno 111] Connection refused")
        logging.getLogger("streams.app").warning("looking for late changelog records")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["logger"] for line in lines].count("aiokafka") == 1
    assert [line["logger"] for line in lines].count("streams.app") == 50
