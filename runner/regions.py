"""Which regions a run searches, and the record of what it searched (coverage).

By default every region enabled for the account is searched: `account:ListRegions` (opt status
ENABLED or ENABLED_BY_DEFAULT), falling back to `ec2:DescribeRegions`, which lists only the regions
enabled for the caller. `[aws] regions` restricts the search; the incident's (home) region is always
searched. A region or service that could not be listed is a *gap*: a run with a gap that could hide
attacker activity is never reported `contained`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from actions.base import ActionContext
    from runner.aws import AwsSession

T = TypeVar("T")
R = TypeVar("R")

#: opt-in states of a region the account can use (account:ListRegions)
ENABLED_STATES = ("ENABLED", "ENABLED_BY_DEFAULT")
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def summarise_error(exc: BaseException, limit: int = 160) -> str:
    """`code: message` on one short line; an HTML body (a proxy's error page) is reduced to its text."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "ClientError")
        message = str(err.get("Message") or "")
    else:
        code, message = type(exc).__name__, str(exc)
    if "<" in message and ">" in message:
        message = _TAG.sub(" ", message)
    message = _SPACE.sub(" ", message).strip()
    if len(message) > limit:
        message = message[: limit - 3].rstrip() + "..."
    return f"{code}: {message}" if message else code


@dataclass(frozen=True)
class Gap:
    """Something the run could not search. `blocking` gaps could hide attacker activity."""

    region: str
    service: str
    error: str
    blocking: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "service": self.service, "error": self.error, "blocking": self.blocking}


class Coverage:
    """What a run searched: regions, services per region, CloudTrail sources, and gaps. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.regions: list[str] | None = None
        self.region_source = ""
        self.services: dict[str, set[str]] = {}
        self.cloudtrail: list[str] = []
        self.gaps: list[Gap] = []

    def searched(self, region: str, service: str) -> None:
        with self._lock:
            self.services.setdefault(region, set()).add(service)

    def gap(self, region: str, service: str, error: BaseException | str, blocking: bool = True) -> None:
        text = error if isinstance(error, str) else summarise_error(error)
        with self._lock:
            gap = Gap(region, service, text, blocking)
            if gap not in self.gaps:
                self.gaps.append(gap)

    def source(self, name: str) -> None:
        with self._lock:
            if name not in self.cloudtrail:
                self.cloudtrail.append(name)

    def settle_regions(self, regions: list[str], source: str, gaps: list[Gap]) -> list[str]:
        """Record the region list once per run (the first caller wins) and return it."""
        with self._lock:
            if self.regions is None:
                self.regions, self.region_source = regions, source
                self.gaps += [g for g in gaps if g not in self.gaps]
            return list(self.regions)

    def blocking_gaps(self) -> list[Gap]:
        with self._lock:
            return [g for g in self.gaps if g.blocking]

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "regions": list(self.regions or []), "region_source": self.region_source,
                "services": {r: sorted(s) for r, s in sorted(self.services.items())},
                "cloudtrail": list(self.cloudtrail), "gaps": [g.to_json() for g in self.gaps],
            }

    def merge_json(self, doc: dict[str, Any] | None) -> None:
        """Take in what an earlier process of the same run recorded (resume, verify)."""
        if not doc:
            return
        with self._lock:
            if self.regions is None and doc.get("regions"):
                self.regions = list(doc["regions"])
                self.region_source = str(doc.get("region_source", ""))
            for region, services in (doc.get("services") or {}).items():
                self.services.setdefault(region, set()).update(services)
            self.cloudtrail += [s for s in doc.get("cloudtrail") or [] if s not in self.cloudtrail]
            for g in doc.get("gaps") or []:
                gap = Gap(g["region"], g["service"], g["error"], bool(g.get("blocking", True)))
                if gap not in self.gaps:
                    self.gaps.append(gap)


def enabled_regions(aws: AwsSession) -> tuple[list[str], str, list[Gap]]:
    """The regions enabled for the account, where the list came from, and what failed on the way."""
    gaps: list[Gap] = []
    try:
        account = aws.client("account")
        regions: list[str] = []
        for page in account.get_paginator("list_regions").paginate(
                RegionOptStatusContains=list(ENABLED_STATES)):
            regions += [r["RegionName"] for r in page.get("Regions", [])
                        if r.get("RegionOptStatus") in ENABLED_STATES]
        if regions:
            return regions, "account:ListRegions", gaps
    except (ClientError, BotoCoreError) as exc:
        gaps.append(Gap("*", "account", summarise_error(exc), blocking=False))
    try:
        found = aws.client("ec2").describe_regions(AllRegions=False)["Regions"]
        usable = ("opt-in-not-required", "opted-in")
        return [r["RegionName"] for r in found if r.get("OptInStatus", "opted-in") in usable], \
            "ec2:DescribeRegions", gaps
    except (ClientError, BotoCoreError) as exc:
        gaps.append(Gap("*", "ec2:DescribeRegions", summarise_error(exc)))
    return [], "none", gaps


def search_regions(ctx: ActionContext) -> list[str]:
    """The regions this run searches (computed once per run): home region first, then the rest sorted."""
    if ctx.coverage.regions is not None:
        return list(ctx.coverage.regions)
    home = ctx.incident.region
    configured = ctx.config.aws.regions
    gaps: list[Gap] = []
    if configured:
        found, source = list(configured), "config [aws] regions"
    else:
        found, source, gaps = enabled_regions(ctx.aws)
        if not found:
            gaps.append(Gap(home, "regions", "no region list available: only the home region was searched"))
    regions = [home, *sorted((set(found) | set(ctx.config.aws.extra_regions)) - {home})]
    return ctx.coverage.settle_regions(regions, source, gaps)


def scan_regions(ctx: ActionContext, service: str, fn: Callable[[str], R], regions: Iterable[str]) -> list[R]:
    """Run `fn(region)` for every region concurrently; a region whose `service` endpoint fails is
    recorded as a coverage gap (not raised) and left out of the results."""

    regions = list(regions)
    for region in regions:
        ctx.progress(region, service, "pending")

    def one(region: str) -> tuple[bool, R | None]:
        ctx.progress(region, service, "running")
        try:
            result = fn(region)
        except (ClientError, BotoCoreError) as exc:
            ctx.coverage.gap(region, service, exc)
            ctx.progress(region, service, "gap", error=summarise_error(exc))
            return False, None
        ctx.coverage.searched(region, service)
        ctx.progress(region, service, "done", found=found_count(result))
        return True, result

    return [cast(R, r) for ok, r in ctx.fanout(one, list(regions)) if ok]


def found_count(result: Any) -> int:
    """How many things a region scan found: the length of its result, or of its first list (what is in
    scope; the rest of a tuple is what was left alone)."""
    found = getattr(result, "found", None)  # a read that only classifies later says what it read
    if isinstance(found, int):
        return found
    if isinstance(result, tuple) and result and isinstance(result[0], list | dict):
        return len(result[0])
    return len(result) if isinstance(result, list | dict) else 0
