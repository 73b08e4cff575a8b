"""Regenerate the Pub/Sub stubs: ``python -m sandbox.salesforce.generated.regen``.

Runs grpcio-tools' protoc on ``sandbox/salesforce/proto/pubsub_api.proto`` and rewrites
the generated ``import pubsub_api_pb2`` into a package-relative import, so the stubs
import as ``sandbox.salesforce.generated.pubsub_api_pb2``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE.parent / "proto"


def main() -> int:
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={HERE}",
                        f"--pyi_out={HERE}", f"--grpc_python_out={HERE}",
                        str(PROTO_DIR / "pubsub_api.proto")])
    if code:
        return code
    grpc_file = HERE / "pubsub_api_pb2_grpc.py"
    text = grpc_file.read_text().replace("import pubsub_api_pb2 as",
                                         "from . import pubsub_api_pb2 as")
    grpc_file.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
