"""Subnet evaluation: the pure ``Evaluator`` and the shared Ray actor around it."""

from __future__ import annotations

from raynas.evaluation.evaluator import Evaluator

__all__ = ["Evaluator"]
