"""Our Pub/Sub .proto against the sandbox's independently written one (a deliberate check).

Both define ``eventbus.v1`` messages, so they cannot share one process's descriptor pool:
each side's descriptor is dumped in its own subprocess and the dumps are compared —
messages, field names, numbers, types, labels, enums and RPC shapes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DUMP = r"""
import importlib, json, sys
pb = importlib.import_module(sys.argv[1])
fd = pb.DESCRIPTOR
out = {"package": fd.package, "messages": {}, "enums": {}, "services": {}}
for name, msg in fd.message_types_by_name.items():
    out["messages"][name] = {f.name: [f.number, f.type, getattr(f, "label", 0),
                                      f.message_type.name if f.message_type else
                                      (f.enum_type.name if f.enum_type else "")]
                             for f in msg.fields}
for name, enum in fd.enum_types_by_name.items():
    out["enums"][name] = {v.name: v.number for v in enum.values}
for name, svc in fd.services_by_name.items():
    out["services"][name] = {m.name: [m.input_type.name, m.output_type.name,
                                      m.client_streaming, m.server_streaming]
                             for m in svc.methods}
print(json.dumps(out, sort_keys=True))
"""


def dump(module: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", DUMP, module], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_our_proto_matches_the_sandbox_proto() -> None:
    ours = dump("connectors.pubsub.generated.pubsub_api_pb2")
    theirs = dump("sandbox.salesforce.generated.pubsub_api_pb2")
    assert ours["package"] == theirs["package"] == "eventbus.v1"
    assert ours["enums"] == theirs["enums"]
    assert ours["services"] == theirs["services"]
    assert sorted(ours["messages"]) == sorted(theirs["messages"])
    for name, fields in ours["messages"].items():
        assert fields == theirs["messages"][name], f"message {name} differs"
