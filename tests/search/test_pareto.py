"""search/pareto.py on hand-made fronts: the math behind Pareto tags, MO-ASHA and the knee pick.

Non-dominated sorting is checked against the definition pair by pair on seeded random points (ties
and duplicates included); the hypervolume against an area worked out by hand; MO-ASHA keeps a front
point and stops a dominated one; the knee of an L-shaped front is its corner.
"""

from __future__ import annotations

import math
import random

import pytest

from attntune.search.pareto import (
    crowding_distances,
    dominates,
    front_indices,
    hypervolume_2d,
    knee_index,
    mo_asha_continues,
    nondominated_ranks,
    pareto_mask,
    selection_order,
    to_min,
)


def _random_points(rng: random.Random, n: int, dims: int) -> list[tuple[int, ...]]:
    # A small integer grid, so equal coordinates and duplicate points occur.
    return [tuple(rng.randint(0, 6) for _ in range(dims)) for _ in range(n)]


def test_to_min_negates_max_objectives_and_dominates_is_strict() -> None:
    assert to_min([0.5, 1000, 3], ["max", "min", "max"]) == (-0.5, 1000.0, -3.0)
    with pytest.raises(ValueError):
        to_min([1.0], ["min", "max"])
    assert dominates((1, 2), (1, 3))
    assert not dominates((1, 3), (1, 2))
    assert not dominates((1, 2), (1, 2))  # equal points do not dominate each other
    assert not dominates((1, 3), (2, 2))  # a trade-off


@pytest.mark.parametrize("dims", [2, 3])
def test_pareto_mask_and_ranks_match_the_definition_pairwise(dims: int) -> None:
    rng = random.Random(1234 + dims)
    for _ in range(30):
        points = _random_points(rng, rng.randint(1, 25), dims)
        mask = pareto_mask(points)
        ranks = nondominated_ranks(points)
        for i, p in enumerate(points):
            dominated_by = [j for j, q in enumerate(points) if dominates(q, p)]
            assert mask[i] == (not dominated_by), (points, i)
            assert (ranks[i] == 0) == mask[i]
            # Rank r > 0: dominated by some point of rank r - 1, by none of its own rank or worse.
            assert all(ranks[j] < ranks[i] for j in dominated_by)
            if ranks[i] > 0:
                assert any(ranks[j] == ranks[i] - 1 for j in dominated_by)
        # Duplicates share a rank.
        for i, p in enumerate(points):
            for j, q in enumerate(points):
                if p == q:
                    assert ranks[i] == ranks[j]


def test_selection_order_is_a_permutation_front_by_front() -> None:
    rng = random.Random(7)
    points = _random_points(rng, 20, 2)
    order = selection_order(points)
    assert sorted(order) == list(range(len(points)))
    ranks = nondominated_ranks(points)
    assert [ranks[i] for i in order] == sorted(ranks)


def test_crowding_distance_boundaries_are_infinite_and_middle_is_the_scaled_gap() -> None:
    points = [(0.0, 4.0), (1.0, 2.0), (4.0, 0.0)]
    d = crowding_distances(points)
    assert d[0] == math.inf and d[2] == math.inf
    # Middle point: (4 - 0) / 4 in x plus (4 - 0) / 4 in y.
    assert d[1] == pytest.approx(2.0)


def test_hypervolume_2d_matches_the_hand_computed_staircase() -> None:
    front = [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]
    reference = (4.0, 4.0)
    # Strips by x: [1, 2) x height 4 - 3 = 1; [2, 3) x 2; [3, 4) x 3 -> 1 + 2 + 3 = 6.
    assert hypervolume_2d(front, reference) == pytest.approx(6.0)
    extras = [
        (2.5, 2.5),  # dominated: adds nothing
        (2.0, 2.0),  # duplicate
        (5.0, 0.0),  # beyond the reference in x
        (0.5, 4.0),  # on the reference in y
    ]
    assert hypervolume_2d(front + extras, reference) == pytest.approx(6.0)
    assert hypervolume_2d(list(reversed(front)), reference) == pytest.approx(6.0)  # order-free
    assert hypervolume_2d([], reference) == 0.0
    # A new front point (0.5, 3.5) adds only the strip [0.5, 1) x (4 - 3.5) = 0.25.
    assert hypervolume_2d(front + [(0.5, 3.5)], reference) == pytest.approx(6.25)


def test_mo_asha_keeps_a_front_point_and_stops_a_dominated_one() -> None:
    front = [(1.0, 30.0), (2.0, 20.0), (3.0, 10.0)]
    dominated = [(2.5, 25.0), (4.0, 40.0), (3.5, 35.0), (5.0, 50.0), (4.5, 45.0), (6.0, 60.0)]
    points = front + dominated  # n = 9: the best 9 // 3 = 3 go on
    for i in range(len(front)):
        assert mo_asha_continues(points, i)
    for i in range(len(front), len(points)):
        assert not mo_asha_continues(points, i)


def test_mo_asha_keeps_the_whole_front_even_beyond_the_quota() -> None:
    front = [(float(k), float(10 - k)) for k in range(5)]  # 5 mutually non-dominated points
    points = front + [(20.0, 20.0)]  # n = 6, quota 6 // 3 = 2
    assert all(mo_asha_continues(points, i) for i in range(len(front)))
    assert not mo_asha_continues(points, len(front))


def test_mo_asha_fills_the_quota_from_the_next_front_by_crowding() -> None:
    # First front: one point; second front: two extremes and a middle point; then two stragglers.
    points = [(0.0, 0.0), (1.0, 5.0), (5.0, 1.0), (3.0, 3.0), (6.0, 6.0), (7.0, 7.0)]
    kept = [i for i in range(len(points)) if mo_asha_continues(points, i)]  # quota 6 // 3 = 2
    assert 0 in kept and len(kept) == 2
    assert kept[1] in (1, 2)  # a boundary point of the second front (infinite crowding distance)
    assert not mo_asha_continues(points, 3)  # the crowded middle point
    assert not mo_asha_continues(points, 5)


def test_mo_asha_early_rungs_and_bad_indices() -> None:
    assert mo_asha_continues([(9.0, 9.0)], 0)  # alone at the rung: on its front
    assert not mo_asha_continues([(1.0, 1.0), (2.0, 2.0)], 1)  # quota 1, taken by the dominating point
    assert mo_asha_continues([(1.0, 1.0), (2.0, 2.0)], 1, eta=1)  # eta 1: everyone goes on
    with pytest.raises(IndexError):
        mo_asha_continues([(1.0, 1.0)], 1)


def test_knee_index_picks_the_corner_of_an_l_shaped_front() -> None:
    front = [(0.0, 10.0), (0.5, 3.0), (1.0, 1.0), (3.0, 0.5), (10.0, 0.0)]
    assert knee_index(front) == 2
    shuffled = [front[i] for i in (4, 0, 2, 3, 1)]
    assert shuffled[knee_index(shuffled)] == (1.0, 1.0)
    # Scale-free: stretching one objective (e.g. n_params in units) keeps the same knee.
    assert knee_index([(x * 1e5, y) for x, y in front]) == 2
    # More than two objectives: the point nearest the ideal corner after scaling.
    cube = [(0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (0.2, 0.2, 0.2), (1.0, 1.0, 0.0)]
    assert knee_index(cube) == 2
    with pytest.raises(ValueError):
        knee_index([])


def test_front_indices_on_hand_made_points() -> None:
    # (n_params, val_loss): smaller and lower is better
    pts = [(100, 3.0), (200, 2.0), (150, 2.5), (300, 2.0), (120, 3.5), (400, 1.0), (100, 3.0)]
    assert front_indices(pts, ["min", "min"]) == [0, 6, 2, 1, 5]
    # (n_params, bleu): smaller is better, higher BLEU is better
    pts2 = [(10, 5.0), (20, 4.0), (30, 9.0), (5, 1.0), (30, 8.0)]
    assert front_indices(pts2, ["min", "max"]) == [3, 0, 2]
    assert front_indices([(1, float("nan")), (2, 1.0), (None, 0.0)], ["min", "min"]) == [1]
    assert front_indices([], ["min", "max"]) == []
    with pytest.raises(ValueError):
        front_indices([(1, 2)], ["min", "up"])
    with pytest.raises(ValueError):
        front_indices([(1, 2, 3)], ["min", "max"])
