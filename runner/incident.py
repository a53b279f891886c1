"""The native incident, `stanch.incident/v1`: a strict model and a loader that reports every
problem with its path and never lets malformed input reach AWS."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runner.errors import InputError, Problem, did_you_mean

SCHEMA = "stanch.incident/v1"
MAX_INCIDENT_BYTES = 1_048_576  # 1 MiB: a real finding or trail excerpt is far smaller
MAX_JSON_DEPTH = 32

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_IAM_NAME = r"^[\w+=,.@-]{1,128}$"
_ECS_NAME = r"^[A-Za-z0-9_-]{1,255}$"
_KEY_ID = r"^(AKIA|ASIA|AIDA|AROA)[A-Z0-9]{12,124}$"


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("contains control characters")
    return value


SafeStr = Annotated[str, Field(min_length=1, max_length=2048)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _strings_are_clean(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _no_control(value)
        return value


class RootPrincipal(_Strict):
    type: Literal["root"]
    access_key_id: Annotated[str, Field(pattern=_KEY_ID)] | None = None


class UserPrincipal(_Strict):
    type: Literal["user"]
    name: Annotated[str, Field(pattern=_IAM_NAME)]


class GroupPrincipal(_Strict):
    type: Literal["group"]
    name: Annotated[str, Field(pattern=_IAM_NAME)]


class RolePrincipal(_Strict):
    type: Literal["role"]
    name: Annotated[str, Field(pattern=_IAM_NAME)]


class AccessKeyPrincipal(_Strict):
    type: Literal["access_key"]
    id: Annotated[str, Field(pattern=_KEY_ID)]


Principal = Annotated[
    RootPrincipal | UserPrincipal | GroupPrincipal | RolePrincipal | AccessKeyPrincipal,
    Field(discriminator="type"),
]


class EcsClusterResource(_Strict):
    type: Literal["ecs_cluster"]
    name: Annotated[str, Field(pattern=_ECS_NAME)]


class EcsServiceResource(_Strict):
    type: Literal["ecs_service"]
    cluster: Annotated[str, Field(pattern=_ECS_NAME)]
    name: Annotated[str, Field(pattern=_ECS_NAME)]


class EcsTaskResource(_Strict):
    type: Literal["ecs_task"]
    cluster: Annotated[str, Field(pattern=_ECS_NAME)]
    arn: SafeStr


Resource = Annotated[
    EcsClusterResource | EcsServiceResource | EcsTaskResource,
    Field(discriminator="type"),
]


class Indicators(_Strict):
    images: list[SafeStr] = Field(default_factory=list)
    policy_arns: list[SafeStr] = Field(default_factory=list)
    source_ips: list[SafeStr] = Field(default_factory=list)


class Source(_Strict):
    """Where the incident came from, when a detector produced it."""

    format: Literal["native", "guardduty", "securityhub", "cloudtrail"]
    id: SafeStr | None = None
    types: list[SafeStr] = Field(default_factory=list)


class EvidenceEvent(_Strict):
    """One event that supports the incident (e.g. a CloudTrail record attributed to the attacker)."""

    time: str
    event: SafeStr
    actor: SafeStr
    source: SafeStr | None = None
    event_id: SafeStr | None = None
    source_ip: SafeStr | None = None
    detail: Annotated[str, Field(max_length=2048)] | None = None


class Incident(_Strict):
    """A detected incident. Principals and resources are seeds for scope discovery."""

    schema_: Literal["stanch.incident/v1"] | None = Field(default=None, alias="schema")
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
    kind: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
    account_id: Annotated[str, Field(pattern=r"^\d{12}$")]
    region: Annotated[str, Field(pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d$")]
    detected_at: str
    window_start: str | None = None
    severity: Literal["low", "medium", "high", "critical"] | None = None
    summary: Annotated[str, Field(max_length=4096)] | None = None
    principals: list[Principal] = Field(default_factory=list)
    resources: list[Resource] = Field(default_factory=list)
    indicators: Indicators = Field(default_factory=Indicators)
    source: Source | None = None
    evidence: Annotated[list[EvidenceEvent], Field(max_length=5000)] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    @field_validator("detected_at", "window_start")
    @classmethod
    def _rfc3339(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parse_time(value)
        return value

    @model_validator(mode="after")
    def _window_before_detection(self) -> Incident:
        if self.window_start and parse_time(self.window_start) > parse_time(self.detected_at):
            raise ValueError("window_start is after detected_at; it must be the earliest malicious activity")
        return self

    @property
    def window_start_dt(self) -> datetime | None:
        return parse_time(self.window_start) if self.window_start else None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def parse_time(value: str) -> datetime:
    """Parse an RFC 3339 timestamp with a zone; raise ValueError naming the expected form."""
    if not _RFC3339.match(value):
        raise ValueError(f"'{value}' is not an RFC 3339 timestamp like 2026-11-20T09:58:00Z")
    frac = re.search(r"\.(\d+)", value)
    if frac and len(frac.group(1)) > 6:  # fromisoformat takes microseconds at most
        value = value.replace(frac.group(0), "." + frac.group(1)[:6])
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --------------------------------------------------------------------------- loading

_TAG_MODELS: dict[str, type[BaseModel]] = {
    "root": RootPrincipal, "user": UserPrincipal, "group": GroupPrincipal, "role": RolePrincipal,
    "access_key": AccessKeyPrincipal, "ecs_cluster": EcsClusterResource,
    "ecs_service": EcsServiceResource, "ecs_task": EcsTaskResource,
}


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The field names valid at the object that holds the last element of `loc`."""
    model: type[BaseModel] = Incident
    parent = loc[:-1]
    if parent and isinstance(parent[-1], str) and parent[-1] in _TAG_MODELS:
        model = _TAG_MODELS[parent[-1]]
    elif parent and parent[-1] == "indicators":
        model = Indicators
    elif parent and parent[-1] == "source":
        model = Source
    elif len(parent) >= 2 and parent[-2] == "evidence":
        model = EvidenceEvent
    return [f.alias or name for name, f in model.model_fields.items()]


def format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TAG_MODELS or part.startswith("function-"):
            continue  # discriminator tags and validator names are not part of the user's path
        else:
            out += f".{part}" if out else part
    return out


def problems_from_validation(exc: ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1])
            hint = did_you_mean(key, _fields_at(loc))
            msg = f"unknown field '{key}'{hint or '; remove it'}"
        elif kind == "missing":
            msg = "required field is missing"
        elif kind == "union_tag_invalid":
            msg = f"unknown type {err['input'].get('type')!r}; expected one of {err['ctx']['expected_tags']}"
        elif kind == "string_pattern_mismatch":
            msg = f"{err['input']!r} is not valid here (expected pattern {err['ctx']['pattern']})"
            if loc and loc[-1] == "account_id":
                msg = f"{err['input']!r} is not an AWS account id; it must be exactly 12 digits"
        elif kind.endswith("_type"):
            msg = f"wrong type: {err['msg'].lower()}, got {type(err['input']).__name__}"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        problems.append(Problem(format_loc(loc), msg))
    return problems


def _json_depth_ok(text: str) -> bool:
    depth = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def read_source(source: str) -> tuple[str, bytes]:
    """Read `source` (a path, or `-` for stdin) with the size limit. Returns (label, bytes)."""
    label = "<stdin>" if source == "-" else source
    try:
        if source == "-":
            data = sys.stdin.buffer.read(MAX_INCIDENT_BYTES + 1)
        else:
            path = Path(source)
            if not path.is_file():
                raise InputError(label, [Problem("", "no such file (give a path, or - for stdin)")])
            with path.open("rb") as fh:
                data = fh.read(MAX_INCIDENT_BYTES + 1)
    except OSError as exc:
        raise InputError(label, [Problem("", f"cannot read: {exc.strerror}")]) from None
    if len(data) > MAX_INCIDENT_BYTES:
        raise InputError(label, [Problem("", f"larger than the {MAX_INCIDENT_BYTES} byte limit for an incident")])
    return label, data


def parse_json_document(label: str, data: bytes) -> Any:
    if not data.strip():
        raise InputError(label, [Problem("", "empty file; expected a JSON incident")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(label, [Problem("", f"not UTF-8 text (byte {exc.start})")]) from None
    if not _json_depth_ok(text):
        raise InputError(label, [Problem("", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")])
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(label, [Problem(f"line {exc.lineno} column {exc.colno}", f"not JSON: {exc.msg}")]) from None


def validate_incident(label: str, doc: Any) -> Incident:
    if not isinstance(doc, dict):
        raise InputError(label, [Problem("", f"expected a JSON object, got {type(doc).__name__}")])
    try:
        return Incident.model_validate(doc)
    except ValidationError as exc:
        raise InputError(label, problems_from_validation(exc)) from None


def load_incident(source: str) -> Incident:
    """Load and validate an incident from a path or `-`. Raises InputError listing every problem."""
    label, data = read_source(source)
    doc = parse_json_document(label, data)
    return validate_incident(label, doc)
