"""The catalogue of attacker calls stanch knows: CloudTrail `eventSource:eventName` -> the ATT&CK
technique, how the outcome is decided, and which action undoes it.

Every attributed event lands somewhere: a known write by its entry here, an unknown write as
"manual: review", a read of a secret as "exposed". Only other reads are not listed (they change
nothing). `classify` is the one place that decides which of these an event is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

#: how the outcome of a technique is decided
#: - undo: an undo action (`handler`) assesses the live resource and plans the change
#: - identity: contained when the identity it touches is in scope (the IAM containment steps)
#: - session: credentials issued to the attacker; contained when the issuer is quarantined
#: - ecs: contained when the service is in scope (the ECS containment steps)
#: - manual: a person acts on `instruction`
#: - exposed: a secret was read; `instruction` says how to rotate it
Kind = Literal["undo", "identity", "session", "ecs", "manual", "exposed"]

READ_PREFIXES = ("Get", "List", "Describe", "Head", "Lookup", "Search", "BatchGet", "Query", "Scan", "Select",
                 "Filter", "Check", "Test", "Simulate", "Validate", "Download", "Preview", "Estimate")
#: Lambda (and a few other services) put the API version after the operation name in CloudTrail
_VERSION_SUFFIX = re.compile(r"20\d{6}(v\d+)?$")


@dataclass(frozen=True)
class Technique:
    event: str  # "eventSource:eventName", e.g. "iam.amazonaws.com:CreateUser"
    attack_id: str
    attack_name: str
    kind: Kind
    #: dotted paths tried in order (requestParameters first, then responseElements) naming the resource
    resource_keys: tuple[str, ...] = ()
    handler: str | None = None  # the undo action's registered name (kind "undo")
    #: a person's step; `{resource}`, `{region}` and `{time}` are filled in from the event
    instruction: str = ""


def _t(event: str, attack: str, kind: Kind, keys: tuple[str, ...] = (), handler: str | None = None,
       instruction: str = "") -> Technique:
    attack_id, _, attack_name = attack.partition(" ")
    return Technique(event, attack_id, attack_name, kind, keys, handler, instruction)


IAM, STS, LAMBDA, EC2 = "iam.amazonaws.com", "sts.amazonaws.com", "lambda.amazonaws.com", "ec2.amazonaws.com"
AUTOSCALING = "autoscaling.amazonaws.com"
RDS, S3, TRAIL, ECS = "rds.amazonaws.com", "s3.amazonaws.com", "cloudtrail.amazonaws.com", "ecs.amazonaws.com"
CLOUD_ACCOUNT = "T1136.003 Create Account: Cloud Account"
CLOUD_ROLES = "T1098.003 Account Manipulation: Additional Cloud Roles"
CLOUD_CREDS = "T1098.001 Account Manipulation: Additional Cloud Credentials"
TRUST = "T1484.002 Domain or Tenant Policy Modification: Trust Modification"
TOKENS = "T1550.001 Use Alternate Authentication Material: Application Access Token"
SHARE = "T1537 Transfer Data to Cloud Account"
LOGS = "T1562.008 Impair Defenses: Disable or Modify Cloud Logs"
TOOLS = "T1562.001 Impair Defenses: Disable or Modify Tools"
SECRETS = "T1555.006 Credentials from Password Stores: Cloud Secrets Management Stores"
CONTAINER = "T1610 Deploy Container"

_POLICY_KEYS = ("userName", "groupName", "roleName")

CATALOGUE: dict[str, Technique] = {t.event: t for t in [
    # ---- IAM identities: contained by the IAM steps when the identity is in scope
    _t(f"{IAM}:CreateUser", CLOUD_ACCOUNT, "identity", ("userName",)),
    _t(f"{IAM}:CreateRole", CLOUD_ACCOUNT, "identity", ("roleName",)),
    _t(f"{IAM}:UpdateAssumeRolePolicy", TRUST, "identity", ("roleName",)),
    _t(f"{IAM}:CreateAccessKey", CLOUD_CREDS, "identity", ("userName", "accessKey.userName")),
    _t(f"{IAM}:CreateLoginProfile", CLOUD_CREDS, "undo", ("userName",), handler="iam.delete-attacker-login-profiles"),
    _t(f"{IAM}:UpdateLoginProfile", CLOUD_CREDS, "identity", ("userName",)),
    _t(f"{IAM}:AttachUserPolicy", CLOUD_ROLES, "identity", _POLICY_KEYS),
    _t(f"{IAM}:AttachGroupPolicy", CLOUD_ROLES, "identity", _POLICY_KEYS),
    _t(f"{IAM}:AttachRolePolicy", CLOUD_ROLES, "identity", _POLICY_KEYS),
    _t(f"{IAM}:PutUserPolicy", CLOUD_ROLES, "identity", _POLICY_KEYS),
    _t(f"{IAM}:PutGroupPolicy", CLOUD_ROLES, "identity", _POLICY_KEYS),
    _t(f"{IAM}:PutRolePolicy", CLOUD_ROLES, "identity", _POLICY_KEYS),
    _t(f"{IAM}:AddUserToGroup", CLOUD_ROLES, "identity", ("userName",)),
    _t(f"{IAM}:CreateGroup", CLOUD_ACCOUNT, "identity", ("groupName",)),
    _t(f"{IAM}:CreateOpenIDConnectProvider", TRUST, "manual", ("openIDConnectProviderArn", "url"),
       instruction="The attacker created the OpenID Connect provider {resource} at {time}. Delete it "
                   "(aws iam delete-open-id-connect-provider --open-id-connect-provider-arn {resource}) after checking "
                   "that no legitimate role trusts it, and review every role whose trust policy names it."),
    _t(f"{IAM}:CreateSAMLProvider", TRUST, "manual", ("sAMLProviderArn", "name"),
       instruction="The attacker created the SAML provider {resource} at {time}. Delete it "
                   "(aws iam delete-saml-provider --saml-provider-arn {resource}) after checking that no legitimate "
                   "role trusts it, and review every role whose trust policy names it."),
    # ---- sessions obtained with the stolen credentials
    _t(f"{STS}:GetFederationToken", TOKENS, "session", ("name",)),
    _t(f"{STS}:GetSessionToken", TOKENS, "session", ()),
    _t(f"{STS}:AssumeRole", "T1078.004 Valid Accounts: Cloud Accounts", "session", ("roleArn",)),
    # ---- Lambda
    _t(f"{LAMBDA}:AddPermission", "T1546 Event Triggered Execution", "undo", ("functionName",),
       handler="lambda.remove-attacker-permissions"),
    _t(f"{LAMBDA}:CreateFunction", "T1648 Serverless Execution", "undo", ("functionName",),
       handler="lambda.throttle-attacker-functions"),
    _t(f"{LAMBDA}:UpdateFunctionCode", "T1525 Implant Internal Image", "undo", ("functionName",),
       handler="lambda.pin-aliases-to-earlier-versions"),
    _t(f"{LAMBDA}:UpdateFunctionConfiguration", "T1525 Implant Internal Image", "undo", ("functionName",),
       handler="lambda.pin-aliases-to-earlier-versions"),
    _t(f"{LAMBDA}:PublishLayerVersion", "T1525 Implant Internal Image", "manual", ("layerVersionArn", "layerName"),
       instruction="The attacker published the Lambda layer version {resource} in {region} at {time}. Delete it "
                   "(aws lambda delete-layer-version) once no function uses it; functions it was added to are listed "
                   "separately."),
    # ---- EC2
    _t(f"{EC2}:RunInstances", "T1578.002 Modify Cloud Compute Infrastructure: Create Cloud Instance", "manual",
       ("instancesSet.items.0.instanceId", "instanceType"),
       instruction="The attacker launched instance {resource} in {region} at {time}. Capture its user data and a "
                   "snapshot of its volumes, then stop it (aws ec2 stop-instances --instance-ids {resource} "
                   "--region {region}) and terminate it once the investigation no longer needs it."),
    _t(f"{EC2}:RequestSpotInstances", "T1578.002 Modify Cloud Compute Infrastructure: Create Cloud Instance", "manual",
       ("spotInstanceRequestSet.items.0.spotInstanceRequestId",),
       instruction="The attacker requested spot instance(s) {resource} in {region} at {time}. Cancel the request "
                   "(aws ec2 cancel-spot-instance-requests --spot-instance-request-ids {resource} --region "
                   "{region}), then stop its instance."),
    _t(f"{EC2}:RequestSpotFleet", "T1578.002 Modify Cloud Compute Infrastructure: Create Cloud Instance", "manual",
       ("RequestSpotFleetResponse.spotFleetRequestId", "spotFleetRequestId"),
       instruction="The attacker requested spot fleet {resource} in {region} at {time}. Cancel it without "
                   "terminating (aws ec2 cancel-spot-fleet-requests --spot-fleet-request-ids {resource} "
                   "--no-terminate-instances --region {region}), then stop its instances."),
    _t(f"{EC2}:CreateFleet", "T1578.002 Modify Cloud Compute Infrastructure: Create Cloud Instance", "manual",
       ("CreateFleetResponse.fleetId", "fleetId"),
       instruction="The attacker created EC2 Fleet {resource} in {region} at {time}. Delete it without "
                   "terminating (aws ec2 delete-fleets --fleet-ids {resource} --no-terminate-instances --region "
                   "{region}), then stop its instances."),
    _t(f"{AUTOSCALING}:CreateAutoScalingGroup", "T1578.002 Modify Cloud Compute Infrastructure: Create Cloud "
       "Instance", "manual", ("autoScalingGroupName",),
       instruction="The attacker created Auto Scaling group {resource} in {region} at {time}. Suspend its "
                   "Launch processes and set its minimum and desired capacity to 0."),
    _t(f"{EC2}:AuthorizeSecurityGroupIngress", "T1562.007 Impair Defenses: Disable or Modify Cloud Firewall",
       "undo", ("groupId", "groupName"), handler="ec2.revoke-attacker-ingress"),
    _t(f"{EC2}:ModifyImageAttribute", SHARE, "undo", ("imageId",), handler="ec2.unshare-attacker-images"),
    _t(f"{EC2}:ModifySnapshotAttribute", SHARE, "undo", ("snapshotId",), handler="ec2.unshare-attacker-snapshots"),
    _t(f"{EC2}:CreateKeyPair", "T1098.004 Account Manipulation: SSH Authorized Keys", "manual", ("keyName",),
       instruction="The attacker created the EC2 key pair {resource} in {region} at {time}. Delete it "
                   "(aws ec2 delete-key-pair --key-name {resource} --region {region}) and check every instance "
                   "launched with it."),
    _t(f"{EC2}:ImportKeyPair", "T1098.004 Account Manipulation: SSH Authorized Keys", "manual", ("keyName",),
       instruction="The attacker imported the EC2 key pair {resource} in {region} at {time}. Delete it "
                   "(aws ec2 delete-key-pair --key-name {resource} --region {region}) and check every instance "
                   "launched with it."),
    _t(f"{EC2}:DeleteFlowLogs", LOGS, "manual", ("DeleteFlowLogsRequest.FlowLogId.content", "flowLogIds"),
       instruction="The attacker deleted VPC flow log(s) {resource} in {region} at {time}: traffic since then is "
                   "unrecorded. Re-create the flow logs with their previous destination (aws ec2 create-flow-logs)."),
    _t(f"{EC2}:GetPasswordData", "T1552 Unsecured Credentials", "exposed", ("instanceId",),
       instruction="The attacker read the Windows administrator password of instance {resource} in {region} at "
                   "{time}. Change that password on the instance and any account sharing it."),
    # ---- RDS
    _t(f"{RDS}:ModifyDBSnapshotAttribute", SHARE, "undo", ("dBSnapshotIdentifier",),
       handler="rds.unshare-attacker-snapshots"),
    _t(f"{RDS}:ModifyDBClusterSnapshotAttribute", SHARE, "undo", ("dBClusterSnapshotIdentifier",),
       handler="rds.unshare-attacker-snapshots"),
    # ---- S3
    _t(f"{S3}:PutBucketPolicy", SHARE, "undo", ("bucketName",), handler="s3.remove-attacker-policy-statements"),
    _t(f"{S3}:PutBucketAcl", SHARE, "manual", ("bucketName",),
       instruction="The attacker replaced the ACL of bucket {resource} at {time}. Review its grants (aws s3api "
                   "get-bucket-acl --bucket {resource}) and remove every grant to another account or to everyone."),
    _t(f"{S3}:DeleteBucketPublicAccessBlock", SHARE, "manual", ("bucketName",),
       instruction="The attacker removed Block Public Access from bucket {resource} at {time}. Turn it back on "
                   "(aws s3api put-public-access-block --bucket {resource} --public-access-block-configuration "
                   "BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true) "
                   "unless the bucket must be public."),
    _t(f"{S3}:DeletePublicAccessBlock", SHARE, "manual", ("bucketName",),
       instruction="The attacker removed Block Public Access from bucket {resource} at {time}. Turn it back on "
                   "(aws s3api put-public-access-block --bucket {resource} ...) unless the bucket must be public."),
    # ---- CloudTrail and other defences
    _t(f"{TRAIL}:StopLogging", LOGS, "undo", ("name",), handler="cloudtrail.restore-logging"),
    _t(f"{TRAIL}:PutEventSelectors", LOGS, "undo", ("trailName",), handler="cloudtrail.restore-logging"),
    _t(f"{TRAIL}:DeleteTrail", LOGS, "manual", ("name",),
       instruction="The attacker deleted CloudTrail trail {resource} in {region} at {time}: nothing is recorded by "
                   "it since. Re-create it with its previous bucket and settings (aws cloudtrail create-trail, then "
                   "start-logging)."),
    _t(f"{TRAIL}:UpdateTrail", LOGS, "manual", ("name",),
       instruction="The attacker changed the settings of CloudTrail trail {resource} in {region} at {time} "
                   "(destination, regions or validation). Compare them with your baseline (aws cloudtrail "
                   "describe-trails) and restore them with aws cloudtrail update-trail."),
    _t("guardduty.amazonaws.com:DeleteDetector", TOOLS, "manual", ("detectorId",),
       instruction="The attacker deleted GuardDuty detector {resource} in {region} at {time}. Enable GuardDuty "
                   "again in {region} (aws guardduty create-detector --enable); its earlier findings are gone."),
    _t("guardduty.amazonaws.com:UpdateDetector", TOOLS, "undo", ("detectorId",), handler="guardduty.enable-detectors"),
    _t("config.amazonaws.com:StopConfigurationRecorder", TOOLS, "undo", ("configurationRecorderName",),
       handler="config.start-recorders"),
    # ---- ECS: contained by the ECS steps when the service is in scope
    _t(f"{ECS}:CreateService", CONTAINER, "ecs", ("serviceName",)),
    _t(f"{ECS}:RunTask", CONTAINER, "ecs", ("taskDefinition",)),
    _t(f"{ECS}:RegisterTaskDefinition", CONTAINER, "ecs", ("family",)),
    _t(f"{ECS}:CreateCluster", CONTAINER, "ecs", ("clusterName",)),
    # ---- reads of secrets: exposed
    _t("secretsmanager.amazonaws.com:GetSecretValue", SECRETS, "exposed", ("secretId",),
       instruction="The attacker read secret {resource} in {region} at {time}. Rotate it (aws secretsmanager "
                   "rotate-secret --secret-id {resource}) and change the credential it holds wherever it is used."),
    _t("ssm.amazonaws.com:GetParameter", SECRETS, "exposed", ("name",),
       instruction="The attacker read the SecureString parameter {resource} in {region} at {time}. Change the "
                   "credential it holds and store the new value (aws ssm put-parameter --name {resource} "
                   "--type SecureString --overwrite)."),
    _t("ssm.amazonaws.com:GetParameters", SECRETS, "exposed", ("names",),
       instruction="The attacker read the SecureString parameter(s) {resource} in {region} at {time}. Change the "
                   "credential each holds and store the new values (aws ssm put-parameter --overwrite)."),
]}


def event_key(event: dict[str, Any]) -> str:
    """`eventSource:eventName`, with Lambda's API version suffix removed."""
    name = _VERSION_SUFFIX.sub("", str(event.get("eventName", "")))
    return f"{event.get('eventSource', '')}:{name}"


def is_write(event_name: str) -> bool:
    return not _VERSION_SUFFIX.sub("", event_name).startswith(READ_PREFIXES)


def _dig(doc: Any, path: str) -> Any:
    """Follow a dotted path; a number indexes a list, a name over a list collects from each item."""
    for part in path.split("."):
        if isinstance(doc, list) and part.isdigit():
            doc = doc[int(part)] if int(part) < len(doc) else None
        elif isinstance(doc, list):
            doc = [item.get(part) for item in doc if isinstance(item, dict) and item.get(part) is not None] or None
        elif isinstance(doc, dict):
            doc = doc.get(part)
        else:
            return None
    return doc


def request(event: dict[str, Any]) -> dict[str, Any]:
    req = event.get("requestParameters")
    return req if isinstance(req, dict) else {}


def response(event: dict[str, Any]) -> dict[str, Any]:
    resp = event.get("responseElements")
    return resp if isinstance(resp, dict) else {}


def resource_of(event: dict[str, Any], technique: Technique | None = None) -> str:
    """The name or ARN of what the event touched, as best the record tells."""
    keys = technique.resource_keys if technique else ()
    for key in keys:
        for part in (request(event), response(event)):
            value = _dig(part, key)
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            if value not in (None, "", {}):
                return str(value)
    if technique is None:  # an unknown call: the first request parameter that names something
        named = [v for k, v in request(event).items() if isinstance(v, str) and v
                 and k.lower().endswith(("name", "id", "arn", "identifier"))]
        if named:
            return named[0]
    resources = event.get("resources")
    if isinstance(resources, list) and resources and isinstance(resources[0], dict):
        return str(resources[0].get("ARN", ""))
    return ""


Category = Literal["known", "unknown_write", "secret_read", "ignored_read"]


def classify(event: dict[str, Any]) -> tuple[Category, Technique | None]:
    """What an attributed event is: a catalogued technique, an unknown write, or a read to ignore."""
    technique = CATALOGUE.get(event_key(event))
    if technique is not None:
        if technique.kind == "exposed":
            if event_key(event).startswith("ssm.") and not request(event).get("withDecryption"):
                return "ignored_read", None  # a plain parameter read without decryption exposes no secret
            return "secret_read", technique
        return "known", technique
    if is_write(str(event.get("eventName", ""))):
        return "unknown_write", None
    return "ignored_read", None


def fill(text: str, event: dict[str, Any], resource: str) -> str:
    return text.format(resource=resource or "(not named in the event)",
                       region=event.get("awsRegion", "?"), time=event.get("eventTime", "?"))
