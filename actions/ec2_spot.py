"""Spot instance requests, spot fleets and EC2 Fleets: attacker compute that launches instances again.

A request or fleet is in scope when the attacker's credentials created it (CloudTrail
RequestSpotInstances / RequestSpotFleet / CreateFleet in `scope.attacker_events`) or when its launch
specification's user data or image names a miner. `ec2.discover-instances` finds them (one scan per
region) and puts the instances they launched in scope; `ec2.capture-instance-evidence` records them;
`ec2.cancel-spot-requests` (gated, irreversible: a cancelled request cannot be re-created) cancels
them without terminating anything, so the instances are then stopped by `ec2.stop-instances`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from actions.base import Action, ActionContext, Change, Outcome, Params, Plan
from actions.common import Ref, is_code, iso, paginate
from actions.registry import register

#: states in which a request or fleet still launches (or relaunches) instances
SPOT_LIVE = ("open", "active", "disabled")  # a persistent request is 'disabled' while its instance is stopped
FLEET_LIVE = ("submitted", "active", "modifying")
#: where each kind is found in an attacker's CloudTrail response, its operation and its ARN type
KINDS = {
    "spot_request": ("RequestSpotInstances", "spotInstanceRequestId", "spot-instances-request"),
    "spot_fleet": ("RequestSpotFleet", "spotFleetRequestId", "spot-fleet-request"),
    "fleet": ("CreateFleet", "fleetId", "fleet"),
}
NOT_RECREATED = "a cancelled request cannot be re-created by rollback"


class SpotRef(Ref):
    id: str
    region: str
    kind: str  # spot_request | spot_fleet | fleet


def _walk(doc: Any, key: str) -> Iterator[str]:
    """Every value of `key` anywhere in a CloudTrail response (its shape differs between operations)."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == key and isinstance(v, str):
                yield v
            else:
                yield from _walk(v, key)
    elif isinstance(doc, list):
        for v in doc:
            yield from _walk(v, key)


def attacker_requests(events: list[dict[str, Any]]) -> dict[str, str]:
    """Spot request, spot fleet and EC2 Fleet id -> the attacker's CloudTrail call that created it."""
    out: dict[str, str] = {}
    for e in events:
        if e.get("errorCode"):
            continue
        for operation, key, _ in KINDS.values():
            if e.get("eventName") == operation:
                for rid in _walk(e.get("responseElements") or {}, key):
                    out[rid] = (f"created by the attacker's credentials (CloudTrail {operation} "
                                f"{e.get('eventID', '')} at {e.get('eventTime', '')})")
    return out


def _text(user_data: str) -> str:
    try:
        return base64.b64decode(user_data).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return user_data


class SpotScan:
    """One region's spot requests and fleets: what is in scope and why, what is left alone, and the
    instances they launched (which are in scope with them)."""

    def __init__(self, ec2: Any, region: str, account: str, events: list[dict[str, Any]],
                 patterns: list[str]) -> None:
        self.ec2, self.region, self.account, self.patterns = ec2, region, account, patterns
        self.created = attacker_requests(events)
        self.found: list[dict[str, Any]] = []
        self.left: list[dict[str, Any]] = []
        #: instance id -> why it is in scope (launched by an in-scope request or fleet)
        self.instances: dict[str, str] = {}
        self._images: dict[str, str] = {}
        self._templates: dict[tuple[str, str], dict[str, Any]] = {}

    def arn(self, kind: str, rid: str) -> str:
        return f"arn:aws:ec2:{self.region}:{self.account}:{KINDS[kind][2]}/{rid}"

    def run(self) -> SpotScan:
        self._spot_requests()
        self._spot_fleets()
        self._fleets()
        return self

    # -- what a launch specification would run
    def _image_name(self, image: str) -> str:
        if image and image not in self._images:
            try:
                found = self.ec2.describe_images(ImageIds=[image]).get("Images", [])
            except ClientError as exc:
                if not is_code(exc, "InvalidAMIID.NotFound", "InvalidAMIID.Malformed"):
                    raise
                found = []
            self._images[image] = " ".join(f"{i.get('Name', '')} {i.get('Description', '')}" for i in found).strip()
        return self._images.get(image, "")

    def _template(self, spec: dict[str, Any]) -> dict[str, Any]:
        ref = spec.get("LaunchTemplateId") or spec.get("LaunchTemplateName") or ""
        version = str(spec.get("Version") or "$Default")
        if not ref:
            return {}
        if (ref, version) not in self._templates:
            key = "LaunchTemplateId" if spec.get("LaunchTemplateId") else "LaunchTemplateName"
            try:
                versions = self.ec2.describe_launch_template_versions(**{key: ref}, Versions=[version])
                data = (versions.get("LaunchTemplateVersions") or [{}])[0].get("LaunchTemplateData") or {}
            except ClientError as exc:
                if not is_code(exc, "InvalidLaunchTemplateId.NotFound", "InvalidLaunchTemplateName.NotFoundException",
                               "InvalidLaunchTemplateId.VersionNotFound"):
                    raise
                data = {}
            self._templates[(ref, version)] = data
        return self._templates[(ref, version)]

    def _miner(self, specs: list[dict[str, Any]]) -> list[str]:
        from actions.ec2 import mentions_miner

        reasons = []
        for spec in specs:
            if spec.get("UserData") and (hit := mentions_miner(_text(str(spec["UserData"])), self.patterns)):
                reasons.append(f"launch user data names miner pattern {hit}")
            image = str(spec.get("ImageId") or "")
            if image and (hit := mentions_miner(self._image_name(image), self.patterns)):
                reasons.append(f"launch image {image} names miner pattern {hit}")
        return list(dict.fromkeys(reasons))

    def _decide(self, kind: str, rid: str, specs: list[dict[str, Any]], item: dict[str, Any],
                instances: list[str]) -> None:
        reasons = ([self.created[rid]] if rid in self.created else []) + self._miner(specs)
        if not reasons:
            self.left.append({"kind": f"ec2_{kind}", "name": rid, "arn": self.arn(kind, rid),
                              "reason": "not created by the attacker's credentials and its launch specification "
                                        "names no miner"})
            return
        why = "; ".join(reasons)
        self.found.append({**item, "id": rid, "region": self.region, "kind": kind, "instances": instances,
                           "reason": why, "label": f"{rid} ({kind.replace('_', ' ')}, {self.region})"})
        for iid in instances:
            self.instances.setdefault(iid, f"launched by in-scope {kind.replace('_', ' ')} {rid} ({why})")

    # -- the three kinds
    def _spot_requests(self) -> None:
        for r in paginate(self.ec2, "describe_spot_instance_requests", "SpotInstanceRequests",
                          Filters=[{"Name": "state", "Values": list(SPOT_LIVE)}]):
            if r.get("State") not in SPOT_LIVE:
                continue
            spec = dict(r.get("LaunchSpecification") or {})
            self._decide("spot_request", r["SpotInstanceRequestId"], [spec],
                         {"type": r.get("Type"), "state": r.get("State"), "created": iso(r.get("CreateTime"))},
                         [r["InstanceId"]] if r.get("InstanceId") else [])

    def _spot_fleets(self) -> None:
        for f in paginate(self.ec2, "describe_spot_fleet_requests", "SpotFleetRequestConfigs"):
            if f.get("SpotFleetRequestState") not in FLEET_LIVE:
                continue
            fid = f["SpotFleetRequestId"]
            config = f.get("SpotFleetRequestConfig") or {}
            specs = [dict(s) for s in config.get("LaunchSpecifications") or []]
            specs += [self._template(c.get("LaunchTemplateSpecification") or {})
                      for c in config.get("LaunchTemplateConfigs") or []]
            active = self.ec2.describe_spot_fleet_instances(SpotFleetRequestId=fid).get("ActiveInstances", [])
            self._decide("spot_fleet", fid, specs,
                         {"type": config.get("Type", "maintain"), "state": f.get("SpotFleetRequestState"),
                          "target_capacity": config.get("TargetCapacity"), "created": iso(f.get("CreateTime"))},
                         [i["InstanceId"] for i in active if i.get("InstanceId")])

    def _fleets(self) -> None:
        for f in paginate(self.ec2, "describe_fleets", "Fleets"):
            # an `instant` fleet is a one-off launch with nothing to cancel: its instances are found as instances
            if f.get("FleetState") not in FLEET_LIVE or f.get("Type") == "instant":
                continue
            fid = f["FleetId"]
            specs = [self._template(c.get("LaunchTemplateSpecification") or {})
                     for c in f.get("LaunchTemplateConfigs") or []]
            active = self.ec2.describe_fleet_instances(FleetId=fid).get("ActiveInstances", [])
            self._decide("fleet", fid, specs,
                         {"type": f.get("Type"), "state": f.get("FleetState"), "created": iso(f.get("CreateTime")),
                          "target_capacity": (f.get("TargetCapacitySpecification") or {}).get("TotalTargetCapacity")},
                         [i["InstanceId"] for i in active if i.get("InstanceId")])


def describe(ec2: Any, ref: SpotRef) -> dict[str, Any] | None:
    """The live description of one request or fleet (None: it no longer exists)."""
    try:
        if ref.kind == "spot_request":
            found = ec2.describe_spot_instance_requests(SpotInstanceRequestIds=[ref.id])["SpotInstanceRequests"]
        elif ref.kind == "spot_fleet":
            found = ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[ref.id])["SpotFleetRequestConfigs"]
        else:
            found = ec2.describe_fleets(FleetIds=[ref.id])["Fleets"]
    except ClientError as exc:
        if is_code(exc, "InvalidSpotInstanceRequestID.NotFound", "InvalidSpotFleetRequestId.NotFound",
                   "InvalidFleetId.NotFound"):
            return None
        raise
    return dict(found[0]) if found else None


def redact_user_data(doc: Any) -> Any:
    """A description for evidence: every UserData replaced by its digest and size (it often holds secrets)."""
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            if k == "UserData" and isinstance(v, str):
                raw = v.encode()
                with contextlib.suppress(binascii.Error, ValueError):
                    raw = base64.b64decode(v, validate=True)
                out[k] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
            else:
                out[k] = redact_user_data(v)
        return out
    if isinstance(doc, list):
        return [redact_user_data(v) for v in doc]
    return doc


def _state(kind: str, found: dict[str, Any]) -> str:
    return str(found.get({"spot_request": "State", "spot_fleet": "SpotFleetRequestState"}.get(kind, "FleetState")))


class CancelParams(Params):
    requests: list[SpotRef] = []


@register
class CancelSpotRequests(Action[CancelParams]):
    """Cancel in-scope spot requests, spot fleets and EC2 Fleets so nothing launches the miner again.
    Instances are never terminated here (TerminateInstances=False): the EC2 stop step stops them.
    Irreversible: rollback cannot re-create a cancelled request (it lists it for a person)."""

    name = "ec2.cancel-spot-requests"
    summary = "Cancel attacker spot requests, spot fleets and EC2 Fleets (instances kept; not re-creatable)"
    params_model = CancelParams
    permissions = ("ec2:DescribeSpotInstanceRequests", "ec2:DescribeSpotFleetRequests", "ec2:DescribeFleets",
                   "ec2:CancelSpotInstanceRequests", "ec2:CancelSpotFleetRequests", "ec2:DeleteFleets")
    risk = "irreversible"

    def plan(self, ctx: ActionContext, params: CancelParams) -> Plan:
        def read(ref: SpotRef) -> Change | None:
            found = describe(ctx.aws.client("ec2", ref.region), ref)
            state = _state(ref.kind, found or {})
            if found is None or state not in (SPOT_LIVE if ref.kind == "spot_request" else FLEET_LIVE):
                return None
            arn = f"arn:aws:ec2:{ref.region}:{ctx.incident.account_id}:{KINDS[ref.kind][2]}/{ref.id}"
            if ref.kind == "spot_request":
                return Change("ec2:CancelSpotInstanceRequests", arn, {"SpotInstanceRequestIds": [ref.id]},
                              previous={"State": state, "Type": found.get("Type"),
                                        "InstanceId": found.get("InstanceId")},
                              reason=f"spot request {ref.id} in {ref.region} would launch the miner again; "
                                     f"{NOT_RECREATED}")
            if ref.kind == "spot_fleet":
                config = found.get("SpotFleetRequestConfig") or {}
                return Change("ec2:CancelSpotFleetRequests", arn,
                              {"SpotFleetRequestIds": [ref.id], "TerminateInstances": False},
                              previous={"State": state, "Type": config.get("Type"),
                                        "TargetCapacity": config.get("TargetCapacity")},
                              reason=f"spot fleet {ref.id} in {ref.region} keeps its capacity by launching "
                                     f"instances; cancelled, its instances kept for the stop step; {NOT_RECREATED}")
            return Change("ec2:DeleteFleets", arn, {"FleetIds": [ref.id], "TerminateInstances": False},
                          previous={"State": state, "Type": found.get("Type"), "TotalTargetCapacity": (
                              found.get("TargetCapacitySpecification") or {}).get("TotalTargetCapacity")},
                          reason=f"EC2 Fleet {ref.id} ({found.get('Type')}) in {ref.region} keeps its capacity by "
                                 f"launching instances; deleted, its instances kept for the stop step; "
                                 f"{NOT_RECREATED}")

        return Plan(changes=[c for c in ctx.fanout(read, params.requests) if c is not None])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        region, rid = change.target.split(":")[3], change.target.rsplit("/", 1)[-1]
        ec2 = ctx.aws.client("ec2", region)
        p = change.params
        kind = {"ec2:CancelSpotInstanceRequests": "spot_request", "ec2:CancelSpotFleetRequests": "spot_fleet"}.get(
            change.operation, "fleet")
        found = describe(ec2, SpotRef(id=rid, region=region, kind=kind))
        if found is None or _state(kind, found) not in (SPOT_LIVE if kind == "spot_request" else FLEET_LIVE):
            return "already_done"  # cancelled (or gone) since the plan: nothing to send twice
        try:
            if change.operation == "ec2:CancelSpotInstanceRequests":
                ec2.cancel_spot_instance_requests(**p)
                return "applied"
            if change.operation == "ec2:CancelSpotFleetRequests":
                out = ec2.cancel_spot_fleet_requests(**p)
                failed = list(out.get("UnsuccessfulFleetRequests") or [])
            else:
                out = ec2.delete_fleets(**p)
                failed = list(out.get("UnsuccessfulFleetDeletions") or [])
        except ClientError as exc:
            if is_code(exc, "InvalidSpotInstanceRequestID.NotFound", "InvalidSpotFleetRequestId.NotFound",
                       "InvalidFleetId.NotFound"):
                return "already_done"
            raise
        for f in failed:
            err = f.get("Error") or {}
            code = str(err.get("Code", ""))
            if code in ("fleetRequestIdDoesNotExist", "fleetIdDoesNotExist", "fleetRequestNotInCancellableState",
                        "fleetNotInDeletableState"):
                return "already_done"
            raise ClientError({"Error": {"Code": code or "Unsuccessful", "Message": str(err.get("Message", ""))}},
                              change.operation.split(":")[1])
        return "applied"
