"""A hijacked legitimate service is rolled back to its last clean revision instead of scaling
production to 0; the attacker's own service is still scaled to 0."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import boto3

from actions.ecs import RollBackHijackedServices, ScaleServicesToZero
from actions.rollback import inverse
from tests.awshelp import context, converge, incident, plan, service


def test_hijacked_service_rolled_back_attackers_own_scaled_to_zero(aws: boto3.Session) -> None:
    ecs = aws.client("ecs")
    clean = service(aws, "orders", "checkout-api", "public.ecr.aws/nginx/nginx:1.27", 3)
    time.sleep(0.05)
    start = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    time.sleep(0.05)
    # the attacker registers a miner revision of the legitimate family and points the service at it
    hijack = ecs.register_task_definition(
        family="checkout-api", requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="1024", memory="2048",
        containerDefinitions=[{"name": "app", "image": "docker.io/k8sadmin/xmrig:latest", "memory": 2048}],
    )["taskDefinition"]["taskDefinitionArn"]
    ecs.update_service(cluster="orders", service="checkout-api", taskDefinition=hijack)
    own = service(aws, "orders", "queue-drain", "xmrig/xmrig", 4)  # created inside the window
    ctx = context(aws, incident(window_start=start))
    scope = [{"cluster": "orders", "name": "checkout-api", "task_definition": hijack},
             {"cluster": "orders", "name": "queue-drain", "task_definition": own}]

    rolled = converge(RollBackHijackedServices(), ctx, {"services": scope})
    [change] = rolled.changes
    assert change.params["taskDefinition"] == clean and change.previous == {"taskDefinition": hijack}
    api = ecs.describe_services(cluster="orders", services=["checkout-api"])["services"][0]
    assert api["taskDefinition"] == clean and api["desiredCount"] == 3

    scaled = converge(ScaleServicesToZero(), ctx, {"services": scope})
    assert [c.target.rsplit("/", 1)[-1] for c in scaled.changes] == ["queue-drain"]
    assert any("checkout-api" in n and "rolled back" in n for n in scaled.notes)
    assert ecs.describe_services(cluster="orders", services=["checkout-api"])["services"][0]["desiredCount"] == 3
    assert isinstance(inverse(change.to_json()), str)  # rollback never rolls forward onto the miner


def test_without_a_clean_revision_scale_to_zero_stays_the_fallback(aws: boto3.Session) -> None:
    ecs = aws.client("ecs")
    miner = service(aws, "orders", "thumbnailer", "xmrig/xmrig", 2)  # the family never had a clean revision
    time.sleep(0.05)
    start = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    ctx = context(aws, incident(window_start=start))
    scope = [{"cluster": "orders", "name": "thumbnailer", "task_definition": miner}]
    assert plan(RollBackHijackedServices(), ctx, {"services": scope}).changes == []
    converge(ScaleServicesToZero(), ctx, {"services": scope})
    assert ecs.describe_services(cluster="orders", services=["thumbnailer"])["services"][0]["desiredCount"] == 0
