"""Token-in/token-out vs Search-R1-style decode-then-re-encode: how many trained tokens
differ from the sampled ones, and what that does to their log-probs.

Episodes are rolled out with the batched engine (``RolloutEngine``, T = 1.0, smoke world,
dense retriever) from (a) an untrained small-preset model and (b) the same model after a
quick SFT on diverse demonstrations (cached; about a minute the first time). Then, for each
episode:

- OURS (token-in/token-out): the trainer trains on ``prompt_ids + response_ids`` exactly as
  sampled. Checked, not assumed: the log-prob the trainer recomputes for every policy token
  of that sequence must equal the one the sampler recorded (a token that changed between
  sampling and training could not match), and the sequence is compared with the engine's.
- RE-ENCODE (what a text-in/text-out loop like Search-R1's ``generation.py`` does between
  turns): each policy turn's sampled ids are decoded to text with
  ``skip_special_tokens=True`` and encoded again (``add_special_tokens=False``);
  observations are tokenised as before. Counted: episodes with any change, sampled policy
  tokens not preserved (``difflib`` alignment), turns whose length changed; and the
  log-prob consequence: per episode, |sum of the re-encoded policy tokens' log-probs under
  the model - sum of the sampled log-probs| (the trainer's sequence vs. the behaviour
  policy's), plus the same restricted to the changed turns in one shared context (the part
  a real re-encoding loop cannot avoid even though it samples each turn after re-encoded
  context). A plain round trip (``skip_special_tokens=False``) is also counted, to separate
  dropped special tokens (EOS) from BPE re-merging.

    python benchmarks/token_drift.py [--quick] [--episodes 64] [--no-sft]
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, ensure_init_model, ensure_sft_model, print_table  # noqa: E402


#: Per-token |recomputed - sampled log-prob| above this marks a token that is not what was sampled.
LP_TOL = 1e-4


def policy_runs(traj) -> list[tuple[list[int], list[int]]]:
    """[(policy ids of a turn, observation ids after it)] from the loss mask."""
    runs: list[tuple[list[int], list[int]]] = []
    for tok, m in zip(traj.response_ids, traj.loss_mask):
        if m == 1:
            if not runs or runs[-1][1]:
                runs.append(([], []))
            runs[-1][0].append(tok)
        else:
            if not runs:
                raise ValueError("response starts with an observation token")
            runs[-1][1].append(tok)
    return runs


def token_logprobs(model, seqs: list[list[int]], pad_id: int, temperature: float, chunk: int = 16):
    """Per sequence, the model's log-prob of every token given its prefix (index p -> token p;
    entry 0 is 0.0), computed as the trainer does (``training.update.forward_logprobs``)."""
    import torch

    from searchgym.training.update import forward_logprobs, pad_batch

    out: list[np.ndarray] = []
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # less padding per chunk
    res: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for s in range(0, len(order), chunk):
            idx = order[s:s + chunk]
            b = pad_batch([seqs[i] for i in idx], [[1] * len(seqs[i]) for i in idx], pad_id)
            lp, _, _ = forward_logprobs(model, b.input_ids, b.attention_mask, temperature, with_entropy=False)
            for row, i in enumerate(idx):
                res[i] = np.concatenate([[0.0], lp[row, : len(seqs[i]) - 1].double().numpy()])
    for i in range(len(seqs)):
        out.append(res[i])
    return out


def analyse(model, tok, trajs, temperature: float) -> dict:
    from searchgym.agents.episode import encode_text

    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    n_ep = len(trajs)
    # ---- ours: the sequence trained on is prompt_ids + response_ids as sampled
    ours_seqs = [list(t.prompt_ids) + list(t.response_ids) for t in trajs]
    ours_lp = token_logprobs(model, ours_seqs, pad_id, temperature)
    ours_tok_diff, ours_ep_absdiff, ours_changed = [], [], 0
    for t, lp in zip(trajs, ours_lp):
        p0 = len(t.prompt_ids)
        m = np.asarray(t.loss_mask, bool)
        recomputed = lp[p0:][m]
        sampled = np.asarray(t.logprobs, np.float64)[m]
        d = recomputed - sampled
        ours_tok_diff.append(np.abs(d).max(initial=0.0))
        ours_ep_absdiff.append(abs(d.sum()))
        # a policy token whose id changed between sampling and training could not keep its log-prob
        ours_changed += int(np.abs(d).max(initial=0.0) > LP_TOL)

    # ---- re-encode (Search-R1) and plain round trip
    re_seqs, re_spans, turn_meta = [], [], []
    stats = {"sr1": dict(ep=0, lost=0, turns_len=0), "rt": dict(ep=0, lost=0, turns_len=0)}
    n_tok = n_turns = 0
    for t in trajs:
        seq = list(t.prompt_ids)
        spans, meta = [], []
        ep_flags = {"sr1": False, "rt": False}
        for ids, obs in policy_runs(t):
            n_tok += len(ids)
            n_turns += 1
            for key, skip in (("sr1", True), ("rt", False)):
                re = encode_text(tok, tok.decode(ids, skip_special_tokens=skip))
                if re != ids:
                    ep_flags[key] = True
                    sm = difflib.SequenceMatcher(None, ids, re, autojunk=False)
                    stats[key]["lost"] += len(ids) - sum(b.size for b in sm.get_matching_blocks())
                    stats[key]["turns_len"] += int(len(re) != len(ids))
                if key == "sr1":
                    sr1 = re
            start = len(seq)
            # context before this turn in the re-encoded sequence, the sampled and re-encoded turn
            meta.append((list(seq), list(ids), sr1))
            seq += sr1
            spans.append((start, len(seq)))
            seq += obs
        for key in stats:
            stats[key]["ep"] += int(ep_flags[key])
        re_seqs.append(seq)
        re_spans.append(spans)
        turn_meta.append(meta)
    re_lp = token_logprobs(model, re_seqs, pad_id, temperature)
    # same-context check: the sampled ids of each changed turn after the re-encoded context
    extra, extra_key = [], []
    for e, meta in enumerate(turn_meta):
        for j, (ctx, ids, sr1) in enumerate(meta):
            if sr1 != ids and ids:
                extra.append(ctx + ids)
                extra_key.append((e, j, len(ctx)))
    extra_lp = token_logprobs(model, extra, pad_id, temperature) if extra else []
    samectx = np.zeros(n_ep)
    for (e, j, c), lp in zip(extra_key, extra_lp):
        a, b = re_spans[e][j]
        samectx[e] += re_lp[e][a:b].sum() - lp[c:].sum()
    re_absdiff = []
    for t, lp, spans in zip(trajs, re_lp, re_spans):
        re_sum = sum(lp[a:b].sum() for a, b in spans)
        sampled_sum = float(np.asarray(t.logprobs, np.float64)[np.asarray(t.loss_mask, bool)].sum())
        re_absdiff.append(abs(re_sum - sampled_sum))
    drifted = [i for i in range(n_ep) if any(m[2] != m[1] for m in turn_meta[i])]
    return {
        "episodes": n_ep,
        "policy_tokens": n_tok,
        "turns": n_turns,
        "ours_lp_mismatch_episodes": ours_changed,
        "ours_token_lp_maxdiff": float(max(ours_tok_diff)),
        "ours_ep_lp_absdiff": float(np.mean(ours_ep_absdiff)),
        "reencode_drift_episode_frac": stats["sr1"]["ep"] / n_ep,
        "reencode_token_mismatch_frac": stats["sr1"]["lost"] / max(1, n_tok),
        "reencode_turn_len_change_frac": stats["sr1"]["turns_len"] / max(1, n_turns),
        "reencode_ep_lp_absdiff": float(np.mean(re_absdiff)),
        "reencode_ep_lp_absdiff_drifted": float(np.mean([re_absdiff[i] for i in drifted])) if drifted else 0.0,
        "reencode_samectx_ep_lp_absdiff": float(np.mean(np.abs(samectx))),
        "roundtrip_drift_episode_frac": stats["rt"]["ep"] / n_ep,
        "roundtrip_token_mismatch_frac": stats["rt"]["lost"] / max(1, n_tok),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 episodes, untrained model only")
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--no-sft", action="store_true", help="skip the SFT'd model")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-response-tokens", type=int, default=512)
    args = ap.parse_args()
    if args.quick:
        args.episodes, args.no_sft, args.max_response_tokens = 16, True, 256

    import torch

    torch.set_num_threads(1)
    from searchgym.agents.demos import world_envs
    from searchgym.agents.model import load_model
    from searchgym.agents.rollout import RolloutConfig, RolloutEngine
    from searchgym.agents.trajectory import question_count
    from searchgym.envs.world import ensure_index, ensure_world

    world = ensure_world("smoke", 0)
    ensure_index(world, "dense")
    models = {"untrained": ensure_init_model(world, "small")}
    if not args.no_sft:
        models["sft"] = ensure_sft_model(world, "small")
    temperature = 1.0
    results = {}
    for label, path in models.items():
        model, tok = load_model(path)
        envs = world_envs(world, "train", args.episodes)
        nq = question_count(envs[0])
        cfg = RolloutConfig(max_new_tokens=args.max_new_tokens, max_response_tokens=args.max_response_tokens,
                            temperature=temperature, seed=0, max_batch_size=args.episodes)
        trajs = RolloutEngine(model, tok, cfg).rollout(envs, [{"index": i % nq} for i in range(args.episodes)])
        results[label] = analyse(model, tok, trajs, temperature)

    print(f"smoke world, {args.episodes} episodes per model, small preset, T={temperature}, "
          f"max {args.max_new_tokens} tokens/turn; ours = token-in/token-out, re-encode = Search-R1's "
          f"decode(skip_special_tokens=True) + encode per turn")
    rows = []
    for label, r in results.items():
        rows.append([f"{label}: ours", r["ours_lp_mismatch_episodes"] / r["episodes"], 0.0, 0.0,
                     r["ours_ep_lp_absdiff"], 0.0])
        rows.append([f"{label}: re-encode", r["reencode_drift_episode_frac"], r["reencode_token_mismatch_frac"],
                     r["reencode_turn_len_change_frac"], r["reencode_ep_lp_absdiff"],
                     r["reencode_samectx_ep_lp_absdiff"]])
    print_table(["model: loop", "episodes drifted", "tokens changed", "turns len changed",
                 "|d sum logp|/ep", "same-ctx |d|/ep"], rows)
    for label, r in results.items():
        print(f"{label}: {r['policy_tokens']} policy tokens in {r['turns']} turns; ours: max per-token "
              f"|recomputed - sampled log-prob| = {r['ours_token_lp_maxdiff']:.2e}; plain round trip "
              f"(special tokens kept): {100 * r['roundtrip_drift_episode_frac']:.0f}% episodes, "
              f"{100 * r['roundtrip_token_mismatch_frac']:.1f}% tokens changed")
    figs = {f"{label}_{k}": v for label, r in results.items() for k, v in r.items()}
    emit("token_drift", figs)


if __name__ == "__main__":
    main()
