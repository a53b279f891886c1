"""`stanch drill --live`: is this deployment ready to contain a real incident? Read-only.

Everything runs on a dry-run session (the session refuses every write before it is sent). For each
account: the credentials, the member role's assumption, the playbooks' permissions as IAM evaluates
them (iam:SimulatePrincipalPolicy on the exact statements `stanch playbook permissions --for` generates),
every enabled region reachable; then the runner's own permissions, the evidence bucket's Object Lock,
the EventBridge rules and the queue (with its dead-letter queue), and the routing config covering every
finding type the rules forward. Each problem names what would stop a real containment."""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from actions.registry import Registry, builtin_registry
from runner.aws import AwsSession
from runner.awserrors import summarize_error
from runner.config import Config
from runner.deployment import pattern_types, unrouted
from runner.permissions import Policy, declared, member_policies, security_policies
from runner.playbook import load_playbook
from runner.regions import Gap, enabled_regions

DEFAULT_PLAYBOOKS = ("cryptojacking-root-key", "cryptojacking-eradicate")
_VAR = re.compile(r"\$\{([A-Za-z0-9:.]+)\}")
#: what one iam:SimulatePrincipalPolicy call asks: actions, one resource ("*": any), condition context
Probe = tuple[tuple[str, ...], str, dict[str, str]]
AWS_ERRORS = (ClientError, BotoCoreError)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    account: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail, "account": self.account}


@dataclass
class Readiness:
    checks: list[Check] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str, account: str | None = None) -> None:
        self.checks.append(Check(name, ok, detail, account))

    def problems(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "problems": [c.to_json() for c in self.problems()],
                "checks": [c.to_json() for c in self.checks]}


@dataclass(frozen=True)
class DrillTargets:
    accounts: tuple[str, ...] = ()
    queue_url: str = ""
    rules: tuple[str, ...] = ()
    playbooks: tuple[str, ...] = DEFAULT_PLAYBOOKS
    rollback: bool = True

    @staticmethod
    def from_env(accounts: tuple[str, ...] = (), queue_url: str = "", rules: tuple[str, ...] = ()) -> DrillTargets:
        """What is given, else STANCH_DRILL_ACCOUNTS, STANCH_QUEUE_URL, STANCH_RULES (the template sets them)."""
        def listed(var: str) -> tuple[str, ...]:
            return tuple(x.strip() for x in os.environ.get(var, "").split(",") if x.strip())

        return DrillTargets(accounts=accounts or listed("STANCH_DRILL_ACCOUNTS"),
                            queue_url=queue_url or os.environ.get("STANCH_QUEUE_URL", ""),
                            rules=rules or listed("STANCH_RULES"))


def _fill(text: str, values: dict[str, str]) -> str | None:
    names = _VAR.findall(text)
    if any(not values.get(n) for n in names):
        return None
    return _VAR.sub(lambda m: values[m.group(1)], text)


def _probes(pols: list[Policy], values: dict[str, str]) -> list[Probe]:
    """(actions, resource, context) for every Allow statement, with the template's parameters filled in;
    statements whose values are unknown here are left out (the caller reports why)."""
    out: list[Probe] = []
    for pol in pols:
        for st in pol.statements:
            if st.effect != "Allow":
                continue
            for res in st.resources:
                resource = _fill(res, values)
                context = {k: _fill(v, values) or v for kv in st.condition.values() for k, v in kv.items()}
                if resource is not None:
                    out.append((st.actions, resource.replace("iam::*:", f"iam::{values['AWS::AccountId']}:"),
                                context))
    return out


def simulate(aws: AwsSession, principal: str, probes: list[Probe]) -> list[str]:
    """The actions IAM would deny `principal` (each with its resource), by iam:SimulatePrincipalPolicy."""
    iam = aws.client("iam")
    denied = []
    for actions, resource, context in probes:
        args: dict[str, Any] = {"PolicySourceArn": principal, "ActionNames": list(actions)}
        if resource != "*":
            args["ResourceArns"] = [resource]
        if context:
            args["ContextEntries"] = [{"ContextKeyName": k, "ContextKeyValues": [v], "ContextKeyType": "string"}
                                      for k, v in context.items()]
        while True:
            page = iam.simulate_principal_policy(**args)
            for result in page.get("EvaluationResults", []):
                if result.get("EvalDecision") != "allowed":
                    where = "" if resource == "*" else f" on {resource}"
                    denied.append(f"{result['EvalActionName']}{where} ({result.get('EvalDecision')})")
            if not page.get("IsTruncated"):
                break
            args["Marker"] = page["Marker"]
    return denied


def _regions(aws: AwsSession, config: Config, account: str, report: Readiness) -> None:
    if config.aws.regions:  # as a run searches them: the configured ones and the home region
        regions, source, gaps = sorted({aws.region, *config.aws.regions}), "config [aws] regions", list[Gap]()
    else:
        regions, source, gaps = enabled_regions(aws)
    if not regions:
        report.add("regions", False, "no region list: " + "; ".join(f"{g.service}: {g.error}" for g in gaps), account)
        return

    def reach(region: str) -> tuple[str, str | None]:
        try:
            aws.client("ecs", region).list_clusters(maxResults=1)
        except AWS_ERRORS as exc:
            return region, summarize_error(exc)
        return region, None

    with ThreadPoolExecutor(8) as pool:
        failed = [(r, e) for r, e in pool.map(reach, regions) if e]
    for region, error in failed:
        report.add("region", False, f"{region} not reachable (ecs:ListClusters): {error}", account)
    report.add("regions", not failed, f"{len(regions) - len(failed)}/{len(regions)} enabled regions reachable "
                                      f"({source})", account)


def _member(home: AwsSession, config: Config, account: str, own: str, stamp: str,
            report: Readiness) -> AwsSession | None:
    if account == own:
        return home
    role = config.accounts.role_name
    if not role:
        report.add("role", False, f"account {account} is not the runner's ({own}) and [accounts] role_name is not "
                                  "set: an incident there would be refused", account)
        return None
    try:
        member = home.assume_member(account, role, run_id=f"r-drill-{stamp}", external_id=config.accounts.external_id)
        member.identity()
    except AWS_ERRORS as exc:
        report.add("role", False, f"cannot assume {role} in {account}: {summarize_error(exc)}", account)
        return None
    assert member.assumed_role is not None
    report.add("role", True, f"assumed {member.assumed_role.role_arn}", account)
    return member


def run_live_drill(session: AwsSession, config: Config, targets: DrillTargets,
                   registry: Registry | None = None) -> Readiness:
    """Check everything a real containment needs, read-only. `session` must be a dry-run session."""
    if not session.dry_run:
        raise ValueError("the live drill runs on a dry-run session only")
    registry = registry or builtin_registry()
    report = Readiness()
    try:
        me = session.identity()
    except AWS_ERRORS as exc:
        report.add("credentials", False, f"no usable credentials: {summarize_error(exc)}")
        return report
    report.add("credentials", True, f"running as {me.arn}", me.account)
    found = declared([load_playbook(p, registry) for p in targets.playbooks], registry,
                     ["rollback.revert"] if targets.rollback else [])
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    for account in targets.accounts or (me.account,):
        member = _member(session, config, account, me.account, stamp, report)
        if member is None:
            continue
        principal = member.identity().principal_arn
        values = {"AWS::Partition": "aws", "AWS::AccountId": account, "ResponderRoleName": principal.split("/")[-1],
                  # the trail files discovery reads (member template parameter TrailBucket)
                  "TrailBucket": config.intake.cloudtrail_s3_uri.removeprefix("s3://").partition("/")[0]}
        try:
            denied = simulate(member, principal, _probes(member_policies(found), values))
        except AWS_ERRORS as exc:
            report.add("permissions", False, f"cannot simulate {principal}'s policies: {summarize_error(exc)}", account)
        else:
            for d in denied:
                report.add("permission", False, f"{principal} lacks {d}", account)
            report.add("permissions", not denied, f"{principal}: {len(denied)} of the playbooks' permissions denied",
                       account)
        _regions(member, config, account, report)
    _runner_permissions(session, config, targets, me.principal_arn, me.account, found, report)
    _evidence(session, config, report)
    _queue_and_rules(session, config, targets, report)
    return report


def _runner_permissions(session: AwsSession, config: Config, targets: DrillTargets, principal: str, own: str,
                        found: dict[str, set[str]], report: Readiness) -> None:
    others = [a for a in targets.accounts if a != own]
    values = {"AWS::Partition": "aws", "AWS::AccountId": own, "MemberRoleName": config.accounts.role_name,
              "EvidenceBucket": config.evidence.s3_bucket, "OrganizationsRoleArn": config.root.organizations_role_arn,
              "WorkerRole.Arn": principal}
    runner = [p for p in security_policies(found) if p.logical_id != "OrganizationsPolicy"]
    probes: list[Probe] = []
    for actions, resource, context in _probes(runner, values):
        if "iam:SimulatePrincipalPolicy" in actions:
            continue  # being called already
        if actions == ("sts:AssumeRole",) and resource.endswith(f":role/{config.accounts.role_name}"):
            probes += [(actions, resource.replace(f":{own}:", f":{a}:"), context) for a in others]
            continue
        # an object of the evidence bucket stands for all of them
        probes.append((actions, resource[:-1] + "stanch-drill" if resource.endswith("/*") else resource, context))
    if not probes:
        return
    try:
        denied = simulate(session, principal, probes)
    except AWS_ERRORS as exc:
        report.add("permissions", False, f"cannot simulate {principal}'s policies: {summarize_error(exc)}", own)
        return
    for d in denied:
        report.add("permission", False, f"{principal} lacks {d}", own)
    report.add("runner permissions", not denied, f"{principal}: {len(denied)} denied", own)


def _evidence(session: AwsSession, config: Config, report: Readiness) -> None:
    bucket = config.evidence.s3_bucket
    if not bucket:
        report.add("evidence", False, "no [evidence] s3_bucket: evidence would stay on the runner's disk only")
        return
    try:
        lock = session.client("s3").get_object_lock_configuration(Bucket=bucket).get("ObjectLockConfiguration", {})
    except AWS_ERRORS as exc:
        report.add("evidence", False, f"Object Lock of s3://{bucket} unreadable or off: {summarize_error(exc)}")
        return
    if lock.get("ObjectLockEnabled") != "Enabled":
        report.add("evidence", False, f"Object Lock is not enabled on s3://{bucket}: evidence could be deleted")
        return
    default = (lock.get("Rule") or {}).get("DefaultRetention") or {}
    if not default and not config.evidence.object_lock_mode:
        report.add("evidence", False, f"s3://{bucket} has Object Lock but no default retention, and "
                                      "[evidence] object_lock_mode is empty: objects would not be retained")
        return
    mode = config.evidence.object_lock_mode or default.get("Mode")
    report.add("evidence", True, f"s3://{bucket}: Object Lock on ({mode})")


def _queue_region(url: str, default: str) -> str:
    m = re.match(r"https?://sqs[.-]([a-z0-9-]+)\.", url)
    return m.group(1) if m and m.group(1) != "queue" else default


def _queue_and_rules(session: AwsSession, config: Config, targets: DrillTargets, report: Readiness) -> None:
    queue_arn = None
    if not targets.queue_url:
        report.add("queue", False, "no queue given (--queue-url or STANCH_QUEUE_URL)")
    else:
        region = _queue_region(targets.queue_url, session.region)
        try:
            attrs = session.client("sqs", region).get_queue_attributes(
                QueueUrl=targets.queue_url, AttributeNames=["QueueArn", "RedrivePolicy"])["Attributes"]
        except AWS_ERRORS as exc:
            report.add("queue", False, f"{targets.queue_url}: {summarize_error(exc)}")
        else:
            queue_arn = attrs.get("QueueArn")
            dlq = "RedrivePolicy" in attrs
            report.add("queue", dlq, f"{targets.queue_url}: " + ("present, with a dead-letter queue" if dlq else
                                                                  "present but no dead-letter queue (RedrivePolicy)"))
    if not targets.rules:
        report.add("rules", False, "no EventBridge rule given (--rule or STANCH_RULES)")
    for name in targets.rules:
        events = session.client("events")
        try:
            rule = events.describe_rule(Name=name)
            arns = [t["Arn"] for t in events.list_targets_by_rule(Rule=name).get("Targets", [])]
        except AWS_ERRORS as exc:
            report.add("rule", False, f"{name}: {summarize_error(exc)}")
            continue
        types = pattern_types(json.loads(rule.get("EventPattern") or "{}"))
        problems = []
        if rule.get("State") != "ENABLED":
            problems.append(f"state {rule.get('State')}")
        if queue_arn and queue_arn not in arns:
            problems.append("does not target the queue")
        missing = unrouted(config, types)
        if not types:
            problems.append("forwards no finding type")
        if missing:
            problems.append(f"types no playbook is routed for ([routing]): {', '.join(missing)}")
        report.add("rule", not problems, f"{name}: " + ("; ".join(problems) if problems else
                                                        f"enabled, {len(types)} routed types, targets the queue"))


class DrillNotReady(Exception):
    """Raised by the Lambda handler so that the failed invocation reaches the alert topic."""


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry point of the daily drill (deploy/security-account.yaml): configured by environment."""
    from runner.config import load_config

    config = load_config()
    session = AwsSession(region=os.environ.get("AWS_REGION") or "us-east-1", settings=config.aws, dry_run=True)
    report = run_live_drill(session, config, DrillTargets.from_env())
    if not report.ready:
        raise DrillNotReady("stanch live drill: not ready: " + "; ".join(
            f"[{c.account or '-'}] {c.name}: {c.detail}" for c in report.problems()))
    return report.to_json()
