"""The run's read cache (runner/aws.py ReadCache): fewer calls, never a stale answer after a write,
never a stale verification. Calls are counted with a botocore hook (`request-created`, one per
request actually built), not with time."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from actions.base import Action, ActionContext, NoParams, Plan
from actions.registry import Registry, builtin_registry
from runner.aws import AwsSession
from runner.config import AwsSection
from runner.drill import attack_trail, seed
from runner.engine import RunOptions
from runner.incident import validate_incident
from runner.service import AwsOptions, start_run


def counted(session: boto3.Session) -> Counter[str]:
    """Requests the session's clients build from now on, per operation (a cache hit builds none)."""
    sent: Counter[str] = Counter()

    def one(event_name: str, **_: Any) -> None:
        sent[event_name.rsplit(".", 1)[-1]] += 1

    session.events.register("request-created", one)
    return sent


def test_off_by_default_then_one_call_per_read_per_region_and_parameters(aws: boto3.Session) -> None:
    sent = counted(aws)
    iam = aws.client("iam")
    iam.create_user(UserName="u1")
    iam.create_user(UserName="u2")
    s = AwsSession(region="us-east-1", boto_session=aws)
    s.client("iam").list_access_keys(UserName="u1")
    s.client("iam").list_access_keys(UserName="u1")
    assert sent["ListAccessKeys"] == 2  # off: every read goes to AWS

    s.reads.enable()
    for _ in range(3):
        s.client("iam").list_access_keys(UserName="u1")
        s.client("iam").list_access_keys(UserName="u2")  # other parameters: their own answer
        s.client("ecs", "eu-west-1").list_clusters()
        s.client("ecs", "us-east-1").list_clusters()  # another region: its own answer
    assert sent["ListAccessKeys"] == 2 + 2
    assert sent["ListClusters"] == 2
    assert s.call_counts()["iam:ListAccessKeys"] == 4  # api_calls counts requests, not answers
    assert s.cached_counts() == {"ecs:ListClusters": 4, "iam:ListAccessKeys": 4}


def test_a_write_forgets_its_service_so_the_next_read_sees_it(aws: boto3.Session) -> None:
    iam = aws.client("iam")
    iam.create_user(UserName="victim")
    key = iam.create_access_key(UserName="victim")["AccessKey"]["AccessKeyId"]
    aws.client("ecs").create_cluster(clusterName="c")
    s = AwsSession(region="us-east-1", boto_session=aws)
    s.reads.enable()
    sent = counted(aws)
    mine = s.client("iam")
    assert mine.list_access_keys(UserName="victim")["AccessKeyMetadata"][0]["Status"] == "Active"
    s.client("ecs").list_clusters()
    mine.update_access_key(UserName="victim", AccessKeyId=key, Status="Inactive")
    assert mine.list_access_keys(UserName="victim")["AccessKeyMetadata"][0]["Status"] == "Inactive"
    s.client("ecs").list_clusters()  # an IAM write leaves ECS answers alone
    assert sent["ListAccessKeys"] == 2
    assert sent["ListClusters"] == 1


def test_answers_are_copies_and_iam_policy_documents_are_decoded_on_a_hit(aws: boto3.Session) -> None:
    iam = aws.client("iam")
    iam.create_user(UserName="u")
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="u", PolicyName="p", PolicyDocument=json.dumps(doc))
    s = AwsSession(region="us-east-1", boto_session=aws)
    s.reads.enable()
    first = s.client("iam").get_user_policy(UserName="u", PolicyName="p")
    first["PolicyDocument"]["Statement"].clear()  # a caller scribbling on its answer
    second = s.client("iam").get_user_policy(UserName="u", PolicyName="p")
    assert second["PolicyDocument"] == doc  # decoded from the URL-encoded JSON, and untouched
    assert s.cached_counts() == {"iam:GetUserPolicy": 1}


def test_a_definite_refusal_is_an_answer_too(aws: boto3.Session) -> None:
    aws.client("iam").create_user(UserName="no-password")
    s = AwsSession(region="us-east-1", boto_session=aws)
    s.reads.enable()
    for _ in range(2):
        with pytest.raises(ClientError, match="NoSuchEntity"):
            s.client("iam").get_login_profile(UserName="no-password")
    assert s.call_counts() == {"iam:GetLoginProfile": 1}


def test_an_expired_token_is_not_kept_as_an_answer(aws: boto3.Session) -> None:
    from botocore.stub import Stubber

    s = AwsSession(region="us-east-1", boto_session=aws)
    s.reads.enable()
    iam = s.client("iam")
    with Stubber(iam) as stub:
        stub.add_client_error("list_users", "ExpiredToken", http_status_code=400)
        stub.add_response("list_users", {"Users": []})
        with pytest.raises(ClientError, match="ExpiredToken"):
            iam.list_users()
        assert iam.list_users()["Users"] == []  # asked again (fresh credentials), not the kept refusal
        stub.assert_no_pending_responses()


def test_two_threads_asking_the_same_read_at_once_make_one_call(aws: boto3.Session) -> None:
    aws.client("iam").create_user(UserName="u")
    s = AwsSession(region="us-east-1", boto_session=aws)
    s.reads.enable()
    client = s.client("iam")
    # the first request is slow, so the second thread asks while it is in flight
    client.meta.events.register("request-created.iam.ListUsers", lambda **_: time.sleep(0.3))
    answers: list[list[str]] = []

    def ask() -> None:
        answers.append([u["UserName"] for u in client.list_users()["Users"]])

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [["u"]] * 3
    assert s.call_counts() == {"iam:ListUsers": 1}


def test_a_read_failing_with_5xx_after_its_retries_is_not_asked_again(moto_server: Any) -> None:
    from tests.faultproxy import FaultProxy

    with FaultProxy(moto_server.url, rules={"LookupEvents": "error5xx"}) as proxy:
        s = AwsSession(region="eu-central-1", endpoint_url=proxy.url,
                       settings=AwsSection(max_attempts=2, connect_timeout=2, read_timeout=2))
        s.reads.enable()
        ct = s.client("cloudtrail")
        for value in ("AKIAFIRST", "AKIAFIRST"):  # the same read asked twice
            with pytest.raises(ClientError, match="ServiceUnavailable"):
                ct.lookup_events(LookupAttributes=[{"AttributeKey": "AccessKeyId", "AttributeValue": value}])
        assert proxy.counts["error5xx"] == 2  # the first call's two attempts; the second was not sent
        with pytest.raises(ClientError, match="ServiceUnavailable"):  # other parameters: asked (one user's
            ct.lookup_events(  # failure must not fail every other user's read)
                LookupAttributes=[{"AttributeKey": "AccessKeyId", "AttributeValue": "AKIASECOND"}])
        assert proxy.counts["error5xx"] == 4
        s.client("cloudtrail", "us-west-2").describe_trails()  # other operations and regions are asked
        s.reads.clear()  # verification: asked again
        with pytest.raises(ClientError, match="ServiceUnavailable"):
            ct.lookup_events(LookupAttributes=[{"AttributeKey": "AccessKeyId", "AttributeValue": "AKIAFIRST"}])
        assert proxy.counts["error5xx"] == 6


# ------------------------------------------------------------------ a whole run, cache on and off
class ReactivateBehindTheRunsBack(Action[NoParams]):
    """Test double for an attacker: reads the keys through the run (so the cache holds them), then
    turns every key of the attacker's user back on through another client the run cannot see."""

    name = "test.reactivate-behind-the-runs-back"
    summary = "re-activate the attacker's keys outside the run (test double)"
    risk = "read-only"
    user = "cluster_admin"

    def plan(self, ctx: ActionContext, params: NoParams) -> Plan:
        keys = ctx.aws.client("iam").list_access_keys(UserName=self.user)["AccessKeyMetadata"]
        outside = boto3.Session(region_name="us-east-1").client("iam")
        for k in keys:
            outside.update_access_key(UserName=self.user, AccessKeyId=k["AccessKeyId"], Status="Active")
        return Plan()


PLAYBOOK = """
version: 1
name: cache-check
kinds: [cryptojacking]
steps:
  - id: discover-scope
    action: scope.discover
  - id: deactivate-keys
    action: iam.deactivate-access-keys
    with: {access_keys: "{{ scope.access_keys }}"}
  - id: quarantine-principals
    action: iam.quarantine-principals
    with: {users: "{{ scope.users }}", roles: "{{ scope.roles }}", groups: "{{ scope.groups }}"}
  - id: remove-from-groups
    action: iam.remove-from-groups
    with: {users: "{{ scope.users }}"}
  - id: detach-admin-policies
    action: iam.detach-admin-policies
    with: {users: "{{ scope.users }}", groups: "{{ scope.groups }}", roles: "{{ scope.roles }}"}
"""
SNEAKY = """
  - id: attacker-strikes-back
    action: test.reactivate-behind-the-runs-back
    needs: [deactivate-keys, quarantine-principals, remove-from-groups, detach-admin-policies]
"""


def contain(session: boto3.Session, tmp_path: Path, *, cache: bool, sneaky: bool = False) -> tuple[dict[str, Any],
                                                                                                  Counter[str]]:
    data = seed(session)
    registry = Registry()
    for action in builtin_registry()._actions.values():
        registry.register(action)
    registry.register(ReactivateBehindTheRunsBack)
    tmp_path.mkdir(parents=True, exist_ok=True)
    book = tmp_path / "cache-check.yaml"
    book.write_text(PLAYBOOK + (SNEAKY if sneaky else ""))
    config = tmp_path / "stanch.toml"
    config.write_text(f'[aws]\nregions = ["us-east-1"]\nread_cache = {str(cache).lower()}\n\n'
                      '[verify]\niam_settle_seconds = 0\n')
    sent = counted(session)
    outcome = start_run(
        validate_incident("t", data["incident"]), playbook_ref=str(book), config_path=str(config),
        options=RunOptions(approve_all=True, by="test"), aws_opts=AwsOptions(), state=tmp_path / "state",
        stream=None, registry=registry, session=AwsSession(region="us-east-1", boto_session=session),
        trail=(attack_trail(data).records, ["the attack's CloudTrail"]))
    return outcome.result, sent


@contextmanager
def fresh_account() -> Iterator[boto3.Session]:
    from moto import mock_aws

    with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        yield boto3.Session(region_name="us-east-1")


def reads(sent: Counter[str]) -> int:
    return sum(n for op, n in sent.items() if op.startswith(("List", "Get", "Describe", "Lookup")))


def test_a_run_with_the_cache_makes_fewer_calls_and_contains_the_same(tmp_path: Path) -> None:
    runs = {}
    for cache in (True, False):
        with fresh_account() as account:
            result, counting = contain(account, tmp_path / str(cache), cache=cache)
            sent = Counter(counting)  # what the run sent, before this test's own checks
            assert result["metrics"]["api_calls_total"] == sum(sent.values())
            iam = account.client("iam")
            assert result["status"] == "contained", json.dumps(result, default=str)[:3000]
            assert {k["Status"] for k in iam.list_access_keys(UserName="cluster_admin")["AccessKeyMetadata"]} \
                == {"Inactive"}
            assert iam.list_groups_for_user(UserName="cluster_admin")["Groups"] == []
            assert {k["Status"] for k in iam.list_access_keys(UserName="alice")["AccessKeyMetadata"]} == {"Active"}
            runs[cache] = (result, Counter(sent))
    (on, sent_on), (off, sent_off) = runs[True], runs[False]
    assert on["metrics"]["api_calls_cached"] > 0
    assert off["metrics"]["api_calls_cached"] == 0
    ops = [[c["operation"] for c in s["changes"]] for s in on["steps"]]
    assert ops == [[c["operation"] for c in s["changes"]] for s in off["steps"]]
    assert reads(sent_on) < reads(sent_off), (sent_on, sent_off)
    assert sent_on["UpdateAccessKey"] == sent_off["UpdateAccessKey"] == 1


def test_verification_reads_aws_not_the_cache(aws_managed: boto3.Session, tmp_path: Path) -> None:
    result, _ = contain(aws_managed, tmp_path, cache=True, sneaky=True)
    steps = {s["id"]: s for s in result["steps"]}
    # the key was deactivated, read back through the run (cached), then turned on again behind its
    # back: verification must see it on and refuse to call the run contained
    assert steps["deactivate-keys"]["status"] == "applied"
    assert any("iam:UpdateAccessKey" in v for v in steps["deactivate-keys"].get("verification", [])), steps
    assert result["status"] == "partially_contained"
