"""summarize_rollouts on hand-built records, and the `searchgym diversity` CLI."""

import json
import math

import numpy as np
import pytest
import torch

from searchgym.cli import main
from searchgym.metrics import (
    RecordError,
    aligned_effective_rank,
    effective_ranks,
    group_effective_rank,
    miller_madow_entropy,
    pass_at_k,
    plugin_entropy,
    residualize_token_identity,
    summarize_rollouts,
    windowed_effective_ranks,
)

torch.set_num_threads(1)


def make_records(with_hidden=True):
    rng = np.random.default_rng(0)
    rows = [
        # question_id, correct, signature, strategy, queries, answer, fmt, T
        ("q1", True, "s1", "a", ["who is x", "x birthplace"], "Paris", 0, 30),
        ("q1", False, "s1", "a", ["who is x"], "Rome", 1, 12),
        ("q1", True, "s2", None, [], "paris", 0, 25),
        ("q1", False, "s3", "b", ["x", "y", "z"], None, 2, 40),
        ("q2", True, "s1", "a", ["list of y"], "p", 0, 28),
        ("q2", True, "s1", "a", ["list of y"], "q", 0, 35),
    ]
    recs = []
    for qid, ok, sig, strat, qs, ans, fe, T in rows:
        mask = np.ones(T + 4, dtype=int)
        mask[5:9] = 0  # a retrieved document: not policy tokens
        rec = {
            "question_id": qid, "correct": ok, "reward": float(ok), "signature": sig, "strategy": strat,
            "valid_strategies": ["a", "b", "c"], "queries": qs, "answer": ans,
            "golden_answers": ["paris"] if qid == "q1" else ["p", "q", "r"], "format_errors": fe,
            "num_searches": len(qs), "entropies": rng.uniform(0, 2, T + 4).round(3).tolist(),
            "loss_mask": mask.tolist(),
        }
        if with_hidden:
            rec["hidden_states"] = rng.standard_normal((T + 4, 6)).astype(np.float32)
            rec["policy_token_ids"] = rng.integers(0, 5, T).tolist()  # one per policy row
        recs.append(rec)
    return recs


def test_summarize_values():
    recs = make_records()
    out = summarize_rollouts(recs, k=(1, 4), er_window=20)
    assert out["episodes"] == 6 and out["groups"] == 2
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["pass@1"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["pass@4"] == 1.0 and out["pass@4_groups"] == 1
    assert out["format_error_rate"] == pytest.approx(2 / 6) and out["format_errors_mean"] == pytest.approx(0.5)
    assert out["searches_mean"] == pytest.approx(8 / 6)
    ent = np.concatenate([np.asarray(r["entropies"])[np.asarray(r["loss_mask"]) == 1] for r in recs])
    assert out["entropy"] == pytest.approx(ent.mean())
    policy = [r["hidden_states"][np.asarray(r["loss_mask"]) == 1] for r in recs]
    assert out["er"] == pytest.approx(effective_ranks(policy).mean())
    w = windowed_effective_ranks(policy, 20)
    # the T=12 response is measured on its 12 rows, not dropped
    assert out["er_within_window_short"] == 1 and out["er_within_window_skipped"] == 0
    assert out["er_within_window"] == pytest.approx(np.mean(w)) and np.isfinite(w).all()
    assert out["er_window"] == out["er_within_window"]  # deprecated alias
    assert out["group_er"] == pytest.approx(
        (group_effective_rank(policy[:4]) + group_effective_rank(policy[4:])) / 2, rel=1e-5
    )
    a1, a2 = aligned_effective_rank(policy[:4]), aligned_effective_rank(policy[4:])
    assert out["aligned_er"] == pytest.approx((a1[0] + a2[0]) / 2)
    assert out["aligned_er_positions"] == pytest.approx((a1[1] + a2[1]) / 2)
    assert a1[1] == 30 and a2[1] == 28  # up to the second-longest sample of each group
    resid = residualize_token_identity(policy, [r["policy_token_ids"] for r in recs])
    assert out["er_resid"] == pytest.approx(effective_ranks(resid).mean())
    assert out["group_er_resid"] == pytest.approx(
        (group_effective_rank(resid[:4]) + group_effective_rank(resid[4:])) / 2, rel=1e-5
    )
    assert out["response_length"] == pytest.approx(np.mean([30, 12, 25, 40, 28, 35]))
    # signatures: q1 {s1,s1,s2,s3} normalised by log min(4, 3); q2 {s1,s1}
    h1 = plugin_entropy(["s1", "s1", "s2", "s3"])
    assert out["signature_entropy"] == pytest.approx(h1 / 2)
    assert out["signature_entropy_norm"] == pytest.approx((h1 / math.log(3) + 0.0) / 2)
    assert out["distinct_signatures"] == pytest.approx(2.0)
    # strategies over matched trajectories: q1 {a, a, b} (one unmatched), q2 {a, a}
    assert out["strategy_entropy"] == pytest.approx(miller_madow_entropy("aab") / 2)
    assert out["strategy_entropy_plugin"] == pytest.approx(plugin_entropy("aab") / 2)
    assert out["unmatched_rate"] == pytest.approx((1 / 4 + 0) / 2)
    assert out["strategy_coverage"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert out["distinct_strategies"] == pytest.approx(1.5)
    # matched and correct: q1 {a} (one sample: no entropy), q2 {a, a}
    assert out["strategy_entropy_correct"] == 0.0 and out["strategy_entropy_correct_groups"] == 1
    assert out["strategy_entropy_groups"] == 2
    assert out["distinct_strategies_correct"] == 1.0
    # only q2 is multi-answer: correct answers p, q over n=2
    assert out["answer_diversity"] == pytest.approx(1.0)
    assert out["skipped"] == {"vendi": "disabled"}


def test_summarize_vendi_with_embed_fn():
    recs = make_records(with_hidden=False)
    calls = []

    def embed(texts):
        calls.append(len(texts))
        return np.eye(len(texts), 8)

    out = summarize_rollouts(recs, vendi=True, embed_fn=embed)
    assert calls == [6]  # one batched call for all records
    assert out["vendi"] == pytest.approx((4 + 2) / 2)  # orthogonal within each group
    assert "er" in out["skipped"]


def test_missing_fields_skip():
    out = summarize_rollouts([{"reward": 1.0}, {"reward": 0.0}])
    assert out["accuracy"] == 0.5
    for key in ("groups", "entropy", "er", "format_error_rate", "searches_mean"):
        assert key in out["skipped"]
    assert "pass@1" not in out
    assert summarize_rollouts([])["skipped"] == {"all": "no records"}


def test_bad_fields_name_the_record():
    recs = make_records(with_hidden=False)
    recs[2]["correct"] = "yes"
    with pytest.raises(RecordError, match=r"f\.jsonl:3: field 'correct' must be a boolean"):
        summarize_rollouts(recs, where=[f"f.jsonl:{i + 1}" for i in range(6)])
    recs = make_records(with_hidden=False)
    recs[1]["loss_mask"] = [1, 0]
    with pytest.raises(RecordError, match="record 1: field 'loss_mask'"):
        summarize_rollouts(recs)
    recs = make_records(with_hidden=False)
    del recs[4]["question_id"]
    with pytest.raises(RecordError, match="record 4"):
        summarize_rollouts(recs)


def write_jsonl(path, recs):
    with open(path, "w") as f:
        for r in recs:
            r = dict(r)
            if "hidden_states" in r:
                r["hidden_states"] = np.asarray(r["hidden_states"]).tolist()
            f.write(json.dumps(r) + "\n")


def test_cli_json_and_text(tmp_path, capsys):
    p = tmp_path / "roll.jsonl"
    recs = make_records()
    write_jsonl(p, recs)
    assert main(["diversity", str(p), "--json", "--no-vendi", "--k", "1,2"]) == 0
    res = json.loads(capsys.readouterr().out)
    direct = summarize_rollouts(recs, k=(1, 2))
    assert res["pass@2"] == pytest.approx(direct["pass@2"])
    assert res["er"] == pytest.approx(direct["er"], rel=1e-6)
    assert main(["diversity", str(p), "--no-vendi"]) == 0
    text = capsys.readouterr().out
    assert "signature_entropy" in text and "6 episodes" in text


def test_cli_errors(tmp_path, capsys):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"reward": 1}\n\n{"reward": \n')
    assert main(["diversity", str(p), "--no-vendi"]) == 2
    assert f"{p}:3: not valid JSON" in capsys.readouterr().err
    p.write_text('{"reward": 1}\n{"reward": "x"}\n')
    assert main(["diversity", str(p), "--no-vendi"]) == 2
    assert f"{p}:2: field 'reward'" in capsys.readouterr().err
    assert main(["diversity", str(tmp_path / "missing.jsonl")]) == 2
    with pytest.raises(SystemExit) as e:
        main(["diversity", "--help"])
    assert e.value.code == 0


@pytest.mark.slow
def test_cli_default_vendi_uses_minilm(tmp_path, capsys):
    p = tmp_path / "roll.jsonl"
    write_jsonl(p, make_records(with_hidden=False))
    assert main(["diversity", str(p), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 1.0 <= res["vendi"] <= 4.0


def test_step_mode_with_torch_tensors():
    recs = make_records()
    for r in recs:
        r["hidden_states"] = torch.from_numpy(r["hidden_states"]).to(torch.bfloat16)
        r["entropies"] = torch.tensor(r["entropies"])
    out = summarize_rollouts(recs, erv=False, full_er=False, er_window=20)
    assert "er" not in out and "erv" not in out and "full_er" in out["skipped"]["er"]
    assert "er_resid" not in out and "full_er" in out["skipped"]["er_resid"]
    ref = summarize_rollouts(make_records(), er_window=20)
    for key in ("er_within_window", "group_er", "aligned_er", "group_er_resid"):
        assert out[key] == pytest.approx(ref[key], rel=0.05), key  # bf16 rounding only
    bf = summarize_rollouts(recs, erv=False, er_window=20)
    assert bf["er_resid"] == pytest.approx(ref["er_resid"], rel=0.05)
    assert out["entropy"] == pytest.approx(ref["entropy"], rel=1e-6)


def test_per_group_metrics():
    recs = make_records()

    def embed(texts):
        return np.eye(len(texts), 8)

    out = summarize_rollouts(recs, k=(1, 2), er_window=20, vendi=True, embed_fn=embed, per_group=True)
    pg = out["per_group"]
    assert list(pg) == ["q1", "q2"]
    q1, q2 = pg["q1"], pg["q2"]
    assert q1["n"] == 4 and q1["accuracy"] == 0.5 and q2["accuracy"] == 1.0
    assert q1["pass@2"] == pytest.approx(pass_at_k(4, 2, 2)) and q2["pass@2"] == 1.0
    assert q1["format_error_rate"] == 0.5 and q1["searches_mean"] == pytest.approx(6 / 4)
    assert q1["response_length"] == pytest.approx(np.mean([30, 12, 25, 40]))
    ent = np.concatenate([np.asarray(r["entropies"])[np.asarray(r["loss_mask"]) == 1] for r in recs[:4]])
    assert q1["entropy"] == pytest.approx(ent.mean())
    assert q1["strategy_entropy"] == pytest.approx(miller_madow_entropy("aab"))
    assert q1["unmatched_rate"] == 0.25 and q1["matched"] == 3 and math.isnan(q1["strategy_entropy_correct"])
    assert q2["strategy_entropy"] == 0.0 and q2["strategy_coverage"] == pytest.approx(1 / 3)
    assert q1["vendi"] == pytest.approx(4.0) and q2["vendi"] == pytest.approx(2.0)
    assert q1["distinct_queries"] == pytest.approx(5 / 6)
    policy = [r["hidden_states"][np.asarray(r["loss_mask"]) == 1] for r in recs]
    assert q2["group_er"] == pytest.approx(group_effective_rank(policy[4:]), rel=1e-5)
    assert q2["aligned_er"] == pytest.approx(aligned_effective_rank(policy[4:])[0])
    # every per-question metric that the summary averages over groups averages to it
    # (accuracy is pooled over episodes: groups of unequal size differ)
    for key in ("pass@1", "group_er", "aligned_er", "group_er_resid", "strategy_entropy",
                "distinct_strategies", "unmatched_rate", "vendi", "distinct_queries", "signature_entropy"):
        assert out[key] == pytest.approx(np.nanmean([q1[key], q2[key]])), key
    # within-response ER: group means of the per-response values
    resid = residualize_token_identity(policy, [r["policy_token_ids"] for r in recs])
    assert q1["er_resid"] == pytest.approx(effective_ranks(resid[:4]).mean())
    assert q1["er_within_window"] == pytest.approx(np.mean(windowed_effective_ranks(policy[:4], 20)))
    assert "per_group" not in summarize_rollouts(recs)


def test_token_ids_from_response_ids_and_errors():
    recs = make_records()
    ref = summarize_rollouts(recs, er_window=20)
    for r in recs:  # the eval-file layout: response ids + loss mask instead of policy ids
        ids = iter(r.pop("policy_token_ids"))
        r["response_ids"] = [next(ids) if m else 99 for m in r["loss_mask"]]
    out = summarize_rollouts(recs, er_window=20)
    assert out["er_resid"] == pytest.approx(ref["er_resid"])
    assert out["group_er_resid"] == pytest.approx(ref["group_er_resid"])
    for r in recs:
        del r["response_ids"]
    out = summarize_rollouts(recs, er_window=20)
    assert "er_resid" not in out and "group_er_resid" not in out and "policy_token_ids" in out["skipped"]["er_resid"]
    recs = make_records()
    recs[3]["policy_token_ids"] = recs[3]["policy_token_ids"][:-1]
    with pytest.raises(RecordError, match="record 3: field 'policy_token_ids' has 39 ids"):
        summarize_rollouts(recs)
    recs[3]["policy_token_ids"] = ["a"] * 40
    with pytest.raises(RecordError, match="must be a list of integers"):
        summarize_rollouts(recs)


def test_identical_samples_read_the_floor():
    recs = make_records()
    copies = [dict(recs[0]) for _ in range(4)] + [dict(recs[4]) for _ in range(2)]
    out = summarize_rollouts(copies, er_window=20, per_group=True)
    for key in ("group_er", "aligned_er", "group_er_resid", "strategy_entropy", "strategy_entropy_plugin"):
        assert out[key] == 0.0, key
    assert out["distinct_strategies"] == 1.0 and out["distinct_signatures"] == 1.0
    # within-response ER does not see it (the reason it is not a between-sample metric)
    assert out["er_within_window"] > 1.0
