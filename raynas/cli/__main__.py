"""``python -m raynas.cli``: same as the ``raynas`` command."""

from __future__ import annotations

import sys

from raynas.cli import main

sys.exit(main())
