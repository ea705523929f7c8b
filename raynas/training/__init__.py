"""Supernet training under Ray Train. Only this package imports ``ray.train``."""
