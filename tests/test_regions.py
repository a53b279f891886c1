"""Every enabled region is searched; what could not be searched is a gap that keeps the run from `contained`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from runner.aws import AwsSession
from runner.config import Config
from runner.drill import TrailWriter
from runner.engine import RunOptions
from runner.incident import validate_incident
from runner.regions import Coverage, enabled_regions, search_regions, summarise_error
from runner.service import AwsOptions, start_run
from tests.awshelp import ACCOUNT, context, incident
from tests.conftest import write_json

SECOND = "eu-west-2"


def _service_in(session: boto3.Session, region: str, cluster: str, name: str, image: str, count: int = 2) -> str:
    from runner.drill import _network, _service

    return _service(session.client("ecs", region_name=region), _network(session.client("ec2", region_name=region)),
                    cluster, name, image, count)


def test_enabled_regions_fall_back_to_describe_regions_and_skip_opted_out(aws: boto3.Session) -> None:
    # moto has no account:ListRegions: the fallback lists only regions the account can use
    regions, source, gaps = enabled_regions(AwsSession(region="us-east-1", boto_session=aws))
    assert source == "ec2:DescribeRegions"
    assert {"us-east-1", "eu-west-2", "ap-southeast-2"} <= set(regions)
    assert "me-central-1" not in regions  # opt-in region, not opted in
    assert [g.service for g in gaps] == ["account"] and not gaps[0].blocking


def test_enabled_regions_prefer_account_list_regions(aws: boto3.Session) -> None:
    session = AwsSession(region="us-east-1", boto_session=aws)
    account = session.client("account")
    with Stubber(account) as stub:
        stub.add_response("list_regions", {"Regions": [
            {"RegionName": "us-east-1", "RegionOptStatus": "ENABLED_BY_DEFAULT"},
            {"RegionName": "me-central-1", "RegionOptStatus": "ENABLED"},
        ]}, {"RegionOptStatusContains": ["ENABLED", "ENABLED_BY_DEFAULT"]})
        regions, source, gaps = enabled_regions(session)
    assert (regions, source, gaps) == (["us-east-1", "me-central-1"], "account:ListRegions", [])


def test_config_restricts_regions_and_home_region_always_comes_first(aws: boto3.Session) -> None:
    cfg = Config.model_validate({"aws": {"regions": ["ca-central-1", "eu-north-1"]}})
    ctx = context(aws, incident(region="sa-east-1"), config=cfg)
    assert search_regions(ctx) == ["sa-east-1", "ca-central-1", "eu-north-1"]
    assert ctx.coverage.to_json()["region_source"] == "config [aws] regions"


def test_gap_errors_are_one_line_code_and_message_never_html() -> None:
    html = ("<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable</h1>"
            "<p>The server is temporarily unable to service your request.</p></body></html>")
    exc = ClientError({"Error": {"Code": "503", "Message": html}}, "ListClusters")
    text = summarise_error(exc)
    assert text.startswith("503: ") and "<" not in text and "Service Unavailable" in text
    assert len(summarise_error(ClientError({"Error": {"Code": "X", "Message": "m" * 900}}, "Op"))) < 200


def _seed_two_regions(session: boto3.Session) -> dict[str, Any]:
    _service_in(session, "us-east-1", "storefront", "web", "public.ecr.aws/nginx/nginx:1.27")
    _service_in(session, SECOND, "storefront", "web", "public.ecr.aws/nginx/nginx:1.27")  # decoy, second region
    _service_in(session, SECOND, "ledger-sync", "reconciler", "ghcr.io/cryptoloot/xmrig:6.21", 4)  # the miner
    return {"id": "INC-REGIONS-7", "kind": "cryptojacking", "account_id": ACCOUNT, "region": "us-east-1",
            "detected_at": "2030-01-01T00:00:00Z", "window_start": "2029-12-31T00:00:00Z",
            "indicators": {"images": ["xmrig"]}}


def _trail() -> tuple[list[dict[str, Any]], list[str]]:
    """A CloudTrail source for the run (here it attributes nothing): without one, the run could not say
    contained."""
    t = TrailWriter(when="2029-12-31T06:00:00Z")
    t.add(t.user("alice", "AKIAALICEKEY00000001"), "s3", "ListBuckets")
    return t.records, ["trail file (test)"]


def _run(session: AwsSession, doc: dict[str, Any], tmp_path: Path) -> Any:
    inc = validate_incident("test", doc)
    return start_run(inc, playbook_ref=None, config_path=None, options=RunOptions(approve_all=True, by="test"),
                     aws_opts=AwsOptions(region="us-east-1"), state=tmp_path / "state", session=session,
                     stream=io.StringIO(), trail=_trail())


def test_a_miner_in_a_second_region_is_found_and_scaled_to_zero(aws: boto3.Session, tmp_path: Path) -> None:
    doc = _seed_two_regions(aws)
    outcome = _run(AwsSession(region="us-east-1", boto_session=aws), doc, tmp_path)
    result = outcome.result
    assert outcome.exit_code == 0 and result["status"] == "contained", result.get("error")
    ecs2 = aws.client("ecs", region_name=SECOND)
    miner = ecs2.describe_services(cluster="ledger-sync", services=["reconciler"])["services"][0]
    decoy = ecs2.describe_services(cluster="storefront", services=["web"])["services"][0]
    home = aws.client("ecs").describe_services(cluster="storefront", services=["web"])["services"][0]
    assert miner["desiredCount"] == 0
    assert decoy["desiredCount"] == 2 and home["desiredCount"] == 2
    coverage = result["coverage"]
    assert coverage["regions"][0] == "us-east-1" and SECOND in coverage["regions"] and len(coverage["regions"]) > 10
    assert all("ecs" in coverage["services"][r] for r in coverage["regions"])
    assert not [g for g in coverage["gaps"] if g["blocking"]]


@pytest.fixture
def failing_region(aws: boto3.Session) -> AwsSession:
    """A session whose ECS endpoint in ap-northeast-3 answers with a proxy's HTML error page."""
    session = AwsSession(region="us-east-1", boto_session=aws)

    def fail(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "503", "Message": "<html><body><h1>Service Unavailable</h1></body></html>"},
                           "ResponseMetadata": {"HTTPStatusCode": 503}}, "ListClusters")

    session.client("ecs", "ap-northeast-3").meta.events.register("before-call.ecs.ListClusters", fail)
    return session


def test_a_region_that_cannot_be_searched_ends_partially_contained_naming_it(
        aws: boto3.Session, failing_region: AwsSession, tmp_path: Path) -> None:
    doc = _seed_two_regions(aws)
    outcome = _run(failing_region, doc, tmp_path)
    result = outcome.result
    assert outcome.exit_code == 1 and result["status"] == "partially_contained"
    assert "ap-northeast-3" in result["error"] and "ecs" in result["error"]
    [gap] = [g for g in result["coverage"]["gaps"] if g["blocking"]]
    assert gap == {"region": "ap-northeast-3", "service": "ecs", "error": "503: Service Unavailable", "blocking": True}
    # everything that could be searched was still contained
    miner = aws.client("ecs", region_name=SECOND).describe_services(
        cluster="ledger-sync", services=["reconciler"])["services"][0]
    assert miner["desiredCount"] == 0


def test_cli_run_json_has_coverage(aws: boto3.Session, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from runner.cli import app

    doc = _seed_two_regions(aws)
    path = write_json(tmp_path / "incident.json", doc)
    out = CliRunner().invoke(app, ["run", str(path), "--dry-run", "--output", "json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert SECOND in result["coverage"]["regions"]
    assert any(s["region"] == SECOND and s["name"] == "reconciler" for s in result["scope"]["ecs_services"])
    assert not any(s["name"] == "web" for s in result["scope"]["ecs_services"])


def test_coverage_survives_a_resume() -> None:
    first = Coverage()
    first.settle_regions(["us-east-1", "eu-west-2"], "ec2:DescribeRegions", [])
    first.searched("eu-west-2", "ecs")
    first.gap("ap-south-1", "ecs", "AccessDenied: no")
    again = Coverage()
    again.merge_json(first.to_json())
    assert again.to_json() == first.to_json() and again.blocking_gaps()
