"""One-line progress messages on stdout, shared by every stage."""

from __future__ import annotations


def say(message: str) -> None:
    """Print one ``[raynas]`` progress line, flushed (stage output interleaves with Ray's)."""
    print(f"[raynas] {message}", flush=True)
