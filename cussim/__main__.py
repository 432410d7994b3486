"""``python -m cussim``: the same as the ``cussim`` command."""

import sys

from ._cli import main

sys.exit(main())
