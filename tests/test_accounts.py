"""Many accounts: a runner in a security account assumes `[accounts] role_name` in the incident's account
(session name = the run id) and contains there; without that config, credentials for another account are
refused. moto keeps accounts apart by the assumed credentials' account id."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from runner.aws import AwsSession, session_name
from runner.config import load_config
from runner.drill import attack_trail, seed
from runner.engine import RunOptions
from runner.incident import validate_incident
from runner.service import AwsOptions, start_run
from tests.conftest import write_json

SECURITY = "123456789012"  # moto's default account: the runner's own credentials
MEMBER = "210987654321"
ROLE = "stanch/StanchResponder"
NAMES = {"user": "svc-reporting", "group": "reporting-admins", "cluster": "reports", "service": "pdf-render",
         "image": "docker.io/xmrig/xmrig:6.21"}


def as_account(session: boto3.Session, account: str, role: str = "seed") -> boto3.Session:
    creds = session.client("sts").assume_role(RoleArn=f"arn:aws:iam::{account}:role/{role}",
                                              RoleSessionName="test-seed")["Credentials"]
    return boto3.Session(aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                         aws_session_token=creds["SessionToken"], region_name="us-east-1")


def state_of(session: boto3.Session) -> dict[str, Any]:
    iam, ecs = session.client("iam"), session.client("ecs")
    key = iam.list_access_keys(UserName=NAMES["user"])["AccessKeyMetadata"][0]["Status"]
    svc = ecs.describe_services(cluster=NAMES["cluster"], services=[NAMES["service"]])["services"][0]
    groups = [g["GroupName"] for g in iam.list_groups_for_user(UserName=NAMES["user"])["Groups"]]
    return {"key": key, "desired": svc["desiredCount"], "groups": groups}


def config_file(tmp_path: Path, accounts: str) -> str:
    path = tmp_path / "stanch.toml"
    path.write_text(f'[aws]\nregions = ["us-east-1"]\n{accounts}')
    return str(path)


pytestmark = pytest.mark.xdist_group("accounts")  # one worker builds the two accounts once


@pytest.fixture(scope="module")
def two_accounts() -> Iterator[dict[str, Any]]:
    """The same attack, same names, in the member account and (a decoy) in the security account. Shared
    by the module: every test compares before and after, and only one contains."""
    from moto import mock_aws

    with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        yield _two_accounts(boto3.Session(region_name="us-east-1"))


def _two_accounts(aws_managed: boto3.Session) -> dict[str, Any]:
    member = as_account(aws_managed, MEMBER)
    member.client("iam").create_role(RoleName="StanchResponder", Path="/stanch/", AssumeRolePolicyDocument=(
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sts:AssumeRole",'
        f'"Principal":{{"AWS":"arn:aws:iam::{SECURITY}:root"}}}}]}}'))
    seeded = seed(member, NAMES)
    seed(aws_managed, NAMES)  # the security account has look-alikes with the very same names
    incident = {**seeded["incident"], "account_id": MEMBER, "id": "INC-MEMBER-1"}
    trail = attack_trail(seeded)
    for rec in trail.records:  # the member account's trail
        rec["recipientAccountId"] = MEMBER
        who = rec["userIdentity"]
        who["accountId"] = MEMBER
        who["arn"] = who["arn"].replace(f":{SECURITY}:", f":{MEMBER}:")
    return {"home": aws_managed, "member": member, "incident": validate_incident("t", incident),
            "trail": (trail.records, ["member trail (test)"])}


# runs before the containment test (file order, one worker): it plans against the live attack
def test_dry_run_in_a_member_account_assumes_the_role_and_never_writes(
        two_accounts: dict[str, Any], tmp_path: Path) -> None:
    member = two_accounts["member"]
    before = state_of(member)
    session = AwsSession(region="us-east-1", boto_session=two_accounts["home"], dry_run=True)
    out = start_run(two_accounts["incident"], playbook_ref=None,
                    config_path=config_file(tmp_path, f'[accounts]\nrole_name = "{ROLE}"\n'),
                    options=RunOptions(dry_run=True, by="test"), aws_opts=AwsOptions(), state=tmp_path / "state",
                    stream=io.StringIO(), trail=two_accounts["trail"], session=session)
    assert out.exit_code == 0 and out.result["status"] == "planned"
    assert out.result["assumed_role"]["role_arn"] == f"arn:aws:iam::{MEMBER}:role/{ROLE}"
    planned = [c["target"] for s in out.result["steps"] for c in s["changes"]]
    assert f"arn:aws:iam::{MEMBER}:user/{NAMES['user']}" in planned
    assert state_of(member) == before and session.refused == []


def test_incident_in_a_member_account_is_contained_there_through_the_assumed_role(
        two_accounts: dict[str, Any], tmp_path: Path) -> None:
    home, member = two_accounts["home"], two_accounts["member"]
    before_home = state_of(home)
    session = AwsSession(region="us-east-1", boto_session=home)
    out = start_run(two_accounts["incident"], playbook_ref=None,
                    config_path=config_file(tmp_path, f'[accounts]\nrole_name = "{ROLE}"\n'),
                    options=RunOptions(approve_all=True, by="test"), aws_opts=AwsOptions(),
                    state=tmp_path / "state", stream=io.StringIO(), trail=two_accounts["trail"], session=session)
    result = out.result
    assert out.exit_code == 0 and result["status"] == "contained", result.get("error")
    assert result["assumed_role"] == {"role_arn": f"arn:aws:iam::{MEMBER}:role/{ROLE}",
                                      "session_name": result["run_id"], "external_id": False}
    # contained in the member account ...
    assert state_of(member) == {"key": "Inactive", "desired": 0, "groups": []}
    # ... and nothing in the runner's own account, where the same names exist
    assert state_of(home) == before_home == {"key": "Active", "desired": 2, "groups": [NAMES["group"]]}
    assert session.call_counts()["sts:AssumeRole"] == 1  # one assumption, refreshed by botocore if needed
    changed = [c["target"] for s in result["steps"] for c in s["changes"] if c["status"] == "applied"]
    assert changed and all(f":{SECURITY}:" not in t for t in changed)
    assert any(f"arn:aws:iam::{MEMBER}:user/{NAMES['user']}" == t for t in changed)


def test_without_accounts_config_another_accounts_incident_is_refused_and_nothing_changes(
        two_accounts: dict[str, Any], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from runner.cli import app

    home, member = two_accounts["home"], two_accounts["member"]
    before = (state_of(home), state_of(member))
    path = write_json(tmp_path / "incident.json", two_accounts["incident"].to_json())
    res = CliRunner().invoke(app, ["run", str(path), "--approve-all", "--config", config_file(tmp_path, ""),
                                   "--state-dir", str(tmp_path / "state"), "-o", "json"])
    assert res.exit_code == 4, res.output
    assert f"account {SECURITY} but the incident is in account {MEMBER}" in res.stdout
    assert "[accounts] role_name" in res.stdout and "Traceback" not in res.output
    assert (state_of(home), state_of(member)) == before


def test_session_name_is_the_run_id_in_stss_charset() -> None:
    assert session_name("r-20261120T101400-ab12cd") == "r-20261120T101400-ab12cd"
    assert session_name("r 1/2:3") == "r-1-2-3"
    assert len(session_name("r-" + "x" * 100)) == 64
    assert session_name("r") == "stanch-r"


@pytest.mark.parametrize("bad", ['role_name = "has space"', 'external_id = "x"', 'role_name = "a*b"'])
def test_bad_accounts_config_is_bad_input(tmp_path: Path, bad: str) -> None:
    from runner.errors import InputError

    with pytest.raises(InputError) as exc:
        load_config(config_file(tmp_path, f"[accounts]\n{bad}\n"))
    assert exc.value.exit_code == 2 and "accounts." in exc.value.message
