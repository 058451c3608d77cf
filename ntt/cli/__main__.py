"""``python -m ntt.cli``: the ``ntt`` command."""

import sys

from ntt.cli.entry import main

sys.exit(main())
