"""Findings are checked against their schema before any of it is trusted; the same GuardDuty
finding is one incident however it arrives; the incident window is bounded.

Every real sample (tests/data/samples and ../shared/samples) is the valid baseline; the findings
built here use other accounts, regions, finding ids and names than the samples and the reference."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.config import Config, DiscoverySection, load_config
from runner.errors import InputError
from runner.findings import asff_problems, guardduty_finding_id, guardduty_problems
from runner.incident import Incident, validate_incident
from runner.intake import IntakeOptions, load_any, settle_window, to_incident

# the repository's copy, and the shared originals when this checkout sits next to them
SAMPLE_DIRS = [Path(__file__).parent / "data" / "samples", *[
    p / "shared" / "samples" for p in Path(__file__).resolve().parents if (p / "shared" / "samples").is_dir()][:1]]
CONFIG = load_config()
ALLOW = IntakeOptions(allow_sample=True, allow_archived=True)
ACCOUNT, REGION = "210987654321", "eu-west-3"
DETECTOR, FINDING_ID = "5ac9f0d1e2b3a4c5d6e7f8a9b0c1d2e3", "e4c8a1f07d2b4c6e9a3f5b7d1c0e2a46"
GD_ARN = f"arn:aws:guardduty:{REGION}:{ACCOUNT}:detector/{DETECTOR}/finding/{FINDING_ID}"


def finding(**changes: Any) -> dict[str, Any]:
    """A GuardDuty finding (EventBridge `detail`) of an ECS miner in another account and region."""
    doc: dict[str, Any] = {
        "schemaVersion": "2.0", "accountId": ACCOUNT, "region": REGION, "partition": "aws",
        "id": FINDING_ID, "arn": GD_ARN, "type": "CryptoCurrency:Runtime/BitcoinTool.B",
        "resource": {"resourceType": "ECSCluster", "ecsClusterDetails": {
            "name": "ledger-sync", "arn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/ledger-sync",
            "taskDetails": {"arn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/ledger-sync/0a1b2c", "group": "service:indexer",
                            "containers": [{"name": "app", "image": "quay.io/acme/indexer:4.2"}]}}},
        "service": {"serviceName": "guardduty", "detectorId": DETECTOR, "eventFirstSeen": "2026-03-02T08:15:00.000Z",
                    "eventLastSeen": "2026-03-02T09:40:00.000Z", "archived": False, "count": 3},
        "severity": 8.0, "createdAt": "2026-03-02T08:20:00.000Z", "updatedAt": "2026-03-02T09:45:00.000Z",
        "title": "Bitcoin-related activity from an ECS task.",
    }
    doc.update(changes)
    return doc


def event(detail: dict[str, Any], account: str = ACCOUNT) -> dict[str, Any]:
    return {"version": "0", "id": "0d5c1a9e-7f00-4b1e-9d2b-6a5e8c7f4b3a", "detail-type": "GuardDuty Finding",
            "source": "aws.guardduty", "account": account, "time": detail.get("updatedAt"), "region": REGION,
            "resources": [], "detail": detail}


def pascal(v: Any) -> Any:
    if isinstance(v, dict):
        return {(k[:1].upper() + k[1:]): pascal(x) for k, x in v.items()}
    if isinstance(v, list):
        return [pascal(x) for x in v]
    return v


def asff(gd: dict[str, Any]) -> dict[str, Any]:
    """The Security Hub copy of a GuardDuty finding, as GuardDuty sends it on (ASFF)."""
    return {
        "SchemaVersion": "2018-10-08", "Id": gd["arn"],
        "ProductArn": f"arn:aws:securityhub:{gd['region']}::product/aws/guardduty",
        "GeneratorId": gd["arn"].split("/finding/")[0], "AwsAccountId": gd["accountId"], "Region": gd["region"],
        "Types": ["TTPs/Command and Control/CryptoCurrency:Runtime-BitcoinTool.B"],
        "FirstObservedAt": gd["service"]["eventFirstSeen"], "CreatedAt": gd["createdAt"], "UpdatedAt": gd["updatedAt"],
        "Severity": {"Label": "HIGH", "Normalized": 80}, "Title": gd["title"],
        "ProductFields": {"aws/guardduty/service/archived": "false", "aws/guardduty/service/count": "3",
                          "aws/guardduty/service/detectorId": DETECTOR,
                          "aws/securityhub/FindingId": f"arn:aws:securityhub:{gd['region']}::product/aws/guardduty/{gd['arn']}",
                          "aws/securityhub/ProductName": "GuardDuty"},
        "Resources": [{"Type": "AwsEcsCluster", "Id": gd["resource"]["ecsClusterDetails"]["arn"], "Region": gd["region"],
                       "Details": {"AwsEcsCluster": {"ClusterName": "ledger-sync"}}}],
        "RecordState": "ACTIVE", "Workflow": {"Status": "NEW"},
    }


def sh_event(findings: list[dict[str, Any]], account: str = "999988887777") -> dict[str, Any]:
    # delivered in a Security Hub administrator account: `account` is not the finding's
    return {"version": "0", "id": "sh-2", "detail-type": "Security Hub Findings - Imported", "source": "aws.securityhub",
            "account": account, "time": "2026-03-02T09:46:00Z", "region": REGION, "resources": [],
            "detail": {"findings": findings}}


def problems(doc: Any, options: IntakeOptions = ALLOW) -> list[tuple[str, str]]:
    with pytest.raises(InputError) as exc:
        to_incident("finding.json", doc, CONFIG, options)
    return [(p.path, p.message) for p in exc.value.problems]


def paths(doc: Any) -> list[str]:
    return [p for p, _ in problems(doc)]


def drop(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    cur = out
    for key in keys[:-1]:
        cur = cur[key]
    del cur[keys[-1]]
    return out


# ------------------------------------------------------------------ the real samples stay valid

def _sample_docs() -> list[tuple[str, Any]]:
    out = []
    for base in SAMPLE_DIRS:
        for path in sorted(base.glob("guardduty/*.detail.json")):
            detail = json.loads(path.read_text())
            out += [(f"{path} (event)", event(detail, detail["accountId"])), (f"{path} (bare)", detail),
                    (f"{path} (boto3)", {"Findings": [pascal(detail)]})]
        for path in sorted(base.glob("securityhub/*.json")):
            doc = json.loads(path.read_text())
            if isinstance(doc, dict) and ("ProductArn" in doc or "detail" in doc):
                out.append((str(path), doc))
    return out


SAMPLES = _sample_docs()


def test_there_are_real_samples_to_check() -> None:
    assert len(SAMPLES) >= len(SAMPLE_DIRS) * (4 * 3 + 2)


@pytest.mark.parametrize(("name", "doc"), SAMPLES, ids=[n.split("samples/")[-1] for n, _ in SAMPLES])
def test_every_real_sample_is_still_accepted(name: str, doc: Any) -> None:
    try:
        inc = to_incident(name, doc, CONFIG, ALLOW)
    except InputError as exc:
        # one published sample has its account id shortened to '123456789': exactly that is refused
        assert {p.path.rsplit(".", 1)[-1] for p in exc.problems} <= {"accountId", "AccountId", "account"}, exc.message
        inc = to_incident(name, json.loads(json.dumps(doc).replace('"123456789"', '"123456789012"')), CONFIG, ALLOW)
    assert inc.account_id and inc.window_start and inc.source is not None


# ------------------------------------------------------------------ GuardDuty: every form, every required field

GD_FORMS: dict[str, tuple[Callable[[dict[str, Any]], Any], Callable[[str], str]]] = {
    "event": (event, lambda p: f"detail.{p}"),
    "bare": (lambda f: f, lambda p: p),
    "boto3": (lambda f: {"Findings": [pascal(f)]}, lambda p: "Findings[0]." + ".".join(k[:1].upper() + k[1:]
                                                                                        for k in p.split("."))),
    "boto3-bare": (pascal, lambda p: ".".join(k[:1].upper() + k[1:] for k in p.split("."))),
}
GD_REQUIRED = ["resource", "type", "accountId", "region", "service.eventFirstSeen", "id"]


@pytest.mark.parametrize("form", list(GD_FORMS))
@pytest.mark.parametrize("field", GD_REQUIRED)
def test_guardduty_finding_without_a_required_field_names_its_path(form: str, field: str) -> None:
    wrap, path_of = GD_FORMS[form]
    assert paths(wrap(drop(finding(), *field.split(".")))) == [path_of(field)]


@pytest.mark.parametrize("form", list(GD_FORMS))
def test_guardduty_problems_are_all_reported_at_once(form: str) -> None:
    wrap, path_of = GD_FORMS[form]
    doc = drop(drop(finding(accountId=210987654321, region="Paris"), "resource"), "service", "eventFirstSeen")
    found = dict(problems(wrap(doc)))
    assert set(found) == {path_of(p) for p in ("accountId", "region", "resource", "service.eventFirstSeen")}
    assert "12-digit" in found[path_of("accountId")] and "210987654321" in found[path_of("accountId")]
    assert found[path_of("resource")] == "required field is missing"


@pytest.mark.parametrize(("field", "value", "says"), [
    ("resource", {}, "required field is missing"),  # resource.resourceType
    ("resource", "ECSCluster", "JSON object"),
    ("type", "", "non-empty string"),
    ("accountId", "21098765432", "12-digit"),
    ("service", {"eventFirstSeen": "last tuesday"}, "not a timestamp"),
    ("service", {"eventFirstSeen": True}, "must be a timestamp"),
])
def test_guardduty_wrong_values_are_refused_with_the_path(field: str, value: Any, says: str) -> None:
    [(path, message)] = problems(event(finding(**{field: value})))
    assert path.startswith(f"detail.{field}") and says in message


def test_a_bare_finding_without_resource_is_still_recognised_as_guardduty() -> None:
    # the case: accepted before because nothing checked `resource`
    assert paths(drop(finding(type="Policy:IAMUser/RootCredentialUsage"), "resource")) == ["resource"]


# ------------------------------------------------------------------ Security Hub

ASFF_FORMS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "bare": (lambda a: a, ""),
    "event": (lambda a: sh_event([a]), "detail.findings[0]."),
    "list": (lambda a: {"Findings": [a]}, "Findings[0]."),
}


@pytest.mark.parametrize("form", list(ASFF_FORMS))
@pytest.mark.parametrize("field", ["Resources", "AwsAccountId", "Types"])
def test_asff_finding_without_a_required_field_names_its_path(form: str, field: str) -> None:
    wrap, prefix = ASFF_FORMS[form]
    assert paths(wrap(drop(asff(finding()), field))) == [prefix + field]


@pytest.mark.parametrize(("field", "value", "path"), [
    ("Resources", [], "Resources"),
    ("Resources", [{"Id": "x"}], "Resources[0].Type"),
    ("Types", [], "Types"),
    ("Types", ["", 3], "Types"),
    ("AwsAccountId", "not-an-account", "AwsAccountId"),
])
def test_asff_wrong_values_are_refused_with_the_path(field: str, value: Any, path: str) -> None:
    assert paths({**asff(finding()), field: value}) == [path]


def test_asff_copy_naming_another_account_than_its_guardduty_finding_is_refused() -> None:
    copy_ = {**asff(finding()), "AwsAccountId": "123412341234"}
    found = dict(problems(sh_event([copy_])))
    assert set(found) == {"detail.findings[0].Id", "detail.findings[0].GeneratorId",
                          'detail.findings[0].ProductFields["aws/securityhub/FindingId"]'}
    assert all(ACCOUNT in m and "123412341234" in m for m in found.values())


def test_asff_copy_pointing_at_two_guardduty_findings_is_refused() -> None:
    copy_ = asff(finding())
    copy_["ProductFields"]["aws/securityhub/FindingId"] = copy_["ProductFields"]["aws/securityhub/FindingId"].replace(
        FINDING_ID, "0" * 32)
    [(path, message)] = problems(copy_)
    assert path == "ProductFields" and "more than one GuardDuty finding" in message


def test_guardduty_envelope_naming_another_account_is_refused() -> None:
    [(path, message)] = problems(event(finding(), account="123412341234"))
    assert path == "account" and "detail.accountId" in message and ACCOUNT in message


def test_guardduty_finding_whose_arn_names_another_account_is_refused() -> None:
    [(path, message)] = problems(finding(arn=GD_ARN.replace(ACCOUNT, "123412341234")))
    assert path == "arn" and "accountId" in message


def test_security_hub_envelope_from_an_administrator_account_is_accepted() -> None:
    # Security Hub delivers members' findings in the administrator (aggregation) account; the real
    # 2018 custom-action sample has the same shape
    inc = to_incident("sh", sh_event([asff(finding())], account="999988887777"), CONFIG)
    assert inc.account_id == ACCOUNT and inc.region == REGION


def test_malformed_input_problems_are_unit_checkable() -> None:
    assert guardduty_problems(finding(), "detail") == []
    assert asff_problems(asff(finding()), "") == []
    assert [p.path for p in guardduty_problems("nope", "detail")] == ["detail"]


# ------------------------------------------------------------------ one finding, one incident

def test_guardduty_finding_and_its_security_hub_copy_are_one_incident() -> None:
    gd = finding()
    ids = {
        "event": to_incident("e", event(gd), CONFIG).id,
        "bare": to_incident("b", gd, CONFIG).id,
        "boto3": to_incident("p", {"Findings": [pascal(gd)]}, CONFIG).id,
        "asff": to_incident("a", asff(gd), CONFIG).id,
        "sh-event": to_incident("s", sh_event([asff(gd)]), CONFIG).id,
        "asff-list": to_incident("l", {"Findings": [asff(gd)]}, CONFIG).id,
    }
    assert set(ids.values()) == {f"GD-{FINDING_ID}"}, ids


def test_security_hub_copy_keyed_from_product_fields_when_its_id_is_not_guardduty_arn() -> None:
    copy_ = {**asff(finding()), "Id": "sh-internal-0001"}
    assert guardduty_finding_id(copy_) == FINDING_ID
    assert to_incident("a", copy_, CONFIG).id == f"GD-{FINDING_ID}"


def test_republished_finding_is_the_same_incident() -> None:
    first = finding()
    again = finding(updatedAt="2026-03-02T15:45:00.000Z",
                    service={**first["service"], "count": 4, "eventLastSeen": "2026-03-02T15:40:00.000Z"})
    one, two = to_incident("1", event(first), CONFIG), to_incident("2", event(again), CONFIG)
    assert one.id == two.id and two.detected_at > one.detected_at


def test_other_findings_are_other_incidents() -> None:
    other = finding(id="9" * 32, arn=GD_ARN.replace(FINDING_ID, "9" * 32))
    assert to_incident("o", event(other), CONFIG).id != to_incident("g", event(finding()), CONFIG).id
    inspector = {**asff(finding()), "Id": f"arn:aws:inspector2:{REGION}:{ACCOUNT}:finding/abc123",
                 "ProductArn": f"arn:aws:securityhub:{REGION}::product/aws/inspector", "GeneratorId": "AWSInspector",
                 "ProductFields": {"aws/securityhub/ProductName": "Inspector"},
                 "Types": ["Software and Configuration Checks/Vulnerabilities/CVE"]}
    assert to_incident("i", inspector, CONFIG).id == "SH-abc123"


# ------------------------------------------------------------------ the window

def _incident(window_start: str | None, detected_at: str = "2026-03-10T12:00:00Z") -> Incident:
    doc = {"id": "INC-W-1", "kind": "cryptojacking", "account_id": ACCOUNT, "region": REGION, "detected_at": detected_at}
    return validate_incident("w", {**doc, **({"window_start": window_start} if window_start else {})})


def test_window_longer_than_max_window_days_is_refused_with_days_and_the_override() -> None:
    with pytest.raises(InputError) as exc:
        settle_window(_incident("2026-03-01T12:00:00Z"), CONFIG)
    [problem] = exc.value.problems
    assert problem.path == "window_start" and exc.value.exit_code == 2
    assert "9.0 days" in problem.message and "max_window_days = 7" in problem.message
    assert "--window-start" in problem.message


def test_window_within_the_limit_or_a_raised_limit_is_accepted() -> None:
    inc = _incident("2026-03-04T12:00:00Z")
    assert settle_window(inc, CONFIG) is inc
    wide = _incident("2026-02-20T12:00:00Z")
    raised = Config(discovery=DiscoverySection(max_window_days=30))
    assert settle_window(wide, raised).window_start == "2026-02-20T12:00:00Z"
    assert settle_window(_incident(None), CONFIG).window_start is None


def test_window_start_option_narrows_or_overrides_the_window() -> None:
    narrowed = settle_window(_incident("2026-03-04T12:00:00Z"), CONFIG, "2026-03-10T11:00:00Z")
    assert narrowed.window_start == "2026-03-10T11:00:00Z"
    overridden = settle_window(_incident("2026-02-01T00:00:00Z"), CONFIG, "2026-02-25T08:00:00+01:00")
    assert overridden.window_start == "2026-02-25T08:00:00+01:00"
    assert settle_window(_incident(None), CONFIG, "2026-03-09T00:00:00Z").window_start == "2026-03-09T00:00:00Z"


@pytest.mark.parametrize(("value", "says"), [("yesterday", "RFC 3339"), ("2026-03-10 11:00", "RFC 3339"),
                                             ("2026-03-11T00:00:00Z", "after the incident was detected")])
def test_bad_window_start_option_is_exit_2(value: str, says: str) -> None:
    with pytest.raises(InputError) as exc:
        settle_window(_incident("2026-03-09T12:00:00Z"), CONFIG, value)
    assert exc.value.problems[0].path == "--window-start" and says in exc.value.problems[0].message


def test_max_window_days_is_in_the_packaged_config_and_validated(tmp_path: Path) -> None:
    assert CONFIG.discovery.max_window_days == 7
    bad = tmp_path / "c.toml"
    bad.write_text("[discovery]\nmax_window_days = 0\n")
    with pytest.raises(InputError, match="max_window_days"):
        load_config(str(bad))
    typo = tmp_path / "t.toml"
    typo.write_text("[discovery]\nmax_window_day = 3\n")
    with pytest.raises(InputError, match="did you mean 'max_window_days'"):
        load_config(str(typo))


def test_real_sample_first_seen_nine_days_back_is_refused_until_the_window_is_set(tmp_path: Path) -> None:
    path = SAMPLE_DIRS[0] / "guardduty/policy_iamuser_rootcredentialusage.real.detail.json"
    inc = load_any(str(path), CONFIG)
    with pytest.raises(InputError, match=r"9\.0 days"):
        settle_window(inc, CONFIG)
    assert settle_window(inc, CONFIG, "2023-06-07T01:00:00Z").window_start == "2023-06-07T01:00:00Z"


# ------------------------------------------------------------------ property: mutilated findings

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**15, 10**15) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
_GD_CASES = [(form, field) for form in GD_FORMS for field in GD_REQUIRED]
_ASFF_CASES = [(form, field) for form in ASFF_FORMS for field in ("Resources", "AwsAccountId", "Types")]


def _mutilate(doc: Any, data: st.DataObject) -> Any:
    """Replace or delete one value anywhere in the document."""
    doc = copy.deepcopy(doc)
    cur = doc
    while True:
        keys = list(cur) if isinstance(cur, dict) else list(range(len(cur))) if isinstance(cur, list) else []
        if not keys:
            return doc
        key = data.draw(st.sampled_from(keys))
        child = cur[key]
        if isinstance(child, dict | list) and child and data.draw(st.booleans()):
            cur = child
            continue
        if isinstance(cur, dict) and data.draw(st.booleans()):
            del cur[key]
        else:
            cur[key] = data.draw(json_values)
        return doc


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(_GD_CASES), data=st.data())
def test_mutilated_guardduty_findings_exit_2_naming_the_path(case: tuple[str, str], data: st.DataObject) -> None:
    form, field = case
    wrap, path_of = GD_FORMS[form]
    doc = wrap(_mutilate(drop(finding(), *field.split(".")), data))
    with pytest.raises(InputError) as exc:
        to_incident("fuzz", doc, CONFIG, ALLOW)
    found = [p.path for p in exc.value.problems]
    assert exc.value.exit_code == 2 and all(found)
    # the field itself, or the ancestor the mutilation broke (then its children are not looked at)
    assert any(path_of(field) == p or path_of(field).startswith(p + ".") for p in found), found


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(form=st.sampled_from([*GD_FORMS, *(f"asff-{f}" for f in ASFF_FORMS)]), data=st.data())
def test_any_mutilated_finding_is_an_incident_or_exit_2(form: str, data: st.DataObject) -> None:
    base = GD_FORMS[form][0](finding()) if form in GD_FORMS else ASFF_FORMS[form[5:]][0](asff(finding()))
    doc = _mutilate(base, data)
    try:
        inc = to_incident("fuzz", doc, CONFIG, ALLOW)
    except InputError as exc:
        assert exc.exit_code == 2 and exc.problems
        return
    assert isinstance(inc, Incident) and inc.account_id == ACCOUNT


def _valid_for(field: str, value: Any) -> bool:
    if field == "AwsAccountId":
        return value == ACCOUNT  # anything else disagrees with the GuardDuty ARN in Id
    if field == "Types":
        return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value)
    return isinstance(value, list) and bool(value) and all(
        isinstance(r, dict) and all(isinstance(r.get(k), str) and r[k].strip() for k in ("Type", "Id")) for r in value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(_ASFF_CASES), replacement=json_values)
def test_asff_required_fields_replaced_by_anything_invalid_name_the_path(case: tuple[str, str], replacement: Any) -> None:
    form, field = case
    wrap, prefix = ASFF_FORMS[form]
    doc = wrap({**asff(finding()), field: replacement})
    try:
        to_incident("fuzz", doc, CONFIG, ALLOW)
    except InputError as exc:
        assert not _valid_for(field, replacement)
        assert any(p.path == prefix + field or p.path.startswith(prefix + field + "[") for p in exc.problems)
        return
    assert _valid_for(field, replacement)
