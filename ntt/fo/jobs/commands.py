"""The ``ntt worker`` and ``ntt jobs`` commands (they work on FiftyOne datasets; ``ntt.cli`` parses them)."""

from __future__ import annotations

import argparse
import json

from ntt.fo.references import NTTFiftyOneError


def worker(args: argparse.Namespace) -> int:
    """Run queued NTT operations until interrupted (or idle / done, when asked)."""
    from ntt.fo.jobs.workers import Worker

    _check_plugin()
    Worker(
        target=args.target,
        heartbeat=args.heartbeat,
        stale_after=args.stale_after,
        idle_exit=args.idle_exit,
        max_operations=args.max_operations,
        log=lambda line: print(line, flush=True),
    ).run()
    return 0


def jobs(args: argparse.Namespace) -> int:
    if args.jobs_cmd == "submit":
        return _submit(args)
    if args.jobs_cmd == "status":
        return _status(args)
    if args.jobs_cmd == "reap":
        from ntt.fo.jobs.reaper import reap

        for line in reap(args.stale_after) or ["nothing to do"]:
            print(line)
        return 0
    from ntt.fo.jobs.reaper import stop

    print(stop(args.job))
    return 0


def _submit(args: argparse.Namespace) -> int:
    """``ntt jobs submit``: every option of segment, as ``ntt segment`` takes it (``ntt.cli.segment_options``)."""
    from ntt.cli.segment_options import dataset_keywords
    from ntt.fo.jobs import shards

    queued = shards.submit_job(
        _dataset(args.dataset),
        args.bank,
        shards=args.shards,
        shard_size=args.shard_size,
        delegation_target=args.target,
        max_attempts=args.max_attempts,
        **dataset_keywords(args),
    )
    job = queued["job"]
    print(
        f"job {job}: {queued['samples']} samples in {queued['shards']} shards queued for target "
        f"{queued['delegation_target']!r}; start workers with `ntt worker`, follow with "
        f"`ntt jobs status {args.dataset} --job {job}`"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from ntt.fo.jobs.status import run_status, sharded_runs, status_line

    found = [run_status(args.job)] if args.job else sharded_runs(_dataset(args.dataset))
    if args.json:
        print(json.dumps(found, indent=2, default=str))
        return 0
    if not found:
        print(f"no sharded jobs on dataset {args.dataset!r}")
    for status in found:
        print(f"job {status['job']} [{status['state']}] {status['label_field']} with bank {status['bank']}")
        print(f"  {status_line(status)}; workers: {', '.join(status['workers']) or 'none now'}")
        for failure in status["failures"]:
            number = f"{failure['shard'] + 1}/{sum(status['shards'].values())}"
            print(f"  shard {number} ({failure['attempts']} attempts): {failure['error']}")
    return 0


def _dataset(name: str):
    import fiftyone as fo

    if not fo.dataset_exists(name):
        raise NTTFiftyOneError(f"no FiftyOne dataset {name!r} in this database (FIFTYONE_DATABASE_URI)")
    return fo.load_dataset(name)


def _check_plugin() -> None:
    """The worker runs operations through FiftyOne's plugin registry: it must find this plugin."""
    import fiftyone.operators as foo

    from ntt.fo.jobs.shards import OPERATOR

    try:
        foo.get_operator(OPERATOR)
    except ValueError as err:
        raise NTTFiftyOneError(
            f"FiftyOne does not find the NTT plugin here ({err}): install it (`fiftyone plugins download <URL of "
            "this repository>`) or point FIFTYONE_PLUGINS_DIR at the folder that holds this checkout"
        ) from err
