"""Load generation for `eeserve bench`: workloads, closed/open-loop drivers, summaries, reports.

Torch-free: it only speaks HTTP (httpx) to a server, eeserve or any server with the same
`/v1/classify` response shape (such as the peer `python -m bench.peers.onnx`).
"""
