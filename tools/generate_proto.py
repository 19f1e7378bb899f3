"""Regenerate brewnet/proto/caffe_pb2.py from brewnet/proto/caffe.proto.

Run from any directory with the project's Python environment:

    python tools/generate_proto.py

The module is compiled with the protoc bundled in grpcio-tools, so no system
protoc is needed. Commit the regenerated caffe_pb2.py together with the
.proto change; tests/test_proto.py fails when the two disagree.
"""

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent.parent / "brewnet" / "proto"
PROTO_FILE = PROTO_DIR / "caffe.proto"


def main() -> int:
    """Compile caffe.proto into caffe_pb2.py next to it and return protoc's status."""
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={PROTO_DIR}",
        str(PROTO_FILE),
    ]
    status = protoc.main(args)
    if status != 0:
        print(
            f"protoc failed with exit status {status} on {PROTO_FILE}", file=sys.stderr
        )
    else:
        print(f"wrote {PROTO_DIR / 'caffe_pb2.py'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
