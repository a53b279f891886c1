"""Member accounts for the many-accounts tests: a runner in the security account (moto's default
account) assumes `ROLE` in a member account, where `seed_member` put the drill's attack and its trail.
moto keeps accounts apart by the assumed credentials' account id, in process and on a moto server."""

from __future__ import annotations

from typing import Any

import boto3

from runner.drill import attack_trail, seed

SECURITY = "123456789012"  # moto's default account: the runner's own credentials
ROLE = "stanch/StanchResponder"
#: the attack's names (small: one user, one group, one miner service), the same in every account
NAMES = {"user": "svc-reporting", "group": "reporting-admins", "cluster": "reports", "service": "pdf-render",
         "image": "docker.io/xmrig/xmrig:6.21"}


def as_account(session: boto3.Session, account: str, role: str = "seed") -> boto3.Session:
    creds = session.client("sts").assume_role(RoleArn=f"arn:aws:iam::{account}:role/{role}",
                                              RoleSessionName="test-seed")["Credentials"]
    return boto3.Session(aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                         aws_session_token=creds["SessionToken"], region_name="us-east-1")


def state_of(session: boto3.Session) -> dict[str, Any]:
    """What containment changes: the attacker user's key, the miner service's desired count, the groups."""
    iam, ecs = session.client("iam"), session.client("ecs")
    key = iam.list_access_keys(UserName=NAMES["user"])["AccessKeyMetadata"][0]["Status"]
    svc = ecs.describe_services(cluster=NAMES["cluster"], services=[NAMES["service"]])["services"][0]
    groups = [g["GroupName"] for g in iam.list_groups_for_user(UserName=NAMES["user"])["Groups"]]
    return {"key": key, "desired": svc["desiredCount"], "groups": groups}


def seed_member(home: boto3.Session, account: str) -> dict[str, Any]:
    """The responder role (trusting the security account) and `seed`'s attack in `account`. Returns the
    member session, `seed`'s result, the native incident (in `account`) and the member account's
    CloudTrail of the attack."""
    member = as_account(home, account)
    member.client("iam").create_role(RoleName=ROLE.rsplit("/", 1)[1], Path=f"/{ROLE.rsplit('/', 1)[0]}/",
                                     AssumeRolePolicyDocument=(
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sts:AssumeRole",'
        f'"Principal":{{"AWS":"arn:aws:iam::{SECURITY}:root"}}}}]}}'))
    seeded = seed(member, NAMES)
    records = attack_trail(seeded).records
    for rec in records:
        rec["recipientAccountId"] = account
        who = rec["userIdentity"]
        who["accountId"] = account
        who["arn"] = who["arn"].replace(f":{SECURITY}:", f":{account}:")
    return {"member": member, "seeded": seeded, "incident": {**seeded["incident"], "account_id": account},
            "records": records}
