"""The report's facts from recorded data: origins, technique mapping, the cost estimate and the
hygiene findings. Pure functions, other names and regions than the reference, no AWS."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from runner.config import PricingSection
from runner.report_facts import attacker_origins, attacker_steps, hardening_facts, mining_cost

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
INCIDENT = {"id": "INC-77", "account_id": "210987654321", "region": "eu-central-1",
            "window_start": "2026-03-01T00:00:00Z", "detected_at": "2026-03-01T11:00:00Z",
            "principals": [{"type": "access_key", "id": "AKIALEAKED"}],
            "indicators": {"source_ips": ["198.51.100.7"]},
            "evidence": [
                {"time": "2026-03-01T00:05:00Z", "event": "iam:CreateUser", "actor": "root:210987654321",
                 "source_ip": "203.0.113.9", "detail": "user ci-runner-2"},
                {"time": "2026-03-01T00:01:00Z", "event": "sts:GetCallerIdentity", "actor": "root:210987654321",
                 "source_ip": "203.0.113.9"},
                {"time": "2026-03-01T00:06:00Z", "event": "iam:AttachUserPolicy", "actor": "root:210987654321"},
                {"time": "2026-03-01T00:03:00Z", "event": "cloudtrail:StopLogging", "actor": "user:ci-runner-2"},
                {"time": "2026-03-01T00:30:00Z", "event": "ecs:CreateService", "actor": "user:ci-runner-2",
                 "detail": "batch/thumbnailer"},
            ]}


def test_origins_come_from_the_incident_cloudtrail_and_attributed_activity() -> None:
    lookup = [{"CloudTrailEvent": {"sourceIPAddress": "203.0.113.9", "userAgent": "aws-cli/2.15.0 Python/3.11"}},
              {"CloudTrailEvent": {"sourceIPAddress": "ecs.amazonaws.com", "userAgent": "ecs.amazonaws.com"}}]
    activity = [{"time": "2026-03-01T00:30:00Z", "event": "ecs:RunTask", "source_ip": "192.0.2.44",
                 "user_agent": "Boto3/1.34.0", "city": "Frankfurt", "country": "DE"}]
    o = attacker_origins(INCIDENT, lookup, activity)
    assert o["source_ips"] == ["198.51.100.7", "203.0.113.9", "192.0.2.44"]  # no AWS service names
    assert o["user_agents"] == ["aws-cli/2.15.0 Python/3.11", "ecs.amazonaws.com", "Boto3/1.34.0"]
    assert o["locations"] == ["Frankfurt, DE"]


def test_attack_steps_in_order_with_technique_ids() -> None:
    scope = {"ecs_services": [{"cluster": "batch", "name": "thumbnailer", "region": "eu-central-1",
                               "images": ["docker.io/yzsqbe/ka:si"]},
                              {"cluster": "batch", "name": "thumbnailer", "region": "sa-east-1",
                               "images": ["docker.io/yzsqbe/ka:si"]}]}
    steps = attacker_steps(INCIDENT, scope, [], [])
    assert [s["techniques"][0]["id"] for s in steps] == ["T1078.004", "T1562.008", "T1136.003", "T1098.003",
                                                         "T1610"]
    assert steps[0]["time"] == "2026-03-01T00:01:00Z"  # ordered by time, not by file order
    compute = steps[-1]
    ids = {t["id"] for t in compute["techniques"]}
    assert {"T1496.001", "T1036.005", "T1535"} <= ids  # hijacking, benign name, two regions
    assert "batch/thumbnailer" in compute["what"] and "2 regions" in compute["what"]
    assert "CreateService (batch/thumbnailer)" in compute["calls"]


def test_mining_cost_is_an_estimate_with_its_inputs() -> None:
    prices = PricingSection(as_of="2026-02-01", fargate_vcpu_hour=0.04, fargate_gb_hour=0.005)
    tasks = [{"taskArn": f"arn:aws:ecs:sa-east-1:210987654321:task/batch/t{i}", "group": "service:thumbnailer",
              "launchType": "FARGATE", "cpu": "16384", "memory": "32768",
              "startedAt": "2026-03-01T00:30:00Z", "taskDefinitionArn": "td"} for i in range(25)]
    tasks.append({"taskArn": "arn:aws:ecs:sa-east-1:210987654321:task/batch/legit", "group": "service:web",
                  "cpu": "1024", "memory": "2048", "startedAt": "2026-01-01T00:00:00Z"})
    docs = [{"cluster": {"clusterName": "batch"}, "services": [], "task_definitions": [], "tasks": tasks}]
    scope = {"ecs_services": [{"cluster": "batch", "name": "thumbnailer",
                               "arn": "arn:aws:ecs:sa-east-1:210987654321:service/batch/thumbnailer"}]}
    stopped = {t["taskArn"]: "2026-03-01T10:30:00Z" for t in tasks[:20]}  # 5 tasks never stopped
    cost = mining_cost(docs, scope, INCIDENT, stopped, {}, prices, NOW)
    by_end = {i["to"]: i for i in cost["items"]}
    done, running = by_end["2026-03-01T10:30:00Z"], by_end["2026-03-02T12:00:00Z"]
    assert (done["count"], done["vcpu"], done["memory_gb"], done["hours"]) == (20, 16.0, 32.0, 10.0)
    assert done["cost"] == pytest.approx(20 * 10 * (16 * 0.04 + 32 * 0.005))
    assert running["count"] == 5 and "still running" in running["what"]
    assert cost["total"] == pytest.approx(done["cost"] + running["cost"], abs=0.01)
    assert "legit" not in str(cost) and "web" not in str(cost["items"])  # only the miner's tasks
    assert cost["prices"]["as_of"] == "2026-02-01" and "estimate" in cost["note"]


def test_hygiene_leaves_out_the_attacker_and_never_passes_admin_holders() -> None:
    scope = {"users": [{"name": "ci-runner-2"}], "groups": [{"name": "ops-all"}]}
    posture = {"users": [
        {"name": "ci-runner-2", "mfa": False, "keys": [{"id": "AKIAATTACKER", "status": "Active",
                                                       "created": "2026-03-01T00:05:00Z", "last_used": None}]},
        {"name": "maria", "mfa": False, "keys": [{"id": "AKIAOLD", "status": "Active",
                                                 "created": "2025-01-01T00:00:00Z", "last_used": "2026-03-01T00:00:00Z"}]},
        {"name": "sre-lead", "mfa": True, "keys": []}],
        "admin_holders": {"users": ["sre-lead"], "groups": ["ops-all"], "roles": []}, "eventbridge_rules": []}
    facts = {f["fact"]: f for f in hardening_facts({"AccountMFAEnabled": 1}, posture, scope, NOW)}
    assert facts["IAM users without MFA"]["value"] == "maria"
    assert "AKIAATTACKER" not in facts["Active access keys that are old or unused"]["value"]
    assert "AKIAOLD (maria, older than 90 days)" in facts["Active access keys that are old or unused"]["value"]
    admins = facts["Principals holding AdministratorAccess"]
    assert admins["value"] == "user sre-lead" and admins["state"] == "review" and not admins["ok"]
    assert facts["Root user MFA"]["state"] == "ok"
