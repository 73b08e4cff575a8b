"""The one seam to faust-streaming's and aiokafka's internals (the streams/faust_seam/ package).

Contract tests fail when a function the seam wraps, overrides or relies on changes upstream
(its source hash), when the installed or pinned versions differ from the verified ones, and
when any other module reaches into the libraries' internals. The workarounds' behaviour is
tested where each one matters (listed in ``WORKAROUND_TESTS``) — plus ``read_committed`` here.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import time
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from streams import faust_seam

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("common", "connectors", "streams", "sinks", "ops")
# the behaviour test of each workaround (file::test), kept next to the contract
WORKAROUND_TESTS = {
    "StackDumpWorker: the SIGUSR1 dump without local variables":
        "tests/streams/test_stack_dump.py::"
        "test_the_sigusr1_dump_shows_the_stacks_but_not_the_whmcs_secret",
    "OrderedRecovery, seek to the beginning when nothing is committed":
        "tests/streams/test_worker_crash.py::test_two_workers_one_killed",
    "seek back over dropped records (ConsumerSeam fetch)":
        "tests/streams/test_dropping_worker.py::test_the_rewind_alone_brings_dropped_events_back",
    "checkpoint seeks before the next fetch":
        "tests/streams/test_dropping_worker.py::test_the_log_check_alone_brings_dropped_events_back",
    "DurableTable: key partition, raw keys, flush":
        "tests/streams/test_tables.py::test_flush_returns_only_after_the_broker_holds_the_changelog_records",
    "membership hooks for the lease, release()":
        "tests/streams/test_worker_pause.py::test_paused_worker_makes_no_whmcs_call_for_orders_it_no_longer_owns",
    "read_committed": "tests/streams/test_faust_seam.py::test_the_worker_never_acts_on_an_aborted_event",
    "the gaps faust notes below the checkpoint's commit are dropped":
        "tests/streams/test_faust_seam.py::test_the_gaps_faust_notes_in_the_requests_offsets_go_with_each_commit",
    "indexes and filters in one shared block cache (BoundedRocksDBOptions)":
        "tests/streams/test_tables.py::test_rocksdb_indexes_and_filters_live_in_one_shared_bounded_cache",
    "one memtable bound for all DBs, and their memory read for the gauge (rocksdb_memory)":
        "tests/streams/test_tables.py::test_the_memtables_of_all_dbs_share_one_bound",
    "eager delivery of fetched records (wait_first without tasks when nothing waits)":
        "tests/streams/test_eager_delivery.py::test_a_suspension_still_cancels_a_delivery_that_waits",
    "offsets asked of a partition's old leader asked again with fresh metadata":
        "tests/streams/test_stale_leader_offsets.py::"
        "test_a_position_is_found_after_the_leader_moved_behind_the_consumers_back",
    "an idempotent producer":
        "tests/streams/test_faust_seam.py::test_the_apps_producer_is_built_idempotent_with_acks_all",
    "faust never commits the requests topic (ConsumerSeam.hold, release)":
        "tests/streams/test_faust_seam.py::test_a_held_message_never_reaches_fausts_commit",
    "faust's commits leave the requests topic out, whichever stream iterator runs":
        "tests/streams/test_faust_seam.py::"
        "test_a_message_faust_skips_never_reaches_fausts_commit_whichever_iterator",
    "a rebalance revokes the generation faust stamps on what it fetches (before_wait_empty)":
        "tests/streams/test_worker_revoke.py::"
        "test_a_rebalance_revokes_the_generation_faust_stamps_on_what_it_fetches_now",
    "a paused partition stays out of faust's fetch on a buffer drop (on_buffer_drop)":
        "tests/streams/test_pause_kept.py::"
        "test_a_partition_the_lanes_paused_stays_out_of_the_fetch_when_fausts_buffer_drains",
}
# upstream functions whose behaviour the seam relies on without wrapping or overriding them
# ("module:Class.attribute" → what of it), each hashed in CONTRACT: a change upstream fails
# the contract test. Not every CONTRACT entry; those a review found unhashed.
RELIED_ON = {
    # streams.faust_seam.stackdump: the SIGUSR1 handler that calls the dump overridden
    "mode.worker:Worker._on_sigusr1": "schedules self._cry() (overridden: no local variables)",
    # streams.faust_seam.membership: the callers of the lease's hooks
    "aiokafka.consumer.group_coordinator:GroupCoordinator._heartbeat_routine":
        "every heartbeat goes through _do_heartbeat (wrapped: renews the lease)",
    "aiokafka.consumer.group_coordinator:GroupCoordinator.ensure_active_group":
        "the join is prepared (revocation reported) before the JoinGroup",
    "aiokafka.consumer.group_coordinator:GroupCoordinator._on_join_prepare":
        "calls on_partitions_revoked (wrapped: ends the lease)",
    "aiokafka.consumer.group_coordinator:GroupCoordinator._maybe_leave_group":
        "reset_generation (wrapped: member_reset) right after the LeaveGroup",
    "aiokafka.consumer.group_coordinator:GroupCoordinator._on_join_complete":
        "calls on_partitions_assigned (wrapped: the lease's assignment)",
    # ConsumerSeam.hold / release: faust never commits the requests topic
    "faust.types.tuples:Message.incref": "hold: one reference more than the streams drop",
    "faust.types.tuples:Message.decref": "a stream's ack takes one reference, never below 0",
    "faust.types.tuples:Message.ack": "no final ack while referenced; none once acked",
    "faust.types.tuples:ConsumerMessage.on_final_ack": "the final ack is the Consumer's ack",
    "faust.streams:Stream.take_events": "acks each event of a chunk once, after the chunk",
    "faust.streams:Stream.ack": "a stream's ack is the event's",
    "faust.events:Event.ack": "an event's ack is its message's, on the app's consumer",
    "faust.transport.consumer:Consumer._commit_handler": "faust's periodic commit",
    "faust.transport.consumer:Consumer.force_commit": "commits only the acked partitions",
    "faust.transport.consumer:Consumer._commit_tps": "commits only offsets faust acked",
    "faust.transport.consumer:Consumer._filter_committable_offsets": "from _new_offset",
    # ConsumerSeam.before_wait_empty: faust waits for unacked messages in a rebalance
    "faust.app.base:App._on_partitions_revoked": "a rebalance's revocation waits empty",
    "faust.app.base:App._consumer_wait_empty": "calls consumer.wait_empty",
    # … and on a stop: the SIGTERM drain, lease.lost() and the last commit
    "faust.app.base:App.on_stop": "stops the consumer first (_stop_consumer)",
    "faust.app.base:App._stop_consumer": "waits empty (_consumer_wait_empty)",
    "faust.transport.consumer:Consumer.on_stop": "wait_empty when stream_wait_empty",
    "faust.transport.drivers.aiokafka:Consumer.on_stop": "its base's on_stop first",
    # ConsumerSeam.reseek, OrderedRecovery: the seek to committed offsets
    "faust.transport.consumer:Consumer.perform_seek": "seeks via seek_to_committed",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.seek_to_committed":
        "no seek for a partition with nothing committed (the seam's seek to its beginning)",
    # build_app: read_committed
    "aiokafka.consumer.consumer:AIOKafkaConsumer.start": "reads _isolation_level",
    # OrderedRecovery.on_recovery_completed: its caller
    "faust.tables.recovery:Recovery._restart_recovery": "calls on_recovery_completed last",
    # RestoreGuards.persisted_offset: asked of every assigned partition, kept ones too
    "faust.tables.recovery:Recovery.on_rebalance": "adds every assigned active (_add)",
    # RestoreGuards / DurableTable.apply_changelog_batch, KeyPartitionedRocksStore
    "faust.stores.rocksdb:Store.apply_changelog_batch":
        "a record into its own partition's DB; the persisted offset = the last applied",
    "faust.stores.rocksdb:RocksDBOptions.__init__": "the fields KeyPartitionedRocksStore copies",
    # RecordWriter: a record's offset is the batch future's base offset plus its own
    "aiokafka.producer.message_accumulator:MessageBatch.done": "the batch future: base offset",
    "aiokafka.producer.message_accumulator:MessageAccumulator.add_batch":
        "send_batch's future is the batch's",
    # watch_membership: a heartbeat in a rebalance is no renewal
    "aiokafka.consumer.group_coordinator:GroupCoordinator.request_rejoin":
        "sets _rejoin_needed_fut",
    # DurableTable.on_key_del
    "faust.tables.base:Collection._maybe_del_key_ttl": "called as faust's on_key_del does",
    # RecordWriter._send_group / _drain
    "aiokafka.producer.message_accumulator:BatchBuilder.append":
        "a record's place in its batch as metadata.offset (_resolve_batch); None when full",
    "aiokafka.producer.producer:AIOKafkaProducer.partitions_for":
        "the topic's partitions, for a keyed record's partition",
    # ConsumerSeam._install_buffer_drop: a paused partition stays out of faust's fetch
    "faust.transport.consumer:Consumer.on_buffer_drop": "puts a buffered partition back",
    "faust.transport.consumer:Consumer.on_buffer_full": "out of the fetch, into the buffered",
    "faust.transport.consumer:Consumer.pause_partitions": "out of the fetch, into the paused",
    "faust.transport.consumer:Consumer.resume_partitions": "back into the fetch",
    "faust.transport.consumer:Consumer._get_active_partitions": "what is fetched",
    "faust.transport.consumer:Consumer._set_active_tps": "paused partitions left out",
    "faust.transport.conductor:ConductorCompiler.build": "takes app.consumer.on_buffer_drop",
    "faust.transport.conductor:Conductor._build_handler": "the compiled handler if built",
    "faust.transport.conductor:Conductor._update_callback_map": "a handler per partition",
    "faust.transport.conductor:Conductor.on_partitions_assigned": "handlers built then",
    # RestoreGuards._floor: records at or below the persisted offset left out
    "faust.tables.recovery:Recovery._seek_offsets": "seeks to the persisted offset itself",
    # the sweep's key scan (streams.recovery._keys), KeyPartitionedRocksStore.drop_partition
    "faust.stores.rocksdb:Store._iterkeys": "the keys of the active partitions' DBs",
    "faust.stores.rocksdb:Store._dbs_for_actives": "the DBs in _dbs of assigned actives",
    "faust.stores.rocksdb:Store._visible_keys": "one RocksDB iterator per DB, offset key out",
    # the commit filter: which stream iterator runs, and whether it acks a skipped message
    "faust.streams:Stream.__aiter__": "the compiled iterator if the extension imports",
    "faust.streams:Stream._c_aiter": "a message it skips is not acked",
    "faust.streams:Stream._py_aiter": "a message it skips is acked (faust would commit it)",
    # ConsumerSeam seek_to_committed, commit
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.seek_to_beginning":
        "the seek to the beginning of a partition with nothing committed",
    "faust.transport.consumer:ThreadDelegateConsumer._commit": "the thread's commit",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.commit": "calls _commit",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._commit":
        "False (no crash) when the group already rebalanced",
    # ConsumerSeam.generation: what faust stamps on a fetched record
    "faust.transport.drivers.aiokafka:Consumer._to_message":
        "generation_id = app.consumer_generation_id",
    # watch_membership's assigned hook: the generation, read as faust reads it
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._ensure_consumer":
        "the AIOKafkaConsumer (its _coordinator)",
    "aiokafka.consumer.group_coordinator:CoordinatorGroupRebalance.perform_group_join":
        "sets _coordinator.generation from the JoinGroup",
    "aiokafka.consumer.group_coordinator:GroupCoordinator.reset_generation":
        "the generation when the member is lost",
    # the callers of what build_app and ConsumerSeam wrap on the instance: a caller that
    # stops going through the instance's attribute bypasses the wrap unseen
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_consumer":
        "builds the worker's consumer via self._create_worker_consumer (read_committed)",
    "faust.transport.consumer:Consumer._wait_next_records":
        "fetches via self._getmany (the seek back over dropped records sees each fetch)",
    "faust.transport.consumer:Consumer.seek":
        "resets _read_offset: the records sought back over are taken again",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.seek_to_committed":
        "the committed offsets, None for a partition with nothing committed",
    # OrderedRecovery: flow_control.resume() clears the agents' queues
    "mode.utils.queues:FlowControlEvent.resume": "clears every queue it controls",
    # ConsumerSeam.release wakes wait_empty as Consumer.ack does
    "faust.transport.consumer:Consumer._wait_for_ack":
        "waits on _waiting_for_ack (1 s) until an ack wakes it",
}


@pytest.mark.parametrize("name", sorted(faust_seam.CONTRACT))
def test_upstream_source_is_the_one_verified(name):
    owner, attribute, verified = faust_seam.CONTRACT[name]
    assert faust_seam.source_hash(owner, attribute) == verified, (
        f"{name} changed upstream: re-verify the seam's use of it (streams/faust_seam/, "
        "docs/decisions/) before updating its hash")


@pytest.mark.parametrize("name", sorted(faust_seam.CONTRACT_FILES))
def test_upstream_files_are_the_ones_verified(name):
    package, path, verified = faust_seam.CONTRACT_FILES[name]
    assert faust_seam.file_hash(package, path) == verified, (
        f"{name} changed upstream: re-verify the seam's use of it before updating its hash")


def test_the_installed_and_the_pinned_versions_are_the_verified_ones():
    faust_seam.check_versions()  # the environment the tests run in
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {re.split(r"[=<>!~ ]", d, maxsplit=1)[0]: d for d in project["dependencies"]}
    for dist, version in faust_seam.PINNED.items():
        assert pins[dist] == f"{dist}=={version}", "pyproject.toml must pin it exactly"
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    for dist, version in faust_seam.PINNED.items():
        assert f"{dist}=={version}" in lock


def test_any_other_version_is_refused_with_one_line(monkeypatch):
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda d: "0.16.0" if d == "faust-streaming"
                        else real(d))
    with pytest.raises(faust_seam.UnsupportedVersion) as info:
        faust_seam.check_versions()
    message = str(info.value)
    assert "\n" not in message and "faust-streaming 0.16.0 (needs 0.15.3)" in message


PRIVATE_IMPORTS = [
    re.compile(r"^\s*(from|import)\s+aiokafka\b", re.M),
    re.compile(r"^\s*(from|import)\s+mode\b", re.M),
    re.compile(r"^\s*from\s+faust\.\w", re.M),
    re.compile(r"^\s*import\s+faust\.\w", re.M),
]
# the libraries whose objects a receiver imported at module level may be
LIBRARIES = ("faust", "aiokafka", "mode")
# ``_``-prefixed names the check lets through on any receiver: the project's own privates,
# read by a module of the project that owns them (each one defined in the project, and
# still read so: both checked below), and the public API of Python's namedtuple
ALLOWED_PRIVATE = {
    "_replace": "namedtuple's public API (urllib.parse results, streams.repair's jobs)",
    "_value": "common.envparse.Secret.__eq__ reads the other Secret's",
    "_abort": "common.http_transport: the pool aborts its own _Connection",
    "_heartbeat": "sinks.observability reads its own sink's (sinks.app)",
    "_by_key": "sinks.observability reads common.tracing's span registry",
}


def _module_names(tree: ast.Module) -> set[str]:
    """The names a module binds at its top level — definitions and assignments — and the
    names its imports bind (a function's own too: ``confluent_kafka.KafkaError._FAIL``),
    except those bound to faust, aiokafka or mode (``faust.streams._CStreamIterator``)."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names
                         if a.name.split(".")[0] not in LIBRARIES)
        elif isinstance(node, ast.ImportFrom) and \
                (node.module or "").split(".")[0] not in LIBRARIES:
            names.update(a.asname or a.name for a in node.names)
    return names


def _is_own(receiver: ast.expr, module_names: set[str]) -> bool:
    """``self``, ``cls``, ``type(self)``, ``super()`` or a name the module binds itself."""
    if isinstance(receiver, ast.Name):
        return receiver.id in {"self", "cls"} or receiver.id in module_names
    if isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Name):
        if receiver.func.id == "super":
            return True
        if receiver.func.id == "type" and len(receiver.args) == 1:
            return _is_own(receiver.args[0], set())
    return False


def _private_accesses(source: str) -> list[tuple[int, str, str]]:
    """(line, name, text) of each ``_``-prefixed attribute (not a ``__dunder__``) read on a
    receiver other than the module's own (:func:`_is_own`), and of each
    ``getattr(x, "_name")`` — whatever the names in between (``cast(Any, app)._fetcher``,
    ``self.idem._data``, ``app.conf._id``)."""
    tree = ast.parse(source)
    module_names = _module_names(tree)
    found = []
    for node in ast.walk(tree):
        name, receiver = None, None
        if isinstance(node, ast.Attribute):
            name, receiver = node.attr, node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in {"getattr", "setattr", "hasattr", "delattr"} and \
                len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and \
                isinstance(node.args[1].value, str):
            name, receiver = node.args[1].value, node.args[0]
        if name is None or receiver is None or not name.startswith("_") or \
                (name.startswith("__") and name.endswith("__")):
            continue
        if not _is_own(receiver, module_names):
            found.append((node.lineno, name, ast.unparse(node)))
    return found


def _library_stores(source: str) -> list[tuple[int, str]]:
    """(line, text) of each attribute a module assigns or deletes on an object it imported
    from faust, aiokafka or mode (``faust.App.on_start = …``, ``Stream.x = …``, ``setattr(
    Stream, "take_events", …)``): a monkeypatch, whatever the attribute's name."""
    tree = ast.parse(source)
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names
                         if a.name.split(".")[0] in LIBRARIES)
        elif isinstance(node, ast.ImportFrom) and \
                (node.module or "").split(".")[0] in LIBRARIES:
            bound.update(a.asname or a.name for a in node.names)

    def root(expr: ast.expr) -> str | None:
        while isinstance(expr, (ast.Attribute, ast.Subscript)):
            expr = expr.value
        return expr.id if isinstance(expr, ast.Name) else None

    def patches(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute):
            return isinstance(node.ctx, (ast.Store, ast.Del)) and root(node.value) in bound
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
            node.func.id in {"setattr", "delattr"} and bool(node.args) and \
            root(node.args[0]) in bound

    return [(node.lineno, ast.unparse(node)) for node in ast.walk(tree) if patches(node)]


def _offences(source: str) -> list[tuple[int, str]]:
    """What of ``source`` reaches into the libraries' internals: (line, text)."""
    found = [(source.count("\n", 0, m.start()) + 1, m.group(0))
             for pattern in PRIVATE_IMPORTS for m in pattern.finditer(source)]
    found += [(line, text) for line, name, text in _private_accesses(source)
              if name not in ALLOWED_PRIVATE]
    found += _library_stores(source)
    return sorted(found)


def _product_sources() -> list[Path]:
    return [path for package in PRODUCT for path in sorted((ROOT / package).rglob("*.py"))
            if path.parent != ROOT / "streams" / "faust_seam" and "generated" not in path.parts]


def test_no_module_but_the_seam_touches_the_libraries_internals():
    offenders = [f"{path.relative_to(ROOT)}:{line}: {text}" for path in _product_sources()
                 for line, text in _offences(path.read_text())]
    assert offenders == []


def test_the_allowed_private_names_are_the_projects_own_and_still_read():
    """Each allowed name is read outside its owner today (else it goes from the list) and
    defined by the project (or namedtuple's API): the list cannot quietly cover faust's."""
    read, defined = set(), set()
    for path in _product_sources() + sorted((ROOT / "streams" / "faust_seam").glob("*.py")):
        source = path.read_text()
        read.update(name for _line, name, _text in _private_accesses(source))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    isinstance(node.value, ast.Name) and node.value.id == "self":
                defined.add(node.attr)
    assert set(ALLOWED_PRIVATE) <= read, set(ALLOWED_PRIVATE) - read
    assert set(ALLOWED_PRIVATE) - {"_replace"} <= defined, set(ALLOWED_PRIVATE) - defined


def test_the_grep_would_see_an_offender():
    """The check catches what it is meant to (it can fail)."""
    samples = ["from aiokafka.partitioner import murmur2", "from faust.tables import x",
               "self.app.consumer._thread.seek()", "consumer._commit_offsets(x)",
               "self.app.producer._ensure_producer()", "cast(Any, self.app)._fetcher",
               "self.idem._data", "app.topics._acking_topics", "app.conf._id",
               "import faust\nfaust.streams._CStreamIterator",
               "getattr(self.app, '_fetcher')",
               "def f():\n    import faust\n    return faust.streams._CStreamIterator",
               # monkeypatches through public names (the seam review)
               "import faust\nfaust.App.on_start = None",
               "from mode import Service\nService.wait_first = None",
               "import mode.services\nmode.services.Service.wait_first = None",
               "from faust import Stream\nsetattr(Stream, 'take_events', None)",
               "import faust\nfaust.App.__init__ = None",
               "import faust as f\ndel f.App.on_start"]
    for sample in samples:
        assert _offences(sample), sample
    for fine in ["import faust\nfaust.Schema(key_type=str)", "self._lanes.revoke()",
                 "type(self)._age", "super()._properties()", "parts._replace(path='/')",
                 "import os\nos._exit(1)", "def _f(): pass\n_f._cache = 1",
                 "def f():\n    from confluent_kafka import KafkaError\n"
                 "    return KafkaError._FAIL",
                 "import faust\nself.idem.watch = faust.Schema()",
                 "import faust\napp = faust.App('x')\nself.app = app"]:
        assert not _offences(fine), fine


def test_every_workaround_has_a_behaviour_test():
    for workaround, node in WORKAROUND_TESTS.items():
        path, name = node.split("::")
        assert f"def {name}(" in (ROOT / path).read_text(), workaround


def _upstream(owner: object, attribute: str) -> object:
    """The function ``source_hash`` hashes for ``owner.attribute``."""
    fn = inspect.getattr_static(owner, attribute)
    fn = getattr(fn, "fget", fn)
    fn = getattr(fn, "fun", fn)
    return getattr(fn, "__sfprov_original__", fn)


@pytest.mark.parametrize("target", sorted(RELIED_ON))
def test_every_upstream_function_relied_on_is_in_the_contract(target):
    module, _, qualname = target.partition(":")
    owner_path, _, attribute = qualname.rpartition(".")
    owner: object = importlib.import_module(module)
    for name in owner_path.split("."):
        owner = getattr(owner, name)
    hashed = {_upstream(o, a) for o, a, _verified in faust_seam.CONTRACT.values()}
    assert _upstream(owner, attribute) in hashed, (
        f"{target} ({RELIED_ON[target]}) is relied on by the seam but not hashed in CONTRACT")


# -- read_committed: the worker never acts on an event of an aborted transaction ----------

@pytest.mark.broker
@pytest.mark.e2e
def test_the_worker_never_acts_on_an_aborted_event(kafka_settings, salesforce, whmcs,
                                                   tmp_path):
    from confluent_kafka import Producer

    from tests.streams.support import (
        REQUEST,
        Reader,
        outcomes,
        request,
        worker_env,
        worker_process,
    )

    ids = [o["order_id"] for o in salesforce.seed(accounts=3, orders=2,
                                                  broken_every=0)["orders"]]
    salesforce.approve(ids=ids)
    aborted, committed = request(ids[0]), request(ids[1])
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers,
                         "transactional.id": f"seam-{kafka_settings.topic_prefix}",
                         "partitioner": "murmur2_random"})
    producer.init_transactions(30)
    for value, commit in ((aborted, False), (committed, True)):
        producer.begin_transaction()
        producer.produce(kafka_settings.requests, key=value["OrderId__c"].encode(),
                         value=REQUEST.encode(value), headers=REQUEST.headers())
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    env = worker_env(bootstrap=kafka_settings.bootstrap_servers,
                     prefix=kafka_settings.topic_prefix, state_dir=tmp_path,
                     sf_env=salesforce.env(), wh_env=whmcs.env())
    reader = Reader(kafka_settings.bootstrap_servers, kafka_settings.outcomes)
    with worker_process(env, tmp_path / "worker.log") as proc:
        reader.poll_until(lambda r: len(r) >= 1, timeout=90, alive=lambda: proc.poll() is None)
        reader.poll_until(lambda r: False, timeout=3)  # anything more would come by now
    got = outcomes(reader.records)
    assert [o["event_uuid"] for o in got] == [committed["event_uuid"]]
    assert whmcs.orders_for(ids[0]) == [] and len(whmcs.orders_for(ids[1])) == 1


# -- the gaps faust notes in the requests' offsets go with each checkpoint commit ---------

@pytest.mark.broker
@pytest.mark.e2e
def test_the_gaps_faust_notes_in_the_requests_offsets_go_with_each_commit(
        kafka_settings, salesforce, whmcs, tmp_path):
    """Each of the connector's transactions ends in a commit marker that takes an offset;
    faust notes the gap it leaves and forgets it only when it commits from its own acks —
    which the worker never does. Left alone they were one interval per transaction for the
    life of the worker: memory, and a tree rebuilt at every new gap."""
    import socket
    import urllib.error
    import urllib.request

    from confluent_kafka import Producer

    from tests.streams.support import REQUEST, Reader, request, worker_env, worker_process

    n = 24
    ids = [o["order_id"] for o in salesforce.seed(accounts=3, orders=n,
                                                  broken_every=0)["orders"]]
    salesforce.approve(ids=ids)
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers,
                         "transactional.id": f"gaps-{kafka_settings.topic_prefix}",
                         "partitioner": "murmur2_random"})
    producer.init_transactions(30)
    for oid in ids:  # one transaction each: a marker, so a gap, after every event
        value = request(oid)
        producer.begin_transaction()
        producer.produce(kafka_settings.requests, key=oid.encode(),
                         value=REQUEST.encode(value), headers=REQUEST.headers())
        producer.commit_transaction(30)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = worker_env(bootstrap=kafka_settings.bootstrap_servers,
                     prefix=kafka_settings.topic_prefix, state_dir=tmp_path,
                     sf_env=salesforce.env(), wh_env=whmcs.env(), WORKER_HTTP_PORT=str(port))
    reader = Reader(kafka_settings.bootstrap_servers, kafka_settings.outcomes)

    def ready() -> dict:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    with worker_process(env, tmp_path / "worker.log") as proc:
        reader.poll_until(lambda r: len(r) >= n, timeout=120,
                          alive=lambda: proc.poll() is None)
        deadline, details = time.monotonic() + 30, ready()
        while time.monotonic() < deadline and not (
                details.get("commits") and details.get("offset_gaps") == 0):
            time.sleep(0.5)
            details = ready()
    assert details.get("commits"), details
    assert details.get("offset_gaps") == 0, \
        f"faust still tracks {details.get('offset_gaps')} gaps below the committed offsets"
    assert details.get("event_loop") == "uvloop", details  # WORKER_EVENT_LOOP's default


# -- the producer: idempotent, not only acks=all -------------------------------------------

def test_the_apps_producer_is_built_idempotent_with_acks_all():
    import asyncio

    import faust.transport.drivers.aiokafka

    async def build() -> tuple[object, object]:
        app = faust_seam.build_app("idempotence-test", broker="kafka://127.0.0.1:1",
                                   producer_acks=-1, web_enabled=False, autodiscover=False)
        client = app.producer._new_producer()  # the AIOKafkaProducer, not started
        try:
            return app.producer, client
        finally:
            await client.stop()

    producer, client = asyncio.run(build())
    assert isinstance(producer, faust_seam.IdempotentProducer)
    assert client._txn_manager is not None  # aiokafka: set only with enable_idempotence
    assert client._sender._acks == -1
    assert faust_seam.IdempotentProducer.logger is \
        faust.transport.drivers.aiokafka.Producer.logger


def test_the_worker_consumer_is_built_read_committed():
    """build_app wraps ``_create_worker_consumer`` on the consumer's thread; faust builds
    the worker's consumer through it (``_create_consumer``, hashed in the contract)."""
    import asyncio

    async def build() -> str:
        app = faust_seam.build_app("read-committed-test", broker="kafka://127.0.0.1:1",
                                   web_enabled=False, autodiscover=False)
        client = app.consumer._thread._create_consumer(asyncio.get_running_loop())
        try:
            return client._isolation_level
        finally:
            await client.stop()

    assert asyncio.run(build()) == "read_committed"


def test_without_it_faust_would_not_ask_for_idempotence():
    """Why the subclass exists; if faust starts doing it itself, it can go."""
    import asyncio

    import faust

    async def build() -> object:
        app = faust.App("idempotence-test-2", broker="kafka://127.0.0.1:1", producer_acks=-1,
                        web_enabled=False, autodiscover=False)
        client = app.producer._new_producer()
        await client.stop()
        return client

    assert asyncio.run(build())._txn_manager is None


# -- faust never commits the requests topic: ConsumerSeam.hold, release ------------------

def test_a_held_message_never_reaches_fausts_commit():
    """The agent holds each message (``ConsumerSeam.hold``): the stream's ack after the
    chunk (``take_events`` → ``Stream.ack``) leaves it referenced, so faust's consumer never
    acks it, and faust's commit finds nothing to commit. ``release`` lets a rebalance go on
    without it, and acks after that are no-ops. Unheld, the same ack reaches the consumer
    (the control: the check can fail) — and faust's commit still leaves the requests topic
    out (the seam's commit filter: the next test, whose control shows faust committing
    another topic)."""
    import asyncio

    import faust
    from faust.types import ConsumerMessage

    topic = "requests-hold-test"

    async def run() -> tuple[list[int], list[dict], list[int], list[dict]]:
        app = faust_seam.build_app("hold-test", broker="kafka://127.0.0.1:1",
                                   web_enabled=False, autodiscover=False)
        seam = faust_seam.ConsumerSeam(app, topic)
        consumer = app.consumer
        app.topics._acking_topics.add(topic)  # as for the agent's subscription
        stream = app.stream(app.topic(topic))
        acked: list[int] = []  # offsets that reached the consumer's ack
        committed: list[dict] = []  # what faust's commit asked of the broker
        real_ack = consumer.ack
        consumer.ack = lambda m: acked.append(m.offset) or real_ack(m)

        async def commit_offsets(offsets, start_new_transaction=True):
            committed.append(dict(offsets))
            return True

        consumer._commit_offsets = commit_offsets

        def delivered(offset: int) -> faust.Event:
            message = ConsumerMessage(topic, 0, offset, 0.0, 0, [], b"k", b"v", None)
            message.incref()  # the conductor's reference: one stream
            consumer.track_message(message)
            return faust.Event(app, b"k", b"v", {}, message)

        held = delivered(5)
        seam.hold(held.message)  # as streams.app's agent does
        await stream.ack(held)  # take_events, after the chunk
        assert held.message.refcount == 1 and not held.message.acked
        assert held.message in consumer._unacked_messages  # a rebalance waits for it
        seam.release(held.message)  # the lanes: finished, fenced or revoked
        assert held.message not in consumer._unacked_messages
        await stream.ack(held)
        held.message.ack(consumer)
        await consumer.force_commit()  # the commit handler's, wait_empty's
        held_acked, held_committed = list(acked), list(committed)

        unheld = delivered(6)  # the control
        await stream.ack(unheld)
        await consumer.force_commit()
        return held_acked, held_committed, acked[len(held_acked):], committed[
            len(held_committed):]

    held_acked, held_committed, unheld_acked, unheld_committed = asyncio.run(run())
    assert held_acked == [] and held_committed == []
    assert unheld_acked == [6] and unheld_committed == []


def test_a_release_wakes_a_wait_for_acks_as_an_ack_does():
    """faust's ``wait_empty`` (a rebalance's revocation, a stop) waits for its unacked
    messages in ``_wait_for_ack``: up to 1 s at a time, unless an ack wakes it
    (``Consumer.ack``: ``notify(_waiting_for_ack)``). A revocation releases the worker's
    held events (``ConsumerSeam.release``); a release that did not wake it left each such
    wait its full second. The ack is the control."""
    import asyncio

    from faust.types import TP, Message

    topic = "requests-release-test"

    async def run() -> dict[str, float]:
        app = faust_seam.build_app("release-test", broker="kafka://127.0.0.1:1",
                                   web_enabled=False, autodiscover=False)
        app.topic(topic)
        app.topics._acking_topics.add(topic)  # as for the agent's subscription
        seam = faust_seam.ConsumerSeam(app, topic)
        consumer = app.consumer
        woke: dict[str, float] = {}
        for how in ("release", "ack"):
            message = Message(topic, 0, 5, 0.0, 0, [], b"k", b"v", None, tp=TP(topic, 0))
            consumer._unacked_messages.add(message)

            async def later(how: str = how, message: Message = message) -> None:
                await asyncio.sleep(0.05)
                if how == "release":
                    seam.release(message)
                else:
                    consumer.ack(message)

            loop = asyncio.get_running_loop()
            started = loop.time()
            task = asyncio.ensure_future(later())
            await consumer._wait_for_ack(timeout=1)
            await task
            woke[how] = loop.time() - started
        return woke

    woke = asyncio.run(run())
    assert woke["ack"] < 0.9, woke  # the control
    assert woke["release"] < 0.9, woke


# -- the seam's subclasses log under faust's names (quietened: common.log NOISY) -----------

def _seam_services() -> list[type]:
    """Every class of the seam with a mode service's ``logger`` (a subclass of faust's)."""
    import logging
    import pkgutil

    found = []
    for info in pkgutil.iter_modules(faust_seam.__path__, "streams.faust_seam."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == info.name and \
                    isinstance(getattr(value, "logger", None), logging.Logger):
                found.append(value)
    return found


def test_the_seams_subclasses_log_under_fausts_and_modes_names():
    """mode names a service's logger after its class's module: a seam subclass logged as
    ``streams.faust_seam.*``, out of reach of the worker's quietening of faust's chatter
    (``common.log.NOISY``, ``WORKER_FAUST_LOG_LEVEL``)."""
    services = _seam_services()
    names = {cls.__name__ for cls in services}
    assert {"OrderedRecovery", "TableManager", "RestoreGuards", "DurableTable",
            "KeyPartitionedRocksStore", "IdempotentProducer"} <= names, names
    for cls in services:
        assert cls.logger.name.startswith(("faust.", "mode.")), (cls, cls.logger.name)


def test_worker_ready_stays_in_the_workers_own_log(caplog):
    """The end of a recovery ("Worker ready") is the seam's line, not faust's chatter: it
    stays visible at INFO while faust's own lines of the recovery ("Restore complete!") go
    with faust's loggers."""
    import asyncio
    import logging

    async def run() -> bool:
        app = faust_seam.build_app("ready-test", broker="kafka://127.0.0.1:1",
                                   web_enabled=False, autodiscover=False)
        recovery = app.tables.recovery
        app.consumer.assignment = lambda: set()  # nothing assigned: no seek

        async def maybe_start() -> None:
            return None

        app._fetcher.maybe_start = maybe_start
        await recovery.on_recovery_completed(app.consumer_generation_id)
        return recovery.completed.is_set()

    caplog.set_level(logging.INFO)
    for noisy in ("faust", "mode"):
        caplog.set_level(logging.INFO, logger=noisy)
    assert asyncio.run(run())
    by_message = {r.getMessage(): r.name for r in caplog.records}
    ready = [name for message, name in by_message.items() if "Worker ready" in message]
    assert ready and not ready[0].startswith(("faust", "mode")), by_message
    restored = [name for message, name in by_message.items()
                if "Restore complete" in message]
    assert restored and restored[0].startswith("faust."), by_message


@pytest.mark.parametrize("iterator", ["compiled", "pure-python"])
def test_a_message_faust_skips_never_reaches_fausts_commit_whichever_iterator(
        iterator, monkeypatch):
    """faust's stream skips a message fetched in a generation that has since changed. The
    compiled iterator (``_c_aiter``) never acks it; the pure-Python one (``_py_aiter``, the
    one an install without faust's Cython extension runs) acks it, and faust's own commit
    would then commit the requests partition past a record the worker never finished. The
    seam keeps the requests topic out of faust's commits, whichever iterator runs; another
    topic is committed as faust does (the control)."""
    import asyncio

    import faust
    import faust.streams
    from faust.types import TP, ConsumerMessage

    if iterator == "pure-python":
        monkeypatch.setattr(faust.streams, "_CStreamIterator", None)
    elif faust.streams._CStreamIterator is None:
        pytest.skip("faust's Cython extension is not built here")
    topic, other = "requests-skip-test", "other-skip-test"

    async def run() -> tuple[str, bool, list[dict]]:
        app = faust_seam.build_app("skip-test", broker="kafka://127.0.0.1:1",
                                   web_enabled=False, autodiscover=False)
        faust_seam.ConsumerSeam(app, topic)
        consumer = app.consumer
        app.topics._acking_topics.update({topic, other})
        app.flow_control.resume()
        stream = app.stream(app.topic(topic))
        app.consumer_generation_id = 7
        stale = ConsumerMessage(topic, 0, 41, 0.0, 0, [], b"k", b"v", None, generation_id=6)
        stale.incref()  # the conductor's reference: one stream
        stream.channel.queue.put_nowait(faust.Event(app, b"k", b"v", {}, stale))
        fresh = ConsumerMessage(topic, 0, 42, 0.0, 0, [], b"k", b"v", None, generation_id=7)
        fresh.incref()
        stream.channel.queue.put_nowait(faust.Event(app, b"k", b"v", {}, fresh))
        committed: list[dict] = []

        async def commit_offsets(offsets, start_new_transaction=True):
            committed.append(dict(offsets))
            return True

        consumer._commit_offsets = commit_offsets
        consumer._committed_offset[TP(topic, 0)] = 41  # the checkpoint's: next to process
        it = stream.__aiter__()
        name = it.ag_code.co_name
        await asyncio.wait_for(it.__anext__(), 5)  # skips 41, yields 42
        elsewhere = ConsumerMessage(other, 0, 3, 0.0, 0, [], b"k", b"v", None)
        consumer.track_message(elsewhere)
        elsewhere.ack(consumer)  # the control: a topic faust commits itself
        await consumer.force_commit()
        await it.aclose()
        return name, stale.acked, committed

    name, stale_acked, committed = asyncio.run(run())
    assert name == ("_c_aiter" if iterator == "compiled" else "_py_aiter")
    assert stale_acked == (iterator == "pure-python")  # what each iterator does upstream
    assert committed == [{TP(other, 0): 4}]  # the requests partition is not in it


def test_faust_reads_no_setting_from_the_environment(monkeypatch):
    """faust takes each of its settings from os.environ over the keyword the worker passes:
    STREAM_WAIT_EMPTY=false turned the revoke and the SIGTERM drain off, BROKER_URL moved
    faust's clients to another cluster than the checkpoint's (seam review)."""
    for name, value in {"STREAM_WAIT_EMPTY": "false", "PROCESSING_GUARANTEE": "exactly_once",
                        "BROKER_URL": "kafka://elsewhere:9092",
                        "BROKER_REBALANCE_TIMEOUT": "5",
                        "CONSUMER_AUTO_OFFSET_RESET": "latest"}.items():
        monkeypatch.setenv(name, value)
    app = faust_seam.build_app("env-test", broker="kafka://here:9092",
                               processing_guarantee="at_least_once", store="memory://",
                               broker_rebalance_timeout=60.0,
                               consumer_auto_offset_reset="earliest")
    conf = app.conf
    assert conf.stream_wait_empty is True
    assert str(conf.processing_guarantee).lower().endswith("at_least_once")
    assert [str(u) for u in conf.broker] == ["kafka://here:9092"]
    assert conf.broker_rebalance_timeout == 60.0
    assert conf.consumer_auto_offset_reset == "earliest"


def test_a_build_without_stream_wait_empty_is_refused():
    with pytest.raises(ValueError, match="stream_wait_empty"):
        faust_seam.build_app("no-wait", broker="kafka://here:9092", store="memory://",
                             stream_wait_empty=False)
