"""A partition's local store dropped for a rebuild (decision 0016) while the sweep's key scan
holds a RocksDB iterator on that partition's DB (``streams.recovery._keys`` yields to the
event loop between slices).

Deleting the DB's files then (what ``drop_partition`` did) left the open handle writing a
MANIFEST that named deleted table files once the scan let it go: every later open of the
partition failed with ``Corruption: ... .sst: No such file or directory`` — a recovery that
never ended, and after a restart a crash loop until the directory was deleted by hand. The
partition is emptied through its own handle instead.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from faust.types import TP

from streams.faust_seam import BoundedRocksDBOptions, KeyPartitionedRocksStore, key_partition

ROOT = Path(__file__).resolve().parents[2]
KEYS = [f"801R{i:011d}AAA" for i in range(2000)]


def _table(datadir, app_id: str = "seam-drop"):
    """The worker's intents table (its RocksDB options), on a faust app of its own."""
    import faust

    from streams.app import ROCKSDB_OPTIONS
    from streams.faust_seam import DurableTable

    app = faust.App(app_id, broker="kafka://localhost:1", store="rocksdb://",
                    web_enabled=False, autodiscover=False, datadir=str(datadir),
                    topic_partitions=2)
    return app.tables.add(DurableTable(
        app, name="intents", default=None, partitions=2, beacon=app.tables.beacon,
        options=dict(ROCKSDB_OPTIONS),
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json")))


def _events(tp: TP, values: dict[str, bytes | None], start: int = 0) -> list:
    """Changelog events as faust's recovery hands them to ``apply_changelog_batch``."""
    return [SimpleNamespace(message=SimpleNamespace(
        key=key.encode(), value=value, partition=tp.partition, offset=start + i, tp=tp))
        for i, (key, value) in enumerate(values.items())]


def test_a_partition_dropped_under_the_sweeps_open_scan_is_emptied_and_opens_again(
        tmp_path, monkeypatch):
    table = _table(tmp_path)
    store = table.data
    assert isinstance(store, KeyPartitionedRocksStore)
    assert isinstance(store.rocksdb_options, BoundedRocksDBOptions)
    for i, key in enumerate(KEYS):
        store[key] = {"state": "accepted", "n": i}
    topic = table.changelog_topic.get_topic_name()
    tp0, tp1 = TP(topic, 0), TP(topic, 1)
    store.set_persisted_offset(tp0, 1234)
    store.set_persisted_offset(tp1, 99)
    for db in store._dbs.values():
        db.flush()  # table files, which the old drop deleted from under the open handle
    store["801Rmemtable0AAA"] = {"state": "pending"}  # only in a memtable (no WAL)
    mine = [k for k in KEYS if key_partition(k, 2) == 0]
    other = [k for k in KEYS if key_partition(k, 2) == 1]
    assert mine and other

    # the sweep's full scan, under way: `for key in table`, awaiting between slices
    monkeypatch.setattr(table.app.assignor, "assigned_actives", lambda: {tp0, tp1})
    scan = iter(table)
    assert len([next(scan) for _ in range(10)]) == 10

    # a rebalance: faust's recovery asks the offset of a partition marked for rebuild ...
    table._rebuild.add(0)
    assert table.persisted_offset(tp0) == -1
    # ... and the restore's first batch asks the store's (_restorable → _floor): none
    assert table._floor(tp0) == -1
    assert store.persisted_offset(tp0) is None
    assert all(table.read(k) is None for k in mine)  # the partition reads empty
    assert [table.read(k)["n"] for k in other[:3]] == [KEYS.index(k) for k in other[:3]]
    assert table._floor(tp1) == 99  # the other partition untouched

    # the scan ends (on its snapshot) and lets its iterator go
    list(scan)
    del scan
    gc.collect()

    # the restore reads the changelog from its start into the emptied partition
    restored = {k: b'{"state":"restored"}' for k in mine[:5]}
    table.apply_changelog_batch(_events(tp0, restored))
    assert table._floor(tp0) == len(restored) - 1
    assert all(table.read(k) == {"state": "restored"} for k in restored)

    # a restart: every handle closed, the DBs opened again from their files
    for db in store._dbs.values():
        db.close()
    store._dbs.clear()
    gc.collect()
    again = _table(tmp_path).data
    assert again.persisted_offset(tp0) == len(restored) - 1  # no Corruption: it opens
    assert again.persisted_offset(tp1) == 99
    keys0 = [k.decode() for k in again._db_for_partition(0).keys()  # noqa: SIM118 - raw
             if not k.startswith(b"__faust")]
    assert sorted(keys0) == sorted(restored)


_DROP_AND_DIE = """
import os, sys
import faust
from faust.types import TP
from streams.app import ROCKSDB_OPTIONS
from streams.faust_seam import DurableTable
app = faust.App("seam-drop", broker="kafka://localhost:1", store="rocksdb://",
                web_enabled=False, autodiscover=False, datadir=sys.argv[1], topic_partitions=1)
table = app.tables.add(DurableTable(
    app, name="intents", default=None, partitions=1, beacon=app.tables.beacon,
    options=dict(ROCKSDB_OPTIONS),
    schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json")))
tp = TP(table.changelog_topic.get_topic_name(), 0)
for i in range(100):
    table.data[f"801K{i:011d}AAA"] = {"n": i}
table.data.set_persisted_offset(tp, 500)
table.data._dbs[0].flush()
table._rebuild.add(0)
assert table.persisted_offset(tp) == -1
os._exit(0)  # no destructors: as a SIGKILL leaves it
"""


def test_a_drop_survives_a_crash_right_after_it(tmp_path):
    """The worker's tables write no WAL: a drop held only in a memtable would be lost with
    it, and the restarted worker would restore in place over the values the rebuild was
    for. The deletion is flushed to the DB's files before the restore starts."""
    import rocksdict

    subprocess.run([sys.executable, "-c", _DROP_AND_DIE, str(tmp_path)], check=True,
                   cwd=ROOT, timeout=60)
    [path] = list(tmp_path.rglob("intents-0.db"))
    db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
    try:
        assert list(db.keys()) == []  # noqa: SIM118 - raw mode; the offset key gone too
    finally:
        db.close()
