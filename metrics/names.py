"""The metric vocabulary: one name per measured quantity, namespaced by where it was measured.

Every field the RL trainer writes to a run's ``metrics.jsonl`` (one line per step), every
field the SFT trainer writes to its ``sft_log.jsonl`` and every field of the fixed
evaluation's ``eval.jsonl`` / ``eval_questions.jsonl`` has one name here.
A name is ``<namespace>/<metric>``:

- ``train/``: the step's training rollouts (the batch the update learns from). Rollout
  metrics keep their :func:`searchgym.metrics.summarize_rollouts` names (``train/accuracy``,
  ``train/reward_mean``, ``train/entropy``, ``train/group_er``, ...): the trainer's own
  outcome fields and whatever a step hook returns are the same vocabulary, so a metric
  means one thing whether it was computed on training rollouts or on the evaluation;
- ``update/``: the optimisation (``update/pg_loss``, ``update/clip_frac``, ``update/lr``, ...;
  SFT: ``update/loss``, ``update/grad_norm``, ``update/lr``);
- ``mech/``: what an objective's mechanism acts on (clip binds, token selections, the ER
  bonus; :mod:`searchgym.training.diagnostics`);
- ``time/``: wall-clock seconds (``time/step_s``, ...; SFT: ``time/elapsed_s``);
- ``val/``: the trainer's own greedy validation (``RLConfig.eval_every``,
  ``SFTConfig.eval_every``) and what SFT's epoch-end hook measures of the model;
- ``eval/``: the fixed evaluation (``eval/accuracy``, ``eval/entropy``, ``eval/pass@2``,
  ``eval/trained_tf/group_er``, ...).

Record fields that say *which* record it is (``step``, ``epoch``, ``replica``, ``question``,
``controls``) are not metrics and carry no namespace.

Files written before this vocabulary (docs/results/*/arms/*) hold un-namespaced keys;
:func:`normalize_record` maps a loaded record to the names here (:data:`LEGACY_STEP_KEYS`
for the trainer's own fields, the ``val_`` prefix and the rollout-metric rule below for the
rest; :data:`LEGACY_SFT_KEYS` for an ``sft_log.jsonl``), so one reader handles old and new
files alike. Imports nothing (``metrics`` stands
alone).
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = [
    "TRAIN", "UPDATE", "MECH", "TIME", "VAL", "EVAL", "NAMESPACES", "RECORD_FIELDS",
    "STEP_RECORD", "EVAL_RECORD", "SFT_RECORD",
    "train", "val", "evaluation", "is_namespaced", "strip_namespace",
    "TRAIN_ACCURACY", "TRAIN_REWARD", "TRAIN_REWARD_STD", "TRAIN_FORMAT_ERROR_RATE", "TRAIN_SEARCHES",
    "TRAIN_RESPONSE_LENGTH", "TRAIN_EPISODE_LENGTH", "TRAIN_ENTROPY", "TRAIN_ENTROPY_TOP",
    "UPDATE_ROLLOUT_LOGPROB_ABSDIFF", "UPDATE_ADV_ABS_MEAN", "UPDATE_CLIP_FRAC", "UPDATE_KL_REF", "UPDATE_PPO_KL",
    "UPDATE_PG_LOSS", "UPDATE_ENTROPY_LOSS", "UPDATE_GRAD_NORM", "UPDATE_LR", "UPDATE_LOSS",
    "MECH_COV_SELECTED_FRAC", "MECH_FORKING_SELECTED_FRAC",
    "TIME_ROLLOUT", "TIME_OLD_LOGPROB", "TIME_UPDATE", "TIME_STEP", "TIME_GRAD_DIAG", "TIME_METRICS", "TIME_EVAL",
    "TIME_ELAPSED", "LEGACY_STEP_KEYS", "LEGACY_EVAL_KEYS", "LEGACY_SFT_KEYS", "normalize_record",
]

TRAIN, UPDATE, MECH, TIME, VAL, EVAL = "train/", "update/", "mech/", "time/", "val/", "eval/"
NAMESPACES = (TRAIN, UPDATE, MECH, TIME, VAL, EVAL)

#: Fields that identify a record (which step, epoch, replica, question) or hold nested detail
#: (``controls``); never namespaced, never renamed.
RECORD_FIELDS = ("step", "epoch", "replica", "question", "controls")

#: ``normalize_record`` kinds: a metrics.jsonl line, an eval.jsonl / eval_questions.jsonl
#: line, an sft_log.jsonl line.
STEP_RECORD, EVAL_RECORD, SFT_RECORD = "step", "eval", "sft"


def train(metric: str) -> str:
    """``train/<metric>``: a rollout metric measured on the step's training rollouts."""
    return TRAIN + metric


def val(metric: str) -> str:
    """``val/<metric>``: a metric of the trainer's own greedy validation."""
    return VAL + metric


def evaluation(metric: str) -> str:
    """``eval/<metric>``: a metric of the fixed evaluation (a summarize_rollouts name, a
    ``graph_*`` / ``qgraph_*`` / ``query_*`` name, or ``trained_tf/<m>`` / ``untrained_tf/<m>``)."""
    return EVAL + metric


def is_namespaced(name: str) -> bool:
    """Whether ``name`` already starts with one of :data:`NAMESPACES`."""
    return name.startswith(NAMESPACES)


def strip_namespace(name: str) -> str:
    """``train/entropy`` -> ``entropy``; a name without a namespace is returned as is."""
    for ns in NAMESPACES:
        if name.startswith(ns):
            return name[len(ns):]
    return name


# ----------------------------------------------------------------------------- the trainer's fields

# train/: the step's rollouts (summarize_rollouts names where that function has the metric)
TRAIN_ACCURACY = train("accuracy")
TRAIN_REWARD = train("reward_mean")
TRAIN_REWARD_STD = train("reward_std")  # sample std over the step's episodes (0 for one episode)
TRAIN_FORMAT_ERROR_RATE = train("format_error_rate")
TRAIN_SEARCHES = train("searches_mean")  # searches per episode
TRAIN_RESPONSE_LENGTH = train("response_length")  # policy tokens per episode
TRAIN_EPISODE_LENGTH = train("episode_length")  # response tokens per episode, env tokens included
#: Token entropy (nats) of the sampling distribution, mean over policy tokens: the one
#: per-step token entropy (searchgym.metrics.token_entropy_stats, as ``eval/entropy``).
TRAIN_ENTROPY = train("entropy")
#: Mean entropy of the top-rho (0.2) highest-entropy policy tokens (the top-rho rule of
#: searchgym.metrics.entropy.top_entropy_threshold, as ``eval/entropy_top``).
TRAIN_ENTROPY_TOP = train("entropy_top")

# update/: the optimisation
UPDATE_ROLLOUT_LOGPROB_ABSDIFF = UPDATE + "rollout_logprob_absdiff"  # engine vs trainer log-prob, nats/token
UPDATE_ADV_ABS_MEAN = UPDATE + "adv_abs_mean"
UPDATE_CLIP_FRAC = UPDATE + "clip_frac"  # verl's pg_clipfrac
UPDATE_KL_REF = UPDATE + "kl_ref"
UPDATE_PPO_KL = UPDATE + "ppo_kl"
UPDATE_PG_LOSS = UPDATE + "pg_loss"
UPDATE_ENTROPY_LOSS = UPDATE + "entropy_loss"
UPDATE_GRAD_NORM = UPDATE + "grad_norm"
UPDATE_LR = UPDATE + "lr"
#: SFT's loss: token-mean NLL over policy tokens (torch's smoothed cross-entropy with
#: ``SFTConfig.label_smoothing`` > 0).
UPDATE_LOSS = UPDATE + "loss"

# mech/: objectives' selections (the other mech/ keys are written under these names already)
MECH_COV_SELECTED_FRAC = MECH + "cov_selected_frac"  # Clip-Cov / KL-Cov covariance-selected share
MECH_FORKING_SELECTED_FRAC = MECH + "forking_selected_frac"  # forking tokens: the kept share

# time/: wall-clock seconds
TIME_ROLLOUT = TIME + "rollout_s"
TIME_OLD_LOGPROB = TIME + "old_logprob_s"
TIME_UPDATE = TIME + "update_s"
TIME_STEP = TIME + "step_s"
TIME_GRAD_DIAG = TIME + "grad_diag_s"
TIME_METRICS = TIME + "metrics_s"  # the step hooks (rollout metrics) together
TIME_EVAL = TIME + "eval_s"  # one evaluation
TIME_ELAPSED = TIME + "elapsed_s"  # since the run started (SFT)

# ----------------------------------------------------------------------------- legacy names

#: The ER-shaping statistics er_shaped logs (objectives.ERShaped.shape_advantages).
_ER_SHAPING = ("er_mean", "erv_mean", "era_mean", "er_aux_mean", "er_bonus_mean", "er_bonus_token_frac",
               "er_bonus_rel", "er_aux_len_corr", "er_bonus_len_corr")

#: metrics.jsonl keys written before the vocabulary -> their names now (the trainer's own
#: fields). Not listed: ``mech/*`` (unchanged), ``val_<m>`` (-> ``val/<m>``) and every other
#: plain key, which a step hook returned under its summarize_rollouts name (-> ``train/<k>``).
#: ``entropy_top20_mean`` (mean of the ceil(0.2 n) highest entropies, a top-k rule, not the
#: top-rho quantile rule of ``train/entropy_top``) has no new name and becomes
#: ``train/entropy_top20_mean`` by that last rule.
LEGACY_STEP_KEYS: dict[str, str] = {
    "reward_mean": TRAIN_REWARD,
    "reward_std": TRAIN_REWARD_STD,
    "accuracy": TRAIN_ACCURACY,
    "format_error_rate": TRAIN_FORMAT_ERROR_RATE,
    "searches_per_episode": TRAIN_SEARCHES,
    "response_length": TRAIN_RESPONSE_LENGTH,
    "episode_length": TRAIN_EPISODE_LENGTH,
    "entropy_mean": TRAIN_ENTROPY,
    "rollout_logprob_absdiff": UPDATE_ROLLOUT_LOGPROB_ABSDIFF,
    "adv_abs_mean": UPDATE_ADV_ABS_MEAN,
    "clip_frac": UPDATE_CLIP_FRAC,
    "kl_ref": UPDATE_KL_REF,
    "ppo_kl": UPDATE_PPO_KL,
    "pg_loss": UPDATE_PG_LOSS,
    "entropy_loss": UPDATE_ENTROPY_LOSS,
    "grad_norm": UPDATE_GRAD_NORM,
    "lr": UPDATE_LR,
    "cov_selected_frac": MECH_COV_SELECTED_FRAC,
    "forking_selected_frac": MECH_FORKING_SELECTED_FRAC,
    **{k: MECH + k for k in _ER_SHAPING},
    "time_rollout_s": TIME_ROLLOUT,
    "time_old_logprob_s": TIME_OLD_LOGPROB,
    "time_update_s": TIME_UPDATE,
    "time_step_s": TIME_STEP,
    "time_grad_diag_s": TIME_GRAD_DIAG,
    "metrics_time_s": TIME_METRICS,
    "eval_time_s": TIME_EVAL,
}

#: eval.jsonl / eval_questions.jsonl keys renamed other than by the rule ``<m>`` -> ``eval/<m>``.
LEGACY_EVAL_KEYS: dict[str, str] = {"eval_time_s": TIME_EVAL}

#: sft_log.jsonl keys written before the vocabulary -> their names now. Not listed:
#: ``val_<m>`` (-> ``val/<m>``) and every other plain key, which the epoch-end hook returned
#: (-> ``val/<k>``, as the SFT trainer now logs a hook's plain keys).
LEGACY_SFT_KEYS: dict[str, str] = {
    "loss": UPDATE_LOSS,
    "grad_norm": UPDATE_GRAD_NORM,
    "lr": UPDATE_LR,
    "elapsed_s": TIME_ELAPSED,
}


def _legacy_name(key: str, kind: str) -> str:
    if key in RECORD_FIELDS or is_namespaced(key):
        return key
    if kind == STEP_RECORD:
        if key in LEGACY_STEP_KEYS:
            return LEGACY_STEP_KEYS[key]
        if key.startswith("val_"):
            return val(key[len("val_"):])
        return train(key)
    if kind == SFT_RECORD:
        if key in LEGACY_SFT_KEYS:
            return LEGACY_SFT_KEYS[key]
        return val(key[len("val_"):] if key.startswith("val_") else key)
    return LEGACY_EVAL_KEYS.get(key) or evaluation(key)


def normalize_record(record: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """``record`` with every key under its name in this vocabulary, values untouched.

    ``kind``: :data:`STEP_RECORD` for a ``metrics.jsonl`` line, :data:`EVAL_RECORD` for an
    ``eval.jsonl`` or ``eval_questions.jsonl`` line, :data:`SFT_RECORD` for an
    ``sft_log.jsonl`` line. Keys already namespaced and the record
    fields (:data:`RECORD_FIELDS`) are kept, so a record written with these names comes back
    equal (idempotent) and old and new files read the same. Raises ValueError for another
    ``kind``, or when two legacy keys map to one name (a record mixing both spellings of a
    metric with different values would otherwise lose one silently).
    """
    if kind not in (STEP_RECORD, EVAL_RECORD, SFT_RECORD):
        raise ValueError(f"normalize_record: kind must be {STEP_RECORD!r}, {EVAL_RECORD!r} or {SFT_RECORD!r}, "
                         f"got {kind!r}")
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = _legacy_name(str(key), kind)
        if name in out and out[name] != value:
            raise ValueError(f"normalize_record: {key!r} and another key both mean {name!r} with different values")
        out[name] = value
    return out
