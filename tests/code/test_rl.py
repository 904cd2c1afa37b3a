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


# -- ECPO's early clip, token-level ratios ----------------------------------------------------------------

def test_ecpo_early_clip_caps_a_served_negatives_ratio_where_grpo_does_not():
    """pi / pi_old = 5 for a served negative: GRPO's min(rA, clip(r)A) keeps r = 5 (gradient 1 / pi_old = 10);
    ECPO's pi'_old = max(sg(pi) / (1 + eps + delta), pi_old) caps r at 1.3 (gradient 1.3 / pi = 2.6), Eq. 14."""
    pi, old = 0.5, 0.1
    assert _grad_wrt_pi(rl.grpo_loss, pi, adv=-1.0, old=old) == pytest.approx(1 / old)
    assert _grad_wrt_pi(rl.ecpo_loss, pi, adv=-1.0, old=old) == pytest.approx(1.3 / pi)
    # a positive above 1 + eps is clipped by both: no gradient
    assert _grad_wrt_pi(rl.ecpo_loss, pi, adv=1.0, old=old) == 0.0
    assert _grad_wrt_pi(rl.grpo_loss, pi, adv=1.0, old=old) == 0.0
    # below the early-clip point the two agree (pi / pi_old = 1.1: plain PPO)
    assert _grad_wrt_pi(rl.ecpo_loss, 0.11, adv=-1.0, old=0.1) == pytest.approx(_grad_wrt_pi(rl.grpo_loss, 0.11, -1.0, 0.1))


def test_token_ratio_lets_gbpos_bounded_negative_act_where_the_sequence_ratio_cannot():
    """A negative whose levels are each likely (0.5) but whose item probability is tiny (0.5^3 / 1000 items):
    the sequence-level GBPO gradient is ~pi (nothing moves), the token-level one is O(1) per level."""
    z = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)        # 3 levels, 2 codes each: p = 0.5
    tok = torch.log_softmax(z, -1)[:, 0].reshape(1, 3)
    seq = tok.sum(1) - math.log(1000)
    adv = torch.tensor([-1.0], dtype=torch.float64)
    rl.gbpo_loss(seq, torch.tensor([NAN], dtype=torch.float64), adv).backward()
    g_seq = z.grad.abs().max().item()
    z.grad = None
    tok = torch.log_softmax(z, -1)[:, 0].reshape(1, 3)
    cfg = rl.RLConfig(ratio="token")
    rl.policy_loss(cfg, tok, torch.full((1, 3), NAN, dtype=torch.float64), adv).backward()
    g_tok = z.grad.abs().max().item()
    assert g_seq < 1e-3 and g_tok > 0.1
    # per-level pi_old from a served sequence probability: the level ratios multiply to the sequence ratio
    old = rl.token_old(tok.detach(), seq.detach(), torch.tensor([0.5 ** 3 / 1000 / 4], dtype=torch.float64))
    assert torch.exp(tok.detach() - torch.log(old)).prod().item() == pytest.approx(4.0)
    assert torch.isnan(rl.token_old(tok.detach(), seq.detach(), torch.tensor([NAN], dtype=torch.float64))).all()


def test_beam_rewards_rank_aware_and_group_advantages_skip_padding():
    valid = np.array([[True, True, True, True], [True, True, True, False]])
    r = rl.beam_rewards(np.array([2, 0]), valid, np.array([1.0, -1.0]), rank_penalty=1.0)
    w = 1 / np.log2(np.array([0, 1, 3]) + 2)
    assert r[0, 2] == 1.0 and np.allclose(r[0, [0, 1, 3]], -w / w.sum())       # higher rank, bigger penalty
    assert r[0, 0] < r[0, 1] < r[0, 3] < 0
    assert r[1, 0] == -1.0 and (r[1, 1:3] == 0).all() and np.isnan(r[1, 3])    # after a dislike: only it is negative
    a = rl.group_advantages(r)
    assert a[1, 3] == 0 and a[0, 2] > 0 and a[1, 0] < 0 and np.nanmean(a[0]) == pytest.approx(0)


# -- the RL objective on a tiny world: every source and algorithm ------------------------------------------

def test_beam_groups_are_distinct_valid_items_with_the_logged_item_injected(monkeypatch):
    import rl_world as W

    from onerec import decoding

    seen = {}
    real = decoding.beam_search

    def spy(*a, **k):
        seen["gen"] = real(*a, **k)
        return seen["gen"]

    monkeypatch.setattr(decoding, "beam_search", spy)
    cfg = rl.RLConfig(source="beam", group_size=8, rollout_users=6)
    obj, sids = W.objective(cfg)
    q = np.r_[np.ones(8), np.zeros(24)]                 # 8 duration-aware positives out of 32
    b = W.batch(obj, W.rows(32, q=q), cfg)
    _, loss = obj(b)
    loss.backward()
    st = obj.pop_stats()
    gen = seen["gen"]
    assert gen.sids.shape[:2] == (6, 8) and st["n_groups"] == 6 and st["group_members"] == 8
    for u in range(6):                                   # distinct SIDs, each a catalogue item
        members = {tuple(x) for x in gen.sids[u]}
        assert len(members) == 8 and all(obj.trie.contains(list(m)) for m in members)
    assert st["rl_loss_beam"] == st["rl_loss_beam"] and st["beam_adv_abs_mean"] > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.policy.heads.parameters())
    # a batch without positives or dislikes forms no group: the RL term is an exact zero
    obj2, _ = W.objective(cfg)
    b2 = W.batch(obj2, W.rows(32, q=np.full(32, NAN)), cfg)
    obj2(b2)
    assert obj2.pop_stats()["n_groups"] == 0


@pytest.mark.parametrize("algorithm,ratio", [("gbpo", "token"), ("gbpo", "sequence"), ("ecpo", "token"),
                                             ("grpo", "token"), ("dpo", "token")])
def test_every_beam_algorithm_raises_the_logged_positive_over_its_competitors(algorithm, ratio):
    """A few steps on one fixed batch: the log-probability of the logged positives rises against the beam items that
    competed with them (the group's signal), for every algorithm; the KL anchor is reported."""
    import rl_world as W

    cfg = rl.RLConfig(algorithm=algorithm, ratio=ratio, source="beam", group_size=8, rollout_users=8,
                      gen_loss_weight=0.0, kl_weight=0.01)
    torch.manual_seed(0)
    obj, sids = W.objective(cfg)
    q = np.r_[np.ones(4), np.zeros(12)]                 # the top 25% of 16: rows 0-3 are the positives
    b = W.batch(obj, W.rows(16, q=q), cfg)
    target = b.batch.target[:4]
    from onerec.decoding import beam_search

    def margin():
        with torch.no_grad():
            from onerec.posttrain import take

            sub = take(b.batch, torch.arange(4))
            gen = beam_search(obj.policy, sub, obj.trie, 4)
            best_other = [next(s for s in gen.sids[u] if (s != target[u].numpy()).any()) for u in range(4)]
            lp_t = rl.sid_logp(obj.policy, sub, target)
            lp_o = rl.sid_logp(obj.policy, sub, torch.from_numpy(np.stack(best_other)))
            return float((lp_t - lp_o).mean())

    before = margin()
    opt = torch.optim.Adam(obj.policy.parameters(), lr=3e-3)
    for _ in range(15):
        opt.zero_grad()
        _, loss = obj(b)
        loss.backward()
        opt.step()
    st = obj.pop_stats()
    assert margin() > before + 0.5, (before, margin())
    assert st["kl_ref"] > 0 and (st["n_dpo_pairs"] > 0 if algorithm == "dpo" else st["n_groups"] == 4)


def test_format_reward_and_business_hook_reach_the_advantages():
    """format_samples > 0: unconstrained samples earn +format_reward when their SID maps to items; a
    `module:function` business reward lifts the positives' advantage by what the hook returns."""
    import rl_world as W

    cfg = rl.RLConfig(source="feedback", business_reward="rl_world:bonus_for_even_items")
    obj, sids = W.objective(cfg)
    q = np.r_[np.ones(4), np.zeros(12)]                 # positives: rows 0-3 (the top 25%)
    t = W.rows(16, q=q)
    b = W.batch(obj, t, cfg)
    assert np.allclose(b.bonus.numpy(), np.where(t["item_id"].to_numpy() % 2 == 0, 0.5, 0.0))
    obj(b)
    with_hook = obj.pop_stats()["adv_mean"]
    plain = rl.RLConfig(source="feedback")
    obj_p, _ = W.objective(plain)
    obj_p(W.batch(obj_p, t, plain))
    lifted = 0.5 * float(((t["item_id"].to_numpy() % 2 == 0) & (q > 0)).sum()) / 16
    assert with_hook == pytest.approx(obj_p.pop_stats()["adv_mean"] + lifted)

    fcfg = rl.RLConfig(source="feedback", format_samples=4, format_reward=1.0, format_penalty=0.5)
    obj_f, _ = W.objective(fcfg, vocab=4)               # 40 of the 64 possible SIDs map to items
    logpi, adv = obj_f._format(W.batch(obj_f, t, fcfg), torch.arange(4))
    share = obj_f.pop_stats()["format_valid_share"]
    assert logpi.shape == adv.shape == (16,) and set(adv.tolist()) <= {1.0, -0.5}
    assert (adv == 1.0).float().mean().item() == pytest.approx(share)
    assert 0 < share < 1          # an untrained model samples valid and invalid SIDs alike


def test_p_score_is_the_weighted_sum_of_task_probabilities():
    """V1's P-score: sum_t w_t * sigmoid(logit_t), with the configured weights (dislike counts against)."""
    from onerec import model as M
    from onerec.reward_model import TASKS, RewardConfig, RewardModel

    cfg = RewardConfig(d_model=8, hidden=8, weights={"q": 1.0, "like": 0.5, "dislike": -2.0})
    rm = RewardModel(M.debug(), cfg)
    logits = torch.tensor([[0.0, 2.0, 5.0, 5.0, 5.0, 1.0], [-1.0, 0.0, 0.0, 0.0, 0.0, -3.0]])
    rm.forward = lambda b: logits                       # the fusion alone, on known logits
    p = torch.sigmoid(logits)
    want = p[:, 0] * 1.0 + p[:, 1] * 0.5 + p[:, TASKS.index("dislike")] * -2.0
    assert torch.allclose(rm.p_score(None), want)
    assert TASKS[:2] == ("q", "like")         # the column order the logits above assume


@pytest.mark.parametrize("source", ["feedback", "beam"])
def test_batch_loss_norm_scales_the_rl_term_by_the_share_of_the_batch_with_signal(source):
    """loss_norm=batch (the default): the RL term is the signal-mean times (signals / batch size), so 2 positives in
    a batch of 32 weigh 2/32 of it, as zeros among the batch's samples; `signal` gives them the whole weight. The
    model, batch and gradients are otherwise identical."""
    import rl_world as W

    q = np.r_[np.linspace(0.2, 0.9, 8), np.full(24, NAN)]       # 8 valid q: the top 25% of them, 2 rows, are positive
    losses = {}
    for norm in ("batch", "signal"):
        cfg = rl.RLConfig(source=source, group_size=4, rollout_users=8, gen_loss_weight=0.0, kl_weight=0.0,
                          loss_norm=norm)
        torch.manual_seed(0)
        obj, _ = W.objective(cfg)
        torch.manual_seed(1)
        _, loss = obj(W.batch(obj, W.rows(32, q=q), cfg))
        st = obj.pop_stats()
        losses[norm] = (loss.item(), st)
    key = "rl_loss_feedback" if source == "feedback" else "rl_loss_beam"
    signal = losses["signal"][0]
    assert signal != 0 and losses["signal"][1][key] == pytest.approx(signal)
    assert losses["batch"][0] == pytest.approx(signal * 2 / 32, rel=1e-5)
    with pytest.raises(ValueError, match="loss_norm"):
        rl.RLConfig(loss_norm="mean")


def _rm_rows(n: int, seed: int, quality: np.ndarray):
    """rl_world rows (random 4-item histories) with feedback drawn from a per-item quality: like, q, click and the
    watched fraction all rise with it, so the item is what a reward model has to learn."""
    import pyarrow as pa
    import rl_world as W

    rng = np.random.default_rng(seed)
    t = W.rows(n, seed)
    z = quality[t["item_id"].to_numpy() - 1]
    dur = rng.integers(5_000, 60_000, size=n)
    frac = 1 / (1 + np.exp(-(z + rng.normal(0, 0.5, n))))
    cols = {"like": rng.random(n) < 1 / (1 + np.exp(-(1.5 * z - 2.5))), "click": rng.random(n) < frac,
            "follow": np.zeros(n, bool), "comment": np.zeros(n, bool), "forward": np.zeros(n, bool)}
    t = t.drop_columns(["q", "play_time_ms"])
    for name, col in cols.items():
        t = t.append_column(name, pa.array(col.astype(np.int64)))
    return (t.append_column("q", pa.array(np.clip(frac + rng.normal(0, 0.1, n), 0, 1)))
             .append_column("duration_ms", pa.array(dur, pa.int64()))
             .append_column("play_time_ms", pa.array((frac * dur).astype(np.int64))))


def test_reward_model_learns_the_item_next_day():
    """Trained on one 'day' of rows, scored on fresh rows of the next (same items, new draws): the defaults must rank
    like and long view (q > 0.75) well above chance. A model whose item side does not learn stays near 0.5."""
    import rl_world as W

    from onerec import model as M
    from onerec import reward_model as R

    quality = np.random.default_rng(7).normal(0, 1, W.N_ITEMS)
    _, sids, _ = W.world()
    train, nxt = _rm_rows(3000, 0, quality), _rm_rows(2000, 1, quality)
    torch.manual_seed(0)
    # 1024 hashed-id rows instead of 65536: the dense tables' optimizer step is what a CPU step costs
    rm = R.RewardModel(M.debug(codebook_sizes=(16,) * 3, item_buckets=1024), R.RewardConfig(d_model=16, hidden=32))
    losses = R.train(rm, train, sids, steps=60, batch_size=64, embedding_lr=3e-2)
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    m = R.evaluate(rm, nxt, sids)
    assert m["auc_like"] > 0.65 and m["auc_q"] > 0.65, m


def test_reward_labels_aux_tasks_and_the_embedding_rate():
    """watch = min(play / duration, 1), NaN without a duration; aux columns follow the scored ones; embedding_lr=0
    freezes every table (AdamW's decay scales with the rate) while the tower trains."""
    import pyarrow as pa
    import rl_world as W

    from onerec import model as M
    from onerec import reward_model as R

    t = _rm_rows(6, 0, np.zeros(W.N_ITEMS))
    t = t.set_column(t.schema.get_field_index("duration_ms"), "duration_ms", pa.array([10_000, 10_000, 0, 4_000, 1, 8_000]))
    t = t.set_column(t.schema.get_field_index("play_time_ms"), "play_time_ms", pa.array([5_000, 20_000, 3_000, 0, 5, 2_000]))
    y = R.labels(t, ("click", "watch"))
    assert y.shape == (6, len(R.TASKS) + 2)
    np.testing.assert_array_equal(y[:, -2], t["click"].to_numpy())
    np.testing.assert_allclose(y[:, -1], [0.5, 1.0, np.nan, 0.0, 1.0, 0.25])
    assert R.labels(t).shape == (6, len(R.TASKS))
    with pytest.raises(ValueError, match="aux_tasks"):
        R.RewardConfig(aux_tasks=("share",))

    _, sids, _ = W.world()
    rm = R.RewardModel(M.debug(codebook_sizes=(16,) * 3), R.RewardConfig(d_model=8, hidden=8))
    before = {k: v.clone() for k, v in rm.state_dict().items()}
    R.train(rm, _rm_rows(64, 1, np.zeros(W.N_ITEMS)), sids, steps=3, batch_size=32, embedding_lr=0.0)
    tables = {f"{n}.weight" for n, m in rm.named_modules() if isinstance(m, torch.nn.Embedding)}
    assert tables and all(torch.equal(before[k], rm.state_dict()[k]) for k in tables)
    assert not torch.equal(before["tower.0.weight"], rm.state_dict()["tower.0.weight"])
    b = R.rm_batch(_rm_rows(8, 2, np.zeros(W.N_ITEMS)), rm.context_cfg, sids)   # scoring skips the aux heads only
    assert torch.allclose(rm(b), rm.train_logits(b)[:, :len(R.TASKS)])


def test_a_reward_model_saved_before_the_aux_tasks_loads():
    """RewardConfig.from_dict: a reward_config that predates aux_tasks and item_bias builds
    the architecture it was saved with, so its safetensors load strictly (rl and online_validate read old days)."""
    import dataclasses

    from onerec import model as M
    from onerec import reward_model as R

    legacy = R.RewardConfig(d_model=8, hidden=8, **R.LEGACY)
    old = R.RewardModel(M.debug(), legacy)
    saved = {k: v for k, v in dataclasses.asdict(legacy).items() if k not in R.LEGACY}
    new = R.RewardModel(M.debug(), R.RewardConfig.from_dict(saved))
    new.load_state_dict(old.state_dict())          # strict: same keys, same shapes
    assert not hasattr(new, "bias") and not hasattr(new, "aux_heads")
    assert set(R.RewardModel(M.debug(), R.RewardConfig(d_model=8, hidden=8)).state_dict()) > set(old.state_dict())
