"""coinfer.runner: execute a split for real across processes or machines."""
