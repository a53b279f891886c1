"""Terminal output for people: rich tables, status colours, a progress line on stderr.

Everything here renders the typed documents the engine and the journal produce (run document,
run list, drill scorecard); nothing decides anything. JSON output never passes through here, so
it never carries styling. Colour follows the terminal: none when the stream is not a TTY, when
NO_COLOR is set, or with --no-color.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO, cast

from rich import box
from rich.console import Console, Group, RenderableType
from rich.status import Status
from rich.table import Table
from rich.text import Text

from runner.awserrors import clean_message, summarize_error

#: style of each run, step and change status (anything not listed is unstyled)
STATUS_STYLES = {
    "contained": "bold green", "applied": "green", "verified": "green", "PASS": "bold green",
    "planned": "cyan", "noop": "dim", "already_done": "dim", "skipped": "dim",
    "awaiting_approval": "bold yellow", "needs_manual_action": "bold magenta", "manual": "bold magenta",
    "partially_contained": "bold yellow", "cancelled": "yellow",
    "failed": "bold red", "refused": "bold red", "FAIL": "bold red",
    "pending": "blue", "planning": "blue", "applying": "blue", "verifying": "blue",
}
#: width for output that is not a terminal (files, pipes, tests): wide enough that ARNs never wrap
PIPE_WIDTH = 240


@dataclass(frozen=True)
class UiOptions:
    """How the CLI talks to people: colour, and how much of the run log reaches stderr."""

    color: bool = True
    verbosity: int = 1  # 0 quiet, 1 normal, 2 verbose

    @property
    def quiet(self) -> bool:
        return self.verbosity == 0


def wants_color(no_color_flag: bool) -> bool:
    return not no_color_flag and "NO_COLOR" not in os.environ


class _TrimmedLines:
    """Writes lines without the trailing blanks rich pads table rows with (files and pipes only)."""

    def __init__(self, file: TextIO) -> None:
        self.file = file
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            self.file.write(line.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        if self._buf:
            self.file.write(self._buf.rstrip())
            self._buf = ""
        self.file.flush()

    def isatty(self) -> bool:
        return False


def console(stream: TextIO | None = None, *, color: bool = True) -> Console:
    """A rich console on `stream` (default: the current sys.stdout, which tests replace)."""
    file = stream if stream is not None else sys.stdout
    tty = file.isatty() if hasattr(file, "isatty") else False
    color = color and "NO_COLOR" not in os.environ
    if not tty:
        file = cast(TextIO, _TrimmedLines(file))
    return Console(file=file, no_color=not color or not tty, highlight=False, emoji=False,
                   width=None if tty else PIPE_WIDTH, color_system="auto" if color and tty else None,
                   force_terminal=tty and color)


def styled(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


# ------------------------------------------------------------------ changes

def _short(arn: str) -> str:
    return arn.rsplit("/", 1)[-1] if "/" in arn else arn.rsplit(":", 1)[-1]


def describe_change(c: dict[str, Any]) -> tuple[str, str, str]:
    """(object, was, will be) for one change, in the words a responder checks against the console."""
    op, p, prev, target = c["operation"], c.get("params") or {}, c.get("previous") or {}, c["target"]
    user, role = p.get("UserName"), p.get("RoleName")
    owner = f"user {user}" if user else (f"role {role}" if role else f"group {p['GroupName']}"
                                         if p.get("GroupName") else _short(target))
    if op in ("iam:UpdateAccessKey", "iam:DeleteAccessKey"):
        who = f" of {owner}" if user else " of root" if target.endswith(":root") else ""
        will = p.get("Status", "deleted") if op == "iam:UpdateAccessKey" else "deleted"
        return f"access key {p.get('AccessKeyId')}{who}", str(prev.get("Status", "?")), str(will)
    if op == "iam:DeleteLoginProfile":
        return f"console password of {owner}", "present", "deleted"
    if op == "iam:DeactivateMFADevice":
        return f"MFA device {p.get('SerialNumber')} of {owner}", "enabled", "deactivated"
    if op in ("iam:PutUserPolicy", "iam:PutRolePolicy"):
        was = "absent" if prev.get("PolicyDocument") in (None, "") else "another document"
        will = "deny-all quarantine" if "quarantine" in str(p.get("PolicyName", "")) else "restored document"
        return f"inline policy {p.get('PolicyName')} on {owner}", was, will
    if op in ("iam:DeleteUserPolicy", "iam:DeleteRolePolicy"):
        return f"inline policy {p.get('PolicyName')} on {owner}", "present", "deleted"
    if op == "iam:RemoveUserFromGroup":
        return f"user {user} in group {p.get('GroupName')}", "member", "removed"
    if op == "iam:AddUserToGroup":
        return f"user {user} in group {p.get('GroupName')}", "not a member", "member"
    if op.startswith("iam:Detach") or op.startswith("iam:Attach"):
        attach = op.startswith("iam:Attach")
        return (f"{p.get('PolicyArn')} on {owner}", "detached" if attach else "attached",
                "attached" if attach else "detached")
    if op == "ecs:UpdateService":
        return (f"service {p.get('cluster')}/{p.get('service')}",
                f"desiredCount {prev.get('desiredCount', '?')}", str(p.get("desiredCount")))
    if op == "ecs:StopTask":
        return f"task {_short(str(p.get('task') or target))} in {p.get('cluster')}", \
            str(prev.get("desiredStatus", "RUNNING")), "STOPPED"
    if op == "ecs:DeleteService":
        return f"service {p.get('cluster')}/{p.get('service')}", str(prev.get("status", "ACTIVE")), "deleted"
    if op == "ecs:DeregisterTaskDefinition":
        return f"task definition {_short(str(p.get('taskDefinition') or target))}", "ACTIVE", "INACTIVE"
    if op == "ecs:DeleteCluster":
        return f"cluster {p.get('cluster')}", str(prev.get("status", "ACTIVE")), "deleted"
    if op == "organizations:CreatePolicy":
        return f"SCP {p.get('Name')}", "absent", "created"
    if op in ("organizations:AttachPolicy", "organizations:DetachPolicy"):
        attach = op.endswith("AttachPolicy")
        return (f"SCP {p.get('PolicyName')} on account {p.get('TargetId')}", "detached" if attach else "attached",
                "attached" if attach else "detached")
    if op == "s3:PutObject":
        return f"s3://{p.get('Bucket')}/{p.get('Key')}", "absent", "written (write-once)"
    shared = [k for k in prev if k in p]
    if shared:
        return (_short(target), ", ".join(f"{k} {prev[k]}" for k in shared),
                ", ".join(f"{k} {p[k]}" for k in shared))
    return _short(target), ", ".join(f"{k}={v}" for k, v in prev.items()) or "-", op.split(":", 1)[-1]


def change_line(c: dict[str, Any]) -> str:
    obj, was, will = describe_change(c)
    return f"{c['operation']} {obj}: {was} -> {will}"


# ------------------------------------------------------------------ documents

_SCOPE_KINDS = ("users", "groups", "roles", "access_keys", "ecs_services", "ecs_tasks")


def _identity_rows(bucket: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(kind[:-1], str(i.get("label", i.get("name", i.get("id", "")))), clean_message(i.get("reason", "")))
            for kind in ("users", "groups", "roles", "access_keys") for i in bucket.get(kind, [])]


def _reversal_row(r: dict[str, Any]) -> tuple[str, str, str]:
    what = r.get("policy_arn") or r.get("policy_name") or r.get("group") or r.get("serial") or ""
    return r["op"], f"{r['kind']} {r['name']} {what}".rstrip(), clean_message(r.get("proof", ""))


def _attribution(out: Console, scope: dict[str, Any]) -> None:
    """Escalated identities, precise reversals and suspects, each with its reason and proof; then
    where attribution came from (or, loudly, that it had no source)."""
    escalated = scope.get("escalated") or {}
    sections = [
        ("Escalated: attributed, but named like a protected principal (gated step contain-escalated)",
         _identity_rows(escalated) + [_reversal_row(r) for r in escalated.get("reversals", [])], "yellow"),
        ("Attacker changes to existing identities, undone precisely (owners keep their own access)",
         [_reversal_row(r) for r in scope.get("reversals", [])], None),
        ("SUSPECTS: only inside the window, not attributed (contained only with --approve contain-suspects)",
         _identity_rows(scope.get("suspects") or {}), "bold yellow"),
    ]
    for title, rows, style in sections:
        if not rows:
            continue
        table = Table(title=title, title_justify="left", title_style=style, box=box.SIMPLE_HEAD)
        table.add_column("kind", no_wrap=True)
        table.add_column("resource", overflow="fold")
        table.add_column("why", overflow="fold")
        for row in rows:
            table.add_row(*row)
        out.print(table)
    attribution = scope.get("attribution") or {}
    if attribution:
        sources = ", ".join(attribution.get("sources", []))
        if sources:
            out.print(f"Attribution: {attribution.get('attacker_events', 0)} attacker event(s) from {sources}")
        else:
            out.print(Text("Attribution: NO CLOUDTRAIL SOURCE was available; identities only inside the window "
                           "are suspects", style="bold red"))


def _manual_first(out: Console, manual: list[dict[str, Any]]) -> None:
    """Live root credentials undo everything else: their manual action is said before anything."""
    for m in manual:
        if m.get("first"):
            out.print(Text(f"MANUAL ACTION FIRST ({m['step']}):", style="bold red"))
            out.print(m["instructions"], markup=False)
            out.print("")


def render_run(out: Console, result: dict[str, Any]) -> None:
    """A run document (plan, paused run or finished run) as a person reads it."""
    status = result["status"]
    _manual_first(out, result.get("manual_actions", []))
    head = Text(f"run {result['run_id']}  incident {result['incident_id']}  playbook {result['playbook']}")
    if result.get("dry_run"):
        head.append("  (dry run)", style="cyan")
    out.print(head)
    scope = result.get("scope") or {}
    if scope:
        table = Table(title="In scope", title_justify="left", box=box.SIMPLE_HEAD, show_lines=False)
        table.add_column("kind", no_wrap=True)
        table.add_column("resource", overflow="fold")
        table.add_column("why", overflow="fold")
        for kind in _SCOPE_KINDS:
            for item in scope.get(kind, []):
                table.add_row(kind[:-1], str(item.get("label", item.get("name", item.get("id", "")))),
                              clean_message(item.get("reason", "")))
        root = scope.get("root") or {}
        if root.get("access_keys_present"):
            table.add_row("root key", str(root.get("access_key_id") or "(id unknown)"),
                          clean_message(root.get("reason", "")))
        out.print(table)
        _attribution(out, scope)
        if scope.get("excluded"):
            left = Table(title="Left alone", title_justify="left", box=box.SIMPLE_HEAD)
            left.add_column("kind", no_wrap=True)
            left.add_column("resource", overflow="fold")
            left.add_column("why not", overflow="fold")
            for item in scope["excluded"]:
                left.add_row(str(item.get("kind", "")), str(item.get("name", "")),
                             clean_message(item.get("reason", "")))
            out.print(left)
    steps = Table(title="Steps", title_justify="left", box=box.SIMPLE_HEAD)
    steps.add_column("status", no_wrap=True)
    steps.add_column("step", no_wrap=True)
    steps.add_column("change / detail", overflow="fold")
    for step in result["steps"]:
        gate = step.get("approval") == "required" and step["status"] in ("planned", "awaiting_approval")
        plan_tag = f"  plan {step['plan_digest']}" if step.get("plan_digest") else ""
        steps.add_row(styled(step["status"]), step["id"],
                      Text(step.get("action", "") + ("  (approval required)" if gate else "") + plan_tag,
                           style="bold"))
        for c in step.get("changes", []):
            steps.add_row(Text("  " + c.get("status", "planned"), style=STATUS_STYLES.get(c.get("status", ""), "")),
                          "", change_line(c))
        for note in step.get("notes") or []:
            steps.add_row("", "", Text(f"note: {clean_message(note)}", style="dim"))
        if step.get("error"):
            steps.add_row("", "", Text(f"error: {summarize_error(step['error'])}", style="red"))
        for v in step.get("verification") or []:
            steps.add_row("", "", Text(f"verify: {summarize_error(v)}", style="yellow"))
    out.print(steps)
    for m in result.get("manual_actions", []):
        if not m.get("first"):
            out.print(Text(f"MANUAL ACTION ({m['step']}):", style="bold magenta"))
            out.print(m["instructions"], markup=False)
    coverage = result.get("coverage") or {}
    if coverage.get("regions"):
        out.print(f"Searched {len(coverage['regions'])} region(s) ({coverage.get('region_source') or 'config'}): "
                  f"{', '.join(coverage['regions'])}", markup=False)
    for g in coverage.get("gaps") or []:
        kind = "NOT SEARCHED" if g.get("blocking", True) else "note"
        out.print(Text(f"{kind}: {g.get('service', '')} in {g.get('region', '')}: "
                       f"{summarize_error(g.get('error', ''))}", style="yellow" if kind == "note" else "bold red"))
    metrics = result.get("metrics") or {}
    if metrics:
        def secs(key: str) -> str:
            return "-" if metrics.get(key) is None else f"{metrics[key]} s"

        out.print(f"API calls: {metrics.get('api_calls_total')}  time to first change: "
                  f"{secs('time_to_first_change_s')}  time to contained: {secs('time_to_contained_s')}  "
                  f"paused: {secs('paused_s')}")
    if result.get("error"):
        out.print(Text(f"refused: {summarize_error(result['error'])}", style="bold red"))
    cancelled = result.get("cancelled")
    if cancelled:
        out.print(Text(f"cancelled by {cancelled.get('by')} at {cancelled.get('at')}: {cancelled.get('reason')}",
                       style="yellow"))
    line = Text("status: ")
    line.append_text(styled(status))
    out.print(line)
    for a in result.get("approvals", []):
        out.print(f"  approval: {a['step']} by {a['by']} at {a['at']} ({a['reason']})", markup=False)
    if status == "awaiting_approval":
        from runner.notify import approve_flags

        waiting = [s for s in result["steps"] if s["status"] == "awaiting_approval"]
        steps_arg = " ".join(approve_flags(s["id"], s.get("plan_digest")) for s in waiting)
        out.print(f"  approve: stanch approve {result['run_id']} {steps_arg} --by NAME --reason TEXT", markup=False)
        out.print(f"       or: stanch approve {result['run_id']} --all-pending --by NAME --reason TEXT", markup=False)
        out.print(f"  then:    stanch resume {result['run_id']}", markup=False)


def render_run_list(out: Console, runs: list[dict[str, Any]]) -> None:
    if not runs:
        out.print("no runs match")
        return
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("run", "status", "incident", "playbook", "dry run", "started (UTC)", "updated (UTC)"):
        table.add_column(col, no_wrap=True)
    table.add_column("note", overflow="fold")
    for r in runs:
        table.add_row(r["run_id"], styled(r["status"]), r["incident_id"], r["playbook"],
                      "yes" if r["dry_run"] else "", r["created_at"], r["updated_at"],
                      f"cancelled: {r['reason']}" if r.get("reason") else "")
    out.print(table)


def render_scorecard(out: Console, card: dict[str, Any]) -> None:
    head = f"stanch drill: {card['drill']}{' (dry run)' if card['dry_run'] else ''}  run {card['run_id']}  status "
    line = Text(head)
    line.append_text(styled(card["run_status"]))
    out.print(line)
    _manual_first(out, card["manual_actions"])
    verb = "Would change" if card["dry_run"] else "Contained"
    done = Table(title=f"{verb} ({len(card['contained'])})", title_justify="left", box=box.SIMPLE_HEAD)
    done.add_column("step", no_wrap=True)
    done.add_column("change", overflow="fold")
    for c in card["contained"]:
        done.add_row(c["step"], change_line(c) if "params" in c else f"{c['operation']} {c['target']}")
    out.print(done)
    left = Table(title=f"Left alone ({len(card['left_alone'])})", title_justify="left", box=box.SIMPLE_HEAD)
    left.add_column("kind", no_wrap=True)
    left.add_column("name", no_wrap=True)
    left.add_column("why not", overflow="fold")
    for e in card["left_alone"]:
        left.add_row(e["kind"], e["name"], clean_message(e["reason"]))
    out.print(left)
    for m in card["manual_actions"]:
        if not m.get("first"):
            out.print(Text(f"Manual action ({m['step']}):", style="bold magenta"))
            out.print(m["instructions"], markup=False)
    m = card["metrics"]
    out.print(f"Time to first containment: {m.get('time_to_first_change_s')} s   time to contained: "
              f"{m.get('time_to_contained_s')} s   API calls: {m.get('api_calls_total')}")
    checks = Table(title="Checks", title_justify="left", box=box.SIMPLE_HEAD)
    checks.add_column("result", no_wrap=True)
    checks.add_column("check", overflow="fold")
    checks.add_column("detail", overflow="fold")
    for c in card["checks"]:
        word = "PASS" if c["ok"] else "FAIL"
        checks.add_row(styled(word), c["check"], "" if c["ok"] else clean_message(c.get("detail") or ""))
    out.print(checks)
    verdict = "DRILL PASSED" if card["passed"] else "DRILL FAILED"
    out.print(Text(verdict, style="bold green" if card["passed"] else "bold red"))


# ------------------------------------------------------------------ the run log on stderr

#: log labels (runner/audit.py) shown at each verbosity; verbose shows every line
_QUIET = ("FAILED", "REFUSED", "UNVERIFIED", "✘", "drift", "MANUAL")
_HIDDEN_NORMALLY = ("  change", "verified", "status", "  search")
_LINE_STYLES = (("FAILED", "bold red"), ("REFUSED", "bold red"), ("UNVERIFIED", "yellow"), ("✘", "red"),
                ("MANUAL", "magenta"), ("waiting", "yellow"), ("drift", "yellow"), ("✔", "green"),
                ("applied", "green"), ("approved", "cyan"))


_SEARCH_STYLES = {"pending": "dim", "running": "blue", "done": "green", "gap": "bold red"}


class DiscoveryProgress:
    """Live state of discovery from its `discovery.search` events: each region x service pending,
    running, done (with how many things it found) or a gap. Rendered as a table while anything is
    still pending or running, then as one summary line. Fed by events only: no clock, no terminal."""

    def __init__(self) -> None:
        self.cells: dict[tuple[str, str], tuple[str, int | None, str]] = {}
        self.services: list[str] = []
        self.regions: list[str] = []

    def feed(self, event: dict[str, Any]) -> bool:
        """Take one run-log event; True when it was a discovery event (the display changed)."""
        if event.get("event") != "discovery.search":
            return False
        region, service, state = str(event.get("region")), str(event.get("service")), str(event.get("state"))
        if service not in self.services:
            self.services.append(service)
        if region not in self.regions:
            self.regions.append(region)
        found = event.get("found")
        self.cells[(region, service)] = (state, found if isinstance(found, int) else None,
                                         str(event.get("error") or ""))
        return True

    @property
    def active(self) -> bool:
        return any(state in ("pending", "running") for state, _, _ in self.cells.values())

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(("pending", "running", "done", "gap"), 0)
        for state, _, _ in self.cells.values():
            out[state] = out.get(state, 0) + 1
        return out

    def table(self) -> Table:
        c = self.counts()
        table = Table(box=box.SIMPLE_HEAD, title=f"discovery: {c['done'] + c['gap']}/{len(self.cells)} searched, "
                                                 f"{c['running']} running, {c['gap']} gap(s)", title_justify="left")
        table.add_column("region", no_wrap=True)
        for service in self.services:
            table.add_column(service, no_wrap=True)
        order = sorted(self.regions, key=lambda r: (r != "global", self.regions.index(r)))
        for region in order:
            row = [Text(region)]
            for service in self.services:
                state, found, _ = self.cells.get((region, service), ("", None, ""))
                text = {"pending": "·", "running": "…", "gap": "✘ gap",
                        "done": f"✔ {found}" if found is not None else "✔"}.get(state, "")
                row.append(Text(text, style=_SEARCH_STYLES.get(state, "")))
            table.add_row(*row)
        return table

    def summary(self) -> Text:
        """One line per service once discovery is over: regions searched, what was found, gaps."""
        parts = []
        for service in self.services:
            cells = [v for (_, s), v in self.cells.items() if s == service]
            found = sum(f or 0 for st, f, _ in cells if st == "done")
            gaps = sum(1 for st, _, _ in cells if st == "gap")
            gap = f" ({gaps} gap)" if gaps else ""
            parts.append(f"{service} {len(cells) - gaps}/{len(cells)} found {found}{gap}")
        return Text("searched: " + "; ".join(parts), style="dim")


class LogStream:
    """The stream the run log writes its human lines to: filtered by verbosity, coloured on a
    terminal, and with a spinner naming the latest event while steps run (stderr only). On a
    terminal (not with -q), the spinner also shows discovery's progress per region and service."""

    def __init__(self, options: UiOptions, stream: TextIO | None = None) -> None:
        self.options = options
        self.console = console(stream if stream is not None else sys.stderr, color=options.color)
        self._status: Status | None = None
        self._lock = threading.Lock()
        self._buf = ""
        self.discovery = DiscoveryProgress()
        self._latest = "starting…"

    def observe(self, event: dict[str, Any]) -> None:
        """A structured run-log event (runner/audit.py EventSink), before its line is written."""
        with self._lock:
            if self.discovery.feed(event) and self._status is not None:
                self._status.update(self.renderable())

    def renderable(self) -> RenderableType:
        """What the spinner shows: discovery's table while it runs (then its summary), and the latest event."""
        working = Text(f"working: {self._latest}", style="dim")
        if self.options.quiet or not self.discovery.cells:
            return working
        if self.discovery.active:
            return Group(self.discovery.table(), working)
        return Group(self.discovery.summary(), working)

    def __enter__(self) -> LogStream:
        if self.console.is_terminal:
            self._status = self.console.status("starting…", spinner="dots")
            self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def as_text(self) -> TextIO:
        return cast(TextIO, self)  # a text stream in every way the run log uses (write, flush)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the spinner while a person answers a prompt on the same terminal."""
        if self._status is None:
            yield
            return
        self._status.stop()
        try:
            yield
        finally:
            self._status.start()

    def _label(self, line: str) -> str:
        parts = line.split(None, 2)
        return parts[1] if len(parts) > 1 else ""

    def _shown(self, line: str) -> bool:
        if self.options.verbosity >= 2:
            return True
        label = self._label(line)
        if self.options.quiet:
            return label in _QUIET
        return not line[9:].startswith(_HIDDEN_NORMALLY)

    def write(self, text: str) -> int:
        with self._lock:
            self._buf += text
            while "\n" in self._buf:
                line, self._buf = self._buf.split("\n", 1)
                if line and not line[9:].startswith("  search"):
                    self._latest = line[9:].strip()[:100]
                    if self._status is not None:
                        self._status.update(self.renderable())
                if line and self._shown(line):
                    label = self._label(line)
                    style = next((s for word, s in _LINE_STYLES if label == word), "")
                    self.console.print(Text(line, style=style), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        self.console.file.flush()

    def isatty(self) -> bool:
        return self.console.is_terminal


def render_evidence(out: Console, evidence: list[dict[str, Any]]) -> None:
    """CloudTrail events attributed to the attacker (stanch detect --output text)."""
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("time (UTC)", "actor", "event", "source IP", "detail"):
        table.add_column(col, no_wrap=col != "detail", overflow="fold")
    for e in evidence:
        table.add_row(str(e.get("time", "")), str(e.get("actor", "")), str(e.get("event", "")),
                      str(e.get("source_ip") or ""), clean_message(str(e.get("detail") or "")))
    out.print(table)
