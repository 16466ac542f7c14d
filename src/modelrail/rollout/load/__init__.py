"""Load verification (LoadRunner in ports.py): Locust run as a subprocess on this machine
(locust.py), the Job entry point a cluster runs (job.py), and bounded client traffic for
tests and benchmarks (client.py)."""
