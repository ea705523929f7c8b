"""``python -m raynas.cli``: same as the ``raynas`` command."""

from __future__ import annotations

from raynas.cli import entry

entry()
