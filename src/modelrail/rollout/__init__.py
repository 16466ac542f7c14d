"""Rollouts: the canary engine and what feeds it.

  spec.py      RolloutSpec, RolloutStatus and the Phase enum
  analysis.py  measurements → a verdict (pass, fail, inconclusive); no data is never success
  engine.py    the pure state machine: (spec, status, observation) → decision
Adapters (the local platform, the kopf operator, the CLI) call the engine and carry out its
actions; the engine never does I/O or reads a clock.
"""
