"""``python -m raynas``: same as the ``raynas`` command."""

import sys

from raynas.cli import main

sys.exit(main())
