"""deploy/: the templates hold exactly the policies and event patterns generated from the playbooks'
declared permissions and the config's routing; the Lambda package is built from the project's files."""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from actions.registry import builtin_registry
from runner.cli import app
from runner.config import load_config
from runner.deployment import guardduty_pattern, securityhub_pattern
from runner.permissions import declared, policies, render_cloudformation
from runner.playbook import load_playbook

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PLAYBOOKS = ("cryptojacking-root-key", "cryptojacking-eradicate")


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags, read as their long form (`!Sub x` -> {"Fn::Sub": x})."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


CfnLoader.add_multi_constructor("!", _tag)


def template(name: str) -> dict[str, Any]:
    return yaml.load((DEPLOY / name).read_text(), Loader=CfnLoader)  # a SafeLoader subclass


def generated(audience: str, registry: Any = None) -> dict[str, Any]:
    reg = registry or builtin_registry()
    found = declared([load_playbook(n, reg) for n in PLAYBOOKS], reg, ["rollback.revert"])
    return render_cloudformation(policies(audience, found))  # type: ignore[arg-type]


def drift(audience: str, registry: Any = None) -> list[str]:
    """Generated policy resources missing from, or different in, the template that holds them."""
    resources = {**template("security-account.yaml")["Resources"], **template("member-role.yaml")["Resources"],
                 **template("organizations-role.yaml")["Resources"]}
    return [lid for lid, res in generated(audience, registry).items() if resources.get(lid) != res]


@pytest.mark.parametrize("audience", ["member", "security"])
def test_templates_hold_exactly_the_generated_policies(audience: str) -> None:
    hint = (f"regenerate: stanch playbook permissions {' '.join(PLAYBOOKS)} --rollback --for {audience} "
            "-o cloudformation")
    assert drift(audience) == [], hint


def test_changing_an_actions_declared_permission_is_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    from actions.ecs import ScaleServicesToZero, StopTasks

    monkeypatch.setattr(ScaleServicesToZero, "permissions", (*ScaleServicesToZero.permissions, "ecs:TagResource"))
    assert drift("member") == ["ResponderPolicy"]  # one added
    monkeypatch.undo()
    assert drift("member") == []
    monkeypatch.setattr(StopTasks, "permissions", ("ecs:ListTasks", "ecs:DescribeTasks"))  # ecs:StopTask dropped
    assert drift("member") == ["ResponderPolicy"]


def test_moving_a_permission_to_the_organizations_path_is_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    from actions.iam import ContainRootCredentials

    paths = {**ContainRootCredentials.permission_paths}
    paths.pop("organizations:AttachPolicy")  # as if the member role attached SCPs
    monkeypatch.setattr(ContainRootCredentials, "permission_paths", paths)
    assert set(drift("member")) == {"ResponderPolicy"}
    assert set(drift("security")) == {"OrganizationsPolicy"}


def test_member_policy_is_scoped_where_iam_allows() -> None:
    doc = generated("member")["ResponderPolicy"]["Properties"]["PolicyDocument"]
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["ResponderPassRole"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}}
    deny = by_sid["NeverChangeItself"]
    assert deny["Effect"] == "Deny" and "iam:PutRolePolicy" in deny["Action"]
    assert deny["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${ResponderRoleName}"}
    every = {a for s in doc["Statement"] if s["Effect"] == "Allow" for a in s["Action"]}
    assert not any(a.startswith("organizations:") or a == "sts:AssumeRoot" for a in every)
    assert "iam:DeleteSigningCertificate" not in every  # only under AssumeRoot's task policy
    assert "s3:PutObject" not in every  # evidence goes to the runner's own bucket


def test_organizations_path_is_conditioned() -> None:
    doc = generated("security")["OrganizationsPolicy"]["Properties"]["PolicyDocument"]
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["OrganizationsAssumeRoot"]["Condition"]["StringEquals"]["sts:TaskPolicyArn"] == {
        "Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/root-task/IAMDeleteRootUserCredentials"}
    assert set(by_sid["OrganizationsAttachPolicy"]["Action"]) == {
        "organizations:AttachPolicy", "organizations:CreatePolicy", "organizations:DetachPolicy"}


def test_rules_forward_exactly_the_routed_types_to_the_queue() -> None:
    res = template("security-account.yaml")["Resources"]
    cfg = load_config()
    assert res["GuardDutyFindingRule"]["Properties"]["EventPattern"] == guardduty_pattern(cfg)
    assert res["SecurityHubFindingRule"]["Properties"]["EventPattern"] == securityhub_pattern(cfg)
    for rule in ("GuardDutyFindingRule", "SecurityHubFindingRule"):
        assert res[rule]["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": ["IncidentQueue", "Arn"]}


def test_security_template_declares_what_the_other_components_expect() -> None:
    res = template("security-account.yaml")["Resources"]
    table = res["JournalTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]
    assert table["GlobalSecondaryIndexes"][0]["IndexName"] == "status-index"
    assert table["TimeToLiveSpecification"]["AttributeName"] == "expires_at"
    assert res["EvidenceBucket"]["Properties"]["ObjectLockEnabled"] is True
    assert "deadLetterTargetArn" in res["IncidentQueue"]["Properties"]["RedrivePolicy"]
    worker = res["WorkerFunction"]["Properties"]
    assert worker["Handler"] == "runner.lambda_handler.handler"
    assert worker["Environment"]["Variables"]["STANCH_JOURNAL"] == {"Fn::Sub": "dynamodb://${JournalTable}"}
    assert res["WorkerQueueSource"]["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert res["DailyDrill"]["Type"] == "AWS::Scheduler::Schedule"
    assert res["DrillInvokeConfig"]["Properties"]["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Ref": "AlertTopic"}
    # the overlay the Lambda functions get is valid config once the stack fills it in
    overlay = res["DrillFunction"]["Properties"]["Environment"]["Variables"]["STANCH_CONFIG_OVERLAY"]["Fn::Sub"]
    filled = overlay.replace("${RetentionDays}", "30").replace("${", "x").replace("}", "")
    import tomllib

    assert tomllib.loads(filled)["accounts"]["role_name"] == "xMemberRoleName"


def test_cli_prints_the_generated_resources_and_json_policies(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["playbook", "permissions", *PLAYBOOKS, "--rollback", "--for", "member",
                                   "--format", "cloudformation"])
    assert res.exit_code == 0 and yaml.safe_load(res.stdout) == generated("member")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[accounts]\nrole_name = "IR-Responder"\n[evidence]\ns3_bucket = "ev-bucket"\n')
    res = CliRunner().invoke(app, ["playbook", "permissions", PLAYBOOKS[0], "--for", "security", "--config", str(cfg)])
    doc = json.loads(res.stdout)
    stmts = {s["Sid"]: s for s in doc["RunnerPlaybookPolicy"]["Statement"]}
    assert stmts["AssumeMemberResponderRoles"]["Resource"] == "arn:aws:iam::*:role/IR-Responder"
    assert stmts["EvidenceWriteOnce"]["Resource"] == "arn:aws:s3:::ev-bucket/*"
    assert "RunnerOrganizationsAccessPolicy" not in doc  # no [root] role configured: nothing would use it
    bad = CliRunner().invoke(app, ["playbook", "permissions", PLAYBOOKS[0], "--format", "cloudformation"])
    assert bad.exit_code == 2 and "--for" in bad.output


def test_lambda_zip_is_deterministic_and_holds_no_caches(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("build_lambda", DEPLOY / "build_lambda.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    sys.modules["build_lambda"] = build
    spec.loader.exec_module(build)
    staged = tmp_path / "staged"
    for rel in ("runner/live_drill.py", "runner/__pycache__/x.cpython-312.pyc", "config/stanch.toml"):
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        (staged / rel).write_text(rel)
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    assert build.write_zip(staged, first) == ["config/stanch.toml", "runner/live_drill.py"]
    build.write_zip(staged, second)
    assert first.read_bytes() == second.read_bytes()
    assert zipfile.ZipFile(first).read("runner/live_drill.py") == b"runner/live_drill.py"
    # what the package must hold is what the project's packaging selects
    import tomllib

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for rel in build.REQUIRED:
        assert any(rel.split("/")[0] == pattern.rstrip("*") for pattern in find), rel


def test_member_role_reads_only_the_trail_bucket() -> None:
    doc = generated("member")["ResponderPolicy"]["Properties"]["PolicyDocument"]
    on_everything = {a for s in doc["Statement"] if s["Resource"] == "*" for a in s["Action"]}
    assert not {"s3:GetObject", "s3:ListBucket"} & on_everything
    trail = {s["Sid"]: s for s in doc["Statement"]}["ReadTrailFiles"]
    assert trail["Resource"] == [{"Fn::Sub": "arn:${AWS::Partition}:s3:::${TrailBucket}"},
                                 {"Fn::Sub": "arn:${AWS::Partition}:s3:::${TrailBucket}/*"}]
    assert "TrailBucket" in template("member-role.yaml")["Parameters"]
    from runner.permissions import member_policies, render_json

    reg = builtin_registry()
    found = declared([load_playbook(n, reg) for n in PLAYBOOKS], reg)
    base = load_config()

    def with_trail(uri: str) -> Any:
        return base.model_copy(update={"intake": base.intake.model_copy(update={"cloudtrail_s3_uri": uri})})

    cfg = with_trail("s3://org-trail-logs/AWSLogs/")
    stmts = {s["Sid"]: s for s in render_json(member_policies(found), cfg)["ResponderPolicy"]["Statement"]}
    assert stmts["ReadTrailFiles"]["Resource"] == ["arn:aws:s3:::org-trail-logs", "arn:aws:s3:::org-trail-logs/*"]
    cfg = with_trail("")  # no trail bucket configured: nothing reads one, nothing is granted
    stmts = {s["Sid"]: s for s in render_json(member_policies(found), cfg)["ResponderPolicy"]["Statement"]}
    assert "ReadTrailFiles" not in stmts


def test_alarms_can_notify_through_the_encrypted_topic_and_the_worker_can_hand_runs_on() -> None:
    res = template("security-account.yaml")["Resources"]
    assert res["AlertTopic"]["Properties"]["KmsMasterKeyId"] == {"Ref": "AlertKey"}  # not alias/aws/sns
    key = res["AlertKey"]["Properties"]
    assert key["EnableKeyRotation"] is True
    grants = {s["Sid"]: s for s in key["KeyPolicy"]["Statement"]}
    assert grants["AlarmsPublish"]["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert set(grants["AlarmsPublish"]["Action"]) == {"kms:GenerateDataKey*", "kms:Decrypt"}
    [publish] = res["AlertTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert publish["Principal"] == {"Service": "cloudwatch.amazonaws.com"} and publish["Action"] == "sns:Publish"
    assert publish["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    assert res["DeadLetterAlarm"]["Properties"]["AlarmActions"] == [{"Ref": "AlertTopic"}]
    role = {s["Sid"]: s for s in res["WorkerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]}
    assert "sqs:SendMessage" in role["Queue"]["Action"]
    assert role["NotifyEncrypted"]["Resource"] == {"Fn::GetAtt": ["AlertKey", "Arn"]}
    overlay = res["WorkerFunction"]["Properties"]["Environment"]["Variables"]["STANCH_CONFIG_OVERLAY"]["Fn::Sub"]
    filled = overlay.replace("${RetentionDays}", "30").replace(
        "${IncidentQueue}", "https://sqs.eu-west-1.amazonaws.com/111122223333/q").replace("${", "x").replace("}", "")
    import tomllib

    assert tomllib.loads(filled)["worker"]["queue_url"].endswith("/111122223333/q")
