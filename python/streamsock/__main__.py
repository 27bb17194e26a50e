"""``python -m streamsock``: the same as the ``streamsock`` command."""

import sys

from .cli import main

sys.exit(main())
