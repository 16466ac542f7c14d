"""The Kubernetes platform: the only module that talks to the API server (platform.py)
and the kopf operator over the one controller."""
