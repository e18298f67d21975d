"""`eeserve peer DIR [--host --port]`: the full-depth baseline server (one request at a time)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tools.errors import CliError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("peer", help="serve an artifact the plain way (full depth, no batching) "
                                    "as a baseline for `eeserve bench`")
    p.add_argument("artifact", type=Path, help="text artifact directory")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--threads", type=int, help="intra-op threads (default: torch's; onnx 1)")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx"],
                   help="torch: one request at a time, eager (default); onnx: ONNX Runtime, "
                        "one whole-model graph, dynamic batching (the strongest plain peer)")
    p.add_argument("--max-batch", type=int, default=16, help="onnx: texts per batch")
    p.add_argument("--max-delay-ms", type=float, default=2.0, help="onnx: batching window")
    return p


def run(args: argparse.Namespace) -> int:
    if not (args.artifact / "manifest.json").is_file():
        raise CliError(f"{args.artifact}: not an artifact directory (no manifest.json)")
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be 0..65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise CliError(f"--threads must be >= 1, got {args.threads}")
    import uvicorn

    from models.loading import load_text_artifact
    from tools.peer import create_peer_app

    load_text_artifact(args.artifact, device=args.device)  # fail fast, with a one-line reason
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.runtime == "onnx":
        from tools.peer_onnx import create_onnx_peer_app, ensure_whole_graph

        ensure_whole_graph(args.artifact)
        app = create_onnx_peer_app(args.artifact, args.threads or 1, args.max_batch,
                                   args.max_delay_ms)
    else:
        app = create_peer_app(args.artifact, args.device, args.threads)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")
    return 0
