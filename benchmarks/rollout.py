"""Batched rollout engine vs one episode at a time, and vs Hugging Face ``generate``.

Same small model, same sampling settings (T = 1, no truncation), same env (smoke world,
dense retriever), same budgets. Prints policy tokens/s of each, the ratios, and the
share of the batched rollout's wall time spent in env + retrieval.

- engine batched (B = episodes) vs the engine one episode at a time (each row has its own
  seeded sampler, so both draw the same tokens);
- HF ``generate`` (what a user would write instead): multi-turn episodes with one batched,
  left-padded ``generate`` call per turn over the live episodes (the whole context
  re-encoded every turn: ``generate`` keeps no cache across calls), stop tokens
  ``</search>``/``</answer>``/EOS, then one env step; and ``generate`` one episode at a
  time (``--generate-single`` episodes, the slowest baseline); plus the first turn alone,
  engine vs ``generate`` batched.

The configurations run in interleaved rounds (``--rounds``); ratios are of the summed
tokens and CPU seconds (``time.process_time``, robust to load on a shared machine).

    python benchmarks/rollout.py [--quick] [--episodes 64] [--preset small] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def first_turn_engine(engine, envs, opts) -> int:
    """Policy tokens of the engine's first generation round alone (episodes stop after it:
    a one-turn budget, the same work ``generate`` does for the first turn)."""
    from dataclasses import replace

    engine.config = replace(engine.config, max_response_tokens=engine.config.max_new_tokens)
    trajs = engine.rollout(envs, opts)
    return sum(t.num_policy_tokens for t in trajs)


def generate_rollout(model, tok, envs, opts, max_new_tokens: int, max_response_tokens: int, stop_ids,
                     batch: int, seed: int, max_turns: int = 0) -> int:
    """Multi-turn episodes with HF ``generate`` (``batch`` episodes per call, one call per
    turn); returns the number of policy tokens sampled. ``max_turns`` > 0 stops after that
    many turns (1: the first turn alone)."""
    import torch

    from searchgym.agents.episode import encode_prompt, encode_text

    torch.manual_seed(seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = sorted({*stop_ids, tok.eos_token_id} - {None})
    rows = []
    for env, o in zip(envs, opts):
        prompt, _ = env.reset(options=o)
        ids = encode_prompt(tok, prompt)
        rows.append({"env": env, "ids": ids, "n0": len(ids), "done": False})
    policy_tokens, turn = 0, 0
    while True:
        live = [r for r in rows if not r["done"] and len(r["ids"]) - r["n0"] < max_response_tokens]
        if not live or (max_turns and turn >= max_turns):
            return policy_tokens
        turn += 1
        for start in range(0, len(live), batch):
            part = live[start:start + batch]
            L = max(len(r["ids"]) for r in part)
            ids = torch.full((len(part), L), pad, dtype=torch.long)
            am = torch.zeros((len(part), L), dtype=torch.long)
            for i, r in enumerate(part):
                ids[i, L - len(r["ids"]):] = torch.tensor(r["ids"])
                am[i, L - len(r["ids"]):] = 1
            budget = min(max_new_tokens, max_response_tokens - min(len(r["ids"]) - r["n0"] for r in part))
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=am, do_sample=True, temperature=1.0, top_k=0,
                                     top_p=1.0, max_new_tokens=max(1, budget), eos_token_id=eos, pad_token_id=pad)
            for i, r in enumerate(part):
                new = out[i, L:].tolist()
                cut = next((j + 1 for j, t in enumerate(new) if t in eos), len(new))
                new = new[:cut]
                policy_tokens += len(new)
                r["ids"] += new
                obs, _, term, trunc, _ = r["env"].step(tok.decode(new, skip_special_tokens=True))
                if term or trunc:
                    r["done"] = True
                elif obs:
                    r["ids"] += encode_text(tok, obs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-response-tokens", type=int, default=320)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every configuration")
    ap.add_argument("--generate-single", type=int, default=16,
                    help="episodes run one at a time with HF generate per round (it is slow)")
    ap.add_argument("--quick", action="store_true", help="16 episodes, smoke model, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.episodes, args.preset, args.rounds, args.generate_single = 16, "smoke", 1, 4

    import torch

    torch.set_num_threads(args.threads)
    from searchgym.agents.demos import world_envs
    from searchgym.agents.model import count_parameters, init_model, load_model
    from searchgym.agents.rollout import RolloutConfig, RolloutEngine
    from searchgym.agents.trajectory import question_count
    from searchgym.envs.world import ensure_index, ensure_world

    world = ensure_world("smoke", 0)
    ensure_index(world, "dense")
    with tempfile.TemporaryDirectory() as tmp:
        init_model(args.preset, f"{tmp}/m", world_dir=world, seed=0)
        model, tok = load_model(f"{tmp}/m")
    envs = world_envs(world, "train", args.episodes)
    nq = question_count(envs[0])
    opts = [{"index": i % nq} for i in range(args.episodes)]
    cfg = RolloutConfig(max_new_tokens=args.max_new_tokens, max_response_tokens=args.max_response_tokens,
                        temperature=1.0, seed=0, max_batch_size=args.episodes)

    model.eval()
    stop_ids = RolloutEngine(model, tok, cfg).stop_ids
    tok_n = {k: 0 for k in ("batched", "single", "gen_batched", "gen_single", "first_engine", "first_gen")}
    wall = dict.fromkeys(tok_n, 0.0)
    cpu = dict.fromkeys(tok_n, 0.0)
    single_eps = 0
    same = 0
    env_s = 0.0

    def timed(key, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        n = fn()
        wall[key] += time.perf_counter() - t0
        cpu[key] += time.process_time() - c0
        tok_n[key] += n

    gs = min(args.generate_single, args.episodes)
    for rnd in range(args.rounds):
        eng = RolloutEngine(model, tok, cfg)
        batched = []
        timed("batched", lambda: sum(t.num_policy_tokens for t in batched.extend(eng.rollout(envs, opts)) or batched))
        env_s += eng.timings["env_s"]
        one = RolloutEngine(model, tok, cfg)
        alone = []
        timed("single", lambda: sum(t.num_policy_tokens for t in alone.extend(
            one.rollout([envs[i]], [opts[i]], episode_indices=[i])[0] for i in range(args.episodes)) or alone))
        same += sum(a.response_ids == b.response_ids for a, b in zip(batched, alone))
        timed("gen_batched", lambda: generate_rollout(model, tok, envs, opts, args.max_new_tokens,
                                                      args.max_response_tokens, stop_ids, args.episodes, rnd))
        timed("gen_single", lambda: generate_rollout(model, tok, envs[:gs], opts[:gs], args.max_new_tokens,
                                                     args.max_response_tokens, stop_ids, 1, rnd))
        single_eps += gs
        first = RolloutEngine(model, tok, RolloutConfig(**{**cfg.__dict__, "seed": rnd}))

        timed("first_engine", lambda: first_turn_engine(first, envs, opts))
        timed("first_gen", lambda: generate_rollout(model, tok, envs, opts, args.max_new_tokens,
                                                    args.max_response_tokens, stop_ids, args.episodes, rnd,
                                                    max_turns=1))

    def rate(k, clock):
        return tok_n[k] / max((cpu if clock == "cpu" else wall)[k], 1e-9)

    figs = {
        "params": count_parameters(model),
        "episodes": args.episodes,
        "rounds": args.rounds,
        "batched_tokens_per_s": rate("batched", "wall"),
        "single_tokens_per_s": rate("single", "wall"),
        "speedup": rate("batched", "wall") / rate("single", "wall"),
        # CPU seconds of this process: with one torch thread, immune to other load on the machine
        "speedup_cpu_time": rate("batched", "cpu") / rate("single", "cpu"),
        "env_retrieval_share": env_s / wall["batched"],
        "identical_episodes": same / args.rounds,
        "vs_generate_batched_cpu": rate("batched", "cpu") / rate("gen_batched", "cpu"),
        "vs_generate_single_cpu": rate("batched", "cpu") / rate("gen_single", "cpu"),
        "first_turn_vs_generate_batched_cpu": rate("first_engine", "cpu") / rate("first_gen", "cpu"),
        "vs_generate_batched_wall": rate("batched", "wall") / rate("gen_batched", "wall"),
        "generate_batched_tokens_per_cpu_s": rate("gen_batched", "cpu"),
        "generate_single_tokens_per_cpu_s": rate("gen_single", "cpu"),
        "batched_tokens_per_cpu_s": rate("batched", "cpu"),
    }
    print(f"model {args.preset}: {figs['params']:,} params; {args.episodes} episodes "
          f"(max {args.max_new_tokens} tokens/turn, {args.max_response_tokens}/episode); {args.rounds} interleaved "
          f"rounds; load average {os.getloadavg()[0]:.1f}")
    print(f"{'':34s}{'tokens':>10s}{'CPU s':>10s}{'tok/CPU-s':>12s}{'wall s':>10s}")
    names = {"batched": f"engine batched (B={args.episodes})", "single": "engine one at a time",
             "gen_batched": f"HF generate batched (B={args.episodes})/turn",
             "gen_single": f"HF generate one at a time ({gs}/round)",
             "first_engine": "engine, first turn", "first_gen": "HF generate batched, first turn"}
    for k, label in names.items():
        print(f"{label:34s}{tok_n[k]:10d}{cpu[k]:10.2f}{rate(k, 'cpu'):12.1f}{wall[k]:10.2f}")
    print(f"engine batched vs one at a time: {figs['speedup']:.1f}x wall, {figs['speedup_cpu_time']:.1f}x CPU time; "
          f"env + retrieval {100 * figs['env_retrieval_share']:.1f}% of batched wall time; "
          f"{figs['identical_episodes']:.0f}/{args.episodes} episodes token-identical across the two modes")
    print(f"engine batched vs HF generate (CPU time): {figs['vs_generate_batched_cpu']:.2f}x generate batched per turn, "
          f"{figs['vs_generate_single_cpu']:.1f}x generate one at a time; first turn alone "
          f"{figs['first_turn_vs_generate_batched_cpu']:.2f}x generate batched")
    print("RESULT_JSON " + json.dumps({"name": "rollout", "figures": figs}))


if __name__ == "__main__":
    main()
