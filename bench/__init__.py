"""hpc-edge's benchmark harness: ``python bench/run.py [--quick] [--only NAME ...]`` (see bench/README.md)."""
