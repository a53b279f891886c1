"""CloudTrail attribution for discovery: ECS work created by the attacker's identities, from
trail files in S3 (config [intake] cloudtrail_s3_uri) or from CloudTrail LookupEvents. Either
source may be unavailable; that is recorded as a note, never a failure."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from actions.base import ActionContext
from actions.common import paginate
from runner.detect import actor_of

ECS_CREATES = ("CreateService", "RunTask", "CreateCluster", "RegisterTaskDefinition")


def _s3_records(ctx: ActionContext, start: datetime | None, notes: list[str]) -> list[dict[str, Any]]:
    uri = ctx.config.intake.cloudtrail_s3_uri
    if not uri:
        return []
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    s3 = ctx.aws.client("s3")
    out: list[dict[str, Any]] = []
    try:
        for obj in paginate(s3, "list_objects_v2", "Contents", Bucket=bucket, Prefix=prefix):
            # a file last written before the window holds no event from it (5 minutes of slack for clocks)
            if start is not None and obj.get("LastModified") and obj["LastModified"] < start - timedelta(minutes=5):
                continue
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            try:
                doc = json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)
            except (OSError, ValueError):
                notes.append(f"CloudTrail object s3://{bucket}/{obj['Key']} is not a trail file; skipped")
                continue
            recs = doc.get("Records") if isinstance(doc, dict) else None
            out += [r for r in recs or [] if isinstance(r, dict)]
    except ClientError as exc:
        notes.append(f"CloudTrail trail files at {uri} unavailable: {exc.response.get('Error', {}).get('Code')}")
    return out


def _lookup_records(ctx: ActionContext, users: list[str], start: datetime | None,
                    notes: list[str]) -> list[dict[str, Any]]:
    if not users or start is None:
        return []
    ct = ctx.aws.client("cloudtrail", ctx.incident.region)
    out: list[dict[str, Any]] = []
    for user in users:
        try:
            for e in paginate(ct, "lookup_events", "Events", StartTime=start,
                              LookupAttributes=[{"AttributeKey": "Username", "AttributeValue": user}]):
                raw = e.get("CloudTrailEvent")
                if isinstance(raw, str):
                    try:
                        out.append(json.loads(raw))
                    except ValueError:
                        continue
        # LookupEvents may be denied or missing (e.g. an emulator): attribution falls back to the other sources
        except (ClientError, BotoCoreError, NotImplementedError) as exc:
            notes.append(f"CloudTrail LookupEvents unavailable ({type(exc).__name__}); attribution used the "
                         "incident, trail files and ECS metadata only")
            break
    return out


def attributed_ecs(ctx: ActionContext, users: list[str], roles: list[str]) -> tuple[
        dict[tuple[str, str], str], list[str]]:
    """(cluster, service) -> reason, for ECS services the attacker's identities created; and notes."""
    start = ctx.incident.window_start_dt
    notes: list[str] = []
    records = _s3_records(ctx, start, notes) + _lookup_records(ctx, users, start, notes)
    root_in_incident = any(p.type == "root" for p in ctx.incident.principals)
    found: dict[tuple[str, str], str] = {}
    seen: set[str] = set()
    for r in records:
        event_id = str(r.get("eventID", ""))
        if event_id and event_id in seen:
            continue
        seen.add(event_id)
        if r.get("eventName") not in ECS_CREATES or r.get("errorCode"):
            continue
        kind, name = actor_of(r)
        if not ((kind == "user" and name in users) or (kind == "role" and name in roles)
                or (kind == "root" and root_in_incident)):
            continue
        when = r.get("eventTime")
        if start is not None and isinstance(when, str):
            try:
                if datetime.fromisoformat(when.replace("Z", "+00:00")) < start.replace(microsecond=0):
                    continue
            except ValueError:
                continue
        raw_req = r.get("requestParameters")
        req: dict[str, Any] = raw_req if isinstance(raw_req, dict) else {}
        if r.get("eventName") == "CreateService" and req.get("serviceName"):
            cluster = str(req.get("cluster") or "default").rsplit("/", 1)[-1]
            who = f"{kind} {name}".strip()
            found[(cluster, str(req["serviceName"]))] = (f"created by in-scope {who} according to CloudTrail "
                                                         f"({r.get('eventName')} {event_id or when})")
    return found, notes
