"""The attribution graph on plain records (no AWS): the closure is transitive, order-free and
proven by events; failures, other principals and look-alike names add nothing."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from runner.attribution.graph import Seeds, attribute
from runner.drill import TrailWriter

START = datetime(2026, 11, 20, 9, 58, tzinfo=UTC)


def chain() -> TrailWriter:
    t = TrailWriter(when="2026-11-20T10:00:00Z")
    root = t.root("AKIAROOTKEY000000001")
    t.add(root, "iam", "CreateUser", {"userName": "tmp-sync"})
    t.add(root, "iam", "CreateAccessKey", {"userName": "tmp-sync"}, {"accessKey": {"accessKeyId": "AKIATMPSYNC000000001"}})
    me = t.user("tmp-sync", "AKIATMPSYNC000000001")
    t.add(me, "sts", "GetFederationToken", {"name": "fed"},
          {"credentials": {"accessKeyId": "ASIAFEDERATED0000001"},
           "federatedUser": {"arn": "arn:aws:sts::123456789012:federated-user/fed"}})
    fed = {"type": "FederatedUser", "arn": "arn:aws:sts::123456789012:federated-user/fed",
           "accessKeyId": "ASIAFEDERATED0000001", "accountId": "123456789012"}
    t.add(fed, "iam", "CreateRole", {"roleName": "svc-lambda-exec", "assumeRolePolicyDocument": "{}"})
    t.add(fed, "sts", "AssumeRole", {"roleArn": "arn:aws:iam::123456789012:role/svc-lambda-exec"},
          {"credentials": {"accessKeyId": "ASIAROLESESSION00001"},
           "assumedRoleUser": {"arn": "arn:aws:sts::123456789012:assumed-role/svc-lambda-exec/s1"}})
    t.add(t.role("svc-lambda-exec", "s1", "ASIAROLESESSION00001"), "ec2", "RunInstances", {"instanceType": "c5.4xlarge"},
          {"instancesSet": {"items": [{"instanceId": "i-0abc"}]}}, region="ap-south-1")
    # failures and other principals
    t.add(me, "iam", "CreateUser", {"userName": "never-created"}, error="AccessDenied")
    other = t.user("tmp-sync-old", "AKIAOTHERUSER0000001")  # a look-alike name, not the attacker
    t.add(other, "iam", "CreateUser", {"userName": "intern"})
    t.add(t.role("svc-lambda-exec-2", "x", "ASIANOTTHEATTACKER01"), "iam", "CreateUser", {"userName": "ci"})
    return t


def seeds() -> Seeds:
    return Seeds(account_id="123456789012", root=True, keys=frozenset({"AKIAROOTKEY000000001"}), window_start=START)


def test_closure_follows_keys_federation_created_roles_and_sessions_to_compute() -> None:
    g = attribute(chain().records, seeds())
    assert set(g.users) == {"tmp-sync"}
    assert set(g.roles) == {"svc-lambda-exec"}
    assert {"AKIATMPSYNC000000001", "ASIAFEDERATED0000001", "ASIAROLESESSION00001"} <= set(g.keys)
    compute = [e for e in g.edges if e.kind == "compute"]
    assert [(e.target, e.region) for e in compute] == [("i-0abc", "ap-south-1")]
    assert all(e.event_id and e.source_ip == "203.0.113.7" for e in g.edges)
    # who else created what is known too (the reason a suspect is left alone)
    assert g.created_by_other("user", "intern") is not None and g.created_by_other("user", "tmp-sync") is None
    assert "never-created" not in g.users and "ci" not in g.users


def test_order_and_duplicates_do_not_matter() -> None:
    records = chain().records
    expected = attribute(records, seeds())
    shuffled = [*records, *records[:4]]
    random.Random(7).shuffle(shuffled)
    again = attribute(shuffled, seeds())
    assert set(again.users) == set(expected.users) and set(again.roles) == set(expected.roles)
    assert [e.event_id for e in again.edges] == [e.event_id for e in expected.edges]


def test_nothing_before_the_window_and_nothing_without_the_seed() -> None:
    records = chain().records
    later = Seeds(account_id="123456789012", root=True, window_start=datetime(2026, 11, 21, tzinfo=UTC))
    assert attribute(records, later).edges == []
    # a leaked user key, not root: root's own calls are not the attacker's
    user_only = Seeds(account_id="123456789012", keys=frozenset({"AKIATMPSYNC000000001"}), window_start=START)
    g = attribute(records, user_only)
    assert g.users == {} and set(g.roles) == {"svc-lambda-exec"}
    assert not any(e.actor.startswith("root") for e in g.edges)


def test_session_tokens_and_secrets_never_leave_the_graph() -> None:
    t = chain()
    t.records[2]["responseElements"]["credentials"].update(sessionToken="FwoGZXIvYXdzECANARY", secretAccessKey="wJalrCANARY")
    g = attribute(t.records, seeds())
    assert "CANARY" not in repr(g.events) and "CANARY" not in repr([e.to_json() for e in g.edges])
    assert "ASIAFEDERATED0000001" in repr(g.events)  # key ids stay: they are how the closure is proven
