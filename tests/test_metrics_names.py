"""The metric vocabulary (searchgym.metrics.names): legacy keys of committed files map to the
namespaced names, normalising is idempotent, and a bad kind or a clash is one clear error."""

import json
from pathlib import Path

import pytest

from searchgym.metrics import names as mn

# the first lines of one arm's files as committed before the vocabulary (un-namespaced keys;
# docs/results/small/arms/diverse-grpo-s0 at a4524b7): newer runs write the namespaced names
# directly and would not exercise the mapping
LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy_arm"


def _first_line(name: str) -> dict:
    line = json.loads((LEGACY / name).read_text(encoding="utf-8").splitlines()[0])
    assert any(k not in mn.RECORD_FIELDS and not mn.is_namespaced(k) for k in line)  # still legacy
    return line


def test_committed_step_record_maps_to_namespaced_names():
    old = _first_line("metrics.jsonl")
    new = mn.normalize_record(old, mn.STEP_RECORD)
    assert len(new) == len(old)  # no two keys collapse
    assert all(k == "step" or mn.is_namespaced(k) for k in new), sorted(new)
    assert new[mn.TRAIN_ENTROPY] == old["entropy_mean"] and new[mn.TRAIN_REWARD] == old["reward_mean"]
    assert new[mn.TIME_STEP] == old["time_step_s"] and new[mn.TIME_METRICS] == old["metrics_time_s"]
    assert new["train/group_er"] == old["group_er"]  # a hook's rollout metric
    assert new["mech/clip_frac_low"] == old["mech/clip_frac_low"]
    assert mn.normalize_record(new, mn.STEP_RECORD) == new  # idempotent


def test_committed_eval_records_map_to_eval_namespace():
    for name in ("eval.jsonl", "eval_questions.jsonl"):
        old = _first_line(name)
        new = mn.normalize_record(old, mn.EVAL_RECORD)
        assert new["step"] == old["step"] and new["replica"] == old["replica"]
        assert new[mn.evaluation("accuracy")] == old["accuracy"]
        assert new[mn.evaluation("entropy")] == old["entropy"]
        assert all(k in mn.RECORD_FIELDS or mn.is_namespaced(k) for k in new)
        assert mn.normalize_record(new, mn.EVAL_RECORD) == new
    q = mn.normalize_record({"step": 0, "question": "3", "trained_tf/group_er": 2.0, "eval_time_s": 1.0}, "eval")
    assert q == {"step": 0, "question": "3", "eval/trained_tf/group_er": 2.0, mn.TIME_EVAL: 1.0}


def test_validation_prefix_and_strip():
    assert mn.normalize_record({"step": 0, "val_accuracy": 0.5}, "step") == {"step": 0, "val/accuracy": 0.5}
    assert mn.strip_namespace(mn.TRAIN_ENTROPY) == "entropy" and mn.strip_namespace("step") == "step"


def test_sft_log_lines_map_to_the_vocabulary():
    # the three line kinds an sft_log.jsonl held before the vocabulary: step, validation, epoch hook
    step = {"step": 3, "loss": 1.5, "grad_norm": 0.7, "lr": 1e-3, "elapsed_s": 4.0}
    assert mn.normalize_record(step, mn.SFT_RECORD) == {
        "step": 3, mn.UPDATE_LOSS: 1.5, mn.UPDATE_GRAD_NORM: 0.7, mn.UPDATE_LR: 1e-3, mn.TIME_ELAPSED: 4.0}
    val = {"step": 3, "elapsed_s": 5.0, "val_accuracy": 0.5, "val_num_episodes": 2}
    assert mn.normalize_record(val, "sft") == {"step": 3, mn.TIME_ELAPSED: 5.0, mn.val("accuracy"): 0.5,
                                                mn.val("num_episodes"): 2}
    hook = {"epoch": 1, "step": 3, "sweep_greedy_accuracy": 0.25}
    new = mn.normalize_record(hook, mn.SFT_RECORD)
    assert new == {"epoch": 1, "step": 3, mn.val("sweep_greedy_accuracy"): 0.25}
    assert mn.normalize_record(new, mn.SFT_RECORD) == new  # idempotent


def test_bad_kind_and_clash_are_one_clear_error():
    with pytest.raises(ValueError, match="kind must be"):
        mn.normalize_record({"step": 1}, "steps")
    with pytest.raises(ValueError, match="both mean 'train/entropy'"):
        mn.normalize_record({"entropy_mean": 1.0, "train/entropy": 2.0}, "step")
    assert mn.normalize_record({"entropy_mean": 1.0, "train/entropy": 1.0}, "step") == {"train/entropy": 1.0}
