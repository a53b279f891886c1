"""`stanch detect`: find a root-credential attack chain in CloudTrail records.

The first successful root call starts the window; the attribution graph
(`runner.attribution`) then follows everything the root credentials and whatever they created
or obtained did within `[intake] window_hours`: identities, keys, sessions on other roles,
policy changes, compute. Activity by other principals is left out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from runner.attribution.graph import Attribution, Edge, Seeds, attribute
from runner.attribution.records import actor_label, actor_of, event_time, failed, identity, service_of
from runner.config import Config
from runner.incident import Incident, validate_incident

ADMIN_HINTS = ("AdministratorAccess", "IAMFullAccess", "PowerUserAccess")


def describe(edge: Edge) -> str:
    """One line a responder reads: what the attacker did to what."""
    d = edge.detail
    what = {
        "created": f"created {edge.target_kind.replace('_', ' ')} {edge.target}"
                   + (f" for {d['user']}" if d.get("user") else ""),
        "changed": f"changed {edge.target_kind.replace('_', ' ')} of {edge.target}",
        "attached": f"attached {d.get('policy_arn')} to {edge.target_kind} {edge.target}",
        "detached": f"detached {d.get('policy_arn')} from {edge.target_kind} {edge.target}",
        "inline-policy": f"put inline policy {d.get('policy_name')} on {edge.target_kind} {edge.target}",
        "deleted-inline-policy": f"deleted inline policy {d.get('policy_name')} of {edge.target_kind} {edge.target}",
        "added-to-group": f"added user {edge.target} to group {d.get('group')}",
        "trust-policy": f"changed the trust policy of role {edge.target}",
        "assumed-role": f"assumed role {edge.target} (session {d.get('session_arn') or '?'}, "
                        f"key {d.get('access_key_id') or '?'})",
        "session": f"obtained session credentials {d.get('access_key_id') or '?'}",
        "mfa": f"registered MFA device {d.get('serial') or '?'} for {edge.target}",
        "compute": f"{edge.event.split(':', 1)[1]} {edge.target}"
                   + (f" with image(s) {', '.join(d['images'])}" if d.get("images") else ""),
        "exposed": f"read secret {edge.target}",
        "write": f"{edge.event}",
        "read": f"{edge.event} (reconnaissance)",
    }
    return what.get(edge.kind, edge.event)


def evidence_item(edge: Edge) -> dict[str, Any]:
    return {"time": edge.time, "event": edge.event, "actor": edge.actor, "source": "cloudtrail",
            "event_id": edge.event_id, "source_ip": edge.source_ip, "detail": describe(edge)[:2000]}


@dataclass
class Chain:
    records: int
    incident: Incident | None
    evidence: list[dict[str, Any]] = field(default_factory=list)
    ignored: int = 0
    graph: Attribution | None = None


def seeds_of(incident: Incident) -> Seeds:
    """The compromised credentials an incident names."""
    keys = {p.access_key_id for p in incident.principals if p.type == "root" and p.access_key_id}
    keys |= {p.id for p in incident.principals if p.type == "access_key"}
    return Seeds(
        account_id=incident.account_id, root=any(p.type == "root" for p in incident.principals),
        keys=frozenset(keys), users=frozenset(p.name for p in incident.principals if p.type == "user"),
        groups=frozenset(p.name for p in incident.principals if p.type == "group"),
        roles=frozenset(p.name for p in incident.principals if p.type == "role"),
        window_start=incident.window_start_dt,
    )


def detect_chain(records: list[dict[str, Any]], config: Config, label: str = "cloudtrail") -> Chain:
    stamped = sorted(((t, r) for r in records if (t := event_time(r)) is not None), key=lambda p: p[0])
    root_events = [r for _, r in stamped if actor_of(r)[0] == "root" and not failed(r)]
    if not root_events:
        return Chain(len(records), None)
    start = event_time(root_events[0])
    assert start is not None
    end = start + timedelta(hours=config.intake.window_hours)
    account = str(root_events[0].get("recipientAccountId") or actor_of(root_events[0])[1])
    in_window = [r for t, r in stamped if t <= end]
    graph = attribute(in_window, Seeds(account_id=account, root=True, window_start=start))

    evidence = [evidence_item(e) for e in graph.edges]
    # failed attempts by the attacker changed nothing, but they are evidence of intent
    for r in in_window:
        t = event_time(r)
        if failed(r) and r.get("eventName") != "ConsoleLogin" and t is not None and t >= start and graph.made_by(r):
            evidence.append({"time": r["eventTime"], "event": f"{service_of(r)}:{r.get('eventName')}",
                             "actor": actor_label(r), "source": "cloudtrail",
                             "event_id": r.get("eventID") if isinstance(r.get("eventID"), str) else None,
                             "source_ip": r.get("sourceIPAddress") if isinstance(r.get("sourceIPAddress"), str)
                             else None,
                             "detail": f"{r.get('eventName')} attempted, failed: {r.get('errorCode')}"})
    evidence.sort(key=lambda e: str(e["time"]))
    attributed_ids = {e["event_id"] for e in evidence if e.get("event_id")}
    ignored = sum(1 for _, r in stamped if not (isinstance(r.get("eventID"), str) and r["eventID"] in attributed_ids))

    root_keys = [str(identity(r).get("accessKeyId")) for r in root_events
                 if str(identity(r).get("accessKeyId", ""))[:4] in ("AKIA", "ASIA")]
    keys: list[str] = []
    for key, edge in graph.keys.items():
        if edge.kind != "created" or not key.startswith("AKIA"):
            continue  # session keys expire; they are revoked through their issuer
        if edge.detail.get("user") == "root":
            root_keys.insert(0, key)  # the attacker minted a root key for itself: revoke it too
        else:
            keys.append(key)
    clusters: list[str] = []
    services: list[tuple[str, str]] = []
    images: list[str] = []
    regions: list[str] = []
    for e in graph.edges:
        if e.kind != "compute":
            continue
        if e.region and e.region not in regions:
            regions.append(e.region)
        if e.event == "ecs:CreateCluster" and e.target not in clusters:
            clusters.append(e.target)
        elif e.event == "ecs:CreateService" and e.detail.get("service"):
            pair = (str(e.detail["cluster"]), str(e.detail["service"]))
            if pair not in services:
                services.append(pair)
            if pair[0] not in clusters:
                clusters.append(pair[0])
        images += [i for i in e.detail.get("images", []) if i not in images]
    policies = list(dict.fromkeys(str(e.detail["policy_arn"]) for e in graph.edges
                                  if e.kind == "attached" and any(h in str(e.detail.get("policy_arn")) for h in
                                                                  ADMIN_HINTS)))
    if not regions:
        regions = [r for r in (root_events[0].get("awsRegion"),) if isinstance(r, str)]

    principals: list[dict[str, Any]] = [{"type": "root", **({"access_key_id": root_keys[0]} if root_keys else {})}]
    principals += [{"type": "user", "name": u} for u in graph.users]
    principals += [{"type": "group", "name": g} for g in graph.groups]
    principals += [{"type": "role", "name": r} for r in graph.roles]
    principals += [{"type": "access_key", "id": k} for k in keys]
    resources: list[dict[str, Any]] = [{"type": "ecs_cluster", "name": c} for c in clusters]
    resources += [{"type": "ecs_service", "cluster": c, "name": s} for c, s in services]
    compute = bool(clusters or services or images or any(e.kind == "compute" for e in graph.edges))
    last = evidence[-1]["time"] if evidence else root_events[-1]["eventTime"]
    digest = hashlib.sha256(json.dumps([e.get("event_id") or e["time"] for e in evidence]).encode()).hexdigest()[:12]
    assumed = sorted({e.target for e in graph.edges if e.kind == "assumed-role"})
    doc = {
        "id": f"CT-{digest}", "kind": "cryptojacking" if compute else "credential-compromise",
        "account_id": account, "region": regions[0] if regions else "us-east-1",
        "detected_at": last, "window_start": root_events[0]["eventTime"], "severity": "critical",
        "summary": (f"Root credentials used; {len(graph.users)} user(s), {len(graph.groups)} group(s), "
                    f"{len(graph.roles)} role(s) created"
                    + (f"; role(s) {', '.join(assumed)} assumed" if assumed else "")
                    + (f"; {len(services)} ECS service(s) created" if services else "")),
        "principals": principals, "resources": resources,
        "indicators": {k: v for k, v in {"images": images, "policy_arns": policies}.items() if v},
        "source": {"format": "cloudtrail", "types": ["CloudTrail:RootCredentialChain"]},
        "evidence": evidence[:5000],
    }
    return Chain(len(records), validate_incident(label, doc), evidence, ignored, graph)


