"""The Salesforce sandbox's database holds the bearer tokens it issued (live for hours):
readable by its owner only, whatever the umask (secrets review: 0644 under the default one,
any local user could call the sandbox as the integration user)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sandbox.salesforce.store import Store


def test_the_database_and_its_wal_are_readable_by_their_owner_only(tmp_path: Path):
    old = os.umask(0o022)  # the usual default
    try:
        store = Store(str(tmp_path / "salesforce.db"))
        token = store.issue_token("005000000000001AAA", 7200)
    finally:
        os.umask(old)
    files = sorted(tmp_path.iterdir())
    assert {f.name for f in files} >= {"salesforce.db", "salesforce.db-wal"}
    assert any(token.encode() in f.read_bytes() for f in files)  # what is being protected
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, (f.name, oct(f.stat().st_mode))
    store.conn.close()


def test_a_database_left_readable_by_an_earlier_version_is_closed_at_open(tmp_path: Path):
    path = tmp_path / "salesforce.db"
    Store(str(path)).conn.close()
    path.chmod(0o644)
    Store(str(path)).conn.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
