"""``python -m raynas``: same as the ``raynas`` command."""

from raynas.cli import entry

entry()
