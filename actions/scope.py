"""Scope discovery: from the incident's seeds to every credential and workload in scope, each
with the reason it is in scope, and the look-alikes left alone with the reason why."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from actions.base import Action, ActionContext, NoParams, Plan
from actions.common import is_code, iso, matches_miner, paginate
from actions.registry import register
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


@register
class DiscoverScope(Action[NoParams]):
    """Find what is in scope: seeds from the incident plus what the runner discovers."""

    name = "scope.discover"
    summary = "Discover the attacker's credentials and workloads from the incident's seeds (read-only)"
    risk = "read-only"
    publishes = "scope"
    permissions = (
        "iam:ListUsers", "iam:ListGroups", "iam:ListRoles", "iam:ListAccessKeys", "iam:GetAccessKeyLastUsed",
        "iam:GetLoginProfile", "iam:ListMFADevices", "iam:ListGroupsForUser", "iam:ListAttachedUserPolicies",
        "iam:ListUserPolicies", "iam:ListEntitiesForPolicy", "iam:GetAccountSummary", "sts:GetCallerIdentity",
        "ecs:ListClusters", "ecs:ListServices", "ecs:DescribeServices", "ecs:DescribeTaskDefinition",
        "ecs:ListTasks", "ecs:DescribeTasks", "cloudtrail:LookupEvents", "s3:ListBucket", "s3:GetObject",
    )

    def plan(self, ctx: ActionContext, params: NoParams) -> Plan:
        iam = ctx.aws.client("iam")
        inc = ctx.incident
        start = inc.window_start_dt
        since = f"inside the incident window (from {inc.window_start})"
        account = inc.account_id
        users, groups, roles, keys, excluded = _Found(), _Found(), _Found(), _Found(), []
        self_arn = ctx.aws.identity().principal_arn

        def keep(kind: str, name: str, arn: str) -> bool:
            if arn == self_arn:
                excluded.append({"kind": kind, "name": name, "arn": arn, "reason": "the runner's own identity"})
                return False
            if ctx.config.is_protected(name, arn):
                excluded.append({"kind": kind, "name": name, "arn": arn,
                                 "reason": "protected principal (config guardrails)"})
                return False
            return True

        # -- seeds and the IAM listing, read concurrently
        all_users, all_groups, all_roles = ctx.fanout(
            lambda op: list(paginate(iam, op[0], op[1])),
            [("list_users", "Users"), ("list_groups", "Groups"), ("list_roles", "Roles")],
        )
        by_user = {u["UserName"]: u for u in all_users}
        by_group = {g["GroupName"]: g for g in all_groups}
        by_role = {r["RoleName"]: r for r in all_roles}
        missing: list[str] = []

        def add_user(name: str, reason: str) -> None:
            u = by_user.get(name)
            if u is None:
                missing.append(f"user {name} named in the incident does not exist")
            elif keep("user", name, u["Arn"]):
                users.add(name, {"name": name, "arn": u["Arn"], "label": name,
                                 "created": iso(u.get("CreateDate")),
                                 "created_in_window": _in_window(u.get("CreateDate"), start)}, reason)

        root_key = None
        for p in inc.principals:
            if isinstance(p, UserPrincipal):
                add_user(p.name, "named in the incident")
            elif isinstance(p, GroupPrincipal):
                g = by_group.get(p.name)
                if g is None:
                    missing.append(f"group {p.name} named in the incident does not exist")
                elif keep("group", p.name, g["Arn"]):
                    groups.add(p.name, {"name": p.name, "arn": g["Arn"], "label": p.name,
                                        "created": iso(g.get("CreateDate"))}, "named in the incident")
            elif isinstance(p, RolePrincipal):
                r = by_role.get(p.name)
                if r is None:
                    missing.append(f"role {p.name} named in the incident does not exist")
                elif keep("role", p.name, r["Arn"]):
                    roles.add(p.name, {"name": p.name, "arn": r["Arn"], "label": p.name}, "named in the incident")
            elif isinstance(p, AccessKeyPrincipal):
                try:
                    owner = iam.get_access_key_last_used(AccessKeyId=p.id).get("UserName")
                except ClientError as exc:
                    if not is_code(exc, "NoSuchEntity", "AccessDenied"):
                        raise
                    owner = None
                if owner and owner != "root":
                    add_user(owner, f"owns access key {p.id} named in the incident")
                elif owner is None:
                    missing.append(f"access key {p.id} named in the incident was not found")
            elif isinstance(p, RootPrincipal):
                root_key = p.access_key_id

        for name, u in by_user.items():
            if _in_window(u.get("CreateDate"), start):
                add_user(name, f"created {iso(u['CreateDate'])}, {since}")
        for name, g in by_group.items():
            if _in_window(g.get("CreateDate"), start) and keep("group", name, g["Arn"]):
                groups.add(name, {"name": name, "arn": g["Arn"], "label": name, "created": iso(g.get("CreateDate"))},
                           f"created {iso(g['CreateDate'])}, {since}")
        for name, r in by_role.items():
            if r.get("Path", "/").startswith("/aws-service-role/"):
                continue  # service-linked roles are AWS's own
            if _in_window(r.get("CreateDate"), start) and keep("role", name, r["Arn"]):
                roles.add(name, {"name": name, "arn": r["Arn"], "label": name},
                           f"created {iso(r['CreateDate'])}, {since}")

        # -- access keys: every key of an in-scope user, and any key created in the window
        user_names = [n for n in by_user if _visible(ctx, n, by_user[n]["Arn"], self_arn)]
        key_lists = ctx.fanout(lambda n: (n, list(paginate(iam, "list_access_keys", "AccessKeyMetadata",
                                                               UserName=n))), user_names)
        for name, metas in key_lists:
            for k in metas:
                item = {"id": k["AccessKeyId"], "user": name, "user_arn": by_user[name]["Arn"],
                        "status": k["Status"], "created": iso(k.get("CreateDate")),
                        "label": f"{k['AccessKeyId']} ({name})"}
                if name in users.items:
                    keys.add(k["AccessKeyId"], item, f"belongs to in-scope user {name}")
                elif _in_window(k.get("CreateDate"), start):
                    keys.add(k["AccessKeyId"], item, f"created {iso(k['CreateDate'])}, {since}")

        # -- details of in-scope users (for the plan and the report)
        def details(name: str) -> tuple[str, dict[str, Any]]:
            try:
                lp = iam.get_login_profile(UserName=name)["LoginProfile"]
                login = {"present": True, "created": iso(lp.get("CreateDate"))}
            except ClientError as exc:
                if not is_code(exc, "NoSuchEntity"):
                    raise
                login = {"present": False}
            return name, {
                "login_profile": login,
                "mfa_devices": [d["SerialNumber"] for d in paginate(iam, "list_mfa_devices", "MFADevices",
                                                                    UserName=name)],
                "groups": [g["GroupName"] for g in paginate(iam, "list_groups_for_user", "Groups", UserName=name)],
                "attached_policies": [p["PolicyArn"] for p in paginate(
                    iam, "list_attached_user_policies", "AttachedPolicies", UserName=name)],
                "inline_policies": list(paginate(iam, "list_user_policies", "PolicyNames", UserName=name)),
            }

        for name, info in ctx.fanout(details, list(users.items)):
            users.items[name].update(info)

        # -- look-alikes: who else holds the admin policies, and why they are left alone
        in_scope_arns = {u["arn"] for u in users.items.values()} | {g["arn"] for g in groups.items.values()} \
            | {r["arn"] for r in roles.items.values()}
        for policy_arn in dict.fromkeys([*ctx.config.discovery.admin_policy_arns, *inc.indicators.policy_arns]):
            try:
                ents = iam.list_entities_for_policy(PolicyArn=policy_arn)
            except ClientError as exc:
                if not is_code(exc, "NoSuchEntity"):
                    raise
                continue
            policy = policy_arn.rsplit("/", 1)[-1]
            for kind, key, lookup in (("user", "PolicyUsers", by_user), ("group", "PolicyGroups", by_group),
                                      ("role", "PolicyRoles", by_role)):
                for ent in ents.get(key, []):
                    ename = ent.get("UserName") or ent.get("GroupName") or ent.get("RoleName")
                    arn = lookup.get(ename, {}).get("Arn", "")
                    if arn in in_scope_arns or any(e["name"] == ename for e in excluded):
                        continue
                    why = (f"protected principal (config guardrails); holds {policy}"
                           if ctx.config.is_protected(ename, arn) else
                           f"holds {policy} but was created before the incident window and is not named "
                           f"in the incident: a legitimate holder")
                    excluded.append({"kind": kind, "name": ename, "arn": arn, "reason": why})

        # -- root
        summary = iam.get_account_summary()["SummaryMap"]
        present = int(summary.get("AccountAccessKeysPresent", 0)) > 0
        root = {
            "access_key_id": root_key, "access_keys_present": present,
            "mfa_enabled": bool(summary.get("AccountMFAEnabled", 0)),
            "reason": ("the incident reports use of a root access key" if root_key else "")
            + ("" if present else "; the account reports no root access keys now"),
        }

        from actions.trail import attributed_ecs

        attributed, trail_notes = attributed_ecs(ctx, list(users.items), list(roles.items))
        services, tasks, ecs_excluded = discover_ecs(ctx, {u["arn"] for u in users.items.values()}
                                                     | {r["arn"] for r in roles.items.values()}, attributed)
        task_defs = list(dict.fromkeys([s["task_definition"] for s in services]
                                       + [t["task_definition"] for t in tasks if t.get("task_definition")]))
        clusters = list({(s["region"], s["cluster"]): {"name": s["cluster"], "region": s["region"],
                                                        "label": s["cluster"], "reason": "holds an in-scope service"}
                         for s in services}.values())
        scope = {
            "account_id": account, "window_start": inc.window_start,
            "users": users.out(), "groups": groups.out(), "roles": roles.out(), "access_keys": keys.out(),
            "root": root, "ecs_services": services, "ecs_tasks": tasks, "ecs_clusters": clusters,
            "ecs_task_definitions": [{"arn": a, "label": a.rsplit("/", 1)[-1]} for a in task_defs],
            "excluded": excluded + ecs_excluded, "missing": missing, "attacker_events": [], "attacker_principals": [],
        }
        return Plan(outputs=scope, notes=missing + trail_notes)


def _visible(ctx: ActionContext, name: str, arn: str, self_arn: str) -> bool:
    """Neither protected nor the runner itself (checked silently: only candidates are reported)."""
    return arn != self_arn and not ctx.config.is_protected(name, arn)


def discover_ecs(
    ctx: ActionContext, attacker_arns: set[str], attributed: dict[tuple[str, str], str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """ECS services and tasks in scope, per region, and the services left alone."""
    inc = ctx.incident
    regions = search_regions(ctx)
    patterns = [*inc.indicators.images, *ctx.config.discovery.miner_patterns]
    named_services = {(r.cluster, r.name) for r in inc.resources if isinstance(r, EcsServiceResource)}
    named_clusters = {r.name for r in inc.resources if isinstance(r, EcsClusterResource)}
    named_tasks = {r.arn.rsplit("/", 1)[-1]: r for r in inc.resources if isinstance(r, EcsTaskResource)}
    start = inc.window_start_dt

    def region_scan(region: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        ecs = ctx.aws.client("ecs", region)
        services: list[dict[str, Any]] = []
        tasks: list[dict[str, Any]] = []
        left: list[dict[str, Any]] = []
        task_defs: dict[str, dict[str, Any]] = {}

        def images_of(td_arn: str) -> list[str]:
            if td_arn not in task_defs:
                td = ecs.describe_task_definition(taskDefinition=td_arn)["taskDefinition"]
                task_defs[td_arn] = td
            return [c.get("image", "") for c in task_defs[td_arn].get("containerDefinitions", [])]

        for cluster_arn in paginate(ecs, "list_clusters", "clusterArns"):
            cluster = cluster_arn.rsplit("/", 1)[-1]
            svc_arns = list(paginate(ecs, "list_services", "serviceArns", cluster=cluster_arn))
            in_scope_svcs: set[str] = set()
            for i in range(0, len(svc_arns), 10):
                for svc in ecs.describe_services(cluster=cluster_arn, services=svc_arns[i:i + 10])["services"]:
                    if svc.get("status") != "ACTIVE":
                        continue
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
                    if svc.get("createdBy") in attacker_arns:
                        reasons.append(f"created by in-scope principal {svc['createdBy']}")
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
            task_arns = list(paginate(ecs, "list_tasks", "taskArns", cluster=cluster_arn, desiredStatus="RUNNING"))
            for i in range(0, len(task_arns), 100):
                for task in ecs.describe_tasks(cluster=cluster_arn, tasks=task_arns[i:i + 100])["tasks"]:
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

    services: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
    left: list[dict[str, Any]] = []
    for s, t, lo in scan_regions(ctx, "ecs", region_scan, regions):
        services += s
        tasks += t
        left += lo
    return services, tasks, left


