"""`stanch detect`: find the reference chain in CloudTrail records.

Root credential use, then IAM identities created or escalated by the attacker's identities
(CreateUser, CreateGroup, Attach*Policy with admin rights, AddUserToGroup, CreateAccessKey,
CreateLoginProfile, CreateRole), then ECS clusters, task definitions and services those
identities created within the window. Activity by other principals is left out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from runner.config import Config
from runner.errors import InputError, Problem
from runner.incident import Incident, parse_time, validate_incident

ADMIN_HINTS = ("AdministratorAccess", "IAMFullAccess", "PowerUserAccess")
COMPUTE_EVENTS = ("CreateCluster", "RegisterTaskDefinition", "CreateService", "RunTask", "RunInstances")


def records_of(label: str, doc: Any) -> list[dict[str, Any]]:
    """The CloudTrail records in a trail file, an EventBridge event, or a single record."""
    if isinstance(doc, dict) and isinstance(doc.get("Records"), list):
        recs = doc["Records"]
    elif isinstance(doc, dict) and doc.get("detail-type") == "AWS API Call via CloudTrail":
        recs = [doc.get("detail")]
    else:
        recs = [doc]
    out = []
    for i, r in enumerate(recs):
        if not isinstance(r, dict):
            raise InputError(label, [Problem(f"Records[{i}]", "a CloudTrail record must be a JSON object")])
        if not isinstance(r.get("eventName"), str):
            raise InputError(label, [Problem(f"Records[{i}].eventName", "required field is missing")])
        out.append(r)
    return out


def _time(r: dict[str, Any]) -> datetime | None:
    t = r.get("eventTime")
    if not isinstance(t, str):
        return None
    try:
        return parse_time(t)
    except ValueError:
        return None


def _params(r: dict[str, Any], key: str = "requestParameters") -> dict[str, Any]:
    v = r.get(key)
    return v if isinstance(v, dict) else {}


def actor_of(r: dict[str, Any]) -> tuple[str, str]:
    """(kind, name) of who made a CloudTrail call: ("root", account), ("user", name), ("role", name)."""
    ui = r.get("userIdentity")
    if not isinstance(ui, dict):
        return "unknown", ""
    utype = str(ui.get("type", ""))
    if utype == "Root":
        return "root", str(ui.get("accountId") or r.get("recipientAccountId") or "")
    if utype == "IAMUser":
        return "user", str(ui.get("userName") or str(ui.get("arn", "")).rsplit("/", 1)[-1])
    if utype == "AssumedRole":
        context = ui.get("sessionContext")
        issuer = context.get("sessionIssuer") if isinstance(context, dict) else None
        name = issuer.get("userName") if isinstance(issuer, dict) else None
        return "role", str(name or str(ui.get("arn", "")).split("/")[-2:][0])
    return utype.lower() or "unknown", str(ui.get("arn") or ui.get("principalId") or "")


def _failed(r: dict[str, Any]) -> bool:
    if r.get("errorCode"):
        return True
    resp = r.get("responseElements")
    return isinstance(resp, dict) and resp.get("ConsoleLogin") == "Failure"


def _evidence(r: dict[str, Any], actor: tuple[str, str], detail: str) -> dict[str, Any]:
    return {
        "time": r["eventTime"], "event": f"{str(r.get('eventSource', '')).split('.')[0]}:{r.get('eventName')}",
        "actor": f"{actor[0]}:{actor[1]}", "source": "cloudtrail",
        "event_id": r.get("eventID") if isinstance(r.get("eventID"), str) else None,
        "source_ip": r.get("sourceIPAddress") if isinstance(r.get("sourceIPAddress"), str) else None,
        "detail": detail[:2000],
    }


@dataclass
class Chain:
    records: int
    incident: Incident | None
    evidence: list[dict[str, Any]] = field(default_factory=list)
    ignored: int = 0


def detect_chain(records: list[dict[str, Any]], config: Config, label: str = "cloudtrail") -> Chain:
    stamped = [(t, r) for r in records if (t := _time(r)) is not None]
    timed = [r for _, r in sorted(stamped, key=lambda pair: pair[0])]
    root_events = [r for r in timed if actor_of(r)[0] == "root" and not _failed(r)]
    if not root_events:
        return Chain(len(records), None)
    start = _time(root_events[0])
    assert start is not None
    end = start + timedelta(hours=config.intake.window_hours)
    account = str(root_events[0].get("recipientAccountId") or actor_of(root_events[0])[1])
    root_keys = [str(r["userIdentity"]["accessKeyId"]) for r in root_events
                 if isinstance(r.get("userIdentity"), dict) and str(r["userIdentity"].get("accessKeyId", ""))[:4] in
                 ("AKIA", "ASIA")]
    attackers: set[tuple[str, str]] = {("root", actor_of(root_events[0])[1])}
    users: list[str] = []
    groups: list[str] = []
    roles: list[str] = []
    keys: list[str] = []
    clusters: list[str] = []
    services: list[tuple[str, str]] = []
    images: list[str] = []
    policies: list[str] = []
    regions: list[str] = []
    evidence: list[dict[str, Any]] = []
    ignored = 0

    def add(seq: list[Any], item: Any) -> None:
        if item and item not in seq:
            seq.append(item)

    for r in timed:
        t = _time(r)
        assert t is not None
        actor = actor_of(r)
        if t > end or actor not in attackers:
            ignored += 1
            continue
        name = str(r.get("eventName"))
        if _failed(r):  # an attempt: evidence of intent, but it changed nothing to contain
            if name == "ConsoleLogin":
                ignored += 1
            else:
                evidence.append(_evidence(r, actor, f"{name} attempted, failed: {r.get('errorCode')}"))
            continue
        req, resp = _params(r), _params(r, "responseElements")
        detail = ""
        if name == "CreateUser" and req.get("userName"):
            add(users, str(req["userName"]))
            attackers.add(("user", str(req["userName"])))
            detail = f"created user {req['userName']}"
        elif name == "CreateGroup" and req.get("groupName"):
            add(groups, str(req["groupName"]))
            detail = f"created group {req['groupName']}"
        elif name == "CreateRole" and req.get("roleName"):
            add(roles, str(req["roleName"]))
            attackers.add(("role", str(req["roleName"])))
            detail = f"created role {req['roleName']}"
        elif name == "AddUserToGroup":
            add(groups, str(req.get("groupName") or ""))
            add(users, str(req.get("userName") or ""))
            detail = f"added {req.get('userName')} to group {req.get('groupName')}"
        elif name in ("AttachGroupPolicy", "AttachUserPolicy", "AttachRolePolicy", "PutUserPolicy",
                      "PutGroupPolicy", "PutRolePolicy"):
            pol = str(req.get("policyArn") or req.get("policyName") or "")
            add(policies, pol if pol.startswith("arn:") and any(h in pol for h in ADMIN_HINTS) else "")
            target = req.get("groupName") or req.get("userName") or req.get("roleName")
            detail = f"{name} {pol} on {target}"
        elif name == "CreateAccessKey":
            key = resp.get("accessKey", {}).get("accessKeyId") if isinstance(resp.get("accessKey"), dict) else None
            owner = req.get("userName")
            if owner:
                add(users, str(owner))
                attackers.add(("user", str(owner)))
            if isinstance(key, str) and key.startswith("AKIA"):
                if owner or actor[0] != "root":
                    add(keys, key)
                else:
                    root_keys.insert(0, key)  # the attacker minted a root key for itself: revoke it too
            detail = f"created access key {key or '?'} for {owner or 'the caller (root)'}"
        elif name == "CreateLoginProfile":
            add(users, str(req.get("userName") or ""))
            detail = f"console password for {req.get('userName')}"
        elif name == "CreateCluster":
            add(clusters, str(req.get("clusterName") or "default"))
            detail = f"created ECS cluster {req.get('clusterName')}"
        elif name == "RegisterTaskDefinition":
            raw_defs = req.get("containerDefinitions")
            defs: list[Any] = raw_defs if isinstance(raw_defs, list) else []
            for c in defs:
                if isinstance(c, dict) and isinstance(c.get("image"), str):
                    add(images, c["image"])
            detail = f"task definition {req.get('family')} with image(s) " + \
                ", ".join(str(c.get("image")) for c in defs if isinstance(c, dict))
        elif name == "CreateService":
            cluster = str(req.get("cluster") or "default").rsplit("/", 1)[-1]
            svc = str(req.get("serviceName") or "")
            if svc:
                add(services, (cluster, svc))
                add(clusters, cluster)
            detail = f"created service {cluster}/{svc} (desiredCount {req.get('desiredCount')})"
        elif actor[0] != "root" and name not in COMPUTE_EVENTS:
            continue  # routine calls by the attacker's users add nothing to scope
        if isinstance(r.get("awsRegion"), str) and (name in COMPUTE_EVENTS or not regions):
            add(regions, r["awsRegion"])
        evidence.append(_evidence(r, actor, detail or f"{name} by {actor[0]}"))
    compute = bool(clusters or services or images)
    principals: list[dict[str, Any]] = [{"type": "root", **({"access_key_id": root_keys[0]} if root_keys else {})}]
    principals += [{"type": "user", "name": u} for u in users]
    principals += [{"type": "group", "name": g} for g in groups]
    principals += [{"type": "role", "name": r} for r in roles]
    principals += [{"type": "access_key", "id": k} for k in keys]
    resources: list[dict[str, Any]] = [{"type": "ecs_cluster", "name": c} for c in clusters]
    resources += [{"type": "ecs_service", "cluster": c, "name": s} for c, s in services]
    last = evidence[-1]["time"] if evidence else root_events[-1]["eventTime"]
    digest = hashlib.sha256(json.dumps([e.get("event_id") or e["time"] for e in evidence]).encode()).hexdigest()[:12]
    doc = {
        "id": f"CT-{digest}", "kind": "cryptojacking" if compute else "credential-compromise",
        "account_id": account, "region": regions[0] if regions else "us-east-1",
        "detected_at": last, "window_start": root_events[0]["eventTime"], "severity": "critical",
        "summary": (f"Root credentials used; {len(users)} user(s), {len(groups)} group(s) created or changed"
                    + (f"; {len(services)} ECS service(s) created" if services else "")),
        "principals": principals, "resources": resources,
        "indicators": {k: v for k, v in {"images": images, "policy_arns": policies}.items() if v},
        "source": {"format": "cloudtrail", "types": ["CloudTrail:RootCredentialChain"]},
        "evidence": evidence,
    }
    return Chain(len(records), validate_incident(label, doc), evidence, ignored)
