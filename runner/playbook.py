"""Playbooks: YAML data (safe loading only) validated into a model. Validation reports every
problem at once, each with its location and a did-you-mean suggestion where one fits."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import TypeAdapter, ValidationError

from actions.registry import Registry
from runner.errors import InputError, Problem, did_you_mean
from runner.templates import malformed, references

MAX_PLAYBOOK_BYTES = 262_144
#: YAML bounds: aliases (`*name`), nesting depth, and the node count once every alias is expanded
#: (an alias bomb is a few hundred bytes that expand to billions of nodes)
MAX_YAML_ALIASES = 100
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 20_000
TOP_KEYS = ("version", "name", "description", "kinds", "steps")
STEP_KEYS = ("id", "action", "with", "needs", "approval", "on_error", "description")
_STEP_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class Step:
    id: str
    action: str
    with_: dict[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    #: auto; required (a person, --approve STEP, --approve-all or config pre-approval); explicit (only a
    #: person at the prompt, --approve STEP or `stanch approve --step`: never --approve-all or config)
    approval: Literal["auto", "required", "explicit"] = "auto"
    on_error: Literal["stop", "continue"] = "stop"
    description: str = ""


@dataclass(frozen=True)
class Playbook:
    name: str
    description: str
    steps: tuple[Step, ...]
    source: str
    kinds: tuple[str, ...] = ()
    #: the YAML it was read from: a run keeps it, so a resume finishes the playbook it started
    text: str = ""

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def mermaid(self) -> str:
        """The steps and their dependencies as a mermaid flowchart."""
        lines = ["flowchart TD"]
        for s in self.steps:
            label = f"{s.id}<br/><small>{s.action}</small>"
            shape = f'{{{{"{label}"}}}}' if s.approval != "auto" else f'["{label}"]'
            lines.append(f"    {_node(s.id)}{shape}")
        for s in self.steps:
            lines += [f"    {_node(n)} --> {_node(s.id)}" for n in s.needs]
        lines.append("    classDef gated fill:#fff3cd,stroke:#b58900")
        gated = [_node(s.id) for s in self.steps if s.approval != "auto"]
        if gated:
            lines.append(f"    class {','.join(gated)} gated")
        return "\n".join(lines) + "\n"


def _node(step_id: str) -> str:
    return step_id.replace("-", "_")


def packaged_playbooks() -> dict[str, str]:
    """Packaged playbook names -> their YAML text."""
    out: dict[str, str] = {}
    for entry in resources.files("playbooks").iterdir():
        if entry.name.endswith((".yaml", ".yml")):
            out[entry.name.rsplit(".", 1)[0]] = entry.read_text(encoding="utf-8")
    return dict(sorted(out.items()))


class YamlLimitError(yaml.YAMLError):
    """The document is over one of the YAML bounds."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a cap on aliases and on nesting depth while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise YamlLimitError(f"more than {MAX_YAML_ALIASES} aliases")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YamlLimitError(f"nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in the document once every alias is expanded (shared nodes counted each time they are used)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once; the constructor keeps it a reference
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = size
    return size


def compose_bounded(text: str) -> yaml.Node | None:
    """Parse YAML into nodes within the bounds (size, aliases, depth, expanded size) or raise."""
    if len(text) > MAX_PLAYBOOK_BYTES:
        raise YamlLimitError(f"larger than {MAX_PLAYBOOK_BYTES} bytes")
    loader = _BoundedLoader(text)
    try:
        node: yaml.Node | None = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
            raise YamlLimitError(f"expands to more than {MAX_YAML_NODES} values once its aliases are resolved")
        return node
    finally:
        loader.dispose()


def load_yaml_bounded(text: str) -> Any:
    """yaml.safe_load, refusing in well under a second what is too big, too deep or an alias bomb."""
    node = compose_bounded(text)
    if node is None:
        return None
    loader = _BoundedLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _step_lines(text: str) -> dict[int, int]:
    """Line number (1-based) of each entry of the top-level `steps` list, when it parses."""
    try:
        root = compose_bounded(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(root, yaml.MappingNode):
        return {}
    for key, value in root.value:
        if getattr(key, "value", None) == "steps" and isinstance(value, yaml.SequenceNode):
            return {i: item.start_mark.line + 1 for i, item in enumerate(value.value)}
    return {}


def load_playbook(ref: str, registry: Registry) -> Playbook:
    """Load a playbook by path, or by the name of a packaged playbook."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise InputError(ref, [Problem("", "no such playbook file")])
        if path.stat().st_size > MAX_PLAYBOOK_BYTES:
            raise InputError(ref, [Problem("", f"larger than the {MAX_PLAYBOOK_BYTES} byte playbook limit")])
        return parse_playbook(path.read_text(encoding="utf-8", errors="replace"), ref, registry)
    packaged = packaged_playbooks()
    if ref not in packaged:
        hint = did_you_mean(ref, packaged)
        raise InputError(ref, [Problem("", f"no playbook file or packaged playbook named '{ref}'{hint} "
                                           f"(packaged: {', '.join(packaged)})")])
    return parse_playbook(packaged[ref], f"playbooks/{ref}.yaml", registry)


def parse_playbook(text: str, source: str, registry: Registry) -> Playbook:
    try:
        doc = load_yaml_bounded(text)
    except YamlLimitError as exc:
        raise InputError(source, [Problem("", f"YAML refused: {exc}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise InputError(source, [Problem(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    return dataclasses.replace(validate_playbook(doc, source, registry, _step_lines(text)), text=text)


def validate_playbook(
    doc: Any, source: str, registry: Registry, lines: dict[int, int] | None = None
) -> Playbook:
    lines = lines or {}
    problems: list[Problem] = []
    if not isinstance(doc, dict):
        raise InputError(source, [Problem("", "a playbook is a mapping with 'name' and 'steps'")])
    for key in doc:
        if key not in TOP_KEYS:
            problems.append(Problem(str(key), f"unknown key{did_you_mean(str(key), TOP_KEYS) or '; remove it'}"))
    if doc.get("version", 1) != 1:
        problems.append(Problem("version", f"unsupported version {doc.get('version')!r}; this stanch reads 1"))
    name = doc.get("name")
    if not isinstance(name, str) or not _STEP_ID.match(name):
        problems.append(Problem("name", "required: a lower-case name like 'cryptojacking-root-key'"))
    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        problems.append(Problem("steps", "required: a non-empty list of steps"))
        raise InputError(source, problems)

    ids: list[str] = []
    for i, raw in enumerate(raw_steps):
        sid = raw.get("id") if isinstance(raw, dict) else None
        ids.append(sid if isinstance(sid, str) else f"#{i}")
    publishers: dict[str, str] = {}
    for i, raw in enumerate(raw_steps):
        if isinstance(raw, dict) and isinstance(raw.get("action"), str):
            cls = registry.get(raw["action"])
            if cls is not None and cls.publishes:
                publishers.setdefault(cls.publishes, ids[i])

    steps: list[Step] = []
    for i, raw in enumerate(raw_steps):
        bits = ([] if ids[i].startswith("#") else [f"id={ids[i]}"]) + ([f"line {lines[i]}"] if i in lines else [])
        where = f"steps[{i}]" + (f" ({', '.join(bits)})" if bits else "")
        step = _validate_step(raw, i, where, ids, publishers, registry, problems)
        if step is not None:
            steps.append(step)
    dupes = sorted({s for s in ids if ids.count(s) > 1})
    for d in dupes:
        problems.append(Problem("steps", f"step id '{d}' is used more than once; ids must be unique"))
    if not problems:
        cycle = _find_cycle(steps)
        if cycle:
            problems.append(Problem("steps", f"needs form a cycle: {' -> '.join(cycle)}"))
    if problems:
        raise InputError(source, problems)
    kinds = doc.get("kinds") or []
    return Playbook(
        name=str(name), description=str(doc.get("description", "")), steps=tuple(steps),
        source=source, kinds=tuple(str(k) for k in kinds),
    )


def _validate_step(
    raw: Any, i: int, where: str, ids: list[str], publishers: dict[str, str],
    registry: Registry, problems: list[Problem],
) -> Step | None:
    start = len(problems)
    if not isinstance(raw, dict):
        problems.append(Problem(where, "a step is a mapping with 'id' and 'action'"))
        return None
    for key in raw:
        if key not in STEP_KEYS:
            problems.append(Problem(where, f"unknown key '{key}'{did_you_mean(str(key), STEP_KEYS) or '; remove it'}"))
    sid = raw.get("id")
    if isinstance(sid, bool):
        problems.append(Problem(where, f"'id' reads as the boolean {sid} (YAML takes on/off/yes/no as booleans); "
                                       "quote it or choose another id"))
    elif not isinstance(sid, str) or not _STEP_ID.match(sid):
        problems.append(Problem(where, "'id' is required: lower-case letters, digits and dashes"))
    action_name = raw.get("action")
    cls = registry.get(action_name) if isinstance(action_name, str) else None
    if not isinstance(action_name, str):
        problems.append(Problem(where, "'action' is required; `stanch playbook list` shows the actions"))
    elif cls is None:
        problems.append(Problem(where, f"unknown action '{action_name}'{did_you_mean(action_name, registry.names())}"))
    with_ = raw.get("with") or {}
    if not isinstance(with_, dict):
        problems.append(Problem(where, "'with' must be a mapping of parameter names to values"))
        with_ = {}
    implicit: set[str] = set()
    for bad in malformed(with_):
        problems.append(Problem(where, f"template {bad!r} is not a plain '{{{{ path }}}}' substitution"))
    for ref in references(with_):
        root, _, rest = ref.partition(".")
        if root == "incident":
            continue
        if root == "steps":
            target = rest.split(".", 1)[0]
            if target not in ids:
                problems.append(Problem(where, f"template '{{{{ {ref} }}}}' names step '{target}', "
                                               f"which does not exist{did_you_mean(target, ids)}"))
            else:
                implicit.add(target)
        elif root in publishers:
            implicit.add(publishers[root])
        else:
            roots = ["incident", "steps", *publishers]
            problems.append(Problem(where, f"template '{{{{ {ref} }}}}': unknown root '{root}'"
                                           f"{did_you_mean(root, roots)} (valid: {', '.join(roots)})"))
    if cls is not None:
        fields = cls.params_model.model_fields
        for pname, value in with_.items():
            if pname not in fields:
                takes = ", ".join(f"'{f}'" for f in fields) or "no parameters"
                problems.append(Problem(where, f"{cls.name} takes no parameter '{pname}'"
                                               f"{did_you_mean(str(pname), fields) or ''}; it takes {takes}"))
            elif not list(references(value)):
                try:
                    TypeAdapter(fields[pname].annotation or Any).validate_python(value)
                except ValidationError as exc:
                    problems.append(Problem(where, f"{cls.name} parameter '{pname}': {exc.errors()[0]['msg']}"))
        for fname, finfo in fields.items():
            if finfo.is_required() and fname not in with_:
                problems.append(Problem(where, f"{cls.name} needs parameter '{fname}'"))
    needs = raw.get("needs") or []
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        problems.append(Problem(where, "'needs' must be a list of step ids"))
        needs = []
    for n in needs:
        if n not in ids:
            problems.append(Problem(where, f"needs unknown step '{n}'{did_you_mean(n, ids)}"))
        elif n == sid:
            problems.append(Problem(where, "a step cannot need itself"))
    approval = raw.get("approval", "auto")
    if approval not in ("auto", "required", "explicit"):
        problems.append(Problem(where, f"approval must be 'auto', 'required' or 'explicit', not {approval!r}"))
    on_error = raw.get("on_error", "stop")
    if on_error not in ("stop", "continue"):
        problems.append(Problem(where, f"on_error must be 'stop' or 'continue', not {on_error!r}"))
    if len(problems) > start:
        return None
    implicit.discard(str(sid))
    all_needs = tuple(dict.fromkeys([*needs, *sorted(implicit)]))
    return Step(id=str(sid), action=str(action_name), with_=dict(with_), needs=all_needs,
                approval=approval, on_error=on_error, description=str(raw.get("description", "")))


def _find_cycle(steps: list[Step]) -> list[str]:
    graph = {s.id: list(s.needs) for s in steps}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for s in graph:
        if s not in state:
            found = visit(s)
            if found:
                return found
    return []
