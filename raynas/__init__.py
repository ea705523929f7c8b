"""raynas: train a weight-sharing supernet once on Ray, search its subnets, export the winners."""

from __future__ import annotations

__version__ = "0.1.0"
