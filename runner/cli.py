"""The `stanch` command line (typer). Output contract: ../shared/DESIGN.md."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable
from enum import StrEnum
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

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
from rich.console import Console

from runner import __version__
from runner.errors import EXIT_BAD_INPUT, EXIT_NOT_CONTAINED, EXIT_REFUSED, StanchError
from runner.ui import (
    LogStream,
    UiOptions,
    change_line,
    console,
    render_evidence,
    render_run,
    render_run_list,
    render_scorecard,
    wants_color,
)

if TYPE_CHECKING:  # commands import what they use when they run: `--help` loads neither boto3 nor moto
    from actions.base import Plan
    from runner.playbook import Step

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="stanch", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=True,
    help="Contain AWS incidents with reviewed, journaled, reversible playbooks.\n\n"
         "Typical use: `stanch run incident.json --dry-run` to see the plan and why each resource is in "
         "scope, then `stanch run incident.json` to contain (gated steps ask for approval).\n\n"
         "Exit codes: 0 contained or dry-run planned; 1 partially contained, failed or cancelled; 2 bad input (nothing "
         "changed); 3 paused awaiting approval; 4 refused by a guardrail or another run holds the incident; "
         "5 needs a manual action.",
)
playbook_app = typer.Typer(no_args_is_help=True, help="List, validate and draw playbooks.")
app.add_typer(playbook_app, name="playbook")


class Output(StrEnum):
    text = "text"
    json = "json"


# One meaning per flag, everywhere (as in the AWS CLI): --output/-o is a format, --file/-f a file
# to write. tests/test_cli_flags.py walks every command and fails on a conflict.
StateDir = Annotated[str | None, typer.Option("--state-dir", help="Journal, audit log and evidence; "
                                              "default $STANCH_STATE_DIR, else ./.stanch")]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="text for people; json prints one JSON "
                                           "document on stdout (never styled)")]
FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="Write to this file instead of stdout",
                                              metavar="FILE")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only failures on stderr (no run log)")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Every log line on stderr, planned "
                                          "changes and verifications included")]
NoColorOpt = Annotated[bool, typer.Option("--no-color", help="No colour (also: the NO_COLOR variable)")]
ApproveOpt = Annotated[list[str] | None, typer.Option("--approve", help="Pre-approve this gated step "
                                                      "(repeatable)", metavar="STEP")]
ApproveAllOpt = Annotated[bool, typer.Option("--approve-all", help="Pre-approve every gated step")]
ByOpt = Annotated[str | None, typer.Option("--by", help="Who approves (recorded); default: your login")]
ConfigOpt = Annotated[str | None, typer.Option("--config", help="Config TOML; default $STANCH_CONFIG, else the "
                                             "packaged config/stanch.toml")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", help="AWS profile")]
EndpointOpt = Annotated[str | None, typer.Option("--endpoint-url", help="AWS-compatible endpoint (e.g. a moto "
                                                 "server); also AWS_ENDPOINT_URL")]
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


def _ui(ctx: typer.Context, quiet: bool = False, verbose: bool = False, no_color: bool = False) -> UiOptions:
    """Options given to the command win over those given before it (`stanch -q run ...`)."""
    base: UiOptions = ctx.obj if isinstance(ctx.obj, UiOptions) else UiOptions(color=wants_color(False))
    verbosity = 0 if quiet else 2 if verbose else base.verbosity
    return UiOptions(color=base.color and wants_color(no_color), verbosity=verbosity)


def out_console(ui: UiOptions) -> Console:
    return console(sys.stdout, color=ui.color)


def terminal_prompt(step: Step, plan: Plan) -> bool:
    err(f"\nStep '{step.id}' ({step.action}) needs approval. It will make {len(plan.changes)} change(s):")
    for c in plan.changes:
        err(f"  - {change_line(c.to_json())}")
        if c.reason:
            err(f"      why: {c.reason}")
    return typer.confirm("Apply these changes?", default=False, err=True)


def _prompt(log: LogStream | None = None) -> Callable[[Step, Plan], bool] | None:
    """Ask at the terminal when there is one (the progress spinner stops while asking); otherwise
    gated steps pause the run."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None

    def ask(step: Step, plan: Plan) -> bool:
        if log is None:
            return terminal_prompt(step, plan)
        with log.paused():
            return terminal_prompt(step, plan)
    return ask


def _finish(outcome: Any, output: Output, ui: UiOptions) -> None:
    emit(outcome.result, output, ui)
    raise typer.Exit(outcome.exit_code)


def print_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2, default=str))


def emit(result: dict[str, Any], output: Output, ui: UiOptions) -> None:
    if output is Output.json:
        print_json(result)
        return
    err("")
    render_run(out_console(ui), result)


@app.command()
@handle_errors
def run(
    ctx: typer.Context,
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
    config: ConfigOpt = None,
    region: Annotated[str | None, typer.Option("--region", help="Default: the incident's region")] = None,
    profile: ProfileOpt = None,
    endpoint_url: EndpointOpt = None,
    cloudtrail: Annotated[list[str] | None, typer.Option("--cloudtrail", help="CloudTrail file(s) (Records[], "
                                                         "plain or .gz): what they attribute to the attacker "
                                                         "joins the incident's seeds", metavar="FILE")] = None,
    allow_sample: Annotated[bool, typer.Option("--allow-sample", help="Act on GuardDuty/Security Hub sample "
                                               "findings (refused by default)")] = False,
    allow_archived: Annotated[bool, typer.Option("--allow-archived", help="Act on archived or suppressed "
                                                 "findings (refused by default)")] = False,
    window_start: Annotated[str | None, typer.Option("--window-start", metavar="TIME", help="Start of the "
                                                     "incident window (RFC 3339), replacing the incident's; "
                                                     "needed when it starts more than the config's "
                                                     "discovery.max_window_days before detection")] = None,
    output: OutputOpt = Output.text,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    no_color: NoColorOpt = False,
) -> None:
    """Contain an incident: discover scope, plan, gate, apply, verify. Every step is journaled.

    INCIDENT may be a native incident, a GuardDuty finding (EventBridge event, bare, or boto3
    get_findings output), a Security Hub finding (ASFF, or a 'Security Hub Findings' event), or
    CloudTrail records; the format is detected."""
    from runner.attribution.sources import is_cloudtrail_file, read_trail_files
    from runner.config import load_config
    from runner.engine import RunOptions, default_approver
    from runner.intake import IntakeOptions, load_any, merge_cloudtrail, settle_window
    from runner.service import AwsOptions, start_run
    from runner.service import state_dir as resolve_state

    cfg = load_config(config)
    inc = load_any(incident, cfg, IntakeOptions(allow_sample=allow_sample, allow_archived=allow_archived))
    trail_files = list(cloudtrail or [])
    if is_cloudtrail_file(incident):
        trail_files.insert(0, incident)  # a CloudTrail input is also the run's attribution source
    trail = read_trail_files(trail_files) if trail_files else ([], [])
    if trail[0]:
        inc = merge_cloudtrail(inc, trail[0])
    settled = settle_window(inc, cfg, window_start)
    if settled.window_start != inc.window_start:
        err(f"stanch: incident window starts at {settled.window_start} (--window-start; the incident said "
            f"{inc.window_start or 'nothing'})")
    inc = settled
    options = RunOptions(dry_run=dry_run, approve=tuple(approve or ()), approve_all=approve_all,
                         by=by or default_approver(), reason=reason, max_changes=max_changes)
    ui = _ui(ctx, quiet, verbose, no_color)
    with LogStream(ui) as log:
        outcome = start_run(
            inc, playbook_ref=playbook, config_path=config, options=options,
            aws_opts=AwsOptions(region, profile, endpoint_url), state=resolve_state(state_dir),
            prompt=_prompt(log), stream=log.as_text(), trail=trail,
        )
    _finish(outcome, output, ui)


@app.command()
@handle_errors
def detect(
    files: Annotated[list[str], typer.Argument(help="CloudTrail files: Records[] (plain or .gz), EventBridge "
                                                    "'AWS API Call via CloudTrail' events, or single records")],
    config: Annotated[str | None, typer.Option("--config", help="Config TOML (intake.window_hours)")] = None,
    file: FileOpt = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="json: the native incident; text: the "
                                           "attributed events as a table")] = Output.json,
    no_color: NoColorOpt = False,
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
    if file:
        _refuse_format_as_file(file, ("json", "text"))
        file.write_text(text + "\n", encoding="utf-8")
        err(f"incident written to {file}; contain it with: stanch run {file}")
    elif output is Output.json:
        typer.echo(text)
    else:
        render_evidence(console(sys.stdout, color=wants_color(no_color)), chain.evidence)


@app.command()
@handle_errors
def approve(
    run_id: Annotated[str, typer.Argument(help="The paused run")],
    step: Annotated[list[str] | None, typer.Option("--step", help="A step awaiting approval (repeatable)",
                                                   metavar="STEP")] = None,
    all_pending: Annotated[bool, typer.Option("--all-pending", help="Every step awaiting approval, as "
                                              "`stanch status RUN_ID` shows them")] = False,
    plan: Annotated[list[str] | None, typer.Option("--plan", help="STEP=DIGEST: approve STEP only if its plan is "
                                                   "still the one `stanch status` showed (repeatable; with it, "
                                                   "every step approved needs one)", metavar="STEP=DIGEST")] = None,
    by: ByOpt = None,
    reason: ReasonOpt = "approved with stanch approve",
    state_dir: StateDir = None,
    queue_url: Annotated[str | None, typer.Option("--queue-url", help="Ask the workers on this SQS queue to resume "
                                                  "the run (default: [worker] queue_url in the config)")] = None,
    config: Annotated[str | None, typer.Option("--config", help="Config TOML ([worker] queue_url, [journal]); default "
                                               "$STANCH_CONFIG, else the packaged one")] = None,
    region: Annotated[str | None, typer.Option("--region", help="The queue's region, when its URL does not "
                                               "name one")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="AWS profile for the queue")] = None,
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="AWS-compatible endpoint for the "
                                                     "queue; also AWS_ENDPOINT_URL")] = None,
    output: OutputOpt = Output.text,
) -> None:
    """Approve a paused run's gated steps (the plans `stanch status RUN_ID` shows), all with one reason.
    Each approval covers exactly the changes shown; then `stanch resume RUN_ID` (or `resume --approve STEP`
    to approve and continue in one command). With a worker queue (--queue-url or [worker] queue_url) the
    approval also asks the workers to resume the run, so nobody needs to be on the worker's machine."""
    from runner.config import load_config
    from runner.engine import default_approver
    from runner.service import approve_steps
    from runner.service import state_dir as resolve_state

    if bool(step) == all_pending:
        err("stanch: give --step STEP (repeatable) or --all-pending, not both and not neither. Nothing was approved.")
        raise typer.Exit(EXIT_BAD_INPUT)
    expect: dict[str, str] | None = None
    if plan:
        expect = {}
        for item in plan:
            name, sep, digest = item.partition("=")
            if not sep or not name or not digest or name in expect:
                err(f"stanch: --plan takes STEP=DIGEST, once per step (got '{item}'). Nothing was approved.")
                raise typer.Exit(EXIT_BAD_INPUT)
            expect[name] = digest
    queue = queue_url or load_config(config).worker.queue_url or None
    who = by or default_approver()
    state = resolve_state(state_dir)
    records = approve_steps(run_id, None if all_pending else list(step or []), by=who, reason=reason, state=state,
                            config_path=config,
                            expect=expect)
    queued: str | None = None
    if queue:
        from runner.worker import Context, send_resume

        try:
            queued = send_resume(queue, run_id, who, Context(state=state, config_path=config, region=region,
                                                             profile=profile, endpoint_url=endpoint_url))
        except (ClientError, BotoCoreError) as exc:
            why = aws_error_message(exc)[0] if isinstance(exc, ClientError) else f"{type(exc).__name__}: {exc}"
            err(f"stanch: the approval is recorded, but the resume request did not reach the queue ({why}); "
                f"continue with: stanch resume {run_id}")
            raise typer.Exit(EXIT_NOT_CONTAINED) from None
    nxt = f"a worker resumes it (resume request {queued} on {queue})" if queued else f"stanch resume {run_id}"
    if output is Output.json:
        print_json({"run_id": run_id, "approvals": [
            {"step": r.step_id, "by": r.by, "reason": r.reason, "at": r.at, "plan_digest": r.plan_digest,
             "changes": len(r.change_digests)} for r in records], "next": nxt, "resume_message_id": queued})
        return
    for r in records:
        typer.echo(f"approved {r.step_id} of {r.run_id} by {r.by} ({len(r.change_digests)} change(s), plan "
                   f"{r.plan_digest})")
    typer.echo(f"next: {nxt}" if queued else f"continue with: {nxt}")


@app.command()
@handle_errors
def resume(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="A paused or interrupted run")],
    approve: ApproveOpt = None,
    approve_all: ApproveAllOpt = False,
    by: ByOpt = None,
    reason: ReasonOpt = "",
    state_dir: StateDir = None,
    output: OutputOpt = Output.text,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    no_color: NoColorOpt = False,
) -> None:
    """Continue a paused or interrupted run: re-plan what is left and apply only that.

    `--approve STEP` (repeatable) or `--approve-all` approves gated steps and continues in one command;
    the approval binds to the plan shown at that moment, with --by and --reason recorded."""
    from runner.engine import RunOptions, default_approver
    from runner.service import resume_run
    from runner.service import state_dir as resolve_state

    options = RunOptions(approve=tuple(approve or ()), approve_all=approve_all, by=by or default_approver(),
                         reason=reason)
    ui = _ui(ctx, quiet, verbose, no_color)
    with LogStream(ui) as log:
        outcome = resume_run(run_id, options=options, state=resolve_state(state_dir), prompt=_prompt(log),
                             stream=log.as_text())
    _finish(outcome, output, ui)


@app.command()
@handle_errors
def rollback(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="A finished run whose changes to undo")],
    step: Annotated[list[str] | None, typer.Option("--step", help="Undo only this step's changes (repeatable)",
                                                   metavar="STEP")] = None,
    target: Annotated[list[str] | None, typer.Option("--target", help="Undo only the changes to this ARN "
                                                     "(repeatable)", metavar="ARN")] = None,
    false_positive: Annotated[bool, typer.Option("--false-positive", help="The incident was a false positive: "
                                                 "mark it so (recorded with --reason)")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be undone; change nothing")] = False,
    approve_all: ApproveAllOpt = False,
    by: ByOpt = None,
    reason: ReasonOpt = "",
    state_dir: StateDir = None,
    output: OutputOpt = Output.text,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    no_color: NoColorOpt = False,
) -> None:
    """Undo a run's containment from the values its changes recorded (keys reactivated, quarantine
    policies removed, group memberships and policies restored, services scaled back), all of it or only
    some steps (--step) or resources (--target). What no API can undo (a deleted console password, a
    deactivated MFA device) is listed as a manual action. The revert step is approval-gated like any
    other; it runs as a new, journaled run of the same incident.

    Unless the incident is marked a false positive (--false-positive), undoing containment gives access
    back to what the run found attributed to the attacker: stanch warns and requires --reason."""
    from runner.engine import RunOptions, default_approver
    from runner.service import rollback_run
    from runner.service import state_dir as resolve_state

    if not false_positive and not dry_run:
        err("stanch: WARNING: the incident is not marked a false positive; rolling back re-opens what the run "
            "contained (attacker keys, users, workloads) for the resources chosen.")
        if not reason.strip():
            err("stanch: give --reason TEXT for the record (or --false-positive --reason TEXT). Nothing was changed.")
            raise typer.Exit(EXIT_BAD_INPUT)
    why = f"false positive: {reason}".rstrip(": ") if false_positive else reason
    options = RunOptions(dry_run=dry_run, approve_all=approve_all, by=by or default_approver(), reason=why)
    ui = _ui(ctx, quiet, verbose, no_color)
    with LogStream(ui) as log:
        outcome = rollback_run(run_id, options=options, state=resolve_state(state_dir), prompt=_prompt(log),
                               stream=log.as_text(), steps=step, targets=target)
    _finish(outcome, output, ui)


@app.command()
@handle_errors
def verify(
    run_id: Annotated[str, typer.Argument(help="A finished run to check against the account")],
    watch: Annotated[bool, typer.Option("--watch", help="Keep checking (see --every and --for)")] = False,
    every: Annotated[str, typer.Option("--every", help="With --watch: time between checks (30s, 5m, 1h)")] = "5m",
    for_: Annotated[str, typer.Option("--for", help="With --watch: how long to keep checking (e.g. 2h)")] = "2h",
    reapply: Annotated[bool, typer.Option("--reapply", help="Apply again what drifted (gated steps only with "
                                                            "their recorded approval, --approve or a prompt)")] = False,
    approve: ApproveOpt = None,
    approve_all: ApproveAllOpt = False,
    by: ByOpt = None,
    reason: ReasonOpt = "",
    state_dir: StateDir = None,
    output: OutputOpt = Output.text,
) -> None:
    """Check that a finished run is still contained: every containment step is planned again, read-only.
    Exit 0 if nothing drifted (or all drift was re-applied), 1 listing the drift, 2 for a bad run id."""
    from runner.engine import RunOptions, default_approver
    from runner.service import state_dir as resolve_state
    from runner.verify import Check, Verifier, parse_duration
    from runner.verify import watch as watch_run

    interval = parse_duration(every, "--every")
    duration = parse_duration(for_, "--for")
    options = RunOptions(approve=tuple(approve or ()), approve_all=approve_all, by=by or default_approver(),
                         reason=reason)
    verifier = Verifier(run_id, resolve_state(state_dir), options=options, prompt=_prompt() if reapply else None)

    def show(check: Check) -> None:
        if output is Output.json:
            return
        verdict = "still contained" if check.contained else "NOT contained"
        typer.echo(f"{check.checked_at}  run {check.run_id}: {verdict}")
        for d in check.drift:
            typer.echo(f"  drift       {d['step']:<26} {d['operation']} {d['target']}  -- {d['reason']}")
        for d in check.reapplied:
            typer.echo(f"  reapplied   {d['step']:<26} {d['operation']} {d['target']}")
        for d in check.not_reapplied:
            typer.echo(f"  not applied {d['step']:<26} {d['operation']} {d['target']}  -- {d['why']}")
        for e in check.errors:
            typer.echo(f"  error       {e}")
        for g in check.coverage.get("gaps", []):
            if g.get("blocking"):
                typer.echo(f"  NOT SEARCHED {g['service']} in {g['region']}: {g['error']}")

    try:
        if watch:
            checks = watch_run(verifier, every=interval, duration=duration, reapply=reapply, on_check=show)
        else:
            checks = [verifier.check(reapply=reapply)]
            show(checks[0])
    finally:
        verifier.close()
    if output is Output.json:
        doc = checks[0].to_json() if not watch else {"run_id": run_id, "checks": [c.to_json() for c in checks],
                                                    "contained": checks[-1].contained}
        typer.echo(json.dumps(doc, indent=2, default=str))
    raise typer.Exit(0 if checks[-1].contained else EXIT_NOT_CONTAINED)


@app.command()
@handle_errors
def cancel(
    run_id: Annotated[str, typer.Argument(help="An unfinished run")],
    by: ByOpt = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded)")] = "cancelled by a responder",
    state_dir: StateDir = None,
    output: OutputOpt = Output.text,
) -> None:
    """Give up on an unfinished run: it ends `cancelled` (exit 1 from then on) and releases the incident
    for a new run. Changes already applied stay applied (each recorded with the value it replaced)."""
    from runner.engine import default_approver
    from runner.service import cancel_run
    from runner.service import state_dir as resolve_state

    rec = cancel_run(run_id, by=by or default_approver(), reason=reason, state=resolve_state(state_dir))
    if output is Output.json:
        print_json({"run_id": rec.run_id, "incident_id": rec.incident_id, "status": rec.status,
                    "cancelled": (rec.result or {}).get("cancelled")})
        return
    typer.echo(f"cancelled {rec.run_id}: {reason} (incident {rec.incident_id} is free for a new run)")


@app.command()
@handle_errors
def status(
    run_id: Annotated[str | None, typer.Argument(help="A run id; omit to list recent runs")] = None,
    incident: Annotated[str | None, typer.Option("--incident", help="Only runs of this incident id")] = None,
    run_status_filter: Annotated[str | None, typer.Option("--status", help="Only runs in this status (e.g. "
                                                          "awaiting_approval, cancelled)")] = None,
    state_dir: StateDir = None,
    output: OutputOpt = Output.text,
    no_color: NoColorOpt = False,
) -> None:
    """Show one run (steps, changes, approvals) or a table of recent runs."""
    from runner.lifecycle import NOT_CONTAINED, STATES
    from runner.service import list_runs, run_status
    from runner.service import state_dir as resolve_state

    if run_status_filter is not None and run_status_filter not in STATES:
        err(f"stanch: unknown status '{run_status_filter}'; one of: {', '.join(STATES)}")
        raise typer.Exit(EXIT_BAD_INPUT)
    state = resolve_state(state_dir)
    doc: Any = run_status(run_id, state) if run_id else list_runs(state, incident=incident,
                                                                  status=run_status_filter)
    if output is Output.json:
        print_json(doc)
    elif isinstance(doc, list):
        render_run_list(console(sys.stdout, color=wants_color(no_color)), doc)
    else:
        render_run(console(sys.stdout, color=wants_color(no_color)), doc)
    if isinstance(doc, dict) and doc.get("status") in NOT_CONTAINED:  # one run: its exit code, as `run` gave
        raise typer.Exit(EXIT_NOT_CONTAINED)


@app.command()
@handle_errors
def worker(
    ctx: typer.Context,
    queue_url: Annotated[str | None, typer.Option("--queue-url", help="The SQS queue findings arrive on (EventBridge "
                                                  "-> SQS); default: [worker] queue_url in the config")] = None,
    once: Annotated[bool, typer.Option("--once", help="One receive: handle what it returns, then exit")] = False,
    max_messages: Annotated[int | None, typer.Option("--max-messages", min=1, max=10, help="Messages per receive "
                                                     "(default: [worker] max_messages)")] = None,
    wait: Annotated[int | None, typer.Option("--wait", min=0, max=20, help="Long-poll seconds per receive "
                                             "(default: [worker] wait_seconds)")] = None,
    state_dir: StateDir = None,
    config: ConfigOpt = None,
    region: Annotated[str | None, typer.Option("--region", help="The queue's region, when its URL does not name "
                                               "one (runs use the incident's)")] = None,
    profile: ProfileOpt = None,
    endpoint_url: EndpointOpt = None,
    output: OutputOpt = Output.text,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    no_color: NoColorOpt = False,
) -> None:
    """Take findings from an SQS queue and contain each: long-poll, run, and delete a message only when its
    run rests (contained, needs_manual_action, awaiting_approval, refused). A duplicate of an incident that
    already has a run is refused; a run a killed worker left is resumed; a message that cannot be finished
    comes back until the queue's redrive policy moves it to the DLQ. `stanch approve` with the queue
    configured sends a resume request the workers act on. SIGTERM: the change in flight finishes, the run
    stays resumable, and the message goes back for another worker.

    Workers on one machine share the state directory (--state-dir / STANCH_STATE_DIR)."""
    import signal

    from runner.audit import make_logger
    from runner.config import load_config
    from runner.service import state_dir as resolve_state
    from runner.worker import Context, Worker

    cfg = load_config(config)
    if config:  # the runs this worker resumes read the same config (journal backend, notifications)
        os.environ["STANCH_CONFIG"] = config
    queue = queue_url or cfg.worker.queue_url
    if not queue:
        err("stanch: give --queue-url URL (or [worker] queue_url in the config)")
        raise typer.Exit(EXIT_BAD_INPUT)
    if not queue.startswith(("https://", "http://")):
        err(f"stanch: --queue-url {queue!r} is not a queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)")
        raise typer.Exit(EXIT_BAD_INPUT)
    ui = _ui(ctx, quiet, verbose, no_color)
    run_ctx = Context(state=resolve_state(state_dir), config_path=config, region=region, profile=profile,
                      endpoint_url=endpoint_url, by=cfg.worker.by)

    class _Stopping(Exception):
        pass

    with LogStream(ui) as log:
        w = Worker(queue, run_ctx, cfg.worker, log=make_logger(None, log.as_text(), component="worker"),
                   run_stream=log.as_text())

        def on_term(signum: int, frame: Any) -> None:
            w.stop.set()
            if w.polling:
                raise _Stopping

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            handled = w.run(once=once, max_messages=max_messages or cfg.worker.max_messages,
                            wait=cfg.worker.wait_seconds if wait is None else wait)
        except _Stopping:
            handled = w.handled
        finally:
            signal.signal(signal.SIGTERM, previous)
    if output is Output.json:
        print_json({"queue_url": queue, "stopped": w.stop.is_set(), "messages": [h.to_json() for h in handled]})
        return
    for h in handled:
        typer.echo(f"{h.message_id}  {h.fate:<7} {h.kind:<8} {h.incident_id or '-':<28} {h.run_id or '-':<26} "
                   f"{h.reason}")
    typer.echo(f"{len(handled)} message(s) handled" + (" (stopped by SIGTERM)" if w.stop.is_set() else ""))


@app.command()
@handle_errors
def drill(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan the drill only; nothing changes")] = False,
    live: Annotated[bool, typer.Option("--live", help="Instead: check a real deployment is ready to contain "
                                       "(read-only): credentials, member roles, permissions (IAM policy "
                                       "simulation), regions, evidence Object Lock, rules, queue, routing")] = False,
    account: Annotated[list[str] | None, typer.Option("--account", help="--live: an account to check (repeatable; "
                                                      "default $STANCH_DRILL_ACCOUNTS, else the runner's own)",
                                                      metavar="ID")] = None,
    queue_url: Annotated[str | None, typer.Option("--queue-url", help="--live: the incident queue; default "
                                                  "$STANCH_QUEUE_URL")] = None,
    rule: Annotated[list[str] | None, typer.Option("--rule", help="--live: an EventBridge rule feeding the queue "
                                                   "(repeatable); default $STANCH_RULES", metavar="NAME")] = None,
    config: Annotated[str | None, typer.Option("--config", help="--live: config TOML; default $STANCH_CONFIG, else "
                                               "the packaged config/stanch.toml")] = None,
    region: Annotated[str | None, typer.Option("--region", help="--live: home region; default "
                                               "AWS_REGION / AWS_DEFAULT_REGION")] = None,
    profile: ProfileOpt = None,
    endpoint_url: EndpointOpt = None,
    state_dir: StateDir = None,
    output: OutputOpt = Output.text,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    no_color: NoColorOpt = False,
) -> None:
    """End-to-end containment against a simulated account (in-process moto), then a scorecard.
    The two runs' logs are not shown unless --verbose. With --live: a read-only readiness check of a real
    deployment; exit 0 ready, 1 with every problem that would stop a real containment."""
    from runner.drill import require_moto, run_drill
    from runner.service import state_dir as resolve_state

    if live:
        _live_drill(account or [], queue_url, rule or [], config, region, profile, endpoint_url, output,
                    wants_color(no_color))
        return
    require_moto()  # before the spinner: without the drill extra, the message and exit 2
    ui = _ui(ctx, quiet, verbose, no_color)
    if ui.verbosity >= 2:
        with LogStream(ui) as log:
            card = run_drill(dry_run=dry_run, state=resolve_state(state_dir), stream=log.as_text())
    else:
        with console(sys.stderr, color=ui.color).status("drill: seeding a simulated account and containing it"):
            card = run_drill(dry_run=dry_run, state=resolve_state(state_dir))
    if output is Output.json:
        print_json(card)
    else:
        render_scorecard(out_console(ui), card)
    raise typer.Exit(0 if card["passed"] else EXIT_NOT_CONTAINED)


def _live_drill(accounts: list[str], queue_url: str | None, rules: list[str], config_path: str | None,
                region: str | None, profile: str | None, endpoint_url: str | None, output: Output,
                color: bool) -> None:
    import os

    from rich.markup import escape

    from runner.aws import AwsSession
    from runner.config import load_config
    from runner.live_drill import DrillTargets, run_live_drill

    bad = [a for a in accounts if not (len(a) == 12 and a.isdigit())]
    if bad:
        err(f"stanch: --account takes a 12-digit account id, not {', '.join(repr(b) for b in bad)}")
        raise typer.Exit(EXIT_BAD_INPUT)
    config = load_config(config_path)
    session = AwsSession(region=region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                         or "us-east-1", profile=profile,
                         endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL"), settings=config.aws,
                         dry_run=True)
    report = run_live_drill(session, config, DrillTargets.from_env(tuple(accounts), queue_url or "", tuple(rules)))
    if output is Output.json:
        print_json(report.to_json() | {"refused_writes": list(session.refused)})
    else:
        out = console(sys.stdout, color=color)
        for c in report.checks:
            mark = "[green]ok[/green]  " if c.ok else "[red]FAIL[/red]"
            where = escape(f"[{c.account}] ") if c.account else ""
            out.print(f"{mark} {c.name:<18} {where}{escape(c.detail)}", highlight=False)
        verdict = "ready" if report.ready else f"NOT ready: {len(report.problems())} problem(s) would stop a " \
                                                  "real containment"
        out.print(verdict, highlight=False, markup=False)
    if not report.ready:
        raise typer.Exit(EXIT_NOT_CONTAINED)


class ReportFormat(StrEnum):
    md = "md"
    html = "html"
    json = "json"


@app.command()
@handle_errors
def report(
    ref: Annotated[str, typer.Argument(help="An incident id, or a run id (reports that run's incident)",
                                       metavar="RUN_ID|INCIDENT_ID")],
    output: Annotated[ReportFormat, typer.Option("--output", "-o", "--format", help="md, html (one "
                                                 "self-contained page) or json")] = ReportFormat.md,
    file: FileOpt = None,
    state_dir: StateDir = None,
) -> None:
    """The customer report of an incident, across all its runs: summary, what the attacker did and what
    it means, a timeline of every run, change, approval, cancel and rollback, risk, cost estimate, what
    was left alone and why, manual actions, and hardening recommendations with facts read from the
    account."""
    from runner.report import build_report, render_html, render_markdown
    from runner.service import state_dir as resolve_state

    doc = build_report(ref, resolve_state(state_dir))
    if output is ReportFormat.md:
        text = render_markdown(doc)
    elif output is ReportFormat.html:
        text = render_html(doc)
    else:
        text = json.dumps(doc, indent=2, default=str) + "\n"
    if file:
        _refuse_format_as_file(file, [f.value for f in ReportFormat])
        file.write_text(text, encoding="utf-8")
        err(f"report written to {file.resolve()}")
    else:
        typer.echo(text, nl=False)


def _refuse_format_as_file(file: Path, formats: Iterable[str]) -> None:
    """`-f html` meant the format in older versions: refuse a file named like a format."""
    if str(file) in set(formats) and not file.exists():
        err(f"stanch: --file {file} looks like a format; give the format with --output {file} "
            f"(and a file name with --file). Nothing was written.")
        raise typer.Exit(EXIT_BAD_INPUT)


evidence_app = typer.Typer(no_args_is_help=True, help="Check evidence bundles.")
app.add_typer(evidence_app, name="evidence")
audit_app = typer.Typer(no_args_is_help=True, help="Check the audit log.")
app.add_typer(audit_app, name="audit")


@evidence_app.command("verify")
@handle_errors
def evidence_verify(
    target: Annotated[str, typer.Argument(help="A run id, or a bundle directory (see the run's evidence.path)",
                                          metavar="RUN_ID|BUNDLE_DIR")],
    state_dir: StateDir = None,
    output: OutputOpt = Output.text,
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
    kinds = ("manifest", "altered", "missing", "extra", "symlink")
    bad = any(found[kind] for kind in kinds)
    if output is Output.json:
        print_json({"bundle": str(Path(bundle).resolve()), "run_id": run_id, "intact": not bad,
                    "manifest_anchored": bool(expected), **{k: list(found[k]) for k in kinds}})
    else:
        for kind in kinds:
            for rel in found[kind]:
                why = {"manifest": f"  (not the manifest run {run_id} recorded: rewritten)",
                       "symlink": "  (not followed)"}.get(kind, "")
                typer.echo(f"{kind.upper():<8} {rel}{why}")
        if not bad:
            anchored = (f"; the manifest is the one run {run_id} recorded" if expected else
                        "; no digest recorded for this bundle's run in this state directory, so the manifest "
                        "itself is unchecked")
            typer.echo(f"intact: every file in {bundle} matches its manifest{anchored}")
    if bad:
        raise typer.Exit(EXIT_NOT_CONTAINED)


@audit_app.command("verify")
@handle_errors
def audit_verify(state_dir: StateDir = None, output: OutputOpt = Output.text) -> None:
    """Check the audit log's hash chain (edited, deleted, duplicated or reordered lines) and the heads the
    journal anchored at the end of each run (a truncated, emptied or appended-to log). Exit 0 intact, 1 not."""
    from runner.journal import journal_settings
    from runner.service import audit_problems
    from runner.service import state_dir as resolve_state

    state = resolve_state(state_dir)
    settings = journal_settings()
    where = (f"dynamodb://{settings.table}" if settings.backend == "dynamodb"  # one chain per run in the table
             else str((state / "audit.jsonl").resolve()))
    problems, lines = audit_problems(state)
    if lines is None:
        err(f"stanch: no audit log at {where}")
        raise typer.Exit(EXIT_BAD_INPUT)
    if output is Output.json:
        print_json({"path": where, "intact": not problems, "lines": lines, "problems": problems})
    else:
        for p in problems:
            typer.echo(p)
        if not problems:
            typer.echo(f"intact: {lines} lines, hash chain unbroken, every anchored head found")
    if problems:
        raise typer.Exit(EXIT_NOT_CONTAINED)


journal_app = typer.Typer(no_args_is_help=True, help="The shared (DynamoDB) journal.")
app.add_typer(journal_app, name="journal")


@journal_app.command("init")
@handle_errors
def journal_init(
    table: Annotated[str | None, typer.Option("--table", help="Table name; default: [journal] table or "
                                              "STANCH_JOURNAL=dynamodb://TABLE")] = None,
    region: Annotated[str | None, typer.Option("--region", help="The table's region; default: [journal] "
                                               "region, else AWS_REGION")] = None,
    config: Annotated[str | None, typer.Option("--config", help="Config file (default $STANCH_CONFIG)")] = None,
    output: OutputOpt = Output.text,
) -> None:
    """Create the DynamoDB journal table (pk/sk, the status-index GSI, TTL on expires_at); an existing
    table is checked and kept. Then set `[journal] backend = "dynamodb"` (or STANCH_JOURNAL)."""
    from runner.config import load_config
    from runner.dynamo_journal import create_table, table_client
    from runner.journal import journal_settings

    settings = journal_settings(load_config(config))
    name = table or settings.table
    if not name:
        err("stanch: no table: pass --table NAME, or set [journal] table or STANCH_JOURNAL=dynamodb://TABLE")
        raise typer.Exit(EXIT_BAD_INPUT)
    done = create_table(table_client(region or settings.region or None, settings.endpoint_url or None), name)
    if output is Output.json:
        print_json(done)
    else:
        typer.echo(f"journal table {name} {'created' if done['created'] else 'already exists'}: "
                   f"GSI {done['index']}, TTL on {done['ttl']}")


@playbook_app.command("list")
@handle_errors
def playbook_list(output: OutputOpt = Output.text) -> None:
    """List the packaged playbooks and the registered actions, each labelled with what undoing it takes:
    reversible (stanch rollback restores it), restorable by a person (console password, MFA device),
    destructive (deletes; eradication), read-only."""
    from actions.registry import builtin_registry
    from runner.labels import action_label
    from runner.playbook import load_playbook, packaged_playbooks

    reg = builtin_registry()
    books = [load_playbook(name, reg) for name in packaged_playbooks()]
    actions = [{"name": cls.name, "label": action_label(cls), "risk": cls.risk, "summary": cls.summary,
                "params": list(cls.params_model.model_fields), "permissions": list(cls.permissions)}
               for cls in reg.all()]
    if output is Output.json:
        print_json({"playbooks": [{"name": pb.name, "steps": len(pb.steps), "description": pb.description}
                                  for pb in books], "actions": actions})
        return
    typer.echo("Playbooks:")
    for pb in books:
        typer.echo(f"  {pb.name:<28} {len(pb.steps)} steps  {pb.description}")
    typer.echo("\nActions:")
    for a in actions:
        typer.echo(f"  {a['name']:<34} [{a['label']}] {a['summary']}\n  {'':<34} params: "
                   f"{', '.join(a['params']) or '-'}")


@playbook_app.command("validate")
@handle_errors
def playbook_validate(path: Annotated[str, typer.Argument(help="Playbook YAML file or packaged name")],
                      output: OutputOpt = Output.text) -> None:
    """Check a playbook: every problem is listed with its location. Exit 2 if any."""
    from actions.registry import builtin_registry
    from runner.playbook import load_playbook

    pb = load_playbook(path, builtin_registry())
    if output is Output.json:
        print_json({"source": str(pb.source), "ok": True, "steps": [s.id for s in pb.steps]})
    else:
        typer.echo(f"{pb.source}: ok ({len(pb.steps)} steps)")


@playbook_app.command("graph")
@handle_errors
def playbook_graph(
    ref: Annotated[str | None, typer.Argument(help="Playbook name or path")] = None,
    lifecycle: Annotated[bool, typer.Option("--lifecycle", help="Draw the run lifecycle instead")] = False,
    step_lifecycle: Annotated[bool, typer.Option("--step-lifecycle", help="Draw the step lifecycle instead")] = False,
    output: OutputOpt = Output.text,
) -> None:
    """Print a mermaid diagram of a playbook's steps (gated steps highlighted), or of the run or step
    lifecycle (drawn from the state machines the engine drives)."""
    from actions.registry import builtin_registry
    from runner.lifecycle import lifecycle_mermaid, step_lifecycle_mermaid
    from runner.playbook import load_playbook

    if lifecycle and step_lifecycle:
        err("stanch: give --lifecycle or --step-lifecycle, not both")
        raise typer.Exit(EXIT_BAD_INPUT)
    if lifecycle:
        text = lifecycle_mermaid()
    elif step_lifecycle:
        text = step_lifecycle_mermaid()
    elif not ref:
        err("stanch: give a playbook name or path, or --lifecycle")
        raise typer.Exit(EXIT_BAD_INPUT)
    else:
        text = load_playbook(ref, builtin_registry()).mermaid()
    if output is Output.json:
        print_json({"mermaid": text})
    else:
        typer.echo(text, nl=False)


class PolicyFormat(StrEnum):
    json = "json"
    cloudformation = "cloudformation"


class PolicyAudience(StrEnum):
    member = "member"
    security = "security"


@playbook_app.command("permissions")
@handle_errors
def playbook_permissions(
    refs: Annotated[list[str], typer.Argument(help="Playbook names or paths", metavar="NAME|PATH...")],
    # DESIGN.md gives `--for` to both `verify` (a duration) and this (an audience): the same parameter name
    for_: Annotated[PolicyAudience | None, typer.Option(
        "--for", help="Split for a security-account deployment: member (the responder role in each member "
                      "account) or security (the runner's role, and the Organizations role)")] = None,
    output: Annotated[PolicyFormat, typer.Option(
        "--output", "-o", "--format", help="json: IAM policy documents (filled from --config); cloudformation: "
                                           "the templates' AWS::IAM::ManagedPolicy resources")] = PolicyFormat.json,
    rollback: Annotated[bool, typer.Option("--rollback", help="Include what `stanch rollback` needs")] = False,
    config: Annotated[str | None, typer.Option("--config", help="Config TOML (role name, evidence bucket, "
                                               "Organizations role); default $STANCH_CONFIG")] = None,
) -> None:
    """Print the least-privilege IAM policy the runner needs for the playbooks (from the actions' declarations).
    With --for, the policies of a security-account deployment (deploy/*.yaml embed exactly these)."""
    import yaml

    from actions.registry import builtin_registry
    from runner.config import load_config
    from runner.permissions import declared, policies, render_cloudformation, render_json
    from runner.playbook import load_playbook

    reg = builtin_registry()
    books = [load_playbook(ref, reg) for ref in refs]
    extra = ["rollback.revert"] if rollback else []
    audience = for_
    if audience is None:
        if output is PolicyFormat.cloudformation:
            err("stanch: --format cloudformation needs --for member|security")
            raise typer.Exit(EXIT_BAD_INPUT)
        perms = set().union(*declared(books, reg, extra).values())
        policy = {"Version": "2012-10-17", "Statement": [
            {"Sid": "StanchPlaybook", "Effect": "Allow", "Action": sorted(perms), "Resource": "*"}]}
        typer.echo(json.dumps(policy, indent=2))
        return
    pols = policies(audience.value, declared(books, reg, extra))
    if output is PolicyFormat.cloudformation:
        typer.echo(yaml.safe_dump(render_cloudformation(pols), sort_keys=False, width=110), nl=False)
    else:
        print_json(render_json(pols, load_config(config)))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stanch {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    no_color: NoColorOpt = False,
) -> None:
    ctx.obj = UiOptions(color=wants_color(no_color), verbosity=0 if quiet else 2 if verbose else 1)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

