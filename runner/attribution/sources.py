"""Where CloudTrail records come from: trail files given on the command line, a trail's S3 prefix
(every region under it), and CloudTrail LookupEvents in every region searched.

LookupEvents is queried per compromised access key (and per compromised user name), again as the
graph finds new keys, paginated and held to the API's 2 calls per second per region. A failed
query is a recorded gap and the next query still runs; a region that refuses the API outright is
not asked again in this run.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from runner.attribution.graph import Attribution, Seeds, attribute
from runner.attribution.records import records_of
from runner.errors import InputError, Problem

#: error codes after which a region's LookupEvents is not asked again (the rest are retried per query)
_UNAVAILABLE = ("AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId",
                "OptInRequired", "UnsupportedOperation", "NotImplemented", "InternalFailure", "404", "501")
#: at most this many rounds of "the graph found new keys: ask LookupEvents about them"
MAX_ROUNDS = 8


def summarise(exc: BaseException) -> str:
    """`code: message` for an AWS error (never a raw HTML body), or the exception's class and text."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "Error")
        message = str(err.get("Message") or "")
        if "<" in message and ">" in message:  # an HTML error page from a proxy or an emulator
            message = "the endpoint answered with an HTML page"
        return f"{code}: {message[:200]}".rstrip(": ")
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}".rstrip(": ")


def read_trail_files(paths: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Records from trail files (plain or gzipped Records[], EventBridge events, single records).
    Bad input is an InputError naming the file; returns (records, source labels)."""
    from runner.intake import detect_format, read_document

    out: list[dict[str, Any]] = []
    labels: list[str] = []
    for source in paths:
        label, doc = read_document(source)
        if detect_format(doc) not in ("cloudtrail-records", "cloudtrail-eventbridge", "cloudtrail-record"):
            raise InputError(label, [Problem("", "not CloudTrail: expected a trail file with Records[], an "
                                                 "'AWS API Call via CloudTrail' event, or one record")])
        recs = records_of(label, doc)
        out += recs
        shown = label if source == "-" else str(Path(source).resolve())
        labels.append(f"trail file {shown} ({len(recs)} records)")
    return out, labels


def is_cloudtrail_file(source: str) -> bool:
    """True when `source` is a readable CloudTrail document (stdin is never re-read)."""
    from runner.intake import detect_format, read_document

    if source == "-":
        return False
    try:
        _, doc = read_document(source)
    except InputError:
        return False
    return detect_format(doc) in ("cloudtrail-records", "cloudtrail-eventbridge", "cloudtrail-record")


class _RateLimit:
    """At most `per_second` calls per key (region), across threads."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.lock = threading.Lock()
        self.next_at: dict[str, float] = {}

    def wait(self, key: str) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            at = max(now, self.next_at.get(key, 0.0))
            self.next_at[key] = at + self.interval
        if at > now:
            time.sleep(at - now)


@dataclass
class TrailReader:
    """Reads CloudTrail for one run. `client(service, region)` comes from the run's AwsSession."""

    client: Callable[..., Any]
    home_region: str
    regions: list[str]
    start: datetime | None
    s3_uri: str = ""
    lookup: bool = True
    lookup_tps: float = 2.0
    #: maps a function over items concurrently (the run's fan-out); regions are asked side by side
    fanout: Callable[[Callable[[str], Any], list[str]], list[Any]] | None = None
    sources: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    _dead_regions: set[str] = field(default_factory=set)

    def s3_records(self) -> list[dict[str, Any]]:
        if not self.s3_uri:
            return []
        bucket, _, prefix = self.s3_uri.removeprefix("s3://").partition("/")
        s3 = self.client("s3", self.home_region)
        out: list[dict[str, Any]] = []
        files = 0
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    # a file last written before the window holds none of its events (5 minutes for clocks)
                    modified = obj.get("LastModified")
                    if self.start is not None and modified and modified < self.start - timedelta(minutes=5):
                        continue
                    body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                    try:
                        doc = json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)
                    except (OSError, ValueError, EOFError):
                        self.gaps.append(f"s3://{bucket}/{obj['Key']}: not a trail file; skipped")
                        continue
                    recs = doc.get("Records") if isinstance(doc, dict) else None
                    out += [r for r in recs or [] if isinstance(r, dict) and isinstance(r.get("eventName"), str)]
                    files += 1
        except (ClientError, BotoCoreError) as exc:
            self.gaps.append(f"CloudTrail trail files at {self.s3_uri}: {summarise(exc)}")
            return out
        self.sources.append(f"trail files {self.s3_uri} ({files} files, {len(out)} records)")
        return out

    def lookup_records(self, attributes: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """LookupEvents for each (AttributeKey, AttributeValue), in every region side by side (the
        2 calls a second limit is per region); IAM and STS events are logged in us-east-1."""
        if not self.lookup or self.start is None or not attributes:
            return []
        limiter = _RateLimit(self.lookup_tps)
        regions = [r for r in dict.fromkeys([*self.regions, "us-east-1"]) if r not in self._dead_regions]
        mapper = self.fanout or (lambda fn, items: [fn(i) for i in items])
        out: list[dict[str, Any]] = []
        for found in mapper(lambda region: self._lookup_region(region, attributes, limiter), regions):
            out += found
        return out

    def _lookup_region(self, region: str, attributes: list[tuple[str, str]],
                       limiter: _RateLimit) -> list[dict[str, Any]]:
        ct = self.client("cloudtrail", region)
        out: list[dict[str, Any]] = []
        answered = False
        for key, value in attributes:
            token: str | None = None
            try:
                while True:
                    limiter.wait(region)
                    kwargs: dict[str, Any] = {"StartTime": self.start,
                                              "LookupAttributes": [{"AttributeKey": key, "AttributeValue": value}]}
                    if token:
                        kwargs["NextToken"] = token
                    page = ct.lookup_events(**kwargs)
                    answered = True
                    for e in page.get("Events", []):
                        raw = e.get("CloudTrailEvent")
                        try:
                            rec = json.loads(raw) if isinstance(raw, str) else None
                        except ValueError:
                            continue
                        if isinstance(rec, dict) and isinstance(rec.get("eventName"), str):
                            out.append(rec)
                    token = page.get("NextToken")
                    if not token:
                        break
            except ClientError as exc:
                self.gaps.append(f"CloudTrail LookupEvents {region} {key}={value}: {summarise(exc)}")
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code in _UNAVAILABLE or code.startswith("5") or "NotImplemented" in code:
                    self._dead_regions.add(region)
                    break
            except (BotoCoreError, NotImplementedError) as exc:
                self.gaps.append(f"CloudTrail LookupEvents {region}: {summarise(exc)}")
                self._dead_regions.add(region)
                break
        if answered:
            self.sources.append(f"CloudTrail LookupEvents {region} ({len(out)} events)")
        return out


def gather(reader: TrailReader, seeds: Seeds, file_records: list[dict[str, Any]],
           file_sources: list[str]) -> Attribution:
    """The attribution closure over every source; LookupEvents asked again for each newly found key."""
    records = list(file_records) + reader.s3_records()
    reader.sources[:0] = file_sources or (["CloudTrail records given to the run"] if file_records else [])
    queried: set[tuple[str, str]] = set()
    graph = attribute(records, seeds)
    for _ in range(MAX_ROUNDS):
        wanted = {("AccessKeyId", k) for k in (*seeds.keys, *graph.keys)}
        wanted |= {("Username", u) for u in (*seeds.users, *graph.users)}
        if seeds.root:
            wanted.add(("Username", "root"))
        new = sorted(wanted - queried)
        if not new:
            break
        queried |= set(new)
        records += reader.lookup_records(new)
        graph = attribute(records, seeds)
    return attribute(records, seeds, sources=list(dict.fromkeys(reader.sources)), gaps=reader.gaps)
