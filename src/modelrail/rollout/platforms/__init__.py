"""Platforms: where the engine's actions happen. local.py runs real processes on one machine;
kubernetes.py (the controller issue) drives a cluster."""
