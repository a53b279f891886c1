"""Helpers shared by actions: paginated reads, error codes, image matching, typed references."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_code(exc: ClientError, *codes: str) -> bool:
    return error_code(exc) in codes


def tolerant_call(call: Callable[..., Any], params: dict[str, Any], *gone: str) -> Literal["applied", "already_done"]:
    """Perform one write; the expected 'already gone' error codes mean the change is already done."""
    try:
        call(**params)
    except ClientError as exc:
        if is_code(exc, *gone):
            return "already_done"
        raise
    return "applied"


def method_for(client: Any, operation: str) -> Callable[..., Any]:
    """The client method of a change's `service:OperationName` (botocore's own snake-casing)."""
    from botocore import xform_name

    return getattr(client, xform_name(operation.split(":", 1)[1]))  # type: ignore[no-any-return]


def paginate(client: Any, operation: str, key: str, **kwargs: Any) -> Iterator[Any]:
    """Every item under `key` across all pages of `operation`."""
    for page in client.get_paginator(operation).paginate(**kwargs):
        yield from page.get(key, [])


def iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value) if value is not None else None


# ------------------------------------------------------------------ references passed between steps

class Ref(BaseModel):
    """An item of a discovered scope. Items carry more (reason, label); only these fields are used."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class UserRef(Ref):
    name: str
    arn: str = ""
    created_in_window: bool = False


class GroupRef(Ref):
    name: str
    arn: str = ""


class RoleRef(Ref):
    name: str
    arn: str = ""


class AccessKeyRef(Ref):
    id: str
    user: str
    user_arn: str = ""


class ServiceRef(Ref):
    cluster: str
    name: str
    arn: str = ""
    region: str = ""


class TaskRef(Ref):
    cluster: str
    arn: str
    region: str = ""


class TaskDefinitionRef(Ref):
    arn: str
    region: str = ""


class ClusterRef(Ref):
    name: str
    arn: str = ""
    region: str = ""


def user_arn(account: str, name: str) -> str:
    return f"arn:aws:iam::{account}:user/{name}"


# ------------------------------------------------------------------ images

_REGISTRY_HOST = re.compile(r"^[^/]+[.:][^/]*/|^localhost/")


def image_repository(image: str) -> str:
    """`registry.example.com:5000/team/xmrig:6.21@sha256:..` -> `team/xmrig` (lower case)."""
    image = image.strip().lower()
    image = _REGISTRY_HOST.sub("", image, count=1)
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)
    if ":" in last[-1]:
        last[-1] = last[-1].split(":", 1)[0]
    return "/".join(last)


def matches_miner(image: str, patterns: list[str]) -> str | None:
    """The pattern an image matches as a whole word of its repository path, or None.

    Word boundaries keep look-alikes apart: `t-rex` matches `trexminer/t-rex` but not `fast-rex-api`."""
    repo = image_repository(image)
    for pattern in patterns:
        p = pattern.strip().lower()
        if not p:
            continue
        if "/" in p or ":" in p:
            if image_repository(p) == repo:
                return pattern
            continue
        if re.search(rf"(^|[^a-z0-9]){re.escape(p)}([^a-z0-9]|$)", repo):
            return pattern
    return None
