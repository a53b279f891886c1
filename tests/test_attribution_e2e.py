"""Scope is decided by attribution, end to end from the CLI: with CloudTrail, everything the
compromised credentials did is contained or reversed precisely and nothing else is touched; with
no CloudTrail, identities that are merely inside the window are suspects that only their own
explicit approval contains; protected-looking attacker identities are escalated, and a change that
would cut a protected principal's last admin path is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.drill import ADMIN, TrailWriter, _service, account_snapshot, attack_trail, base_image, seed
from tests.awshelp import network
from tests.conftest import write_json

pytestmark = pytest.mark.usefixtures("two_regions")  # attribution, not the region search, is under test

NAMES = {"user": "svc-metrics", "group": "data-eng", "cluster": "nightly", "service": "etl",
         "image": "ghcr.io/someone/cpuminer-opt:v3.8"}
ALLOW_ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
OUTSIDE_TRUST = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": "arn:aws:iam::999988887777:root"}}]})
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                            "Principal": {"Service": "ecs-tasks.amazonaws.com"}}]})


@contextmanager
def account() -> Iterator[boto3.Session]:
    from moto import mock_aws

    with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        yield boto3.Session(region_name="us-east-1")


def build(session: boto3.Session) -> dict[str, Any]:
    """The reference attack with other names, plus what real accounts and attackers add inside the window."""
    iam = session.client("iam")
    iam.create_role(RoleName="deploy", AssumeRolePolicyDocument=TRUST)  # pre-existing, assumed by the attacker
    iam.create_role(RoleName="ci-deployer", AssumeRolePolicyDocument=TRUST)
    seeded = seed(session, NAMES)
    trail = attack_trail(seeded)
    root = trail.root()
    # inside the window, by others: a CI pipeline's user, an admin's group
    iam.create_user(UserName="ci-bot-7")
    ci_key = iam.create_access_key(UserName="ci-bot-7")["AccessKey"]["AccessKeyId"]
    pipeline = trail.role("ci-deployer", "pipeline-881", "ASIACIPIPELINE000001")
    trail.add(pipeline, "iam", "CreateUser", {"userName": "ci-bot-7"}, ip="10.0.0.12", agent="terraform/1.9")
    trail.add(pipeline, "iam", "CreateAccessKey", {"userName": "ci-bot-7"},
              {"accessKey": {"accessKeyId": ci_key, "userName": "ci-bot-7"}}, ip="10.0.0.12", agent="terraform/1.9")
    iam.create_group(GroupName="analytics")
    trail.add(trail.user("alice", seeded["alice_key"]["AccessKeyId"]), "iam", "CreateGroup",
              {"groupName": "analytics"}, ip="198.51.100.20")
    # the attacker: a user named like the break-glass pattern
    iam.create_user(UserName="breakglass-ops")
    evasive_key = iam.create_access_key(UserName="breakglass-ops")["AccessKey"]["AccessKeyId"]
    trail.add(root, "iam", "CreateUser", {"userName": "breakglass-ops"})
    trail.add(root, "iam", "CreateAccessKey", {"userName": "breakglass-ops"},
              {"accessKey": {"accessKeyId": evasive_key, "userName": "breakglass-ops"}})
    # the attacker: admin rights, an inline * policy and a new key on the legitimate ops-oncall
    own_key = iam.list_access_keys(UserName="ops-oncall")["AccessKeyMetadata"][0]["AccessKeyId"]
    iam.attach_user_policy(UserName="ops-oncall", PolicyArn=ADMIN)
    trail.add(root, "iam", "AttachUserPolicy", {"userName": "ops-oncall", "policyArn": ADMIN})
    iam.put_user_policy(UserName="ops-oncall", PolicyName="maintenance", PolicyDocument=ALLOW_ALL)
    trail.add(root, "iam", "PutUserPolicy", {"userName": "ops-oncall", "policyName": "maintenance",
                                             "policyDocument": ALLOW_ALL})
    minted = iam.create_access_key(UserName="ops-oncall")["AccessKey"]["AccessKeyId"]
    trail.add(root, "iam", "CreateAccessKey", {"userName": "ops-oncall"},
              {"accessKey": {"accessKeyId": minted, "userName": "ops-oncall"}})
    # the attacker's user assumes the existing role
    me = trail.user(NAMES["user"], seeded["attacker_key"]["AccessKeyId"])
    trail.add(me, "sts", "AssumeRole", {"roleArn": "arn:aws:iam::123456789012:role/deploy", "roleSessionName": "s"},
              {"credentials": {"accessKeyId": "ASIADEPLOYSESSION001"},
               "assumedRoleUser": {"arn": "arn:aws:sts::123456789012:assumed-role/deploy/s"}})
    # the attacker opens the existing role to an outside account; the trail also holds the role's creation
    created = trail.add(trail.user("alice", seeded["alice_key"]["AccessKeyId"]), "iam", "CreateRole",
                        {"roleName": "deploy", "assumeRolePolicyDocument": TRUST})
    created["eventTime"] = "2026-01-05T08:00:00Z"
    iam.update_assume_role_policy(RoleName="deploy", PolicyDocument=OUTSIDE_TRUST)
    trail.add(root, "iam", "UpdateAssumeRolePolicy", {"roleName": "deploy", "policyDocument": OUTSIDE_TRUST})
    # root starts a service with an innocuous image
    _service(session.client("ecs"), network(session), "batch", "worker", "python:3.12", 2)
    trail.add(root, "ecs", "CreateService", {"cluster": "batch", "serviceName": "worker", "desiredCount": 2})
    # the attacker's user launches an instance with an innocuous look
    ec2 = session.client("ec2")
    instance = ec2.run_instances(ImageId=base_image(ec2), MinCount=1, MaxCount=1,
                                 InstanceType="c5.4xlarge")["Instances"][0]["InstanceId"]
    trail.add(me, "ec2", "RunInstances", {"instanceType": "c5.4xlarge"},
              {"instancesSet": {"items": [{"instanceId": instance}]}})
    incident = {**seeded["incident"], "principals": [{"type": "root", "access_key_id": "AKIAEXAMPLEROOTKEY01"}],
                "resources": [], "indicators": {}}
    return {"seeded": seeded, "trail": trail, "incident": incident, "own_key": own_key, "minted": minted,
            "evasive_key": evasive_key, "instance": instance}


def run(tmp_path: Path, built: dict[str, Any], *extra: str, trail: bool = True) -> tuple[int, dict[str, Any]]:
    args = ["run", str(write_json(tmp_path / "incident.json", built["incident"])), "--approve-all", "--by", "test",
            "--output", "json", "--state-dir", str(tmp_path / "state"), *extra]
    if trail:
        args += ["--cloudtrail", str(write_json(tmp_path / "trail.json", built["trail"].document()))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 1, 3, 4, 5), result.output
    return result.exit_code, json.loads(result.stdout)


def test_with_the_trail_everything_attributed_is_contained_and_nothing_else(tmp_path: Path) -> None:
    with account() as session:
        built = build(session)
        before = account_snapshot(session)
        code, doc = run(tmp_path, built)
        after = account_snapshot(session)
        iam = session.client("iam")
        deploy_policies = iam.list_role_policies(RoleName="deploy")["PolicyNames"]
        deploy_trust = iam.get_role(RoleName="deploy")["Role"]["AssumeRolePolicyDocument"]
        instance_state = session.client("ec2").describe_instances(InstanceIds=[built["instance"]])[
            "Reservations"][0]["Instances"][0]["State"]["Name"]
        services = {s["serviceName"]: s["desiredCount"] for s in session.client("ecs").describe_services(
            cluster="batch", services=["worker"])["services"]}
        # a false positive after all: rollback puts back exactly what the precise reversals recorded
        back = CliRunner().invoke(app, ["rollback", doc["run_id"], "--approve-all", "--by", "test", "--output", "json",
                                        "--false-positive", "--reason", "the test says so",
                                        "--state-dir", str(tmp_path / "state")])
        restored = account_snapshot(session)["users"]["ops-oncall"]
        deploy_after_rollback = iam.list_role_policies(RoleName="deploy")["PolicyNames"]
    assert code == 0 and doc["status"] == "contained", json.dumps(doc["steps"], indent=1)[:3000]
    users = after["users"]
    # the attacker's own identities, whatever their names
    assert set(users["svc-metrics"]["keys"].values()) == {"Inactive"}
    assert "stanch-quarantine" in users["svc-metrics"]["inline"] and not users["svc-metrics"]["groups"]
    assert after["groups"]["data-eng"] == []
    # named like break-glass, created by the attacker: escalated, gated, contained (--approve-all approved it)
    assert set(users["breakglass-ops"]["keys"].values()) == {"Inactive"}
    assert "stanch-quarantine" in users["breakglass-ops"]["inline"]
    escalated = doc["scope"]["escalated"]["users"]
    assert [u["name"] for u in escalated] == ["breakglass-ops"] and "likely evasion" in escalated[0]["reason"]
    assert next(s for s in doc["steps"] if s["id"] == "contain-escalated")["approval"] == "required"
    # the legitimate user the attacker changed: exactly those changes undone, its own access kept
    ops = users["ops-oncall"]
    assert ops["attached"] == [] and ops["inline"] == []
    assert ops["keys"] == {built["own_key"]: "Active", built["minted"]: "Inactive"}
    assert ops["groups"] == before["users"]["ops-oncall"]["groups"]
    undo = next(s for s in doc["steps"] if s["id"] == "undo-attacker-changes")
    deleted = next(c for c in undo["changes"] if c["operation"] == "iam:DeleteUserPolicy")
    assert "Allow" in json.dumps(deleted["previous"]["PolicyDocument"])  # kept as the previous value
    # the existing role: the attacker's sessions revoked, not locked out
    assert deploy_policies == ["stanch-revoke-older-sessions"]
    assert deploy_trust == json.loads(TRUST)  # the trust policy before the attacker's, from the trail
    # root-created work, whatever its image; and the instance the attacker's user launched
    assert services == {"worker": 0}
    assert instance_state == "stopped"
    launched = next(a for a in doc["attacker_activity"] if a["event"].endswith(":RunInstances"))
    assert launched["outcome"] == "contained" and built["instance"] in launched["resource"]
    assert all(a["outcome"] != "manual" for a in doc["attacker_activity"]), doc["manual_actions"]
    # everything created inside the window by others, and the protected principals, untouched
    for name in ("ci-bot-7", "alice", "breakglass-admin"):
        assert users[name] == before["users"][name], name
    assert after["groups"]["analytics"] == before["groups"]["analytics"]
    assert after["groups"]["platform-admins"] == before["groups"]["platform-admins"] == [ADMIN]
    left = {e["name"]: e["reason"] for e in doc["scope"]["excluded"]}
    assert "role:ci-deployer" in left["ci-bot-7"] and "alice" in left["analytics"]
    assert doc["scope"]["suspects"]["users"] == []
    assert back.exit_code in (0, 5), back.output
    assert restored["inline"] == ["maintenance"] and restored["attached"] == [ADMIN]
    assert restored["keys"] == {built["own_key"]: "Active", built["minted"]: "Active"}
    assert deploy_after_rollback == []
    # every in-scope item says which event proves it
    assert all("drill-" in u["reason"] for u in doc["scope"]["users"])


def test_without_cloudtrail_nobody_is_quarantined_for_being_in_the_window(tmp_path: Path) -> None:
    with account() as session:
        built = build(session)
        before = account_snapshot(session)
        code, doc = run(tmp_path, built, trail=False)
        after = account_snapshot(session)
    assert code == 3 and doc["status"] == "awaiting_approval"
    waiting = [s["id"] for s in doc["steps"] if s["status"] == "awaiting_approval"]
    assert waiting == ["contain-suspects"]
    suspects = {u["name"] for u in doc["scope"]["suspects"]["users"]}
    assert {"svc-metrics", "ci-bot-7", "breakglass-ops"} <= suspects
    assert "data-eng" in {g["name"] for g in doc["scope"]["suspects"]["groups"]}
    assert after["users"] == before["users"] and after["groups"] == before["groups"]
    notes = " ".join(n for s in doc["steps"] for n in s.get("notes", []))
    assert "NO CLOUDTRAIL SOURCE" in notes
    # the miner is still stopped: its image is evidence, not a guess
    assert after["services"] != before["services"]


def test_only_an_explicit_approval_contains_suspects(tmp_path: Path) -> None:
    with account() as session:
        built = build(session)
        code, doc = run(tmp_path, built, trail=False)
        assert code == 3
        state = str(tmp_path / "state")
        # --approve-all on resume does not cover it either
        again = CliRunner().invoke(app, ["resume", doc["run_id"], "--approve-all", "--state-dir", state,
                                         "--output", "json"])
        assert again.exit_code == 3, again.output
        ok = CliRunner().invoke(app, ["approve", doc["run_id"], "--step", "contain-suspects", "--by", "lead",
                                      "--reason", "confirmed with the team: none of these are ours",
                                      "--state-dir", state])
        assert ok.exit_code == 0, ok.output
        done = CliRunner().invoke(app, ["resume", doc["run_id"], "--state-dir", state, "--output", "json"])
        after = account_snapshot(session)
    assert done.exit_code in (0, 1, 5), done.output
    assert set(after["users"]["ci-bot-7"]["keys"].values()) == {"Inactive"}
    assert "stanch-quarantine" in after["users"]["svc-metrics"]["inline"]


def test_cutting_a_protected_principals_last_admin_path_is_refused(tmp_path: Path) -> None:
    with account() as session:
        iam = session.client("iam")
        iam.create_user(UserName="breakglass-jane")
        built = build(session)
        iam.add_user_to_group(GroupName="platform-admins", UserName="breakglass-jane")
        before = account_snapshot(session)
        # a responder names the break-glass group in the incident by mistake
        built["incident"]["principals"].append({"type": "group", "name": "platform-admins"})
        code, doc = run(tmp_path, built)
        after = account_snapshot(session)
    assert code == 4 and doc["status"] == "refused"
    assert "last admin path of protected principal arn:aws:iam::123456789012:user/breakglass-jane" in doc["error"]
    assert after["groups"]["platform-admins"] == before["groups"]["platform-admins"] == [ADMIN]


@pytest.mark.parametrize("noise", [True])
def test_detect_finds_the_chain_and_the_role_hop_and_nothing_else(tmp_path: Path, noise: bool) -> None:
    with account() as session:
        built = build(session)
    trail: TrailWriter = built["trail"]
    if noise:
        alice = trail.user("alice", "AKIAALICEKEY00000001")
        trail.add(alice, "iam", "CreateUser", {"userName": "intern"})
        trail.add(alice, "ecs", "CreateService", {"cluster": "web", "serviceName": "blog", "desiredCount": 1})
    result = CliRunner().invoke(app, ["detect", str(write_json(tmp_path / "t.json", trail.document()))])
    assert result.exit_code == 0, result.output
    incident = json.loads(result.stdout)
    ids = {e["event_id"] for e in incident["evidence"]}
    by_event = {e["eventID"]: e for e in trail.records}
    attacker = {i for i, r in by_event.items() if r["userIdentity"].get("userName") not in ("alice",)
                and "ci-deployer" not in json.dumps(r["userIdentity"])}
    assert ids == attacker
    hop = next(e for e in incident["evidence"] if e["event"] == "sts:AssumeRole")
    assert "deploy" in hop["detail"] and hop["source_ip"] == "203.0.113.7"
    names = {p.get("name") for p in incident["principals"]}
    assert {"svc-metrics", "breakglass-ops", "data-eng"} <= names
    assert not names & {"intern", "ci-bot-7", "analytics", "ops-oncall", "deploy"}
    assert {"type": "ecs_service", "cluster": "batch", "name": "worker"} in incident["resources"]
