"""``ntt worker``: one process per GPU that runs NTT's queued operations (the shards of sharded runs and any
other NTT operation queued for its delegation target) on any machine that reaches the same FiftyOne database.

A worker claims a queued operation with FiftyOne's own atomic claim (it becomes running only if it is still
queued, so two workers never run one operation) and runs it in a child process that lives as long as the
worker: models load once (ntt caches them per process), and a crash or an out-of-memory kill takes down the
child, not the worker. While the operation runs the worker beats its heartbeats (the operation's, and for a
shard the shard's ``beat_at``, stamped with the database server's clock, only while the shard's lease is the
operation's); as soon as the attempt is no longer this worker's (the operation failed or stopped, the shard
queued again after this worker was taken for lost) its child is terminated. A child that dies fails its
operation with the exit code, and the worker starts a new one. While idle, and between operations, the worker
runs the reaper (``reaper.reap``). Database errors never end a worker: it waits the outage out with backoff,
and its child waits too (``outages.patiently``). ``CUDA_VISIBLE_DEVICES`` picks its GPU.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable

from bson import ObjectId
from pymongo.errors import PyMongoError

from ntt.fo.jobs.follow import PLUGIN_PREFIX, state_of
from ntt.fo.jobs.reaper import STALE_AFTER, WORKER_LINK, reap
from ntt.fo.jobs.shards import TARGET, delegated_service, fail_operation, operation, shard_steps
from ntt.fo.jobs.states import NOW, note_shard, shards_collection
from ntt.fo.references import NTTFiftyOneError

__all__ = ["Worker", "reap", "shard_steps"]  # the worker, its reaper, and one shard's work (a shard operator's)

HEARTBEAT = 10.0  # seconds between heartbeats; the reaper's stale_after must be several of these


class Worker:
    """Runs NTT operations queued for ``target`` until stopped (SIGINT/SIGTERM: after the operation it is
    running), ``idle_exit`` seconds pass with nothing to do, or ``max_operations`` have run."""

    def __init__(
        self,
        target: str = TARGET,
        heartbeat: float = HEARTBEAT,
        stale_after: float = STALE_AFTER,
        poll: float = 2.0,
        idle_exit: float | None = None,
        max_operations: int | None = None,
        log: Callable[[str], None] = print,
    ):
        if not heartbeat > 0 or not stale_after > 2 * heartbeat:
            raise NTTFiftyOneError(
                f"--stale-after ({stale_after:g} s) must be more than twice --heartbeat ({heartbeat:g} s): a worker "
                "that is merely slow to beat would be taken for lost"
            )
        self.target, self.heartbeat, self.stale_after, self.poll = target, heartbeat, stale_after, poll
        self.idle_exit, self.max_operations, self.log = idle_exit, max_operations, log
        self.reap_every = stale_after / 2  # a lost worker's shard waits at most 1.5 x stale_after to run again
        self.link = f"{WORKER_LINK}{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
        self._child: _Child | None = None
        self._stop = False
        self._last_reap = 0.0
        self._outage_at: float | None = None  # when this worker last could not reach the database (monotonic)

    def run(self) -> int:
        """Work until told to stop; returns how many operations this worker ran."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._request_stop)
        ran, idle_since, backoff = 0, time.monotonic(), self.poll
        self.log(f"ntt worker {self.link}: claiming NTT operations for target {self.target!r}")
        try:
            while not self._stop and (self.max_operations is None or ran < self.max_operations):
                try:
                    self._reap_if_due()
                    op = self._next_queued()
                except PyMongoError as err:  # a database outage or failover: wait it out
                    self._outage(err, backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = self.poll
                if op is None:
                    if self.idle_exit is not None and time.monotonic() - idle_since > self.idle_exit:
                        break
                    time.sleep(self.poll)
                    continue
                if self._execute(op):
                    ran += 1
                idle_since = time.monotonic()
        finally:
            if self._child is not None:
                self._child.close()
        self.log(f"ntt worker {self.link}: ran {ran} operation(s), exiting")
        return ran

    def _request_stop(self, *_):
        self._stop = True

    def _outage(self, err: Exception, wait: float) -> None:
        self._outage_at = time.monotonic()
        self.log(f"database unreachable ({type(err).__name__}: {str(err).splitlines()[0][:120]}); again in {wait:g} s")
        time.sleep(wait)

    def _reap_if_due(self) -> None:
        if time.monotonic() - self._last_reap < self.reap_every:
            return
        self._last_reap = time.monotonic()
        # after an outage every heartbeat is old: give the other workers stale_after to beat again first
        recovering = self._outage_at is not None and time.monotonic() - self._outage_at < self.stale_after
        for line in reap(self.stale_after, judge_lost=not recovering):
            self.log(f"reaper: {line}")

    def _next_queued(self):
        from fiftyone.factory import DelegatedOperationPagingParams, SortByField, SortDirection

        paging = DelegatedOperationPagingParams(SortByField.QUEUED_AT, SortDirection.ASCENDING, limit=1)
        ops = delegated_service().list_operations(
            operator={"$regex": f"^{PLUGIN_PREFIX}"}, delegation_target=self.target, run_state="queued", paging=paging
        )
        return ops[0] if ops else None

    def _execute(self, op) -> bool:
        """Run ``op`` in the child, beating its heartbeat while it holds the operation (and its shard's lease);
        returns whether this worker got to run it. The child is stopped as soon as the attempt is no longer this
        worker's: the operation failed or went to another, or the shard was queued again or stopped."""
        if self._child is None or not self._child.alive():
            self._child = _Child()
        self._child.conn.send((str(op.id), self.link))
        held = _Hold(op, self.link)
        while True:
            try:
                if self._child.conn.poll(self.heartbeat):
                    claimed, error = self._child.conn.recv()
                    if claimed:
                        self.log(f"{op.label}: {'failed: ' + error if error else 'done'}")
                    return claimed
            except (EOFError, OSError):
                self._child.process.join(timeout=5)  # the child died: handled below, once it has exited
            try:
                verdict = held.check()
            except PyMongoError as err:  # the database is away: the child waits it out; so do we
                self._outage(err, 0)
                verdict = "unknown"
            if not self._child.alive():
                code = self._child.process.exitcode
                self._child = None
                if held.ours:
                    _fail_quietly(op.id, _death_message(code))
                self.log(f"{op.label}: the child process died (exit code {code})")
                return held.ours
            if verdict == "lost":
                self.log(f"{op.label}: no longer this worker's ({held.why}); terminating its child process")
                self._child.close(kill=True)
                self._child = None
                return True


class _Hold:
    """What a worker knows of the attempt it runs: whether the operation (and, for a shard, the shard's lease)
    is still this worker's. ``check`` beats the heartbeats while it is."""

    def __init__(self, op, link: str):
        params = op.context.request_params.get("params", {}) if op.context else {}
        self.op_id, self.link = op.id, link
        self.shard = ObjectId(params["ntt_shard"]) if params.get("ntt_shard") else None
        self.lease = params.get("ntt_lease")
        self.ours = False  # seen running with this worker's link
        self.why = ""

    def check(self) -> str:
        """ "held", "waiting" (the child has not claimed it yet) or "lost"."""
        doc = operation(self.op_id)
        state = state_of(doc) if doc is not None else "deleted"
        if doc is not None and doc.run_link == self.link and state == "running":
            self.ours = True
            delegated_service()._repo.ping(self.op_id)  # FiftyOne's own heartbeat (its monitor mode uses the same call)
            return "held" if self._beat_shard() else "lost"
        if self.ours or state not in ("queued", "running"):
            self.why = f"its operation is {state}" if state != "running" else "its operation went to another worker"
            return "lost" if self.ours else "waiting"
        return "waiting"

    def _beat_shard(self) -> bool:
        if self.shard is None or self.lease is None:
            return True
        if note_shard(self.shard, self.lease, beat_at=NOW, holder=self.link):
            return True
        shard = shards_collection().find_one({"_id": self.shard}, {"state": 1, "lease": 1})
        if shard is not None and shard.get("lease") == self.lease and shard["state"] in ("queued", "done"):
            return True  # the child is about to claim it, or has just ended it and is reporting
        self.why = "its shard was queued again, stopped or ended"
        return False


class _Child:
    """The worker's child process: runs one operation per request, as FiftyOne's executor does."""

    def __init__(self):
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked database client or CUDA
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=_child_main, args=(theirs, os.getpid()), daemon=True)
        self.process.start()

    def alive(self) -> bool:
        return self.process.is_alive()

    def close(self, kill: bool = False) -> None:
        if kill or not self.alive():
            self.process.kill()
        else:
            self.conn.send(None)
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


def _child_main(conn, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the worker after this operation, not the operation
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    service = delegated_service()
    while (request := conn.recv()) is not None:
        op_id, link = request
        try:
            op = operation(ObjectId(op_id))
            result = service.execute_operation(op, run_link=link) if op is not None else None
            error = None if result is None or not result.error else str(result.error).strip().splitlines()[-1]
            conn.send((result is not None, error))
        except Exception as err:  # e.g. the database went away while the executor recorded the outcome
            conn.send((True, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))


def _exit_with_parent(parent_pid: int) -> None:
    """A child whose worker is gone (killed with SIGKILL) stops at once: its heartbeat has stopped, so its
    operation will be run again elsewhere and must not be written to from here any more."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


def _death_message(code: int | None) -> str:
    if code == -signal.SIGKILL:
        return "the worker's child process died: killed by SIGKILL (out of memory?)"
    return f"the worker's child process died with exit code {code}"


def _fail_quietly(op_id, error: str) -> None:
    """Fail a dead child's operation (the reaper runs its shard again); if the database is away, the reaper
    finds the shard's heartbeat stale instead."""
    try:
        fail_operation(op_id, error, "running")
    except PyMongoError:
        pass
