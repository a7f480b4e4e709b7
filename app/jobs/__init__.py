"""Job execution: lifecycle, runner, worker, queue, oracles, accounting, artifacts."""
