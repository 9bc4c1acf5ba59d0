"""Search-R1 data and indexes as they are: one parquet for every split, the dataset's own
prompt, whole passages, verl rows checked before anything is built, FAISS index import,
one index cache per corpus, dense build progress."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import searchgym.envs  # noqa: F401
from searchgym.cli import main
from searchgym.envs import registry as R
from searchgym.envs.env import PROMPT
from searchgym.retrieval.index import IndexFormatError

LONG = "The Analytical Engine " + " ".join(f"part{i} of the long entry" for i in range(60)) + " ends with Babbage."
DOCS = [("0", "Analytical Engine", LONG),
        ("1", "Compiler", "A compiler translates source code. Grace Hopper built the first one, the A-0 System."),
        ("2", "Huge", "x " * 1500 + "TAIL")]
R1_PROMPT = ("Answer the given question. You must conduct reasoning inside <think> and </think> first every time you "
             "get new information. ... Question: {q}\n")
QUESTIONS = [("Who built the first compiler?", ["Grace Hopper"]), ("What does the Analytical Engine end with?", ["Babbage"])]


def r1_rows(split="test", data_source="mydict", questions=QUESTIONS):
    return [{"data_source": data_source, "prompt": [{"role": "user", "content": R1_PROMPT.format(q=q)}],
             "ability": "fact-reasoning", "reward_model": {"style": "rule", "ground_truth": {"target": gold}},
             "extra_info": {"split": split, "index": i}} for i, (q, gold) in enumerate(questions)]


@pytest.fixture()
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHGYM_HOME", str(tmp_path / "home"))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "contents": f'"{t}"\n{b}'}) + "\n" for i, t, b in DOCS))
    test = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(r1_rows()), test)
    yield tmp_path, corpus, test
    for spec in R.user_tasks():
        R.TASKS.pop(spec.name, None)
        gym.registry.pop(spec.env_id, None)


def test_one_test_parquet_serves_every_split(data):
    tmp, corpus, test = data
    env_id = R.register_task("mydict", qa=test, corpus_or_index=corpus)
    for split in ("train", "validation", "test"):
        env = gym.make(env_id, split=split)
        _, info = env.reset(options={"index": 0})
        assert info["question"] == "Who built the first compiler?" and info["split"] == split
    # split labels are honoured where they cover the asked split
    mixed = tmp / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist(r1_rows("train", questions=QUESTIONS[:1]) + r1_rows("test", questions=QUESTIONS[1:])), mixed)
    assert [q.question for q in R.load_qa(mixed, "train")] == [QUESTIONS[0][0]]
    assert [q.question for q in R.load_qa(mixed, "test")] == [QUESTIONS[1][0]]
    assert len(R.load_qa(mixed, "validation")) == 2


def test_dataset_prompt_is_kept_and_is_the_default(data):
    tmp, corpus, test = data
    env = gym.make(R.register_task("mydict", qa=test, corpus_or_index=corpus), split="test")
    obs, _ = env.reset(options={"index": 0})
    assert obs == R1_PROMPT.format(q="Who built the first compiler?")
    ours = gym.make(R.register_task("ours", qa=test, corpus_or_index=corpus, prompt="searchgym"), split="test")
    obs, _ = ours.reset(options={"index": 0})
    assert obs == PROMPT.format(question="Who built the first compiler?")
    # JSONL rows without a prompt get the external template: no example answer from the synthetic world
    qa = tmp / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Who built the first compiler?", "golden_answers": ["Grace Hopper"]}) + "\n")
    obs, _ = gym.make(R.register_task("plain", qa=qa, corpus_or_index=corpus)).reset(options={"index": 0})
    assert obs == R.EXTERNAL_PROMPT.format(question="Who built the first compiler?") and "Kelmor" not in obs


def test_external_corpora_get_whole_passages_up_to_the_stated_limit(data):
    tmp, corpus, test = data
    env = gym.make(R.register_task("mydict", qa=test, corpus_or_index=corpus), split="test")
    cfg = env.unwrapped.config
    assert cfg.doc_chars == R.EXTERNAL_ENV_DEFAULTS["doc_chars"] == 2000
    env.reset(options={"index": 1})
    obs, *_ = env.step("<search> Analytical Engine long entry Babbage </search>")
    assert LONG in obs  # 1.5k characters, whole
    obs, *_ = env.step("<search> Huge TAIL </search>")
    assert "Doc 1(Title: Huge)" in obs and "TAIL" not in obs and " ..." in obs  # cut at 2000
    assert len(obs) <= cfg.max_obs_chars
    # the world envs keep their short one-fact passages
    assert gym.spec("searchgym/MultiHop-v0").kwargs == {"task": "MultiHop-v0"}


def test_verl_rows_of_a_raw_search_r1_parquet(data):
    from searchgym.training.verl_data import VerlBackendError, locate_row_question, resolve_row, validate_rows

    tmp, corpus, test = data
    with pytest.raises(VerlBackendError, match=r"row 0: .*data_source 'mydict' is no registered task.*\(1 more bad rows\)"):
        validate_rows([str(test)])
    R.register_task("books", qa=test, corpus_or_index=corpus, data_sources=["mydict"])
    assert validate_rows([str(test)]) == {str(test): 2}
    row = r1_rows()[1]
    env_id, split, index, mapped = resolve_row(row)
    assert (env_id, split, index, mapped) == ("searchgym/books", "test", 1, True)
    qs = gym.make(env_id, split=split).unwrapped.questions
    assert locate_row_question(qs, row, 1) == 1
    assert locate_row_question(qs, row, 0) == 1  # wrong index: found by question text + answers
    bad = dict(row, reward_model={"ground_truth": {"target": ["Nobody"]}})
    with pytest.raises(VerlBackendError, match="no question matches"):
        locate_row_question(qs, bad, 1)


def test_mapped_but_unregistered_env_is_refused(data):
    from searchgym.training.verl_data import VerlBackendError, validate_rows

    _, _, test = data
    with pytest.raises(VerlBackendError, match="'searchgym/other' is not registered"):
        validate_rows([str(test)], {"mydict": "searchgym/other"})


def _verl_argv(tmp, *extra):
    return ["train", "rl", "--backend", "verl", "--model", str(tmp / "model"), "--out", str(tmp / "run"), "--dry-run",
            *extra]


def test_refused_verl_commands_build_and_write_nothing(data, capsys):
    tmp, corpus, test = data
    home = tmp / "home"
    cases = [
        (["--train-files", str(test), "--val-files", str(test)], "no registered task"),
        (["--objective", "er_shaped"], "hidden states"),  # would export (world + index) first before
        (["--set", "actor_rollout_ref.actor.no_such_key=1"], "no_such_key"),
        (["--env", "searchgym/nope"], "not registered"),
    ]
    for extra, message in cases:
        assert main(_verl_argv(tmp, *extra)) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert not (tmp / "run").exists(), f"{extra}: wrote {list((tmp / 'run').rglob('*'))}"
        assert not (home / "worlds").exists() and not (home / "indexes").exists(), extra
    # the same raw parquet passes once a task serves its data_source, and nothing is built for it
    R.register_task("books", qa=test, corpus_or_index=corpus, data_sources=["mydict"])
    assert main(_verl_argv(tmp, "--train-files", str(test), "--val-files", str(test))) == 0
    assert (tmp / "run" / "verl_config.yaml").is_file()
    assert not (home / "indexes").exists()


# ------------------------------------------------------------------------ index import


def _raw_faiss(docs_path: Path, out: Path, dim_cut: int | None = None, metric: str = "ip") -> Path:
    """What Search-R1's index builder does: encode `contents` with sentence-transformers,
    normalise, add to a FAISS flat inner-product index, write the file."""
    import faiss

    from searchgym.retrieval.encoder import default_encoder_path, load_sentence_transformer

    contents = [json.loads(line)["contents"] for line in docs_path.read_text().splitlines()]
    st = load_sentence_transformer(default_encoder_path())
    emb = st.encode(contents, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    if dim_cut:
        emb = np.ascontiguousarray(emb[:, :dim_cut])
    index = faiss.IndexFlatIP(emb.shape[1]) if metric == "ip" else faiss.IndexFlatL2(emb.shape[1])
    index.add(emb)
    faiss.write_index(index, str(out))
    return out


def test_index_import_matches_a_built_index_without_reencoding(data, capsys):
    from searchgym.retrieval import build_index, load_retriever, sample_corpus_path

    tmp, _, _ = data
    corpus = sample_corpus_path()
    flat = _raw_faiss(corpus, tmp / "e5_Flat.index")
    assert main(["index", "import", "--faiss", str(flat), "--corpus", str(corpus), "--out", str(tmp / "imp")]) == 0
    assert "imported dense index" in capsys.readouterr().out
    built = build_index(corpus, tmp / "built", kind="dense", progress=False)
    queries = ["capital of France", "largest planet", "who discovered penicillin"]
    a = load_retriever(tmp / "imp").search(queries, 5)
    b = load_retriever(built).search(queries, 5)
    assert [[h.doc_id for h in hs] for hs in a] == [[h.doc_id for h in hs] for hs in b]
    for ha, hb in zip(a, b):
        assert np.allclose([h.score for h in ha], [h.score for h in hb], atol=1e-4)
    assert (tmp / "imp" / "index.faiss").stat().st_ino == flat.stat().st_ino  # hard link, no copy


def test_index_import_checks_count_dimension_and_metric(data):
    from searchgym.retrieval import sample_corpus_path
    from searchgym.retrieval.index import import_index

    tmp, corpus, _ = data  # 3 documents

    many = _raw_faiss(sample_corpus_path(), tmp / "many.index")
    with pytest.raises(IndexFormatError, match="holds 203 vectors but .* has 3 documents"):
        import_index(many, corpus, tmp / "a")
    small = _raw_faiss(corpus, tmp / "small.index", dim_cut=64)
    with pytest.raises(IndexFormatError, match="dimension 64 does not match encoder all-MiniLM-L6-v2 dimension 384"):
        import_index(small, corpus, tmp / "b")
    l2 = _raw_faiss(corpus, tmp / "l2.index", metric="l2")
    with pytest.raises(IndexFormatError, match="L2 metric"):
        import_index(l2, corpus, tmp / "c")
    assert not any((tmp / n).exists() for n in "abc")


# ---------------------------------------------------------------- cache + progress


def test_one_index_per_corpus_across_task_names_and_progress_is_logged(data, caplog):
    tmp, corpus, test = data
    copy = tmp / "copy-of-corpus.jsonl"
    copy.write_bytes(corpus.read_bytes())
    caplog.set_level(logging.INFO, logger="searchgym.retrieval.index")
    for name, src in (("a", corpus), ("b", corpus), ("c", copy)):
        env = gym.make(R.register_task(name, qa=test, corpus_or_index=src, retriever="dense"), split="test")
        env.reset(options={"index": 0})
    built = [p for p in (tmp / "home" / "indexes").iterdir() if p.name != "hashes"]
    assert len(built) == 1 and "-dense-" in built[0].name, built
    lines = [r.getMessage() for r in caplog.records if r.name == "searchgym.retrieval.index"]
    assert sum(m.startswith("encoding 3 passages") for m in lines) == 1  # encoded once for three names
    assert any(m.startswith("encoded 3 passages in") and "docs/s" in m for m in lines)


def test_build_threads_argument(data, capsys):
    import torch

    from searchgym.retrieval import build_index

    tmp, corpus, _ = data
    before = torch.get_num_threads()
    build_index(corpus, tmp / "t1", kind="dense", threads=1, progress=False)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be a positive int"):
        build_index(corpus, tmp / "t0", kind="dense", threads=0)
    assert main(["index", "build", "--corpus", str(corpus), "--out", str(tmp / "t2"), "--threads", "1",
                 "--no-progress"]) == 0


def test_gpu_smoke_data_is_raw_search_r1_and_validates(data, capsys):
    """`make gpu-smoke`'s own public-format data: raw rows (no env id) served by its task file."""
    from searchgym.training.gpu_smoke import DATA_SOURCE, write_public_dataset
    from searchgym.training.verl_data import validate_rows

    tmp, _, _ = data
    task = write_public_dataset(tmp / "gs")
    rows = pq.read_table(tmp / "gs" / "data" / "train.parquet").to_pylist()
    assert rows and all(r["data_source"] == DATA_SOURCE and "env_id" not in r["extra_info"] for r in rows)
    assert main(["task", "add", str(task)]) == 0
    files = [str(tmp / "gs" / "data" / f"{s}.parquet") for s in ("train", "test")]
    counts = validate_rows(files)
    assert sum(counts.values()) == len(rows) + len(pq.read_table(files[1]))
