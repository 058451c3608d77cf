"""Jobs: work in progress on a dataset, followed and stopped (``follow``: in this App, in the background, sharded).
A sharded job is one request resolved once (``request``), split into shards queued for ``ntt worker`` processes
(``shards``), its record changed only by conditional updates in one state machine (``states``), its progress
(``status``), lost workers' shards queued again and finished jobs closed (``reaper``), the worker itself
(``workers``) and the ``ntt jobs`` / ``ntt worker`` commands (``commands``).

May import: the core, every other part of ``ntt.fo`` but its facade (``ntt.fo``, ``forms``, ``steps``).
"""

from ntt.fo.jobs.request import Job, job_bank, job_of, job_settings  # the module this package replaced

__all__ = ["Job", "job_bank", "job_of", "job_settings"]
