"""Experiment tracking. Only this package imports mlflow."""

from __future__ import annotations

from raynas.tracking.tracker import MlflowTracker, NullTracker, Tracker, flatten

__all__ = ["MlflowTracker", "NullTracker", "Tracker", "flatten"]
