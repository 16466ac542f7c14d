"""The local platform: an environment as processes on this machine (platform.py), its
background controller (daemon.py), the rollout controller run over it (runner.py), state
files (store.py) and the HTML report."""
