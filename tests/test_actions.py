"""Every action on moto: the plan shows the change, after apply a fresh plan is empty, applying
again changes nothing, and a principal holding exactly the declared permissions can run it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from actions import autoscaling as autoscaling_actions
from actions import ec2 as ec2_actions
from actions import ecs as ecs_actions
from actions import events as events_actions
from actions import iam as iam_actions
from actions.base import Action
from actions.registry import builtin_registry
from runner.drill import base_image
from tests.awshelp import ACCOUNT, context, converge, enforced_as, incident, plan, service

ARN = f"arn:aws:iam::{ACCOUNT}"


def user_with_key(s: boto3.Session, name: str = "intruder") -> str:
    s.client("iam").create_user(UserName=name)
    return str(s.client("iam").create_access_key(UserName=name)["AccessKey"]["AccessKeyId"])


# ------------------------------------------------------------------ scenarios: setup -> params, check
def keys_setup(s: boto3.Session) -> dict[str, Any]:
    key = user_with_key(s)
    user_with_key(s, "bystander")
    return {"access_keys": [{"id": key, "user": "intruder", "reason": "extra fields are ignored"}]}


def keys_check(s: boto3.Session) -> None:
    iam = s.client("iam")
    assert [k["Status"] for k in iam.list_access_keys(UserName="intruder")["AccessKeyMetadata"]] == ["Inactive"]
    assert [k["Status"] for k in iam.list_access_keys(UserName="bystander")["AccessKeyMetadata"]] == ["Active"]


def login_setup(s: boto3.Session) -> dict[str, Any]:
    s.client("iam").create_user(UserName="intruder")
    s.client("iam").create_login_profile(UserName="intruder", Password="Xx-canary-pw-1!")
    return {"users": [{"name": "intruder"}]}


def login_check(s: boto3.Session) -> None:
    with pytest.raises(ClientError, match="NoSuchEntity"):
        s.client("iam").get_login_profile(UserName="intruder")


def mfa_setup(s: boto3.Session) -> dict[str, Any]:
    iam = s.client("iam")
    iam.create_user(UserName="intruder")
    serial = iam.create_virtual_mfa_device(VirtualMFADeviceName="intruder-mfa")["VirtualMFADevice"]["SerialNumber"]
    iam.enable_mfa_device(UserName="intruder", SerialNumber=serial, AuthenticationCode1="123456",
                          AuthenticationCode2="654321")
    return {"users": [{"name": "intruder", "created_in_window": True}]}


def mfa_check(s: boto3.Session) -> None:
    assert s.client("iam").list_mfa_devices(UserName="intruder")["MFADevices"] == []


def quarantine_setup(s: boto3.Session) -> dict[str, Any]:
    iam = s.client("iam")
    iam.create_user(UserName="intruder")
    iam.create_role(RoleName="intruder-role", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                                                "Action": "sts:AssumeRole"}]}))
    return {"users": [{"name": "intruder"}], "roles": [{"name": "intruder-role"}]}


def quarantine_check(s: boto3.Session) -> None:
    iam = s.client("iam")
    doc = iam.get_user_policy(UserName="intruder", PolicyName="stanch-quarantine")["PolicyDocument"]
    sids = [st["Sid"] for st in doc["Statement"]]
    assert sids == ["StanchQuarantineDenyAll", "StanchRevokeOlderSessions"]
    assert "aws:TokenIssueTime" in json.dumps(doc)
    assert iam.get_role_policy(RoleName="intruder-role", PolicyName="stanch-quarantine")["PolicyDocument"]


def groups_setup(s: boto3.Session) -> dict[str, Any]:
    iam = s.client("iam")
    iam.create_user(UserName="intruder")
    for g in ("ecs-admins", "devs"):
        iam.create_group(GroupName=g)
        iam.add_user_to_group(GroupName=g, UserName="intruder")
    iam.create_user(UserName="bystander")
    iam.add_user_to_group(GroupName="devs", UserName="bystander")
    return {"users": [{"name": "intruder"}]}


def groups_check(s: boto3.Session) -> None:
    iam = s.client("iam")
    assert iam.list_groups_for_user(UserName="intruder")["Groups"] == []
    assert [g["GroupName"] for g in iam.list_groups_for_user(UserName="bystander")["Groups"]] == ["devs"]


def admin_setup(s: boto3.Session) -> dict[str, Any]:
    iam = s.client("iam")
    star = iam.create_policy(PolicyName="everything", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))["Policy"]["Arn"]
    scoped = iam.create_policy(PolicyName="read-s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:Get*", "Resource": "*"}]}))["Policy"]["Arn"]
    iam.create_group(GroupName="ops-team")
    iam.create_user(UserName="intruder")
    for arn in (star, scoped):
        iam.attach_group_policy(GroupName="ops-team", PolicyArn=arn)
        iam.attach_user_policy(UserName="intruder", PolicyArn=arn)
    iam.create_group(GroupName="real-admins")
    iam.attach_group_policy(GroupName="real-admins", PolicyArn=star)
    return {"users": [{"name": "intruder"}], "groups": [{"name": "ops-team"}]}


def admin_check(s: boto3.Session) -> None:
    iam = s.client("iam")
    left = [p["PolicyName"] for p in iam.list_attached_group_policies(GroupName="ops-team")["AttachedPolicies"]]
    assert left == ["read-s3"]
    assert [p["PolicyName"] for p in iam.list_attached_user_policies(UserName="intruder")["AttachedPolicies"]] == ["read-s3"]
    assert [p["PolicyName"] for p in iam.list_attached_group_policies(GroupName="real-admins")["AttachedPolicies"]] == [
        "everything"]


def scale_setup(s: boto3.Session) -> dict[str, Any]:
    service(s, "billing", "report-gen", "xmrig/xmrig", 3)
    service(s, "billing", "invoices", "nginx", 2)
    return {"services": [{"cluster": "billing", "name": "report-gen"}]}


def _desired(s: boto3.Session, cluster: str, name: str) -> int:
    return int(s.client("ecs").describe_services(cluster=cluster, services=[name])["services"][0]["desiredCount"])


def scale_check(s: boto3.Session) -> None:
    assert _desired(s, "billing", "report-gen") == 0
    assert _desired(s, "billing", "invoices") == 2


def stop_setup(s: boto3.Session) -> dict[str, Any]:
    service(s, "billing", "report-gen", "xmrig/xmrig", 2)
    service(s, "billing", "invoices", "nginx", 2)
    ecs = s.client("ecs")
    td = ecs.describe_services(cluster="billing", services=["report-gen"])["services"][0]["taskDefinition"]
    from tests.awshelp import network
    lone = ecs.run_task(cluster="billing", taskDefinition=td, count=1, launchType="FARGATE",
                        networkConfiguration=network(s))["tasks"][0]["taskArn"]
    return {"services": [{"cluster": "billing", "name": "report-gen"}], "tasks": [{"cluster": "billing", "arn": lone}]}


def _task_states(s: boto3.Session) -> dict[str, list[str]]:
    ecs = s.client("ecs")
    arns = ecs.list_tasks(cluster="billing")["taskArns"]
    out: dict[str, list[str]] = {}
    for t in ecs.describe_tasks(cluster="billing", tasks=arns)["tasks"]:
        out.setdefault(t.get("group") or "none", []).append(t["desiredStatus"])
    return out


def stop_check(s: boto3.Session) -> None:
    states = _task_states(s)
    assert states["service:report-gen"] == ["STOPPED", "STOPPED"]
    assert states["service:invoices"] == ["RUNNING", "RUNNING"]
    assert [v for k, v in states.items() if not k.startswith("service:")] == [["STOPPED"]]
    reasons = {t["stoppedReason"] for t in s.client("ecs").describe_tasks(
        cluster="billing", tasks=s.client("ecs").list_tasks(cluster="billing", desiredStatus="STOPPED")["taskArns"])["tasks"]}
    assert reasons == {"stanch containment of incident INC-TEST-1"}


def delete_services_setup(s: boto3.Session) -> dict[str, Any]:
    service(s, "billing", "report-gen", "xmrig/xmrig", 0)
    service(s, "billing", "invoices", "nginx", 1)
    return {"services": [{"cluster": "billing", "name": "report-gen"}]}


def delete_services_check(s: boto3.Session) -> None:
    ecs = s.client("ecs")
    statuses = {x["serviceName"]: x["status"] for x in ecs.describe_services(
        cluster="billing", services=["report-gen", "invoices"])["services"]}
    assert statuses == {"report-gen": "INACTIVE", "invoices": "ACTIVE"}


def deregister_setup(s: boto3.Session) -> dict[str, Any]:
    return {"task_definitions": [{"arn": service(s, "billing", "report-gen", "xmrig/xmrig", 0)}]}


def deregister_check(s: boto3.Session) -> None:
    ecs = s.client("ecs")
    assert ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"] == []


def clusters_setup(s: boto3.Session) -> dict[str, Any]:
    s.client("ecs").create_cluster(clusterName="empty-miner")
    service(s, "shared", "invoices", "nginx", 1)
    return {"clusters": [{"name": "empty-miner"}, {"name": "shared"}]}


def clusters_check(s: boto3.Session) -> None:
    found = {c["clusterName"]: c["status"] for c in s.client("ecs").describe_clusters(
        clusters=["empty-miner", "shared"])["clusters"]}
    assert found.get("shared") == "ACTIVE"
    assert found.get("empty-miner", "INACTIVE") == "INACTIVE"


def scaling_setup(s: boto3.Session) -> dict[str, Any]:
    service(s, "billing", "report-gen", "xmrig/xmrig", 1)
    service(s, "billing", "invoices", "nginx", 1)
    aas = s.client("application-autoscaling")
    for name, low in (("report-gen", 4), ("invoices", 2)):
        aas.register_scalable_target(ServiceNamespace="ecs", ResourceId=f"service/billing/{name}",
                                     ScalableDimension="ecs:service:DesiredCount", MinCapacity=low, MaxCapacity=8)
    return {"services": [{"cluster": "billing", "name": "report-gen"}]}


def scaling_check(s: boto3.Session) -> None:
    found = {t["ResourceId"]: (t["MinCapacity"], all((t.get("SuspendedState") or {"x": False}).values()))
             for t in s.client("application-autoscaling").describe_scalable_targets(
                 ServiceNamespace="ecs")["ScalableTargets"]}
    assert found == {"service/billing/report-gen": (0, True), "service/billing/invoices": (2, False)}


ROLE = f"arn:aws:iam::{ACCOUNT}:role/events-ecs"


def _tds(s: boto3.Session) -> tuple[str, str]:
    return service(s, "billing", "report-gen", "xmrig/xmrig", 1), service(s, "billing", "invoices", "nginx", 1)


def rules_setup(s: boto3.Session) -> dict[str, Any]:
    miner, legit = _tds(s)
    events = s.client("events")
    for name, td in (("hourly-report", miner), ("hourly-invoices", legit)):
        events.put_rule(Name=name, ScheduleExpression="rate(1 hour)")
        events.put_targets(Rule=name, Targets=[{"Id": "1", "Arn": f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/billing",
                                                "RoleArn": ROLE, "EcsParameters": {"TaskDefinitionArn": td}}])
    return {"task_definitions": [{"arn": miner}]}


def rules_check(s: boto3.Session) -> None:
    states = {r["Name"]: r["State"] for r in s.client("events").list_rules()["Rules"]}
    assert states == {"hourly-report": "DISABLED", "hourly-invoices": "ENABLED"}


def schedules_setup(s: boto3.Session) -> dict[str, Any]:
    miner, legit = _tds(s)
    for name, td in (("report-every-5", miner), ("invoices-nightly", legit)):
        s.client("scheduler").create_schedule(
            Name=name, ScheduleExpression="rate(5 minutes)", FlexibleTimeWindow={"Mode": "OFF"},
            Target={"Arn": f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/billing", "RoleArn": ROLE,
                    "EcsParameters": {"TaskDefinitionArn": td, "TaskCount": 5}})
    return {"task_definitions": [{"arn": miner}]}


def schedules_check(s: boto3.Session) -> None:
    states = {x["Name"]: x["State"] for x in s.client("scheduler").list_schedules()["Schedules"]}
    assert states == {"report-every-5": "DISABLED", "invoices-nightly": "ENABLED"}


def instances_setup(s: boto3.Session) -> dict[str, Any]:
    ec2 = s.client("ec2")
    image = base_image(ec2)
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2)["Instances"]]
    return {"instances": [{"id": ids[0], "region": "us-east-1"}]}


def instances_check(s: boto3.Session) -> None:
    states = sorted(i["State"]["Name"] for r in s.client("ec2").describe_instances()["Reservations"]
                    for i in r["Instances"])
    assert states == ["running", "stopped"]


Scenario = tuple[type[Action[Any]], Callable[[boto3.Session], dict[str, Any]], Callable[[boto3.Session], None]]
SCENARIOS: list[Scenario] = [
    (iam_actions.DeactivateAccessKeys, keys_setup, keys_check),
    (iam_actions.DeleteLoginProfiles, login_setup, login_check),
    (iam_actions.DeactivateMfaDevices, mfa_setup, mfa_check),
    (iam_actions.QuarantinePrincipals, quarantine_setup, quarantine_check),
    (iam_actions.RemoveFromGroups, groups_setup, groups_check),
    (iam_actions.DetachAdminPolicies, admin_setup, admin_check),
    (ecs_actions.ScaleServicesToZero, scale_setup, scale_check),
    (ecs_actions.StopTasks, stop_setup, stop_check),
    (ecs_actions.DeleteServices, delete_services_setup, delete_services_check),
    (ecs_actions.DeregisterTaskDefinitions, deregister_setup, deregister_check),
    (ecs_actions.DeleteClusters, clusters_setup, clusters_check),
    (autoscaling_actions.SuspendScalableTargets, scaling_setup, scaling_check),
    (events_actions.DisableEventRules, rules_setup, rules_check),
    (events_actions.DisableSchedules, schedules_setup, schedules_check),
    (ec2_actions.StopInstances, instances_setup, instances_check),
]
IDS = [cls.name for cls, _, _ in SCENARIOS]


@pytest.mark.parametrize(("cls", "setup", "check"), SCENARIOS, ids=IDS)
def test_action_converges_and_is_idempotent(aws: boto3.Session, cls: type[Action[Any]],
                                            setup: Callable[[boto3.Session], dict[str, Any]],
                                            check: Callable[[boto3.Session], None]) -> None:
    params = setup(aws)
    first = converge(cls(), context(aws), params)
    for change in first.changes:
        assert change.operation.split(":")[0] in ("iam", "ecs", "application-autoscaling", "events", "scheduler",
                                                  "ec2")
        assert change.target.startswith("arn:aws:")
        assert change.previous, f"{cls.name} must record the value it replaces"
    check(aws)


@pytest.mark.parametrize(("cls", "setup", "check"), SCENARIOS, ids=IDS)
def test_action_runs_with_exactly_its_declared_permissions(aws: boto3.Session, cls: type[Action[Any]],
                                                           setup: Callable[[boto3.Session], dict[str, Any]],
                                                           check: Callable[[boto3.Session], None]) -> None:
    if cls is events_actions.DisableSchedules:
        pytest.skip("moto 5.2 rejects EventBridge Scheduler request signatures under IAM enforcement (403)")
    params = setup(aws)
    action = cls()
    with enforced_as(aws, cls.permissions) as limited:
        first = plan(action, context(limited), params)
        for change in first.changes:
            action.apply(context(limited), change)
    check(aws)


@pytest.mark.parametrize(("cls", "setup", "check"), SCENARIOS, ids=IDS)
def test_action_fails_without_its_write_permission(aws: boto3.Session, cls: type[Action[Any]],
                                                   setup: Callable[[boto3.Session], dict[str, Any]],
                                                   check: Callable[[boto3.Session], None]) -> None:
    if cls is events_actions.DisableSchedules:
        pytest.skip("moto 5.2 rejects EventBridge Scheduler request signatures under IAM enforcement (403)")
    params = setup(aws)
    action = cls()
    first = plan(action, context(aws), params)
    writes = {c.operation for c in first.changes}
    assert writes <= set(cls.permissions), "every operation an action performs is declared"
    with enforced_as(aws, [p for p in cls.permissions if p not in writes]) as limited, \
            pytest.raises(ClientError) as info:
        action.apply(context(limited), first.changes[0])
    assert info.value.response["Error"]["Code"] in ("AccessDenied", "403", "AccessDeniedException")


def test_every_action_declares_permissions_and_risk() -> None:
    for cls in builtin_registry().all():
        assert cls.risk in ("read-only", "reversible", "irreversible"), cls.name
        assert cls.permissions, f"{cls.name} declares no permissions"
        assert all(":" in p for p in cls.permissions), cls.name
        assert cls.summary, cls.name


def test_root_keys_absent_means_nothing_to_do(aws: boto3.Session) -> None:
    result = plan(iam_actions.ContainRootCredentials(), context(aws), {"access_key_id": "AKIAEXAMPLEROOTKEY01"})
    assert result.changes == [] and result.manual == []


def test_root_keys_present_become_a_manual_action_with_the_key(aws: boto3.Session) -> None:
    from runner.drill import root_keys_present

    root_keys_present(True)
    result = plan(iam_actions.ContainRootCredentials(), context(aws, incident()), {"access_key_id": "AKIAEXAMPLEROOTKEY01"})
    assert result.changes == []
    [text] = result.manual
    assert "AKIAEXAMPLEROOTKEY01" in text and ACCOUNT in text and "root user" in text


def test_deleted_user_is_tolerated_as_already_gone(aws: boto3.Session) -> None:
    params = keys_setup(aws)
    action = iam_actions.DeactivateAccessKeys()
    ctx = context(aws)
    [change] = plan(action, ctx, params).changes
    iam = aws.client("iam")
    iam.delete_access_key(UserName="intruder", AccessKeyId=params["access_keys"][0]["id"])
    assert action.apply(ctx, change) == "already_done"
    iam.delete_user(UserName="intruder")
    assert plan(action, ctx, params).changes == []
