"""Supervised warm start on demonstration episodes.

Loss: token-mean negative log-likelihood over policy tokens only (prompt and
``<information>`` observation tokens have loss mask 0, Search-R1's state masking), with
log-probs from ``verl.utils.torch_functional.logprobs_from_logits``. AdamW, linear warmup
then cosine decay, gradient clipping, length-bucketed batches (episodes sorted by length
and cut into batches, batch order shuffled each epoch, so a batch carries little padding).
Periodic greedy validation accuracy on the validation split with a progress bar. The log
(``sft_log.jsonl``) writes the metric vocabulary of :mod:`searchgym.metrics.names`.

``train_sft(config) -> Path`` is the in-process API; ``searchgym train sft`` wraps it.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from searchgym.metrics import names as mn
from searchgym.retrieval.fileio import append_jsonl
from searchgym.training.common import (
    evaluate, load_model, make_envs, make_optimizer, make_scheduler, save_model, set_threads,
)
from searchgym.training.config import SFTConfig, dataclass_to_dict
from searchgym.training.update import pad_batch, packed_forward_logprobs

__all__ = ["train_sft", "load_demo_episodes", "length_buckets", "sft_loss"]


def load_demo_episodes(path: str | Path, tokenizer, world: str | Path = "") -> list[tuple[list[int], list[int]]]:
    """(input ids, per-token loss mask) of every demo line, tokenised exactly as the
    rollout engine lays out episodes (``searchgym.agents.episode.demo_tokens``). A torn or
    malformed line raises naming file:line; with ``world``, demos recorded on another
    world raise (``searchgym.agents.demos.check_demos_world``)."""
    from searchgym.agents.demos import check_demos_world, read_demo_lines
    from searchgym.agents.episode import tokenize_episode

    path = Path(path)
    records = read_demo_lines(path)
    if world:
        check_demos_world(records, path, world)
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not isinstance(rec.get("turns"), list):
            raise ValueError(f"{path}:{i + 1}: a demo line needs 'prompt' (str) and 'turns' (list)")
        try:
            turns = [(t["action"], t.get("observation")) for t in rec["turns"]]
        except (KeyError, TypeError, AttributeError):
            raise ValueError(f"{path}:{i + 1}: each turn needs an 'action'") from None
        ep = tokenize_episode(tokenizer, rec["prompt"], turns)
        ids = list(ep.prompt_ids) + list(ep.response_ids)
        mask = [0] * len(ep.prompt_ids) + list(ep.loss_mask)
        out.append((ids, mask))
    if not out:
        raise ValueError(f"{path}: no demonstrations")
    return out


def length_buckets(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted, chunked), batch order shuffled."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def sft_loss(model, input_ids, attention_mask, response_mask, label_smoothing: float = 0.0) -> torch.Tensor:
    """Token-mean NLL over policy tokens (label-aligned ``response_mask``).

    With ``label_smoothing`` eps > 0: torch's smoothed cross-entropy,
    ``(1 - eps) * NLL + eps * mean over the vocabulary of -log p`` (its optimum puts
    ``eps / V`` on every token), same token mean over policy tokens.
    """
    if label_smoothing <= 0:
        # packed: no layer computes a padding token (equal to the padded forward within 1e-6;
        # 0.92x its time on length-bucketed small-preset batches, 2026-12-02)
        logp, _, _ = packed_forward_logprobs(model, input_ids, attention_mask, response_mask, with_entropy=False)
        return -(logp * response_mask).sum() / response_mask.sum().clamp_min(1.0)
    # decoder once, LM head on the policy positions only (as forward_logprobs does)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    sel = response_mask > 0
    if not bool(sel.any()):
        return hidden.sum() * 0.0
    logits = model.get_output_embeddings()(hidden[:, :-1, :][sel]).float()
    return F.cross_entropy(logits, input_ids[:, 1:][sel], label_smoothing=label_smoothing)


#: ``on_epoch_end(model, tokenizer, epoch, step) -> dict | None``: called after every full
#: epoch (model in train mode; the hook may switch modes, training restores train mode).
EpochHook = Callable[[Any, Any, int, int], "dict | None"]


def train_sft(config: SFTConfig, progress: bool = True, on_epoch_end: EpochHook | None = None) -> Path:
    """Fine-tune ``config.model`` on ``config.demos``; returns ``<out>/model``.

    Writes ``<out>/sft_log.jsonl`` and the model with ``searchgym_train.json`` (world,
    config, final validation accuracy ``val_accuracy``, wall time). Log lines, in the names
    of :mod:`searchgym.metrics.names` (old logs read the same through
    ``normalize_record(line, SFT_RECORD)``): per step ``{"step", "update/loss",
    "update/grad_norm", "update/lr", "time/elapsed_s"}``; per validation ``{"step",
    "time/elapsed_s", "val/<m>"}`` (``<m>``: :func:`~searchgym.training.common.evaluate`'s
    fields). With ``config.save_epochs`` also ``<out>/epochs/epoch-<k>/`` after every full
    epoch k. ``on_epoch_end`` (see :data:`EpochHook`) runs after every full epoch; a dict
    it returns is logged as ``{"epoch": k, "step": s, "val/<key>": value}`` (a key already
    namespaced is kept as it is).
    """
    config.validate()
    for key in ("model", "demos", "out"):
        if not getattr(config, key):
            raise ValueError(f"sft.{key} is required")
    t_start = time.perf_counter()
    set_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    # every input is checked before the output folder is touched (demos first: no model load)
    from searchgym.agents.demos import load_demos

    load_demos(config.demos, config.world or None)
    model, tok = load_model(config.model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    episodes = load_demo_episodes(config.demos, tok)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "sft_log.jsonl"
    if log.exists():
        log.unlink()
    kept = [e for e in episodes if len(e[0]) <= config.max_seq_len]
    dropped = len(episodes) - len(kept)
    if not kept:
        raise ValueError(f"every demo is longer than sft.max_seq_len={config.max_seq_len}")
    lengths = [len(e[0]) for e in kept]
    steps_per_epoch = (len(kept) + config.batch_size - 1) // config.batch_size
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    schedule_total = steps_per_epoch * config.schedule_epochs if config.schedule_epochs else total

    optimizer = make_optimizer(model, config.optim)
    scheduler = make_scheduler(optimizer, config.optim.warmup_steps, schedule_total, config.optim.min_lr_ratio)
    val_envs = None

    def validate(step: int) -> dict:
        nonlocal val_envs
        if val_envs is None:
            val_envs, _ = make_envs(config.eval_family, min(config.eval_questions, 64), config.val_split,
                                    config.world, retriever=config.retriever)
        r = evaluate(model, tok, family=config.eval_family, split=config.val_split,
                     num_questions=config.eval_questions, envs=val_envs, seed=config.seed)
        rec = {"step": step, mn.TIME_ELAPSED: time.perf_counter() - t_start, **{mn.val(k): v for k, v in r.items()}}
        append_jsonl(log, rec)
        return rec

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="sft", unit="step", dynamic_ncols=True)
    def end_epoch(epoch: int, step: int) -> None:
        if config.save_epochs:
            save_model(model, tok, out / "epochs" / f"epoch-{epoch}", {
                "world": config.world, "retriever": config.retriever, "base_model": config.model,
                "demos": config.demos, "epoch": epoch, "steps": step, "sft": dataclass_to_dict(config)})
        if on_epoch_end is not None:
            rec = on_epoch_end(model, tok, epoch, step)
            model.train()
            if rec:
                append_jsonl(log, {"epoch": epoch, "step": step,
                                   **{k if mn.is_namespaced(k) else mn.val(k): v for k, v in rec.items()}})

    step, last_val, epoch = 0, None, 0
    model.train()
    try:
        while step < total:
            stopped = False
            for idx in length_buckets(lengths, config.batch_size, rng):
                if step >= total:
                    break
                if config.time_budget_s and time.perf_counter() - t_start > config.time_budget_s:
                    total, stopped = step, True
                    break
                b = pad_batch([kept[i][0] for i in idx], [kept[i][1] for i in idx], pad_id)
                loss = sft_loss(model, b.input_ids, b.attention_mask, b.response_mask, config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                append_jsonl(log, {"step": step, mn.UPDATE_LOSS: float(loss.detach()), mn.UPDATE_GRAD_NORM: float(gn),
                                   mn.UPDATE_LR: float(optimizer.param_groups[0]["lr"]),
                                   mn.TIME_ELAPSED: time.perf_counter() - t_start})
                if bar is not None:
                    bar.update(1)
                    post = {"loss": f"{float(loss):.3f}"}
                    if last_val is not None:
                        post["val_acc"] = f"{last_val[mn.val('accuracy')]:.2f}"
                    bar.set_postfix(post)
                if config.eval_every and step % config.eval_every == 0 and step < total:
                    last_val = validate(step)
                    model.train()
                if step % steps_per_epoch == 0:
                    epoch += 1
                    end_epoch(epoch, step)
            if stopped:
                break
    finally:
        if bar is not None:
            bar.close()
    last_val = validate(step)
    info = {
        "world": config.world,
        "retriever": config.retriever,
        "base_model": config.model,
        "demos": config.demos,
        "steps": step,
        "episodes": len(kept),
        "episodes_dropped_too_long": dropped,
        "val_accuracy": last_val[mn.val("accuracy")],  # the model's record keeps its key (model folders)
        "val_family": config.eval_family,
        "wall_time_s": time.perf_counter() - t_start,
        "sft": dataclass_to_dict(config),
    }
    return save_model(model, tok, out / "model", info)
