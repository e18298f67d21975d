"""schemathesis hooks: a 5xx check that accepts only the documented deadline 504.

A 504 is the promised answer when a request's own `deadline_ms` passes (issue: per-request
deadlines); every other 5xx, and a 504 for a request that set no deadline, is a failure.
"""

from __future__ import annotations

import json

import schemathesis


@schemathesis.check
def no_unexpected_server_error(ctx, response, case):  # type: ignore[no-untyped-def]
    if response.status_code < 500:
        return None
    body = case.body if isinstance(case.body, dict) else {}
    asked_deadline = "deadline_ms" in body or "deadline_ms" in (body.get("parameters") or {})
    try:
        code = json.loads(response.content).get("code")
    except (ValueError, AttributeError):
        code = None
    if response.status_code == 504 and asked_deadline and code == "timeout":
        return None
    raise AssertionError(f"server error {response.status_code}: {response.content[:300]!r}")
