"""Export: static subnets out of a supernet, serialised for deployment."""

from __future__ import annotations

from raynas.export.extract import active_state_dict, extract, max_abs_diff

__all__ = ["active_state_dict", "extract", "max_abs_diff"]
