"""The model pipeline: scikit-learn → ONNX → parity gate → fingerprinted registry.

`register.register_model` is the one entry point that ties the steps together; the CLI,
the demo and the tests call it. Each step lives in its own module so it can be tested alone.
"""
