"""Pareto math for multi-objective search, as pure functions (no Optuna, no MLflow, no torch).

Everything works on *minimisation* vectors: a caller flips the sign of a ``max`` objective first
(``to_min``). Used by the engine (Pareto tags, the MO-ASHA scheduler), ``attntune export --pick``,
the report's cost view and ``benchmarks/multiobjective.py``.

Why our own MO-ASHA rule: Optuna cannot prune a multi-objective study (``Trial.report`` raises) and
Ray Tune's schedulers take one metric. At a rung, every trial that reached it is a point (quality
at that rung, cost objectives known before training); the points are ranked by non-dominated
sorting, ties in the last front broken by crowding distance (NSGA-II's selection), and a trial
continues when it is among the best ``max(1, n // eta)`` or on the rung's first front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Point = Sequence[float]


def to_min(values: Sequence[float], modes: Sequence[str]) -> tuple[float, ...]:
    """Objective values as a minimisation vector (``max`` objectives negated)."""
    if len(values) != len(modes):
        raise ValueError(f"{len(values)} values for {len(modes)} objectives")
    return tuple(float(v) if m == "min" else -float(v) for v, m in zip(values, modes, strict=True))


def dominates(a: Point, b: Point) -> bool:
    """``a`` is no worse than ``b`` everywhere and better somewhere (minimisation)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def front_indices(points: Sequence[Sequence[Any]], modes: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points, sorted along the first objective (best first).

    ``modes[i]`` says whether objective ``i`` is minimised (``"min"``) or maximised (``"max"``).
    A point is dominated when another is at least as good in every objective and strictly better in
    one; equal points do not dominate each other (both stay). Points with a NaN/inf/None coordinate
    are never on the front.
    """
    if any(m not in ("min", "max") for m in modes):
        raise ValueError(f"modes must be 'min' or 'max', got {list(modes)}")
    signs = [1.0 if m == "min" else -1.0 for m in modes]
    keys: list[tuple[float, ...] | None] = []
    for p in points:
        if len(p) != len(modes):
            raise ValueError(f"point {list(p)} has {len(p)} coordinates, modes has {len(modes)}")
        try:
            vals = tuple(s * float(v) for s, v in zip(signs, p, strict=True))
        except (TypeError, ValueError):
            keys.append(None)
            continue
        keys.append(vals if all(math.isfinite(v) for v in vals) else None)
    valid = [(i, k) for i, k in enumerate(keys) if k is not None]
    front = [i for i, k in valid if not any(dominates(o, k) for _, o in valid)]
    return sorted(front, key=lambda i: (keys[i], i))


def nondominated_ranks(points: Sequence[Point]) -> list[int]:
    """Front index of each point (0 = Pareto front), by repeated peeling: O(n^2) per front,
    ample for the hundreds of trials of a search."""
    n = len(points)
    ranks = [-1] * n
    left = set(range(n))
    rank = 0
    while left:
        front = {i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def pareto_mask(points: Sequence[Point]) -> list[bool]:
    """True for the points no other point dominates (duplicates are all kept)."""
    return [r == 0 for r in nondominated_ranks(points)]


def crowding_distances(points: Sequence[Point]) -> list[float]:
    """NSGA-II crowding distance within one set of points (boundary points: infinity)."""
    n = len(points)
    if n == 0:
        return []
    dist = [0.0] * n
    for k in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][k])
        lo, hi = points[order[0]][k], points[order[-1]][k]
        dist[order[0]] = dist[order[-1]] = math.inf
        if hi == lo:
            continue
        for a, i, b in zip(order, order[1:], order[2:], strict=False):
            dist[i] += (points[b][k] - points[a][k]) / (hi - lo)
    return dist


def selection_order(points: Sequence[Point]) -> list[int]:
    """Indices best first: by front, then by crowding distance within the front (NSGA-II)."""
    ranks = nondominated_ranks(points)
    order: list[int] = []
    for r in range(max(ranks, default=-1) + 1):
        front = [i for i in range(len(points)) if ranks[i] == r]
        crowd = crowding_distances([points[i] for i in front])
        order += [front[j] for j in sorted(range(len(front)), key=lambda j: -crowd[j])]
    return order


def mo_asha_continues(rung_points: Sequence[Point], me: int, eta: int = 3) -> bool:
    """Whether trial ``me`` (an index into ``rung_points``, every trial that reached this rung,
    itself included) goes on to the next rung: it is on the rung's Pareto front, or among the
    best ``max(1, n // eta)`` by NSGA-II selection order."""
    if not 0 <= me < len(rung_points):
        raise IndexError(f"trial index {me} is not among the {len(rung_points)} rung points")
    if nondominated_ranks(rung_points)[me] == 0:
        return True
    keep = max(1, len(rung_points) // eta)
    return me in selection_order(rung_points)[:keep]


def hypervolume_2d(points: Sequence[Point], reference: Point) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` (both objectives minimised);
    points not strictly better than the reference in both objectives add nothing."""
    pts = sorted({(float(x), float(y)) for x, y in points if x < reference[0] and y < reference[1]})
    area, best_y = 0.0, float(reference[1])
    for x, y in pts:  # ascending x; each point adds the strip below the best y so far
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return area


def knee_index(points: Sequence[Point]) -> int:
    """The knee of a front: the point farthest from the straight line through the front's two
    extremes, objectives scaled to [0, 1] (the usual "best trade-off" pick; 2 objectives, or the
    point nearest the ideal corner for more)."""
    if not points:
        raise ValueError("an empty front has no knee")
    m = len(points[0])
    lo = [min(p[k] for p in points) for k in range(m)]
    hi = [max(p[k] for p in points) for k in range(m)]
    scaled = [[(p[k] - lo[k]) / (hi[k] - lo[k]) if hi[k] > lo[k] else 0.0 for k in range(m)] for p in points]
    if m == 2 and len(points) >= 3:
        a = min(range(len(points)), key=lambda i: (scaled[i][0], scaled[i][1]))
        b = min(range(len(points)), key=lambda i: (scaled[i][1], scaled[i][0]))
        (x1, y1), (x2, y2) = scaled[a], scaled[b]
        norm = math.hypot(x2 - x1, y2 - y1) or 1.0

        def gap(i: int) -> float:  # distance below the chord (towards the ideal corner)
            x, y = scaled[i]
            return ((x2 - x1) * (y1 - y) - (x1 - x) * (y2 - y1)) / norm

        return max(range(len(points)), key=lambda i: (gap(i), -i))
    return min(range(len(points)), key=lambda i: (math.hypot(*scaled[i]), i))
