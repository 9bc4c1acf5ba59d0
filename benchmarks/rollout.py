"""Batched rollout engine vs one episode at a time, side by side in one run.

Same small model, same sampling (each row has its own seeded sampler, so both sides draw
the same tokens), same env (smoke world, dense retriever). Prints tokens/s of each, the
ratio, and the share of the batched rollout's wall time spent in env + retrieval.

    python benchmarks/rollout.py [--quick] [--episodes 64] [--preset small]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-response-tokens", type=int, default=320)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="16 episodes, smoke model")
    args = ap.parse_args()
    if args.quick:
        args.episodes, args.preset = 16, "smoke"

    import torch

    torch.set_num_threads(args.threads)
    from searchgym.agents.demos import world_envs
    from searchgym.agents.model import count_parameters, init_model, load_model
    from searchgym.agents.rollout import RolloutConfig, RolloutEngine
    from searchgym.envs.world import ensure_index, ensure_world

    world = ensure_world("smoke", 0)
    ensure_index(world, "dense")
    with tempfile.TemporaryDirectory() as tmp:
        init_model(args.preset, f"{tmp}/m", world_dir=world, seed=0)
        model, tok = load_model(f"{tmp}/m")
    envs = world_envs(world, "train", args.episodes)
    nq = len(envs[0].unwrapped.questions)
    opts = [{"index": i % nq} for i in range(args.episodes)]
    cfg = RolloutConfig(max_new_tokens=args.max_new_tokens, max_response_tokens=args.max_response_tokens,
                        temperature=1.0, seed=0, max_batch_size=args.episodes)

    eng = RolloutEngine(model, tok, cfg)
    t0, c0 = time.perf_counter(), time.process_time()
    batched = eng.rollout(envs, opts)
    tb, cb = time.perf_counter() - t0, time.process_time() - c0
    env_share = eng.timings["env_s"] / tb
    nb = sum(t.num_policy_tokens for t in batched)

    one = RolloutEngine(model, tok, cfg)
    t0, c0 = time.perf_counter(), time.process_time()
    alone = [one.rollout([envs[i]], [opts[i]], episode_indices=[i])[0] for i in range(args.episodes)]
    ts, cs = time.perf_counter() - t0, time.process_time() - c0
    ns = sum(t.num_policy_tokens for t in alone)
    same = sum(a.response_ids == b.response_ids for a, b in zip(batched, alone))

    figs = {
        "params": count_parameters(model),
        "episodes": args.episodes,
        "batched_tokens_per_s": nb / tb,
        "single_tokens_per_s": ns / ts,
        "speedup": (nb / tb) / (ns / ts),
        # CPU seconds of this process: with one torch thread, immune to other load on the machine
        "speedup_cpu_time": (nb / cb) / (ns / cs),
        "env_retrieval_share": env_share,
        "identical_episodes": same,
    }
    print(f"model {args.preset}: {figs['params']:,} params; {args.episodes} episodes "
          f"(max {args.max_new_tokens} tokens/turn, {args.max_response_tokens}/episode)")
    print(f"{'':24s}{'tokens':>10s}{'seconds':>10s}{'tokens/s':>12s}")
    print(f"{'batched (B=%d)' % args.episodes:24s}{nb:10d}{tb:10.2f}{nb / tb:12.1f}")
    print(f"{'one at a time':24s}{ns:10d}{ts:10.2f}{ns / ts:12.1f}")
    print(f"speedup {figs['speedup']:.1f}x wall, {figs['speedup_cpu_time']:.1f}x CPU time; env + retrieval {100 * env_share:.1f}% of batched wall time; "
          f"{same}/{args.episodes} episodes token-identical across the two modes")
    print("RESULT_JSON " + json.dumps({"name": "rollout", "figures": figs}))


if __name__ == "__main__":
    main()
