"""Regenerates the committed gRPC stubs in `_proto/` from `_proto/oip_v2.proto`.

Run `python -m modelrail.serving.proto_gen` after editing the .proto (grpcio-tools is a
dev dependency). The generated modules are committed so that serving needs no code
generation at install or run time.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).parent / "_proto"


def main() -> int:
    from grpc_tools import protoc

    code = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={PROTO_DIR}",
        f"--pyi_out={PROTO_DIR}", f"--grpc_python_out={PROTO_DIR}",
        str(PROTO_DIR / "oip_v2.proto"),
    ])
    if code != 0:
        return int(code)
    # grpc_tools writes `import oip_v2_pb2`, which only works from inside the folder.
    grpc_module = PROTO_DIR / "oip_v2_pb2_grpc.py"
    text = grpc_module.read_text()
    grpc_module.write_text(re.sub(r"^import oip_v2_pb2 as", "from . import oip_v2_pb2 as",
                                  text, flags=re.M))
    # Register our descriptors in a private pool, not protobuf's default one: tritonclient
    # (and any KServe stub) defines the same `inference.*` names, and two definitions in
    # one pool make whichever is imported second fail. A private pool lets a process use
    # both (our tests drive the server with tritonclient while importing our messages).
    pb2 = PROTO_DIR / "oip_v2_pb2.py"
    code_text = pb2.read_text()
    marker = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
    if marker not in code_text:
        raise SystemExit(f"unexpected protoc output: {marker!r} not found in {pb2}")
    pb2.write_text(code_text.replace(
        marker, "POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = POOL.AddSerializedFile("))
    return 0


if __name__ == "__main__":
    sys.exit(main())
