"""FiftyOne entry point of the ntt plugin: FiftyOne loads this file and calls ``register``.

The operators live in ``plugin/``; the library they call is the installed ``ntt`` package.
"""

from .plugin import register  # noqa: F401
