"""The test proxy's CloudTrail LookupEvents (moto has none): stanch's LookupEvents source reads the
attacker's records through it, filtered by key, region and time, across pages, as CloudTrail would."""

from __future__ import annotations

from typing import Any

import boto3

from tests.faultproxy import FaultProxy


def record(key: str, user: str, name: str, region: str, when: str) -> dict[str, Any]:
    return {"eventVersion": "1.08", "eventID": f"{key}-{name}-{when}", "eventTime": when, "eventName": name,
            "eventSource": "iam.amazonaws.com", "awsRegion": region, "sourceIPAddress": "203.0.113.9",
            "userIdentity": {"type": "IAMUser", "accessKeyId": key, "userName": user,
                             "arn": f"arn:aws:iam::123456789012:user/{user}"}}


def client(url: str, region: str) -> Any:
    return boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                         region_name=region).client("cloudtrail", endpoint_url=url)


def test_lookup_events_filters_by_key_region_and_time_across_pages(moto_server: Any) -> None:
    records = [record("AKIAATTACKER", "intruder", f"Op{i}", "us-east-1", f"2026-11-01T10:{i:02d}:00Z")
               for i in range(7)]
    records += [record("AKIAATTACKER", "intruder", "RunInstances", "eu-west-1", "2026-11-01T10:30:00Z"),
                record("AKIADECOY000", "alice", "CreateUser", "us-east-1", "2026-11-01T10:31:00Z")]
    with FaultProxy(moto_server.url, lookup_events=records) as proxy:
        ct = client(proxy.url, "us-east-1")
        pages = list(ct.get_paginator("lookup_events").paginate(
            LookupAttributes=[{"AttributeKey": "AccessKeyId", "AttributeValue": "AKIAATTACKER"}],
            StartTime="2026-11-01T10:01:00Z", PaginationConfig={"PageSize": 3}))
        names = [e["EventName"] for p in pages for e in p["Events"]]
        assert len(pages) == 2
        assert names == ["Op6", "Op5", "Op4", "Op3", "Op2", "Op1"]  # newest first, Op0 before the start
        eu = client(proxy.url, "eu-west-1")
        found = eu.lookup_events(LookupAttributes=[{"AttributeKey": "Username", "AttributeValue": "intruder"}])
        assert [e["EventName"] for e in found["Events"]] == ["RunInstances"]
        assert '"sourceIPAddress": "203.0.113.9"' in found["Events"][0]["CloudTrailEvent"]
