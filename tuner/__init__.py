"""Drive sweeps: CLI, sweep construction on Ray Tune, MLflow tracking, results."""
