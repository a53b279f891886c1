"""Console passwords the attacker created on users: delete them (after evidence). A deletion cannot
be rolled back by API (the password is gone); rollback names the user whose owner must set one."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from actions.base import ActionContext, Change, Outcome
from actions.common import is_code, iso, tolerant_call, user_arn
from actions.registry import register
from actions.triage import UndoAction, Verdict, event_id
from runner.techniques import request


@register
class DeleteAttackerLoginProfiles(UndoAction):
    """Delete the console login profile the attacker's CreateLoginProfile made, whoever the user is."""

    name = "iam.delete-attacker-login-profiles"
    summary = "Delete console passwords the attacker created (creation date recorded)"
    permissions = ("iam:GetLoginProfile", "iam:DeleteLoginProfile")

    def assess(self, ctx: ActionContext, events: list[dict[str, Any]]) -> list[Verdict]:
        iam = ctx.aws.client("iam")
        out = []
        for e in events:
            user, eid = str(request(e).get("userName", "")), event_id(e)
            arn = user_arn(ctx.incident.account_id, user)
            if ctx.protected(user, arn):
                out.append(Verdict(eid, "manual", f"user {user} is a protected principal: stanch does not touch it",
                                   f"The attacker created a console password for protected user {user} at "
                                   f"{e.get('eventTime')}: delete it (aws iam delete-login-profile --user-name {user}) "
                                   "and review how the attacker reached a break-glass identity."))
                continue
            try:
                profile = iam.get_login_profile(UserName=user)["LoginProfile"]
            except ClientError as exc:
                if not is_code(exc, "NoSuchEntity"):
                    raise
                out.append(Verdict(eid, "no_action_needed", f"user {user} has no console password now"))
                continue
            change = Change("iam:DeleteLoginProfile", arn, {"UserName": user},
                            previous={"LoginProfile": "present", "CreateDate": iso(profile.get("CreateDate")),
                                      "CreatedBy": f"attacker event {eid}"},
                            reason=f"console password the attacker created for {user} at {e.get('eventTime')}")
            out.append(Verdict(eid, "contained", f"the console password of {user} is deleted", changes=[change]))
        return out

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        return tolerant_call(ctx.aws.client("iam").delete_login_profile, change.params, "NoSuchEntity")
