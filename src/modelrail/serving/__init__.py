"""Serving: the Open Inference Protocol v2 over REST and gRPC, backed by onnxruntime.

The BentoML service in services/inference/ is a thin shell around this package:
  repository.py  the loaded models (sha256-checked), readiness, version resolution
  tensors.py     OIP datatypes, safe conversion to the model's input, NaN/inf policy
  rest.py        the REST app (JSON and binary tensor extension, convenience route)
  grpc_server.py the gRPC GRPCInferenceService
  metrics.py     Prometheus metrics by model, version, protocol and outcome
"""
