"""The facts the incident report states, each from recorded data only (no AWS calls):

- what the attacker did, in order, with MITRE ATT&CK technique ids and what each step means;
- where it came from (source IPs, user agents, locations) as far as the evidence records it;
- an estimate of what the mining cost, from the miner tasks' size and running time and the dated
  price table in the config (`[pricing]`);
- the account's hygiene facts, leaving out the attacker's own principals;
- hardening recommendations.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from runner.config import PricingSection

STALE_DAYS = 90


@dataclass(frozen=True)
class Technique:
    id: str
    name: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name}


VALID_CLOUD = Technique("T1078.004", "Valid Accounts: Cloud Accounts")
WHOAMI = Technique("T1033", "System Owner/User Discovery")
CREATE_ACCOUNT = Technique("T1136.003", "Create Account: Cloud Account")
EXTRA_CREDENTIALS = Technique("T1098.001", "Account Manipulation: Additional Cloud Credentials")
EXTRA_ROLES = Technique("T1098.003", "Account Manipulation: Additional Cloud Roles")
DEPLOY_CONTAINER = Technique("T1610", "Deploy Container")
CREATE_INSTANCE = Technique("T1578.002", "Modify Cloud Compute Infrastructure: Create Cloud Instance")
HIJACK = Technique("T1496.001", "Resource Hijacking: Compute Hijacking")
MASQUERADE = Technique("T1036.005", "Masquerading: Match Legitimate Name or Location")
IMPAIR_LOGS = Technique("T1562.008", "Impair Defenses: Disable or Modify Cloud Logs")
UNUSED_REGIONS = Technique("T1535", "Unused/Unsupported Cloud Regions")


@dataclass(frozen=True)
class Phase:
    """One kind of attacker step: the API calls that show it, and what it means for the customer."""

    key: str
    events: frozenset[str]
    what: str
    meaning: str
    techniques: tuple[Technique, ...]


PHASES = (
    Phase("root", frozenset({"GetCallerIdentity", "ConsoleLogin", "GetAccountSummary", "ListUsers"}),
          "Signed in with the leaked root access key and checked whose key it was",
          "The root user can do anything in the account and no IAM policy limits it; a root key in the wrong "
          "hands is a full account takeover.", (VALID_CLOUD, WHOAMI)),
    Phase("account", frozenset({"CreateUser", "CreateRole"}),
          "Created new IAM identities of their own",
          "A new identity survives the root key being revoked: a back door that looks like ordinary "
          "administration.", (CREATE_ACCOUNT,)),
    Phase("credentials", frozenset({"CreateAccessKey", "CreateLoginProfile", "UpdateLoginProfile",
                                    "EnableMFADevice", "CreateVirtualMFADevice"}),
          "Gave those identities access keys and passwords",
          "Additional credentials let the attacker come back from anywhere without the original key.",
          (EXTRA_CREDENTIALS,)),
    Phase("privilege", frozenset({"CreateGroup", "AttachGroupPolicy", "AttachUserPolicy", "AttachRolePolicy",
                                  "AddUserToGroup", "PutUserPolicy", "PutGroupPolicy", "PutRolePolicy"}),
          "Granted them full administrator rights",
          "With AdministratorAccess the new identity can read every secret and create any resource: persistence "
          "and privilege escalation in one step.", (EXTRA_ROLES,)),
    Phase("logging", frozenset({"StopLogging", "DeleteTrail", "UpdateTrail", "PutEventSelectors", "DeleteDetector",
                                "UpdateDetector", "DeleteFlowLogs"}),
          "Tampered with logging and detection",
          "Switching off CloudTrail or GuardDuty hides what happens next; everything after it must be read "
          "from other sources.", (IMPAIR_LOGS,)),
    Phase("compute", frozenset({"CreateCluster", "RegisterTaskDefinition", "CreateService", "RunTask",
                                "UpdateService", "RunInstances", "CreateAutoScalingGroup",
                                "PutScheduledUpdateGroupAction"}),
          "Deployed a cryptocurrency miner on your compute",
          "The miner turns your compute into the attacker's money; the cost lands on your bill, grows with every "
          "task and region, and AWS may throttle or suspend the account for abuse.", (DEPLOY_CONTAINER, HIJACK)),
)
PHASE_OF_EVENT = {name: phase for phase in PHASES for name in phase.events}


def _name(event: str) -> str:
    return event.rsplit(":", 1)[-1]


def attacker_steps(incident: dict[str, Any], scope: dict[str, Any], ecs_docs: list[dict[str, Any]],
                   activity: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The attack in order: one step per phase, from the recorded events, else from the scope."""
    events = [{"time": e.get("time"), "event": str(e.get("event") or e.get("eventName") or ""),
               "actor": str(e.get("actor") or ""), "detail": e.get("detail") or e.get("target") or ""}
              for e in [*incident.get("evidence", []), *activity]]
    found: dict[str, dict[str, Any]] = {}
    for e in sorted(events, key=lambda e: str(e["time"] or "")):
        phase = PHASE_OF_EVENT.get(_name(e["event"]))
        if phase is None:
            continue
        step = found.setdefault(phase.key, {"phase": phase, "time": e["time"], "calls": [], "regions": set()})
        call = _name(e["event"]) + (f" ({e['detail']})" if e["detail"] else "")
        if call not in step["calls"]:
            step["calls"].append(call)
    _from_scope(found, incident, scope)
    services = scope.get("ecs_services", [])
    regions = sorted({s.get("region") for s in services if s.get("region")})
    steps = []
    for phase in PHASES:
        if phase.key not in found:
            continue
        step = found[phase.key]
        techniques = list(phase.techniques)
        what = phase.what
        if phase.key == "compute":
            images = sorted({i for s in services for i in s.get("images", [])})
            names = [f"{s['cluster']}/{s['name']}" for s in services]
            if names:
                what += f": {', '.join(names)} running {', '.join(images) or 'an unrecognised image'}"
            if any(not _looks_like_miner(n) for n in names) and images:
                techniques.append(MASQUERADE)
            if len(regions) > 1:
                techniques.append(UNUSED_REGIONS)
                what += f" in {len(regions)} regions ({', '.join(regions)})"
        steps.append({"time": step["time"], "what": what, "meaning": phase.meaning,
                      "calls": step["calls"][:12], "techniques": [t.to_json() for t in techniques]})
    # in the order the attacker went; a step only the scope shows (no time) keeps its place in the chain
    return sorted(steps, key=lambda s: _ts(s["time"]) or datetime.max.replace(tzinfo=UTC))


def _looks_like_miner(name: str) -> bool:
    return any(word in name.lower() for word in ("xmr", "miner", "monero", "coin"))


def _from_scope(found: dict[str, dict[str, Any]], incident: dict[str, Any], scope: dict[str, Any]) -> None:
    """Steps the evidence has no event for, as far as the scope proves them (times from IAM and ECS)."""
    phases = {p.key: p for p in PHASES}

    def add(key: str, time: Any, call: str) -> None:
        step = found.setdefault(key, {"phase": phases[key], "time": time, "calls": [], "regions": set()})
        if call not in step["calls"]:
            step["calls"].append(call)

    root = scope.get("root") or {}
    root_used = root.get("access_key_id") or any(p.get("type") == "root" for p in incident.get("principals", []))
    if root_used and "root" not in found:
        add("root", incident.get("window_start"), f"root access key {root.get('access_key_id') or ''}".strip())
    for u in scope.get("users", []):
        if u.get("created_in_window"):
            add("account", u.get("created"), f"user {u['name']}")
            if (u.get("login_profile") or {}).get("present"):
                add("credentials", u.get("created"), f"console password for {u['name']}")
        if u.get("attached_policies"):
            add("privilege", u.get("created"), f"policies on {u['name']}")
    for k in scope.get("access_keys", []):
        add("credentials", k.get("created"), f"access key {k['id']} for {k.get('user')}")
    for g in scope.get("groups", []):
        add("privilege", g.get("created"), f"group {g['name']}")
    for s in scope.get("ecs_services", []):
        add("compute", s.get("created") or s.get("created_at"), f"ECS service {s['cluster']}/{s['name']}")
    for t in scope.get("ecs_tasks", []):
        add("compute", t.get("created") or t.get("started"), f"ECS task {t.get('label') or t.get('arn')}")


def attacker_origins(incident: dict[str, Any], lookup_events: list[dict[str, Any]],
                     activity: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Source IPs, user agents and locations the incident and its evidence record for the attacker."""
    ips: list[str] = [*(incident.get("indicators") or {}).get("source_ips", [])]
    agents: list[str] = []
    places: list[str] = []
    for e in incident.get("evidence", []):
        if e.get("source_ip"):
            ips.append(e["source_ip"])
    for e in lookup_events:
        record = e.get("CloudTrailEvent")
        if isinstance(record, dict):
            ips.append(str(record.get("sourceIPAddress") or ""))
            agents.append(str(record.get("userAgent") or ""))
    for e in activity:
        ips.append(str(e.get("source_ip") or e.get("sourceIPAddress") or ""))
        agents.append(str(e.get("user_agent") or e.get("userAgent") or ""))
        place = e.get("location") or ", ".join(str(e[k]) for k in ("city", "country") if e.get(k))
        places.append(str(place or ""))
    # calls AWS services make on the attacker's behalf carry a service name, not an address
    ips = [ip for ip in ips if ip and not ip.endswith(".amazonaws.com") and ip != "AWS Internal"]
    return {"source_ips": list(dict.fromkeys(ips)), "user_agents": list(dict.fromkeys(a for a in agents if a)),
            "locations": list(dict.fromkeys(p for p in places if p))}


# ------------------------------------------------------------------ cost

def _ts(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _size(task: dict[str, Any], defs: dict[str, dict[str, Any]]) -> tuple[float, float]:
    """vCPU and GB of a task: its own size, else its task definition's (ECS units: 1024 = 1 vCPU, MiB)."""
    td = defs.get(str(task.get("taskDefinitionArn")), {})
    cpu = task.get("cpu") or td.get("cpu")
    mem = task.get("memory") or td.get("memory")
    if not cpu:
        cpu = sum(int(c.get("cpu") or 0) for c in td.get("containerDefinitions", [])) or 256
    if not mem:
        mem = sum(int(c.get("memory") or 0) for c in td.get("containerDefinitions", [])) or 512
    return round(int(cpu) / 1024, 3), round(int(mem) / 1024, 3)


def mining_cost(ecs_docs: list[dict[str, Any]], scope: dict[str, Any], incident: dict[str, Any],
                stopped: dict[str, Any], scaled: dict[str, Any], prices: PricingSection,
                now: datetime) -> dict[str, Any]:
    """An estimate, with its inputs, of what the miner tasks in scope cost while they ran.

    A task ran from its start (else its service's creation, else the incident window's start) until it
    stopped (its stoppedAt, else the time stanch stopped it or scaled its service to 0, else now)."""
    services = {(s["cluster"], s["name"]): s for s in scope.get("ecs_services", [])}
    loose = {t.get("arn") for t in scope.get("ecs_tasks", [])}
    fallback_start = _ts(incident.get("window_start")) or _ts(incident.get("detected_at"))
    items: dict[tuple[str, float, float, str, str, str], dict[str, Any]] = {}
    for doc in ecs_docs:
        cluster = str((doc.get("cluster") or {}).get("clusterName") or "")
        defs = {str(td.get("taskDefinitionArn")): td for td in doc.get("task_definitions", [])}
        svc_docs = {s.get("serviceName"): s for s in doc.get("services", [])}
        for task in doc.get("tasks", []):
            group = str(task.get("group") or "")
            svc_name = group.removeprefix("service:") if group.startswith("service:") else None
            svc = services.get((cluster, svc_name)) if svc_name else None
            if svc is None and task.get("taskArn") not in loose:
                continue
            vcpu, gb = _size(task, defs)
            svc_doc = svc_docs.get(svc_name, {}) if svc_name else {}
            start = (_ts(task.get("startedAt")) or _ts(task.get("createdAt")) or _ts(svc_doc.get("createdAt"))
                     or fallback_start)
            end = (_ts(task.get("stoppedAt")) or _ts(stopped.get(task.get("taskArn")))
                   or (_ts(scaled.get(svc["arn"])) if svc else None))
            running = end is None
            end = end or now
            if start is None or end < start:
                continue
            fargate = (task.get("launchType") or "FARGATE") == "FARGATE"
            what = f"ECS {'service ' + cluster + '/' + svc_name if svc_name else 'task ' + cluster} " \
                   f"({'Fargate' if fargate else 'EC2'})" + (" still running at report time" if running else "")
            key = (what, vcpu, gb, _iso(start), _iso(end), "fargate" if fargate else "ec2")
            item = items.setdefault(key, {"what": what, "vcpu": vcpu, "memory_gb": gb, "count": 0,
                                          "from": _iso(start), "to": _iso(end),
                                          "hours": (end - start) / timedelta(hours=1),
                                          "pricing": "fargate" if fargate else "ec2", "cost": 0.0})
            item["count"] += 1
    for item in items.values():
        vcpu_rate = prices.fargate_vcpu_hour if item["pricing"] == "fargate" else prices.ec2_vcpu_hour
        gb_rate = prices.fargate_gb_hour if item["pricing"] == "fargate" else prices.ec2_gb_hour
        item["cost"] = round(item["count"] * item["hours"] * (item["vcpu"] * vcpu_rate + item["memory_gb"] * gb_rate),
                             4)
        item["hours"] = round(item["hours"], 3)
    rows = sorted(items.values(), key=lambda i: i["from"])
    total = round(sum(i["cost"] for i in rows), 2)
    note = ("An estimate, not a bill: tasks x hours x (vCPU x vCPU-hour price + GB x GB-hour price), on-demand "
            f"{prices.currency} prices as of {prices.as_of} from the config ([pricing]). Data transfer, logs and "
            "anything the evidence does not show (other regions, EC2 instances) are not included; check Cost "
            "Explorer and ask AWS Support about the charges.")
    if not rows:
        note = "No miner task with a recorded size and running time is in the evidence, so no cost is estimated."
    return {"currency": prices.currency, "total": total if rows else None, "items": rows, "note": note,
            "prices": {"as_of": prices.as_of, "fargate_vcpu_hour": prices.fargate_vcpu_hour,
                       "fargate_gb_hour": prices.fargate_gb_hour, "ec2_vcpu_hour": prices.ec2_vcpu_hour,
                       "ec2_gb_hour": prices.ec2_gb_hour}}


# ------------------------------------------------------------------ hygiene

def hardening_facts(summary_map: dict[str, Any] | None, posture: dict[str, Any] | None, scope: dict[str, Any],
                    now: datetime) -> list[dict[str, Any]]:
    """Account facts with a state: ok, warn (fix it) or review (a person must judge each one).
    The attacker's own principals are contained, not hygiene findings: they are left out here."""
    attacker = {("user", u["name"]) for u in scope.get("users", [])} | \
        {("group", g["name"]) for g in scope.get("groups", [])} | {("role", r["name"]) for r in scope.get("roles", [])}
    facts: list[dict[str, Any]] = []

    def fact(name: str, value: str, state: str) -> None:
        facts.append({"fact": name, "value": value, "state": state, "ok": state == "ok"})

    if summary_map is not None:
        mfa = bool(summary_map.get("AccountMFAEnabled"))
        fact("Root user MFA", "enabled" if mfa else "NOT enabled", "ok" if mfa else "warn")
        present = int(summary_map.get("AccountAccessKeysPresent", 0))
        fact("Root access keys", "present" if present else "none", "warn" if present else "ok")
    if posture:
        users = [u for u in posture.get("users", []) if ("user", u["name"]) not in attacker]
        no_mfa = [u["name"] for u in users if not u.get("mfa")]
        fact("IAM users without MFA", ", ".join(no_mfa) or "none", "warn" if no_mfa else "ok")
        stale = []
        for u in users:
            for k in u.get("keys", []):
                if k.get("status") != "Active":
                    continue
                created, used = _ts(k.get("created")), _ts(k.get("last_used"))
                if created and now - created > timedelta(days=STALE_DAYS):
                    stale.append(f"{k['id']} ({u['name']}, older than {STALE_DAYS} days)")
                elif used is None:
                    stale.append(f"{k['id']} ({u['name']}, never used)")
                elif now - used > timedelta(days=STALE_DAYS):
                    stale.append(f"{k['id']} ({u['name']}, unused for {STALE_DAYS}+ days)")
        fact("Active access keys that are old or unused", "; ".join(stale) or "none", "warn" if stale else "ok")
        holders = posture.get("admin_holders", {})
        named = [f"{kind} {n}" for kind in ("user", "group", "role") for n in holders.get(f"{kind}s", [])
                 if (kind, n) not in attacker]
        fact("Principals holding AdministratorAccess", ", ".join(named) or "none",
             "review" if named else "ok")
        patterns = " ".join(str(r.get("pattern") or "") for r in posture.get("eventbridge_rules", [])
                            if r.get("state") == "ENABLED")
        root_rule = '"Root"' in patterns
        iam_rule = "iam.amazonaws.com" in patterns or '"aws.iam"' in patterns
        fact("EventBridge rule watching root use", "yes" if root_rule else "no", "ok" if root_rule else "warn")
        fact("EventBridge rule watching IAM changes", "yes" if iam_rule else "no", "ok" if iam_rule else "warn")
    return facts


def recommendations(facts: list[dict[str, Any]], root_key: str | None, mining: bool) -> list[dict[str, Any]]:
    """Follow-ups in the groups of the client's own write-up: credential hygiene, hardening, costs."""
    bad = {f["fact"] for f in facts if f["state"] != "ok"}
    hygiene = [
        "Find how the root key" + (f" {root_key}" if root_key else "") + " was exposed (public repositories, .env "
        "files, CI logs, laptops, vendors) using the CloudTrail events in the evidence bundle.",
        "Delete every root access key; the root user should have none. Use IAM roles for automation.",
        "Rotate every secret the attacker could have read (Secrets Manager, SSM parameters, task definition "
        "environment variables, CI variables).",
    ]
    if "Root user MFA" in bad:
        hygiene.append("Enable MFA on the root user now, and keep its password and device in a safe place.")
    if "IAM users without MFA" in bad:
        hygiene.append("Enforce MFA for every IAM user (deny actions without aws:MultiFactorAuthPresent), or move "
                       "people to IAM Identity Center.")
    if "Active access keys that are old or unused" in bad:
        hygiene.append(f"Deactivate unused access keys and rotate keys older than {STALE_DAYS} days.")
    if "Principals holding AdministratorAccess" in bad:
        hygiene.append("Apply least privilege: confirm each AdministratorAccess holder listed under 'Account facts' "
                       "and replace blanket AdministratorAccess with scoped policies.")
    hardening = [
        "Enable Amazon GuardDuty in every region, with Runtime Monitoring for ECS Fargate, EKS and EC2, so a miner "
        "is detected by what it runs, not by its name.",
        "Create an organization trail in AWS CloudTrail (all regions, all accounts) delivered to a separate, "
        "locked-down log archive account.",
        "Use AWS Organizations service control policies to deny actions by the root user of member accounts "
        "(with centralized root access) and to deny the regions you do not use.",
        "Alert on any root credential use, GetCallerIdentity included (a high-fidelity indicator), and on IAM "
        "create/attach events (CreateUser, CreateAccessKey, Attach*Policy) with EventBridge rules to your on-call "
        "channel" + (" (none is set up today)." if {"EventBridge rule watching root use",
                                                     "EventBridge rule watching IAM changes"} & bad else "."),
    ]
    costs = ["Set AWS Budgets alerts and enable Cost Anomaly Detection, so unexpected compute spend pages someone "
             "within hours."]
    if mining:
        costs.append("Open a case with AWS Support about the charges caused by the unauthorized usage; they can "
                     "review it for a billing adjustment.")
        costs.append("When the investigation is done, run the cryptojacking-eradicate playbook to delete the "
                     "miner's services, task definitions and empty clusters (each step approval-gated).")
    return [{"group": "Credential hygiene & audit", "items": hygiene}, {"group": "Hardening", "items": hardening},
            {"group": "Costs and clean-up", "items": costs}]
