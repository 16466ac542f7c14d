"""Traffic routers (TrafficRouter in ports.py): one backend per module — Traefik for the
local platform, Gateway API routes on Kubernetes, and a router that does nothing."""
