"""Metric providers: one interface (base.py), one backend per module. Providers return
numbers; analysis.py decides."""
