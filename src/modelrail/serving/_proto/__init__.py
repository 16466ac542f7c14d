"""Generated protobuf/gRPC modules for the Open Inference Protocol v2 (see proto_gen.py)."""
