"""GPU-aware job queue: discovery, placement and claiming, launchers, supervision, start-up reconciliation."""
