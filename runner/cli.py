"""The `stanch` command line (typer). Output contract: ../shared/DESIGN.md."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable
from enum import StrEnum
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ProfileNotFound,
    ReadTimeoutError,
)

from actions.base import Plan
from runner import __version__
from runner.engine import RunOptions, default_approver
from runner.errors import EXIT_BAD_INPUT, EXIT_NOT_CONTAINED, EXIT_REFUSED, StanchError
from runner.playbook import Step

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="stanch", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    help="Contain AWS incidents with reviewed, journaled, reversible playbooks.\n\n"
         "Typical use: `stanch run incident.json --dry-run` to see the plan and why each resource is in "
         "scope, then `stanch run incident.json` to contain (gated steps ask for approval).\n\n"
         "Exit codes: 0 contained or dry-run planned; 1 partially contained or failed; 2 bad input (nothing "
         "changed); 3 paused awaiting approval; 4 refused by a guardrail or another run holds the incident; "
         "5 needs a manual action.",
)
playbook_app = typer.Typer(no_args_is_help=True, help="List, validate and draw playbooks.")
app.add_typer(playbook_app, name="playbook")


class Output(StrEnum):
    text = "text"
    json = "json"


StateDir = Annotated[str | None, typer.Option("--state-dir", help="Journal, audit log and evidence; "
                                              "default $STANCH_STATE_DIR, else ./.stanch")]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="text for people; json prints exactly "
                                           "the run document on stdout")]
ApproveOpt = Annotated[list[str] | None, typer.Option("--approve", help="Pre-approve this gated step "
                                                      "(repeatable)", metavar="STEP")]
ApproveAllOpt = Annotated[bool, typer.Option("--approve-all", help="Pre-approve every gated step")]
ByOpt = Annotated[str | None, typer.Option("--by", help="Who approves (recorded); default: your login")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded with the approval)")]


def err(text: str) -> None:
    typer.echo(text, err=True)


#: AWS error codes that mean "these credentials are not usable here": bad input, nothing was changed
CREDENTIAL_ERRORS = ("InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
                     "ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId", "AuthFailure",
                     "IncompleteSignature", "MissingAuthenticationToken", "RequestExpired")
_RESUME_HINT = ("If a run had started, `stanch status` shows it and `stanch resume RUN_ID` continues it "
                "without repeating a change.")


def aws_error_message(exc: ClientError) -> tuple[str, int]:
    """A responder's message and the exit code for an AWS error that reached the CLI."""
    error = exc.response.get("Error", {})
    code, text = str(error.get("Code", "")), str(error.get("Message", ""))
    op = exc.operation_name
    if code in CREDENTIAL_ERRORS:
        return (f"AWS rejected the credentials ({code} on {op}: {text}); check --profile / AWS_PROFILE and "
                "the session's expiry. Nothing was changed.", EXIT_BAD_INPUT)
    if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
        return (f"AWS denied {op} ({code}: {text}); `stanch playbook permissions NAME` prints the policy the "
                f"runner needs. {_RESUME_HINT}", EXIT_REFUSED)
    return (f"AWS error on {op} after retries ({code}: {text}); try again when the API recovers. {_RESUME_HINT}",
            EXIT_NOT_CONTAINED)


def handle_errors(fn: F) -> F:
    """Bad input, refusals and AWS failures end with their exit code and a message, never a traceback."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StanchError as exc:
            err(f"stanch: {exc.message}")
            raise typer.Exit(exc.exit_code) from None
        except NoCredentialsError:
            err("stanch: no AWS credentials found; set AWS_PROFILE or --profile, or the AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY variables. Nothing was changed.")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except ProfileNotFound as exc:
            err(f"stanch: {exc}; check --profile / AWS_PROFILE against your AWS config. Nothing was changed.")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except NoRegionError:
            err("stanch: no AWS region; pass --region or set AWS_DEFAULT_REGION. Nothing was changed.")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except ClientError as exc:
            text, code = aws_error_message(exc)
            err(f"stanch: {text}")
            raise typer.Exit(code) from None
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
            err(f"stanch: AWS unreachable or not answering ({type(exc).__name__}: {exc}); check the "
                f"network, --region and --endpoint-url. {_RESUME_HINT}")
            raise typer.Exit(EXIT_NOT_CONTAINED) from None
        except BotoCoreError as exc:
            err(f"stanch: AWS call failed ({type(exc).__name__}: {exc}). {_RESUME_HINT}")
            raise typer.Exit(EXIT_NOT_CONTAINED) from None
        except sqlite3.Error as exc:
            err(f"stanch: the journal in the state directory failed ({exc}); check --state-dir (disk space, "
                "permissions, another process holding it). " + _RESUME_HINT)
            raise typer.Exit(EXIT_NOT_CONTAINED) from None
        except OSError as exc:
            err(f"stanch: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ") + ". " + _RESUME_HINT)
            raise typer.Exit(EXIT_NOT_CONTAINED) from None
        except KeyboardInterrupt:
            err("stanch: interrupted. The journal holds every change made so far: `stanch status` shows the run, "
                "`stanch resume RUN_ID` continues it without repeating a change.")
            raise typer.Exit(130) from None
    return wrapper  # type: ignore[return-value]


def terminal_prompt(step: Step, plan: Plan) -> bool:
    err(f"\nStep '{step.id}' ({step.action}) needs approval. It will make {len(plan.changes)} change(s):")
    for c in plan.changes:
        prev = f"  (was {json.dumps(c.previous)})" if c.previous else ""
        err(f"  - {c.operation} {c.target} {json.dumps(c.params)}{prev}")
        if c.reason:
            err(f"      why: {c.reason}")
    return typer.confirm("Apply these changes?", default=False, err=True)


def _prompt() -> Callable[[Step, Plan], bool] | None:
    """Ask at the terminal when there is one; otherwise gated steps pause the run."""
    return terminal_prompt if sys.stdin.isatty() and sys.stderr.isatty() else None


def _finish(outcome: Any, output: Output) -> None:
    emit(outcome.result, output)
    raise typer.Exit(outcome.exit_code)


def emit(result: dict[str, Any], output: Output) -> None:
    if output is Output.json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    err("")
    status = result["status"]
    typer.echo(f"run {result['run_id']}  incident {result['incident_id']}  playbook {result['playbook']}"
               f"{'  (dry run)' if result.get('dry_run') else ''}")
    scope = result.get("scope")
    if scope:
        typer.echo("\nIn scope:")
        for kind in ("users", "groups", "roles", "access_keys", "ecs_services", "ecs_tasks"):
            for item in scope.get(kind, []):
                label = item.get("label", item.get("name", ""))
                typer.echo(f"  {kind[:-1]:<12} {label}  -- {item.get('reason', '')}")
        root = scope.get("root") or {}
        if root.get("access_keys_present"):
            typer.echo(f"  root key     {root.get('access_key_id') or '(id unknown)'}  -- {root.get('reason', '')}")
        if scope.get("excluded"):
            typer.echo("Left alone:")
            for item in scope["excluded"]:
                typer.echo(f"  {item['kind']:<12} {item['name']}  -- {item['reason']}")
    typer.echo("\nSteps:")
    for step in result["steps"]:
        gate = "  (approval required)" if step.get("approval") == "required" and step["status"] in (
            "planned", "awaiting_approval") else ""
        typer.echo(f"  {step['status']:<18} {step['id']:<28} {step['action']}{gate}")
        for note in step.get("notes", []):
            typer.echo(f"      note: {note}")
        for c in step["changes"]:
            typer.echo(f"      {c['status']:<13} {c['operation']} {c['target']}")
        if step.get("error"):
            typer.echo(f"      error: {step['error']}")
        for v in step.get("verification", []):
            typer.echo(f"      verify: {v}")
    for m in result.get("manual_actions", []):
        typer.echo(f"\nMANUAL ACTION ({m['step']}):\n{m['instructions']}")
    metrics = result.get("metrics") or {}
    if metrics:
        def secs(key: str) -> str:
            return "-" if metrics.get(key) is None else f"{metrics[key]} s"

        typer.echo(f"\nAPI calls: {metrics.get('api_calls_total')}  time to first change: "
                   f"{secs('time_to_first_change_s')}  time to contained: {secs('time_to_contained_s')}")
    if result.get("error"):
        typer.echo(f"\nrefused: {result['error']}")
    typer.echo(f"\nstatus: {status}")
    if status == "awaiting_approval":
        waiting = [s["id"] for s in result["steps"] if s["status"] == "awaiting_approval"]
        for s in waiting:
            typer.echo(f"  approve: stanch approve {result['run_id']} --step {s} --by NAME --reason TEXT")
        typer.echo(f"  then:    stanch resume {result['run_id']}")


@app.command()
@handle_errors
def run(
    incident: Annotated[str, typer.Argument(help="Incident file (native JSON), or - for stdin")],
    playbook: Annotated[str | None, typer.Option("--playbook", "-p", help="Playbook name or path; default: "
                                                  "routed from the incident kind by the config")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only: the AWS session refuses every "
                                          "write before it is sent")] = False,
    approve: ApproveOpt = None,
    approve_all: ApproveAllOpt = False,
    by: ByOpt = None,
    reason: ReasonOpt = "",
    max_changes: Annotated[int | None, typer.Option("--max-changes", min=1, help="Raise the per-step cap "
                                                    "on changes (guardrail) for this run")] = None,
    state_dir: StateDir = None,
    config: Annotated[str | None, typer.Option("--config", help="Config TOML; default $STANCH_CONFIG, else "
                                               "the packaged config/stanch.toml")] = None,
    region: Annotated[str | None, typer.Option("--region", help="Default: the incident's region")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="AWS profile")] = None,
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="AWS-compatible endpoint "
                                                     "(e.g. a moto server); also AWS_ENDPOINT_URL")] = None,
    cloudtrail: Annotated[list[str] | None, typer.Option("--cloudtrail", help="CloudTrail file(s) (Records[], "
                                                         "plain or .gz): what they attribute to the attacker "
                                                         "joins the incident's seeds", metavar="FILE")] = None,
    allow_sample: Annotated[bool, typer.Option("--allow-sample", help="Act on GuardDuty/Security Hub sample "
                                               "findings (refused by default)")] = False,
    allow_archived: Annotated[bool, typer.Option("--allow-archived", help="Act on archived or suppressed "
                                                 "findings (refused by default)")] = False,
    output: OutputOpt = Output.text,
) -> None:
    """Contain an incident: discover scope, plan, gate, apply, verify. Every step is journaled.

    INCIDENT may be a native incident, a GuardDuty finding (EventBridge event, bare, or boto3
    get_findings output), a Security Hub finding (ASFF, or a 'Security Hub Findings' event), or
    CloudTrail records; the format is detected."""
    from runner.config import load_config
    from runner.intake import IntakeOptions, load_any, merge_cloudtrail
    from runner.service import AwsOptions, start_run
    from runner.service import state_dir as resolve_state

    cfg = load_config(config)
    inc = load_any(incident, cfg, IntakeOptions(allow_sample=allow_sample, allow_archived=allow_archived))
    if cloudtrail:
        inc = merge_cloudtrail(inc, cloudtrail, cfg)
    options = RunOptions(dry_run=dry_run, approve=tuple(approve or ()), approve_all=approve_all,
                         by=by or default_approver(), reason=reason, max_changes=max_changes)
    outcome = start_run(
        inc, playbook_ref=playbook, config_path=config, options=options,
        aws_opts=AwsOptions(region, profile, endpoint_url), state=resolve_state(state_dir),
        prompt=_prompt(),
    )
    _finish(outcome, output)


@app.command()
@handle_errors
def detect(
    files: Annotated[list[str], typer.Argument(help="CloudTrail files: Records[] (plain or .gz), EventBridge "
                                                    "'AWS API Call via CloudTrail' events, or single records")],
    config: Annotated[str | None, typer.Option("--config", help="Config TOML (intake.window_hours)")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write the incident here instead of "
                                                                      "stdout")] = None,
) -> None:
    """Find the root-key attack chain in CloudTrail and print it as a native incident.

    Root credential use, then identities created or escalated by the attacker's identities, then ECS
    clusters, task definitions and services they created. Other principals' activity is left out.
    Exit 0 with the incident, 1 when no chain is found, 2 for unreadable input."""
    from runner.config import load_config
    from runner.detect import detect_chain
    from runner.intake import read_records

    records = read_records(files)
    chain = detect_chain(records, load_config(config))
    if chain.incident is None:
        err(f"stanch detect: no root credential use in {chain.records} records: no attack chain found")
        raise typer.Exit(EXIT_NOT_CONTAINED)
    for e in chain.evidence:
        err(f"  {e['time']}  {e['actor']:<28} {e['event']:<28} {e.get('detail', '')}")
    err(f"stanch detect: {len(chain.evidence)} of {chain.records} records attributed to the attacker; "
        f"{chain.ignored} left out (other principals, failures, outside the window)")
    text = json.dumps(chain.incident.to_json(), indent=2)
    if output:
        Path(output).write_text(text + "\n", encoding="utf-8")
        err(f"incident written to {output}; contain it with: stanch run {output}")
    else:
        typer.echo(text)


@app.command()
@handle_errors
def approve(
    run_id: Annotated[str, typer.Argument(help="The paused run")],
    step: Annotated[str, typer.Option("--step", help="The step awaiting approval")],
    by: ByOpt = None,
    reason: ReasonOpt = "approved with stanch approve",
    state_dir: StateDir = None,
) -> None:
    """Approve a paused run's step (the plan shown by `stanch status RUN_ID`). Then `stanch resume`."""
    from runner.service import approve_step
    from runner.service import state_dir as resolve_state

    rec = approve_step(run_id, step, by=by or default_approver(), reason=reason, state=resolve_state(state_dir))
    typer.echo(f"approved {rec.step_id} of {rec.run_id} by {rec.by} (plan {rec.plan_digest}); "
               f"continue with: stanch resume {run_id}")


@app.command()
@handle_errors
def resume(
    run_id: Annotated[str, typer.Argument(help="A paused or interrupted run")],
    approve: ApproveOpt = None,
    approve_all: ApproveAllOpt = False,
    by: ByOpt = None,
    reason: ReasonOpt = "",
    state_dir: StateDir = None,
    output: OutputOpt = Output.text,
) -> None:
    """Continue a paused or interrupted run: re-plan what is left and apply only that."""
    from runner.service import resume_run
    from runner.service import state_dir as resolve_state

    options = RunOptions(approve=tuple(approve or ()), approve_all=approve_all, by=by or default_approver(),
                         reason=reason)
    outcome = resume_run(run_id, options=options, state=resolve_state(state_dir),
                         prompt=_prompt())
    _finish(outcome, output)


@app.command()
@handle_errors
def rollback(
    run_id: Annotated[str, typer.Argument(help="A finished run whose changes to undo")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be undone; change nothing")] = False,
    approve_all: ApproveAllOpt = False,
    by: ByOpt = None,
    reason: ReasonOpt = "",
    state_dir: StateDir = None,
    output: OutputOpt = Output.text,
) -> None:
    """Undo a run's containment from the values its changes recorded (keys reactivated, quarantine
    policies removed, group memberships and policies restored, services scaled back). What no API can
    undo (a deleted console password, a deactivated MFA device) is listed as a manual action. The
    revert step is approval-gated like any other; it runs as a new, journaled run."""
    from runner.service import rollback_run
    from runner.service import state_dir as resolve_state

    options = RunOptions(dry_run=dry_run, approve_all=approve_all, by=by or default_approver(), reason=reason)
    outcome = rollback_run(run_id, options=options, state=resolve_state(state_dir),
                           prompt=_prompt())
    _finish(outcome, output)


@app.command()
@handle_errors
def cancel(
    run_id: Annotated[str, typer.Argument(help="An unfinished run")],
    by: ByOpt = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded)")] = "cancelled by a responder",
    state_dir: StateDir = None,
) -> None:
    """Give up on an unfinished run: it ends `failed` and releases the incident for a new run.
    Changes already applied stay applied (each recorded with the value it replaced)."""
    from runner.service import cancel_run
    from runner.service import state_dir as resolve_state

    rec = cancel_run(run_id, by=by or default_approver(), reason=reason, state=resolve_state(state_dir))
    typer.echo(f"cancelled {rec.run_id} (incident {rec.incident_id} is free for a new run)")


@app.command()
@handle_errors
def status(
    run_id: Annotated[str | None, typer.Argument(help="A run id; omit to list recent runs")] = None,
    state_dir: StateDir = None,
    output: OutputOpt = Output.text,
) -> None:
    """Show one run (steps, changes, approvals) or list the recent runs."""
    from runner.service import run_status
    from runner.service import state_dir as resolve_state

    doc = run_status(run_id, resolve_state(state_dir))
    if output is Output.json:
        typer.echo(json.dumps(doc, indent=2, default=str))
    elif isinstance(doc, list):
        if not doc:
            typer.echo("no runs in this state directory")
        for r in doc:
            typer.echo(f"{r['run_id']}  {r['status']:<20} {r['incident_id']:<20} {r['playbook']}"
                       f"{'  (dry run)' if r['dry_run'] else ''}  {r['updated_at']}")
    else:
        emit(doc, Output.text)
        for a in doc.get("approvals", []):
            typer.echo(f"  approval: {a['step']} by {a['by']} at {a['at']} ({a['reason']})")


@app.command()
@handle_errors
def drill(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan the drill only; nothing changes")] = False,
    state_dir: StateDir = None,
    output: OutputOpt = Output.text,
) -> None:
    """End-to-end containment against a simulated account (in-process moto), then a scorecard."""
    from runner.drill import run_drill, scorecard_text
    from runner.service import state_dir as resolve_state

    card = run_drill(dry_run=dry_run, state=resolve_state(state_dir))
    if output is Output.json:
        typer.echo(json.dumps(card, indent=2, default=str))
    else:
        typer.echo(scorecard_text(card))
    raise typer.Exit(0 if card["passed"] else EXIT_NOT_CONTAINED)


class ReportFormat(StrEnum):
    md = "md"
    html = "html"
    json = "json"


@app.command()
@handle_errors
def report(
    run_id: Annotated[str, typer.Argument(help="The run to report on")],
    fmt: Annotated[ReportFormat, typer.Option("--format", "-f", help="md, html (one self-contained page) or json")]
    = ReportFormat.md,
    out: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout")] = None,
    state_dir: StateDir = None,
) -> None:
    """The customer report: executive summary, timeline, risk, actions taken (with approver), what was left
    alone and why, manual actions, and hardening recommendations with facts read from the account."""
    from runner.report import build_report, render_html, render_markdown
    from runner.service import state_dir as resolve_state

    doc = build_report(run_id, resolve_state(state_dir))
    if fmt is ReportFormat.md:
        text = render_markdown(doc)
    elif fmt is ReportFormat.html:
        text = render_html(doc)
    else:
        text = json.dumps(doc, indent=2, default=str) + "\n"
    if out:
        out.write_text(text, encoding="utf-8")
        err(f"report written to {out}")
    else:
        typer.echo(text, nl=False)


evidence_app = typer.Typer(no_args_is_help=True, help="Check evidence bundles.")
app.add_typer(evidence_app, name="evidence")
audit_app = typer.Typer(no_args_is_help=True, help="Check the audit log.")
app.add_typer(audit_app, name="audit")


@evidence_app.command("verify")
@handle_errors
def evidence_verify(
    target: Annotated[str, typer.Argument(help="A run id, or a bundle directory (see the run's evidence.path)")],
    state_dir: StateDir = None,
) -> None:
    """Check every file of a bundle against its manifest, and the manifest against the digest the journal
    recorded for its run. Symlinks are never followed. Exit 0 intact, 1 altered/missing/extra, 2 no bundle
    or a malformed manifest."""
    from actions.evidence import MalformedManifestError, verify_bundle
    from runner.service import evidence_target
    from runner.service import state_dir as resolve_state

    bundle, run_id, expected = evidence_target(target, resolve_state(state_dir))
    try:
        found = verify_bundle(bundle, expected)
    except MalformedManifestError as exc:
        err(f"stanch: {bundle}: {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    bad = False
    for kind in ("manifest", "altered", "missing", "extra", "symlink"):
        for rel in found[kind]:
            why = {"manifest": f"  (not the manifest run {run_id} recorded: rewritten)",
                   "symlink": "  (not followed)"}.get(kind, "")
            typer.echo(f"{kind.upper():<8} {rel}{why}")
            bad = True
    if bad:
        raise typer.Exit(EXIT_NOT_CONTAINED)
    anchored = (f"; the manifest is the one run {run_id} recorded" if expected else
                "; no digest recorded for this bundle's run in this state directory, so the manifest itself "
                "is unchecked")
    typer.echo(f"intact: every file in {bundle} matches its manifest{anchored}")


@audit_app.command("verify")
@handle_errors
def audit_verify(state_dir: StateDir = None) -> None:
    """Check the audit log's hash chain (edited, deleted, duplicated or reordered lines) and the heads the
    journal anchored at the end of each run (a truncated, emptied or appended-to log). Exit 0 intact, 1 not."""
    from runner.service import audit_problems
    from runner.service import state_dir as resolve_state

    state = resolve_state(state_dir)
    path = state / "audit.jsonl"
    problems, lines = audit_problems(state)
    if lines is None:
        err(f"stanch: no audit log at {path}")
        raise typer.Exit(EXIT_BAD_INPUT)
    for p in problems:
        typer.echo(p)
    if problems:
        raise typer.Exit(EXIT_NOT_CONTAINED)
    typer.echo(f"intact: {lines} lines, hash chain unbroken, every anchored head found")


@playbook_app.command("list")
@handle_errors
def playbook_list() -> None:
    """List the packaged playbooks and the registered actions."""
    from actions.registry import builtin_registry
    from runner.playbook import load_playbook, packaged_playbooks

    reg = builtin_registry()
    typer.echo("Playbooks:")
    for name in packaged_playbooks():
        pb = load_playbook(name, reg)
        typer.echo(f"  {name:<28} {len(pb.steps)} steps  {pb.description}")
    typer.echo("\nActions:")
    for cls in reg.all():
        params = ", ".join(cls.params_model.model_fields) or "-"
        typer.echo(f"  {cls.name:<34} [{cls.risk}] {cls.summary}\n  {'':<34} params: {params}")


@playbook_app.command("validate")
@handle_errors
def playbook_validate(path: Annotated[str, typer.Argument(help="Playbook YAML file or packaged name")]) -> None:
    """Check a playbook: every problem is listed with its location. Exit 2 if any."""
    from actions.registry import builtin_registry
    from runner.playbook import load_playbook

    pb = load_playbook(path, builtin_registry())
    typer.echo(f"{pb.source}: ok ({len(pb.steps)} steps)")


@playbook_app.command("graph")
@handle_errors
def playbook_graph(
    ref: Annotated[str | None, typer.Argument(help="Playbook name or path")] = None,
    lifecycle: Annotated[bool, typer.Option("--lifecycle", help="Draw the run lifecycle instead")] = False,
) -> None:
    """Print a mermaid diagram of a playbook's steps (gated steps highlighted), or of the run lifecycle."""
    from actions.registry import builtin_registry
    from runner.lifecycle import lifecycle_mermaid
    from runner.playbook import load_playbook

    if lifecycle:
        typer.echo(lifecycle_mermaid(), nl=False)
        return
    if not ref:
        err("stanch: give a playbook name or path, or --lifecycle")
        raise typer.Exit(EXIT_BAD_INPUT)
    typer.echo(load_playbook(ref, builtin_registry()).mermaid(), nl=False)


@playbook_app.command("permissions")
@handle_errors
def playbook_permissions(ref: Annotated[str, typer.Argument(help="Playbook name or path")]) -> None:
    """Print the least-privilege IAM policy the runner needs for a playbook (from the actions' declarations)."""
    from actions.registry import builtin_registry
    from runner.playbook import load_playbook

    reg = builtin_registry()
    pb = load_playbook(ref, reg)
    perms = {"sts:GetCallerIdentity"}
    for step in pb.steps:
        cls = reg.get(step.action)
        if cls is not None:
            perms.update(cls.permissions)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "StanchPlaybook", "Effect": "Allow", "Action": sorted(perms), "Resource": "*"}]}
    typer.echo(json.dumps(policy, indent=2))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stanch {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version")] = False,
) -> None:
    pass


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

