"""bench.profile: the summary of a py-spy profile that the README's "Why the CPU targets are
missed" figures come from."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.profile import area_of, main, parse_frame, render, short_path, summarize

SITE = "/work/x/.venv/lib/python3.11/site-packages"
STDLIB = "/usr/lib/python3.11"
ROOT = "<module> (/work/main/streams/__main__.py:10);run (/usr/lib/python3.11/asyncio/runners.py:1)"
PROFILE = "\n".join([
    # 6 samples in our transport's send, under the handler
    f"{ROOT};handle (/work/main/streams/handler.py:146);"
    f"send (/work/main/common/http_transport.py:154) 6",
    # 3 in urllib.parse, called by the WHMCS client: the client's
    f"{ROOT};handle (/work/main/streams/handler.py:146);encode_form (/work/main/common/whmcs.py:83);"
    f"quote_plus ({STDLIB}/urllib/parse.py:909) 3",
    # 2 in aiokafka's socket write through asyncio streams: aiokafka's
    f"{ROOT};send ({SITE}/aiokafka/conn.py:400);write ({STDLIB}/asyncio/streams.py:343) 2",
    # 1 recursive: counted once inclusive
    f"{ROOT};walk (/work/main/streams/recovery.py:5);walk (/work/main/streams/recovery.py:5) 1",
    "",
])


def test_frames_are_split_into_function_and_short_path() -> None:
    assert parse_frame(f"write ({STDLIB}/asyncio/streams.py:343)") == \
        ("write", "asyncio/streams.py")
    assert parse_frame(f"append ({SITE}/aiokafka/producer/x.py:77)") == \
        ("append", "aiokafka/producer/x.py")
    assert parse_frame("send (/work/main/common/http_transport.py:154)") == \
        ("send", "common/http_transport.py")
    assert parse_frame("__init__ (<string>:2)") == ("__init__", "<string>")


def test_self_time_by_area_file_and_inclusive() -> None:
    s = summarize(PROFILE)
    assert s.samples == 12
    assert s.by_area == {"our HTTP transport": 6, "WHMCS client": 3, "aiokafka": 2,
                         "worker flow (handler, lanes, lease, checkpoint, ...)": 1}
    assert s.by_file["urllib/parse.py"] == 3
    assert s.by_file["asyncio/streams.py"] == 2
    assert s.inclusive["handle (streams/handler.py)"] == 9
    assert s.inclusive["walk (streams/recovery.py)"] == 1  # not 2: once per sample
    assert s.inclusive["<module> (streams/__main__.py)"] == 12
    assert round(s.share(3), 1) == 25.0


def test_render_leaves_out_the_entry_points_and_orders_by_share() -> None:
    text = render(summarize(PROFILE), top=3)
    lines = text.splitlines()
    assert lines[0] == "12 samples"
    assert lines[2] == "   50.0 %  our HTTP transport"
    inclusive = lines[lines.index("inclusive, by function (top 3 below the entry points):") + 1:]
    assert inclusive[0] == "   75.0 %  handle (streams/handler.py)"
    assert not any("__main__" in line for line in inclusive)


def test_a_line_without_a_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no sample count"):
        summarize("a (x.py:1);b (y.py:2)")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert main([str(empty)]) == 1
    good = tmp_path / "good.txt"
    good.write_text(PROFILE)
    assert main([str(good), "--top", "2"]) == 0


@pytest.mark.parametrize("path,area", [
    (f"{SITE}/anyio/streams/tls.py", "other"),
    (f"{SITE}/opentelemetry/exporter/otlp/proto/http/_common/__init__.py", "other"),
    (f"{SITE}/confluent_kafka/schema_registry/common/serde.py", "other"),
    (f"{SITE}/google/logging/type/log_severity_pb2.py", "other"),
    ("/work/main/streams/lanes.py", "worker flow (handler, lanes, lease, checkpoint, ...)"),
    (f"{STDLIB}/logging/__init__.py", "logging"),
])
def test_a_librarys_own_streams_or_common_folder_is_not_ours(path, area) -> None:
    """Areas match a short path's start: a dependency's ``streams/`` or ``common/`` folder
    was filed under the worker's flow or our common code (review of bench/profile.py)."""
    assert area_of(short_path(path)) == area


def test_our_files_are_ours_from_any_checkout() -> None:
    """A worker run from a worktree has its files under that checkout, not /work/main."""
    here = Path(__file__).resolve().parents[2]
    assert short_path(f"{here}/streams/lanes.py") == "streams/lanes.py"


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_the_standard_library_of_any_supported_python_is_its_own_area(version):
    path = f"/usr/lib/python{version}/asyncio/base_events.py"
    assert short_path(path) == "asyncio/base_events.py"
    assert area_of(short_path(path)) == "asyncio"
