"""Confidence intervals of the figures measured against judgements (no Dagster here)."""

from __future__ import annotations

import math

Z_95 = 1.959963984540054
"""The normal quantile of a two-sided 95% interval."""


def wilson(successes: float, trials: float, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion: ``successes`` of ``trials`` (fractional allowed).

    With no trials nothing is known: ``(0.0, 1.0)``. Unlike the normal approximation it stays
    within [0, 1] and is sound for a handful of trials (a reviewer's first judgements).

    >>> low, high = wilson(9, 10)
    >>> round(low, 3), round(high, 3)
    (0.596, 0.982)
    """
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


__all__ = ["Z_95", "wilson"]
