"""A fault-injecting reverse proxy in front of a moto server on 127.0.0.1 (stdlib only).

Point stanch (or any botocore client) at `proxy.url` instead of the moto server and every request
goes through here first. The proxy can add a fixed latency, and can answer instead of AWS with:

- `throttle`: HTTP 400 shaped like the service's own throttling error (JSON services:
  `{"__type": "ThrottlingException"}`; query services such as IAM and STS:
  `<ErrorResponse><Error><Code>Throttling</Code>`; EC2: `RequestLimitExceeded`; S3: 503 `SlowDown`);
- `error5xx`: HTTP 503 `ServiceUnavailable`;
- `reset`: the TCP connection is reset before the request reaches the server;
- `timeout`: the request reaches the server but its answer never comes back (the client's read
  timeout fires; a retried write is therefore sent twice, as with real AWS).

Faults are chosen per operation (`rules={"UpdateAccessKey": "throttle"}`, or `"throttle:2"` for
the first two calls only; operations are read from X-Amz-Target or the Action= field) or at
random with fixed probabilities from seeded generators (one per operation, so a run is repeatable
even when its calls are concurrent):

    with FaultProxy(moto_url, throttle=0.2, error5xx=0.05, seed=7) as proxy:
        subprocess.run(["stanch", "run", "incident.json", "--endpoint-url", proxy.url])
        print(proxy.counts)   # {"throttle": 31, "error5xx": 8, "reset": 0, "timeout": 0}

moto has no CloudTrail LookupEvents (its server answers 500, which botocore retries). Given
`lookup_events=RECORDS` (CloudTrail records, as in a trail file), the proxy answers LookupEvents
itself from them, as CloudTrail would: filtered by the request's region, lookup attribute
(AccessKeyId, Username, EventName, EventSource) and time range, newest first, paginated.

The proxy only ever talks to 127.0.0.1 (or localhost): it cannot be pointed at real AWS.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

KINDS = ("throttle", "error5xx", "reset", "timeout")
READ_PREFIXES = ("Describe", "List", "Get", "Lookup", "Search", "Head", "BatchGet", "Query", "Scan", "Simulate",
                 "AssumeRole")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_REGION = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/[^/]+/aws4_request")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "content-length"}


def operation_of(headers: Any, path: str, body: bytes) -> str:
    """The AWS operation a request calls: X-Amz-Target (JSON services) or Action= (query services)."""
    target = headers.get("X-Amz-Target") or ""
    if target:
        return str(target).rsplit(".", 1)[-1]
    query = urllib.parse.urlsplit(path).query
    for source in (query, body.decode("utf-8", "replace") if body[:1] not in (b"{", b"<") else ""):
        action = urllib.parse.parse_qs(source).get("Action")
        if action:
            return action[0]
    return ""


def service_of(headers: Any) -> str:
    """The signing service of a request (from the SigV4 credential scope), e.g. 'iam', 'ecs'."""
    found = _SCOPE.search(headers.get("Authorization") or "")
    return found.group(1) if found else ""


#: services that speak rest-json (no X-Amz-Target; a GET has no content type to tell by)
REST_JSON = frozenset({"scheduler", "lambda", "account", "guardduty", "eks", "batch", "apigateway", "sso",
                       "securityhub", "elasticfilesystem", "glacier", "sagemaker-geospatial"})


def _epoch(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def lookup_events_response(records: list[dict[str, Any]], headers: Any, body: bytes) -> tuple[int, str, bytes]:
    """CloudTrail's LookupEvents answered from `records` (see the module's docstring)."""
    request = json.loads(body or b"{}")
    found = _REGION.search(headers.get("Authorization") or "")
    region = found.group(1) if found else "us-east-1"
    fields = {"AccessKeyId": lambda r: (r.get("userIdentity") or {}).get("accessKeyId"),
              "Username": lambda r: (r.get("userIdentity") or {}).get("userName"),
              "EventName": lambda r: r.get("eventName"), "EventSource": lambda r: r.get("eventSource")}
    wanted = [(a["AttributeKey"], a["AttributeValue"]) for a in request.get("LookupAttributes") or []]
    start, end = request.get("StartTime"), request.get("EndTime")
    hits = [r for r in records if r.get("awsRegion", "us-east-1") == region
            and all(key in fields and fields[key](r) == value for key, value in wanted)
            and (start is None or _epoch(r["eventTime"]) >= float(start))
            and (end is None or _epoch(r["eventTime"]) <= float(end))]
    hits.sort(key=lambda r: r["eventTime"], reverse=True)
    first, size = int(request.get("NextToken") or 0), int(request.get("MaxResults") or 50)
    page = hits[first:first + size]
    out: dict[str, Any] = {"Events": [{
        "EventId": r.get("eventID", ""), "EventName": r.get("eventName", ""), "ReadOnly": str(r.get("readOnly", False)),
        "AccessKeyId": fields["AccessKeyId"](r) or "", "EventTime": _epoch(r["eventTime"]),
        "EventSource": r.get("eventSource", ""), "Username": fields["Username"](r) or "",
        "CloudTrailEvent": json.dumps(r)} for r in page]}
    if first + size < len(hits):
        out["NextToken"] = str(first + size)
    return 200, "application/x-amz-json-1.1", json.dumps(out).encode()


def throttling_response(headers: Any) -> tuple[int, str, bytes]:
    """(status, content type, body) of a throttling error in the protocol the caller speaks."""
    service = service_of(headers)
    content_type = str(headers.get("Content-Type") or "")
    if headers.get("X-Amz-Target") or "amz-json" in content_type:
        body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
        return 400, "application/x-amz-json-1.1", body
    if service in REST_JSON or "json" in content_type:  # rest-json: the error type rides in the body (or header)
        body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
        return 429, "application/json", body
    if service == "ec2":
        body = (b"<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error><Code>RequestLimitExceeded</Code>"
                b"<Message>Request limit exceeded.</Message></Error></Errors><RequestID>fault</RequestID></Response>")
        return 503, "text/xml", body
    if service == "s3":
        body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                b"<Message>Please reduce your request rate.</Message></Error>")
        return 503, "application/xml", body
    body = (b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message>"
            b"</Error><RequestId>fault</RequestId></ErrorResponse>")
    return 400, "text/xml", body


def unavailable_response(headers: Any) -> tuple[int, str, bytes]:
    if headers.get("X-Amz-Target") or "amz-json" in str(headers.get("Content-Type") or ""):
        return 503, "application/x-amz-json-1.1", json.dumps(
            {"__type": "ServiceUnavailableException", "message": "Service unavailable"}).encode()
    return 503, "text/xml", (b"<ErrorResponse><Error><Type>Receiver</Type><Code>ServiceUnavailable</Code>"
                             b"<Message>Service unavailable</Message></Error><RequestId>fault</RequestId>"
                             b"</ErrorResponse>")


class FaultProxy:
    """A threaded reverse proxy on 127.0.0.1 that injects faults; a context manager."""

    def __init__(self, upstream: str, *, latency_ms: float = 0, throttle: float = 0, error5xx: float = 0,
                 reset: float = 0, timeout: float = 0, seed: int = 0, rules: dict[str, str] | None = None,
                 hang_s: float = 30.0, on_write: Callable[[str, int, str], None] | None = None,
                 lookup_events: list[dict[str, Any]] | None = None) -> None:
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname not in LOCAL_HOSTS or parts.port is None:
            raise ValueError(f"upstream must be http://127.0.0.1:PORT (a local moto server), not {upstream!r}")
        if not 0 <= throttle + error5xx + reset + timeout <= 1:
            raise ValueError("fault probabilities must add up to at most 1")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.latency_s = latency_ms / 1000
        self.probabilities = {"throttle": throttle, "error5xx": error5xx, "reset": reset, "timeout": timeout}
        self.rules: dict[str, tuple[str, int | None]] = {}
        for op, spec in (rules or {}).items():
            kind, _, times = spec.partition(":")
            if kind not in KINDS:
                raise ValueError(f"rule for {op}: unknown fault {kind!r}; one of {', '.join(KINDS)}")
            self.rules[op] = (kind, int(times) if times else None)
        self.hang_s = hang_s
        self.lookup_events = lookup_events
        #: called for every write request as (operation, its number among writes, "before" | "after")
        #: forwarding it: a test can kill the client exactly at a change boundary (raising in the
        #: "before" call drops the request unsent)
        self.on_write = on_write
        self.writes = 0
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        #: operations that reached the moto server, by name (a write sent twice shows here)
        self.forwarded: Counter[str] = Counter()
        self.url = ""
        self._seed = seed
        self._random: dict[str, random.Random] = {}  # one stream per operation
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = _Server(("127.0.0.1", 0), Handler)
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    # -- decisions ------------------------------------------------------------------------
    def choose(self, operation: str) -> str | None:
        """The fault for this request, or None to forward it untouched."""
        with self._lock:
            self._seen[operation] += 1
            rule = self.rules.get(operation)
            if rule is not None:
                kind, times = rule
                if times is None or self._seen[operation] <= times:
                    self.counts[kind] += 1
                    return kind
                return None
            # a stream per operation: which calls fail does not depend on how threads interleave
            stream = self._random.setdefault(operation, random.Random(f"{self._seed}/{operation}"))
            draw = stream.random()
            edge = 0.0
            for kind in KINDS:
                edge += self.probabilities[kind]
                if draw < edge:
                    self.counts[kind] += 1
                    return kind
            return None

    def forward(self, method: str, path: str, headers: list[tuple[str, str]],
                body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(str(self.upstream_host), self.upstream_port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=dict(headers))
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (read timeout) or a reset we injected: nothing to report


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and the soak print their own summaries

    def _reply(self, status: int, content_type: str, body: bytes,
               extra: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in extra or []:
            if key.lower() not in _HOP_BY_HOP and key.lower() not in ("content-type", "server", "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), as a failing load balancer would."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _handle(self) -> None:
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        operation = operation_of(self.headers, self.path, body)
        if owner.latency_s:
            time.sleep(owner.latency_s)
        fault = owner.choose(operation)
        if fault == "throttle":
            self._reply(*throttling_response(self.headers))
            return
        if fault == "error5xx":
            self._reply(*unavailable_response(self.headers))
            return
        if fault == "reset":
            self._reset()
            return
        if operation == "LookupEvents" and owner.lookup_events is not None:
            with owner._lock:
                owner.forwarded[operation] += 1
            self._reply(*lookup_events_response(owner.lookup_events, self.headers, body))
            return
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
        number = 0
        if owner.on_write is not None and operation and not operation.startswith(READ_PREFIXES):
            with owner._lock:
                owner.writes += 1
                number = owner.writes
            owner.on_write(operation, number, "before")
        status, resp_headers, resp_body = owner.forward(self.command, self.path, headers, body)
        with owner._lock:
            owner.forwarded[operation] += 1
        if number:
            owner.on_write(operation, number, "after")
        if fault == "timeout":  # the server acted; its answer is lost
            owner._stopping.wait(owner.hang_s)
            self._reset()
            return
        content_type = next((v for k, v in resp_headers if k.lower() == "content-type"), "text/plain")
        self._reply(status, content_type, resp_body, resp_headers)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle  # http.server dispatches on these names
