"""The instruments' controls on real rollouts: the smoke world (BM25), the tiny model after a
short SFT, the RolloutEngine with hidden states, 6 questions x 8 samples.

- Forced collapse (positive control): every question's samples replaced by copies of one
  of them drives each between-sample metric to <= 0.1 of its floor-adjusted value; the
  within-response windowed ER does not move (which is why it is not a between-sample metric).
- Untrained model (content control): the same token sequences teacher-forced through the
  untrained initial model and through the trained one give different residualised ER.
  The "trained" model is the untrained one after a short SFT on scripted demonstrations
  (the project's own warm-start path, only shorter): the two share the tokenizer and every
  token sequence, so any difference in a metric computed on identical token ids comes from
  the weights, which is what the control asks.
- Strategy metrics get their collapse control on the scripted mixture agent as well: the
  tiny model rarely matches a valid strategy, the mixture agent always does.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from searchgym.metrics import collapse_control, force_collapse, summarize_rollouts
from searchgym.metrics.controls import COLLAPSE_FLOORS, collapse_floor

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS, SAMPLES = 6, 8


def records_of(trajs, hidden=None):
    """Metric records of Trajectories (the metrics contract's fields)."""
    out = []
    for i, t in enumerate(trajs):
        rec = {
            "question_id": t.question_id, "group": t.group_id, "reward": float(t.reward), "correct": t.correct,
            "answer": t.answer, "golden_answers": t.golden_answers, "signature": t.signature,
            "strategy": t.strategy, "valid_strategies": t.valid_strategies, "queries": t.queries,
            "format_errors": t.format_errors, "num_searches": t.num_searches, "text": t.transcript,
        }
        if t.response_ids:
            rec.update(entropies=list(t.entropies), loss_mask=list(t.loss_mask),
                       policy_token_ids=[int(x) for x, m in zip(t.response_ids, t.loss_mask) if m])
        h = hidden[i] if hidden is not None else t.hidden_states
        if h is not None and len(h):
            rec["hidden_states"] = h
        out.append(rec)
    return out


def hashed_ngrams(texts):
    """A real text embedding without a model download: hashed character 3-5-grams (tf-idf
    free), L2-normalised rows."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), n_features=2**12).transform(texts).toarray()


def measure(records):
    return summarize_rollouts(records, k=(1, 2, 4), er_window=32, erv=False, vendi=True, embed_fn=hashed_ngrams)


def teacher_forced(model, trajs, pad_id):
    """Final-norm hidden states at the policy positions of prompt + response, one forward
    (the state that emitted each policy token, the engine's convention)."""
    from searchgym.training.update import forward_logprobs, pad_batch, policy_hidden_states

    ids = [list(t.prompt_ids) + list(t.response_ids) for t in trajs]
    masks = [[0] * len(t.prompt_ids) + list(t.loss_mask) for t in trajs]
    batch = pad_batch(ids, masks, pad_id)
    with torch.no_grad():
        _, _, hid = forward_logprobs(model.eval(), batch.input_ids, batch.attention_mask, with_entropy=False,
                                     with_hidden=True, positions=batch.response_mask)
    return [h.float().numpy() for h in policy_hidden_states(hid, batch.response_mask)]


@pytest.fixture(scope="module")
def setup(smoke_sft_start):
    """(untrained model, trained model, tokenizer, model rollouts, scripted-mixture rollouts)."""
    from searchgym.agents.model import load_model
    from searchgym.agents.policy import run_policy
    from searchgym.agents.rollout import RolloutConfig, RolloutEngine
    from searchgym.agents.scripted import ScriptedPolicy
    from searchgym.envs import make_batch

    world, sft_dir = smoke_sft_start
    trained, tok = load_model(sft_dir)
    untrained, _ = load_model(sft_dir.parents[1] / "base")  # the model the SFT started from
    envs = make_batch("searchgym/Mixed-v0", QUESTIONS * SAMPLES, world_dir=str(world), retriever="bm25",
                      split="validation", max_turns=3)
    engine = RolloutEngine(trained.eval(), tok, RolloutConfig(
        n=SAMPLES, temperature=1.0, max_new_tokens=32, seed=0, return_hidden_states=True,
        max_batch_size=len(envs)))
    with torch.no_grad():
        trajs = engine.rollout_questions(envs, list(range(QUESTIONS)), n=SAMPLES)
    scripted = run_policy(ScriptedPolicy("mixture", seed=1), envs, list(range(QUESTIONS)), n=SAMPLES)
    return untrained, trained, tok, trajs, scripted


BETWEEN_HIDDEN = ("group_er", "aligned_er", "group_er_resid")


@pytest.mark.slow
def test_forced_collapse_drives_between_sample_metrics_to_their_floor(setup):
    *_, trajs, _ = setup
    recs = records_of(trajs)
    assert len(recs) == QUESTIONS * SAMPLES and all("hidden_states" in r for r in recs)
    ctl = collapse_control(recs, measure)
    for name in (*BETWEEN_HIDDEN, "vendi", "distinct_queries", "signature_entropy", "distinct_signatures"):
        row = ctl[name]
        assert row["passed"] is True, (name, row)
        assert row["ratio"] <= 0.1 and row["original"] > row["floor"], (name, row)
    for name in BETWEEN_HIDDEN:  # ER-type: exactly the floor 0
        assert ctl[name]["collapsed"] == 0.0 and ctl[name]["original"] > 1.0, name
    assert ctl["vendi"]["collapsed"] == pytest.approx(1.0, abs=1e-6)
    for name, row in ctl.items():  # nothing that was measured fails (strategy metrics: n/a at worst)
        assert row["passed"] is not False, (name, row)
    # the within-response windowed ER is blind to the collapse: that is why it is no
    # between-sample metric (the 24.91 -> 24.80)
    before, after = measure(recs), measure(force_collapse(recs))
    assert after["er_within_window"] / before["er_within_window"] > 0.5
    assert before["group_er"] > 1.0 and after["group_er"] == 0.0


@pytest.mark.slow
def test_forced_collapse_of_strategy_metrics_on_the_mixture_agent(setup):
    *_, scripted = setup
    recs = records_of(scripted)
    s = measure(recs)
    assert s["unmatched_rate"] < 0.5 and s["strategy_entropy"] > 0.1  # the agent does mix
    ctl = collapse_control(recs, measure)
    for name in ("strategy_entropy", "strategy_entropy_plugin", "distinct_strategies",
                 "strategy_entropy_correct", "distinct_strategies_correct", "distinct_queries", "vendi"):
        assert ctl[name]["passed"] is True, (name, ctl[name])
    assert ctl["strategy_entropy"]["collapsed"] == 0.0 and ctl["distinct_strategies"]["collapsed"] == 1.0


@pytest.mark.slow
def test_force_collapse_copies(setup):
    *_, trajs, _ = setup
    recs = records_of(trajs)
    col = force_collapse(recs, keep=3)
    for g in range(QUESTIONS):
        idx = [i for i, r in enumerate(recs) if r["group"] == g]
        src = recs[idx[3]]
        for i in idx:
            assert col[i]["queries"] == src["queries"] and col[i]["strategy"] == src["strategy"]
            assert col[i]["hidden_states"] is src["hidden_states"]  # shared, read-only
            assert col[i]["queries"] is not src["queries"]  # lists are copies
    col[idx[0]]["queries"].append("x")
    assert recs[idx[3]]["queries"] == col[idx[1]]["queries"]  # editing one copy touches no other
    assert [r["group"] for r in col] == [r["group"] for r in recs]
    # distinct_queries of copies is at most 1 / n (equal when the kept sample repeats no
    # query): its floor; the scripted agent searches in every episode
    rs = records_of(setup[4])
    assert collapse_floor("distinct_queries", rs) == pytest.approx(1 / SAMPLES)
    for keep in range(SAMPLES):
        assert measure(force_collapse(rs, keep))["distinct_queries"] <= 1 / SAMPLES + 1e-12
    assert measure(rs)["distinct_queries"] > 2 / SAMPLES
    with pytest.raises(ValueError, match="question groups"):
        force_collapse([{"reward": 1.0}])


@pytest.mark.slow
def test_untrained_model_control_residualised_er_differs(setup):
    untrained, trained, tok, trajs, _ = setup
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    tf_trained = teacher_forced(trained, trajs, pad)
    # teacher forcing reproduces the rollout's own states: rows and token ids are aligned
    for h, t in zip(tf_trained, trajs):
        np.testing.assert_allclose(h, t.hidden_states, atol=2e-4, rtol=1e-3)
    tf_untrained = teacher_forced(untrained, trajs, pad)
    a = measure(records_of(trajs, hidden=tf_trained))
    b = measure(records_of(trajs, hidden=tf_untrained))
    # measured: er_resid 21.7 (trained) vs 29.8 (untrained), group_er_resid 5.98 vs 6.50
    for key, margin in (("er_resid", 0.10), ("group_er_resid", 0.03)):
        assert math.isfinite(a[key]) and math.isfinite(b[key])
        rel = abs(a[key] - b[key]) / max(a[key], b[key])
        assert rel > margin, (key, a[key], b[key])
    # the same metric on the same hidden states is deterministic: the difference is the model
    again = measure(records_of(trajs, hidden=tf_trained))
    assert again["er_resid"] == a["er_resid"] and again["group_er_resid"] == a["group_er_resid"]


# ---- unit tests on hand-built records ----------------------------------------------------------
def hand_records():
    """2 questions x 3 samples: q1 uses strategies a, b, unmatched; q2 a, a, c."""
    rows = [("q1", "a", ["x one", "x two"], True), ("q1", "b", ["y"], True), ("q1", None, [], False),
            ("q2", "a", ["z"], True), ("q2", "a", ["z", "w"], False), ("q2", "c", ["v"], True)]
    return [{"question_id": q, "strategy": st, "valid_strategies": ["a", "b", "c"], "queries": qs,
             "correct": ok, "signature": f"{st}|{ok}", "text": f"{q} {st} {' '.join(qs)}"}
            for q, st, qs, ok in rows]


def test_force_collapse_hand_built():
    recs = hand_records()
    col = force_collapse(recs, keep=1)
    assert [r["strategy"] for r in col] == ["b", "b", "b", "a", "a", "a"]
    assert [r["question_id"] for r in col] == [r["question_id"] for r in recs]
    assert force_collapse(recs, keep=4)[0]["strategy"] == "b"  # keep modulo the group size
    assert recs[2]["strategy"] is None  # the input is untouched
    grouped = [dict(r, group=i % 2) for i, r in enumerate(recs)]  # 'group' wins over question_id
    assert [r["strategy"] for r in force_collapse(grouped)] == ["a", "b", "a", "b", "a", "b"]
    with pytest.raises(ValueError, match="keep"):
        force_collapse(recs, keep=-1)
    assert force_collapse([]) == []


def test_collapse_control_hand_built():
    recs = hand_records()
    fn = lambda r: summarize_rollouts(r, vendi=True, embed_fn=hashed_ngrams, per_group=True)  # noqa: E731
    ctl = collapse_control(recs, fn)
    # q1 matched {a, b}, q2 {a, a, c}: collapsed copies of sample 0 (a, a): entropy 0, distinct 1
    assert ctl["strategy_entropy"]["collapsed"] == 0.0 and ctl["strategy_entropy"]["passed"] is True
    assert ctl["distinct_strategies"]["original"] == 2.0 and ctl["distinct_strategies"]["collapsed"] == 1.0
    assert ctl["distinct_strategies"]["ratio"] == 0.0
    # distinct_queries: q1 3/3, q2 3/4 -> collapsed q1 2/6, q2 1/3; floor 1/3
    dq = ctl["distinct_queries"]
    assert dq["original"] == pytest.approx((1 + 0.75) / 2) and dq["floor"] == pytest.approx(1 / 3)
    assert dq["collapsed"] == pytest.approx(1 / 3) and dq["ratio"] == pytest.approx(0.0, abs=1e-12)
    assert ctl["vendi"]["collapsed"] == pytest.approx(1.0) and ctl["vendi"]["passed"] is True
    assert "group_er" not in ctl  # not measured: not reported
    # keep=2: q1's kept sample matched nothing -> strategy entropy defined on q2 only
    ctl2 = collapse_control(recs, fn, keep=2, metrics=["strategy_entropy", "distinct_strategies"])
    assert list(ctl2) == ["strategy_entropy", "distinct_strategies"]
    assert ctl2["strategy_entropy"]["collapsed"] == 0.0
    # a metric already at its floor has nothing to collapse: n/a, never a pass
    same = [dict(r, strategy="a") for r in recs]
    row = collapse_control(same, fn)["strategy_entropy"]
    assert row["passed"] is None and math.isnan(row["ratio"]) and "floor" in row["note"]
    # undefined after the collapse (every kept sample unmatched): n/a with a note
    none_kept = [dict(r, strategy=None if i in (0, 3) else r["strategy"]) for i, r in enumerate(recs)]
    row = collapse_control(none_kept, fn, metrics=["distinct_strategies"])["distinct_strategies"]
    assert row["passed"] is None and "collapsed" in row["note"]


def test_collapse_control_ratio_and_threshold():
    recs = hand_records()

    def fn(records, collapsed_value):
        distinct = len({r["text"] for r in records})
        return {"group_er": 4.0 if distinct > 2 else collapsed_value, "vendi": 3.0 if distinct > 2 else 1.2,
                "skipped": {}, "per_group": {}}

    ok = collapse_control(recs, lambda r: fn(r, 0.3))
    assert ok["group_er"]["ratio"] == pytest.approx(0.075) and ok["group_er"]["passed"] is True
    bad = collapse_control(recs, lambda r: fn(r, 0.5))
    assert bad["group_er"]["ratio"] == pytest.approx(0.125) and bad["group_er"]["passed"] is False
    # Vendi's floor is 1: (1.2 - 1) / (3 - 1) = 0.1 -> passes at the threshold
    assert ok["vendi"]["ratio"] == pytest.approx(0.1) and ok["vendi"]["passed"] is True
    assert collapse_control(recs, lambda r: fn(r, 0.5), threshold=0.2)["group_er"]["passed"] is True


def test_floors_are_documented_for_every_metric():
    for name, floor in COLLAPSE_FLOORS.items():
        if floor is not None:
            assert floor == (1.0 if name.startswith(("distinct", "vendi")) else 0.0), name
