"""EC2 exposure the attacker added: security-group ingress rules, and AMI / EBS snapshot shares.

Only what the attributed events added is undone: the exact ingress rules of an
AuthorizeSecurityGroupIngress (other rules of the group stay), the account ids (or `all`) the
attacker added to a launch / create-volume permission (other shares stay). Each change records
the rule or share it removes, so rollback can put it back."""

from __future__ import annotations

from typing import Any, ClassVar

from botocore.exceptions import ClientError

from actions.base import ActionContext, Change, Outcome
from actions.common import is_code, tolerant_call
from actions.registry import register
from actions.triage import UndoAction, Verdict, event_id, region_of
from runner.techniques import request

PROTOCOLS = {"6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6", "all": "-1"}


def _items(value: Any) -> list[dict[str, Any]]:
    """CloudTrail wraps EC2 lists as {"items": [...]}; accept a bare list too."""
    if isinstance(value, dict):
        value = value.get("items", [])
    return [v for v in value or [] if isinstance(v, dict)]


def _proto(value: Any) -> str:
    text = str(value).lower()
    return PROTOCOLS.get(text, text)


def rules_of_event(req: dict[str, Any]) -> list[dict[str, Any]]:
    """The single-source ingress rules of an AuthorizeSecurityGroupIngress request, in boto3's shape."""
    rules = []
    for perm in _items(req.get("ipPermissions")):
        base: dict[str, Any] = {"IpProtocol": _proto(perm.get("ipProtocol", "-1"))}
        if base["IpProtocol"] != "-1":
            base.update(FromPort=int(perm.get("fromPort", -1)), ToPort=int(perm.get("toPort", -1)))
        rules += [{**base, "IpRanges": [{"CidrIp": r["cidrIp"]}]} for r in _items(perm.get("ipRanges"))
                  if r.get("cidrIp")]
        rules += [{**base, "Ipv6Ranges": [{"CidrIpv6": r["cidrIpv6"]}]} for r in _items(perm.get("ipv6Ranges"))
                  if r.get("cidrIpv6")]
        rules += [{**base, "UserIdGroupPairs": [{"GroupId": g["groupId"]}]} for g in _items(perm.get("groups"))
                  if g.get("groupId")]
        rules += [{**base, "PrefixListIds": [{"PrefixListId": p["prefixListId"]}]}
                  for p in _items(perm.get("prefixListIds")) if p.get("prefixListId")]
    return rules


_SOURCES = (("IpRanges", "CidrIp"), ("Ipv6Ranges", "CidrIpv6"), ("UserIdGroupPairs", "GroupId"),
            ("PrefixListIds", "PrefixListId"))


def has_rule(live: list[dict[str, Any]], rule: dict[str, Any]) -> bool:
    """True when the group's live ingress permissions hold `rule` (protocol, ports and source)."""
    for perm in live:
        if _proto(perm.get("IpProtocol")) != rule["IpProtocol"]:
            continue
        if rule["IpProtocol"] != "-1" and (perm.get("FromPort"), perm.get("ToPort")) != (rule["FromPort"],
                                                                                         rule["ToPort"]):
            continue
        for list_key, key in _SOURCES:
            wanted = {s[key] for s in rule.get(list_key, [])}
            if wanted and wanted <= {s.get(key) for s in perm.get(list_key, [])}:
                return True
    return False


def _describe(rule: dict[str, Any]) -> str:
    ports = "all ports" if rule["IpProtocol"] == "-1" else f"{rule['IpProtocol']} {rule['FromPort']}-{rule['ToPort']}"
    source = next(s[0][k] for lk, k in _SOURCES if (s := rule.get(lk)))
    return f"{ports} from {source}"


def _group(ec2: Any, group_id: str | None, group_name: str | None) -> dict[str, Any] | None:
    try:
        if group_id:
            found = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
        else:
            found = ec2.describe_security_groups(GroupNames=[group_name])["SecurityGroups"]
    except ClientError as exc:
        if is_code(exc, "InvalidGroup.NotFound", "InvalidGroupId.NotFound", "InvalidGroupId.Malformed"):
            return None
        raise
    return found[0] if found else None


@register
class RevokeAttackerIngress(UndoAction):
    """Revoke exactly the ingress rules the attacker authorised; the group's other rules stay."""

    name = "ec2.revoke-attacker-ingress"
    summary = "Revoke security-group ingress rules the attacker added (only those; each rule recorded)"
    permissions = ("ec2:DescribeSecurityGroups", "ec2:RevokeSecurityGroupIngress")
    reverts = {"ec2:RevokeSecurityGroupIngress": ("ec2:AuthorizeSecurityGroupIngress",)}

    def assess(self, ctx: ActionContext, events: list[dict[str, Any]]) -> list[Verdict]:
        out = []
        for e in events:
            req, eid, region = request(e), event_id(e), region_of(e, ctx)
            group = _group(ctx.aws.client("ec2", region), req.get("groupId"), req.get("groupName"))
            if group is None:
                gone = req.get("groupId") or req.get("groupName")
                out.append(Verdict(eid, "no_action_needed", f"security group {gone} no longer exists"))
                continue
            gid = group["GroupId"]
            arn = f"arn:aws:ec2:{region}:{ctx.incident.account_id}:security-group/{gid}"
            present = [r for r in rules_of_event(req) if has_rule(group.get("IpPermissions", []), r)]
            if not present:
                out.append(Verdict(eid, "no_action_needed", f"the rules the attacker added to {gid} are gone"))
                continue
            changes = [Change("ec2:RevokeSecurityGroupIngress", arn, {"GroupId": gid, "IpPermissions": [r]},
                              previous={"IpPermissions": [r]},
                              reason=f"ingress {_describe(r)} added to {gid} by the attacker at {e.get('eventTime')}")
                       for r in present]
            out.append(Verdict(eid, "contained", f"ingress {', '.join(_describe(r) for r in present)} revoked from "
                                                 f"{gid}", changes=changes))
        return out

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        ec2 = ctx.aws.client("ec2", change.target.split(":")[3])
        if change.operation == "ec2:AuthorizeSecurityGroupIngress":
            return tolerant_call(ec2.authorize_security_group_ingress, change.params, "InvalidPermission.Duplicate")
        return tolerant_call(ec2.revoke_security_group_ingress, change.params, "InvalidPermission.NotFound",
                             "InvalidGroup.NotFound")

    def inverse(self, change: dict[str, Any]) -> Change | None:
        p = change["params"]
        return Change("ec2:AuthorizeSecurityGroupIngress", change["target"],
                      {"GroupId": p["GroupId"], "IpPermissions": (change.get("previous") or {}).get("IpPermissions")
                       or p["IpPermissions"]},
                      previous={"IpPermissions": None}, reason=f"undo ec2:RevokeSecurityGroupIngress on {p['GroupId']}")

    def restored(self, ctx: ActionContext, change: Change) -> bool:
        group = _group(ctx.aws.client("ec2", change.target.split(":")[3]), change.params["GroupId"], None)
        return group is None or all(has_rule(group.get("IpPermissions", []), r) for r in change.params["IpPermissions"])


class _Unshare(UndoAction):
    """Remove the accounts (or `all`) the attacker added to a resource's share permission."""

    kind: ClassVar[str]  # "image" / "snapshot"
    id_key: ClassVar[str]  # requestParameters key of the resource id
    event_attribute: ClassVar[str]  # requestParameters key holding {"add": {"items": [...]}}
    operation: ClassVar[str]

    def shared_with(self, ec2: Any, resource: str) -> set[str] | None:
        """Account ids and groups ("group:all") the resource is shared with; None when it is gone."""
        raise NotImplementedError

    def params(self, resource: str, entry: str, verb: str) -> dict[str, Any]:
        raise NotImplementedError

    def assess(self, ctx: ActionContext, events: list[dict[str, Any]]) -> list[Verdict]:
        out = []
        for e in events:
            req, eid, region = request(e), event_id(e), region_of(e, ctx)
            resource = str(req.get(self.id_key, ""))
            attr = req.get(self.event_attribute) if isinstance(req.get(self.event_attribute), dict) else {}
            assert isinstance(attr, dict)
            added = [f"group:{i['group']}" if i.get("group") else str(i.get("userId"))
                     for i in _items(attr.get("add")) if i.get("group") or i.get("userId")]
            added = [a for a in added if a != ctx.incident.account_id]
            live = self.shared_with(ctx.aws.client("ec2", region), resource)
            if live is None:
                out.append(Verdict(eid, "no_action_needed", f"{self.kind} {resource} no longer exists"))
                continue
            present = [a for a in added if a in live]
            if not present:
                out.append(Verdict(eid, "no_action_needed", f"{self.kind} {resource} is no longer shared with "
                                                            f"{', '.join(added) or 'anyone the attacker added'}"))
                continue
            arn = f"arn:aws:ec2:{region}:{ctx.incident.account_id}:{self.kind}/{resource}"
            changes = [Change(self.operation, arn, self.params(resource, a, "remove"), previous={"SharedWith": a},
                              reason=f"{self.kind} {resource} shared with {whom(a)} by the attacker at "
                                     f"{e.get('eventTime')}")
                       for a in present]
            out.append(Verdict(eid, "contained", f"{self.kind} {resource} is no longer shared with "
                                                 f"{', '.join(present)}", changes=changes))
        return out

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        ec2 = ctx.aws.client("ec2", change.target.split(":")[3])
        call = ec2.modify_image_attribute if self.kind == "image" else ec2.modify_snapshot_attribute
        return tolerant_call(call, change.params, "InvalidAMIID.NotFound", "InvalidAMIID.Unavailable",
                             "InvalidSnapshot.NotFound")

    def inverse(self, change: dict[str, Any]) -> Change | None:
        entry = (change.get("previous") or {}).get("SharedWith")
        if not entry:
            return None
        resource = change["target"].rsplit("/", 1)[-1]
        return Change(self.operation, change["target"], self.params(resource, entry, "add"),
                      previous={"SharedWith": None},
                      reason=f"undo {self.operation}: {self.kind} {resource} shared with {entry} again")

    def restored(self, ctx: ActionContext, change: Change) -> bool:
        resource = change.target.rsplit("/", 1)[-1]
        live = self.shared_with(ctx.aws.client("ec2", change.target.split(":")[3]), resource)
        wanted = change.params
        entry = _entry(wanted)
        return live is None or entry in live


def whom(entry: str) -> str:
    return "everyone (public)" if entry in ("group:all", "all") else f"account {entry}"


def _entry(params: dict[str, Any]) -> str:
    perm = params.get("LaunchPermission")
    if isinstance(perm, dict):
        items = perm.get("Add") or perm.get("Remove") or [{}]
        return f"group:{items[0]['Group']}" if items[0].get("Group") else str(items[0].get("UserId"))
    if params.get("GroupNames"):
        return f"group:{params['GroupNames'][0]}"
    return str(params.get("UserIds", [""])[0])


def _entries(perms: list[dict[str, Any]]) -> set[str]:
    return {f"group:{p['Group']}" if p.get("Group") else str(p.get("UserId")) for p in perms}


@register
class UnshareAttackerImages(_Unshare):
    name = "ec2.unshare-attacker-images"
    summary = "Remove the outside accounts (or public access) the attacker added to AMI launch permissions"
    permissions = ("ec2:DescribeImages", "ec2:DescribeImageAttribute", "ec2:ModifyImageAttribute")
    reverts = {"ec2:ModifyImageAttribute": ("ec2:ModifyImageAttribute",)}
    kind, id_key, event_attribute, operation = "image", "imageId", "launchPermission", "ec2:ModifyImageAttribute"

    def shared_with(self, ec2: Any, resource: str) -> set[str] | None:
        try:
            # existence first: some emulators fail describe_image_attribute on an unknown image
            if not ec2.describe_images(ImageIds=[resource])["Images"]:
                return None
            perms = ec2.describe_image_attribute(ImageId=resource, Attribute="launchPermission")
        except ClientError as exc:
            if is_code(exc, "InvalidAMIID.NotFound", "InvalidAMIID.Unavailable", "InvalidAMIID.Malformed"):
                return None
            raise
        return _entries(perms.get("LaunchPermissions", []))

    def params(self, resource: str, entry: str, verb: str) -> dict[str, Any]:
        item = {"Group": entry.split(":", 1)[1]} if entry.startswith("group:") else {"UserId": entry}
        return {"ImageId": resource, "LaunchPermission": {verb.capitalize(): [item]}}


@register
class UnshareAttackerSnapshots(_Unshare):
    name = "ec2.unshare-attacker-snapshots"
    summary = "Remove the outside accounts (or public access) the attacker added to EBS snapshot permissions"
    permissions = ("ec2:DescribeSnapshotAttribute", "ec2:ModifySnapshotAttribute")
    reverts = {"ec2:ModifySnapshotAttribute": ("ec2:ModifySnapshotAttribute",)}
    kind, id_key, event_attribute, operation = ("snapshot", "snapshotId", "createVolumePermission",
                                                "ec2:ModifySnapshotAttribute")

    def shared_with(self, ec2: Any, resource: str) -> set[str] | None:
        try:
            perms = ec2.describe_snapshot_attribute(SnapshotId=resource, Attribute="createVolumePermission")
        except ClientError as exc:
            if is_code(exc, "InvalidSnapshot.NotFound", "InvalidSnapshot.Malformed"):
                return None
            raise
        return _entries(perms.get("CreateVolumePermissions", []))

    def params(self, resource: str, entry: str, verb: str) -> dict[str, Any]:
        who = {"GroupNames": [entry.split(":", 1)[1]]} if entry.startswith("group:") else {"UserIds": [entry]}
        return {"SnapshotId": resource, "Attribute": "createVolumePermission", "OperationType": verb, **who}
