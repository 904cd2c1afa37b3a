"""Post-training math (onerec.rl, onerec.reward_model, onerec.posttrain): reward shaping, the GBPO gradient bound
(OneRec-V2 Eq. 18 / Figure 8) against ratio clipping, the no-signal no-op, DPO, and the RL objective end to end on
a tiny model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from onerec import rl
from onerec.features.reward import duration_bucket, percentile_rank

NAN = float("nan")


def _grad_wrt_pi(loss_fn, pi: float, adv: float, old: float = NAN) -> float:
    """d loss / d pi for one sample with probability pi (a leaf), as V2 Eqs. 16 and 18 write it."""
    p = torch.tensor([pi], dtype=torch.float64, requires_grad=True)
    loss = loss_fn(torch.log(p), torch.tensor([old], dtype=torch.float64), torch.tensor([adv], dtype=torch.float64))
    loss.backward()
    return float(p.grad[0])


# -- GBPO vs ratio clipping (Figure 8) -----------------------------------------------------------------------

@pytest.mark.parametrize("pi", [0.9, 0.6, 0.3, 1e-2, 1e-4, 1e-8])
def test_gbpo_negative_gradient_is_the_bce_gradient_and_bounded(pi):
    # legacy exposure (pi_old unknown -> sg(pi)), negative sample: GBPO's pi'_old = max(sg(pi), 1 - sg(pi))
    g = _grad_wrt_pi(rl.gbpo_loss, pi, adv=-1.0)
    bce = 1.0 / (1.0 - pi)        # Eq. 18, y = 0: d/dp of -log(1 - p)
    if pi <= 0.5:
        assert g == pytest.approx(bce, rel=1e-12)
    else:                          # above 1/2 the bound is sg(pi) itself: 1 / pi, still <= 2
        assert g == pytest.approx(1.0 / pi, rel=1e-12)
    assert 0 < g <= 2.0


def test_ratio_clipping_negative_gradient_explodes_like_one_over_pi():
    pis = [1e-1, 1e-3, 1e-5, 1e-7]
    grpo = [_grad_wrt_pi(rl.grpo_loss, p, adv=-1.0) for p in pis]
    ecpo = [_grad_wrt_pi(rl.ecpo_loss, p, adv=-1.0) for p in pis]
    gbpo = [_grad_wrt_pi(rl.gbpo_loss, p, adv=-1.0) for p in pis]
    for p, g, e in zip(pis, grpo, ecpo):
        assert g == pytest.approx(1.0 / p, rel=1e-9)           # Eq. 16: ratio 1 is never clipped
        # ECPO's early clip caps the ratio at 1 + eps + delta; a ratio-1 sample is below the cap: also 1 / pi
        assert e == pytest.approx(1.0 / p, rel=1e-9)
    assert max(gbpo) < 1.2 and grpo[-1] / grpo[0] == pytest.approx(1e6, rel=1e-6)
    # with a logit parameterisation the same holds for d loss / d logit: bounded vs growing
    for fn, bounded in ((rl.gbpo_loss, True), (rl.grpo_loss, False)):
        z = torch.tensor([-16.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
        logp = torch.log_softmax(z, 0)[:1]      # pi ~ 5e-8
        fn(logp, torch.tensor([NAN], dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64)).backward()
        assert (z.grad.abs().max() < 1e-6) if bounded else (z.grad.abs().max() > 0.5)


def test_gbpo_positive_and_served_samples():
    # positive, pi_old known and larger than pi: ratio pi / pi_old (gradient 1 / pi_old, bounded by the served prob)
    assert _grad_wrt_pi(rl.gbpo_loss, 0.01, adv=1.0, old=0.05) == pytest.approx(-1 / 0.05)
    # positive, pi_old smaller than pi: bounded by sg(pi) -> ratio 1, gradient 1 / pi
    assert _grad_wrt_pi(rl.gbpo_loss, 0.2, adv=1.0, old=0.01) == pytest.approx(-1 / 0.2)
    # negative served with a high pi_old: max(pi_old, 1 - pi)
    assert _grad_wrt_pi(rl.gbpo_loss, 0.1, adv=-1.0, old=0.95) == pytest.approx(1 / 0.95)


@pytest.mark.parametrize("fn", [rl.gbpo_loss, rl.ecpo_loss, rl.grpo_loss])
def test_no_positive_no_negative_is_a_noop_not_nan(fn):
    logp = torch.log(torch.tensor([0.3, 1e-9, 0.5], dtype=torch.float64)).requires_grad_()
    loss = fn(logp, torch.full((3,), NAN, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(3, dtype=torch.float64))
    empty = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    loss = fn(empty, empty.detach(), empty.detach())
    loss.backward()
    assert loss.item() == 0.0 and not math.isnan(loss.item())


def test_dpo_prefers_the_chosen_sequence():
    c = torch.tensor([-2.0], requires_grad=True)
    r = torch.tensor([-2.0], requires_grad=True)
    loss = rl.dpo_loss(c, r, torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    assert c.grad[0] < 0 < r.grad[0]           # descending raises chosen, lowers rejected
    assert float(rl.dpo_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0))) == 0.0


# -- duration-aware reward shaping (Sec. 3.1.1) ---------------------------------------------------------------

def test_shaping_top_quartile_strict_and_dislike():
    q = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    dislike = np.array([0, 0, 0, 0, 0, 0, 0, 1])
    adv, tau = rl.shape_advantages(q, dislike)
    assert tau == 0.6                                  # descending: 0.8 0.7 | 0.6 ...: rank floor(0.25 * 8) = 2
    assert adv.tolist() == [0, 0, 0, 0, 0, 0, 1, -1]   # 0.8 is disliked: -1 beats a high q


def test_shaping_ties_and_null_q():
    # strict (the formula as printed): ties at the threshold are not positive; all-equal q: nobody is above it
    adv, tau = rl.shape_advantages([1.0, 1.0, 1.0, 1.0], [0, 0, 0, 0], ties="strict")
    assert tau == 1.0 and adv.tolist() == [0, 0, 0, 0]
    # rank (the default of the rl stage): the top floor(n/4) by q, ties broken by play time, then position
    q = [1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.1, 0.3]
    adv, _ = rl.shape_advantages(q, np.zeros(8), ties="rank", tiebreak=[5, 9, 1, 9, 2, 0, 0, 0])
    assert adv.tolist() == [0, 1, 0, 1, 0, 0, 0, 0]
    adv, _ = rl.shape_advantages([1.0] * 4, np.zeros(4), ties="rank")
    assert adv.tolist() == [1, 0, 0, 0]
    # without a tie at tau_B both modes agree
    q = np.random.default_rng(0).random(40)
    assert (rl.shape_advantages(q, np.zeros(40), ties="rank")[0] == rl.shape_advantages(q, np.zeros(40))[0]).all()
    # a disliked sample in the top quartile stays -1 in both modes
    assert rl.shape_advantages([0.9, 0.1, 0.2, 0.3], [1, 0, 0, 0], ties="rank")[0].tolist() == [-1, 0, 0, 0]
    adv, _ = rl.shape_advantages([0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], np.zeros(8))
    assert adv.tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    # null q (first video of a duration bucket): never positive, and not part of tau_B
    adv, tau = rl.shape_advantages([NAN, 0.9, 0.2, 0.1, 0.3], [0, 0, 0, 0, 1])
    assert tau == 0.3 and adv.tolist() == [0, 1, 0, 0, -1]


def test_shaping_one_item_bucket_zero_duration_and_edge_batches():
    # a one-item bucket history gives q in {0, 1}; zero duration has a finite bucket of its own
    assert percentile_rank(np.array([5000.0]), 4000.0) == 0.0 and percentile_rank(np.array([5000.0]), 5000.0) == 1.0
    assert np.isfinite(duration_bucket([0])[0]) and duration_bucket([0])[0] < duration_bucket([1])[0]
    adv, _ = rl.shape_advantages([1.0, 0.0, 0.0, 0.0, 0.0], np.zeros(5))   # the one-item bucket's q = 1 wins
    assert adv.tolist() == [1, 0, 0, 0, 0]
    # a one-sample batch: nothing to be above
    assert rl.shape_advantages([0.7], [0])[0].tolist() == [0]
    assert rl.shape_advantages([0.7], [0], ties="rank")[0].tolist() == [0]
    # all negative
    adv, _ = rl.shape_advantages([0.9, 0.1, NAN], [1, 1, 1])
    assert adv.tolist() == [-1, -1, -1]
    # empty batch, and everything filtered: the loss is a no-op
    for ties in ("strict", "rank"):
        adv, tau = rl.shape_advantages(np.zeros(0), np.zeros(0), ties=ties)
        assert adv.shape == (0,) and tau == math.inf
    adv, _ = rl.shape_advantages([NAN, NAN], [0, 0])
    assert adv.tolist() == [0, 0]
    logp = torch.log(torch.tensor([0.2, 0.4], dtype=torch.float64)).requires_grad_()
    loss = rl.gbpo_loss(logp, torch.full((2,), NAN, dtype=torch.float64), torch.from_numpy(adv))
    loss.backward()
    assert loss.item() == 0.0 and not torch.isnan(logp.grad).any()


def test_group_advantages_and_business_bonus():
    a = rl.group_advantages(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    assert a[0].mean() == pytest.approx(0) and a[0, 2] > 0 > a[0, 0] and (a[1] == 0).all()
    cfg = rl.RLConfig(cold_start_bonus=0.5, cold_start_days=1)
    day = 86_400_000
    bonus = rl.business_bonus(cfg, np.array([1, 2, 3]), np.array([9 * day, 1.0, NAN]), np.full(3, 10 * day))
    assert bonus.tolist() == [0.5, 0.0, 0.0]
    with pytest.raises(ValueError):
        rl.RLConfig(algorithm="ppo2")


def test_reward_model_auc_and_loss():
    from onerec.reward_model import auc, loss_fn

    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert math.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))
    logits = torch.zeros(2, 6, requires_grad=True)
    labels = torch.tensor([[NAN, 1, 0, 0, 0, 0], [0.5, 0, 0, 0, 0, 1]])
    loss, per = loss_fn(logits, labels)
    assert loss.item() == pytest.approx(math.log(2)) and per["loss_q"] == pytest.approx(math.log(2))


def test_rsft_drops_the_bottom_half_of_sessions(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from onerec.posttrain import rsft_filter

    t = pa.table({"user_id": [1, 1, 1, 2, 2, 3], "request_id": ["a", "a", "b", "c", "d", "e"],
                  "play_time_ms": [10, 10, 50, 1, 100, 5]})
    f = tmp_path / "x.parquet"
    pq.write_table(t, f)
    files, stats = rsft_filter([str(f)], 0.5)
    kept = pq.read_table(files[0])
    # sessions: 1a=20, 1b=50, 2c=1, 2d=100, 3e=5 -> the 2 lowest (2c, 3e) go
    assert stats["rsft_sessions"] == 5 and stats["rsft_sessions_dropped"] == 2
    assert sorted(zip(kept["user_id"].to_pylist(), kept["request_id"].to_pylist())) == \
        [(1, "a"), (1, "a"), (1, "b"), (2, "d")]


def test_pi_old_comes_only_from_impressions_our_model_served():
    """collate_rl: gen_prob is pi_old where the source is our model and 0 < gen_prob; logged impressions (legacy,
    random, unknown source) and unusable probabilities get NaN, i.e. pi_old = sg(pi_theta)."""
    import pyarrow as pa

    from onerec import model as M
    from onerec import posttrain
    from onerec.samples import SidTable
    from onerec.serving import Event, _history_row

    n = 5
    rows = pa.concat_tables([_history_row([Event(item_id=1), Event(item_id=2)]) for _ in range(n)])
    rows = rows.set_column(rows.schema.get_field_index("item_id"), "item_id", pa.array([1, 2, 1, 2, 1], pa.int64()))
    extra = {"source": pa.array(["model", "model", "legacy", None, "model"]),
             "gen_prob": pa.array([0.25, 0.0, 0.5, 0.3, None], pa.float64()),
             "q": pa.array([0.9, 0.1, 0.5, None, 0.7], pa.float64()), "dislike": pa.array([0, 1, 0, 0, 0], pa.int64()),
             "play_time_ms": pa.array([9000, 100, 4000, None, 7000], pa.int64())}
    for name, col in extra.items():
        rows = rows.append_column(name, col)
    sids = SidTable(item_ids=np.array([1, 2]), sids=np.array([[0, 1, 2], [3, 4, 5]]))
    batch = posttrain.collate_rl(rows, M.debug(), sids, np.array([7, 3]), rl.RLConfig())
    got = batch.gen_prob.numpy()
    assert got[0] == 0.25 and np.isnan(got[1:]).all()
    assert batch.n_items.tolist() == [7, 3, 7, 3, 7]        # items sharing each target SID
