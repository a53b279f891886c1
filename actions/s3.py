"""S3 bucket policies the attacker rewrote: remove the statements it added that grant another
account or everyone, keep every other statement. The policy before the change is recorded, so
rollback restores it exactly."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from actions.base import ActionContext, Change, Outcome, canonical
from actions.common import is_code, tolerant_call
from actions.registry import register
from actions.triage import UndoAction, Verdict, event_id
from runner.techniques import request

GONE = ("NoSuchBucket", "NoSuchBucketPolicy")


def _statements(policy: Any) -> list[dict[str, Any]]:
    if isinstance(policy, str):
        try:
            policy = json.loads(policy)
        except ValueError:
            return []
    stmts = policy.get("Statement", []) if isinstance(policy, dict) else []
    return [s for s in (stmts if isinstance(stmts, list) else [stmts]) if isinstance(s, dict)]


def grants_outside(statement: dict[str, Any], account: str) -> bool:
    """An Allow whose principal is everyone or another account than `account`."""
    if statement.get("Effect") != "Allow":
        return False
    principal = statement.get("Principal")
    if principal == "*":
        return True
    values: list[Any] = []
    if isinstance(principal, dict):
        for key in ("AWS", "CanonicalUser", "Federated"):
            v = principal.get(key)
            values += v if isinstance(v, list) else [v] if v else []
    for v in values:
        text = str(v)
        if text == "*":
            return True
        owner = text.split(":")[4] if text.startswith("arn:") and text.count(":") >= 5 else text
        if owner.isdigit() and owner != account:
            return True
        if not owner.isdigit() and not text.startswith("arn:"):
            return True  # a canonical user id or federated provider of unknown owner
    return False


def _live_policy(s3: Any, bucket: str) -> str | None:
    try:
        return str(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    except ClientError as exc:
        if is_code(exc, *GONE):
            return None
        raise


@register
class RemoveAttackerPolicyStatements(UndoAction):
    """Drop the statements of the attacker's PutBucketPolicy that grant outside access; the rest stay."""

    name = "s3.remove-attacker-policy-statements"
    summary = "Remove bucket-policy statements the attacker added that grant another account or everyone"
    permissions = ("s3:GetBucketPolicy", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy")
    reverts = {"s3:PutBucketPolicy": ("s3:PutBucketPolicy",), "s3:DeleteBucketPolicy": ("s3:PutBucketPolicy",)}

    def assess(self, ctx: ActionContext, events: list[dict[str, Any]]) -> list[Verdict]:
        account = ctx.incident.account_id
        s3 = ctx.aws.client("s3")
        by_bucket: dict[str, list[dict[str, Any]]] = {}
        for e in events:
            by_bucket.setdefault(str(request(e).get("bucketName", "")), []).append(e)
        out = []
        for bucket, bucket_events in by_bucket.items():
            live = _live_policy(s3, bucket)
            added = {canonical(s): s for e in bucket_events for s in _statements(request(e).get("bucketPolicy"))
                     if grants_outside(s, account)}
            kept_by_attacker = [s for e in bucket_events for s in _statements(request(e).get("bucketPolicy"))
                                if canonical(s) not in added]
            live_stmts = _statements(live) if live is not None else []
            remaining = [s for s in live_stmts if canonical(s) not in added]
            if live is None or len(remaining) == len(live_stmts):
                why = f"bucket {bucket} has no policy now" if live is None else \
                    f"the policy of bucket {bucket} no longer holds the statements the attacker added"
                out += [Verdict(event_id(e), "no_action_needed", why) for e in bucket_events]
                continue
            arn = f"arn:aws:s3:::{bucket}"
            dropped = [s for s in live_stmts if canonical(s) in added]
            removed = len(dropped)
            reason = (f"{removed} statement(s) granting outside access, written by the attacker's PutBucketPolicy: "
                      + "; ".join(f"{s.get('Sid') or 'no Sid'} to {json.dumps(s.get('Principal'))}" for s in dropped))
            if remaining:
                doc = {**json.loads(live), "Statement": remaining}
                change = Change("s3:PutBucketPolicy", arn,
                                {"Bucket": bucket, "Policy": json.dumps(doc, sort_keys=True)},
                                previous={"Policy": live}, reason=reason)
            else:
                change = Change("s3:DeleteBucketPolicy", arn, {"Bucket": bucket}, previous={"Policy": live},
                                reason=reason)
            why = f"{removed} statement(s) granting another account or everyone removed from bucket {bucket}"
            if kept_by_attacker:
                why += f"; {len(kept_by_attacker)} statement(s) granting only this account kept"
            out += [Verdict(event_id(e), "contained", why, changes=[change]) for e in bucket_events]
        return out

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        s3 = ctx.aws.client("s3")
        if change.operation == "s3:DeleteBucketPolicy":
            return tolerant_call(s3.delete_bucket_policy, change.params, *GONE)
        return tolerant_call(s3.put_bucket_policy, change.params, "NoSuchBucket")

    def inverse(self, change: dict[str, Any]) -> Change | None:
        before = (change.get("previous") or {}).get("Policy")
        if not before:
            return None
        bucket = change["params"]["Bucket"]
        return Change("s3:PutBucketPolicy", change["target"], {"Bucket": bucket, "Policy": before},
                      previous={"Policy": "contained"},
                      reason=f"undo {change['operation']}: policy of {bucket} restored")

    def restored(self, ctx: ActionContext, change: Change) -> bool:
        live = _live_policy(ctx.aws.client("s3"), change.params["Bucket"])
        return live is not None and canonical(json.loads(live)) == canonical(json.loads(change.params["Policy"]))
