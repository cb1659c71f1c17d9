"""An exclusive lock kept in an object store, where there is no flock: a lease object.

    with held("s3a://bucket/prefix/.lock"):
        ...  # one holder at a time, whichever machine it runs on

The lock is the object itself. It is created with a conditional write (If-None-Match: *), which
S3 lets exactly one writer win; while the block runs a thread renews the lease every
LEASE_S / 3 seconds (a rewrite conditional on the object's ETag, with a new body, so a new ETag),
and the block's end deletes it (a delete conditional on the same ETag). The object records the
holder's host and pid. A holder that died leaves the object behind; a waiter takes it over when
it has seen the same ETag for LEASE_S seconds of its own monotonic clock (no renewal for a whole
lease), or at once when the holder ran on this machine and its pid is gone (a SIGKILLed publish
on the same host). No host reads another's wall clock, so hosts whose clocks disagree still
judge a lease alike. A takeover deletes the stale object on its ETag, so of two waiters that
judged it stale only one succeeds, and the other goes on waiting.

Credentials, region and endpoint come from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION or AWS_DEFAULT_REGION, AWS_ENDPOINT_URL),
as for every object-storage access of the project (core.storage).
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


def _stale(holder: dict[str, Any], unchanged_s: float) -> str | None:
    """Why the lease of ``holder``, whose object has not changed for ``unchanged_s`` seconds of
    this process's monotonic clock, no longer holds; None while it does."""
    if unchanged_s > LEASE_S:
        return f"its lease was not renewed for {unchanged_s:.0f} s"
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid") or 0)):
        return f"its process {holder.get('pid')} on this host is gone"
    return None


def _body(owner: str, renewal: int) -> bytes:
    return json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "renewal": renewal,
                       "lease_s": LEASE_S}).encode()


def _acquire(client: Any, bucket: str, key: str, owner: str, uri: str) -> str:
    """Create the lock object (waiting for the holder, taking over a stale one); its ETag."""
    from botocore.exceptions import ClientError

    said = 0.0
    first_seen: dict[str, float] = {}  # ETag -> when this waiter first saw it (monotonic)
    while True:
        try:
            return client.put_object(Bucket=bucket, Key=key, Body=_body(owner, 0), IfNoneMatch="*")["ETag"]
        except ClientError as e:
            if _code(e) not in _TAKEN:
                raise
        try:
            got = client.get_object(Bucket=bucket, Key=key)
            etag = got["ETag"]
            holder = json.loads(got["Body"].read())
            if not isinstance(holder, dict):
                raise ValueError("not a lock object")
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404"):
                continue  # released in between: try again at once
            raise
        except ValueError:
            holder = {}  # not a lock this module wrote: it goes when it stays unchanged for a lease
        now = time.monotonic()
        why = _stale(holder, now - first_seen.setdefault(etag, now))
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
        renewal = 0
        while not stop.wait(LEASE_S / 3):
            renewal += 1
            try:
                etag[0] = client.put_object(Bucket=bucket, Key=key, Body=_body(owner, renewal),
                                            IfMatch=etag[0])["ETag"]
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
