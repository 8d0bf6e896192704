"""Take a finished run away: downloads (checkpoints, metrics, merged model) and short worker-side tasks."""
