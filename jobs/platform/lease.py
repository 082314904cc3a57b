"""One holder at a time of a shared folder in the lakehouse (the validation reports' GX project), on any host.

A local lakehouse uses an OS file lock beside the folder (released when its holder exits or dies). An object-store
lakehouse whose drivers commit through DynamoDB (``writes.s3_log_store: dynamodb``) takes a lease in the same
DynamoDB table: a conditional put succeeds only when no lease exists, it has expired, or this holder already has it.
A heartbeat thread extends it every third of ``writes.lease_s`` while the block runs; the block checks it still
holds the lease before it publishes; a holder that dies leaves the lease to expire. Two hosts validating at once
then take turns, so each publishes a project that holds the other's results, Data Docs pages and overview rows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from jobs.platform import log_store
from jobs.platform.config import Settings
from jobs.platform.errors import TaxiError

log = logging.getLogger("taxi.lease")


class LeaseLost(TaxiError):
    """The lease expired or was taken while the block ran: publishing now could overwrite another holder's work."""


class Hold:
    """What a block holds; ``check()`` before publishing."""

    def __init__(self, what: str):
        self.what = what
        self.lost: str | None = None

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(f"lost the lease on {self.what} before publishing ({self.lost}); nothing was published")


@contextlib.contextmanager
def held(settings: Settings, name: str, lock_file: Path):
    """Hold ``<lakehouse>/<name>`` exclusively: a DynamoDB lease for an object-store lakehouse on the DynamoDB log
    store, else an OS file lock on ``lock_file``."""
    if log_store.uses_dynamodb(settings):
        with _dynamodb_lease(settings, f"{settings.lakehouse}/{name}") as hold:
            yield hold
    else:
        with file_lock(lock_file) as hold:
            yield hold


@contextlib.contextmanager
def file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield Hold(str(path.parent))
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _dynamodb_lease(settings: Settings, what: str):
    w = settings.writes
    client, table = log_store.dynamodb_client(settings), w.dynamodb_table
    me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    key = {"tablePath": {"S": f"lease:{what}"}, "fileName": {"S": "lease"}}
    _acquire(settings, client, key, me, what)
    hold, stop = Hold(what), threading.Event()

    def heartbeat() -> None:
        while not stop.wait(w.lease_s / 3):
            try:
                client.update_item(
                    TableName=table,
                    Key=key,
                    UpdateExpression="SET expiresAt = :until",
                    ConditionExpression="holder = :me",
                    ExpressionAttributeValues={":until": {"N": str(int(time.time() + w.lease_s))}, ":me": {"S": me}},
                )
            except client.exceptions.ConditionalCheckFailedException:
                hold.lost = "another holder took it after it expired"
                return
            except Exception as e:  # a network blip: the next beat tries again, within the lease's time
                log.warning("could not extend the lease on %s: %s", what, e)

    beat = threading.Thread(target=heartbeat, name="taxi-lease", daemon=True)
    beat.start()
    try:
        yield hold
    finally:
        stop.set()
        beat.join()
        with contextlib.suppress(client.exceptions.ConditionalCheckFailedException):
            client.delete_item(
                TableName=table,
                Key=key,
                ConditionExpression="holder = :me",
                ExpressionAttributeValues={":me": {"S": me}},
            )


def _acquire(settings: Settings, client, key: dict, me: str, what: str) -> None:
    w = settings.writes
    deadline, holder = time.monotonic() + w.lease_wait_s, None
    while True:
        now = int(time.time())
        try:
            client.put_item(
                TableName=w.dynamodb_table,
                Item={**key, "holder": {"S": me}, "expiresAt": {"N": str(now + w.lease_s)}},
                ConditionExpression="attribute_not_exists(fileName) OR expiresAt < :now",
                ExpressionAttributeValues={":now": {"N": str(now)}},
            )
            return
        except client.exceptions.ResourceNotFoundException:
            log_store.create_table(settings)  # the first user of a new deployment
        except client.exceptions.ConditionalCheckFailedException:
            if holder is None:
                found = client.get_item(TableName=w.dynamodb_table, Key=key, ConsistentRead=True).get("Item", {})
                holder = found.get("holder", {}).get("S", "?")
                log.info("waiting for the lease on %s (held by %s)", what, holder)
        if time.monotonic() > deadline:
            raise TaxiError(
                f"waited {w.lease_wait_s} s for the lease on {what} (held by {holder}); a holder that died frees it "
                f"within writes.lease_s ({w.lease_s} s)"
            )
        time.sleep(1.0)
