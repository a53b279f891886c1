"""The DynamoDB journal: one table shared by any number of machines and workers.

Layout (partition key `pk`, sort key `sk`, both strings):

- `run#<id>` / `run`: the run (status, incident, options, result); `gsi1pk` = `status#<status>` and
  `gsi1sk` = `<updated_at>#<run id>` put it in the `status-index` GSI, which lists runs without a scan.
- `run#<id>` / `lease`: which worker executes the run (`owner`, `lease_until` in epoch ms), renewed by
  that worker's heartbeat; an expired lease may be taken over, a live one refuses (RunBusyError).
- `run#<id>` / `step#<step>`, `change#<step>#<digest>`, `approval#...`, `anchor#...`: as in SQLite.
- `run#<id>` / `audit#<seq>` and `audit-head`: the run's audit log, hash-chained (one chain per run).
- `run#<id>` / `blob#...`: a value too large for its item, in parts.
- `incident#<id>` / `lock`: the one active run of the incident (a conditional put takes it);
  `incident#<id>` / `run#<created_at>#<run id>`: the incident's runs.
- `incident#<id>` / `claim`: the worker deciding about a delivery of the incident now (`owner`,
  `claim_until` in epoch ms, renewed by its heartbeat): two workers on two machines never both start it.

Every item of a run carries `expires_at` (DynamoDB TTL): `ttl_days` after the run started.

A change is claimed by a conditional write before it is sent (`change_started` returns False when
another worker holds it or finished it after this worker took the run), and every write a worker makes
for a run it executes is conditional on its lease: a worker whose lease was taken over stops (exit 4)
instead of writing over the new holder. Leases compare wall clocks: keep the workers' clocks in sync
(NTP), and `lease_seconds` well above the clock skew and the longest pause a worker may take.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from runner.audit import AUDIT_FIELDS, GENESIS, line_hash, redact_value
from runner.errors import InputError, Problem, RefusedError, RunLockedError, StanchError, UnknownRunError
from runner.journal import (
    _RUN_ID,
    AnchorRecord,
    ApprovalRecord,
    ChangeRecord,
    RunBusyError,
    RunRecord,
    StepRecord,
    now_iso,
)
from runner.lifecycle import STATES

STATUS_INDEX = "status-index"
TTL_ATTRIBUTE = "expires_at"
#: a value larger than this (compressed) goes to parts of its own
_INLINE_LIMIT = 100_000
_PART_SIZE = 350_000

Item = dict[str, dict[str, Any]]


class LeaseLostError(RefusedError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id}: this worker's lease expired and another worker took the run over; "
                         f"this one stops here (`stanch status {run_id}`)")


def _ms() -> int:
    return int(time.time() * 1000)


def _s(value: str) -> dict[str, Any]:
    return {"S": value}


def _n(value: float) -> dict[str, Any]:
    return {"N": str(int(value))}


def _pack(value: Any) -> bytes:
    return gzip.compress(json.dumps(value, default=str).encode("utf-8"), mtime=0)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _reasons(exc: ClientError) -> list[str]:
    """The per-item codes of a cancelled transaction ('None' for an item that passed)."""
    return [str(r.get("Code", "None")) for r in exc.response.get("CancellationReasons", [])]


def _epoch_of(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def table_client(region: str | None = None, endpoint_url: str | None = None) -> Any:
    """A DynamoDB client with botocore's standard retries (throttling and 5xx are retried)."""
    session = boto3.session.Session(region_name=region or None)
    if not session.region_name:
        raise InputError("[journal] region", [Problem("", "no region for the journal table: set [journal] region, "
                                                          "AWS_REGION, or dynamodb://TABLE?region=R")])
    return session.client("dynamodb", endpoint_url=endpoint_url or None, config=BotoConfig(
        retries={"mode": "standard", "max_attempts": 8}, connect_timeout=5, read_timeout=20))


def create_table(client: Any, table: str, *, wait: bool = True) -> dict[str, Any]:
    """Create the journal table (on-demand billing) with `status-index` and TTL on `expires_at`; a table
    that exists already is checked and kept. Returns {"table", "created", "ttl"}."""
    created = False
    try:
        client.create_table(
            TableName=table, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk", "gsi1pk", "gsi1sk")],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            GlobalSecondaryIndexes=[{
                "IndexName": STATUS_INDEX,
                "KeySchema": [{"AttributeName": "gsi1pk", "KeyType": "HASH"},
                              {"AttributeName": "gsi1sk", "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "ALL"},
            }],
            SSESpecification={"Enabled": True},
        )
        created = True
    except ClientError as exc:
        if _code(exc) != "ResourceInUseException":
            raise
    if wait:
        client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    check_table(client, table)
    ttl = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        client.update_time_to_live(TableName=table, TimeToLiveSpecification={
            "Enabled": True, "AttributeName": TTL_ATTRIBUTE})
    return {"table": table, "created": created, "ttl": TTL_ATTRIBUTE, "index": STATUS_INDEX}


def check_table(client: Any, table: str) -> None:
    """Refuse (exit 2) a table that does not exist or is not a stanch journal."""
    try:
        desc = client.describe_table(TableName=table)["Table"]
    except ClientError as exc:
        if _code(exc) == "ResourceNotFoundException":
            raise InputError(f"journal table {table}", [Problem("", "does not exist in this region; create it with "
                                                                    "`stanch journal init`")]) from None
        raise
    keys = {k["AttributeName"]: k["KeyType"] for k in desc.get("KeySchema", [])}
    indexes = {i["IndexName"]: {k["AttributeName"]: k["KeyType"] for k in i.get("KeySchema", [])}
               for i in desc.get("GlobalSecondaryIndexes", [])}
    problems = []
    if keys != {"pk": "HASH", "sk": "RANGE"}:
        problems.append(Problem("KeySchema", f"is {keys}; a journal table has pk (HASH) and sk (RANGE)"))
    if indexes.get(STATUS_INDEX) != {"gsi1pk": "HASH", "gsi1sk": "RANGE"}:
        problems.append(Problem("GlobalSecondaryIndexes", f"no {STATUS_INDEX} on gsi1pk (HASH), gsi1sk (RANGE)"))
    if problems:
        raise InputError(f"journal table {table}", problems)


class DynamoJournal:
    """The journal in one DynamoDB table (see the module's docstring)."""

    backend = "dynamodb"

    def __init__(self, table: str, *, client: Any | None = None, region: str | None = None,
                 endpoint_url: str | None = None, lease_seconds: float = 60, ttl_days: int = 400,
                 check: bool = True) -> None:
        self.table = table
        self.client = client if client is not None else table_client(region, endpoint_url)
        self.lease_ms = int(lease_seconds * 1000)
        self.ttl_days = ttl_days
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        self._opened_ms = _ms()
        self._held: dict[str, int] = {}  # run id -> when this worker took its lease (epoch ms)
        self._lost: set[str] = set()
        self._expiry: dict[str, int | None] = {}
        self._lock = threading.Lock()
        if check:
            check_table(self.client, table)

    def close(self) -> None:
        """Nothing to release: leases are released by `hold`, and the client has no session to end."""

    # -- items ----------------------------------------------------------------------------
    def _get(self, pk: str, sk: str) -> Item | None:
        found: Item | None = self.client.get_item(TableName=self.table, Key={"pk": _s(pk), "sk": _s(sk)},
                                                  ConsistentRead=True).get("Item")
        return found

    def _query(self, pk: str, prefix: str) -> list[Item]:
        items: list[Item] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table, "ConsistentRead": True,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":pk": _s(pk), ":prefix": _s(prefix)},
        }
        while True:
            page = self.client.query(**kwargs)
            items += page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _ttl(self, run_id: str) -> dict[str, Any]:
        """`expires_at` for an item of this run (the run's own expiry), or nothing."""
        if run_id not in self._expiry:
            item = self._get(f"run#{run_id}", "run")
            value = item.get(TTL_ATTRIBUTE) if item else None
            self._expiry[run_id] = int(value["N"]) if value else None
        expiry = self._expiry[run_id]
        return {TTL_ATTRIBUTE: _n(expiry)} if expiry else {}

    def _blob(self, pk: str, owner_sk: str, name: str, value: Any) -> Item:
        """Attributes holding `value` (compressed JSON): inline, or in parts written now."""
        data = _pack(value)
        if len(data) <= _INLINE_LIMIT:
            return {name: {"B": data}}
        parts = [data[i:i + _PART_SIZE] for i in range(0, len(data), _PART_SIZE)]
        ttl = self._ttl(pk.removeprefix("run#")) if pk.startswith("run#") else {}
        for n, part in enumerate(parts):
            self.client.put_item(TableName=self.table, Item={
                "pk": _s(pk), "sk": _s(f"blob#{owner_sk}#{name}#{n:04d}"), "data": {"B": part}, **ttl})
        return {f"{name}_parts": _n(len(parts)), f"{name}_sha256": _s(hashlib.sha256(data).hexdigest())}

    def _unblob(self, item: Item, name: str) -> Any:
        if name in item:
            return json.loads(gzip.decompress(item[name]["B"]))
        if f"{name}_parts" not in item:
            return None
        count, digest = int(item[f"{name}_parts"]["N"]), item[f"{name}_sha256"]["S"]
        data = b"".join(
            (self._get(item["pk"]["S"], f"blob#{item['sk']['S']}#{name}#{n:04d}") or {}).get("data", {}).get("B", b"")
            for n in range(count))
        if hashlib.sha256(data).hexdigest() != digest:
            raise StanchError(f"journal table {self.table}: {item['pk']['S']} {name} is incomplete or being "
                              "rewritten; try again")
        return json.loads(gzip.decompress(data))

    # -- the lease ------------------------------------------------------------------------
    def _fence(self, run_id: str) -> list[dict[str, Any]]:
        """A transaction's condition that this worker still holds the run (when it took it)."""
        if run_id in self._lost:
            raise LeaseLostError(run_id)
        if run_id not in self._held:
            return []
        return [{"ConditionCheck": {
            "TableName": self.table, "Key": {"pk": _s(f"run#{run_id}"), "sk": _s("lease")},
            "ConditionExpression": "#owner = :me", "ExpressionAttributeNames": {"#owner": "owner"},
            "ExpressionAttributeValues": {":me": _s(self.owner)}}}]

    def _write(self, run_id: str, op: dict[str, Any]) -> None:
        """One write (a transaction's item), fenced by this worker's lease when it holds the run."""
        fence = self._fence(run_id)
        if not fence:
            kind, args = next(iter(op.items()))
            call = {"Put": self.client.put_item, "Update": self.client.update_item}[kind]
            call(**args)
            return
        try:
            self.client.transact_write_items(TransactItems=[*fence, op])
        except ClientError as exc:
            if _code(exc) == "TransactionCanceledException" and _reasons(exc)[:1] == ["ConditionalCheckFailed"]:
                self._lost.add(run_id)
                raise LeaseLostError(run_id) from None
            raise

    @contextmanager
    def hold(self, run_id: str) -> Iterator[None]:
        """This worker's lease on `run_id`: a conditional put that succeeds when no lease exists or the
        last holder's expired (it died: its run is taken over), renewed by a heartbeat thread."""
        if not _RUN_ID.match(run_id):
            raise UnknownRunError(run_id)
        now = _ms()
        key = {"pk": _s(f"run#{run_id}"), "sk": _s("lease")}
        try:
            self.client.put_item(
                TableName=self.table, Item={**key, "owner": _s(self.owner), "lease_until": _n(now + self.lease_ms),
                                            "taken_at": _s(now_iso()), **self._ttl(run_id)},
                ConditionExpression="attribute_not_exists(sk) OR lease_until < :now OR #owner = :me",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":now": _n(now), ":me": _s(self.owner)})
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                raise RunBusyError(run_id) from None
            raise
        self._held[run_id] = now
        self._lost.discard(run_id)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(run_id, stop), name=f"lease-{run_id}", daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            self._held.pop(run_id, None)
            try:
                self.client.delete_item(TableName=self.table, Key=key, ConditionExpression="#owner = :me",
                                        ExpressionAttributeNames={"#owner": "owner"},
                                        ExpressionAttributeValues={":me": _s(self.owner)})
            except ClientError as exc:
                if _code(exc) != "ConditionalCheckFailedException":  # taken over: not ours to delete
                    raise

    def _heartbeat(self, run_id: str, stop: threading.Event) -> None:
        while not stop.wait(self.lease_ms / 3000):
            try:
                self.client.update_item(
                    TableName=self.table, Key={"pk": _s(f"run#{run_id}"), "sk": _s("lease")},
                    UpdateExpression="SET #until = :until", ConditionExpression="#owner = :me",
                    ExpressionAttributeNames={"#owner": "owner", "#until": "lease_until"},
                    ExpressionAttributeValues={":until": _n(_ms() + self.lease_ms), ":me": _s(self.owner)})
            except ClientError as exc:
                if _code(exc) == "ConditionalCheckFailedException":
                    self._lost.add(run_id)  # another worker has it: the next write stops this one
                    return
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next one
                continue

    def is_held(self, run_id: str) -> bool:
        """True while some worker's lease on `run_id` is live."""
        item = self._get(f"run#{run_id}", "lease") if _RUN_ID.match(run_id) else None
        return bool(item) and int(item["lease_until"]["N"]) > _ms()  # type: ignore[index]

    # -- incident claims (workers) ---------------------------------------------------------
    @contextmanager
    def claim_incident(self, incident_id: str, owner: str, seconds: float) -> Iterator[bool]:
        """`incident#<id>` / `claim`: one worker, on any machine, decides about a delivery of the
        incident and runs it; yields False while another's claim is live. A conditional put takes it
        (none, or the last holder's expired), a heartbeat renews it every third of `seconds`, and it is
        deleted (if still `owner`'s) when the block ends; a holder that dies keeps it `seconds` at most."""
        key = {"pk": _s(f"incident#{incident_id}"), "sk": _s("claim")}
        span = max(1000, int(seconds * 1000))
        now = _ms()
        try:
            self.client.put_item(
                TableName=self.table, Item={**key, "owner": _s(owner), "claim_until": _n(now + span),
                                            "taken_at": _s(now_iso()),
                                            TTL_ATTRIBUTE: _n(now / 1000 + max(seconds, 86400))},
                ConditionExpression="attribute_not_exists(sk) OR claim_until < :now",
                ExpressionAttributeValues={":now": _n(now)})
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
            yield False
            return
        stop = threading.Event()
        beat = threading.Thread(target=self._renew_claim, args=(key, owner, span, stop),
                                name=f"claim-{incident_id}", daemon=True)
        beat.start()
        try:
            yield True
        finally:
            stop.set()
            beat.join()
            try:
                self.client.delete_item(TableName=self.table, Key=key, ConditionExpression="#owner = :me",
                                        ExpressionAttributeNames={"#owner": "owner"},
                                        ExpressionAttributeValues={":me": _s(owner)})
            except ClientError as exc:
                if _code(exc) != "ConditionalCheckFailedException":  # expired and taken: not ours to delete
                    raise

    def _renew_claim(self, key: Item, owner: str, span: int, stop: threading.Event) -> None:
        while not stop.wait(span / 3000):
            try:
                self.client.update_item(
                    TableName=self.table, Key=key, UpdateExpression="SET claim_until = :until",
                    ConditionExpression="#owner = :me", ExpressionAttributeNames={"#owner": "owner"},
                    ExpressionAttributeValues={":until": _n(_ms() + span), ":me": _s(owner)})
            except ClientError as exc:
                if _code(exc) == "ConditionalCheckFailedException":
                    return  # taken over after it expired: the run's own lease and lock still hold
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next one
                continue

    # -- runs -----------------------------------------------------------------------------
    def _run_item(self, run: RunRecord) -> Item:
        pk = f"run#{run.run_id}"
        item: Item = {
            "pk": _s(pk), "sk": _s("run"), "run_id": _s(run.run_id), "incident_id": _s(run.incident_id),
            "playbook": _s(run.playbook), "status": _s(run.status), "dry_run": {"BOOL": run.dry_run},
            "created_at": _s(run.created_at), "updated_at": _s(run.updated_at),
            "gsi1pk": _s(f"status#{run.status}"), "gsi1sk": _s(f"{run.updated_at}#{run.run_id}"),
        }
        if self.ttl_days:
            expiry = int(_epoch_of(run.created_at)) + self.ttl_days * 86400
            item[TTL_ATTRIBUTE] = _n(expiry)
            self._expiry[run.run_id] = expiry
        else:
            self._expiry[run.run_id] = None
        item.update(self._blob(pk, "run", "incident", redact_value(run.incident)))
        item.update(self._blob(pk, "run", "options", redact_value(run.options)))
        return item

    def create_run(self, run: RunRecord, lock: bool) -> None:
        """The run, and (`lock`) its incident's lock, in one transaction: a second active run of the
        incident is refused (RunLockedError, exit 4) whichever machine started the first."""
        item = self._run_item(run)
        ttl = self._ttl(run.run_id)
        ops: list[dict[str, Any]] = []
        if lock:
            ops.append({"Put": {"TableName": self.table, "ConditionExpression": "attribute_not_exists(pk)", "Item": {
                "pk": _s(f"incident#{run.incident_id}"), "sk": _s("lock"), "run_id": _s(run.run_id),
                "at": _s(now_iso()), **ttl}}})
        ops.append({"Put": {"TableName": self.table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}})
        ops.append({"Put": {"TableName": self.table, "Item": {
            "pk": _s(f"incident#{run.incident_id}"), "sk": _s(f"run#{run.created_at}#{run.run_id}"),
            "run_id": _s(run.run_id), **ttl}}})
        try:
            self.client.transact_write_items(TransactItems=ops)
        except ClientError as exc:
            if _code(exc) != "TransactionCanceledException":
                raise
            reasons = _reasons(exc)
            if lock and reasons[:1] == ["ConditionalCheckFailed"]:
                held = self._get(f"incident#{run.incident_id}", "lock")
                raise RunLockedError(run.incident_id, held["run_id"]["S"] if held else "?") from None
            raise StanchError(f"run {run.run_id} could not be recorded ({', '.join(reasons)})") from None

    def _run(self, item: Item) -> RunRecord:
        return RunRecord(
            run_id=item["run_id"]["S"], incident_id=item["incident_id"]["S"], playbook=item["playbook"]["S"],
            status=item["status"]["S"], dry_run=bool(item["dry_run"]["BOOL"]), created_at=item["created_at"]["S"],
            updated_at=item["updated_at"]["S"], incident=self._unblob(item, "incident") or {},
            options=self._unblob(item, "options") or {}, result=self._unblob(item, "result"))

    def get_run(self, run_id: str) -> RunRecord:
        item = self._get(f"run#{run_id}", "run") if _RUN_ID.match(run_id) else None
        if item is None:
            raise UnknownRunError(run_id)
        return self._run(item)

    def has_run(self, run_id: str) -> bool:
        return bool(_RUN_ID.match(run_id)) and self._get(f"run#{run_id}", "run") is not None

    def _run_items(self, limit: int) -> list[Item]:
        """The newest runs of every status, from `status-index` (no scan)."""
        items: list[Item] = []
        for status in STATES:
            kwargs: dict[str, Any] = {
                "TableName": self.table, "IndexName": STATUS_INDEX, "KeyConditionExpression": "gsi1pk = :p",
                "ExpressionAttributeValues": {":p": _s(f"status#{status}")}, "ScanIndexForward": False,
            }
            found: list[Item] = []
            while len(found) < limit:
                page = self.client.query(**kwargs, Limit=min(limit - len(found), 1000))
                found += page.get("Items", [])
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
            items += found
        return sorted(items, key=lambda i: i["created_at"]["S"], reverse=True)[:limit]

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        return [self._run(i) for i in self._run_items(limit)]

    def runs_of_incident(self, incident_id: str) -> list[RunRecord]:
        """The incident's runs, newest first: a strongly consistent Query of its `run#` items (written
        with the run, in one transaction), then each run; never the eventually consistent status index."""
        refs = sorted(self._query(f"incident#{incident_id}", "run#"), key=lambda i: i["sk"]["S"], reverse=True)
        items = [self._get(f"run#{ref['run_id']['S']}", "run") for ref in refs]
        return [self._run(i) for i in items if i is not None]  # None: the run's item expired (TTL) first

    def set_run_status(self, run_id: str, status: str, result: dict[str, Any] | None = None) -> None:
        now = now_iso()
        values: Item = {":s": _s(status), ":u": _s(now), ":g": _s(f"status#{status}"), ":k": _s(f"{now}#{run_id}")}
        names = {"#st": "status"}
        expr = "SET #st = :s, updated_at = :u, gsi1pk = :g, gsi1sk = :k"
        if result is not None:
            expr += self._blob_update(f"run#{run_id}", "run", "result", redact_value(result), names, values)
        self._write(run_id, {"Update": {
            "TableName": self.table, "Key": {"pk": _s(f"run#{run_id}"), "sk": _s("run")},
            "UpdateExpression": expr, "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}})

    def _blob_update(self, pk: str, sk: str, name: str, value: Any, names: dict[str, str], values: Item) -> str:
        """`, a = :b ... REMOVE c` setting a blob attribute (inline or parts) and removing the other form;
        appended to an update's SET clause, so it comes last."""
        blob = self._blob(pk, sk, name, value)
        sets = []
        for n, (attr, val) in enumerate(blob.items()):
            names[f"#b{n}"], values[f":b{n}"] = attr, val
            sets.append(f"#b{n} = :b{n}")
        stale = [f"{name}_parts", f"{name}_sha256"] if name in blob else [name]
        for n, attr in enumerate(stale):
            names[f"#r{n}"] = attr
        return ", " + ", ".join(sets) + " REMOVE " + ", ".join(f"#r{n}" for n in range(len(stale)))

    def release(self, run_id: str) -> None:
        """Free the run's incident (its lock), if this run holds it."""
        item = self._get(f"run#{run_id}", "run")
        if item is None:
            return
        try:
            self.client.delete_item(
                TableName=self.table, Key={"pk": _s(f"incident#{item['incident_id']['S']}"), "sk": _s("lock")},
                ConditionExpression="#run = :r", ExpressionAttributeNames={"#run": "run_id"},
                ExpressionAttributeValues={":r": _s(run_id)})
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise

    # -- steps and changes ----------------------------------------------------------------
    def save_step(self, run_id: str, step_id: str, status: str,
                  plan: dict[str, Any] | None, error: str | None = None) -> None:
        pk, sk = f"run#{run_id}", f"step#{step_id}"
        values: Item = {":s": _s(status), ":u": _s(now_iso()), ":r": _s(run_id), ":i": _s(step_id)}
        names = {"#st": "status"}
        sets = ["#st = :s", "updated_at = :u", "run_id = :r", "step_id = :i"]
        if error is not None:
            names["#err"] = "error"
            sets.append("#err = :e")
            values[":e"] = _s(str(redact_value(error)))
        ttl = self._ttl(run_id)
        if ttl:
            sets.append(f"{TTL_ATTRIBUTE} = :x")
            values[":x"] = ttl[TTL_ATTRIBUTE]
        expr = "SET " + ", ".join(sets)
        if plan is not None:
            expr += self._blob_update(pk, sk, "plan", redact_value(plan), names, values)
        if error is None:
            names["#err"] = "error"
            expr += ", #err" if " REMOVE " in expr else " REMOVE #err"
        self._write(run_id, {"Update": {
            "TableName": self.table, "Key": {"pk": _s(pk), "sk": _s(sk)}, "UpdateExpression": expr,
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}})

    def steps(self, run_id: str) -> dict[str, StepRecord]:
        return {
            i["step_id"]["S"]: StepRecord(run_id, i["step_id"]["S"], i["status"]["S"], self._unblob(i, "plan"),
                                          i["error"]["S"] if "error" in i else None, i["updated_at"]["S"])
            for i in self._query(f"run#{run_id}", "step#")
        }

    def change_started(self, run_id: str, step_id: str, digest: str, change: dict[str, Any]) -> bool:
        """Claim a change before it is sent: a conditional put that fails (False: do not send it) when
        another worker is applying it, or finished it after this worker took the run (or, without a
        lease, after this journal was opened). A change a dead holder left `applying` is taken over by
        the worker that holds the run now; a failed change may be tried again."""
        fence = self._fence(run_id)
        since = self._held.get(run_id, self._opened_ms)
        condition = "attribute_not_exists(sk) OR #st = :failed OR finished_ms < :since"
        if fence:
            condition += " OR #st = :applying"
        put = {
            "TableName": self.table, "ConditionExpression": condition,
            "Item": {"pk": _s(f"run#{run_id}"), "sk": _s(f"change#{step_id}#{digest}"), "run_id": _s(run_id),
                     "step_id": _s(step_id), "digest": _s(digest), "status": _s("applying"),
                     "change": {"B": _pack(change)}, "started_at": _s(now_iso()), "owner": _s(self.owner),
                     **self._ttl(run_id)},
            "ExpressionAttributeNames": {"#st": "status"},
            "ExpressionAttributeValues": {":failed": _s("failed"), ":since": _n(since),
                                          **({":applying": _s("applying")} if fence else {})},
        }
        try:
            if fence:
                self.client.transact_write_items(TransactItems=[*fence, {"Put": put}])
            else:
                self.client.put_item(**put)
        except ClientError as exc:
            code, reasons = _code(exc), _reasons(exc)
            if code == "ConditionalCheckFailedException":
                return False
            if code == "TransactionCanceledException" and reasons[:1] == ["ConditionalCheckFailed"]:
                self._lost.add(run_id)
                raise LeaseLostError(run_id) from None
            if code == "TransactionCanceledException" and reasons[1:2] == ["ConditionalCheckFailed"]:
                return False
            raise
        return True

    def change_finished(self, run_id: str, step_id: str, digest: str, status: str,
                        error: str | None = None) -> None:
        """Recorded whoever holds the run now: what was sent is true whatever happened to the lease."""
        values: Item = {":s": _s(status), ":f": _s(now_iso()), ":m": _n(_ms())}
        expr = "SET #st = :s, finished_at = :f, finished_ms = :m"
        if error is None:
            expr += " REMOVE #err"
        else:
            expr = "SET #st = :s, finished_at = :f, finished_ms = :m, #err = :e"
            values[":e"] = _s(str(redact_value(error)))
        try:
            self.client.update_item(
                TableName=self.table, Key={"pk": _s(f"run#{run_id}"), "sk": _s(f"change#{step_id}#{digest}")},
                UpdateExpression=expr, ConditionExpression="attribute_exists(sk)",
                ExpressionAttributeNames={"#st": "status", "#err": "error"}, ExpressionAttributeValues=values)
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":  # never started: nothing to finish
                raise

    def changes(self, run_id: str) -> list[ChangeRecord]:
        records = [
            ChangeRecord(run_id, i["step_id"]["S"], i["digest"]["S"], i["status"]["S"],
                         json.loads(gzip.decompress(i["change"]["B"])), i["error"]["S"] if "error" in i else None,
                         i["started_at"]["S"] if "started_at" in i else None,
                         i["finished_at"]["S"] if "finished_at" in i else None)
            for i in self._query(f"run#{run_id}", "change#")
        ]
        return sorted(records, key=lambda c: c.started_at or "")

    def change_owner(self, run_id: str, step_id: str, digest: str) -> str | None:
        """The worker that last claimed a change (host/pid/token)."""
        item = self._get(f"run#{run_id}", f"change#{step_id}#{digest}")
        return item["owner"]["S"] if item and "owner" in item else None

    # -- approvals and anchors ------------------------------------------------------------
    def add_approval(self, approval: ApprovalRecord) -> None:
        self.client.put_item(TableName=self.table, Item={
            "pk": _s(f"run#{approval.run_id}"), "sk": _s(f"approval#{approval.at}#{uuid.uuid4().hex[:8]}"),
            "step_id": _s(approval.step_id), "by": _s(approval.by), "reason": _s(str(redact_value(approval.reason))),
            "at": _s(approval.at), "plan_digest": _s(approval.plan_digest),
            "change_digests": _s(json.dumps(approval.change_digests)), **self._ttl(approval.run_id)})

    def approvals(self, run_id: str) -> list[ApprovalRecord]:
        return sorted((ApprovalRecord(run_id, i["step_id"]["S"], i["by"]["S"], i["reason"]["S"], i["at"]["S"],
                                      i["plan_digest"]["S"], json.loads(i["change_digests"]["S"]))
                       for i in self._query(f"run#{run_id}", "approval#")), key=lambda a: a.at)

    def add_anchor(self, anchor: AnchorRecord) -> None:
        item: Item = {"pk": _s(f"run#{anchor.run_id}"), "sk": _s(f"anchor#{anchor.at}#{uuid.uuid4().hex[:8]}"),
                      "at": _s(anchor.at), "audit_seq": _n(anchor.audit_seq), "audit_sha256": _s(anchor.audit_sha256),
                      **self._ttl(anchor.run_id)}
        if anchor.manifest_sha256:
            item["manifest_sha256"] = _s(anchor.manifest_sha256)
        self.client.put_item(TableName=self.table, Item=item)

    def anchors(self, run_id: str | None = None) -> list[AnchorRecord]:
        runs = [run_id] if run_id else [r.run_id for r in self.list_runs(limit=1_000_000)]
        found = [AnchorRecord(rid, i["at"]["S"], int(i["audit_seq"]["N"]), i["audit_sha256"]["S"],
                              i["manifest_sha256"]["S"] if "manifest_sha256" in i else None)
                 for rid in runs for i in self._query(f"run#{rid}", "anchor#")]
        return sorted(found, key=lambda a: (a.audit_seq, a.at))

    # -- attachments (a run's CloudTrail input) ---------------------------------------------
    def put_attachment(self, run_id: str, name: str, value: Any) -> None:
        pk, sk = f"run#{run_id}", f"attachment#{name}"
        self.client.put_item(TableName=self.table, Item={
            "pk": _s(pk), "sk": _s(sk), **self._blob(pk, sk, "value", value), **self._ttl(run_id)})

    def get_attachment(self, run_id: str, name: str) -> Any:
        item = self._get(f"run#{run_id}", f"attachment#{name}")
        return None if item is None else self._unblob(item, "value")

    # -- the audit log --------------------------------------------------------------------
    def audit_head(self, run_id: str) -> tuple[int, str] | None:
        item = self._get(f"run#{run_id}", "audit-head")
        return None if item is None else (int(item["seq"]["N"]), item["sha256"]["S"])

    def audit_lines(self, run_id: str) -> list[str]:
        return [i["line"]["S"] for i in self._query(f"run#{run_id}", "audit#")]

    def run_expired(self, record: RunRecord) -> bool:
        """True once the run's items are past their TTL (DynamoDB deletes them within days, not at once)."""
        return bool(self.ttl_days) and _epoch_of(record.created_at) + self.ttl_days * 86400 < time.time()

    def audit_log(self, run_id: str) -> DynamoAuditLog:
        return DynamoAuditLog(self, run_id)


class DynamoAuditLog:
    """A run's audit log in the journal table: each event one item `audit#<seq>` carrying `seq` and `prev`
    (the SHA-256 of the line before it), appended by a transaction that also moves `audit-head` on only
    from the head it read, so two processes appending to one run's log never fork the chain."""

    def __init__(self, journal: DynamoJournal, run_id: str) -> None:
        self.journal = journal
        self.run_id = run_id
        self._lock = threading.Lock()
        self._head: tuple[int, str] | None = None

    def write(self, event: dict[str, Any]) -> None:
        j = self.journal
        run_id = str(event.get("run_id") or self.run_id)
        pk = _s(f"run#{run_id}")
        with self._lock:
            for attempt in range(100):
                if self._head is None or attempt:
                    self._head = j.audit_head(run_id) or (0, GENESIS)
                seq, prev = self._head
                record = {k: event.get(k) for k in AUDIT_FIELDS}
                record.update(event)
                record["seq"], record["prev"] = seq + 1, prev
                line = json.dumps(record, sort_keys=False, default=str, separators=(",", ":"))
                ttl = j._ttl(run_id)
                head_condition = "attribute_not_exists(sk)" if seq == 0 else "#seq = :prev"
                try:
                    j.client.transact_write_items(TransactItems=[
                        {"Put": {"TableName": j.table, "ConditionExpression": "attribute_not_exists(sk)",
                                 "Item": {"pk": pk, "sk": _s(f"audit#{seq + 1:012d}"), "line": _s(line), **ttl}}},
                        {"Put": {"TableName": j.table, "ConditionExpression": head_condition,
                                 "Item": {"pk": pk, "sk": _s("audit-head"), "seq": _n(seq + 1),
                                          "sha256": _s(line_hash(line)), **ttl},
                                 **({"ExpressionAttributeValues": {":prev": _n(seq)},
                                     "ExpressionAttributeNames": {"#seq": "seq"}} if seq else {})}},
                    ])
                except ClientError as exc:
                    if _code(exc) not in ("TransactionCanceledException", "TransactionConflictException"):
                        raise
                    time.sleep(random.uniform(0.005, 0.05))
                    continue
                self._head = (seq + 1, line_hash(line))
                return
        raise StanchError(f"run {run_id}: could not append to the audit log in {j.table} (contention)")
