"""Offline metrics (onerec.evaluation) against hand-computed cases, and the two protocols' splits."""
from __future__ import annotations

import math

import pyarrow as pa
import pytest

from onerec import evaluation as E


def test_ranking_metrics_hand_computed():
    ranked = [[1, 2, 3, 4, 5], [9, 8, 7, 6, 5]]
    truths = [{2, 5, 10}, {1}]
    m = E.ranking_metrics(ranked, truths, ks=(1, 2, 5))
    # user 1: hits at ranks 2 and 5 of 3 relevant; user 2: no hit
    assert m["recall_at_1"] == 0 and m["hr_at_1"] == 0
    assert m["recall_at_2"] == pytest.approx((1 / 3) / 2) and m["hr_at_2"] == 0.5
    assert m["recall_at_5"] == pytest.approx((2 / 3) / 2)
    dcg = 1 / math.log2(3) + 1 / math.log2(6)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg_at_5"] == pytest.approx(dcg / idcg / 2)
    assert m["ndcg_at_2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)) / 2)
    # leave-one-out: one relevant item at rank r -> ndcg = 1/log2(r+1)
    assert E.ranking_metrics([[7, 3]], [{3}], ks=(2,))["ndcg_at_2"] == pytest.approx(1 / math.log2(3))
    # a ranked list shorter than K still counts against the user
    assert E.ranking_metrics([[3]], [{3, 4}], ks=(5,))["recall_at_5"] == 0.5


def test_slate_metrics_hand_computed():
    ranked = [[1, 2, 3], [3, 4, 5]]
    assert E.coverage(ranked, catalog_size=10, k=2) == pytest.approx(4 / 10)     # {1, 2, 3, 4}
    assert E.cold_share(ranked, {3, 5}, k=3) == pytest.approx(3 / 6)
    # first levels [0, 0, 1]: 1 same-cluster pair of 3; [2, 2, 2]: all 3 pairs
    assert E.cluster_density([[0, 0, 1], [2, 2, 2]], k=3) == pytest.approx((1 / 3 + 1) / 2)
    assert E.cluster_density([[5]], k=3) == 0.0


def _samples():
    # user 1: two impressions on the day, the second liked; user 2: one impression, watched to the end
    return pa.table({"user_id": [1, 1, 2, 3], "item_id": [10, 11, 20, 30], "ts": [5, 9, 7, 1],
                     "like": [0, 1, 0, 0], "follow": [0, 0, 0, 0],
                     "play_time_ms": [1, 1, 100, 1], "duration_ms": [100, 100, 100, 100]})


def test_next_day_and_leave_one_out_splits():
    contexts, truths = E.next_day(_samples())
    assert contexts["user_id"].to_pylist() == [1, 2] and contexts["ts"].to_pylist() == [5, 7]   # first impression
    assert truths == [{11}, {20}]                                   # user 3 has no positive: dropped
    contexts, truths = E.next_day(_samples(), targets="all")
    assert truths == [{10, 11}, {20}, {30}]
    contexts, truths = E.leave_one_out(_samples())
    assert contexts["item_id"].to_pylist() == [11, 20] and truths == [{11}, {20}]
