"""Relaunchers of attacker EC2 compute: spot requests, spot fleets and EC2 Fleets (found by attribution
or a miner launch spec, evidence kept, cancelled without terminating, not re-creatable by rollback), and
Auto Scaling groups (the attacker's suspended and scaled to 0; a hijacked legitimate one only stops
launching, and a re-armed one shows up again as something to do)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import boto3
from botocore.stub import Stubber

from actions.autoscaling import ScaleAttackerGroups, SuspendHijackedGroups
from actions.ec2 import CaptureInstanceEvidence, DiscoverInstances
from actions.ec2_spot import CancelSpotRequests, SpotScan
from actions.evidence import verify_bundle
from actions.rollback import RevertChanges
from actions.triage import TriageAttackerActivity
from runner.drill import base_image
from tests.awshelp import ACCOUNT, converge, plan
from tests.awshelp import context as full_context

REGION = "us-west-2"
SECRET = "AKIAZZZZEXAMPLEKEY99"
MINER = base64.b64encode(f"#!/bin/sh\nexport AWS_SECRET={SECRET}\n./xmrig -o pool.example:443\n".encode()).decode()
BENIGN = base64.b64encode(b"#!/bin/sh\nsystemctl start nginx\n").decode()


def context(aws: boto3.Session) -> Any:
    """Two regions searched (the home region and the attack's), not every region moto knows."""
    ctx = full_context(aws)
    ctx.coverage.settle_regions(["us-east-1", REGION], "test", [])
    return ctx


def _event(name: str, response: dict[str, Any], eid: str) -> dict[str, Any]:
    return {"eventID": eid, "eventTime": "2030-01-01T00:10:00Z", "eventSource": "ec2.amazonaws.com",
            "eventName": name, "awsRegion": REGION, "userIdentity": {"type": "IAMUser", "userName": "render-farm"},
            "responseElements": response}


def _spot_world(aws: boto3.Session) -> dict[str, Any]:
    ec2 = aws.client("ec2", region_name=REGION)
    image = base_image(ec2)
    spec = {"ImageId": image, "InstanceType": "c5.large"}
    attacker_sir = ec2.request_spot_instances(InstanceCount=1, LaunchSpecification={**spec, "UserData": BENIGN},
                                              Type="persistent")["SpotInstanceRequests"][0]
    legit_sir = ec2.request_spot_instances(InstanceCount=1, LaunchSpecification={**spec, "UserData": BENIGN},
                                           )["SpotInstanceRequests"][0]

    def fleet(user_data: str) -> str:
        return str(ec2.request_spot_fleet(SpotFleetRequestConfig={
            "AllocationStrategy": "lowestPrice", "TargetCapacity": 1, "Type": "maintain",
            "IamFleetRole": f"arn:aws:iam::{ACCOUNT}:role/fleet",
            "LaunchSpecifications": [{**spec, "UserData": user_data}]})["SpotFleetRequestId"])

    miner_sfr, legit_sfr = fleet(MINER), fleet(BENIGN)
    ec2.create_launch_template(LaunchTemplateName="batch-lt", LaunchTemplateData={**spec, "UserData": BENIGN})
    fleet_id = ec2.create_fleet(
        LaunchTemplateConfigs=[{"LaunchTemplateSpecification": {"LaunchTemplateName": "batch-lt", "Version": "1"}}],
        TargetCapacitySpecification={"TotalTargetCapacity": 1, "DefaultTargetCapacityType": "spot"},
        Type="maintain")["FleetId"]
    events = [
        _event("RequestSpotInstances", {"spotInstanceRequestSet": {"items": [
            {"spotInstanceRequestId": attacker_sir["SpotInstanceRequestId"]}]}}, "ev-spot"),
        _event("CreateFleet", {"CreateFleetResponse": {"fleetId": fleet_id}}, "ev-fleet"),
        {**_event("RequestSpotInstances", {"spotInstanceRequestSet": {"items": [
            {"spotInstanceRequestId": legit_sir["SpotInstanceRequestId"]}]}}, "ev-failed"), "errorCode": "Denied"},
    ]
    return {"ec2": ec2, "events": events, "attacker_sir": attacker_sir["SpotInstanceRequestId"],
            "attacker_instance": attacker_sir["InstanceId"], "legit_sir": legit_sir["SpotInstanceRequestId"],
            "miner_sfr": miner_sfr, "legit_sfr": legit_sfr, "fleet": fleet_id}


def test_spot_requests_and_fleets_found_evidenced_cancelled_and_not_recreated(aws: boto3.Session,
                                                                              tmp_path: Path) -> None:
    w = _spot_world(aws)
    ec2 = w["ec2"]
    ctx = context(aws)
    ctx.evidence_dir = tmp_path / "evidence" / "INC-TEST-1" / "r-test"
    found = plan(DiscoverInstances(), ctx, {"attacker_events": w["events"]})
    spot = {s["id"]: s for s in found.outputs["spot_requests"]}
    # attributed by CloudTrail (a failed call attributes nothing), or a miner in the launch spec
    assert set(spot) == {w["attacker_sir"], w["miner_sfr"], w["fleet"]}
    assert "RequestSpotInstances ev-spot" in spot[w["attacker_sir"]]["reason"]
    assert "miner pattern xmrig" in spot[w["miner_sfr"]]["reason"]
    assert "CreateFleet ev-fleet" in spot[w["fleet"]]["reason"]
    excluded = {e["name"] for e in found.outputs["excluded"]}
    assert {w["legit_sir"], w["legit_sfr"]} <= excluded
    # the instances they launched are in scope with them (the EC2 stop step stops them)
    instances = {i["id"]: i["reason"] for i in found.outputs["ec2_instances"]}
    assert w["attacker_instance"] in instances and "spot request" in instances[w["attacker_instance"]]
    assert all(i in instances for s in spot.values() for i in s["instances"])
    assert len(instances) == sum(len(s["instances"]) for s in spot.values())  # the decoys' instances are not

    # the attacker's calls end contained by the gated cancel, except what is still to do by hand
    triage = plan(TriageAttackerActivity(), ctx, {
        "events": [*w["events"], _event("RequestSpotFleet", {"RequestSpotFleetResponse": {
            "spotFleetRequestId": "sfr-gone0000"}}, "ev-gone")],
        "ec2_instances": found.outputs["ec2_instances"], "spot_requests": found.outputs["spot_requests"]})
    verdicts = {a["event_id"]: a["outcome"] for a in triage.outputs["activity"]}
    assert verdicts == {"ev-spot": "contained", "ev-fleet": "contained", "ev-failed": "no_action_needed",
                        "ev-gone": "manual"}  # a fleet discovery did not find is a person's to check
    assert any("sfr-gone0000" in m and "--no-terminate-instances" in m for m in triage.manual)

    evidence = plan(CaptureInstanceEvidence(), ctx, {"instances": found.outputs["ec2_instances"],
                                                     "spot_requests": found.outputs["spot_requests"]})
    root = Path(evidence.outputs["path"])
    assert not any(verify_bundle(root).values())
    fleet_doc = json.loads((root / "ec2" / REGION / "spot_fleet" / f"{w['miner_sfr']}.json").read_text())
    assert "UserData" in json.dumps(fleet_doc) and SECRET not in fleet_doc.__repr__()
    assert not any(SECRET in p.read_text() or MINER in p.read_text() for p in root.rglob("*.json"))

    action = CancelSpotRequests()
    assert action.risk == "irreversible"  # gated by the default approval tiers
    done = converge(action, ctx, {"requests": found.outputs["spot_requests"]})
    assert sorted(c.operation for c in done.changes) == ["ec2:CancelSpotFleetRequests",
                                                         "ec2:CancelSpotInstanceRequests", "ec2:DeleteFleets"]
    assert all(c.params.get("TerminateInstances", False) is False for c in done.changes)
    sirs = {r["SpotInstanceRequestId"]: r["State"] for r in ec2.describe_spot_instance_requests()[
        "SpotInstanceRequests"]}
    # (moto forgets a cancelled spot request; AWS lists it as cancelled)
    assert sirs.get(w["attacker_sir"], "cancelled") == "cancelled" and sirs[w["legit_sir"]] == "active"
    sfrs = {f["SpotFleetRequestId"]: f["SpotFleetRequestState"] for f in ec2.describe_spot_fleet_requests()[
        "SpotFleetRequestConfigs"]}
    assert sfrs[w["miner_sfr"]].startswith("cancelled") and sfrs[w["legit_sfr"]] == "active"
    assert ec2.describe_fleets(FleetIds=[w["fleet"]])["Fleets"][0]["FleetState"].startswith("deleted")
    states = {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"]
              for i in r["Instances"]}
    assert all(states[i] == "running" for i in instances)  # kept: stopped by the EC2 step, never terminated

    revert = plan(RevertChanges(), ctx, {"run_id": "r-test", "changes": [c.to_json() for c in done.changes]})
    assert revert.changes == []
    assert len(revert.manual) == 3 and all("cannot be re-created" in m for m in revert.manual)


def test_a_spot_request_whose_user_data_names_a_miner_is_in_scope() -> None:
    # moto drops a spot request's UserData from DescribeSpotInstanceRequests: the real shape, stubbed
    ec2 = boto3.Session(region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y").client("ec2")
    stub = Stubber(ec2)
    stub.add_response("describe_spot_instance_requests", {"SpotInstanceRequests": [
        {"SpotInstanceRequestId": "sir-miner0001", "State": "open", "Type": "persistent",
         "LaunchSpecification": {"InstanceType": "c5.large", "UserData": MINER}},
        {"SpotInstanceRequestId": "sir-web00001", "State": "active", "Type": "one-time", "InstanceId": "i-0abc",
         "LaunchSpecification": {"InstanceType": "c5.large", "UserData": base64.b64encode(b"pip install xmrigcc-dashboard")
                                 .decode()}},
    ]})
    stub.add_response("describe_spot_fleet_requests", {"SpotFleetRequestConfigs": []})
    stub.add_response("describe_fleets", {"Fleets": []})
    with stub:
        scan = SpotScan(ec2, REGION, ACCOUNT, [], ["xmrig"]).run()
    assert [s["id"] for s in scan.found] == ["sir-miner0001"]
    assert scan.found[0]["reason"] == "launch user data names miner pattern xmrig"
    assert [x["name"] for x in scan.left] == ["sir-web00001"] and scan.instances == {}


def _asg_world(aws: boto3.Session) -> dict[str, Any]:
    ec2 = aws.client("ec2", region_name=REGION)
    asg = aws.client("autoscaling", region_name=REGION)
    spec = {"ImageId": base_image(ec2), "InstanceType": "c5.large"}
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]][:1]
    for lt, data in (("render-lt", BENIGN), ("web-lt", MINER), ("api-lt", BENIGN)):
        ec2.create_launch_template(LaunchTemplateName=lt, LaunchTemplateData={**spec, "UserData": data})
    for name, lt, size in (("render-pool", "render-lt", 2), ("web-fleet", "web-lt", 2), ("api-fleet", "api-lt", 2)):
        asg.create_auto_scaling_group(AutoScalingGroupName=name, MinSize=1, MaxSize=6, DesiredCapacity=size,
                                      LaunchTemplate={"LaunchTemplateName": lt}, AvailabilityZones=zones)
    asg.suspend_processes(AutoScalingGroupName="render-pool", ScalingProcesses=["AZRebalance"])
    events = [{"eventID": "ev-asg", "eventName": "CreateAutoScalingGroup", "awsRegion": REGION,
               "eventSource": "autoscaling.amazonaws.com", "requestParameters": {"autoScalingGroupName": "render-pool"}}]
    return {"asg": asg, "events": events}


def test_auto_scaling_groups_attacker_scaled_hijacked_only_stop_launching(aws: boto3.Session) -> None:
    w = _asg_world(aws)
    asg = w["asg"]
    ctx = context(aws)
    found = plan(DiscoverInstances(), ctx, {"attacker_events": w["events"]})
    members = {i["id"]: i for i in found.outputs["ec2_instances"]}
    assert {i["auto_scaling_group"] for i in members.values()} == {"render-pool", "web-fleet"}
    assert all("member of Auto Scaling group render-pool" in i["reason"] for i in members.values()
               if i["auto_scaling_group"] == "render-pool")
    groups = {g["name"]: g for g in found.outputs["auto_scaling_groups"]}
    assert set(groups) == {"render-pool", "web-fleet"}  # named in scope; api-fleet runs no miner
    assert groups["render-pool"]["attacker_created"] and not groups["web-fleet"]["attacker_created"]
    assert "hijacked" in groups["web-fleet"]["reason"]
    triage = plan(TriageAttackerActivity(), ctx, {"events": w["events"]})
    assert [(a["event_id"], a["outcome"]) for a in triage.outputs["activity"]] == [("ev-asg", "contained")]

    def state() -> dict[str, tuple[int, int, list[str]]]:
        return {g["AutoScalingGroupName"]: (g["MinSize"], g["DesiredCapacity"],
                                            sorted(p["ProcessName"] for p in g.get("SuspendedProcesses") or []))
                for g in asg.describe_auto_scaling_groups()["AutoScalingGroups"]}

    attacker = converge(ScaleAttackerGroups(), ctx, {"attacker_events": w["events"]})
    hijacked_params = {"instances": found.outputs["ec2_instances"], "attacker_events": w["events"]}
    hijacked = converge(SuspendHijackedGroups(), ctx, hijacked_params)
    assert [c.params for c in hijacked.changes] == [
        {"AutoScalingGroupName": "web-fleet", "ScalingProcesses": ["Launch", "ReplaceUnhealthy"]}]
    assert state() == {
        "render-pool": (0, 0, ["AZRebalance", "HealthCheck", "Launch", "ReplaceUnhealthy"]),
        "web-fleet": (1, 2, ["Launch", "ReplaceUnhealthy"]),  # production keeps serving: no scale to 0
        "api-fleet": (1, 2, []),
    }
    assert "web-lt" in " ".join(plan(SuspendHijackedGroups(), ctx, hijacked_params).notes)

    # someone resumes the hijacked group's launches: a re-plan (what `stanch verify` does) flags it
    asg.resume_processes(AutoScalingGroupName="web-fleet", ScalingProcesses=["ReplaceUnhealthy"])
    again = plan(SuspendHijackedGroups(), ctx, hijacked_params)
    assert [(c.params["AutoScalingGroupName"], c.params["ScalingProcesses"]) for c in again.changes] == [
        ("web-fleet", ["ReplaceUnhealthy"])]
    assert "would launch instances again" in again.changes[0].reason

    # rollback puts back exactly what the run changed (AZRebalance stays suspended, as it was)
    applied = [c.to_json() for c in [*attacker.changes, *hijacked.changes]]
    converge(RevertChanges(), ctx, {"run_id": "r-test", "changes": applied})
    assert state() == {"render-pool": (1, 2, ["AZRebalance"]), "web-fleet": (1, 2, []), "api-fleet": (1, 2, [])}
