"""Relaunchers: scalable targets, EventBridge rules and Scheduler schedules that would start the miner
again are disarmed (previous values recorded), decoys are untouched, and rollback restores them."""

from __future__ import annotations

from typing import Any

import boto3

from actions.autoscaling import DESIRED, SuspendScalableTargets
from actions.events import DisableEventRules, DisableSchedules
from actions.rollback import RevertChanges
from runner.drill import base_image
from tests.awshelp import ACCOUNT, context, converge, plan

REGION = "us-west-2"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/scheduler-runs-tasks"


def _svc(session: boto3.Session, cluster: str, name: str, image: str) -> str:
    from runner.drill import _network, _service

    return _service(session.client("ecs", region_name=REGION), _network(session.client("ec2", region_name=REGION)),
                    cluster, name, image, 1)


def seed(session: boto3.Session) -> dict[str, Any]:
    miner_td = _svc(session, "analytics", "spark-shuffle", "quay.io/hashvault/xmrig:latest")
    legit_td = _svc(session, "payments", "settlement", "public.ecr.aws/docker/library/python:3.12")
    aas = session.client("application-autoscaling", region_name=REGION)
    for cluster, svc, low in (("analytics", "spark-shuffle", 3), ("payments", "settlement", 2)):
        aas.register_scalable_target(ServiceNamespace="ecs", ResourceId=f"service/{cluster}/{svc}",
                                     ScalableDimension=DESIRED, MinCapacity=low, MaxCapacity=20)
    sched = session.client("scheduler", region_name=REGION)
    for name, cluster, td in (("warm-cache", "analytics", miner_td), ("nightly-settlement", "payments", legit_td)):
        sched.create_schedule(Name=name, ScheduleExpression="rate(5 minutes)", FlexibleTimeWindow={"Mode": "OFF"},
                              Target={"Arn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{cluster}", "RoleArn": ROLE,
                                      "EcsParameters": {"TaskDefinitionArn": td, "TaskCount": 10}})
    events = session.client("events", region_name=REGION)
    for name, cluster, td in (("refresh-index", "analytics", miner_td.rsplit(":", 1)[0]),  # unversioned: latest
                              ("settle-on-upload", "payments", legit_td)):
        events.put_rule(Name=name, ScheduleExpression="rate(10 minutes)")
        events.put_targets(Rule=name, Targets=[{"Id": "t", "Arn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{cluster}",
                                                "RoleArn": ROLE, "EcsParameters": {"TaskDefinitionArn": td}}])
    events.put_rule(Name="ops-heartbeat", ScheduleExpression="rate(1 hour)")  # the attacker's, no ECS target
    return {"miner_td": miner_td, "legit_td": legit_td}


def _targets(session: boto3.Session) -> dict[str, Any]:
    found = session.client("application-autoscaling", region_name=REGION).describe_scalable_targets(
        ServiceNamespace="ecs")["ScalableTargets"]
    return {t["ResourceId"]: (t["MinCapacity"], t.get("SuspendedState") or {}) for t in found}


def _states(session: boto3.Session) -> dict[str, str]:
    sched = session.client("scheduler", region_name=REGION)
    events = session.client("events", region_name=REGION)
    out = {s["Name"]: s["State"] for s in sched.list_schedules()["Schedules"]}
    out.update({r["Name"]: r["State"] for r in events.list_rules()["Rules"]})
    return out


def _put_rule_event(name: str) -> dict[str, Any]:
    return {"eventID": "e-put-rule-1", "eventTime": "2030-01-01T00:05:00Z", "eventSource": "events.amazonaws.com",
            "eventName": "PutRule", "awsRegion": REGION, "requestParameters": {"name": name},
            "userIdentity": {"type": "IAMUser", "userName": "deploy-bot"}}


def test_relaunchers_disarmed_decoys_untouched_and_rollback_restores(aws: boto3.Session) -> None:
    seeded = seed(aws)
    ctx = context(aws)
    services = [{"cluster": "analytics", "name": "spark-shuffle", "region": REGION}]
    tds = [{"arn": seeded["miner_td"], "region": REGION}]
    relaunch = {"task_definitions": tds, "attacker_events": [_put_rule_event("ops-heartbeat")]}

    dry = context(aws, dry_run=True)
    assert plan(SuspendScalableTargets(), dry, {"services": services}).changes  # planning reads only
    scaling = converge(SuspendScalableTargets(), ctx, {"services": services})
    schedules = converge(DisableSchedules(), ctx, relaunch)
    rules = converge(DisableEventRules(), ctx, relaunch)

    [change] = scaling.changes
    assert change.previous == {"MinCapacity": 3, "MaxCapacity": 20, "SuspendedState": {
        "DynamicScalingInSuspended": False, "DynamicScalingOutSuspended": False, "ScheduledScalingSuspended": False}}
    targets = _targets(aws)
    assert targets["service/analytics/spark-shuffle"] == (0, {
        "DynamicScalingInSuspended": True, "DynamicScalingOutSuspended": True, "ScheduledScalingSuspended": True})
    assert targets["service/payments/settlement"][0] == 2 and not any(targets["service/payments/settlement"][1].values())
    assert _states(aws) == {"warm-cache": "DISABLED", "nightly-settlement": "ENABLED", "refresh-index": "DISABLED",
                            "settle-on-upload": "ENABLED", "ops-heartbeat": "DISABLED"}
    assert {c.reason.split(":")[0] for c in rules.changes} == {f"rule refresh-index in {REGION}",
                                                               f"rule ops-heartbeat in {REGION}"}
    # a disabled schedule keeps its target and role: only the state changed
    kept = aws.client("scheduler", region_name=REGION).get_schedule(Name="warm-cache")
    assert kept["Target"]["EcsParameters"]["TaskDefinitionArn"] == seeded["miner_td"] and kept["Target"]["RoleArn"] == ROLE

    applied = [c.to_json() for c in [*scaling.changes, *schedules.changes, *rules.changes]]
    converge(RevertChanges(), ctx, {"run_id": "r-test", "changes": applied})
    restored = _targets(aws)["service/analytics/spark-shuffle"]
    assert restored[0] == 3 and not any(restored[1].values())
    assert set(_states(aws).values()) == {"ENABLED"}


def test_nothing_in_scope_plans_nothing(aws: boto3.Session) -> None:
    seed(aws)
    ctx = context(aws)
    assert plan(DisableSchedules(), ctx, {"task_definitions": []}).changes == []
    assert plan(DisableEventRules(), ctx, {"task_definitions": []}).changes == []
    assert plan(SuspendScalableTargets(), ctx, {"services": []}).changes == []


def test_task_sets_scaled_to_zero_and_daemon_services_left_to_a_gated_delete(aws: boto3.Session) -> None:
    from actions.ecs import DeleteDaemonServices, ScaleServicesToZero
    from runner.drill import _network

    ecs = aws.client("ecs", region_name=REGION)
    net = _network(aws.client("ec2", region_name=REGION))
    ecs.create_cluster(clusterName="edge")

    def td(family: str, image: str) -> str:
        return str(ecs.register_task_definition(family=family, containerDefinitions=[
            {"name": "app", "image": image, "memory": 512}])["taskDefinition"]["taskDefinitionArn"])

    miner, legit = td("edge-cache", "xmrig/xmrig"), td("edge-proxy", "envoyproxy/envoy:v1.30")
    for name, image_td in (("edge-cache", miner), ("edge-proxy", legit)):
        ecs.create_service(cluster="edge", serviceName=name, taskDefinition=image_td, desiredCount=2,
                           deploymentController={"type": "EXTERNAL"})
        ecs.create_task_set(cluster="edge", service=name, taskDefinition=image_td, launchType="FARGATE",
                            networkConfiguration=net, scale={"value": 100, "unit": "PERCENT"})
    for name, image_td in (("node-agent", miner), ("log-shipper", legit)):
        ecs.create_service(cluster="edge", serviceName=name, taskDefinition=image_td, schedulingStrategy="DAEMON")
    ctx = context(aws)
    services = [{"cluster": "edge", "name": n, "region": REGION} for n in ("edge-cache", "node-agent")]

    scaled = converge(ScaleServicesToZero(), ctx, {"services": services})
    assert sorted(c.operation for c in scaled.changes) == ["ecs:UpdateService", "ecs:UpdateTaskSet"]
    assert any("DAEMON service edge/node-agent" in n for n in scaled.notes)

    def scale(service: str) -> float:
        return float(ecs.describe_task_sets(cluster="edge", service=service)["taskSets"][0]["scale"]["value"])

    assert scale("edge-cache") == 0 and scale("edge-proxy") == 100
    deleted = converge(DeleteDaemonServices(), ctx, {"services": services})
    assert [c.target.rsplit("/", 1)[-1] for c in deleted.changes] == ["node-agent"]
    status = {s["serviceName"]: s["status"] for s in ecs.describe_services(
        cluster="edge", services=["node-agent", "log-shipper", "edge-proxy"])["services"]}
    assert status == {"node-agent": "INACTIVE", "log-shipper": "ACTIVE", "edge-proxy": "ACTIVE"}

    undo = [c.to_json() for c in [*scaled.changes, *deleted.changes]]
    revert = plan(RevertChanges(), ctx, {"run_id": "r-test", "changes": undo})
    assert any("node-agent" in m for m in revert.manual)  # a deletion is listed for a person, not undone
    converge(RevertChanges(), ctx, {"run_id": "r-test", "changes": undo})
    assert scale("edge-cache") == 100


def test_auto_scaling_groups_the_attacker_created_scaled_to_zero_and_restored(aws: boto3.Session) -> None:
    from actions.autoscaling import ScaleAttackerGroups

    ec2 = aws.client("ec2", region_name=REGION)
    image = base_image(ec2)
    ec2.create_launch_template(LaunchTemplateName="render-lt", LaunchTemplateData={"ImageId": image,
                                                                           "InstanceType": "c5.large"})
    asg = aws.client("autoscaling", region_name=REGION)
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]][:1]
    for name, low, want in (("render-pool", 2, 3), ("ecs-capacity-b", 1, 2), ("web-fleet", 2, 2)):
        asg.create_auto_scaling_group(AutoScalingGroupName=name, MinSize=low, MaxSize=10, DesiredCapacity=want,
                                      LaunchTemplate={"LaunchTemplateName": "render-lt"}, AvailabilityZones=zones)
    arn = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["ecs-capacity-b"])["AutoScalingGroups"][0][
        "AutoScalingGroupARN"]
    events = [
        {"eventID": "e-asg", "eventName": "CreateAutoScalingGroup", "awsRegion": REGION,
         "eventSource": "autoscaling.amazonaws.com", "requestParameters": {"autoScalingGroupName": "render-pool"}},
        {"eventID": "e-cp", "eventName": "CreateCapacityProvider", "awsRegion": REGION,
         "eventSource": "ecs.amazonaws.com",
         "requestParameters": {"name": "cp-b", "autoScalingGroupProvider": {"autoScalingGroupArn": arn}}},
    ]
    ctx = context(aws)
    done = converge(ScaleAttackerGroups(), ctx, {"attacker_events": events})
    assert {c.params["AutoScalingGroupName"]: c.previous for c in done.changes} == {
        "render-pool": {"MinSize": 2, "DesiredCapacity": 3, "MaxSize": 10},
        "ecs-capacity-b": {"MinSize": 1, "DesiredCapacity": 2, "MaxSize": 10}}

    def sizes() -> dict[str, tuple[int, int]]:
        return {g["AutoScalingGroupName"]: (g["MinSize"], g["DesiredCapacity"])
                for g in asg.describe_auto_scaling_groups()["AutoScalingGroups"]}

    assert sizes() == {"render-pool": (0, 0), "ecs-capacity-b": (0, 0), "web-fleet": (2, 2)}
    converge(RevertChanges(), ctx, {"run_id": "r-test", "changes": [c.to_json() for c in done.changes]})
    assert sizes() == {"render-pool": (2, 3), "ecs-capacity-b": (1, 2), "web-fleet": (2, 2)}
