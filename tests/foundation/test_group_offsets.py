"""A group's committed offsets stay readable while its coordinator fails over.

The worker's commit gate reads them every second, the lag gauges every 15 s, the
reconciliation at each pass. Read with the admin API (librdkafka 2.16), a coordinator killed,
restarted or paused under the reader aborted the whole process (exit -6 or -11, from a
librdkafka thread: ``python -m bench.group_offsets --mode admin``, dead in the second round
of two runs out of two). ``common.lag.committed_offsets`` reads them as a consumer of the
group, which finds its new coordinator.
"""

from __future__ import annotations

import pytest

from bench.group_offsets import run


@pytest.mark.broker
@pytest.mark.slow
def test_the_reader_lives_through_its_coordinators_kills_and_pauses(tmp_path):
    # a kill, then a pause (the admin reader died by the second round; ``python -m
    # bench.group_offsets`` runs 10 rounds of both modes)
    result = run("consumer", rounds=2, home=tmp_path)
    assert result["exit"] is None, result  # alive: no abort, no segfault
    assert result["survived"] == 2, result
    assert [f["kind"] for f in result["faults"]] == ["kill", "pause"], result
    assert result["reads_before_faults"] > 0, result
    assert result["reads_after_last_fault"] > 0, result  # and reading again afterwards
