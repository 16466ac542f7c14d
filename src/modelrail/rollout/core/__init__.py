"""The pure rollout core: spec and policy, analysis, the engine (state machine), the
autoscaling algorithm, and the one controller that drives them through the ports."""
