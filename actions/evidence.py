"""Evidence capture: the state of everything in scope, before containment destroys it, in a
bundle of owner-only files with a SHA-256 manifest; optionally uploaded write-once to S3.

What containment changes in IAM (key status, login profile, groups, attachments) is read by scope
discovery before any change and kept verbatim as `scope.json`; this step adds the documents and
history around it (policy versions, key last-used, tags, ECS definitions and tasks, CloudTrail)
concurrently with credential containment, and the compute steps wait for it, since stopping a
task destroys what it records.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

from actions.base import Action, ActionContext, Change, Outcome, Params, Plan
from actions.common import is_code, iso, paginate
from actions.registry import register
from runner import __version__
from runner.audit import redact_value
from runner.aws import THROTTLING_CODES

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(65536), b""):
            h.update(chunk)
    return h.hexdigest()


class Bundle:
    """Writes owner-only JSON files under one directory and remembers their hashes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for folder in (root, root.parent, root.parent.parent):  # evidence/<incident>/<run>
            folder.chmod(0o700)
        self.files: dict[str, dict[str, Any]] = {}
        self.gaps: list[dict[str, str]] = []

    def write(self, rel: str, doc: Any) -> None:
        path = self.root / rel
        folder = self.root
        for part in Path(rel).parent.parts:
            folder = folder / part
            folder.mkdir(exist_ok=True, mode=0o700)
            folder.chmod(0o700)
        data = json.dumps(redact_value(doc), indent=2, sort_keys=True, default=str).encode() + b"\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    def gap(self, source: str, reason: str) -> None:
        self.gaps.append({"source": source, "reason": reason})


class MalformedManifestError(ValueError):
    """The manifest is not a stanch evidence manifest (wrong shape, unsafe paths)."""


def read_manifest(root: Path) -> dict[str, Any]:
    """The bundle's manifest, checked for shape; never read through a symlink."""
    path = root / MANIFEST
    if path.is_symlink():
        raise MalformedManifestError(f"{MANIFEST} is a symlink; not followed")
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise MalformedManifestError(f"{MANIFEST} is not readable JSON ({exc})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise MalformedManifestError(f"{MANIFEST} is not an evidence manifest (no 'files' object)")
    for rel, meta in files.items():
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or not parts:
            raise MalformedManifestError(f"{MANIFEST} lists an unsafe path {rel!r}")
        if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str)
                and isinstance(meta.get("size"), int) and not isinstance(meta.get("size"), bool)):
            raise MalformedManifestError(f"{MANIFEST}: entry {rel!r} has no sha256 and size")
    checked: dict[str, Any] = manifest
    return checked


def _bundle_files(root: Path) -> tuple[set[str], list[str]]:
    """Regular files under root (relative paths) and symlinks found there (never followed)."""
    present: set[str] = set()
    links: list[str] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        for name in [*dirs, *names]:
            full = Path(folder) / name
            if full.is_symlink():
                links.append(str(full.relative_to(root)))
            elif name in names and full.is_file():
                present.add(str(full.relative_to(root)))
    return present, sorted(links)


def _sha256_nofollow(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        h = hashlib.sha256()
        for chunk in iter(lambda: fh.read(65536), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_bundle(root: Path, expected_manifest: str | None = None) -> dict[str, list[str]]:
    """Compare a bundle with its manifest: altered, missing and extra files, symlinks (not followed),
    and, given the digest the journal recorded for the run, a rewritten manifest.
    Raises MalformedManifestError when the manifest is not one."""
    manifest = read_manifest(root)
    listed: dict[str, Any] = manifest["files"]
    present, links = _bundle_files(root)
    present.discard(MANIFEST)
    altered = [rel for rel, meta in listed.items() if rel in present and (
        (root / rel).stat().st_size != meta["size"] or _sha256_nofollow(root / rel) != meta["sha256"])]
    missing = sorted(set(listed) - present - set(links))
    extra = sorted(present - set(listed))
    rewritten = []
    if expected_manifest is not None and _sha256_nofollow(root / MANIFEST) != expected_manifest:
        rewritten.append(MANIFEST)
    return {"altered": sorted(altered), "missing": missing, "extra": extra, "symlink": links,
            "manifest": rewritten}


class EvidenceParams(Params):
    scope: dict[str, Any]


def _policy_doc(iam: Any, arn: str) -> dict[str, Any]:
    pol = iam.get_policy(PolicyArn=arn)["Policy"]
    ver = iam.get_policy_version(PolicyArn=arn, VersionId=pol["DefaultVersionId"])["PolicyVersion"]
    return {"arn": arn, "name": pol.get("PolicyName"), "version": pol["DefaultVersionId"], "document": ver["Document"]}


@register
class CaptureEvidence(Action[EvidenceParams]):
    """Capture the evidence bundle; with [evidence] s3_bucket set, upload it write-once."""

    name = "evidence.capture"
    summary = "Capture evidence (IAM, ECS, CloudTrail, account posture) into a hashed bundle; optional S3 copy"
    params_model = EvidenceParams
    permissions = (
        "sts:GetCallerIdentity", "iam:GetUser", "iam:ListAccessKeys", "iam:GetAccessKeyLastUsed",
        "iam:ListAttachedUserPolicies", "iam:ListUserPolicies", "iam:GetUserPolicy", "iam:GetGroup",
        "iam:ListAttachedGroupPolicies", "iam:ListGroupPolicies", "iam:GetGroupPolicy", "iam:GetRole",
        "iam:ListAttachedRolePolicies", "iam:ListRolePolicies", "iam:GetRolePolicy", "iam:GetPolicy",
        "iam:GetPolicyVersion", "iam:GetAccountSummary", "ecs:DescribeClusters", "ecs:DescribeServices",
        "ecs:DescribeTaskDefinition", "ecs:DescribeTasks", "cloudtrail:LookupEvents",
        "s3:PutObject", "s3:PutObjectRetention", "s3:GetObject",  # GetObject covers HeadObject
    )
    #: the write-once copy goes to the runner's own evidence bucket, whichever account the incident is in
    permission_paths = {"s3:PutObject": "runner", "s3:PutObjectRetention": "runner", "s3:GetObject": "runner"}
    risk = "reversible"  # local files; the optional S3 upload only adds write-once objects

    def plan(self, ctx: ActionContext, params: EvidenceParams) -> Plan:
        root = ctx.evidence_dir
        if root is None:
            return Plan(notes=["no evidence directory for this run"])
        if not (root / MANIFEST).exists():
            if ctx.aws.dry_run:
                return Plan(notes=[f"dry run: the evidence bundle would be written to {root}"])
            capture(ctx, params.scope, Bundle(root))
        manifest = json.loads((root / MANIFEST).read_text())
        outputs = {"path": str(root), "manifest_sha256": sha256_file(root / MANIFEST),
                   "files": len(manifest["files"]), "gaps": manifest.get("gaps", [])}
        return Plan(outputs=outputs, changes=self._uploads(ctx, root, manifest),
                    notes=[f"{g['source']}: {g['reason']}" for g in manifest.get("gaps", [])])

    def _uploads(self, ctx: ActionContext, root: Path, manifest: dict[str, Any]) -> list[Change]:
        cfg = ctx.config.evidence
        if not cfg.s3_bucket:
            return []
        s3 = ctx.aws.home.client("s3")  # the runner's own account's bucket, also for a member account's incident
        prefix = f"{cfg.s3_prefix.strip('/')}/{ctx.incident.id}/{ctx.run_id}"
        changes = []
        entries = [*manifest["files"].items(), (MANIFEST, {"sha256": sha256_file(root / MANIFEST),
                                                           "size": (root / MANIFEST).stat().st_size})]
        for rel, meta in entries:
            key = f"{prefix}/{rel}"
            try:
                s3.head_object(Bucket=cfg.s3_bucket, Key=key)
                continue
            except ClientError as exc:
                if not is_code(exc, "404", "NoSuchKey", "NotFound"):
                    raise
            changes.append(Change("s3:PutObject", f"arn:aws:s3:::{cfg.s3_bucket}/{key}",
                                  {"Bucket": cfg.s3_bucket, "Key": key, "File": rel, "SHA256": meta["sha256"]},
                                  previous={"Object": None}, reason="write-once copy of the evidence"))
        return changes

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        cfg = ctx.config.evidence
        assert ctx.evidence_dir is not None
        body = (ctx.evidence_dir / change.params["File"]).read_bytes()
        digest = hashlib.sha256(body).digest()
        if digest.hex() != change.params["SHA256"]:
            raise ClientError({"Error": {"Code": "EvidenceAltered",
                                         "Message": f"{change.params['File']} changed since it was hashed"}},
                              "PutObject")
        extra: dict[str, Any] = {}
        if cfg.object_lock_mode:
            extra = {"ObjectLockMode": cfg.object_lock_mode,
                     "ObjectLockRetainUntilDate": datetime.now(UTC) + timedelta(days=cfg.retention_days)}
        try:
            ctx.aws.home.client("s3").put_object(
                Bucket=change.params["Bucket"], Key=change.params["Key"], Body=body, IfNoneMatch="*",
                ChecksumAlgorithm="SHA256", ChecksumSHA256=base64.b64encode(digest).decode(), **extra)
        except ClientError as exc:
            if is_code(exc, "PreconditionFailed", "412"):
                return "already_done"
            raise
        return "applied"


# ------------------------------------------------------------------ capture

def capture(ctx: ActionContext, scope: dict[str, Any], bundle: Bundle) -> None:
    started = datetime.now(UTC)
    identity = retried(ctx.aws.client("sts").get_caller_identity)
    bundle.write("incident.json", ctx.incident.to_json())
    bundle.write("scope.json", scope)  # read before any change was made
    iam = ctx.aws.client("iam")
    jobs: list[tuple[str, Callable[[], None]]] = [
        ("iam:users", lambda: _users(ctx, iam, scope, bundle)),
        ("iam:groups-and-roles", lambda: _groups_and_roles(iam, scope, bundle)),
        ("ecs", lambda: _ecs(ctx, scope, bundle)),
        ("cloudtrail", lambda: _cloudtrail(ctx, scope, bundle)),
    ]
    ctx.fanout(lambda job: _guarded(bundle, *job), jobs)
    summary = _guarded(bundle, "iam:GetAccountSummary", lambda: retried(iam.get_account_summary)["SummaryMap"])
    if summary is not None:
        bundle.write("account-summary.json", summary)
    manifest = {
        "schema": "stanch.evidence/v1", "tool": f"stanch {__version__}", "run_id": ctx.run_id,
        "incident_id": ctx.incident.id, "account_id": ctx.incident.account_id,
        "collector": {"arn": identity.get("Arn"), "account": identity.get("Account"),
                      "user_id": identity.get("UserId")},
        "started_at": iso(started), "finished_at": iso(datetime.now(UTC)),
        "files": dict(sorted(bundle.files.items())), "gaps": bundle.gaps,
    }
    write_manifest(bundle.root, manifest)


def _guarded(bundle: Bundle, source: str, job: Callable[[], Any]) -> Any:
    """Run one capture job; if AWS still fails after every retry, the bundle records a gap for it
    instead of failing the step (the compute steps wait for evidence: a miner must not keep running
    because one Describe call was throttled)."""
    try:
        return job()
    except (ClientError, BotoCoreError) as exc:
        bundle.gap(source, f"{type(exc).__name__}: {exc}"[:300])
        return None


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    fd = os.open(root / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _safe(fn: Callable[..., Any], key: str | None = None, **kwargs: Any) -> Any:
    """fn(**kwargs)[key], or None when the entity is gone."""
    try:
        out = fn(**kwargs)
    except ClientError as exc:
        if is_code(exc, "NoSuchEntity"):
            return None
        raise
    return out[key] if key else out


def _policies(iam: Any, kind: str, name: str) -> dict[str, Any]:
    """Attached policy documents and inline policy documents of a user, group or role."""
    key = {"user": "UserName", "group": "GroupName", "role": "RoleName"}[kind]
    get_inline = getattr(iam, f"get_{kind}_policy")
    return {
        "attached_policies": [_policy_doc(iam, p["PolicyArn"]) for p in
                              paginate(iam, f"list_attached_{kind}_policies", "AttachedPolicies", **{key: name})],
        "inline_policies": {p: _safe(get_inline, "PolicyDocument", **{key: name, "PolicyName": p})
                            for p in paginate(iam, f"list_{kind}_policies", "PolicyNames", **{key: name})},
    }


def _users(ctx: ActionContext, iam: Any, scope: dict[str, Any], bundle: Bundle) -> None:
    """Users in scope, side by side. Login profile, MFA devices and groups were read by discovery before
    any change and are kept as `state_before_containment`; re-reading them here would race with containment."""

    def one(u: dict[str, Any]) -> None:
        name = u["name"]
        user = _safe(iam.get_user, "User", UserName=name)
        if user is None:
            bundle.gap(f"iam:user/{name}", "the user no longer exists")
            return

        def with_last_use(k: dict[str, Any]) -> dict[str, Any]:
            last = _safe(iam.get_access_key_last_used, AccessKeyId=k["AccessKeyId"])
            return {**k, "LastUsed": (last or {}).get("AccessKeyLastUsed")}

        keys = ctx.fanout(with_last_use, list(paginate(iam, "list_access_keys", "AccessKeyMetadata", UserName=name)))
        bundle.write(f"iam/users/{name}.json", {
            "user": user, "access_keys": keys, **_policies(iam, "user", name), "state_before_containment": u,
        })

    ctx.fanout(one, scope.get("users", []))


def _groups_and_roles(iam: Any, scope: dict[str, Any], bundle: Bundle) -> None:
    for g in scope.get("groups", []):
        name = g["name"]
        group = _safe(iam.get_group, GroupName=name)
        if group is None:
            bundle.gap(f"iam:group/{name}", "the group no longer exists")
            continue
        bundle.write(f"iam/groups/{name}.json", {
            "group": group["Group"], "members": [m["UserName"] for m in group.get("Users", [])],
            **_policies(iam, "group", name),
        })
    for r in scope.get("roles", []):
        name = r["name"]
        role = _safe(iam.get_role, "Role", RoleName=name)
        if role is None:
            bundle.gap(f"iam:role/{name}", "the role no longer exists")
            continue
        bundle.write(f"iam/roles/{name}.json", {"role": role, **_policies(iam, "role", name)})


def _ecs(ctx: ActionContext, scope: dict[str, Any], bundle: Bundle) -> None:
    by_cluster: dict[tuple[str, str], dict[str, list[Any]]] = {}
    for s in scope.get("ecs_services", []):
        by_cluster.setdefault((s["region"], s["cluster"]), {"services": [], "tasks": []})["services"].append(s)
    for t in scope.get("ecs_tasks", []):
        by_cluster.setdefault((t["region"], t["cluster"]), {"services": [], "tasks": []})["tasks"].append(t)
    for (region, cluster), items in sorted(by_cluster.items()):
        ecs = ctx.aws.client("ecs", region)
        names = [s["name"] for s in items["services"]]
        services = []
        for i in range(0, len(names), 10):
            services += ecs.describe_services(cluster=cluster, services=names[i:i + 10])["services"]
        task_arns = [t["arn"] for t in items["tasks"]]
        tasks = []
        for i in range(0, len(task_arns), 100):
            tasks += ecs.describe_tasks(cluster=cluster, tasks=task_arns[i:i + 100])["tasks"]
        td_arns = sorted({s["taskDefinition"] for s in services} | {t["taskDefinitionArn"] for t in tasks})
        defs = [ecs.describe_task_definition(taskDefinition=a)["taskDefinition"] for a in td_arns]
        bundle.write(f"ecs/{region}/{cluster}.json", {
            "cluster": (ecs.describe_clusters(clusters=[cluster])["clusters"] or [None])[0],
            "services": services, "tasks": tasks, "task_definitions": defs,
        })


#: a transient failure of an evidence read (after botocore's own retries) is tried this many times
EVIDENCE_READ_TRIES = 3
_sleep = time.sleep  # tests replace it


def _transient(exc: ClientError | BotoCoreError) -> bool:
    """Throttling and dropped connections pass; an API answering 5xx after botocore's retries is down
    (or, in an emulator, missing): asking again only delays the steps that wait for the evidence."""
    if isinstance(exc, ClientError):
        return is_code(exc, *THROTTLING_CODES)
    return isinstance(exc, HTTPClientError | ConnectionError)


def retried(call: Callable[..., Any], **kwargs: Any) -> Any:
    """call(**kwargs), tried again (with a pause) when still throttled or cut off after botocore's retries."""
    for attempt in range(1, EVIDENCE_READ_TRIES + 1):
        try:
            return call(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            if attempt == EVIDENCE_READ_TRIES or not _transient(exc):
                raise
            _sleep(min(2.0 ** attempt, 8.0))
    raise AssertionError("unreachable")  # pragma: no cover


def _lookup_events(ct: Any, start: datetime, key: str, value: str) -> list[dict[str, Any]]:
    """Every LookupEvents page for one attribute; each page is retried on its own."""
    events: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"StartTime": start,
                                  "LookupAttributes": [{"AttributeKey": key, "AttributeValue": value}]}
        if token:
            kwargs["NextToken"] = token
        page = retried(ct.lookup_events, **kwargs)
        events += page.get("Events", [])
        token = page.get("NextToken")
        if not token:
            return events


def _cloudtrail(ctx: ActionContext, scope: dict[str, Any], bundle: Bundle) -> None:
    inc = ctx.incident
    start = (inc.window_start_dt or datetime.now(UTC) - timedelta(days=1)) - timedelta(
        minutes=ctx.config.evidence.lookback_minutes)
    lookups = [("AccessKeyId", k["id"]) for k in scope.get("access_keys", [])]
    lookups += [("Username", u["name"]) for u in scope.get("users", [])]
    root_key = (scope.get("root") or {}).get("access_key_id")
    if root_key:
        lookups.append(("AccessKeyId", root_key))
    events: list[dict[str, Any]] = []
    ct = ctx.aws.client("cloudtrail")
    for key, value in lookups:
        try:
            found = _lookup_events(ct, start, key, value)
        # LookupEvents can be unavailable (permissions, region, an emulator such as moto): a gap, not a failure
        except (ClientError, BotoCoreError, NotImplementedError) as exc:
            bundle.gap("cloudtrail:LookupEvents", f"{key}={value}: {type(exc).__name__}: {exc}"[:300])
            if isinstance(exc, NotImplementedError) or not (isinstance(exc, ClientError | BotoCoreError)
                                                            and _transient(exc)):
                break  # every other lookup would meet the same refusal
            continue  # still throttled after every retry: the next lookups may get through
        events += [{**e, "CloudTrailEvent": json.loads(e["CloudTrailEvent"])
                    if isinstance(e.get("CloudTrailEvent"), str) else e.get("CloudTrailEvent")} for e in found]
    bundle.write("cloudtrail/lookup-events.json", {"start": iso(start), "lookups": lookups, "events": events})
    if inc.evidence:
        bundle.write("cloudtrail/incident-events.json", [e.model_dump(mode="json") for e in inc.evidence])


class PostureParams(Params):
    pass


@register
class RecordPosture(Action[PostureParams]):
    """After containment: the account facts the report's hardening section needs (root MFA and keys,
    users without MFA, old or unused keys, AdministratorAccess holders, EventBridge monitoring),
    added to this run's evidence bundle and its manifest."""

    name = "evidence.posture"
    summary = "Record the account's security posture after containment into the evidence bundle (read-only)"
    params_model = PostureParams
    permissions = ("iam:ListUsers", "iam:ListAccessKeys", "iam:GetAccessKeyLastUsed", "iam:ListMFADevices",
                   "iam:ListEntitiesForPolicy", "iam:GetAccountSummary", "events:ListRules")
    risk = "read-only"

    def plan(self, ctx: ActionContext, params: PostureParams) -> Plan:
        root = ctx.evidence_dir
        if root is None or not (root / MANIFEST).exists():
            return Plan(notes=["no evidence bundle for this run: posture not recorded"])
        manifest = json.loads((root / MANIFEST).read_text())
        if "posture.json" not in manifest["files"]:
            bundle = Bundle(root)
            _posture(ctx, bundle)
            bundle.write("account-summary-after.json", ctx.aws.client("iam").get_account_summary()["SummaryMap"])
            manifest["files"] = dict(sorted({**manifest["files"], **bundle.files}.items()))
            manifest["gaps"] = [*manifest.get("gaps", []), *bundle.gaps]
            manifest["posture_read_at"] = iso(datetime.now(UTC))
            write_manifest(root, manifest)
        return Plan(outputs={"path": str(root), "manifest_sha256": sha256_file(root / MANIFEST),
                             "files": len(manifest["files"])})


def _posture(ctx: ActionContext, bundle: Bundle) -> None:
    """Facts for the report's hardening section: MFA, key age and use, admin holders, monitoring."""
    iam = ctx.aws.client("iam")

    def key_facts(k: dict[str, Any]) -> dict[str, Any]:
        last = _safe(iam.get_access_key_last_used, AccessKeyId=k["AccessKeyId"]) or {}
        return {"id": k["AccessKeyId"], "status": k["Status"], "created": iso(k.get("CreateDate")),
                "last_used": iso(last.get("AccessKeyLastUsed", {}).get("LastUsedDate"))}

    def user_facts(u: dict[str, Any]) -> dict[str, Any]:
        name = u["UserName"]
        reads: list[Callable[[], Any]] = [
            lambda: list(paginate(iam, "list_access_keys", "AccessKeyMetadata", UserName=name)),
            lambda: bool(list(paginate(iam, "list_mfa_devices", "MFADevices", UserName=name)))]
        metas, mfa = ctx.fanout(lambda read: read(), reads)
        return {"name": name, "created": iso(u.get("CreateDate")), "keys": ctx.fanout(key_facts, metas), "mfa": mfa}

    def admin_holders() -> dict[str, list[str]]:
        admins: dict[str, list[str]] = {"users": [], "groups": [], "roles": []}
        for arn in ctx.config.discovery.admin_policy_arns:
            ents = _safe(iam.list_entities_for_policy, PolicyArn=arn) or {}
            admins["users"] += [e["UserName"] for e in ents.get("PolicyUsers", [])]
            admins["groups"] += [e["GroupName"] for e in ents.get("PolicyGroups", [])]
            admins["roles"] += [e["RoleName"] for e in ents.get("PolicyRoles", [])]
        return admins

    def eventbridge_rules() -> list[dict[str, Any]]:
        try:
            return [{"name": r.get("Name"), "state": r.get("State"), "pattern": r.get("EventPattern")}
                    for r in paginate(ctx.aws.client("events"), "list_rules", "Rules")]
        except ClientError as exc:
            bundle.gap("events:ListRules", str(exc)[:300])
            return []

    # every user (and each of their keys), the admin holders and the rules, read side by side
    admins_read = ctx.fanout_pool.submit(admin_holders)
    rules_read = ctx.fanout_pool.submit(eventbridge_rules)
    users = ctx.fanout(user_facts, list(paginate(iam, "list_users", "Users")))
    admins, rules = admins_read.result(), rules_read.result()
    bundle.write("posture.json", {"users": users, "admin_holders": admins, "eventbridge_rules": rules,
                                  "read_at": iso(datetime.now(UTC))})
