"""An attacker that creates many identities cannot switch automated containment off: over the
per-step cap, the capped steps wait for their own approval while keys and miners are contained."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.drill import attack_trail, seed
from tests.conftest import write_json
from tests.test_attribution_e2e import account

pytestmark = pytest.mark.usefixtures("two_regions")  # the cap, not the region search, is under test

NAMES = {"user": "sync-000", "group": "ops-sync", "cluster": "jobs", "service": "indexer",
         "image": "docker.io/someone/xmrig-proxy:6"}


def test_150_attacker_users_keys_and_miners_contained_capped_steps_wait(tmp_path: Path) -> None:
    with account() as session:
        iam = session.client("iam")
        seeded = seed(session, NAMES)
        trail = attack_trail(seeded)
        root = trail.root()
        for i in range(1, 150):
            name = f"sync-{i:03d}"
            iam.create_user(UserName=name)
            key = iam.create_access_key(UserName=name)["AccessKey"]["AccessKeyId"]
            trail.add(root, "iam", "CreateUser", {"userName": name})
            trail.add(root, "iam", "CreateAccessKey", {"userName": name}, {"accessKey": {"accessKeyId": key}})
        incident = {**seeded["incident"], "principals": [{"type": "root", "access_key_id": "AKIAEXAMPLEROOTKEY01"}]}
        result = CliRunner().invoke(app, [
            "run", str(write_json(tmp_path / "i.json", incident)), "--approve-all", "--by", "t", "--output", "json",
            "--state-dir", str(tmp_path / "s"), "--cloudtrail", str(write_json(tmp_path / "t.json", trail.document()))])
        keys = [k["Status"] for i in range(150)
                for k in iam.list_access_keys(UserName=f"sync-{i:03d}")["AccessKeyMetadata"]]
        service = session.client("ecs").describe_services(cluster="jobs", services=["indexer"])["services"][0]
    doc = json.loads(result.stdout)
    assert result.exit_code == 3 and doc["status"] == "awaiting_approval"
    steps = {s["id"]: s for s in doc["steps"]}
    assert steps["deactivate-keys"]["status"] == "applied" and len(keys) == 150 and set(keys) == {"Inactive"}
    assert service["desiredCount"] == 0 and steps["scale-miner-services"]["status"] == "applied"
    waiting = sorted(s for s, v in steps.items() if v["status"] == "awaiting_approval")
    assert "quarantine-principals" in waiting and "contain-suspects" not in waiting
    assert any(re.search(r"1[5-9][0-9] changes exceed the cap of 50", n) for n in steps["quarantine-principals"]["notes"])
