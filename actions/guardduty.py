"""GuardDuty detectors the attacker disabled: enable them again (previous status recorded). A
deleted detector is a manual action: its findings are gone with it."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from actions.base import ActionContext, Change, Outcome
from actions.common import is_code, tolerant_call
from actions.registry import register
from actions.triage import UndoAction, Verdict, event_id, region_of
from runner.techniques import request

#: GuardDuty answers an unknown detector id with BadRequestException
GONE = ("BadRequestException", "ResourceNotFoundException")


def _status(gd: Any, detector: str) -> str | None:
    try:
        return str(gd.get_detector(DetectorId=detector)["Status"])
    except ClientError as exc:
        if is_code(exc, *GONE):
            return None
        raise


@register
class EnableDetectors(UndoAction):
    """UpdateDetector with enable=false by the attacker: enable the detector again."""

    name = "guardduty.enable-detectors"
    summary = "Enable GuardDuty detectors the attacker disabled (previous status recorded)"
    permissions = ("guardduty:GetDetector", "guardduty:UpdateDetector")
    reverts = {"guardduty:UpdateDetector": ("guardduty:UpdateDetector",)}

    def assess(self, ctx: ActionContext, events: list[dict[str, Any]]) -> list[Verdict]:
        out = []
        for e in events:
            req, eid, region = request(e), event_id(e), region_of(e, ctx)
            detector = str(req.get("detectorId", ""))
            if req.get("enable") is not False:
                out.append(Verdict(eid, "manual", "the attacker changed the detector's settings, not its status",
                                   f"The attacker changed GuardDuty detector {detector} in {region} at "
                                   f"{e.get('eventTime')}: compare its settings (aws guardduty get-detector "
                                   f"--detector-id {detector}) with your baseline and restore them."))
                continue
            status = _status(ctx.aws.client("guardduty", region), detector)
            if status is None:
                out.append(Verdict(eid, "manual", f"detector {detector} no longer exists",
                                   f"GuardDuty detector {detector} in {region}, disabled by the attacker at "
                                   f"{e.get('eventTime')}, no longer exists: enable GuardDuty again in {region} "
                                   "(aws guardduty create-detector --enable)."))
                continue
            arn = f"arn:aws:guardduty:{region}:{ctx.incident.account_id}:detector/{detector}"
            changes = [] if status == "ENABLED" else [Change(
                "guardduty:UpdateDetector", arn, {"DetectorId": detector, "Enable": True}, previous={"Status": status},
                reason=f"the attacker disabled GuardDuty detector {detector} at {e.get('eventTime')}")]
            out.append(Verdict(eid, "contained", f"GuardDuty detector {detector} in {region} is enabled",
                               changes=changes))
        return out

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        gd = ctx.aws.client("guardduty", change.target.split(":")[3])
        return tolerant_call(gd.update_detector, change.params, *GONE)

    def inverse(self, change: dict[str, Any]) -> Change | None:
        before = (change.get("previous") or {}).get("Status")
        detector = change["params"]["DetectorId"]
        return Change("guardduty:UpdateDetector", change["target"],
                      {"DetectorId": detector, "Enable": before == "ENABLED"}, previous={"Status": "ENABLED"},
                      reason=f"undo guardduty:UpdateDetector: detector {detector} back to {before}")

    def restored(self, ctx: ActionContext, change: Change) -> bool:
        status = _status(ctx.aws.client("guardduty", change.target.split(":")[3]), change.params["DetectorId"])
        return status is None or (status == "ENABLED") == change.params["Enable"]
