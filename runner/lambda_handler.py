"""AWS Lambda entry point: `runner.lambda_handler.handler`.

It takes either an EventBridge event directly (a GuardDuty or Security Hub finding, as a rule's
target) or an SQS batch (an event source mapping with `ReportBatchItemFailures`). Each message is
handled as `stanch worker` handles it (runner/worker.py): duplicates of an incident are refused,
a run left unfinished is resumed. For a batch, every record whose message is not done (bad input, a
run that failed or was cut short by the function's timeout) is listed in `batchItemFailures`, so
SQS redelivers only those, and the queue's redrive policy moves a poison message to its DLQ. A
direct event that is not done raises `NotDone`, so Lambda's retries and on-failure destination
take it.

Environment: STANCH_STATE_DIR (a shared file system such as EFS, or with the DynamoDB journal a
scratch directory), STANCH_CONFIG, and the function's role as AWS credentials. Give the queue a
visibility timeout of at least six times the function's timeout.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

from runner.worker import Context, Handled, handle_safely

#: a run still going this close to the function's timeout stops cleanly (resumable) instead of being killed
STOP_MARGIN_S = 15.0


class NotDone(RuntimeError):
    """A directly invoked event whose message is not done: Lambda retries it, then sends it to the
    function's on-failure destination."""


def _context() -> Context:
    from runner.service import state_dir

    return Context(state=state_dir(None), config_path=os.environ.get("STANCH_CONFIG") or None,
                   region=os.environ.get("STANCH_REGION") or None,
                   endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
                   by=os.environ.get("STANCH_BY") or "stanch-lambda")


def _is_sqs_batch(event: Any) -> bool:
    records = event.get("Records") if isinstance(event, dict) else None
    return isinstance(records, list) and bool(records) and all(
        isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    ctx = _context()
    stop = threading.Event()
    timer = None
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        timer = threading.Timer(max(0.0, remaining() / 1000 - STOP_MARGIN_S), stop.set)
        timer.daemon = True
        timer.start()
    try:
        if _is_sqs_batch(event):
            failures = []
            for record in event["Records"]:
                handled = _handle(str(record.get("body", "")), ctx, stop)
                handled.message_id = record.get("messageId")
                if handled.fate != "delete":
                    failures.append({"itemIdentifier": record.get("messageId")})
            return {"batchItemFailures": failures}
        handled = _handle(json.dumps(event), ctx, stop)
        if handled.fate != "delete":
            raise NotDone(handled.reason)
        return handled.to_json()
    finally:
        if timer is not None:
            timer.cancel()


def _handle(body: str, ctx: Context, stop: threading.Event) -> Handled:
    if stop.is_set():  # out of time before this record started
        return Handled("release", "unread", "the function is about to time out")
    handled = handle_safely(body, ctx, stop, sys.stderr)
    sys.stderr.write(json.dumps({"event": "lambda.message", **handled.to_json()}, default=str) + "\n")
    return handled
