"""The one episode record: JSON schema, round trip, the version-0 shapes it still reads."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from searchgym.agents.record import SCHEMA_PATH, SCHEMA_VERSION, EpisodeRecord, json_schema
from searchgym.agents.rollout import Trajectory, finish_from_info, turn_record


def _traj(tokens: bool = True) -> Trajectory:
    t = Trajectory(question_id="q7", group_id=7, sample_index=1, prompt="Q? ", golden_answers=["Tavil"],
                   valid_strategies=["direct", "reverse"], family="single_hop", split="test", policy="p")
    t.turns.append(turn_record("<search>x</search>", "<information>d</information>",
                               {"action": "search", "query": "x", "doc_ids": ["E1-0"]}, 0.0))
    t.turns.append(turn_record("<answer>Tavil</answer>", None, {"action": "answer", "answer": "Tavil"}, 1.0))
    finish_from_info(t, {"correct": True, "signature": ("S", "A"), "strategy": "direct"}, 1.0, True, False)
    t.meta["scripted_strategy"] = "direct"
    if tokens:
        t.prompt_ids = [1, 2]
        t.response_ids = [5, 6, 7, 8]
        t.loss_mask = [1, 0, 1, 1]
        t.logprobs = [-0.1234567891, 0.0, -1.0, -2.0]
        t.entropies = [0.5000000123, 0.0, 0.25, 0.125]
        t.segments = ["query", "other", "answer", "other"]
        t.hidden_states = np.ones((3, 4), np.float32)
    return t


def test_schema_file_is_the_dataclass_schema():
    assert json.loads(SCHEMA_PATH.read_text()) == json_schema()


def test_round_trip_and_schema():
    schema = json_schema()
    for tokens in (True, False):
        t = _traj(tokens)
        line = t.to_record()
        jsonschema.validate(line, schema)
        assert line["schema_version"] == SCHEMA_VERSION and "hidden_states" not in line
        assert line["signature"] == "S|A" and line["queries"] == ["x"] and line["num_searches"] == 1
        assert line["transcript"] == "Q? <search>x</search><information>d</information><answer>Tavil</answer>"
        assert ("entropies" in line) is tokens and "step_vectors" not in line and "kind" not in line
        back = EpisodeRecord.from_json(json.loads(json.dumps(line)))
        assert back.to_json() == line
    assert t.to_record()["meta"] == {"scripted_strategy": "direct"}
    assert _traj().to_record()["entropies"] == [0.5, 0.0, 0.25, 0.125]  # 6 decimals on disk
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**line, "reward": "high"}, schema)


def test_metric_fields_full_precision():
    t = _traj()
    m = EpisodeRecord.from_trajectory(t).metric_fields()
    assert m["entropies"] == t.entropies and m["text"] == t.transcript and m["group"] == 7
    assert m["policy_token_ids"] == [5, 7, 8] and m["hidden_states"] is t.hidden_states
    other = np.zeros((3, 2))
    assert EpisodeRecord.from_trajectory(t, hidden_states=other).metric_fields()["hidden_states"] is other
    assert "hidden_states" not in EpisodeRecord.from_trajectory(_traj(False)).metric_fields()


def test_reads_version_0_demo_and_eval_lines():
    demo_v0 = {"question_id": "q1", "group": 3, "kind": "diverse", "strategy": "reverse", "env_strategy": "direct",
               "signature": "S|A", "correct": True, "reward": 1.0, "family": "single_hop", "split": "train",
               "prompt": "P ", "turns": [{"action": "<search>a</search>", "observation": "O"},
                                         {"action": "<answer>b</answer>", "observation": None}],
               "queries": ["a"], "answer": "b", "golden_answers": ["b"], "valid_strategies": ["direct"],
               "num_policy_tokens": 9, "num_tokens": 12, "world": "smoke-s0-g3:abc"}
    r = EpisodeRecord.from_json(demo_v0)
    assert r.strategy == "direct" and r.meta == {"scripted_strategy": "reverse"}
    assert r.kind == "diverse" and r.world == "smoke-s0-g3:abc" and r.num_tokens == 12 and r.num_searches == 1
    assert r.transcript == "P <search>a</search>O<answer>b</answer>" and r.num_turns == 2
    jsonschema.validate(r.to_json(), json_schema())
    eval_v0 = {k: v for k, v in _traj().to_record().items() if k not in ("schema_version", "prompt")}
    r = EpisodeRecord.from_json(eval_v0)
    assert r.strategy == "direct" and r.entropies == [0.5, 0.0, 0.25, 0.125] and r.group == 7
    assert {k: v for k, v in r.to_json().items() if k not in ("schema_version", "prompt")} == eval_v0


def test_bad_lines_raise_one_clear_error():
    for bad, msg in (([1], "JSON object"), ({"schema_version": 9, "question_id": "q"}, "schema_version 9"),
                     ({"group": 1}, "needs 'question_id'")):
        with pytest.raises(ValueError, match=msg):
            EpisodeRecord.from_json(bad)
