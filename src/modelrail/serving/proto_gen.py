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
    return 0


if __name__ == "__main__":
    sys.exit(main())
