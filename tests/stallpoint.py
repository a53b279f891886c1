"""Run the stanch CLI with a stall point, so a test can kill it mid-apply with certainty.

    python -m tests.stallpoint N MARKER stanch-args...

From the N-th AWS write on, each write is sent and answered, then its thread writes MARKER and
waits forever: the write happened in AWS but the journal never hears back, which is exactly the
moment a crash hurts most. Reads pass through, and so do writes to DynamoDB (the shared journal's
table, not containment). Nothing in stanch knows about this module.

STALLPOINT_IGNORE=sqs,sns lets those services' calls pass uncounted (a worker's queue calls);
STALLPOINT_SLEEP=S holds each write S seconds instead of forever (a SIGTERM then lands mid-apply).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any


def install(after_writes: int, marker: Path) -> None:
    from botocore.client import BaseClient

    from runner.aws import is_read_operation

    original = BaseClient._make_api_call
    lock = threading.Lock()
    writes = 0
    ignored = {s for s in os.environ.get("STALLPOINT_IGNORE", "").split(",") if s}
    sleep = float(os.environ.get("STALLPOINT_SLEEP") or 0)

    def make_api_call(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        nonlocal writes
        result = original(self, operation_name, api_params)
        if self.meta.service_model.service_name in ignored:
            return result
        if not is_read_operation(operation_name) and self.meta.service_model.service_name != "dynamodb":
            with lock:
                writes += 1
                stall = writes >= after_writes
            if stall:
                marker.write_text(f"stalled after write {operation_name}\n")
                threading.Event().wait(sleep or None)
        return result

    BaseClient._make_api_call = make_api_call


def main() -> None:
    after, marker, *args = sys.argv[1:]
    install(int(after), Path(marker))
    from runner.cli import app

    app(args=args, prog_name="stanch")


if __name__ == "__main__":
    main()
