"""The attribution graph: from the incident's compromised credentials to everything they did.

Start from the seeds (root, access key ids, principals named in the incident). A CloudTrail
record belongs to the attacker when it was made with a compromised key, by a compromised
identity, or in a session the attacker obtained. Its effects extend the compromised set:
identities it created, keys and login profiles it made, sessions it obtained (`AssumeRole` into
any role, including ones that existed before; `GetSessionToken`; `GetFederationToken`). The
closure is transitive and every edge carries the event that proves it.

Pure: no AWS calls. `runner.attribution.sources` reads the records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from runner.attribution.records import (
    SECRET_READS,
    SESSION_CALLS,
    actor_label,
    actor_of,
    event_time,
    failed,
    identity,
    is_read,
    kept,
    params,
    service_of,
)

#: calls that start attacker compute
COMPUTE_EVENTS = frozenset({"CreateCluster", "RegisterTaskDefinition", "CreateService", "RunTask", "StartTask",
                            "RunInstances", "RequestSpotInstances", "RequestSpotFleet", "CreateFleet",
                            "CreateAutoScalingGroup", "CreateLaunchTemplate", "CreateFunction20150331",
                            "CreateFunction", "CreateComputeEnvironment", "CreateNodegroup",
                            "CreateNotebookInstance", "CreateTrainingJob"})
_POLICY_TARGET = {"User": ("user", "userName"), "Group": ("group", "groupName"), "Role": ("role", "roleName")}


@dataclass(frozen=True)
class Seeds:
    """What the incident says is compromised."""

    account_id: str
    root: bool = False
    keys: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    window_start: datetime | None = None


@dataclass(frozen=True)
class Edge:
    """One attributed fact: `actor` did `event` to `target`, proven by a CloudTrail event."""

    kind: str  # created | changed | attached | inline-policy | added-to-group | trust-policy | assumed-role |
    #            session | mfa | compute | write | exposed | read
    target_kind: str  # user | group | role | access_key | login_profile | identity_provider | session | ...
    target: str
    actor: str
    event: str
    time: str
    event_id: str | None = None
    region: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    detail: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def proof(self) -> str:
        """Short citation for reasons: `iam:CreateUser e-1 at 2026-...Z from 203.0.113.5`."""
        where = f" from {self.source_ip}" if self.source_ip else ""
        return f"{self.event} {self.event_id or '(no event id)'} at {self.time}{where}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "target_kind": self.target_kind, "target": self.target, "actor": self.actor,
                "event": self.event, "time": self.time, "event_id": self.event_id, "region": self.region,
                "source_ip": self.source_ip, "user_agent": self.user_agent, "detail": self.detail}


@dataclass
class Attribution:
    """The closure: what the attacker holds, created and changed; who else created what."""

    seeds: Seeds
    users: dict[str, Edge] = field(default_factory=dict)
    groups: dict[str, Edge] = field(default_factory=dict)
    roles: dict[str, Edge] = field(default_factory=dict)
    keys: dict[str, Edge] = field(default_factory=dict)
    sessions: dict[str, Edge] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: (kind, name) -> the creation, by anyone (the attacker or not)
    creators: dict[tuple[str, str], Edge] = field(default_factory=dict)
    #: role name -> every trust policy CloudTrail shows it given (time, event id, document), anyone's
    trust_history: dict[str, list[tuple[str, str, Any]]] = field(default_factory=dict)
    records: int = 0
    sources: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)

    # -- questions discovery asks
    @property
    def available(self) -> bool:
        """Some CloudTrail source was read (a trail file, an S3 prefix or LookupEvents)."""
        return bool(self.sources)

    def owns_user(self, name: str) -> bool:
        return name in self.seeds.users or name in self.users

    def owns_role(self, name: str) -> bool:
        return name in self.seeds.roles or name in self.roles

    def owns_group(self, name: str) -> bool:
        return name in self.seeds.groups or name in self.groups

    def created_by_other(self, kind: str, name: str) -> Edge | None:
        """The creation of `kind name` by someone who is not the attacker, if CloudTrail shows it."""
        edge = self.creators.get((kind, name))
        attacker = {"user": self.users, "group": self.groups, "role": self.roles, "access_key": self.keys}
        if edge is None or name in attacker.get(kind, {}):
            return None
        return edge

    def trust_before(self, role: str, edge: Edge) -> Any:
        """The role's trust policy as someone other than the attacker last set it before `edge`, if the
        records show it (a CreateRole or an UpdateAssumeRolePolicy); else None."""
        attacker_events = {e.event_id for e in self.edges if e.event_id}
        earlier = [doc for when, event_id, doc in self.trust_history.get(role, [])
                   if when < edge.time and event_id not in attacker_events and doc is not None]
        return earlier[-1] if earlier else None

    def on(self, kind: str, name: str) -> list[Edge]:
        """Every attributed change made to the identity `kind name`."""
        return [e for e in self.edges if e.target_kind == kind and e.target == name]

    def made_by(self, r: dict[str, Any]) -> bool:
        """True when the record was made with the attacker's credentials (as far as the closure knows)."""
        ui = identity(r)
        key = str(ui.get("accessKeyId") or "")
        if key and (key in self.seeds.keys or key in self.keys):
            return True
        kind, name = actor_of(r)
        arn = str(ui.get("arn") or "")
        if kind == "root":
            return self.seeds.root
        if kind == "user":
            return self.owns_user(name)
        if kind == "role":
            return self.owns_role(name) or arn in self.sessions
        if kind == "federated":
            context = ui.get("sessionContext")
            issuer = context.get("sessionIssuer") if isinstance(context, dict) else None
            issuer_user = str(issuer.get("userName") or "") if isinstance(issuer, dict) else ""
            return arn in self.sessions or self.owns_user(issuer_user)
        return False

    def to_json(self) -> dict[str, Any]:
        return {
            "available": self.available, "sources": self.sources, "gaps": self.gaps, "records": self.records,
            "attacker_events": len(self.events),
            "edges": [e.to_json() for e in self.edges],
        }


class _Closure:
    def __init__(self, seeds: Seeds) -> None:
        self.out = Attribution(seeds)

    def edge(self, r: dict[str, Any], kind: str, target_kind: str, target: str, **detail: Any) -> Edge:
        ip, ua = r.get("sourceIPAddress"), r.get("userAgent")
        return Edge(kind=kind, target_kind=target_kind, target=target, actor=actor_label(r),
                    event=f"{service_of(r)}:{r.get('eventName')}", time=str(r.get("eventTime")),
                    event_id=str(r["eventID"]) if isinstance(r.get("eventID"), str) else None,
                    region=r.get("awsRegion") if isinstance(r.get("awsRegion"), str) else None,
                    source_ip=ip if isinstance(ip, str) else None, user_agent=ua if isinstance(ua, str) else None,
                    detail={k: v for k, v in detail.items() if v not in (None, "", [])})

    # -- who created what (anyone): lets discovery leave a CI pipeline's user alone, with why
    def note_creation(self, r: dict[str, Any]) -> None:
        name, req = str(r.get("eventName")), params(r)
        target: tuple[str, str] | None = None
        if name == "CreateUser" and req.get("userName"):
            target = ("user", str(req["userName"]))
        elif name == "CreateGroup" and req.get("groupName"):
            target = ("group", str(req["groupName"]))
        elif name == "CreateRole" and req.get("roleName"):
            target = ("role", str(req["roleName"]))
        elif name == "CreateAccessKey":
            key = _created_key(r)
            target = ("access_key", key) if key else None
        if target is not None:
            self.out.creators.setdefault(target, self.edge(r, "created", *target))

    # -- what an attacker record adds
    def follow(self, r: dict[str, Any]) -> bool:
        """Record the record's effects; True when the compromised set grew."""
        name = str(r.get("eventName"))
        req = params(r)
        resp = params(r, "responseElements")
        out = self.out
        grew = False
        edge: Edge | None = None
        if name == "CreateUser" and req.get("userName"):
            user = str(req["userName"])
            edge = self.edge(r, "created", "user", user)
            grew = not out.owns_user(user)
            out.users.setdefault(user, edge)
        elif name == "CreateGroup" and req.get("groupName"):
            edge = self.edge(r, "created", "group", str(req["groupName"]))
            out.groups.setdefault(str(req["groupName"]), edge)
        elif name == "CreateRole" and req.get("roleName"):
            role = str(req["roleName"])
            edge = self.edge(r, "created", "role", role, trust=_doc(req.get("assumeRolePolicyDocument")))
            grew = not out.owns_role(role)
            out.roles.setdefault(role, edge)
        elif name == "CreateAccessKey":
            key = _created_key(r)
            kind, actor = actor_of(r)
            owner = str(req.get("userName") or (actor if kind == "user" else ""))
            edge = self.edge(r, "created", "access_key", key or "?", user=owner or "root")
            if key:
                grew = key not in out.keys
                out.keys.setdefault(key, edge)
        elif name in ("CreateLoginProfile", "UpdateLoginProfile"):
            kind, actor = actor_of(r)
            user = str(req.get("userName") or (actor if kind == "user" else ""))
            edge = self.edge(r, "created" if name.startswith("Create") else "changed", "login_profile", user)
        elif name.startswith(("Attach", "Detach")) and name.endswith("Policy") and name[6:-6] in _POLICY_TARGET:
            tkind, key = _POLICY_TARGET[name[6:-6]]
            edge = self.edge(r, "attached" if name.startswith("Attach") else "detached", tkind,
                             str(req.get(key) or ""), policy_arn=req.get("policyArn"))
        elif name.startswith(("Put", "Delete")) and name.endswith("Policy") and \
                name.removeprefix("Put").removeprefix("Delete")[:-6] in _POLICY_TARGET:
            tkind, key = _POLICY_TARGET[name.removeprefix("Put").removeprefix("Delete")[:-6]]
            edge = self.edge(r, "inline-policy" if name.startswith("Put") else "deleted-inline-policy", tkind,
                             str(req.get(key) or ""), policy_name=req.get("policyName"),
                             document=_doc(req.get("policyDocument")))
        elif name == "AddUserToGroup":
            edge = self.edge(r, "added-to-group", "user", str(req.get("userName") or ""), group=req.get("groupName"))
        elif name == "UpdateAssumeRolePolicy":
            edge = self.edge(r, "trust-policy", "role", str(req.get("roleName") or ""),
                             document=_doc(req.get("policyDocument")))
        elif name in ("CreateOpenIDConnectProvider", "CreateSAMLProvider"):
            arn = resp.get("openIDConnectProviderArn") or resp.get("sAMLProviderArn") or req.get("url") \
                or req.get("name")
            edge = self.edge(r, "created", "identity_provider", str(arn or "?"))
        elif name in ("CreateVirtualMFADevice", "EnableMFADevice"):
            kind, actor = actor_of(r)
            edge = self.edge(r, "mfa", "user", str(req.get("userName") or actor),
                             serial=req.get("serialNumber") or _get(resp, "virtualMFADevice", "serialNumber"))
        elif name in SESSION_CALLS:
            raw_creds = resp.get("credentials")
            creds: dict[str, Any] = raw_creds if isinstance(raw_creds, dict) else {}
            key = str(creds.get("accessKeyId") or "")
            session = str(_get(resp, "assumedRoleUser", "arn") or _get(resp, "federatedUser", "arn") or "")
            if name.startswith("AssumeRole"):
                role_arn = str(req.get("roleArn") or "")
                edge = self.edge(r, "assumed-role", "role", role_arn.rsplit("/", 1)[-1], role_arn=role_arn,
                                 session_arn=session, access_key_id=key, expiration=creds.get("expiration"))
            else:
                edge = self.edge(r, "session", "session", session or key, access_key_id=key,
                                 issued_to=actor_label(r), expiration=creds.get("expiration"))
            if key:
                grew = grew or key not in out.keys
                out.keys.setdefault(key, edge)
            if session:
                grew = grew or session not in out.sessions
                out.sessions.setdefault(session, edge)
        elif name in COMPUTE_EVENTS:
            edge = self.edge(r, "compute", service_of(r), _compute_target(r), **_compute_detail(r))
        elif name in SECRET_READS:
            edge = self.edge(r, "exposed", service_of(r), _secret_target(r))
        elif not is_read(name):
            edge = self.edge(r, "write", service_of(r), name)
        else:  # reconnaissance (GetCallerIdentity with a root key is the classic first call): evidence only
            edge = self.edge(r, "read", service_of(r), name)
        if edge is not None:
            out.edges.append(edge)
        if not is_read(name):
            out.events.append(kept(r))
        return grew


def attribute(records: list[dict[str, Any]], seeds: Seeds, *, sources: list[str] | None = None,
              gaps: list[str] | None = None) -> Attribution:
    """The attribution closure of `seeds` over `records` (any order, duplicates allowed)."""
    closure = _Closure(seeds)
    out = closure.out
    out.sources, out.gaps = list(sources or []), list(gaps or [])
    seen: set[tuple[str, str, str]] = set()
    timed: list[tuple[datetime, dict[str, Any]]] = []
    for r in records:
        when = event_time(r)
        if when is None:
            continue
        event_id = r.get("eventID")
        if isinstance(event_id, str):  # the same event from a trail file and LookupEvents counts once
            key = (event_id, str(r.get("eventName")), str(r.get("eventTime")))
            if key in seen:
                continue
            seen.add(key)
        timed.append((when, r))
    timed.sort(key=lambda pair: (pair[0], str(pair[1].get("eventID") or "")))  # same second: a stable order
    out.records = len(timed)
    start = seeds.window_start - timedelta(seconds=1) if seeds.window_start else None
    in_window = [r for when, r in timed if start is None or when >= start]
    for _, r in timed:  # the trust policies a role had, from before the window too
        req = params(r)
        if not failed(r) and r.get("eventName") in ("CreateRole", "UpdateAssumeRolePolicy") and req.get("roleName"):
            doc = req.get("assumeRolePolicyDocument") or req.get("policyDocument")
            out.trust_history.setdefault(str(req["roleName"]), []).append(
                (str(r.get("eventTime")), str(r.get("eventID") or ""), _doc(doc)))
    for r in in_window:
        if not failed(r):
            closure.note_creation(r)
    done: set[int] = set()
    grew = True
    while grew:  # records are in time order, so one pass almost always suffices
        grew = False
        for i, r in enumerate(in_window):
            if i in done or failed(r) or not out.made_by(r):
                continue
            done.add(i)
            grew = closure.follow(r) or grew
    # attempts that failed changed nothing, but they are the attacker's too (listed as "no action needed")
    out.events += [kept(r) for r in in_window if failed(r) and not is_read(str(r.get("eventName")))
                   and r.get("eventName") != "ConsoleLogin" and out.made_by(r)]
    # a second pass may have added records out of time order
    order = {id(r): i for i, r in enumerate(in_window)}
    out.edges.sort(key=lambda e: (e.time, e.event_id or ""))
    out.events.sort(key=lambda r: (str(r.get("eventTime")), order.get(id(r), 0)))
    return out


def _created_key(r: dict[str, Any]) -> str:
    resp = params(r, "responseElements")
    key = _get(resp, "accessKey", "accessKeyId")
    return str(key) if isinstance(key, str) else ""


def _get(doc: dict[str, Any], *path: str) -> Any:
    cur: Any = doc
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


def _doc(value: Any) -> Any:
    """A policy document from a record: CloudTrail stores it URL-decoded JSON text, sometimes parsed."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _compute_target(r: dict[str, Any]) -> str:
    req, resp = params(r), params(r, "responseElements")
    name = str(r.get("eventName"))
    if name == "CreateService":
        return f"{str(req.get('cluster') or 'default').rsplit('/', 1)[-1]}/{req.get('serviceName')}"
    if name == "RunInstances":
        items = _get(resp, "instancesSet", "items")
        ids = [str(i.get("instanceId")) for i in items or [] if isinstance(i, dict)]
        return ",".join(ids) or "instances"
    for key in ("clusterName", "family", "functionName", "autoScalingGroupName", "computeEnvironmentName",
                "nodegroupName", "notebookInstanceName", "trainingJobName", "launchTemplateName"):
        if req.get(key):
            return str(req[key])
    return name


def _compute_detail(r: dict[str, Any]) -> dict[str, Any]:
    req, resp = params(r), params(r, "responseElements")
    name = str(r.get("eventName"))
    if name == "CreateService":
        return {"cluster": str(req.get("cluster") or "default").rsplit("/", 1)[-1], "service": req.get("serviceName"),
                "task_definition": req.get("taskDefinition"), "desired_count": req.get("desiredCount")}
    if name == "RegisterTaskDefinition":
        defs = req.get("containerDefinitions")
        images = [str(c.get("image")) for c in defs or [] if isinstance(c, dict) and c.get("image")]
        return {"family": req.get("family"), "images": images}
    if name == "RunInstances":
        items = _get(resp, "instancesSet", "items")
        return {"instance_ids": [str(i.get("instanceId")) for i in items or [] if isinstance(i, dict)],
                "instance_type": req.get("instanceType")}
    if name in ("RunTask", "StartTask"):
        tasks = resp.get("tasks")
        return {"cluster": str(req.get("cluster") or "default").rsplit("/", 1)[-1],
                "task_definition": req.get("taskDefinition"),
                "task_arns": [str(t.get("taskArn")) for t in tasks or [] if isinstance(t, dict)]}
    return {}


def _secret_target(r: dict[str, Any]) -> str:
    req = params(r)
    for key in ("secretId", "name", "names", "path", "instanceId"):
        if req.get(key):
            return str(req[key])
    return str(r.get("eventName"))
