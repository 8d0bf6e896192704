"""Speed levers: each changes how fast a run computes or how much memory it takes, never what it learns.

Which levers a run uses, and why, is decided once by `worker.train.speed.plan.resolve_plan` (the run plan).
"""
