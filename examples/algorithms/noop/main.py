"""Does nothing; measures the runner's own overhead."""
