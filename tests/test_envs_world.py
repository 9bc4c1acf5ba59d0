"""The synthetic world: determinism, facts stated twice, files and the CLI."""

import hashlib
import json
import re
from pathlib import Path

import pytest

from searchgym.envs import world as W
from searchgym.envs.tasks import SPLITS


def _digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(d).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    a = W.write_world(W.generate_world(W.WorldConfig("smoke", 3)), tmp_path / "a")
    b = W.write_world(W.generate_world(W.WorldConfig("smoke", 3)), tmp_path / "b")
    c = W.write_world(W.generate_world(W.WorldConfig("smoke", 4)), tmp_path / "c")
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_facts_in_two_documents_and_answers_verbatim():
    w = W.generate_world(W.WorldConfig("smoke", 0))
    by_entity: dict[str, list[str]] = {}
    for d in w.documents:
        by_entity.setdefault(W.entity_of_doc(d.doc_id), []).append(f"{d.title} {d.text}")
    rels = {"born_in", "located_in", "directed_by", "founded_by", "headquartered_in"}
    n = 0
    for e in w.entities.values():
        for rel, obj in e.facts.items():
            if rel not in rels:
                continue
            o = w.entities[obj]
            subj_docs = [t for t in by_entity[e.eid] if o.name in t]
            obj_docs = [t for t in by_entity[o.eid] if e.name in t]
            assert subj_docs and obj_docs, (e.name, rel, o.name)
            n += 1
    assert n > 50
    names = [e.name for e in w.entities.values()]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Z][a-z]+( [A-Z][a-z]+)*", n) for n in names)
    corpus = "\n".join(f"{d.title} {d.text}" for d in w.documents)
    for qs in w.questions.values():
        for q in qs:
            assert q.strategies and any(g in corpus for g in q.golden_answers)


def test_splits_disjoint_and_families_present():
    w = W.generate_world(W.WorldConfig("smoke", 0))
    texts = {s: {q.question for q in w.questions[s]} for s in SPLITS}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
    fams = {q.family for q in w.questions["train"]}
    assert fams == {"single_hop", "multi_hop", "comparison", "multi_answer"}
    assert any(q.hops == 3 for qs in w.questions.values() for q in qs)
    multi = [q for qs in w.questions.values() for q in qs if q.family == "multi_answer"]
    assert all(len(q.golden_answers) == len(q.roles["answer"]) for q in multi)
    # distractors: some names differ from another by one letter
    names = sorted(e.name for e in w.entities.values())
    near = sum(1 for a in names for b in names if a < b and len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1)
    assert near >= 3


def test_documents_short_and_small_preset_size():
    w = W.generate_world(W.WorldConfig("smoke", 0))
    assert 100 <= len(w.documents) <= 250
    assert max(len(d.text) for d in w.documents) < 260
    small = W.generate_world(W.WorldConfig("small", 0))
    assert 2000 <= len(small.documents) <= 5000


def test_roundtrip_and_errors(tmp_path):
    w = W.generate_world(W.WorldConfig("smoke", 1))
    d = W.write_world(w, tmp_path / "w")
    back = W.load_world(d)
    assert [q.to_json() for q in back.questions["test"]] == [q.to_json() for q in w.questions["test"]]
    assert len(back.documents) == len(w.documents)
    assert json.loads((d / "manifest.json").read_text())["generator_version"] == W.GENERATOR_VERSION
    with pytest.raises(W.WorldError, match="manifest.json"):
        W.load_world(tmp_path)
    with pytest.raises(ValueError, match="preset"):
        W.generate_world(W.WorldConfig("huge"))
    with pytest.raises(ValueError, match="split"):
        W.load_questions(d, "dev")


def test_ensure_world_caches(tmp_path):
    a = W.ensure_world("smoke", 2, root=tmp_path)
    mtime = (a / "corpus.jsonl").stat().st_mtime_ns
    assert W.ensure_world("smoke", 2, root=tmp_path) == a
    assert (a / "corpus.jsonl").stat().st_mtime_ns == mtime
    assert a.name == f"smoke-s2-g{W.GENERATOR_VERSION}"


def test_cli_world_and_list(tmp_path, capsys):
    from searchgym.cli import main

    assert main(["world", "--preset", "smoke", "--seed", "0", "--out", str(tmp_path / "w")]) == 0
    assert (tmp_path / "w" / "qa" / "train.jsonl").is_file()
    assert main(["envs", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("SingleHop", "MultiHop", "Comparison", "MultiAnswer", "Mixed"):
        assert f"searchgym/{name}-v0" in out
    assert main(["world", "check", str(tmp_path / "nope")]) == 2
