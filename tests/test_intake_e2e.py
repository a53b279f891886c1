"""Every form a detection arrives in leads to the same containment: a native incident, a GuardDuty
finding from EventBridge, the same finding through Security Hub, and CloudTrail through `stanch
detect`; on accounts seeded with other names next to legitimate look-alikes."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.drill import ADMIN, account_snapshot, attack_trail, seed
from tests.awshelp import service
from tests.conftest import write_json

pytestmark = pytest.mark.usefixtures("two_regions")  # the detection paths, not the region search, are under test

SAMPLES = Path(__file__).parent / "data" / "samples"
ROOT_KEY = "AKIAEXAMPLEROOTKEY01"
NAMES = {"user": "svc-backup", "group": "k8s-ops", "cluster": "billing", "service": "report-gen",
         "image": "ghcr.io/someone/cpuminer-opt:v3.8"}


@contextmanager
def account() -> Iterator[boto3.Session]:
    from moto import mock_aws

    with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        yield boto3.Session(region_name="us-east-1")


def run_cli(tmp_path: Path, doc: dict[str, Any], *extra: str) -> dict[str, Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_json(tmp_path / "input.json", doc)
    result = CliRunner().invoke(app, ["run", str(path), "--approve-all", "--by", "test", "--output", "json",
                                      "--state-dir", str(tmp_path / "state"), *extra])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def state(session: boto3.Session) -> dict[str, Any]:
    """What containment changes, by name (ids differ between accounts)."""
    snap = account_snapshot(session)
    tasks: dict[str, list[str]] = {}
    for arn, status in snap["tasks"].items():
        tasks.setdefault(arn.split("/")[-2], []).append(status)
    return {
        "users": {n: {**u, "keys": sorted(u["keys"].values())} for n, u in snap["users"].items()},
        "groups": snap["groups"],
        "services": {"/".join(a.split("/")[-2:]): v for a, v in snap["services"].items()},
        "tasks": {c: sorted(v) for c, v in tasks.items()},
    }


def guardduty_finding(seeded: dict[str, Any]) -> dict[str, Any]:
    inc = seeded["incident"]
    finding = copy.deepcopy(json.loads((SAMPLES / "guardduty/policy_iamuser_rootcredentialusage.real.detail.json").read_text()))
    finding.update(accountId=inc["account_id"], region=inc["region"], createdAt=inc["detected_at"],
                   updatedAt=inc["detected_at"], severity=8.0)
    finding["arn"] = finding["arn"].replace("944697335072", inc["account_id"])
    finding["resource"]["accessKeyDetails"].update(accessKeyId=ROOT_KEY, principalId=inc["account_id"])
    finding["service"].update(eventFirstSeen=inc["window_start"], eventLastSeen=inc["detected_at"])
    return {"version": "0", "id": "7bf73129-1428-4cd3-a780-95db273d1602", "detail-type": "GuardDuty Finding",
            "source": "aws.guardduty", "account": inc["account_id"], "time": inc["detected_at"],
            "region": inc["region"], "resources": [], "detail": finding}


def security_hub_event(gd_event: dict[str, Any]) -> dict[str, Any]:
    """The same finding as GuardDuty sends it on to Security Hub (ASFF)."""
    f = gd_event["detail"]
    akd = f["resource"]["accessKeyDetails"]
    asff = {
        "SchemaVersion": "2018-10-08", "Id": f["arn"], "ProductArn": f"arn:aws:securityhub:{f['region']}::product/aws/guardduty",
        "GeneratorId": f["arn"].split("/finding/")[0], "AwsAccountId": f["accountId"], "Region": f["region"],
        "Types": ["TTPs/Policy:IAMUser-RootCredentialUsage"], "FirstObservedAt": f["service"]["eventFirstSeen"],
        "LastObservedAt": f["service"]["eventLastSeen"], "CreatedAt": f["createdAt"], "UpdatedAt": f["updatedAt"],
        "Severity": {"Product": 8, "Label": "HIGH", "Normalized": 80}, "Title": f["title"],
        "ProductFields": {"aws/securityhub/ProductName": "GuardDuty", "archived": "false",
                          "action/awsApiCallAction/api": "GetCallerIdentity"},
        "Resources": [{"Type": "AwsIamAccessKey", "Id": f"AWS::IAM::AccessKey:{akd['accessKeyId']}",
                       "Partition": "aws", "Region": f["region"],
                       "Details": {"AwsIamAccessKey": {"PrincipalId": akd["principalId"], "PrincipalType": "Root",
                                                       "PrincipalName": "Root", "AccessKeyId": akd["accessKeyId"]}}}],
        "RecordState": "ACTIVE", "Workflow": {"Status": "NEW"},
    }
    return {"version": "0", "id": "sh-1", "detail-type": "Security Hub Findings - Imported", "source": "aws.securityhub",
            "account": f["accountId"], "time": f["updatedAt"], "region": f["region"],
            "resources": [asff["Id"]], "detail": {"findings": [asff]}}


def native_only_root(seeded: dict[str, Any]) -> dict[str, Any]:
    doc = dict(seeded["incident"])
    doc["principals"] = [{"type": "root", "access_key_id": ROOT_KEY}]
    doc["resources"] = []
    doc["indicators"] = {}
    return doc


def contained_via(tmp_path: Path, make: Callable[[dict[str, Any]], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    with account() as session:
        seeded = seed(session, NAMES)
        before = state(session)
        tmp_path.mkdir(parents=True, exist_ok=True)
        trail_path = write_json(tmp_path / "trail.json", attack_trail(seeded).document())
        result = run_cli(tmp_path, make(seeded), "--cloudtrail", str(trail_path))
        return before, state(session), result


def test_guardduty_security_hub_and_native_reach_the_same_contained_state(tmp_path: Path) -> None:
    before, native, _ = contained_via(tmp_path / "native", native_only_root)
    _, via_gd, gd_result = contained_via(tmp_path / "gd", guardduty_finding)
    _, via_sh, sh_result = contained_via(tmp_path / "sh", lambda s: security_hub_event(guardduty_finding(s)))
    assert via_gd == native and via_sh == native
    assert gd_result["playbook"] == sh_result["playbook"] == "cryptojacking-root-key"
    assert gd_result["status"] == sh_result["status"] == "contained"
    # what contained means here, and what it left alone
    attacker = native["users"]["svc-backup"]
    assert attacker["keys"] == ["Inactive"] and attacker["groups"] == [] and not attacker["login_profile"]
    assert native["groups"]["k8s-ops"] == [] and native["services"]["billing/report-gen"]["desiredCount"] == 0
    assert native["tasks"]["billing"] == ["STOPPED", "STOPPED"]
    for name in ("alice", "ops-oncall", "breakglass-admin"):
        assert native["users"][name] == before["users"][name]
    assert native["groups"]["platform-admins"] == [ADMIN]
    assert native["services"]["web/frontend"] == before["services"]["web/frontend"]
    assert native["tasks"]["web"] == ["RUNNING", "RUNNING"]


def trail(seeded: dict[str, Any], acct: str, disguised: tuple[str, str, str], other: tuple[str, str, str]) -> dict[str, Any]:
    start = seeded["incident"]["window_start"]
    atk_key = seeded["attacker_key"]["AccessKeyId"]
    root = {"type": "Root", "principalId": acct, "arn": f"arn:aws:iam::{acct}:root", "accountId": acct,
            "accessKeyId": ROOT_KEY}

    def user(name: str) -> dict[str, Any]:
        return {"type": "IAMUser", "principalId": "AIDA" + name.upper()[:8], "arn": f"arn:aws:iam::{acct}:user/{name}",
                "accountId": acct, "accessKeyId": atk_key if name == NAMES["user"] else "AKIAOTHERUSERKEY0001",
                "userName": name}

    def rec(i: int, who: dict[str, Any], source: str, name: str, req: Any = None, resp: Any = None) -> dict[str, Any]:
        return {"eventVersion": "1.08", "userIdentity": who, "eventTime": start, "eventSource": f"{source}.amazonaws.com",
                "eventName": name, "awsRegion": "us-east-1", "sourceIPAddress": "203.0.113.7", "userAgent": "aws-cli/2",
                "requestParameters": req, "responseElements": resp, "eventID": f"evt-{i:03d}",
                "recipientAccountId": acct, "eventType": "AwsApiCall"}

    u, g = NAMES["user"], NAMES["group"]
    cluster, svc, image = disguised
    ocluster, osvc, oimage = other
    return {"Records": [
        rec(1, root, "sts", "GetCallerIdentity"),
        rec(2, root, "iam", "CreateUser", {"userName": u}, {"user": {"userName": u, "arn": f"arn:aws:iam::{acct}:user/{u}"}}),
        rec(3, root, "iam", "CreateAccessKey", {"userName": u}, {"accessKey": {"accessKeyId": atk_key, "userName": u,
                                                                               "status": "Active"}}),
        rec(4, root, "iam", "CreateLoginProfile", {"userName": u, "passwordResetRequired": False}),
        rec(5, root, "iam", "CreateGroup", {"groupName": g}),
        rec(6, root, "iam", "AttachGroupPolicy", {"groupName": g, "policyArn": ADMIN}),
        rec(7, root, "iam", "AddUserToGroup", {"groupName": g, "userName": u}),
        rec(8, user(u), "ecs", "CreateCluster", {"clusterName": cluster}),
        rec(9, user(u), "ecs", "RegisterTaskDefinition", {"family": svc, "requiresCompatibilities": ["FARGATE"],
                                                          "containerDefinitions": [{"name": "app", "image": image}]}),
        rec(10, user(u), "ecs", "CreateService", {"cluster": cluster, "serviceName": svc, "desiredCount": 2}),
        rec(11, user("alice"), "ecs", "RegisterTaskDefinition", {"family": osvc, "containerDefinitions": [
            {"name": "app", "image": oimage}]}),
        rec(12, user("alice"), "ecs", "CreateService", {"cluster": ocluster, "serviceName": osvc, "desiredCount": 1}),
    ]}


def test_disguised_miner_attributed_by_cloudtrail_is_contained_and_bystander_left_alone(tmp_path: Path) -> None:
    names = {**NAMES, "cluster": "batch-jobs", "service": "worker", "image": "yzsqbe/ka:si"}
    with account() as session:
        seeded = seed(session, names)
        service(session, "web", "reports", "python:3.12", 1)  # another principal, same window
        before = state(session)
        trail_doc = trail(seeded, "123456789012", ("batch-jobs", "worker", "yzsqbe/ka:si"), ("web", "reports", "python:3.12"))
        trail_path = write_json(tmp_path / "trail.json", trail_doc)
        runner = CliRunner()
        # the finding alone does not reach the disguised miner: the image matches no pattern
        dry = runner.invoke(app, ["run", str(write_json(tmp_path / "gd.json", guardduty_finding(seeded))), "--dry-run",
                                  "--output", "json", "--state-dir", str(tmp_path / "dry")])
        assert dry.exit_code == 0, dry.output
        assert json.loads(dry.stdout)["scope"]["ecs_services"] == []
        # stanch detect turns the trail into an incident naming only the attacker's work
        detected = runner.invoke(app, ["detect", str(trail_path), "-f", str(tmp_path / "incident.json")])
        assert detected.exit_code == 0, detected.output
        incident = json.loads((tmp_path / "incident.json").read_text())
        assert {"type": "ecs_service", "cluster": "batch-jobs", "name": "worker"} in incident["resources"]
        assert "reports" not in json.dumps(incident["resources"]) and "alice" not in json.dumps(incident["principals"])
        assert incident["indicators"]["images"] == ["yzsqbe/ka:si"]
        result = run_cli(tmp_path, incident, "--cloudtrail", str(trail_path))
        assert result["status"] == "contained"
        after = state(session)
    assert after["services"]["batch-jobs/worker"]["desiredCount"] == 0
    assert after["tasks"]["batch-jobs"] == ["STOPPED", "STOPPED"]
    assert after["services"]["web/reports"] == before["services"]["web/reports"]
    assert after["services"]["web/frontend"] == before["services"]["web/frontend"]
    assert set(after["tasks"]["web"]) == {"RUNNING"}
    assert after["users"]["alice"] == before["users"]["alice"]
    reasons = {s["name"]: s["reason"] for s in result["scope"]["ecs_services"]}
    assert set(reasons) == {"worker"} and "named in the incident" in reasons["worker"]


def test_finding_plus_cloudtrail_option_contains_the_same(tmp_path: Path) -> None:
    names = {**NAMES, "cluster": "batch-jobs", "service": "worker", "image": "yzsqbe/ka:si"}
    with account() as session:
        seeded = seed(session, names)
        trail_path = write_json(tmp_path / "trail.json", trail(seeded, "123456789012", ("batch-jobs", "worker", "yzsqbe/ka:si"),
                                                              ("web", "frontend", "nginx")))
        result = run_cli(tmp_path, guardduty_finding(seeded), "--cloudtrail", str(trail_path))
        assert result["status"] == "contained"
        after = state(session)
    assert after["services"]["batch-jobs/worker"]["desiredCount"] == 0
    assert after["services"]["web/frontend"]["desiredCount"] == 2
