"""On-demand performance measurements; ``python -m benchmarks`` prints JSON. Not tests."""
