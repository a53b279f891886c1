"""What a detector finding must hold before stanch trusts any of it, and which GuardDuty finding
it is.

A finding decides what gets contained, so it is checked against its schema before a single field
is used and before anything is read from AWS: every problem is reported at once, each with the
JSON path where it was found (PascalCase for boto3 `get_findings` output). A finding that names
two accounts (its ARN, its Security Hub copy, its EventBridge envelope) is refused too: stanch
would not know which account it is containing.

The same GuardDuty finding reaches stanch directly and as its Security Hub copy; both are keyed on
the GuardDuty finding id, so they are one incident (`incident_key`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from runner.errors import Problem
from runner.incident import parse_time

_ACCOUNT = re.compile(r"^\d{12}$")
_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")  # as runner/incident.py accepts
#: a GuardDuty detector or finding ARN, also when embedded in a Security Hub id
_GUARDDUTY_ARN = re.compile(
    r"arn:aws[a-z-]*:guardduty:[a-z0-9-]*:(?P<account>\d{12}):detector/(?P<detector>[A-Za-z0-9]+)"
    r"(?:/finding/(?P<finding>[A-Za-z0-9]+))?"
)
_NAIVE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?")

# ------------------------------------------------------------------ field checks
# A check returns what is wrong with a value that is present, or None.
Check = Callable[[Any], str | None]


def _got(value: Any) -> str:
    text = repr(value)
    return f"got {text if len(text) <= 40 else text[:37] + '...'}"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else f"must be a non-empty string; {_got(value)}"


def _account(value: Any) -> str | None:
    if isinstance(value, str) and _ACCOUNT.match(value):
        return None
    return f"must be a 12-digit AWS account id (a string); {_got(value)}"


def _region(value: Any) -> str | None:
    return None if isinstance(value, str) and _REGION.match(value) else f"must be an AWS region; {_got(value)}"


def _object(value: Any) -> str | None:
    return None if isinstance(value, dict) else f"must be a JSON object; {_got(value)}"


def _strings(value: Any) -> str | None:
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return None
    return f"must be a non-empty list of strings; {_got(value)}"


def _objects(value: Any) -> str | None:
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return None
    return f"must be a non-empty list of objects; {_got(value)}"


def _timestamp(value: Any) -> str | None:
    try:
        timestamp_text(value)
    except ValueError as exc:
        return str(exc)
    return None


def timestamp_text(value: Any) -> str:
    """A finding's timestamp as RFC 3339 with a zone: ISO strings (a missing zone is UTC, as
    GuardDuty writes them), boto3 datetimes, or epoch seconds/milliseconds. ValueError if none."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat().replace("+00:00", "Z")
    if isinstance(value, int | float) and not isinstance(value, bool):
        secs = value / 1000 if value > 10**11 else value
        try:
            if not math.isfinite(secs):
                raise ValueError
            return datetime.fromtimestamp(secs, UTC).isoformat().replace("+00:00", "Z")
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"timestamp {value!r} is out of range") from None
    if isinstance(value, str):
        text = value.strip().replace(" ", "T", 1)
        if _NAIVE_TIME.fullmatch(text):
            text += "Z"
        try:
            parse_time(text)
        except ValueError:
            raise ValueError(f"{value[:40]!r} is not a timestamp (RFC 3339, e.g. 2026-11-20T09:58:00Z)") from None
        return text
    raise ValueError(f"must be a timestamp; {_got(value)}")


# ------------------------------------------------------------------ schemas
# (path, check): what stanch relies on. A child is only checked when its parent passed.
GUARDDUTY_REQUIRED: tuple[tuple[tuple[str, ...], Check], ...] = (
    (("id",), _text),
    (("type",), _text),
    (("accountId",), _account),
    (("region",), _region),
    (("resource",), _object),
    (("resource", "resourceType"), _text),
    (("service",), _object),
    (("service", "eventFirstSeen"), _timestamp),
)

ASFF_REQUIRED: tuple[tuple[tuple[str, ...], Check], ...] = (
    (("Id",), _text),
    (("ProductArn",), _text),
    (("AwsAccountId",), _account),
    (("Types",), _strings),
    (("Resources",), _objects),
)
ASFF_RESOURCE_REQUIRED: tuple[tuple[tuple[str, ...], Check], ...] = (
    (("Type",), _text),
    (("Id",), _text),
)

_MISSING = object()


def json_path(where: str, *keys: str | int, pascal: bool = False) -> str:
    """`where` + keys as a readable path: `detail.service.eventFirstSeen`, `Findings[0].Service`,
    `ProductFields["aws/securityhub/FindingId"]`."""
    out = where
    for key in keys:
        if isinstance(key, int):
            out += f"[{key}]"
            continue
        name = key[:1].upper() + key[1:] if pascal else key
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
            out += f"[{name!r}]".replace("'", '"')
        else:
            out += f".{name}" if out else name
    return out


def _get(doc: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(doc, dict) or key not in doc or doc[key] is None:
            return _MISSING
        doc = doc[key]
    return doc


def _check(doc: Any, where: str, schema: tuple[tuple[tuple[str, ...], Check], ...],
           pascal: bool = False) -> list[Problem]:
    problems: list[Problem] = []
    failed: list[tuple[str, ...]] = []
    for keys, check in schema:
        if any(keys[:len(f)] == f for f in failed):
            continue
        value = _get(doc, keys)
        message = "required field is missing" if value is _MISSING else check(value)
        if message:
            failed.append(keys)
            problems.append(Problem(json_path(where, *keys, pascal=pascal), message))
    return problems


def guardduty_problems(finding: Any, where: str, *, pascal: bool = False) -> list[Problem]:
    """Everything wrong with a GuardDuty finding (camelCase; `pascal` names paths as boto3 does)."""
    if not isinstance(finding, dict):
        return [Problem(where, f"a GuardDuty finding must be a JSON object; {_got(finding)}")]
    problems = _check(finding, where, GUARDDUTY_REQUIRED, pascal)
    account, fid = finding.get("accountId"), finding.get("id")
    ref = _GUARDDUTY_ARN.fullmatch(finding["arn"]) if isinstance(finding.get("arn"), str) else None
    if ref and isinstance(account, str) and _ACCOUNT.match(account) and ref["account"] != account:
        problems.append(Problem(json_path(where, "arn", pascal=pascal),
                                f"names account {ref['account']}, but {json_path(where, 'accountId', pascal=pascal)} "
                                f"is {account}; refusing a finding that names two accounts"))
    if ref and ref["finding"] and isinstance(fid, str) and fid and ref["finding"] != fid:
        id_path = json_path(where, "id", pascal=pascal)
        problems.append(Problem(json_path(where, "arn", pascal=pascal),
                                f"names finding {ref['finding']}, but {id_path} is {fid}"))
    return problems


def _guardduty_refs(finding: dict[str, Any], where: str) -> Iterator[tuple[str, re.Match[str]]]:
    """(path, match) for every GuardDuty ARN an ASFF finding points at: its Id, its GeneratorId and
    the ProductFields GuardDuty and Security Hub fill in (e.g. aws/securityhub/FindingId)."""
    for key in ("Id", "GeneratorId"):
        value = finding.get(key)
        if isinstance(value, str) and (m := _GUARDDUTY_ARN.search(value)):
            yield json_path(where, key), m
    fields = finding.get("ProductFields")
    if isinstance(fields, dict):
        for key, value in fields.items():
            if isinstance(key, str) and isinstance(value, str) and (m := _GUARDDUTY_ARN.search(value)):
                yield json_path(where, "ProductFields", key), m


def asff_problems(finding: Any, where: str) -> list[Problem]:
    """Everything wrong with a Security Hub ASFF finding, including a GuardDuty copy whose
    references name another account (or another finding) than the finding itself."""
    if not isinstance(finding, dict):
        return [Problem(where, f"a Security Hub finding must be a JSON object; {_got(finding)}")]
    problems = _check(finding, where, ASFF_REQUIRED)
    resources = finding.get("Resources")
    if isinstance(resources, list):
        for i, resource in enumerate(resources):
            if isinstance(resource, dict):
                problems += _check(resource, json_path(where, "Resources", i), ASFF_RESOURCE_REQUIRED)
    account = finding.get("AwsAccountId")
    findings_named: dict[str, str] = {}
    for path, ref in _guardduty_refs(finding, where):
        if isinstance(account, str) and _ACCOUNT.match(account) and ref["account"] != account:
            problems.append(Problem(path, f"points at GuardDuty in account {ref['account']}, but "
                                          f"{json_path(where, 'AwsAccountId')} is {account}; refusing a finding "
                                          "that names two accounts"))
        if ref["finding"]:
            findings_named.setdefault(ref["finding"], path)
    if len(findings_named) > 1:
        named = ", ".join(f"{p} -> {f}" for f, p in findings_named.items())
        problems.append(Problem(where or "ProductFields", f"points at more than one GuardDuty finding ({named})"))
    return problems


def envelope_problems(event: dict[str, Any], findings: list[tuple[str, Any]]) -> list[Problem]:
    """A GuardDuty EventBridge event is emitted in the finding's own account: an `account` that
    disagrees with the finding's means the event was altered or assembled by hand."""
    account = event.get("account")
    if account is None:
        return []
    if not isinstance(account, str) or not _ACCOUNT.match(account):
        return [Problem("account", _account(account) or "")]
    problems = []
    for where, finding in findings:
        theirs = finding.get("accountId") if isinstance(finding, dict) else None
        if isinstance(theirs, str) and _ACCOUNT.match(theirs) and theirs != account:
            problems.append(Problem("account", f"the event is from account {account}, but "
                                               f"{json_path(where, 'accountId')} is {theirs}; refusing a finding that "
                                               "names two accounts (if a GuardDuty administrator account forwarded it, "
                                               "check the finding and pass its `detail` alone)"))
    return problems


# ------------------------------------------------------------------ identity

def guardduty_finding_id(asff: dict[str, Any]) -> str | None:
    """The GuardDuty finding a Security Hub finding is a copy of, or None for other products."""
    for _, ref in _guardduty_refs(asff, ""):
        if ref["finding"]:
            return ref["finding"]
    return None
