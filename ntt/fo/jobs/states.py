"""The one owner of the states of sharded runs and their shards: every change of a run's or a shard's ``state``
goes through ``move_run`` or ``move_shard``, a conditional update ("from these states to that one, only if it
is still in one of them", and for a shard "only if it still holds this lease").

Times that are compared or subtracted are the database server's (``NOW``), never a worker's clock: two machines'
clocks may differ by minutes. The states, who moves each one and when:

======================  ===========  ====================================================================
from                    to           by, when
======================  ===========  ====================================================================
run (new)               submitting   ``submit``: the run is recorded before its shards
run submitting          running      ``submit``, once every shard is queued or failed; the reaper, when the
                                     submitting process went silent (its pending shards become failed)
run running             stopping     ``stop``
run running             completed /  whoever first sees no shard pending, queued or running
                        failed       (``finish_if_done``: a worker after its shard, any reaper)
run stopping            stopped      the same
shard (new)             pending      ``submit`` (no operation yet: nothing can claim it)
shard pending           queued       ``submit``, with its operation and lease
shard pending           failed       ``submit`` when queueing failed; the reaper when the submit went silent
shard queued            running      the attempt holding the shard's lease (``claim``), exactly once
shard running           done         that attempt, only while it still holds the lease
shard running/queued    queued       the reaper: worker lost (no heartbeat change for ``stale_after``
                                     seconds of server time) or a transient failure; a new lease and a new
                                     operation, so the old attempt can no longer write
shard running/queued    failed       the reaper: a lasting failure, or no attempts left (never when all its
                                     samples are labelled: then it is done)
shard queued/running    stopped      ``stop``, and the reaper while the run is stopping
======================  ===========  ====================================================================
"""

from __future__ import annotations

import uuid
from typing import Any

from pymongo import ReturnDocument

NOW = "$$NOW"  # the database server's clock, in an update pipeline or a query's $expr

RUN_MOVES = {
    "running": ("submitting",),
    "stopping": ("running",),
    "completed": ("running",),
    "failed": ("running",),
    "stopped": ("stopping",),
}
SHARD_MOVES = {
    "queued": ("pending", "queued", "running"),
    "running": ("queued",),
    "done": ("queued", "running"),
    "failed": ("pending", "queued", "running"),
    "stopped": ("queued", "running"),
}
UNFINISHED_RUN = ("submitting", "running", "stopping")
UNFINISHED_SHARD = ("pending", "queued", "running")


def runs_collection():
    from fiftyone.core.odm.database import get_db_conn

    return get_db_conn()["ntt_runs"]


def shards_collection():
    from fiftyone.core.odm.database import get_db_conn

    return get_db_conn()["ntt_shards"]


def new_lease() -> str:
    """A token naming one attempt at a shard: only the attempt that holds it may write the shard."""
    return uuid.uuid4().hex


def move_run(run_id, frm: tuple[str, ...], to: str, **values) -> dict | None:
    """Move run ``run_id`` from one of ``frm`` to ``to`` and set ``values`` (``NOW``: server time), only if it is
    still in one of ``frm``. Returns the run after the move, or None when it was not (another process moved it)."""
    _check_move(RUN_MOVES, "run", frm, to)
    return runs_collection().find_one_and_update(
        {"_id": run_id, "state": {"$in": list(frm)}},
        [{"$set": {"state": to, **_literal(values)}}],
        return_document=ReturnDocument.AFTER,
    )


def move_shard(shard_id, frm: tuple[str, ...], to: str, if_lease: str | None = None, **values) -> dict | None:
    """Move shard ``shard_id`` from one of ``frm`` to ``to`` and set ``values``, only if it is still in one of
    ``frm`` and (when ``if_lease`` is given) still holds that lease. Returns the shard after the move, or None."""
    _check_move(SHARD_MOVES, "shard", frm, to)
    query: dict[str, Any] = {"_id": shard_id, "state": {"$in": list(frm)}}
    if if_lease is not None:
        query["lease"] = if_lease
    return shards_collection().find_one_and_update(
        query, [{"$set": {"state": to, **_literal(values)}}], return_document=ReturnDocument.AFTER
    )


def note_shard(shard_id, lease: str, **values) -> bool:
    """Record progress on a running shard (no state change), only while ``lease`` holds it; returns whether it
    still does (an attempt that lost its lease must stop)."""
    found = shards_collection().update_one(
        {"_id": shard_id, "state": "running", "lease": lease}, [{"$set": _literal(values)}]
    )
    return found.matched_count == 1


def server_time():
    """The database server's clock (for elapsed times of records stamped with ``NOW``)."""
    from fiftyone.core.odm.database import get_db_client

    from ntt.fo.jobs.shards import aware_utc

    return aware_utc(get_db_client().admin.command("hello")["localTime"])


def _check_move(table: dict, kind: str, frm: tuple[str, ...], to: str) -> None:
    allowed = table.get(to, ())
    if not frm or any(state not in allowed for state in frm):
        raise ValueError(f"no {kind} moves from {frm} to {to!r} (see ntt.fo.jobs.states)")


def _literal(values: dict) -> dict:
    """Values for an update pipeline: taken literally (a string starting with '$' is not a field path), but
    ``NOW`` and expressions given as ``{"$expr": ...}`` are evaluated by the server."""
    out = {}
    for key, value in values.items():
        if value == NOW:
            out[key] = NOW
        elif isinstance(value, dict) and set(value) == {"$expr"}:
            out[key] = value["$expr"]
        else:
            out[key] = {"$literal": value}
    return out
