"""The command line, ``ntt``: the parser and dispatch (``entry``), the bank / segment / evaluate / cache commands
(``commands``), the COCO pipeline they run (``pipeline``), segment's options shared by ``ntt segment`` and
``ntt jobs submit`` (``segment_options``) and the stage timings (``benchmark``). ``python -m ntt.cli`` runs it.

May import: every core package. ``ntt.fo`` only lazily, for the commands on FiftyOne datasets (``ntt jobs``,
``ntt worker``).
"""

from ntt.cli.entry import build_parser, main

__all__ = ["build_parser", "main"]
