"""An exclusive lock kept in an object store, where there is no flock: a lease object.

    with held("s3a://bucket/prefix/.lock"):
        ...  # one holder at a time, whichever machine it runs on

The lock is the object itself. It is created with a conditional write (If-None-Match: *), which
S3 lets exactly one writer win; while the block runs a thread renews the lease every
LEASE_S / 3 seconds (a write conditional on the object's ETag), and the block's end deletes it
(a delete conditional on the same ETag). The object records the holder's host, pid and the end
of its lease. A holder that died leaves the object behind; a waiter takes it over when the lease
has run out, or at once when the holder ran on this machine and its pid is gone (a SIGKILLed
publish on the same host). A takeover deletes the stale object on its ETag, so of two waiters
that judged it stale only one succeeds, and the other goes on waiting.

Credentials, region and endpoint come from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION or AWS_DEFAULT_REGION, AWS_ENDPOINT_URL),
as for every object-storage access of the project (core.storage). Hosts' clocks are assumed to
agree to well within the lease.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Iterator

log = logging.getLogger(__name__)

LEASE_S = 120.0  # a holder that stops renewing loses the lock after this long
POLL_S = 0.5  # how often a waiter looks again
_TAKEN = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class LockLost(RuntimeError):
    """The lease ran out or was taken over while the block still ran."""


def _bucket_key(uri: str) -> tuple[str, str]:
    scheme, _, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if scheme not in ("s3", "s3a") or not bucket or not key:
        raise ValueError(f"{uri!r} is not an s3:// or s3a:// object URI (bucket and key)")
    return bucket, key


def _client() -> Any:
    import boto3  # here, not at import: only object-storage publishes take this lock

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("s3", region_name=region, endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def _code(err: Exception) -> str:
    return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(holder: dict[str, Any]) -> str | None:
    """Why the lease described by ``holder`` no longer holds, or None while it does."""
    if float(holder.get("expires", 0)) < time.time():
        return "its lease ran out"
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0))):
        return f"its process {holder.get('pid')} on this host is gone"
    return None


def _body(owner: str) -> bytes:
    return json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                       "expires": time.time() + LEASE_S}).encode()


def _acquire(client: Any, bucket: str, key: str, owner: str, uri: str) -> str:
    """Create the lock object (waiting for the holder, taking over a stale one); its ETag."""
    from botocore.exceptions import ClientError

    said = 0.0
    while True:
        try:
            return client.put_object(Bucket=bucket, Key=key, Body=_body(owner), IfNoneMatch="*")["ETag"]
        except ClientError as e:
            if _code(e) not in _TAKEN:
                raise
        try:
            got = client.get_object(Bucket=bucket, Key=key)
            etag, holder = got["ETag"], json.loads(got["Body"].read())
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404"):
                continue  # released in between: try again at once
            raise
        except ValueError:
            holder, etag = {}, None  # not a lock this module wrote: only its lease's end frees it
        why = _stale(holder) if etag else None
        if why:
            try:
                client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
                log.warning("took over the lock %s from %s (pid %s): %s", uri, holder.get("host"), holder.get("pid"), why)
            except ClientError as e:
                if _code(e) not in _TAKEN + ("NoSuchKey", "404"):
                    raise
            continue
        if time.monotonic() - said > 60:
            log.info("waiting for the lock %s, held by %s (pid %s)", uri, holder.get("host"), holder.get("pid"))
            said = time.monotonic()
        time.sleep(POLL_S)


@contextlib.contextmanager
def held(uri: str) -> Iterator[None]:
    """Hold the lease lock ``uri`` (an s3:// or s3a:// object) for the block (module docstring).

    Raises LockLost after the block when the lease could not be renewed while it ran."""
    from botocore.exceptions import ClientError

    bucket, key = _bucket_key(uri)
    client, owner = _client(), uuid.uuid4().hex
    etag = [_acquire(client, bucket, key, owner, uri)]
    stop, lost = threading.Event(), []

    def renew() -> None:
        while not stop.wait(LEASE_S / 3):
            try:
                etag[0] = client.put_object(Bucket=bucket, Key=key, Body=_body(owner), IfMatch=etag[0])["ETag"]
            except ClientError as e:
                lost.append(f"{_code(e) or e}")
                log.error("lost the lock %s: renewing its lease failed (%s)", uri, _code(e) or e)
                return

    renewer = threading.Thread(target=renew, name="object-lock-renewal", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        if not lost:
            with contextlib.suppress(ClientError):
                client.delete_object(Bucket=bucket, Key=key, IfMatch=etag[0])
    if lost:
        raise LockLost(f"the lock {uri} was lost while held ({lost[0]}); another holder may have run at the same time")
