"""Detector intake: whatever form a detection arrives in (native incident, GuardDuty finding,
Security Hub ASFF finding, CloudTrail records), it becomes the same validated incident.

A finding is checked against its schema (runner/findings.py) before any of it is used, and its
window against `[discovery] max_window_days` (`settle_window`). Every parser reports malformed
input as InputError with the path of the problem; nothing here talks to AWS.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from runner.config import Config
from runner.errors import InputError, Problem
from runner.findings import (
    asff_problems,
    envelope_problems,
    guardduty_finding_id,
    guardduty_problems,
    json_path,
    timestamp_text,
)
from runner.incident import (
    Incident,
    parse_json_document,
    parse_time,
    read_source,
    validate_incident,
)

_KEY_ID = re.compile(r"^(AKIA|ASIA)[A-Z0-9]{12,124}$")
_IAM_NAME = re.compile(r"^[\w+=,.@-]{1,128}$")
_ECS_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


@dataclass(frozen=True)
class IntakeOptions:
    allow_sample: bool = False
    allow_archived: bool = False


class Doc:
    """Typed, path-tracking access to untrusted JSON. Wrong types read as missing. `pascal` names
    paths as boto3 does (the value itself has been converted to camelCase)."""

    def __init__(self, label: str, value: Any, path: str = "", pascal: bool = False) -> None:
        self.label, self.value, self.path, self.pascal = label, value, path, pascal

    def at(self, *keys: str | int) -> Doc:
        cur, path = self.value, self.path
        for key in keys:
            path = json_path(path, key, pascal=self.pascal)
            if isinstance(key, int):
                cur = cur[key] if isinstance(cur, list) and -len(cur) <= key < len(cur) else None
            else:
                cur = cur.get(key) if isinstance(cur, dict) else None
        return Doc(self.label, cur, path, self.pascal)

    def string(self) -> str:
        return self.value if isinstance(self.value, str) else ""

    def text(self, default: str | None = None) -> str | None:
        return self.value if isinstance(self.value, str) and self.value else default

    def need_str(self) -> str:
        if not isinstance(self.value, str) or not self.value:
            what = "missing" if self.value is None else f"not a string ({type(self.value).__name__})"
            raise InputError(self.label, [Problem(self.path, f"required field is {what}")])
        return self.value

    def list(self) -> list[Doc]:
        return [Doc(self.label, v, f"{self.path}[{i}]", self.pascal) for i, v in enumerate(self.value)] \
            if isinstance(self.value, list) else []

    def dict(self) -> dict[str, Any]:
        return self.value if isinstance(self.value, dict) else {}

    def truthy(self) -> bool:
        return self.value is True or (isinstance(self.value, str) and self.value.lower() == "true")


# ------------------------------------------------------------------ format detection
# Enough of a finding's own keys to know what it is meant to be, so that one missing required
# field is reported by name instead of as an unrecognised document.
_GUARDDUTY_KEYS = {"schemaVersion", "accountId", "region", "partition", "arn", "type", "resource", "service"}
_GUARDDUTY_PASCAL_KEYS = {k[:1].upper() + k[1:] for k in _GUARDDUTY_KEYS}
_ASFF_KEYS = {"ProductArn", "AwsAccountId", "GeneratorId", "Types", "Resources", "ProductFields"}


def _looks_like(doc: dict[str, Any], keys: set[str]) -> bool:
    return len(keys & set(doc)) >= 3


def detect_format(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "unknown"
    if {"kind", "account_id", "schema", "detected_at", "principals"} & set(doc):
        return "native"  # validated strictly: a typo in one field gets its own message
    detail_type = doc.get("detail-type")
    if detail_type == "GuardDuty Finding":
        return "guardduty-eventbridge"
    if (isinstance(detail_type, str) and detail_type.startswith("Security Hub Finding")) or (
            doc.get("source") == "aws.securityhub" and isinstance(doc.get("detail"), dict)):
        return "securityhub-eventbridge"
    if detail_type == "AWS API Call via CloudTrail":
        return "cloudtrail-eventbridge"
    if isinstance(doc.get("Records"), list):
        return "cloudtrail-records"
    if "eventName" in doc and "eventSource" in doc:
        return "cloudtrail-record"
    if isinstance(doc.get("Findings"), list) and doc["Findings"] and isinstance(doc["Findings"][0], dict):
        first = doc["Findings"][0]
        return "asff-list" if "ProductArn" in first or _looks_like(first, _ASFF_KEYS) else "guardduty-boto3"
    if ("ProductArn" in doc and "AwsAccountId" in doc) or _looks_like(doc, _ASFF_KEYS):
        return "asff"
    if ("type" in doc and "resource" in doc and "accountId" in doc) or _looks_like(doc, _GUARDDUTY_KEYS):
        return "guardduty"
    if ("Type" in doc and "Resource" in doc and "AccountId" in doc) or _looks_like(doc, _GUARDDUTY_PASCAL_KEYS):
        return "guardduty-boto3"
    return "unknown"


def read_document(source: str) -> tuple[str, Any]:
    """A JSON document from a path or - (stdin), plain or gzipped, with the label to report it by."""
    label, data = read_source(source)
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise InputError(label, [Problem("", f"not a valid gzip file: {exc}")]) from None
    return label, parse_json_document(label, data)


def load_any(source: str, config: Config, options: IntakeOptions = IntakeOptions()) -> Incident:
    """Read `source` (path or -), detect its format, and return the validated native incident."""
    label, doc = read_document(source)
    return to_incident(label, doc, config, options)


def to_incident(label: str, doc: Any, config: Config, options: IntakeOptions = IntakeOptions()) -> Incident:
    fmt = detect_format(doc)
    if fmt == "native":
        return validate_incident(label, doc)
    if fmt == "guardduty-eventbridge":
        detail = Doc(label, doc).at("detail")
        if problems := envelope_problems(doc, [(detail.path, detail.value)]):
            raise InputError(label, problems + guardduty_problems(detail.value, detail.path))
        return guardduty_incident(label, [detail], config, options)
    if fmt == "guardduty":
        return guardduty_incident(label, [Doc(label, doc)], config, options)
    if fmt == "guardduty-boto3":
        if "Findings" in doc:
            findings = [Doc(label, camel(f), f"Findings[{i}]", pascal=True) for i, f in enumerate(doc["Findings"])]
        else:
            findings = [Doc(label, camel(doc), pascal=True)]
        return guardduty_incident(label, findings, config, options)
    if fmt == "securityhub-eventbridge":
        return asff_incident(label, Doc(label, doc).at("detail", "findings").list(), config, options)
    if fmt == "asff-list":
        return asff_incident(label, Doc(label, doc).at("Findings").list(), config, options)
    if fmt == "asff":
        return asff_incident(label, [Doc(label, doc)], config, options)
    if fmt in ("cloudtrail-records", "cloudtrail-eventbridge", "cloudtrail-record"):
        from runner.attribution.records import records_of
        from runner.detect import detect_chain

        chain = detect_chain(records_of(label, doc), config)
        if chain.incident is None:
            raise InputError(label, [Problem("", f"no attack chain found in {chain.records} CloudTrail records "
                                                 "(no root credential use followed by identity changes); "
                                                 "`stanch detect FILE` shows what was seen")])
        return chain.incident
    raise InputError(label, [Problem("", "unrecognised input: expected a native incident (kind, account_id), a "
                                         "GuardDuty finding (EventBridge 'GuardDuty Finding', bare, or boto3 "
                                         "get_findings), a Security Hub finding (ASFF or 'Security Hub Findings' "
                                         "event), or CloudTrail records (Records[] or 'AWS API Call via CloudTrail')")])


# ------------------------------------------------------------------ the incident window

def settle_window(incident: Incident, config: Config, window_start: str | None = None) -> Incident:
    """The window a run acts on. `window_start` (the `--window-start` option, RFC 3339) is the
    responder's own choice and replaces the incident's, wider or narrower. Otherwise a window that
    starts more than `[discovery] max_window_days` before detection is refused: everything created
    since would become a suspect, and a detector's first-seen time alone is not enough for that."""
    detected = parse_time(incident.detected_at)
    if window_start is not None:
        try:
            start = parse_time(window_start)
        except ValueError as exc:
            raise InputError("--window-start", [Problem("--window-start", str(exc))]) from None
        if start > detected:
            raise InputError("--window-start", [Problem("--window-start", f"{window_start} is after the incident was "
                                                                          f"detected ({incident.detected_at})")])
        doc = incident.to_json()
        doc["window_start"] = window_start
        return validate_incident("incident with --window-start", doc)
    if incident.window_start is None:
        return incident
    span = detected - parse_time(incident.window_start)
    limit = config.discovery.max_window_days
    if span > timedelta(days=limit):
        days = span / timedelta(days=1)
        raise InputError("incident", [Problem("window_start", (
            f"the incident window starts {days:.1f} days before detection ({incident.window_start} to "
            f"{incident.detected_at}), more than [discovery] max_window_days = {limit:g} ({config.source}). "
            "Everything created in that time would be a suspect. Pass --window-start TIME (RFC 3339, e.g. "
            "2026-11-20T09:58:00Z) with the earliest activity you have evidence for, or raise max_window_days "
            "in the config"))])
    return incident


# ------------------------------------------------------------------ shared helpers

_PASCAL_RENAMES = {"TaskCreatedAt": "createdAt"}


def camel(value: Any) -> Any:
    """boto3's PascalCase GuardDuty members to the EventBridge camelCase names."""
    if isinstance(value, dict):
        return {(_PASCAL_RENAMES.get(k) or (k[:1].lower() + k[1:]) if isinstance(k, str) else k): camel(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [camel(v) for v in value]
    return value


def rfc3339(label: str, doc: Doc) -> str | None:
    """A timestamp in RFC 3339 with a zone, from ISO strings, boto3 datetimes or epoch milliseconds."""
    if doc.value is None:
        return None
    try:
        return timestamp_text(doc.value)
    except ValueError as exc:
        raise InputError(label, [Problem(doc.path, str(exc))]) from None


def severity_from_score(score: Any) -> str | None:
    if isinstance(score, bool) or not isinstance(score, int | float | str):
        return None
    try:
        s = float(score)
    except ValueError:
        return None
    return "critical" if s >= 9 else "high" if s >= 7 else "medium" if s >= 4 else "low"


def kind_for(types: list[str], config: Config) -> str:
    for t in types:
        for pattern, kind in config.intake.kinds.items():
            if fnmatch.fnmatchcase(t, pattern):
                return kind
    return "unclassified"


def short_id(prefix: str, raw: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._:-]", "", raw)[:48]
    return f"{prefix}-{clean or hashlib.sha256(raw.encode()).hexdigest()[:16]}"


class _Builder:
    def __init__(self) -> None:
        self.principals: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self.images: list[str] = []

    def principal(self, item: dict[str, Any]) -> None:
        if item not in self.principals:
            self.principals.append(item)

    def resource(self, item: dict[str, Any]) -> None:
        if item not in self.resources:
            self.resources.append(item)

    def image(self, image: str | None) -> None:
        if image and image not in self.images:
            self.images.append(image)

    def key(self, key_id: str | None, user_type: str | None, name: str | None) -> None:
        """An access key and the principal behind it (Root, IAMUser, AssumedRole/Role)."""
        kid = key_id if key_id and _KEY_ID.match(key_id) else None
        ut = (user_type or "").lower()
        if ut == "root":
            self.principal({"type": "root", **({"access_key_id": kid} if kid else {})})
            return
        if kid and kid.startswith("AKIA"):
            self.principal({"type": "access_key", "id": kid})
        if name and _IAM_NAME.match(name):
            if ut in ("iamuser", "user"):
                self.principal({"type": "user", "name": name})
            elif ut in ("assumedrole", "role"):
                self.principal({"type": "role", "name": name})


class _Findings(_Builder):
    """What several findings of one detector say, merged into one incident."""

    RANK = ("low", "medium", "high", "critical")

    def __init__(self) -> None:
        super().__init__()
        self.types: list[str] = []
        self.accounts: set[str] = set()
        self.regions: set[str] = set()
        self.first_seen: list[str] = []
        self.updated: list[str] = []
        self.severities: list[str] = []

    def incident(self, label: str, *, prefix: str, raw_id: str, title: str | None, fmt: str,
                 source_id: str | None, config: Config) -> Incident:
        if len(self.accounts) > 1:
            raise InputError(label, [Problem("", f"findings from several accounts ({', '.join(sorted(self.accounts))});"
                                                 " give them one account at a time")])
        if not self.regions:
            raise InputError(label, [Problem("Region", "no region in the finding")])
        doc = {
            "id": short_id(prefix, raw_id or ",".join(self.types)),
            "kind": kind_for(self.types, config), "account_id": self.accounts.pop(), "region": sorted(self.regions)[0],
            "detected_at": max(self.updated) if self.updated else datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "window_start": min(self.first_seen) if self.first_seen else None,
            "severity": max(self.severities, key=self.RANK.index) if self.severities else None,
            "summary": (title or self.types[0])[:4000],
            "principals": self.principals, "resources": self.resources,
            "indicators": {"images": self.images} if self.images else {},
            "source": {"format": fmt, "id": source_id, "types": self.types},
        }
        return validate_incident(label, {k: v for k, v in doc.items() if v not in (None, [], {})})


# ------------------------------------------------------------------ GuardDuty

def guardduty_incident(label: str, findings: list[Doc], config: Config, options: IntakeOptions) -> Incident:
    if not findings:
        raise InputError(label, [Problem("", "no findings in the document")])
    if problems := [p for f in findings for p in guardduty_problems(f.value, f.path, pascal=f.pascal)]:
        raise InputError(label, problems)
    b = _Findings()
    for f in findings:
        ftype = f.at("type").need_str()
        b.types.append(ftype)
        if f.at("service", "additionalInfo", "sample").truthy() and not options.allow_sample:
            raise InputError(label, [Problem(f.at("service", "additionalInfo", "sample").path,
                                             f"{ftype} is a GuardDuty sample finding; refusing to act on it "
                                             "(pass --allow-sample to run it anyway, e.g. in a drill)")])
        if f.at("service", "archived").truthy() and not options.allow_archived:
            raise InputError(label, [Problem(f.at("service", "archived").path,
                                             "the finding is archived; pass --allow-archived to act on it")])
        b.accounts.add(f.at("accountId").need_str())
        b.regions.add(f.at("region").need_str())
        if seen := rfc3339(label, f.at("service", "eventFirstSeen")):
            b.first_seen.append(seen)
        upd = rfc3339(label, f.at("updatedAt")) or rfc3339(label, f.at("createdAt"))
        if upd:
            b.updated.append(upd)
        if (sev := severity_from_score(f.at("severity").value)) is not None:
            b.severities.append(sev)
        res = f.at("resource")
        akd = res.at("accessKeyDetails")
        b.key(akd.at("accessKeyId").text(), akd.at("userType").text(), akd.at("userName").text())
        ecs = res.at("ecsClusterDetails")
        cluster = ecs.at("name").text() or (ecs.at("arn").text() or "").rsplit("/", 1)[-1] or None
        if cluster and _ECS_NAME.match(cluster):
            b.resource({"type": "ecs_cluster", "name": cluster})
            task_arn = ecs.at("taskDetails", "arn").text()
            if task_arn:
                b.resource({"type": "ecs_task", "cluster": cluster, "arn": task_arn})
            group = ecs.at("taskDetails", "group").text() or ""
            if group.startswith("service:") and _ECS_NAME.match(group[8:]):
                b.resource({"type": "ecs_service", "cluster": cluster, "name": group[8:]})
        for c in ecs.at("taskDetails", "containers").list():
            b.image(c.at("image").text())
        b.image(res.at("containerDetails", "image").text())
        for c in res.at("eksWorkloadDetails", "containers").list():
            b.image(c.at("image").text())
    first = findings[0]
    return b.incident(label, prefix="GD", raw_id=first.at("id").string(), title=first.at("title").text(),
                      fmt="guardduty", source_id=first.at("arn").text() or first.at("id").text(), config=config)


# ------------------------------------------------------------------ Security Hub (ASFF)

def guardduty_type_from_asff(types: list[str]) -> str | None:
    """`TTPs/Discovery/Recon:IAMUser-MaliciousIPCaller` -> `Recon:IAMUser/MaliciousIPCaller`."""
    for t in types:
        parts = t.split("/")
        start = next((i for i, p in enumerate(parts) if ":" in p), None)
        if start is None:
            continue
        found = "/".join(parts[start:])
        if "/" in found:  # some ASFF types keep GuardDuty's slash
            return found
        purpose, rest = found.split(":", 1)
        return f"{purpose}:{rest.replace('-', '/', 1)}" if "-" in rest else found
    return None


def asff_incident(label: str, findings: list[Doc], config: Config, options: IntakeOptions) -> Incident:
    if not findings:
        raise InputError(label, [Problem("detail.findings", "no findings in the event")])
    if problems := [p for f in findings for p in asff_problems(f.value, f.path)]:
        raise InputError(label, problems)
    b = _Findings()
    for f in findings:
        product = f.at("ProductArn").need_str()
        pf = f.at("ProductFields").dict()
        raw_types = [t.value for t in f.at("Types").list() if isinstance(t.value, str)]
        from_gd = product.endswith("aws/guardduty") or pf.get("aws/securityhub/ProductName") == "GuardDuty"
        ftype = (guardduty_type_from_asff(raw_types) if from_gd else None) or (raw_types[0] if raw_types else None)
        if not ftype:
            raise InputError(label, [Problem(f.at("Types").path, "no finding type in Types[]")])
        b.types.append(ftype)
        sample = any(k.endswith("sample") and str(v).lower() == "true" for k, v in pf.items()) or \
            '"sample":true' in str(pf.get("additionalInfo", "")).replace(" ", "")
        if sample and not options.allow_sample:
            raise InputError(label, [Problem(f.at("ProductFields").path,
                                             f"{ftype} is a sample finding; pass --allow-sample to act on it")])
        state = f.at("RecordState").string()
        workflow = f.at("Workflow", "Status").string() or f.at("WorkflowState").string()
        if (state == "ARCHIVED" or workflow == "SUPPRESSED" or str(pf.get("archived", "")).lower() == "true") \
                and not options.allow_archived:
            raise InputError(label, [Problem(f.at("RecordState").path, f"the finding is archived or suppressed "
                                             f"(RecordState={state or '-'}, Workflow={workflow or '-'}); "
                                             "pass --allow-archived to act on it")])
        b.accounts.add(f.at("AwsAccountId").need_str())
        resource_regions = [r.at("Region").text() for r in f.at("Resources").list() if r.at("Region").text()]
        region = f.at("Region").text() or (resource_regions[0] if resource_regions else None) or \
            (product.split(":")[3] if product.count(":") >= 4 else None)
        if region:
            b.regions.add(region)
        if seen := rfc3339(label, f.at("FirstObservedAt")) or rfc3339(label, f.at("CreatedAt")):
            b.first_seen.append(seen)
        if upd := rfc3339(label, f.at("UpdatedAt")) or rfc3339(label, f.at("CreatedAt")):
            b.updated.append(upd)
        label_sev = (f.at("Severity", "Label").text() or "").lower()
        normalized = f.at("Severity", "Normalized").value
        if label_sev in ("low", "medium", "high", "critical"):
            b.severities.append(label_sev)
        elif isinstance(normalized, int | float) and not isinstance(normalized, bool):
            b.severities.append(severity_from_score(normalized / 10) or "low")
        for r in f.at("Resources").list():
            _asff_resource(r, b)
    first = findings[0]
    # a GuardDuty finding's Security Hub copy is the same incident as the finding itself
    guardduty_id = guardduty_finding_id(first.dict())
    prefix, raw_id = ("GD", guardduty_id) if guardduty_id else ("SH", first.at("Id").string().rsplit("/", 1)[-1])
    return b.incident(label, prefix=prefix, raw_id=raw_id, title=first.at("Title").text(), fmt="securityhub",
                      source_id=first.at("Id").text(), config=config)


def _asff_resource(r: Doc, b: _Builder) -> None:
    rtype = (r.at("Type").text() or "").lower()
    rid = r.at("Id").text() or ""
    details = r.at("Details")
    if rtype == "awsiamaccesskey":
        d = details.at("AwsIamAccessKey")
        key_id = d.at("AccessKeyId").text() or (rid.split("AccessKey:", 1)[1] if "AccessKey:" in rid else None)
        ptype = d.at("PrincipalType").text() or ("IAMUser" if d.at("UserName").text() else None)
        name = d.at("PrincipalName").text() or d.at("UserName").text()
        if ptype is None and d.at("PrincipalId").text() and d.at("PrincipalId").string().isdigit():
            ptype = "Root"
        b.key(key_id, ptype, name)
    elif rtype == "awsiamuser":
        name = details.at("AwsIamUser", "UserName").text() or (rid.rsplit("/", 1)[-1] if ":user/" in rid else None)
        if name and _IAM_NAME.match(name):
            b.principal({"type": "user", "name": name})
    elif rtype == "awsiamrole":
        name = details.at("AwsIamRole", "RoleName").text() or (rid.rsplit("/", 1)[-1] if ":role/" in rid else None)
        if name and _IAM_NAME.match(name):
            b.principal({"type": "role", "name": name})
    elif rtype == "awsiamgroup":
        name = details.at("AwsIamGroup", "GroupName").text()
        if name and _IAM_NAME.match(name):
            b.principal({"type": "group", "name": name})
    elif rtype == "awsecscluster":
        name = details.at("AwsEcsCluster", "ClusterName").text() or rid.rsplit("/", 1)[-1]
        if name and _ECS_NAME.match(name):
            b.resource({"type": "ecs_cluster", "name": name})
    elif rtype == "awsecsservice":
        svc = details.at("AwsEcsService")
        cluster = (svc.at("Cluster").text() or "").rsplit("/", 1)[-1]
        name = svc.at("ServiceName").text() or svc.at("Name").text() or rid.rsplit("/", 1)[-1]
        if cluster and name and _ECS_NAME.match(cluster) and _ECS_NAME.match(name):
            b.resource({"type": "ecs_service", "cluster": cluster, "name": name})
    elif rtype == "awsecstask":
        task = details.at("AwsEcsTask")
        cluster_arn = task.at("ClusterArn").text() or ""
        parts = cluster_arn.split("/")
        cluster = parts[1] if ":task/" in cluster_arn and len(parts) > 2 else cluster_arn.rsplit("/", 1)[-1]
        if cluster and _ECS_NAME.match(cluster) and rid:
            b.resource({"type": "ecs_task", "cluster": cluster, "arn": rid})
        group = task.at("Group").text() or ""
        if cluster and group.startswith("service:") and _ECS_NAME.match(group[8:]) and _ECS_NAME.match(cluster):
            b.resource({"type": "ecs_service", "cluster": cluster, "name": group[8:]})
        containers = task.at("Containers")
        for c in containers.list() or [containers]:
            b.image(c.at("Image").text())
    elif rtype == "awsecstaskdefinition":
        for c in details.at("AwsEcsTaskDefinition", "ContainerDefinitions").list():
            b.image(c.at("Image").text())
    elif rtype == "awsecscontainer":
        b.image(details.at("AwsEcsContainer", "Image").text())
    elif rtype == "container":
        b.image(details.at("Container", "ImageName").text())


def read_records(sources: list[str]) -> list[dict[str, Any]]:
    """CloudTrail records from trail files (plain or gzipped JSON) and EventBridge events."""
    from runner.attribution.sources import read_trail_files

    return read_trail_files(sources)[0]


def merge_cloudtrail(incident: Incident, records: list[dict[str, Any]]) -> Incident:
    """Add what CloudTrail attributes to the incident's compromised credentials to its evidence
    (discovery reads the same records and decides scope from the attribution graph)."""
    from runner.attribution.graph import attribute
    from runner.detect import evidence_item, seeds_of

    accounts = {str(r.get("recipientAccountId")) for r in records if isinstance(r.get("recipientAccountId"), str)}
    if accounts and incident.account_id not in accounts:
        raise InputError("--cloudtrail", [Problem("recipientAccountId", f"the trail is for account(s) "
                                                                        f"{', '.join(sorted(accounts))}, the "
                                                                        f"incident for {incident.account_id}")])
    graph = attribute(records, seeds_of(incident))
    doc = incident.to_json()
    known = {e.get("event_id") for e in doc.get("evidence", []) if e.get("event_id")}
    added = [evidence_item(e) for e in graph.edges if not e.event_id or e.event_id not in known]
    doc["evidence"] = [*doc.get("evidence", []), *[{k: v for k, v in e.items() if v is not None} for e in added]][:5000]
    return validate_incident("incident + cloudtrail", doc)
