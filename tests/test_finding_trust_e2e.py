"""From the CLI, on a simulated account with other names: a malformed or self-contradicting finding
is exit 2 naming the JSON path before any AWS client exists; a window longer than
`[discovery] max_window_days` needs `--window-start`; a GuardDuty finding and its Security Hub
copy are one incident, so the second detector path cannot start a second run."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from click.testing import Result
from typer.testing import CliRunner

from runner.cli import app
from runner.drill import attack_trail, seed
from runner.incident import parse_time
from tests.conftest import TWO_REGIONS, write_json
from tests.test_intake_e2e import NAMES, account, guardduty_finding, security_hub_event, state

pytestmark = pytest.mark.usefixtures("two_regions")  # the finding's trust, not the region search, is under test

FINDING_ID = "7d3e9a0c41b2f5e68a9c0d1e2f3a4b5c"
OTHER_NAMES = {**NAMES, "user": "etl-runner", "group": "data-eng", "cluster": "analytics", "service": "spark-driver",
               "image": "docker.io/xmrig/xmrig:6.21"}


@pytest.fixture
def seeded() -> Iterator[tuple[boto3.Session, dict[str, Any]]]:
    with account() as session:
        yield session, seed(session, OTHER_NAMES)


def gd_event(seeded: dict[str, Any]) -> dict[str, Any]:
    """The seeded attack as a GuardDuty event, with its own finding id."""
    doc = guardduty_finding(seeded)
    old = doc["detail"]["id"]
    doc["detail"]["id"] = FINDING_ID
    doc["detail"]["arn"] = doc["detail"]["arn"].replace(old, FINDING_ID)
    return doc


def stanch(tmp_path: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, [*args, "--state-dir", str(tmp_path / "state")], input=stdin)


def run(tmp_path: Path, doc: Any, *extra: str, name: str = "finding.json") -> Result:
    return stanch(tmp_path, "run", str(write_json(tmp_path / name, doc)), "--by", "test", "--output", "json", *extra)


class ClientSpy:
    """Records every AWS client created (boto3 and botocore), so a test can prove there was none."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.created: list[str] = []
        real = botocore.session.Session.create_client
        spy = self

        def create_client(session: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
            spy.created.append(service_name)
            return real(session, service_name, *args, **kwargs)

        monkeypatch.setattr(botocore.session.Session, "create_client", create_client)


# ------------------------------------------------------------------ malformed findings: exit 2, nothing read

def _drop(doc: dict[str, Any], *path: str | int) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    cur: Any = out
    for key in path[:-1]:
        cur = cur[key]
    del cur[path[-1]]
    return out


def _pascal(v: Any) -> Any:
    if isinstance(v, dict):
        return {(k[:1].upper() + k[1:]): _pascal(x) for k, x in v.items()}
    return [_pascal(x) for x in v] if isinstance(v, list) else v


def _with(doc: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    cur: Any = out
    for key in path[:-1]:
        cur = cur[key]
    cur[path[-1]] = value
    return out


MALFORMED = {
    "event without resource": (lambda s: _drop(gd_event(s), "detail", "resource"), "detail.resource"),
    "bare finding without eventFirstSeen": (lambda s: _drop(gd_event(s)["detail"], "service", "eventFirstSeen"),
                                            "service.eventFirstSeen"),
    "boto3 without Type": (lambda s: {"Findings": [_drop(_pascal(gd_event(s)["detail"]), "Type")]},
                           "Findings[0].Type"),
    "event without region": (lambda s: _drop(gd_event(s), "detail", "region"), "detail.region"),
    "security hub copy without Resources": (
        lambda s: _drop(security_hub_event(gd_event(s)), "detail", "findings", 0, "Resources"),
        "detail.findings[0].Resources"),
    "security hub copy without Types": (
        lambda s: _drop(security_hub_event(gd_event(s)), "detail", "findings", 0, "Types"),
        "detail.findings[0].Types"),
    "bare copy without AwsAccountId": (
        lambda s: _drop(security_hub_event(gd_event(s))["detail"]["findings"][0], "AwsAccountId"), "AwsAccountId"),
    "security hub copy for another account": (
        lambda s: _with(security_hub_event(gd_event(s)), ("detail", "findings", 0, "AwsAccountId"), "444455556666"),
        "detail.findings[0].GeneratorId"),
    "event envelope from another account": (lambda s: {**gd_event(s), "account": "444455556666"}, "account"),
}


def test_malformed_findings_are_exit_2_naming_the_path_before_any_aws_client(
        seeded: tuple[boto3.Session, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    session, attack = seeded
    before = state(session)
    spy = ClientSpy(monkeypatch)
    for i, (case, (make, path)) in enumerate(MALFORMED.items()):
        where = tmp_path / str(i)
        where.mkdir()
        result = run(where, make(attack), "--approve-all")
        assert result.exit_code == 2, (case, result.output)
        assert path in result.output and "Traceback" not in result.output, (case, result.output)
        assert not (where / "state" / "journal.sqlite3").exists(), case  # no run recorded, no lock taken
    assert spy.created == []  # nothing read from AWS, not even sts:GetCallerIdentity
    monkeypatch.undo()
    assert state(session) == before


def test_malformed_finding_on_stdin_is_exit_2_without_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    spy = ClientSpy(monkeypatch)
    attack = {"incident": {"account_id": "246813579024", "region": "ap-southeast-2",
                           "detected_at": "2026-05-04T03:02:01Z", "window_start": "2026-05-04T02:00:00Z"}}
    doc = _drop(gd_event(attack), "detail", "resource")
    result = stanch(tmp_path, "run", "-", "--approve-all", stdin=json.dumps(doc))
    assert result.exit_code == 2, result.output
    assert "<stdin>" in result.output and "detail.resource: required field is missing" in result.output
    assert "credentials" not in result.output and spy.created == []


# ------------------------------------------------------------------ the window

def _first_seen_days_back(attack: dict[str, Any], days: float) -> dict[str, Any]:
    doc = gd_event(attack)
    detected = parse_time(doc["detail"]["updatedAt"])
    first = (detected - timedelta(days=days)).isoformat().replace("+00:00", "Z")
    doc["detail"]["service"]["eventFirstSeen"] = first
    return doc


def test_window_beyond_max_window_days_needs_window_start(
        seeded: tuple[boto3.Session, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    session, attack = seeded
    before = state(session)
    doc = _first_seen_days_back(attack, 9)
    spy = ClientSpy(monkeypatch)
    refused = run(tmp_path, doc, "--approve-all")
    assert refused.exit_code == 2, refused.output
    assert "9.0 days" in refused.output and "max_window_days = 7" in refused.output
    assert "--window-start" in refused.output and spy.created == []
    for bad in ("last week", "2999-01-01T00:00:00Z"):
        result = run(tmp_path, doc, "--dry-run", "--window-start", bad)
        assert result.exit_code == 2 and "--window-start" in result.output and "Traceback" not in result.output
    assert spy.created == []
    monkeypatch.undo()
    assert state(session) == before
    # a responder who knows when it started says so; the dry run then plans from that time
    start = attack["incident"]["window_start"]
    planned = run(tmp_path, doc, "--dry-run", "--window-start", start)
    assert planned.exit_code == 0, planned.output
    result = json.loads(planned.stdout)
    assert result["scope"]["window_start"] == start
    assert "--window-start" in planned.output  # the override is said out loud on stderr
    # no CloudTrail here: the window points at the attacker's user, as a suspect
    users = {u["name"] for u in result["scope"]["suspects"]["users"]}
    assert OTHER_NAMES["user"] in users and not users & {"alice", "ops-oncall", "breakglass-admin"}
    # or the limit is raised in the config
    config = tmp_path / "stanch.toml"
    config.write_text(TWO_REGIONS + "[discovery]\nmax_window_days = 10\n")
    raised = run(tmp_path, doc, "--dry-run", "--config", str(config))
    assert raised.exit_code == 0, raised.output
    assert json.loads(raised.stdout)["scope"]["window_start"] == doc["detail"]["service"]["eventFirstSeen"]
    # --window-start also narrows a window that is within the limit
    two_days = _first_seen_days_back(attack, 2)
    assert run(tmp_path, two_days, "--dry-run").exit_code == 0
    narrowed = run(tmp_path, two_days, "--dry-run", "--window-start", start)
    assert json.loads(narrowed.stdout)["scope"]["window_start"] == start
    assert state(session) == before


# ------------------------------------------------------------------ one finding, one incident

def test_guardduty_event_and_its_security_hub_copy_are_one_incident(
        seeded: tuple[boto3.Session, dict[str, Any]], tmp_path: Path) -> None:
    session, attack = seeded
    event = gd_event(attack)
    trail = str(write_json(tmp_path / "trail.json", attack_trail(attack).document()))
    # the GuardDuty path starts first; with no terminal and no pre-approval it pauses on the gated steps
    first = run(tmp_path, event, "--cloudtrail", trail, name="gd.json")
    assert first.exit_code == 3, first.output
    paused = json.loads(first.stdout)
    assert paused["status"] == "awaiting_approval" and paused["incident_id"] == f"GD-{FINDING_ID}"
    held = state(session)
    # the Security Hub path delivers the copy: the same incident, held by the paused run
    second = stanch(tmp_path, "run", "-", "--approve-all", "--output", "json", stdin=json.dumps(security_hub_event(event)))
    assert second.exit_code == 4, second.output
    assert f"incident GD-{FINDING_ID} is held by active run {paused['run_id']}" in second.output
    # GuardDuty re-publishes the finding (count + 1, later updatedAt): still the same incident
    again = copy.deepcopy(event)
    again["id"] = "b5c6d7e8-0000-4000-8000-000000000002"
    later = (parse_time(event["detail"]["updatedAt"]) + timedelta(hours=6)).isoformat().replace("+00:00", "Z")
    again["detail"]["updatedAt"] = later
    again["detail"]["service"]["count"] += 1
    third = run(tmp_path, again, "--approve-all", name="gd-again.json")
    assert third.exit_code == 4, third.output
    assert state(session) == held  # neither refused run changed anything
    # once the first run is finished, the copy is recognised as the same, already contained incident
    resumed = stanch(tmp_path, "resume", paused["run_id"], "--approve-all", "--by", "test", "--output", "json")
    assert resumed.exit_code == 0, resumed.output
    contained = state(session)
    fourth = run(tmp_path, security_hub_event(event), "--approve-all", "--cloudtrail", trail, name="sh.json")
    assert fourth.exit_code == 0, fourth.output
    copy_run = json.loads(fourth.stdout)
    assert copy_run["incident_id"] == paused["incident_id"] and copy_run["status"] == "contained"
    assert all(c["status"] != "applied" for s in copy_run["steps"] for c in s["changes"])
    assert state(session) == contained
    assert contained["users"][OTHER_NAMES["user"]]["keys"] == ["Inactive"]
    assert contained["services"][f"{OTHER_NAMES['cluster']}/{OTHER_NAMES['service']}"]["desiredCount"] == 0
