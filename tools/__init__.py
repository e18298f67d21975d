"""Offline tooling: the `eeserve` CLI (tools/cli.py, tools/commands/), load tests
(tools/loadtest/), peer servers (tools/peer.py, tools/peer_onnx.py) and the build worker.

Nothing in service/, models/ or policies/ imports it (import-linter contracts in pyproject.toml).
"""

import os

# For every entry point here (the CLI, the build worker, a command imported alone), set before
# torch is imported: OpenMP threads that spin-wait steal the other core from the event loop and
# from ONNX Runtime (a batch-1 torch forward took 544 ms instead of 21 ms beside another busy
# process, measured on 2026-11-22 on the 2-vCPU machine). An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
