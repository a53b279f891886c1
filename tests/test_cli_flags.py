"""The CLI's surface: one meaning per flag, JSON everywhere, shell completion, readable change
lines, AWS errors in one line, colour only where it belongs, truthful action labels. No AWS."""

from __future__ import annotations

import io
import json
from enum import Enum
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from typer.main import get_command
from typer.testing import CliRunner

from runner.awserrors import clean_message, describe_client_error, summarize_error
from runner.cli import app
from runner.ui import LogStream, UiOptions, console, describe_change, render_run

#: commands whose only output is already a JSON document
ALWAYS_JSON = {"playbook permissions"}
#: the two flags the contract gives one meaning each
FORMAT_FLAGS = {"--output", "-o"}
FILE_FLAGS = {"--file", "-f"}


# typer ships its own copy of click: recognise groups, options and choices by what they have
def walk(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    if hasattr(group, "commands"):
        for name, cmd in group.commands.items():
            found += walk(cmd, f"{prefix} {name}".strip())
    else:
        found.append((prefix, group))
    return found


COMMANDS = walk(get_command(app))


def choices(param: Any) -> list[str] | None:
    """The values an option takes when it is an enum (a format), else None."""
    annotation = param.type_descriptor.annotation
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [m.value for m in annotation]
    return None


def test_every_flag_means_one_thing_across_commands() -> None:
    meaning: dict[str, dict[str, str]] = {}
    for name, cmd in [("", get_command(app)), *COMMANDS]:
        for param in cmd.params:
            if param.param_type_name != "option":
                continue
            for flag in [*param.opts, *param.secondary_opts]:
                meaning.setdefault(flag, {})[name or "stanch"] = str(param.name)
            if set(param.opts) & FORMAT_FLAGS:
                assert choices(param), f"{name}: --output must be a format, not a file"
                assert "json" in (choices(param) or []), f"{name}: --output has no json"
                assert set(param.opts) >= FORMAT_FLAGS, f"{name}: --output and -o must be the same option"
            if set(param.opts) & FILE_FLAGS:
                assert set(param.opts) >= FILE_FLAGS and param.type_descriptor.annotation is Path, name
    conflicts = {flag: uses for flag, uses in meaning.items() if len(set(uses.values())) > 1}
    assert not conflicts, f"flags with more than one meaning: {json.dumps(conflicts, indent=1)}"
    assert meaning["-o"] and set(meaning["-o"].values()) == {"output"}
    assert set(meaning["-f"].values()) == {"file"}


def test_every_command_has_json_output() -> None:
    missing = [name for name, cmd in COMMANDS if name not in ALWAYS_JSON
               and not any("--output" in getattr(p, "opts", []) for p in cmd.params)]
    assert not missing, missing
    assert len(COMMANDS) >= 15


def test_report_and_detect_take_the_format_with_o_and_the_file_with_f() -> None:
    commands = dict(COMMANDS)
    report = {p.name: p for p in commands["report"].params}
    assert set(report["output"].opts) >= {"-o", "--output"} and set(choices(report["output"]) or []) == {
        "md", "html", "json"}
    assert set(report["file"].opts) == {"-f", "--file"}
    detect = {p.name: p for p in commands["detect"].params}
    assert set(detect["file"].opts) == {"-f", "--file"} and "-o" in detect["output"].opts


def test_shell_completion_is_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELL", "/bin/bash")  # typer asks the environment which shell it is completing for
    out = CliRunner().invoke(app, ["--show-completion", "bash"])
    assert out.exit_code == 0, out.output
    assert "complete" in out.output and "_STANCH_COMPLETE" in out.output
    assert "--install-completion" in CliRunner().invoke(app, ["--help"]).output


def test_bad_status_filter_and_bad_approve_usage_are_exit_2(tmp_path: Any) -> None:
    out = CliRunner().invoke(app, ["status", "--status", "contianed", "--state-dir", str(tmp_path)])
    assert out.exit_code == 2 and "contained" in out.output and "cancelled" in out.output
    out = CliRunner().invoke(app, ["approve", "r-x", "--state-dir", str(tmp_path)])
    assert out.exit_code == 2 and "--all-pending" in out.output
    out = CliRunner().invoke(app, ["approve", "r-x", "--step", "a", "--all-pending", "--state-dir", str(tmp_path)])
    assert out.exit_code == 2


# ------------------------------------------------------------------ change lines

@pytest.mark.parametrize(("change", "expected"), [
    ({"operation": "iam:UpdateAccessKey", "target": "arn:aws:iam::210987654321:user/svc-metrics",
      "params": {"UserName": "svc-metrics", "AccessKeyId": "AKIAQQQQ1111", "Status": "Inactive"},
      "previous": {"Status": "Active"}},
     ("access key AKIAQQQQ1111 of user svc-metrics", "Active", "Inactive")),
    ({"operation": "iam:DeactivateMFADevice", "target": "arn:aws:iam::210987654321:user/svc-metrics",
      "params": {"UserName": "svc-metrics", "SerialNumber": "arn:aws:iam::210987654321:mfa/phone"},
      "previous": {"Enabled": True}},
     ("MFA device arn:aws:iam::210987654321:mfa/phone of user svc-metrics", "enabled", "deactivated")),
    ({"operation": "iam:DetachGroupPolicy", "target": "arn:aws:iam::210987654321:group/obs",
      "params": {"GroupName": "obs", "PolicyArn": "arn:aws:iam::210987654321:policy/Everything"},
      "previous": {"Attached": "arn:aws:iam::210987654321:policy/Everything"}},
     ("arn:aws:iam::210987654321:policy/Everything on group obs", "attached", "detached")),
    ({"operation": "ecs:UpdateService", "target": "arn:aws:ecs:eu-west-3:210987654321:service/analytics/etl",
      "params": {"cluster": "analytics", "service": "etl", "desiredCount": 0}, "previous": {"desiredCount": 3}},
     ("service analytics/etl", "desiredCount 3", "0")),
    ({"operation": "ecs:StopTask", "target": "arn:aws:ecs:eu-west-3:210987654321:task/analytics/9f8e7d",
      "params": {"cluster": "analytics", "task": "arn:aws:ecs:eu-west-3:210987654321:task/analytics/9f8e7d",
                 "reason": "x"}, "previous": {"desiredStatus": "RUNNING"}},
     ("task 9f8e7d in analytics", "RUNNING", "STOPPED")),
])
def test_every_change_names_its_object_and_shows_was_and_will_be(change: dict[str, Any],
                                                                  expected: tuple[str, str, str]) -> None:
    assert describe_change(change) == expected


def test_two_keys_of_one_user_are_two_distinct_plan_lines() -> None:
    doc = run_doc(changes=[
        {"operation": "iam:UpdateAccessKey", "target": "arn:aws:iam::210987654321:user/svc-metrics",
         "params": {"UserName": "svc-metrics", "AccessKeyId": f"AKIAKEY{i}", "Status": "Inactive"},
         "previous": {"Status": "Active"}, "status": "planned"} for i in (1, 2)])
    text = render_text(doc)
    assert "access key AKIAKEY1 of user svc-metrics: Active -> Inactive" in text
    assert "access key AKIAKEY2 of user svc-metrics: Active -> Inactive" in text


# ------------------------------------------------------------------ AWS errors

HTML_PAGE = ("<!DOCTYPE html><html><head><title>404 Not Found</title></head><body><h1>Not Found</h1><p>The "
             "requested URL was not found on the server. If you entered the URL manually please check your "
             "spelling and try again. Either th" + "x" * 3000 + "</p></body></html>")


def test_aws_errors_are_one_line_service_operation_code_message() -> None:
    client = boto3.Session(region_name="ap-southeast-2", aws_access_key_id="x", aws_secret_access_key="y").client(
        "cloudtrail")
    with Stubber(client) as stub:
        stub.add_client_error("lookup_events", service_error_code="404", service_message=HTML_PAGE,
                              http_status_code=404)
        with pytest.raises(ClientError) as caught:
            client.lookup_events()
    text = describe_client_error(caught.value)
    assert text == "cloudtrail:LookupEvents 404: 404 Not Found"
    # the same page arriving as text (a gap recorded by an action, a stored step error)
    summary = summarize_error(str(caught.value))
    assert summary == "LookupEvents 404: 404 Not Found"
    assert "<" not in clean_message(HTML_PAGE.replace("<title>404 Not Found</title>", ""))
    assert len(clean_message("y" * 5000)) <= 240


def test_step_error_with_html_never_reaches_the_plan_text() -> None:
    doc = run_doc(changes=[])
    doc["steps"][0].update(status="failed", error=f"An error occurred (502) when calling the LookupEvents operation: "
                                                  f"{HTML_PAGE}")
    text = render_text(doc)
    assert "LookupEvents 502: 404 Not Found" in text
    assert "<html" not in text and "Either th" not in text


# ------------------------------------------------------------------ colour and verbosity

class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_doc(changes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"run_id": "r-1", "incident_id": "INC-X", "playbook": "p", "status": "awaiting_approval",
            "dry_run": False, "manual_actions": [], "metrics": {"paused_s": 0},
            "steps": [{"id": "cut-keys", "action": "iam.deactivate-access-keys", "status": "awaiting_approval",
                       "approval": "required", "changes": changes, "error": None}]}


def render_text(doc: dict[str, Any], stream: io.StringIO | None = None, color: bool = True) -> str:
    out = stream or io.StringIO()
    render_run(console(out, color=color), doc)
    return out.getvalue()


def test_colour_on_a_terminal_only_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    doc = run_doc(changes=[])
    assert "\x1b[" in render_text(doc, Tty())  # a terminal: awaiting_approval is styled
    assert "\x1b[" not in render_text(doc, io.StringIO())  # a pipe or a file
    assert "\x1b[" not in render_text(doc, Tty(), color=False)  # --no-color
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in render_text(doc, Tty())
    monkeypatch.delenv("NO_COLOR")
    out = CliRunner().invoke(app, ["--no-color", "playbook", "list", "--output", "json"])
    assert "\x1b" not in out.stdout and json.loads(out.stdout)["actions"]


def test_status_styles_differ_for_states_a_responder_must_tell_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    from runner.ui import styled

    def ansi(status: str) -> str:
        buf = Tty()
        console(buf).print(styled(status))
        return buf.getvalue().split(status)[0]

    assert len({ansi(s) for s in ("awaiting_approval", "manual", "failed", "noop")}) == 4


@pytest.mark.parametrize(("verbosity", "shown", "hidden"), [
    (0, ["FAILED"], ["applied", "  change", "plan"]),
    (1, ["FAILED", "applied", "plan"], ["  change", "verified"]),
    (2, ["FAILED", "applied", "plan", "  change", "verified"], []),
])
def test_quiet_and_verbose_control_the_run_log(verbosity: int, shown: list[str], hidden: list[str]) -> None:
    lines = {"FAILED": "12:00:01 FAILED     cut-keys   error=boom",
             "applied": "12:00:02 applied    cut-keys   changes=2",
             "plan": "12:00:03 plan       cut-keys   changes=2",
             "  change": "12:00:04   change   cut-keys   iam:UpdateAccessKey arn:aws:iam::1:user/x",
             "verified": "12:00:05 verified   cut-keys   outcome=verified"}
    buf = io.StringIO()
    with LogStream(UiOptions(color=False, verbosity=verbosity), buf) as log:
        for line in lines.values():
            log.write(line + "\n")
    text = buf.getvalue()
    for key in shown:
        assert lines[key] in text, key
    for key in hidden:
        assert lines[key] not in text, key


# ------------------------------------------------------------------ labels

def test_playbook_list_labels_tell_what_undoing_takes() -> None:
    out = CliRunner().invoke(app, ["playbook", "list", "-o", "json"])
    labels = {a["name"]: a["label"] for a in json.loads(out.stdout)["actions"]}
    assert labels["iam.deactivate-access-keys"] == "reversible"
    assert labels["ecs.scale-services-to-zero"] == "reversible"
    assert labels["iam.delete-login-profiles"] == "restorable by a person"
    assert labels["iam.deactivate-mfa-devices"] == "restorable by a person"
    for name in ("ecs.delete-services", "ecs.deregister-task-definitions", "ecs.delete-clusters",
                 "iam.delete-root-access-keys"):
        assert labels[name] == "destructive", name
    assert labels["scope.discover"] == "read-only"
    text = CliRunner().invoke(app, ["playbook", "list"]).stdout
    assert "iam.delete-login-profiles" in text and "[restorable by a person]" in text
