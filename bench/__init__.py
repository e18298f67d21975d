"""eeserve's measurement package: benchmarks, peers and studies, each `python -m bench.<name>`.

It imports the project's packages; nothing in them imports it (an import-linter contract).
Every benchmark runs servers and records results through `bench.harness`.
"""
