"""CloudTrail records: where they come from in a document, who made them, when, and whether they
changed anything."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from runner.errors import InputError, Problem
from runner.incident import parse_time

#: the fields of a record that attribution, the plan and the report use (the rest is dropped)
KEPT_FIELDS = ("eventID", "eventTime", "eventSource", "eventName", "awsRegion", "sourceIPAddress", "userAgent",
               "userIdentity", "requestParameters", "responseElements", "recipientAccountId", "errorCode")

#: reads that expose a secret's value: attributed, they are reported as exposed
SECRET_READS = frozenset({"GetSecretValue", "BatchGetSecretValue", "GetParameter", "GetParameters",
                          "GetParametersByPath", "GetPasswordData"})
_READ_PREFIXES = ("Get", "List", "Describe", "Head", "Lookup", "Search", "Select", "Scan", "Query", "BatchGet",
                  "Check", "Validate", "Simulate", "Estimate", "Preview", "Test", "View", "Download")


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


def event_time(r: dict[str, Any]) -> datetime | None:
    t = r.get("eventTime")
    if not isinstance(t, str):
        return None
    try:
        return parse_time(t)
    except ValueError:
        return None


def params(r: dict[str, Any], key: str = "requestParameters") -> dict[str, Any]:
    v = r.get(key)
    return v if isinstance(v, dict) else {}


def identity(r: dict[str, Any]) -> dict[str, Any]:
    ui = r.get("userIdentity")
    return ui if isinstance(ui, dict) else {}


def actor_of(r: dict[str, Any]) -> tuple[str, str]:
    """(kind, name) of who made a call: ("root", account), ("user", name), ("role", name),
    ("federated", arn), or (type, arn) for anything else."""
    ui = identity(r)
    if not ui:
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
        arn = str(ui.get("arn", ""))
        return "role", str(name or (arn.split("/")[1] if arn.count("/") >= 2 else arn))
    if utype == "FederatedUser":
        return "federated", str(ui.get("arn") or "")
    return utype.lower() or "unknown", str(ui.get("arn") or ui.get("principalId") or "")


def actor_label(r: dict[str, Any]) -> str:
    kind, name = actor_of(r)
    return f"{kind}:{name}" if name else kind


def actor_arn(r: dict[str, Any]) -> str:
    ui = identity(r)
    return str(ui.get("arn") or "")


def failed(r: dict[str, Any]) -> bool:
    if r.get("errorCode"):
        return True
    resp = r.get("responseElements")
    return isinstance(resp, dict) and resp.get("ConsoleLogin") == "Failure"


#: calls that obtain credentials: not writes, but what they return joins the compromised set
SESSION_CALLS = frozenset({"AssumeRole", "AssumeRoleWithSAML", "AssumeRoleWithWebIdentity", "GetSessionToken",
                           "GetFederationToken", "AssumeRoot"})


def is_read(name: str) -> bool:
    """A call that changes nothing and hands out nothing (by its name)."""
    if name in SECRET_READS or name in SESSION_CALLS:
        return False
    return name.startswith(_READ_PREFIXES) or name in ("ConsoleLogin", "GetCallerIdentity")


#: fields whose values are credentials: never kept (STS responses carry session tokens)
SECRET_FIELDS = frozenset({"sessionToken", "secretAccessKey", "password", "newPassword", "oldPassword",
                           "SessionToken", "SecretAccessKey", "Password"})


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<redacted>" if k in SECRET_FIELDS else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def kept(r: dict[str, Any]) -> dict[str, Any]:
    """The record trimmed to the fields stanch uses (smaller runs, no unrelated data kept), with
    every credential value (session tokens, secret keys, passwords) replaced by `<redacted>`."""
    return {k: _scrub(r[k]) for k in KEPT_FIELDS if k in r}


def service_of(r: dict[str, Any]) -> str:
    return str(r.get("eventSource", "")).split(".", 1)[0]
