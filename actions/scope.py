"""Scope discovery: from the incident's seeds and the CloudTrail attribution graph to every
credential, change and workload in scope, each with the reason it is in scope (and the event that
proves it); suspects that only the window points at; and the look-alikes left alone with why."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from actions.base import Action, ActionContext, NoParams, Plan
from actions.common import is_code, iso, matches_miner, paginate
from actions.registry import register
from runner.attribution.graph import Attribution, Edge
from runner.attribution.sources import TrailReader, gather
from runner.detect import seeds_of
from runner.document import Scope
from runner.incident import (
    AccessKeyPrincipal,
    EcsClusterResource,
    EcsServiceResource,
    EcsTaskResource,
    GroupPrincipal,
    RolePrincipal,
    RootPrincipal,
    UserPrincipal,
)
from runner.regions import scan_regions, search_regions


@dataclass
class _Found:
    items: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, key: str, item: dict[str, Any], reason: str) -> None:
        if key in self.items:
            if reason not in self.items[key]["reasons"]:
                self.items[key]["reasons"].append(reason)
        else:
            self.items[key] = {**item, "reasons": [reason]}

    def out(self) -> list[dict[str, Any]]:
        return [{**v, "reason": "; ".join(v["reasons"])} for v in self.items.values()]


def _in_window(created: Any, start: datetime | None) -> bool:
    return start is not None and isinstance(created, datetime) and created >= start


def _holds(item: dict[str, Any]) -> str:
    """What an identity holds, in a few words, for suspects listed in the plan."""
    parts = []
    if item.get("attached_policies"):
        parts.append("policies " + ", ".join(p.rsplit("/", 1)[-1] for p in item["attached_policies"]))
    if item.get("inline_policies"):
        parts.append("inline " + ", ".join(item["inline_policies"]))
    if item.get("groups"):
        parts.append("groups " + ", ".join(item["groups"]))
    if (item.get("login_profile") or {}).get("present"):
        parts.append("a console password")
    return "; holds " + "; ".join(parts) if parts else ""


@dataclass
class _Buckets:
    """In scope (contained automatically), escalated (attributed but protected-looking: gated) and
    suspects (only inside the window: contained only with their own explicit approval)."""

    users: _Found = field(default_factory=_Found)
    groups: _Found = field(default_factory=_Found)
    roles: _Found = field(default_factory=_Found)
    keys: _Found = field(default_factory=_Found)
    reversals: list[dict[str, Any]] = field(default_factory=list)

    def of(self, kind: str) -> _Found:
        return {"user": self.users, "group": self.groups, "role": self.roles, "access_key": self.keys}[kind]

    def out(self) -> dict[str, Any]:
        return {"users": self.users.out(), "groups": self.groups.out(), "roles": self.roles.out(),
                "access_keys": self.keys.out(), "reversals": self.reversals}


def _arn(account: str, kind: str, name: str) -> str:
    return f"arn:aws:iam::{account}:{kind}/{name}"


@register
class DiscoverScope(Action[NoParams]):
    """Find what is in scope: what the incident names and what CloudTrail attributes to the
    compromised credentials. Identities found only because they were created inside the window are
    suspects; protected-looking identities the attacker made are escalated; changes the attacker
    made to identities that existed before are listed for precise reversal."""

    name = "scope.discover"
    summary = "Discover the attacker's credentials, changes and workloads from the incident and CloudTrail (read-only)"
    risk = "read-only"
    publishes = "scope"
    permissions = (
        "iam:ListUsers", "iam:ListGroups", "iam:ListRoles", "iam:ListAccessKeys", "iam:GetAccessKeyLastUsed",
        "iam:GetLoginProfile", "iam:ListMFADevices", "iam:ListGroupsForUser", "iam:ListAttachedUserPolicies",
        "iam:ListUserPolicies", "iam:ListEntitiesForPolicy", "iam:GetAccountSummary", "iam:GetGroup",
        "sts:GetCallerIdentity", "ecs:ListClusters", "ecs:ListServices", "ecs:DescribeServices",
        "ecs:DescribeTaskDefinition", "ecs:ListTasks", "ecs:DescribeTasks", "cloudtrail:LookupEvents",
        "s3:ListBucket", "s3:GetObject",
    )

    def plan(self, ctx: ActionContext, params: NoParams) -> Plan:
        iam = ctx.aws.client("iam")
        inc = ctx.incident
        start = inc.window_start_dt
        account = inc.account_id
        self_arn = ctx.aws.identity().principal_arn

        def read_trail() -> Attribution:
            reader = TrailReader(client=ctx.aws.client, home_region=inc.region, regions=search_regions(ctx),
                                 start=start, s3_uri=ctx.config.intake.cloudtrail_s3_uri,
                                 lookup_tps=ctx.config.intake.lookup_events_tps, fanout=ctx.fanout)
            graph = gather(reader, seeds_of(inc), ctx.trail_records, ctx.trail_sources)
            # what attribution read is part of what the run searched; no source at all is a gap that
            # could hide the attacker (identities it made are then only suspects)
            for source in graph.sources:
                ctx.coverage.source(source)
            for gap in graph.gaps:
                ctx.coverage.gap("*", "cloudtrail", gap, blocking=False)
            if not graph.available:
                ctx.coverage.gap(inc.region, "cloudtrail", "no CloudTrail source: no trail file, no "
                                 "[intake] cloudtrail_s3_uri, and LookupEvents unavailable", blocking=True)
            return graph

        def admin_holders() -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
            """Who holds each admin policy, and the members of the groups among them."""
            holders: dict[str, dict[str, Any]] = {}
            for policy_arn, ents in zip(admin_policies, ctx.fanout(entities, admin_policies), strict=True):
                if ents is not None:
                    holders[policy_arn] = ents
            groups = list(dict.fromkeys(g["GroupName"] for e in holders.values() for g in e.get("PolicyGroups", [])))
            return holders, {g: m for g, m in zip(groups, ctx.fanout(members, groups), strict=True) if m is not None}

        def entities(policy_arn: str) -> dict[str, Any] | None:
            try:
                return dict(iam.list_entities_for_policy(PolicyArn=policy_arn))
            except ClientError as exc:
                if not is_code(exc, "NoSuchEntity"):
                    raise
                return None

        def members(group: str) -> list[dict[str, Any]] | None:
            try:
                return list(paginate(iam, "get_group", "Users", GroupName=group))
            except ClientError as exc:
                if not is_code(exc, "NoSuchEntity"):
                    raise
                return None

        # -- read concurrently: the attribution graph, the IAM listing, ECS in every region, the admin
        # policies' holders and the account summary (none of these reads depends on another)
        admin_policies = list(dict.fromkeys([*ctx.config.discovery.admin_policy_arns, *inc.indicators.policy_arns]))
        ctx.progress("global", "cloudtrail", "running")
        ctx.progress("global", "iam", "running")
        trail = ctx.fanout_pool.submit(read_trail)
        ecs_read = ctx.fanout_pool.submit(read_ecs, ctx)
        admins = ctx.fanout_pool.submit(admin_holders)
        account_summary = ctx.fanout_pool.submit(lambda: iam.get_account_summary()["SummaryMap"])
        try:
            all_users, all_groups, all_roles = ctx.fanout(
                lambda op: list(paginate(iam, op[0], op[1])),
                [("list_users", "Users"), ("list_groups", "Groups"), ("list_roles", "Roles")])
        except ClientError as exc:
            ctx.progress("global", "iam", "gap", error=str(exc.response.get("Error", {}).get("Code", "")))
            raise
        ctx.progress("global", "iam", "done", found=len(all_users) + len(all_groups) + len(all_roles))
        graph = trail.result()
        ctx.progress("global", "cloudtrail", "done" if graph.available else "gap", found=len(graph.events),
                     **({} if graph.available else {"error": "no CloudTrail source"}))
        by_kind = {"user": {u["UserName"]: u for u in all_users}, "group": {g["GroupName"]: g for g in all_groups},
                   "role": {r["RoleName"]: r for r in all_roles
                            if not r.get("Path", "/").startswith("/aws-service-role/")}}
        scope, escalated, suspects = _Buckets(), _Buckets(), _Buckets()
        excluded: list[dict[str, Any]] = []
        missing: list[str] = []
        notes: list[str] = []
        named = {"user": {p.name for p in inc.principals if isinstance(p, UserPrincipal)},
                 "group": {p.name for p in inc.principals if isinstance(p, GroupPrincipal)},
                 "role": {p.name for p in inc.principals if isinstance(p, RolePrincipal)}}
        created = {"user": graph.users, "group": graph.groups, "role": graph.roles}

        def leave(kind: str, name: str, arn: str, reason: str) -> None:
            if not any(e["name"] == name and e["kind"] == kind for e in excluded):
                excluded.append({"kind": kind, "name": name, "arn": arn, "reason": reason})

        # -- identities: in scope, escalated, suspect, or left alone (with why)
        for kind in ("user", "group", "role"):
            for name in sorted(named[kind] - set(by_kind[kind])):
                missing.append(f"{kind} {name} named in the incident does not exist")
            for name, item in by_kind[kind].items():
                arn = item["Arn"]
                when = item.get("CreateDate")
                in_window = _in_window(when, start)
                reasons = []
                if name in named[kind]:
                    reasons.append("named in the incident")
                if name in created[kind]:
                    reasons.append(f"created by the attacker ({created[kind][name].proof})")
                if not reasons and not in_window:
                    continue
                entry = {"name": name, "arn": arn, "label": name, "created": iso(when)}
                if kind == "user":
                    entry["created_in_window"] = in_window
                if arn == self_arn:
                    leave(kind, name, arn, "the runner's own identity")
                    continue
                protected = ctx.config.is_protected(name, arn)
                if reasons:
                    if protected and not in_window and name not in created[kind]:
                        leave(kind, name, arn, "protected principal (config guardrails) that existed before the "
                                               "window; named in the incident but never touched automatically")
                    elif protected:
                        escalated.of(kind).add(name, {**entry, "evasion": True}, "; ".join(reasons) + (
                            "; named like a protected principal but created inside the window or by the attacker: "
                            "a likely evasion"))
                    else:
                        scope.of(kind).add(name, entry, "; ".join(reasons))
                    continue
                other = graph.created_by_other(kind, name)
                if other is not None:
                    leave(kind, name, arn, f"created inside the window by {other.actor}, not the attacker, "
                                           f"according to CloudTrail ({other.proof})")
                    continue
                why = (f"created {iso(when)}, inside the incident window, but no CloudTrail event links it to the "
                       "compromised credentials" if graph.available else
                       f"created {iso(when)}, inside the incident window; no CloudTrail source was available to "
                       "say who created it")
                if protected:
                    why += "; named like a protected principal (a likely evasion, or a real break-glass change)"
                suspects.of(kind).add(name, {**entry, "evasion": protected}, why)

        # -- access keys: of in-scope/escalated/suspect users, named ones, and ones the attacker minted
        visible = [n for n, u in by_kind["user"].items() if u["Arn"] != self_arn]
        key_lists = dict(ctx.fanout(lambda n: (n, list(paginate(iam, "list_access_keys", "AccessKeyMetadata",
                                                                    UserName=n))), visible))
        named_keys = {p.id for p in inc.principals if isinstance(p, AccessKeyPrincipal)}
        seen_keys: set[str] = set()
        for user, metas in key_lists.items():
            arn = by_kind["user"][user]["Arn"]
            for k in metas:
                kid = k["AccessKeyId"]
                seen_keys.add(kid)
                item = {"id": kid, "user": user, "user_arn": arn, "status": k["Status"],
                        "created": iso(k.get("CreateDate")), "label": f"{kid} ({user})"}
                minted = graph.keys.get(kid)
                for bucket in (scope, escalated, suspects):
                    if user in bucket.users.items:
                        bucket.keys.add(kid, item, f"belongs to {'in-scope' if bucket is scope else 'that'} "
                                                   f"user {user}")
                        break
                else:
                    protected = ctx.config.is_protected(user, arn)
                    target = escalated if protected else scope
                    if kid in named_keys:
                        target.keys.add(kid, item, "named in the incident as compromised")
                    elif minted is not None and minted.kind == "created":
                        target.keys.add(kid, item, f"created by the attacker for existing user {user} "
                                                   f"({minted.proof}); the user's own keys are left alone")
                    elif _in_window(k.get("CreateDate"), start):
                        other = graph.created_by_other("access_key", kid)
                        if other is not None:
                            leave("access_key", kid, arn, f"created inside the window by {other.actor}, not the "
                                                          f"attacker ({other.proof})")
                        else:
                            suspects.keys.add(kid, item, f"created {iso(k.get('CreateDate'))} for existing user "
                                                         f"{user}, inside the window; not attributed")
        for kid in sorted(named_keys - seen_keys):
            missing.append(f"access key {kid} named in the incident was not found on any IAM user")

        # -- details of every identity that may be contained (plan, report, suspects' holdings)
        def login_profile(name: str) -> dict[str, Any]:
            try:
                lp = iam.get_login_profile(UserName=name)["LoginProfile"]
            except ClientError as exc:
                if not is_code(exc, "NoSuchEntity"):
                    raise
                return {"present": False}
            return {"present": True, "created": iso(lp.get("CreateDate"))}

        def details(name: str) -> tuple[str, dict[str, Any]]:
            reads: dict[str, Callable[[], Any]] = {
                "login_profile": lambda: login_profile(name),
                "mfa_devices": lambda: [d["SerialNumber"] for d in paginate(iam, "list_mfa_devices", "MFADevices",
                                                                            UserName=name)],
                "groups": lambda: [g["GroupName"] for g in paginate(iam, "list_groups_for_user", "Groups",
                                                                    UserName=name)],
                "attached_policies": lambda: [p["PolicyArn"] for p in paginate(
                    iam, "list_attached_user_policies", "AttachedPolicies", UserName=name)],
                "inline_policies": lambda: list(paginate(iam, "list_user_policies", "PolicyNames", UserName=name)),
            }
            return name, dict(zip(reads, ctx.fanout(lambda read: read(), list(reads.values())), strict=True))

        detail_users = [*scope.users.items, *escalated.users.items, *suspects.users.items]
        for name, info in ctx.fanout(details, detail_users):
            for bucket in (scope, escalated, suspects):
                if name in bucket.users.items:
                    bucket.users.items[name].update(info)
        for item in suspects.users.items.values():
            item["reasons"][-1] += _holds(item)

        # -- changes the attacker made to identities that are not its own: reversed precisely
        attacker_owned = {("user", n) for n in (*scope.users.items, *escalated.users.items)}
        attacker_owned |= {("group", n) for n in (*scope.groups.items, *escalated.groups.items)}
        attacker_owned |= {("role", n) for n in (*scope.roles.items, *escalated.roles.items)}
        for edge in graph.edges:
            if edge.target_kind == "login_profile":
                kind, name = "user", edge.target
            elif edge.kind == "session" and edge.actor.startswith("user:"):
                kind, name = "user", edge.actor.removeprefix("user:")  # sessions issued with a stolen key
            elif edge.target_kind in ("user", "group", "role"):
                kind, name = edge.target_kind, edge.target
            else:
                continue
            if (kind, name) in attacker_owned or name not in by_kind[kind]:
                continue
            arn = by_kind[kind][name]["Arn"]
            reversal = _reversal(edge, kind, name, arn, graph)
            if reversal is None:
                continue
            if reversal["op"] == "manual":
                notes.append(reversal["instructions"])
            bucket = escalated if ctx.config.is_protected(name, arn) else scope
            if reversal not in bucket.reversals:
                bucket.reversals.append(reversal)

        # -- look-alikes: who else holds the admin policies, and why they are left alone
        in_scope_arns = {i["arn"] for b in (scope, escalated) for f in (b.users, b.groups, b.roles)
                         for i in f.items.values()}
        protected_paths: dict[str, list[str]] = {}
        admin_groups: list[str] = []
        holders, group_members = admins.result()
        for policy_arn, ents in holders.items():
            policy = policy_arn.rsplit("/", 1)[-1]
            for kind, key in (("user", "PolicyUsers"), ("group", "PolicyGroups"), ("role", "PolicyRoles")):
                for ent in ents.get(key, []):
                    ename = ent.get("UserName") or ent.get("GroupName") or ent.get("RoleName")
                    arn = by_kind[kind].get(ename, {}).get("Arn", _arn(account, kind, ename))
                    if kind == "group":
                        admin_groups.append(ename)
                    if ctx.config.is_protected(ename, arn) and kind != "group":
                        protected_paths.setdefault(arn, []).append(f"{kind}-policy:{policy_arn}")
                    if arn in in_scope_arns or any(e["name"] == ename for e in excluded):
                        continue
                    why = (f"protected principal (config guardrails); holds {policy}"
                           if ctx.config.is_protected(ename, arn) else
                           f"holds {policy} but is neither named in the incident nor attributed to the attacker: "
                           "a legitimate holder")
                    leave(kind, ename, arn, why)
        # a protected principal's admin paths through groups (the last-admin-path guardrail reads these)
        for group in dict.fromkeys(admin_groups):
            for m in group_members.get(group, []):
                if ctx.config.is_protected(m["UserName"], m["Arn"]):
                    protected_paths.setdefault(m["Arn"], []).append(f"group:{_arn(account, 'group', group)}")

        # -- root
        summary = account_summary.result()
        present = int(summary.get("AccountAccessKeysPresent", 0)) > 0
        root_key = next((p.access_key_id for p in inc.principals if isinstance(p, RootPrincipal)), None)
        root = {
            "access_key_id": root_key, "access_keys_present": present,
            "mfa_enabled": bool(summary.get("AccountMFAEnabled", 0)),
            "reason": ("the incident reports use of a root access key" if root_key else "")
            + ("" if present else "; the account reports no root access keys now"),
        }

        # -- ECS work: by image, by name, by CloudTrail, by the ECS record of who created it
        attributed = {(str(e.detail.get("cluster")), str(e.detail.get("service"))):
                      f"created by the attacker according to CloudTrail ({e.proof})"
                      for e in graph.edges if e.event == "ecs:CreateService" and e.detail.get("service")}
        attacker_arns = in_scope_arns | set(graph.sessions)
        if any(isinstance(p, RootPrincipal) for p in inc.principals):
            attacker_arns.add(f"arn:aws:iam::{account}:root")
        services, tasks, ecs_excluded = classify_ecs(ctx, ecs_read.result(), attacker_arns, attributed)
        task_defs = list(dict.fromkeys([s["task_definition"] for s in services]
                                       + [t["task_definition"] for t in tasks if t.get("task_definition")]))
        clusters = list({(s["region"], s["cluster"]): {"name": s["cluster"], "region": s["region"],
                                                        "label": s["cluster"], "reason": "holds an in-scope service"}
                         for s in services}.values())

        if not graph.available:
            notes.insert(0, "NO CLOUDTRAIL SOURCE: nothing attributes identities to the attacker beyond what the "
                            "incident names; identities created inside the window are only suspects (give "
                            "--cloudtrail FILE or set [intake] cloudtrail_s3_uri)")
        if suspects.users.items or suspects.groups.items or suspects.roles.items or suspects.keys.items:
            count = sum(len(f.items) for f in (suspects.users, suspects.groups, suspects.roles, suspects.keys))
            notes.append(f"{count} suspect(s) created inside the window are not attributed: contained only by "
                         "the contain-suspects step with its own explicit approval (--approve-all does not cover it)")
        notes += [f"attribution gap: {g}" for g in graph.gaps[:20]]
        # protected-looking principals that gated steps may change: escalated ones and evasive suspects
        lookalikes = sorted({i["arn"] for b in (escalated, suspects) for f in (b.users, b.groups, b.roles)
                             for i in f.items.values() if b is escalated or i.get("evasion")}
                            | {i["user_arn"] for i in escalated.keys.items.values()}
                            | {r["arn"] for r in escalated.reversals})
        out = Scope.model_validate({
            "account_id": account, "window_start": inc.window_start,
            **scope.out(),
            "root": root, "ecs_services": services, "ecs_tasks": tasks, "ecs_clusters": clusters,
            "ecs_task_definitions": [{"arn": a, "label": a.rsplit("/", 1)[-1]} for a in task_defs],
            "escalated": escalated.out(),
            "protected_lookalikes": lookalikes,
            "suspects": suspects.out(),
            "excluded": excluded + ecs_excluded, "missing": missing,
            "protected_admin_paths": protected_paths,
            "attribution": graph.to_json(),
            "attacker_events": graph.events,
            "attacker_principals": sorted(in_scope_arns | set(graph.sessions)),
        }).model_dump(exclude_unset=True)  # the typed scope (runner/document.py), as templates read it
        return Plan(outputs=out, notes=missing + notes)


def _reversal(edge: Edge, kind: str, name: str, arn: str, graph: Attribution) -> dict[str, Any] | None:
    """The precise undo of one attacker change to an identity the attacker does not own."""
    base = {"kind": kind, "name": name, "arn": arn, "event_id": edge.event_id, "proof": edge.proof}
    d = edge.detail
    if edge.kind == "attached" and d.get("policy_arn"):
        return {**base, "op": "detach-policy", "policy_arn": d["policy_arn"]}
    if edge.kind == "inline-policy" and d.get("policy_name"):
        return {**base, "op": "delete-inline-policy", "policy_name": d["policy_name"]}
    if edge.kind == "added-to-group" and d.get("group"):
        return {**base, "op": "remove-from-group", "group": d["group"]}
    # a console password the attacker gave or changed is handled by iam.delete-attacker-login-profiles
    # and the triage (evidence first; a changed password is its owner's to reset)
    if edge.kind == "mfa" and d.get("serial"):
        return {**base, "op": "deactivate-mfa", "serial": d["serial"]}
    if edge.kind == "trust-policy":
        previous = graph.trust_before(name, edge)
        if previous is not None:
            return {**base, "op": "restore-trust-policy", "document": previous,
                    "attacker_document": d.get("document")}
        return {**base, "op": "manual", "instructions": (
            f"The attacker replaced the trust policy of existing role {name} ({edge.proof}) and the CloudTrail "
            "records given do not show the policy before it. Restore it from your infrastructure code or the "
            "role's last known good copy (the attacker's document is in the run's scope and evidence); sessions "
            "the attacker obtained through it are revoked by undo-attacker-changes.")}
    if edge.kind in ("assumed-role", "session"):
        return {**base, "op": "revoke-sessions", "issued_by": edge.detail.get("access_key_id")}
    return None


@dataclass
class _EcsCluster:
    arn: str
    services: list[dict[str, Any]]
    tasks: list[dict[str, Any]]


@dataclass
class _EcsRegion:
    region: str
    clusters: list[_EcsCluster]
    task_defs: dict[str, dict[str, Any]]

    @property
    def found(self) -> int:
        """Active services and running tasks read (the discovery progress counts them)."""
        return sum(len(c.services) + len(c.tasks) for c in self.clusters)


def read_ecs(ctx: ActionContext) -> list[_EcsRegion]:
    """Every ECS cluster's active services, running tasks and their task definitions, in every
    searched region; regions, clusters and task definitions are read side by side. A region whose ECS
    endpoint fails is a coverage gap (scan_regions)."""

    def region_read(region: str) -> _EcsRegion:
        ecs = ctx.aws.client("ecs", region)

        def cluster_read(cluster_arn: str) -> _EcsCluster:
            svc_arns = list(paginate(ecs, "list_services", "serviceArns", cluster=cluster_arn))
            task_arns = list(paginate(ecs, "list_tasks", "taskArns", cluster=cluster_arn, desiredStatus="RUNNING"))
            services = [svc for i in range(0, len(svc_arns), 10)
                        for svc in ecs.describe_services(cluster=cluster_arn, services=svc_arns[i:i + 10])["services"]]
            tasks = [task for i in range(0, len(task_arns), 100)
                     for task in ecs.describe_tasks(cluster=cluster_arn, tasks=task_arns[i:i + 100])["tasks"]]
            return _EcsCluster(cluster_arn, [s for s in services if s.get("status") == "ACTIVE"], tasks)

        clusters = ctx.fanout(cluster_read, list(paginate(ecs, "list_clusters", "clusterArns")))
        wanted = list(dict.fromkeys([s["taskDefinition"] for c in clusters for s in c.services]
                                    + [t["taskDefinitionArn"] for c in clusters for t in c.tasks
                                       if not t.get("group", "").startswith("service:")]))
        defs = ctx.fanout(lambda arn: ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"], wanted)
        return _EcsRegion(region, clusters, dict(zip(wanted, defs, strict=True)))

    return scan_regions(ctx, "ecs", region_read, search_regions(ctx))


def discover_ecs(
    ctx: ActionContext, attacker_arns: set[str], attributed: dict[tuple[str, str], str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """ECS services and tasks in scope, per region, and the services left alone."""
    return classify_ecs(ctx, read_ecs(ctx), attacker_arns, attributed)


def classify_ecs(
    ctx: ActionContext, regions: list[_EcsRegion], attacker_arns: set[str],
    attributed: dict[tuple[str, str], str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """From what read_ecs read: the services and tasks in scope, and the services left alone (why)."""
    inc = ctx.incident
    patterns = [*inc.indicators.images, *ctx.config.discovery.miner_patterns]
    named_services = {(r.cluster, r.name) for r in inc.resources if isinstance(r, EcsServiceResource)}
    named_clusters = {r.name for r in inc.resources if isinstance(r, EcsClusterResource)}
    named_tasks = {r.arn.rsplit("/", 1)[-1]: r for r in inc.resources if isinstance(r, EcsTaskResource)}
    start = inc.window_start_dt
    services: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
    left: list[dict[str, Any]] = []
    for read in regions:
        region = read.region

        def images_of(td_arn: str, defs: dict[str, dict[str, Any]] = read.task_defs) -> list[str]:
            return [c.get("image", "") for c in defs.get(td_arn, {}).get("containerDefinitions", [])]

        for found in read.clusters:
            cluster = found.arn.rsplit("/", 1)[-1]
            in_scope_svcs: set[str] = set()
            for svc in found.services:
                name = svc["serviceName"]
                imgs = images_of(svc["taskDefinition"])
                reasons = []
                hits = {m for m in (matches_miner(im, patterns) for im in imgs) if m}
                if hits:
                    reasons.append(f"runs image {', '.join(imgs)} matching miner pattern "
                                   f"{', '.join(sorted(hits))}")
                if (cluster, name) in named_services:
                    reasons.append("named in the incident")
                if (cluster, name) in (attributed or {}):
                    reasons.append((attributed or {})[(cluster, name)])
                creator = str(svc.get("createdBy") or "")
                if creator in attacker_arns and (not creator.endswith(":root")
                                                 or _in_window(svc.get("createdAt"), start)):
                    who = ("the compromised root user" if creator.endswith(":root")
                           else f"in-scope principal {creator}")
                    reasons.append(f"created by {who} (ECS createdBy)")
                if cluster in named_clusters and _in_window(svc.get("createdAt"), start):
                    reasons.append(f"created {iso(svc.get('createdAt'))} in cluster {cluster} named in "
                                   f"the incident")
                item = {"cluster": cluster, "name": name, "arn": svc["serviceArn"], "region": region,
                        "images": imgs, "desired_count": svc.get("desiredCount"),
                        "task_definition": svc["taskDefinition"], "label": f"{cluster}/{name} ({region})"}
                if reasons:
                    services.append({**item, "reason": "; ".join(reasons)})
                    in_scope_svcs.add(name)
                else:
                    left.append({"kind": "ecs_service", "name": f"{cluster}/{name}", "arn": svc["serviceArn"],
                                 "reason": f"image {', '.join(imgs)} matches no miner pattern and it is "
                                           f"not attributed to the attacker"})
            for task in found.tasks:
                group = task.get("group", "")
                tid = task["taskArn"].rsplit("/", 1)[-1]
                item = {"cluster": cluster, "arn": task["taskArn"], "region": region, "group": group,
                        "task_definition": task.get("taskDefinitionArn"), "label": f"{cluster}/{tid}"}
                if group.startswith("service:"):
                    owner = group.split(":", 1)[1]
                    if owner in in_scope_svcs:
                        tasks.append({**item, "service": owner,
                                      "reason": f"task of in-scope service {owner} (group {group})"})
                    continue
                imgs = images_of(task["taskDefinitionArn"])
                hits = {m for m in (matches_miner(im, patterns) for im in imgs) if m}
                if hits:
                    tasks.append({**item, "reason": f"standalone task running image {', '.join(imgs)}"})
                elif tid in named_tasks:
                    tasks.append({**item, "reason": "named in the incident"})
    return services, tasks, left
