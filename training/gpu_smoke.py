"""``make gpu-smoke``: a few verl PPO steps (vLLM rollouts) on a user task from a task file.

Prepares, in ``--out`` (default ``runs/gpu-smoke``):

1. a public-format dataset of its own making from the smoke world (no third-party data):
   ``data/corpus.jsonl`` (Search-R1 JSONL), ``data/train.parquet`` / ``data/test.parquet``
   (Search-R1 rows as they are: ``data_source``, chat ``prompt``,
   ``reward_model.ground_truth.target``, ``extra_info.{split, index}``; no env id);
2. ``data/task.yaml`` naming them (``data_sources: [searchgym_smoke]``), stored with
   ``searchgym task add`` (so verl's workers, fresh processes, resolve the rows to it);
3. the tiny model (``searchgym model init --preset small``);

then runs ``searchgym train rl --backend verl`` on the raw parquets: ``verl.trainer.main_ppo``
with vLLM, ``SearchEnvAgentLoop``, GRPO, 3 steps. ``--dry-run`` stops after verl's config
validation (what runs on a CPU machine). Needs a CUDA GPU and ``vllm`` installed for the
real run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

DATA_SOURCE = "searchgym_smoke"
TASK = "gpu-smoke"


def write_public_dataset(out: Path, seed: int = 0) -> Path:
    """Search-R1-format corpus + parquets + task file from the smoke world; returns the task file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from searchgym.envs.protocol import PROMPT
    from searchgym.envs.world import WorldConfig, generate_world
    from searchgym.retrieval.fileio import atomic_path, atomic_write_text

    world = generate_world(WorldConfig(preset="smoke", seed=seed))
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    with atomic_path(data / "corpus.jsonl") as tmp, tmp.open("w", encoding="utf-8") as f:
        for d in world.documents:
            f.write(json.dumps({"id": d.doc_id, "contents": d.contents}, ensure_ascii=False) + "\n")
    for split in ("train", "test"):
        rows = [{"data_source": DATA_SOURCE,
                 "prompt": [{"role": "user", "content": PROMPT.format(question=q.question)}],
                 "ability": "fact-reasoning",
                 "reward_model": {"style": "rule", "ground_truth": {"target": list(q.golden_answers)}},
                 "extra_info": {"split": split, "index": i}}
                for i, q in enumerate(world.questions[split])]
        with atomic_path(data / f"{split}.parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
    task = data / "task.yaml"
    atomic_write_text(task, textwrap.dedent(f"""\
        name: {TASK}
        qa: {{train: train.parquet, test: test.parquet}}
        corpus: corpus.jsonl
        retriever: bm25
        prompt: dataset
        data_sources: [{DATA_SOURCE}]
        env: {{max_turns: 4, topk: 3}}
        """))
    return task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/gpu-smoke")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dry-run", action="store_true", help="prepare and validate only (no GPU needed)")
    args = p.parse_args(argv)
    out = Path(args.out)
    sg = [sys.executable, "-m", "searchgym"]
    task = write_public_dataset(out)
    subprocess.run(sg + ["task", "add", str(task), "--force"], check=True)
    model = out / "model"
    if not (model / "searchgym_model.json").is_file():
        from searchgym.envs.world import ensure_world

        subprocess.run(sg + ["model", "init", "--preset", "small", "--world", str(ensure_world("smoke", 0)),
                             "--out", str(model)], check=True)
    data = out / "data"
    cmd = sg + [
        "train", "rl", "--backend", "verl", "--objective", "grpo", "--model", str(model.resolve()),
        "--out", str(out / "verl"), "--force",
        "--train-files", str(data / "train.parquet"), "--val-files", str(data / "test.parquet"),
        "--n-gpus", "1", "--rollout-engine", "vllm", "--gpu-memory-utilization", "0.3",
        "--train-batch-size", "8", "--rollout-n", "2", "--ppo-mini-batch-size", "4", "--micro-batch-size", "2",
        "--max-prompt-length", "256", "--max-response-length", "256", "--total-steps", str(args.steps),
        "--actor-lr", "1e-5",
        "--set", "trainer.save_freq=-1", "--set", "trainer.test_freq=-1",
        "--set", "actor_rollout_ref.rollout.agent.num_workers=2",
        "--set", "actor_rollout_ref.rollout.enforce_eager=true",
    ]
    if args.dry_run:
        cmd.append("--dry-run")
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
