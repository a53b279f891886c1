"""Playbooks: safe YAML, validation with locations and suggestions, templates, graphs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from actions.registry import builtin_registry
from runner.cli import app
from runner.errors import InputError
from runner.playbook import load_playbook, packaged_playbooks, parse_playbook
from runner.templates import TemplateError, render

REG = builtin_registry()


def bad(text: str) -> list[str]:
    with pytest.raises(InputError) as info:
        parse_playbook(text, "pb.yaml", REG)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("name", list(packaged_playbooks()))
def test_packaged_playbooks_are_valid(name: str) -> None:
    pb = load_playbook(name, REG)
    assert pb.name == name
    assert pb.steps[0].action == "scope.discover"


def test_reference_playbook_gates_compute_and_derives_needs_from_templates() -> None:
    pb = load_playbook("cryptojacking-root-key", REG)
    assert pb.step("deactivate-keys").needs == ("discover-scope",)
    assert pb.step("scale-miner-services").approval == "required"
    assert pb.step("stop-miner-tasks").needs == ("scale-miner-services", "discover-scope")
    assert pb.step("deactivate-keys").approval == "auto"


def test_validate_names_misspelled_action_and_parameter(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(
        "version: 1\nname: x\nsteps:\n"
        "  - id: discover\n    action: scope.discover\n"
        "  - id: cut-credentials\n    action: iam.deactivate-acess-keys\n"
        "  - id: stop-service\n    action: ecs.scale-services-to-zero\n    with: {servce: '{{ scope.ecs_services }}'}\n"
    )
    result = CliRunner().invoke(app, ["playbook", "validate", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert ("steps[1] (id=cut-credentials, line 6): unknown action 'iam.deactivate-acess-keys'; "
            "did you mean 'iam.deactivate-access-keys'?") in result.output
    assert ("steps[2] (id=stop-service, line 8): ecs.scale-services-to-zero takes no parameter 'servce'; "
            "did you mean 'services'?") in result.output
    assert "needs parameter 'services'" in result.output
    assert "3 problems" in result.output


def test_structural_problems_all_reported() -> None:
    found = bad(
        "name: x\nnmae: y\nsteps:\n"
        "  - id: a\n    action: scope.discover\n    needs: [b, zz]\n    approval: maybe\n"
        "  - id: b\n    action: scope.discover\n    needs: [a]\n"
        "  - id: a\n    action: scope.discover\n    on_eror: stop\n"
    )
    text = "\n".join(found)
    assert "unknown key; did you mean 'name'?" in text
    assert "needs unknown step 'zz'" in text
    assert "approval must be 'auto', 'required' or 'explicit'" in text
    assert "unknown key 'on_eror'; did you mean 'on_error'?" in text
    assert "step id 'a' is used more than once" in text


def test_cycles_are_reported() -> None:
    found = bad("name: x\nsteps:\n  - id: a\n    action: scope.discover\n    needs: [b]\n"
                "  - id: b\n    action: scope.discover\n    needs: [a]\n")
    assert any("cycle" in p for p in found)


def test_templates_only_substitute_known_roots() -> None:
    found = bad("name: x\nsteps:\n  - id: d\n    action: scope.discover\n"
                "  - id: k\n    action: iam.deactivate-access-keys\n"
                "    with: {access_keys: '{{ scop.access_keys }}'}\n"
                "  - id: m\n    action: iam.remove-from-groups\n"
                "    with: {users: '{{ scope.users | map(attribute=\"name\") }}'}\n")
    assert any("unknown root 'scop'; did you mean 'scope'?" in p for p in found)
    assert any("is not a plain" in p for p in found)


def test_literal_parameter_types_are_checked() -> None:
    found = bad("name: x\nsteps:\n  - id: k\n    action: iam.deactivate-access-keys\n    with: {access_keys: 5}\n")
    assert any("parameter 'access_keys'" in p for p in found)


def test_unsafe_yaml_tags_are_not_executed() -> None:
    found = bad("name: x\nsteps: !!python/object/apply:os.system ['echo pwned']\n")
    assert any("not valid YAML" in p for p in found)


def test_render_keeps_types_and_refuses_missing_paths() -> None:
    scope = {"scope": {"users": [{"name": "a"}]}, "incident": {"id": "INC-1"}}
    assert render({"u": "{{ scope.users }}", "r": "stop: {{ incident.id }}"}, scope) == {
        "u": [{"name": "a"}], "r": "stop: INC-1"}
    assert render("{{ scope.users.0.name }}", scope) == "a"
    with pytest.raises(TemplateError, match=r"nothing at 'scope\.groups'"):
        render("{{ scope.groups }}", scope)


def test_graph_prints_mermaid_for_steps_and_lifecycle() -> None:
    runner = CliRunner()
    steps = runner.invoke(app, ["playbook", "graph", "cryptojacking-root-key"])
    assert steps.exit_code == 0
    assert steps.output.startswith("flowchart TD")
    assert "scale_miner_services --> stop_miner_tasks" in steps.output
    life = runner.invoke(app, ["playbook", "graph", "--lifecycle"])
    assert "awaiting_approval --> planning: plan" in life.output
    assert "verifying --> contained: contain" in life.output


def test_unknown_packaged_playbook_suggests() -> None:
    result = CliRunner().invoke(app, ["playbook", "graph", "cryptojacking-rootkey"])
    assert result.exit_code == 2
    assert "did you mean 'cryptojacking-root-key'?" in result.output


def test_playbook_list_shows_actions_with_risk() -> None:
    result = CliRunner().invoke(app, ["playbook", "list"])
    assert result.exit_code == 0
    assert "iam.deactivate-access-keys" in result.output and "[reversible]" in result.output
    assert "ecs.delete-clusters" in result.output and "[destructive]" in result.output
