"""The parser the CLI page documents: ``ntt.cli.build_parser()`` without the subcommands it hides.

Old names kept for one release (``ntt runs``, ``ntt bank report``) are added without ``help``, so ``ntt --help``
does not list them; they still work, but the reference documents only the current names.
"""

from __future__ import annotations

import argparse

from ntt.cli import build_parser


def visible(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` with every subcommand that has no help (a hidden one) removed, at every level."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            shown = {choice.dest for choice in action._choices_actions}
            for name in [name for name in action._name_parser_map if name not in shown]:
                del action._name_parser_map[name]  # also action.choices: the same dict
            for sub in action._name_parser_map.values():
                visible(sub)
    return parser


def parser() -> argparse.ArgumentParser:
    return visible(build_parser())
