"""The one package that touches faust-streaming's and aiokafka's internals.

Everything the worker needs from the two libraries beyond their public API lives here, one
module per part (``membership``, ``tables``, ``restore``, ``rocksdb``, ``writer``, ``recovery``, ``build``,
``consumer``, ``fetcher``, on ``_base``); no other module imports a private name of either
(``tests/streams/test_faust_seam.py`` checks for it). The versions it was written against are pinned exactly (:data:`PINNED`, and in
``pyproject.toml``); :func:`check_versions` refuses any other at start-up (both in
:mod:`streams.faust_pins`, standard library only: the worker checks before it imports this
package, whose imports a renamed private name would break), and the contract
test fails when the source of a function wrapped, subclassed or relied on here changes
upstream (:data:`CONTRACT`: a hash of each; :data:`CONTRACT_FILES` for upstream files with
no Python function, faust's Cython stream iterator). Why each workaround exists is in
``docs/decisions/``; each has a behaviour test.

The interface (what the rest of the worker calls):

* :func:`build_app` — the faust app with the recovery order, table placement,
  ``read_committed`` and the offsets asked of a partition's old leader fixed; :class:`DurableTable` (``flush`` awaits the broker's acks;
  ``claim`` marks a changelog partition restored, :data:`CLAIM_KEY` its records' key);
  :class:`RecordWriter` (the tables' changelog records and the outcomes, straight into
  aiokafka's producer); :func:`key_partition`;
* :class:`ConsumerSeam` — on the app's consumer: :meth:`~ConsumerSeam.commit` explicit
  offsets (and drop faust's record of the offset gaps below them),
  :meth:`~ConsumerSeam.release` a message without committing it (faust's own commits
  leave the requests topic out), :meth:`~ConsumerSeam.generation` the generation faust
  stamps on what it fetches, seeks applied between fetches (:meth:`~ConsumerSeam.seek_before_next_fetch`), partitions paused for
  backpressure, the re-seek and diagnostics of the stall watchdog, and the revocation
  callback;
* :func:`watch_membership` — heartbeats, SyncGroup and rebalances of the consumer group,
  for the ownership lease (:mod:`streams.lease`);
* :class:`StackDumpWorker` — faust's worker whose SIGUSR1 stack dump writes no local
  variable (they held the WHMCS secret and the SASL password).
"""

from streams.faust_pins import PINNED, UnsupportedVersion, check_versions
from streams.faust_seam._base import (
    CONTRACT,
    CONTRACT_FILES,
    file_hash,
    key_partition,
    source_hash,
)
from streams.faust_seam.build import IdempotentProducer, build_app
from streams.faust_seam.consumer import ConsumerSeam
from streams.faust_seam.fetcher import refresh_metadata_on_stale_offsets
from streams.faust_seam.membership import LeaseAdapter, MembershipListener, watch_membership
from streams.faust_seam.recovery import OrderedRecovery, TableManager
from streams.faust_seam.restore import CLAIM_KEY
from streams.faust_seam.rocksdb import (
    BoundedRocksDBOptions,
    KeyPartitionedRocksStore,
    rocksdb_memory,
)
from streams.faust_seam.stackdump import StackDumpWorker
from streams.faust_seam.tables import UNREADABLE_VALUE, ChangelogSchema, DurableTable
from streams.faust_seam.writer import RecordWriter

__all__ = ["CLAIM_KEY", "CONTRACT", "CONTRACT_FILES", "PINNED", "UNREADABLE_VALUE",
           "BoundedRocksDBOptions", "ChangelogSchema", "ConsumerSeam", "DurableTable",
           "IdempotentProducer", "KeyPartitionedRocksStore", "LeaseAdapter",
           "MembershipListener", "OrderedRecovery", "RecordWriter", "StackDumpWorker",
           "TableManager",
           "UnsupportedVersion", "build_app", "check_versions", "file_hash", "key_partition",
           "refresh_metadata_on_stale_offsets", "rocksdb_memory", "source_hash",
           "watch_membership"]
