"""Attacker compute beyond ECS.

EC2 instances in every searched region are in scope when the attacker's credentials launched them
(a RunInstances record in `scope.attacker_events`, or a spot request or fleet the attacker created;
see actions/ec2_spot.py), when an Auto Scaling group the attacker created holds them, or when their
user data or image names a miner (config `discovery.miner_patterns`). Evidence is captured first
(description, a hash of the user data, never its text, volumes, network interfaces, console output),
then the instances are stopped
(a gated step; never terminated in containment). Lambda functions, Batch compute environments,
SageMaker and EKS resources the attacker created are listed, with a manual action, so nothing is silent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from actions.base import Action, ActionContext, Change, Outcome, Params, Plan
from actions.common import Ref, is_code, iso, paginate, tolerant_call
from actions.ec2_spot import SpotRef, describe, redact_user_data
from actions.evidence import Bundle, write_manifest
from actions.registry import register
from runner.regions import scan_regions, search_regions

LIVE = ("pending", "running")
#: the tag EC2 Auto Scaling puts on the instances it launches
ASG_TAG = "aws:autoscaling:groupName"
GONE = ("InvalidInstanceID.NotFound", "IncorrectInstanceState")

#: CloudTrail creations of compute this playbook does not contain, and what a person should do
NOT_CONTAINED = {
    "CreateFunction20150331": ("lambda", "functionName", "Lambda function {name}: set its reserved concurrency to 0 "
                                                         "(aws lambda put-function-concurrency), then review it"),
    "CreateFunction": ("lambda", "functionName", "Lambda function {name}: set its reserved concurrency to 0, then "
                                                 "review it"),
    "CreateComputeEnvironment": ("batch", "computeEnvironmentName", "Batch compute environment {name}: disable it "
                                                                    "and set its maxvCpus to 0"),
    "CreateJobQueue": ("batch", "jobQueueName", "Batch job queue {name}: disable it"),
    "CreateNotebookInstance": ("sagemaker", "notebookInstanceName", "SageMaker notebook instance {name}: stop it"),
    "CreateTrainingJob": ("sagemaker", "trainingJobName", "SageMaker training job {name}: stop it"),
    "CreateEndpoint": ("sagemaker", "endpointName", "SageMaker endpoint {name}: delete it or set its instance "
                                                    "count to the minimum"),
    "CreateNodegroup": ("eks", "nodegroupName", "EKS node group {name}: scale it to 0 (min and desired size)"),
    "CreateCluster": ("eks", "name", "EKS cluster {name}: review its workloads and node groups"),
}


class InstanceRef(Ref):
    id: str
    region: str


def mentions_miner(text: str, patterns: list[str]) -> str | None:
    """The miner pattern `text` (user data, an image name) names as a whole word, or None."""
    low = text.lower()
    for pattern in patterns:
        p = pattern.strip().lower()
        if p and re.search(rf"(^|[^a-z0-9]){re.escape(p)}([^a-z0-9]|$)", low):
            return pattern
    return None


def _decode(user_data: str) -> str:
    try:
        return base64.b64decode(user_data).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return user_data


def _launched_by_attacker(events: list[dict[str, Any]]) -> dict[str, str]:
    """instance id -> the RunInstances event that launched it with the attacker's credentials."""
    out: dict[str, str] = {}
    for e in events:
        if e.get("eventName") != "RunInstances" or e.get("errorCode"):
            continue
        items = ((e.get("responseElements") or {}).get("instancesSet") or {}).get("items") or []
        for item in items:
            if item.get("instanceId"):
                out[str(item["instanceId"])] = f"launched by the attacker's credentials (CloudTrail RunInstances " \
                                               f"{e.get('eventID', '')} at {e.get('eventTime', '')})"
    return out


class DiscoverParams(Params):
    #: CloudTrail records attributed to the attacker (scope.attacker_events)
    attacker_events: list[dict[str, Any]] = []


@register
class DiscoverInstances(Action[DiscoverParams]):
    """Find attacker EC2 instances in every searched region, and list other attacker compute."""

    name = "ec2.discover-instances"
    summary = ("Find EC2 instances, spot requests and fleets the attacker launched or that run a miner, in every "
               "region (read-only)")
    params_model = DiscoverParams
    permissions = ("ec2:DescribeInstances", "ec2:DescribeInstanceAttribute", "ec2:DescribeImages",
                   "ec2:DescribeRegions", "account:ListRegions", "ec2:DescribeSpotInstanceRequests",
                   "ec2:DescribeSpotFleetRequests", "ec2:DescribeSpotFleetInstances", "ec2:DescribeFleets",
                   "ec2:DescribeFleetInstances", "ec2:DescribeLaunchTemplateVersions")
    risk = "read-only"
    publishes = "compute"

    def plan(self, ctx: ActionContext, params: DiscoverParams) -> Plan:
        from actions.autoscaling import attacker_groups
        from actions.ec2_spot import SpotScan

        patterns = [*ctx.incident.indicators.images, *ctx.config.discovery.miner_patterns]
        launched = _launched_by_attacker(params.attacker_events)
        groups = attacker_groups(params.attacker_events)

        def scan(region: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
            ec2 = ctx.aws.client("ec2", region)
            spot = SpotScan(ec2, region, ctx.incident.account_id, params.attacker_events, patterns).run()
            found, left = [], list(spot.left)
            instances = [i for r in paginate(ec2, "describe_instances", "Reservations",
                                             Filters=[{"Name": "instance-state-name", "Values": list(LIVE)}])
                         for i in r.get("Instances", [])]
            images = {i["ImageId"] for i in instances if i.get("ImageId")}
            names: dict[str, str] = {}
            if images:
                for img in ec2.describe_images(ImageIds=sorted(images)).get("Images", []):
                    names[img["ImageId"]] = f"{img.get('Name', '')} {img.get('Description', '')}"
            for inst in instances:
                iid = inst["InstanceId"]
                reasons = [launched[iid]] if iid in launched else []
                if iid in spot.instances:
                    reasons.append(spot.instances[iid])
                group = next((t["Value"] for t in inst.get("Tags") or [] if t.get("Key") == ASG_TAG), None)
                if group and (region, group) in groups:
                    reasons.append(f"member of Auto Scaling group {group}, {groups[(region, group)]}")
                raw = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData").get("UserData", {})
                user_data = _decode(raw.get("Value", "")) if raw.get("Value") else ""
                if user_data and (hit := mentions_miner(user_data, patterns)):
                    reasons.append(f"user data names miner pattern {hit}")
                if (hit := mentions_miner(names.get(inst.get("ImageId", ""), ""), patterns)):
                    reasons.append(f"image {inst.get('ImageId')} ({names[inst['ImageId']].strip()}) names miner "
                                   f"pattern {hit}")
                item = {"id": iid, "region": region, "type": inst.get("InstanceType"),
                        "launched": iso(inst.get("LaunchTime")), "image": inst.get("ImageId"),
                        "label": f"{iid} ({inst.get('InstanceType')}, {region})",
                        **({"auto_scaling_group": group} if group else {})}
                if reasons:
                    found.append({**item, "reason": "; ".join(reasons)})
                else:
                    left.append({"kind": "ec2_instance", "name": iid, "arn": _arn(ctx, region, iid),
                                 "reason": "not launched by the attacker's credentials and neither its user data "
                                           "nor its image names a miner"})
            return found, left, spot.found

        instances: list[dict[str, Any]] = []
        left: list[dict[str, Any]] = []
        requests: list[dict[str, Any]] = []
        for found, lo, sp in scan_regions(ctx, "ec2", scan, search_regions(ctx)):
            instances += found
            left += lo
            requests += sp
        others = _not_contained(params.attacker_events)
        manual = [f"{o['instructions']} (region {o['region']}; created {o['created']}; CloudTrail {o['event_id']}). "
                  "This playbook does not contain it." for o in others]
        held: dict[tuple[str, str], list[str]] = {}
        for i in instances:
            if i.get("auto_scaling_group"):
                held.setdefault((i["region"], i["auto_scaling_group"]), []).append(i["id"])
        asgs = [{"name": name, "region": region, "instances": ids, "attacker_created": (region, name) in groups,
                 "label": f"{name} ({region})",
                 "reason": (f"{groups[(region, name)]}: launches suspended, scaled to 0" if (region, name) in groups
                            else "not created by the attacker but holds in-scope instances (hijacked): launches "
                                 "suspended, not scaled down")}
                for (region, name), ids in sorted(held.items())]
        return Plan(outputs={"ec2_instances": instances, "spot_requests": requests, "auto_scaling_groups": asgs,
                             "not_contained": others, "excluded": left}, manual=manual)


def _not_contained(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in events:
        known = NOT_CONTAINED.get(str(e.get("eventName")))
        if known is None or e.get("errorCode"):
            continue
        service, field, text = known
        if str(e.get("eventSource", "")).split(".", 1)[0] != service:
            continue  # e.g. CreateCluster of ECS, which the ECS steps handle
        name = str((e.get("requestParameters") or {}).get(field) or "?")
        out.append({"service": service, "name": name, "region": e.get("awsRegion", ""),
                    "created": e.get("eventTime", ""), "event_id": e.get("eventID", ""),
                    "instructions": text.format(name=name)})
    return out


def _arn(ctx: ActionContext, region: str, instance_id: str) -> str:
    return f"arn:aws:ec2:{region}:{ctx.incident.account_id}:instance/{instance_id}"


class InstancesParams(Params):
    instances: list[InstanceRef]


class EvidenceParams(InstancesParams):
    #: in-scope spot requests and fleets (compute.spot_requests): their descriptions are kept too
    spot_requests: list[SpotRef] = []


@register
class CaptureInstanceEvidence(Action[EvidenceParams]):
    """Snapshot-free evidence of in-scope instances, spot requests and fleets, written to its own
    hashed bundle next to the run's."""

    name = "ec2.capture-instance-evidence"
    summary = ("Capture EC2 instance evidence (description, user data hash, volumes, ENIs, console output) and "
               "the spot requests and fleets in scope")
    params_model = EvidenceParams
    permissions = ("ec2:DescribeInstances", "ec2:DescribeInstanceAttribute", "ec2:DescribeVolumes",
                   "ec2:DescribeNetworkInterfaces", "ec2:GetConsoleOutput", "ec2:DescribeSpotInstanceRequests",
                   "ec2:DescribeSpotFleetRequests", "ec2:DescribeFleets")
    risk = "reversible"  # local files only

    def plan(self, ctx: ActionContext, params: EvidenceParams) -> Plan:
        if not (params.instances or params.spot_requests) or ctx.evidence_dir is None:
            return Plan()
        root = ctx.evidence_dir.parent / f"{ctx.evidence_dir.name}-ec2"
        if ctx.aws.dry_run:
            return Plan(notes=[f"dry run: evidence of {len(params.instances)} instance(s) and "
                               f"{len(params.spot_requests)} spot request(s)/fleet(s) would be written to {root}"])
        if not (root / "manifest.json").exists():
            bundle = Bundle(root)
            started = iso(datetime.now().astimezone())
            ctx.fanout(lambda ref: _capture(ctx, ref, bundle), params.instances)
            ctx.fanout(lambda ref: _capture_request(ctx, ref, bundle), params.spot_requests)
            write_manifest(root, {"schema": "stanch.evidence/v1", "run_id": ctx.run_id, "incident_id": ctx.incident.id,
                                  "account_id": ctx.incident.account_id, "started_at": started,
                                  "files": dict(sorted(bundle.files.items())), "gaps": bundle.gaps})
        return Plan(outputs={"path": str(root)}, notes=[f"instance evidence in {root}"])


def _capture(ctx: ActionContext, ref: InstanceRef, bundle: Bundle) -> None:
    ec2 = ctx.aws.client("ec2", ref.region)
    try:
        reservations = ec2.describe_instances(InstanceIds=[ref.id])["Reservations"]
    except ClientError as exc:
        if is_code(exc, "InvalidInstanceID.NotFound"):
            bundle.gap(ref.id, "instance no longer exists")
            return
        raise
    inst = reservations[0]["Instances"][0]
    raw = ec2.describe_instance_attribute(InstanceId=ref.id, Attribute="userData").get("UserData", {})
    data = base64.b64decode(raw["Value"]) if raw.get("Value") else b""
    volumes = [m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if m.get("Ebs")]
    doc: dict[str, Any] = {
        "instance": inst,
        # user data often carries credentials: only its hash and size are kept
        "user_data": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} if data else None,
        "volumes": ec2.describe_volumes(VolumeIds=volumes)["Volumes"] if volumes else [],
        "network_interfaces": ec2.describe_network_interfaces(
            Filters=[{"Name": "attachment.instance-id", "Values": [ref.id]}])["NetworkInterfaces"],
    }
    try:
        console = ec2.get_console_output(InstanceId=ref.id).get("Output")
        doc["console_output"] = _decode(console) if console else None
    except ClientError as exc:
        doc["console_output"] = None
        bundle.gap(f"{ref.id} console output", str(exc.response.get("Error", {}).get("Code")))
    bundle.write(f"ec2/{ref.region}/{ref.id}.json", doc)


def _capture_request(ctx: ActionContext, ref: SpotRef, bundle: Bundle) -> None:
    found = describe(ctx.aws.client("ec2", ref.region), ref)
    if found is None:
        bundle.gap(ref.id, f"{ref.kind.replace('_', ' ')} no longer exists")
        return
    # launch specifications carry user data: only its hash and size are kept
    bundle.write(f"ec2/{ref.region}/{ref.kind}/{ref.id}.json", {ref.kind: redact_user_data(found)})


@register
class StopInstances(Action[InstancesParams]):
    """Stop in-scope instances (reversible: start them again). Never terminates: that is eradication."""

    name = "ec2.stop-instances"
    summary = "Stop attacker EC2 instances (previous state recorded; never terminated in containment)"
    params_model = InstancesParams
    permissions = ("ec2:DescribeInstances", "ec2:StopInstances")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: InstancesParams) -> Plan:
        by_region: dict[str, list[str]] = {}
        for ref in params.instances:
            by_region.setdefault(ref.region, []).append(ref.id)

        def read(item: tuple[str, list[str]]) -> list[Change]:
            region, ids = item
            ec2 = ctx.aws.client("ec2", region)
            try:
                found = [i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]]
            except ClientError as exc:
                if not is_code(exc, "InvalidInstanceID.NotFound"):
                    raise
                found = [i for r in paginate(ec2, "describe_instances", "Reservations") for i in r["Instances"]
                         if i["InstanceId"] in ids]
            return [Change("ec2:StopInstances", _arn(ctx, region, i["InstanceId"]), {"InstanceIds": [i["InstanceId"]]},
                           previous={"State": i["State"]["Name"]},
                           reason=f"attacker instance {i['InstanceId']} ({i.get('InstanceType')}) in {region}")
                    for i in found if i["State"]["Name"] in LIVE]

        return Plan(changes=[c for cs in ctx.fanout(read, sorted(by_region.items())) for c in cs])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        return tolerant_call(ctx.aws.client("ec2", change.target.split(":")[3]).stop_instances, change.params, *GONE)
