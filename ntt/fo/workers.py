"""``ntt worker``: one process per GPU that runs NTT's queued operations (the shards of sharded runs and any
other NTT operation queued for its delegation target) on any machine that reaches the same FiftyOne database.

A worker claims a queued operation with FiftyOne's own atomic claim (it becomes running only if it is still
queued, so two workers never run one operation) and runs it in a child process that lives as long as the
worker: models load once (ntt caches them per process), and a crash or an out-of-memory kill takes down the
child, not the worker. While the operation runs the worker beats its heartbeat (the operation's
``updated_at``); an operation marked failed from outside ('NTT: runs' stop) has its child terminated. A child
that dies fails its operation with the exit code, and the worker starts a new one. While idle, and between
operations, the worker runs the reaper (``reaper.reap``). ``CUDA_VISIBLE_DEVICES`` picks its GPU.
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

from .reaper import STALE_AFTER, WORKER_LINK, reap
from .runs import PLUGIN_PREFIX, state_of
from .shards import TARGET, delegated_service

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
        self.target, self.heartbeat, self.stale_after, self.poll = target, heartbeat, stale_after, poll
        self.idle_exit, self.max_operations, self.log = idle_exit, max_operations, log
        self.reap_every = stale_after / 2  # a lost worker's shard waits at most 1.5 x stale_after to run again
        self.link = f"{WORKER_LINK}{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
        self._child: _Child | None = None
        self._stop = False
        self._last_reap = 0.0

    def run(self) -> int:
        """Work until told to stop; returns how many operations this worker ran."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._request_stop)
        ran, idle_since = 0, time.monotonic()
        self.log(f"ntt worker {self.link}: claiming NTT operations for target {self.target!r}")
        try:
            while not self._stop and (self.max_operations is None or ran < self.max_operations):
                self._reap_if_due()
                op = self._next_queued()
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

    def _reap_if_due(self) -> None:
        if time.monotonic() - self._last_reap < self.reap_every:
            return
        self._last_reap = time.monotonic()
        for line in reap(self.stale_after):
            self.log(f"reaper: {line}")

    def _next_queued(self):
        from fiftyone.factory import DelegatedOperationPagingParams, SortByField, SortDirection

        paging = DelegatedOperationPagingParams(SortByField.QUEUED_AT, SortDirection.ASCENDING, limit=1)
        ops = delegated_service().list_operations(
            operator={"$regex": f"^{PLUGIN_PREFIX}"}, delegation_target=self.target, run_state="queued", paging=paging
        )
        return ops[0] if ops else None

    def _execute(self, op) -> bool:
        """Run ``op`` in the child, beating its heartbeat; returns whether this worker got to run it."""
        if self._child is None or not self._child.alive():
            self._child = _Child()
        self._child.conn.send((str(op.id), self.link))
        service = delegated_service()
        while True:
            try:
                if self._child.conn.poll(self.heartbeat):
                    claimed, error = self._child.conn.recv()
                    if claimed:
                        self.log(f"{op.label}: {'failed: ' + error if error else 'done'}")
                    return claimed
            except (EOFError, OSError):
                self._child.process.join(timeout=5)  # the child died: handled below, once it has exited
            doc = service.get(op.id)
            ours = doc is not None and doc.run_link == self.link
            if not self._child.alive():
                code = self._child.process.exitcode
                self._child = None
                if ours and state_of(doc) == "running":
                    _fail(service, op.id, _death_message(code))
                self.log(f"{op.label}: the child process died (exit code {code})")
                return ours
            if ours and state_of(doc) == "failed":  # stopped from outside: stop the work too
                self.log(f"{op.label}: marked failed from outside; terminating its child process")
                self._child.close(kill=True)
                self._child = None
                return True
            if ours:
                service._repo.ping(op.id)  # FiftyOne's own heartbeat (its monitor mode uses the same call)


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
        from bson import ObjectId

        op_id, link = request
        op = service.get(ObjectId(op_id))
        result = service.execute_operation(op, run_link=link) if op is not None else None
        error = None if result is None or not result.error else str(result.error).strip().splitlines()[-1]
        conn.send((result is not None, error))


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


def _fail(service, op_id, error: str) -> None:
    from fiftyone.operators.executor import ExecutionResult

    service.set_failed(op_id, result=ExecutionResult(error=error), required_state="running")
