"""AWS Config recorders the attacker stopped: start them again (previous state recorded). A
recorder that no longer exists is a manual action."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from actions.base import ActionContext, Change, Outcome
from actions.common import is_code, tolerant_call
from actions.registry import register
from actions.triage import UndoAction, Verdict, event_id, region_of
from runner.techniques import request

GONE = ("NoSuchConfigurationRecorderException",)


def _recording(cfg: Any, name: str) -> bool | None:
    try:
        found = cfg.describe_configuration_recorder_status(ConfigurationRecorderNames=[name])
    except ClientError as exc:
        if is_code(exc, *GONE):
            return None
        raise
    statuses = found.get("ConfigurationRecordersStatus", [])
    return bool(statuses[0].get("recording")) if statuses else None


@register
class StartRecorders(UndoAction):
    """StopConfigurationRecorder by the attacker: start the recorder again."""

    name = "config.start-recorders"
    summary = "Start AWS Config recorders the attacker stopped (previous state recorded)"
    permissions = ("config:DescribeConfigurationRecorderStatus", "config:StartConfigurationRecorder")
    reverts = {"config:StartConfigurationRecorder": ("config:StopConfigurationRecorder",)}

    def assess(self, ctx: ActionContext, events: list[dict[str, Any]]) -> list[Verdict]:
        out = []
        for e in events:
            eid, region = event_id(e), region_of(e, ctx)
            name = str(request(e).get("configurationRecorderName", ""))
            recording = _recording(ctx.aws.client("config", region), name)
            if recording is None:
                out.append(Verdict(eid, "manual", f"Config recorder {name} no longer exists",
                                   f"AWS Config recorder {name} in {region}, stopped by the attacker at "
                                   f"{e.get('eventTime')}, no longer exists: set up AWS Config recording again in "
                                   f"{region} (aws configservice put-configuration-recorder, then "
                                   "start-configuration-recorder)."))
                continue
            arn = f"arn:aws:config:{region}:{ctx.incident.account_id}:config-recorder/{name}"
            changes = [] if recording else [Change(
                "config:StartConfigurationRecorder", arn, {"ConfigurationRecorderName": name},
                previous={"recording": False},
                reason=f"the attacker stopped AWS Config recorder {name} at {e.get('eventTime')}")]
            out.append(Verdict(eid, "contained", f"AWS Config recorder {name} in {region} records again",
                               changes=changes))
        return out

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        cfg = ctx.aws.client("config", change.target.split(":")[3])
        call = cfg.start_configuration_recorder if change.operation == "config:StartConfigurationRecorder" \
            else cfg.stop_configuration_recorder
        return tolerant_call(call, change.params, *GONE)

    def inverse(self, change: dict[str, Any]) -> Change | None:
        name = change["params"]["ConfigurationRecorderName"]
        return Change("config:StopConfigurationRecorder", change["target"], {"ConfigurationRecorderName": name},
                      previous={"recording": True}, reason=f"undo config:StartConfigurationRecorder on {name}")

    def restored(self, ctx: ActionContext, change: Change) -> bool:
        recording = _recording(ctx.aws.client("config", change.target.split(":")[3]),
                               change.params["ConfigurationRecorderName"])
        return recording is None or not recording
