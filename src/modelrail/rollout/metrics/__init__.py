"""Metric providers (MetricProvider and ModelGate in ports.py): one backend per module.
Providers return numbers; the analysis (core/analysis.py) decides."""
