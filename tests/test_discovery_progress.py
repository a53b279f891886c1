"""Live discovery progress: region x service scans emit `discovery.search` events; the terminal display
built from a recorded event stream shows each one pending, running, done with its count, or a gap;
nothing of it reaches a pipe, -q, or the JSON document."""

from __future__ import annotations

import io
from typing import Any

import boto3
from botocore.exceptions import ClientError

from runner.audit import render_human
from runner.regions import scan_regions
from runner.ui import DiscoveryProgress, LogStream, UiOptions, console
from tests.awshelp import context


def _ev(region: str, service: str, state: str, **kw: Any) -> dict[str, Any]:
    return {"event": "discovery.search", "ts": "2030-01-01T00:00:01Z", "region": region, "service": service,
            "state": state, **kw}


#: what a run's log recorded, in order, while discovery was half-way
RECORDED = [
    {"event": "run.started", "ts": "2030-01-01T00:00:00Z"},
    _ev("global", "iam", "running"), _ev("global", "cloudtrail", "running"),
    _ev("global", "iam", "done", found=42),
    *[_ev(r, "ecs", "pending") for r in ("us-east-1", "eu-central-1", "ap-southeast-1")],
    _ev("us-east-1", "ecs", "running"), _ev("us-east-1", "ecs", "done", found=1),
    _ev("eu-central-1", "ecs", "running"), _ev("eu-central-1", "ecs", "gap", error="AccessDenied: no"),
    _ev("ap-southeast-1", "ecs", "running"),
    {"event": "step.planned", "ts": "2030-01-01T00:00:02Z", "step": "discover-scope", "changes": 0},
]
FINISH = [_ev("global", "cloudtrail", "done", found=17), _ev("ap-southeast-1", "ecs", "done", found=3)]


def _text(renderable: Any) -> str:
    buf = io.StringIO()
    console(buf, color=False).print(renderable)
    return buf.getvalue()


def test_recorded_events_render_each_region_and_service() -> None:
    progress = DiscoveryProgress()
    taken = [progress.feed(e) for e in RECORDED]
    assert taken.count(True) == len(RECORDED) - 2  # other events leave it alone
    assert progress.active
    table = _text(progress.table())
    assert "discovery: 3/5 searched, 2 running, 1 gap(s)" in table
    rows = {line.split()[0]: line for line in table.splitlines() if line.strip() and line.split()[0] in (
        "global", "us-east-1", "eu-central-1", "ap-southeast-1")}
    assert list(rows) == ["global", "us-east-1", "eu-central-1", "ap-southeast-1"]  # global first, then as met
    assert "✔ 42" in rows["global"] and "…" in rows["global"]  # IAM done, CloudTrail still running
    assert "✔ 1" in rows["us-east-1"] and "✘ gap" in rows["eu-central-1"] and "…" in rows["ap-southeast-1"]
    for e in FINISH:
        progress.feed(e)
    assert not progress.active
    assert _text(progress.summary()).strip() == (
        "searched: iam 1/1 found 42; cloudtrail 1/1 found 17; ecs 2/3 found 4 (1 gap)")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_spinner_shows_the_table_on_a_terminal_only_and_not_with_quiet() -> None:
    for options, shown in ((UiOptions(color=False), True), (UiOptions(color=False, verbosity=0), False)):
        log = LogStream(options, _Tty())  # not entered: no live refresh thread, only what it would show
        for e in RECORDED:
            log.observe(e)
            log.write(render_human(e) + "\n")
        text = _text(log.renderable())
        assert ("discovery: 3/5 searched" in text) is shown, text
        assert "working: plan" in text and "discover-scope" in text
        for e in FINISH:
            log.observe(e)
        assert ("searched: iam 1/1" in _text(log.renderable())) is shown

    # a pipe: the search lines stay in the audit log (and -vv), never on stderr at normal verbosity
    for verbosity, lines in ((1, 0), (2, len(RECORDED) - 2)):
        pipe = io.StringIO()
        with LogStream(UiOptions(color=False, verbosity=verbosity), pipe) as log:
            for e in RECORDED:
                log.observe(e)
                log.write(render_human(e) + "\n")
        assert pipe.getvalue().count(" search ") == lines
        assert "discovery:" not in pipe.getvalue() and "\x1b" not in pipe.getvalue()


def test_region_scans_report_pending_running_done_and_gaps() -> None:
    events: list[dict[str, Any]] = []
    ctx = context(boto3.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y"))
    ctx.log = lambda name, **kw: events.append({"event": name, **kw})

    def scan(region: str) -> tuple[list[str], list[str]]:
        if region == "eu-west-3":
            raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "denied"}}, "DescribeInstances")
        return (["i-1", "i-2"] if region == "us-east-1" else []), ["left-alone"]

    found = scan_regions(ctx, "ec2", scan, ["us-east-1", "eu-west-3", "sa-east-1"])
    assert len(found) == 2
    by = {(e["region"], e["state"]): e for e in events}
    assert [e["state"] for e in events[:3]] == ["pending"] * 3
    assert by[("us-east-1", "done")]["found"] == 2 and by[("sa-east-1", "done")]["found"] == 0
    assert "UnauthorizedOperation" in by[("eu-west-3", "gap")]["error"]
    assert all(e["event"] == "discovery.search" and e["service"] == "ec2" for e in events)
    assert [g.region for g in ctx.coverage.gaps] == ["eu-west-3"]
