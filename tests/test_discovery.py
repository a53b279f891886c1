"""Scope discovery and the reference playbook on an account seeded with other names, next to
legitimate look-alikes: only the attacker's principals and workloads are touched."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from actions.scope import DiscoverScope
from runner.aws import AwsSession
from runner.drill import ADMIN, account_snapshot, attack_trail, seed
from runner.engine import RunOptions
from runner.incident import validate_incident
from runner.service import AwsOptions, start_run
from tests.awshelp import context, plan, service

OTHER_NAMES = {"user": "svc-backup", "group": "k8s-ops", "cluster": "billing", "service": "report-gen",
               "image": "ghcr.io/someone/cpuminer-opt:v3.8"}


def seeded_incident(seeded: dict[str, Any], **over: Any) -> dict[str, Any]:
    """The incident only knows the root key and when it started: discovery must find the rest."""
    doc = dict(seeded["incident"])
    doc["principals"] = [{"type": "root", "access_key_id": "AKIAEXAMPLEROOTKEY01"}]
    doc["resources"] = []
    doc["indicators"] = {}
    return doc | over


def names(items: list[dict[str, Any]], key: str = "name") -> list[str]:
    return sorted(i[key] for i in items)


def test_discovery_attributes_the_attacker_by_cloudtrail_not_by_name(aws_managed: boto3.Session) -> None:
    seeded = seed(aws_managed, OTHER_NAMES)
    inc = validate_incident("t", seeded_incident(seeded))
    ctx = context(aws_managed, inc)
    ctx.trail_records = attack_trail(seeded).records
    scope = plan(DiscoverScope(), ctx, {}).outputs
    assert names(scope["users"]) == ["svc-backup"]
    assert "created by the attacker (iam:CreateUser drill-0002" in scope["users"][0]["reason"]
    assert scope["users"][0]["login_profile"]["present"] is True
    assert names(scope["groups"]) == ["k8s-ops"]
    assert [k["user"] for k in scope["access_keys"]] == ["svc-backup"]
    assert [(s["cluster"], s["name"]) for s in scope["ecs_services"]] == [("billing", "report-gen")]
    assert "matching miner pattern cpuminer" in scope["ecs_services"][0]["reason"]
    assert len(scope["ecs_tasks"]) == 2 and all("report-gen" in t["reason"] for t in scope["ecs_tasks"])
    assert scope["suspects"]["users"] == [] and scope["attribution"]["available"] is True
    left = {e["name"]: e["reason"] for e in scope["excluded"]}
    assert "web/frontend" in left and "matches no miner pattern" in left["web/frontend"]
    assert "legitimate holder" in left["platform-admins"]
    assert "protected principal" in left["breakglass-admin"]
    all_named = str(scope["users"] + scope["groups"] + scope["access_keys"] + scope["ecs_services"])
    for decoy in ("alice", "ops-oncall", "platform-admins", "frontend", "breakglass"):
        assert decoy not in all_named


def test_without_cloudtrail_window_finds_are_only_suspects(aws_managed: boto3.Session) -> None:
    seeded = seed(aws_managed, OTHER_NAMES)
    result = plan(DiscoverScope(), context(aws_managed, validate_incident("t", seeded_incident(seeded))), {})
    scope = result.outputs
    assert scope["users"] == [] and scope["groups"] == [] and scope["access_keys"] == []
    assert names(scope["suspects"]["users"]) == ["svc-backup"] and names(scope["suspects"]["groups"]) == ["k8s-ops"]
    reason = scope["suspects"]["users"][0]["reason"]
    assert "no CloudTrail source" in reason and "holds" in reason and "k8s-ops" in reason
    assert result.notes[0].startswith("NO CLOUDTRAIL SOURCE")
    # the miner is still found by its image: a workload match is evidence, not a guess
    assert [s["name"] for s in scope["ecs_services"]] == ["report-gen"]


def test_look_alike_images_are_not_miners(aws: boto3.Session) -> None:
    service(aws, "apps", "fast-rex-api", "registry.example.com/team/fast-rex-api:1.0", 1)
    service(aws, "apps", "xmrig-named-service-but-nginx", "nginx:1.27", 1)
    service(aws, "apps", "proxy", "docker.io/metal3d/xmrig:latest", 1)
    inc = validate_incident("t", {"id": "I-1", "kind": "cryptojacking", "account_id": "123456789012",
                                  "region": "us-east-1", "detected_at": "2030-01-01T00:00:00Z"})
    scope = plan(DiscoverScope(), context(aws, inc), {}).outputs
    assert [s["name"] for s in scope["ecs_services"]] == ["proxy"]


def test_named_service_and_standalone_task_are_seeds(aws: boto3.Session) -> None:
    service(aws, "apps", "api", "nginx:1.27", 1)
    inc = validate_incident("t", {"id": "I-1", "kind": "cryptojacking", "account_id": "123456789012",
                                  "region": "us-east-1", "detected_at": "2030-01-01T00:00:00Z",
                                  "resources": [{"type": "ecs_service", "cluster": "apps", "name": "api"}]})
    scope = plan(DiscoverScope(), context(aws, inc), {}).outputs
    assert [(s["name"], s["reason"]) for s in scope["ecs_services"]] == [("api", "named in the incident")]


def test_runner_identity_is_never_in_scope(aws: boto3.Session) -> None:
    iam = aws.client("iam")
    iam.create_user(UserName="responder")
    iam.put_user_policy(UserName="responder", PolicyName="all", PolicyDocument='{"Version":"2012-10-17",'
                        '"Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}')
    key = iam.create_access_key(UserName="responder")["AccessKey"]
    as_responder = boto3.Session(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"],
                                 region_name="us-east-1")
    inc = validate_incident("t", {"id": "I-1", "kind": "cryptojacking", "account_id": "123456789012",
                                  "region": "us-east-1", "detected_at": "2030-01-01T00:00:00Z",
                                  "window_start": "2000-01-01T00:00:00Z",
                                  "principals": [{"type": "user", "name": "responder"}]})
    scope = plan(DiscoverScope(), context(as_responder, inc), {}).outputs
    assert scope["users"] == [] and scope["access_keys"] == []
    assert {"name": "responder", "reason": "the runner's own identity"}.items() <= scope["excluded"][0].items()


def test_reference_playbook_on_other_names_touches_only_the_attacker(aws_managed: boto3.Session,
                                                                     tmp_path: Path) -> None:
    seeded = seed(aws_managed, OTHER_NAMES)
    inc = validate_incident("t", seeded_incident(seeded))
    before = account_snapshot(aws_managed)

    trail = (attack_trail(seeded).records, ["test trail"])

    def go() -> dict[str, Any]:
        return start_run(inc, playbook_ref=None, config_path=None,
                         options=RunOptions(approve_all=True, by="test"), aws_opts=AwsOptions(),
                         state=tmp_path / "state", stream=io.StringIO(), trail=trail,
                         session=AwsSession(region="us-east-1", boto_session=aws_managed)).result

    result = go()
    assert result["status"] == "contained", result
    after = account_snapshot(aws_managed)
    atk = after["users"]["svc-backup"]
    assert set(atk["keys"].values()) == {"Inactive"}
    assert atk["groups"] == [] and atk["inline"] == ["stanch-quarantine"] and not atk["login_profile"]
    assert after["groups"]["k8s-ops"] == []
    miner = next(v for k, v in after["services"].items() if k.endswith("/billing/report-gen"))
    assert miner["desiredCount"] == 0
    assert {v for k, v in after["tasks"].items() if "/billing/" in k} == {"STOPPED"}
    # everything else is exactly as it was
    for name in ("alice", "ops-oncall", "breakglass-admin"):
        assert after["users"][name] == before["users"][name]
    assert after["groups"]["platform-admins"] == before["groups"]["platform-admins"] == [ADMIN]
    assert {k: v for k, v in after["services"].items() if "/web/" in k} == \
        {k: v for k, v in before["services"].items() if "/web/" in k}
    assert {v for k, v in after["tasks"].items() if "/web/" in k} == {"RUNNING"}
    # previous values recorded for rollback
    scale = next(s for s in result["steps"] if s["id"] == "scale-miner-services")
    assert scale["changes"][0]["previous"] == {"desiredCount": 2}
    # the same incident again applies nothing
    time.sleep(0.01)
    again = go()
    assert again["status"] == "contained"
    assert [c for s in again["steps"] for c in s["changes"]] == []
    assert account_snapshot(aws_managed) == after


@pytest.mark.parametrize("image", ["xmrig/xmrig:6.21.0", "123456789012.dkr.ecr.us-east-1.amazonaws.com/xmr-stak",
                                   "docker.io/library/nbminer@sha256:abcd", "lolminer", "trexminer/t-rex:0.26"])
def test_config_miner_patterns_cover_registry_prefixes_and_tags(image: str) -> None:
    from actions.common import matches_miner
    from runner.config import load_config

    assert matches_miner(image, load_config().discovery.miner_patterns)


def test_discovery_and_evidence_run_with_exactly_their_declared_permissions(aws_managed: boto3.Session,
                                                                             tmp_path: Path) -> None:
    from actions.evidence import CaptureEvidence, RecordPosture
    from tests.awshelp import enforced_as

    seeded = seed(aws_managed, OTHER_NAMES)
    inc = validate_incident("t", seeded_incident(seeded))
    def ctx_for(session: boto3.Session) -> Any:
        ctx = context(session, inc)
        ctx.trail_records = attack_trail(seeded).records
        return ctx

    expected = plan(DiscoverScope(), ctx_for(aws_managed), {}).outputs
    with enforced_as(aws_managed, DiscoverScope.permissions) as limited:
        scope = plan(DiscoverScope(), ctx_for(limited), {}).outputs
    assert names(scope["users"]) == names(expected["users"]) == ["svc-backup"]
    assert [s["name"] for s in scope["ecs_services"]] == ["report-gen"]
    perms = tuple({*CaptureEvidence.permissions, *RecordPosture.permissions})
    with enforced_as(aws_managed, perms) as limited:
        ctx = context(limited, inc)
        ctx.evidence_dir = tmp_path / "bundle"
        captured = plan(CaptureEvidence(), ctx, {"scope": scope})
        plan(RecordPosture(), ctx, {})
    assert captured.outputs["files"] >= 6
    assert (tmp_path / "bundle" / "posture.json").exists()
    with enforced_as(aws_managed, [p for p in DiscoverScope.permissions if p != "iam:ListUsers"]) as limited, \
            pytest.raises(ClientError):
        plan(DiscoverScope(), context(limited, inc), {})
