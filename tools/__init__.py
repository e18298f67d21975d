"""Offline tooling: the `eeserve` CLI (tools/cli.py, tools/commands/), load tests
(tools/loadtest/), peer servers (tools/peer.py, tools/peer_onnx.py) and the build worker.

Nothing in service/, models/ or policies/ imports it (import-linter contracts in pyproject.toml).
"""

import os

# As in tools/cli.py, for every entry point here (the build worker, a command imported alone):
# spin-waiting OpenMP threads steal the other core; set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
