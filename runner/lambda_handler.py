"""AWS Lambda entry point: `runner.lambda_handler.handler`.

It takes either an EventBridge event directly (a GuardDuty or Security Hub finding, as a rule's
target) or an SQS batch (an event source mapping with `ReportBatchItemFailures`). Each message is
handled as `stanch worker` handles it (runner/worker.py): duplicates of an incident are refused,
a run left unfinished is resumed. For a batch, every record whose message is not done (bad input, a
run that failed) is listed in `batchItemFailures`, so SQS redelivers only those, and the queue's
redrive policy moves a poison message to its DLQ. A run cut short by the function's timeout is
handed on instead: a resume request for it (`{"stanch": "resume", "run_id": ...}`) is sent to the
queue ([worker] queue_url, or the record's own queue) and the record counts as done, so the next
invocation continues the run at once, and a long run never uses up the record's receives. If that
send fails, the record is listed as failed and made visible again at once. A direct event that is
not done raises `NotDone`, so Lambda's retries and on-failure destination take it.

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

from botocore.exceptions import BotoCoreError, ClientError

from runner.awserrors import describe_client_error
from runner.config import load_config
from runner.errors import StanchError
from runner.worker import Context, Handled, handle_safely, send_resume, sqs_client

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
                if handled.fate == "delete":
                    continue
                if handled.fate == "release" and handled.run_id and _hand_on(record, handled.run_id, ctx):
                    continue  # the resume request carries the run on; this record is done
                failures.append({"itemIdentifier": record.get("messageId")})
                if handled.fate == "release":  # back at once, not after the queue's visibility timeout
                    _visible_now(record, ctx)
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


def queue_url_of(record: dict[str, Any], ctx: Context) -> str:
    """The queue a record came from: [worker] queue_url, else built from its `eventSourceARN`
    (arn:PARTITION:sqs:REGION:ACCOUNT:NAME)."""
    configured = load_config(ctx.config_path).worker.queue_url
    if configured:
        return configured
    parts = str(record.get("eventSourceARN", "")).split(":")
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "sqs" or not all(parts[3:]):
        raise ValueError(f"no queue in the record's eventSourceARN {record.get('eventSourceARN')!r}")
    _, partition, _, region, account, name = parts
    suffix = "amazonaws.com.cn" if partition == "aws-cn" else "amazonaws.com"
    return f"https://sqs.{region}.{suffix}/{account}/{name}"


_SEND_ERRORS = (ClientError, BotoCoreError, StanchError, ValueError, OSError)


def _log(doc: dict[str, Any]) -> None:
    sys.stderr.write(json.dumps(doc, default=str) + "\n")


def _hand_on(record: dict[str, Any], run_id: str, ctx: Context) -> bool:
    """Send a resume request for the interrupted `run_id` to the record's queue; False if it could not be sent."""
    try:
        url = queue_url_of(record, ctx)
        sent = send_resume(url, run_id, ctx.by, ctx)
    except _SEND_ERRORS as exc:
        _log({"event": "lambda.resume_not_sent", "run_id": run_id, "message_id": record.get("messageId"),
              "error": describe_client_error(exc) if isinstance(exc, ClientError) else f"{type(exc).__name__}: {exc}"})
        return False
    _log({"event": "lambda.resume_sent", "run_id": run_id, "message_id": record.get("messageId"),
          "resume_message_id": sent})
    return True


def _visible_now(record: dict[str, Any], ctx: Context) -> None:
    try:
        url = queue_url_of(record, ctx)
        sqs_client(url, ctx).change_message_visibility(QueueUrl=url, ReceiptHandle=str(record.get("receiptHandle")),
                                                       VisibilityTimeout=0)
    except _SEND_ERRORS as exc:  # it comes back after the visibility timeout instead
        _log({"event": "lambda.release_failed", "message_id": record.get("messageId"),
              "error": describe_client_error(exc) if isinstance(exc, ClientError) else f"{type(exc).__name__}: {exc}"})
