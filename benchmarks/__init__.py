"""Benchmark harness for pyro_scvae (issue 5): tasks, methods, metrics and the runner."""
