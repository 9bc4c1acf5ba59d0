"""Index build/load round trips, manifest checks, cache and sharing (real FAISS, MiniLM, bm25s)."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
import torch

from searchgym.cli import main as cli_main
from searchgym.retrieval import (
    BM25Retriever,
    CorpusFormatError,
    DenseRetriever,
    Document,
    IndexFormatError,
    build_index,
    load_retriever,
    read_corpus,
    read_manifest,
    sample_corpus_path,
)
from searchgym.retrieval.encoder import EncoderError, QueryCache

torch.set_num_threads(1)

KNOWN = [  # query -> title of the document that must come first
    ("What is the capital of Kenya?", {"Kenya", "Nairobi"}),
    ("Who wrote War and Peace?", {"Leo Tolstoy"}),
    ("Which planet has the Great Red Spot?", {"Jupiter"}),
    ("chemical element with symbol Au", {"Gold"}),
    ("river that flows into the Black Sea", {"Danube"}),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    return {
        "flat": build_index(sample_corpus_path(), root / "flat", progress=False),
        "bm25": build_index(sample_corpus_path(), root / "bm25", kind="bm25"),
    }


def fresh_copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


# -- corpus ----------------------------------------------------------------------------------

def test_sample_corpus_reads():
    docs = list(read_corpus(sample_corpus_path()))
    assert len(docs) == 203
    assert docs[0] == Document("0", "France", docs[0].text) and docs[0].text.startswith("France is a country")


@pytest.mark.parametrize(
    "line, needle",
    [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"), ('{"id": "1"}', "a record needs 'id' and a string 'contents'")],
)
def test_malformed_corpus_line_names_file_and_line(tmp_path, line, needle):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "0", "contents": "\\"A\\"\\nbody a"}\n\n' + line + "\n")
    with pytest.raises(CorpusFormatError, match=f"c.jsonl:3: {needle}"):
        build_index(path, tmp_path / "out", kind="bm25")
    assert not (tmp_path / "out").exists()  # nothing half-built left behind


# -- round trips -----------------------------------------------------------------------------

def test_dense_round_trip_known_queries(built):
    r = load_retriever(built["flat"])
    assert isinstance(r, DenseRetriever) and r.count == 203 and r.dimension == 384
    results = r.search([q for q, _ in KNOWN], 3)
    for (q, titles), hits in zip(KNOWN, results):
        assert len(hits) == 3 and hits[0].title in titles, (q, hits[0])
        assert hits[0].score >= hits[1].score >= hits[2].score
        assert -1.0 <= hits[2].score <= hits[0].score <= 1.0 + 1e-5  # cosine


def test_bm25_round_trip_known_queries(built):
    r = load_retriever(built["bm25"])
    assert isinstance(r, BM25Retriever) and r.count == 203
    for (q, titles), hits in zip(KNOWN, r.search([q for q, _ in KNOWN], 3)):
        assert hits and hits[0].title in titles, (q, hits)
    assert r.search(["the of and"], 3) == [[]]  # stopwords only: no hits, no error
    assert len(r.search(["capital"], 500)[0]) <= 203


@pytest.mark.parametrize("index_type", ["hnsw", "ivfpq"])
def test_approximate_indexes_round_trip(tmp_path, index_type):
    out = build_index(sample_corpus_path(), tmp_path / index_type, index_type=index_type, progress=False)
    m = read_manifest(out)
    assert m["index_type"] == index_type
    if index_type == "ivfpq":  # adapted to 203 documents
        assert m["index_params"]["nlist"] <= 203 // 39 and 2 ** m["index_params"]["pq_nbits"] <= 203
        assert 384 % m["index_params"]["pq_m"] == 0
    r = load_retriever(out, shared=False)
    for (q, titles), hits in zip(KNOWN, r.search([q for q, _ in KNOWN], 3)):
        assert hits[0].title in titles, (index_type, q, hits[0])


def test_ivfpq_refuses_tiny_corpus(tmp_path):
    docs = [Document(str(i), f"T{i}", f"text number {i}") for i in range(10)]
    with pytest.raises(ValueError, match="IVF-PQ needs at least 64 documents.*corpus has 10"):
        build_index(docs, tmp_path / "x", index_type="ivfpq", progress=False)


def test_build_from_documents_and_manifest_contents(tmp_path):
    docs = [Document("a", "Alpha", "the first letter"), Document("b", "Beta", "the second letter")]
    out = build_index(docs, tmp_path / "ab", progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["kind"] == "dense" and m["count"] == 2 and m["dimension"] == 384
    assert m["encoder"] == {"name": "all-MiniLM-L6-v2", "path": None, "query_prefix": "", "passage_prefix": ""}
    assert len(m["corpus_sha256"]) == 64 and sorted(m["files"]) == ["docs.jsonl", "index.faiss"]
    r = load_retriever(out)
    assert r.search(["second letter"], 5)[0][0].doc_id == "b"
    assert len(r.search(["x"], 5)[0]) == 2  # k capped at the corpus size


def test_encoder_prefixes_recorded_and_used(tmp_path):
    from searchgym.retrieval.encoder import default_encoder_path

    docs = [Document(str(i), t, t) for i, t in enumerate(["red apple", "blue sky", "green grass"])]
    out = build_index(docs, tmp_path / "p", encoder=default_encoder_path(), query_prefix="query: ",
                      passage_prefix="passage: ", progress=False)
    m = read_manifest(out)
    assert m["encoder"]["query_prefix"] == "query: " and m["encoder"]["path"] == str(default_encoder_path())
    r = load_retriever(out)
    assert r.encoder.query_prefix == "query: " and r.search(["sky"], 1)[0][0].title == "blue sky"


def test_rebuild_replaces_index_atomically(tmp_path, built):
    out = tmp_path / "re"
    build_index([Document("1", "One", "uno")], out, kind="bm25")
    first = load_retriever(out)
    build_index([Document("1", "One", "uno"), Document("2", "Two", "dos")], out, kind="bm25")
    second = load_retriever(out)
    assert first.count == 1 and second.count == 2 and second is not first  # stale entry not reused
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


# -- manifest and file checks ----------------------------------------------------------------

def test_missing_folder_and_manifest(tmp_path, built):
    with pytest.raises(IndexFormatError, match="nope: index folder does not exist"):
        load_retriever(tmp_path / "nope")
    d = fresh_copy(built["flat"], tmp_path)
    (d / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match=r"manifest.json: missing \(not a searchgym index folder"):
        load_retriever(d)


def test_corrupt_manifest(tmp_path, built):
    d = fresh_copy(built["flat"], tmp_path)
    (d / "manifest.json").write_text('{"format": "searchgym-index", ')
    with pytest.raises(IndexFormatError, match="manifest.json: corrupt, not valid JSON"):
        load_retriever(d)


def test_unknown_version(tmp_path, built):
    d = fresh_copy(built["flat"], tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["format_version"] = 99
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="manifest.json: unknown format version 99 .*reads version 1"):
        load_retriever(d)


@pytest.mark.parametrize("name", ["index.faiss", "docs.jsonl"])
def test_missing_index_file(tmp_path, built, name):
    d = fresh_copy(built["flat"], tmp_path)
    (d / name).unlink()
    with pytest.raises(IndexFormatError, match=rf"{name}: missing \(listed in .*manifest.json\)"):
        load_retriever(d)


def test_missing_bm25_files(tmp_path, built):
    d = fresh_copy(built["bm25"], tmp_path)
    shutil.rmtree(d / "bm25")
    with pytest.raises(IndexFormatError, match=r"bm25: missing"):
        load_retriever(d)


def test_corrupt_faiss_file(tmp_path, built):
    d = fresh_copy(built["flat"], tmp_path)
    (d / "index.faiss").write_bytes(b"garbage" * 10)
    with pytest.raises(IndexFormatError, match="index.faiss: corrupt FAISS index"):
        load_retriever(d)


def test_corrupt_bm25_file(tmp_path, built):
    d = fresh_copy(built["bm25"], tmp_path)
    victim = sorted((d / "bm25").glob("*.npy"))[0]
    victim.write_bytes(b"not numpy")
    with pytest.raises(IndexFormatError, match="bm25: corrupt BM25 index"):
        load_retriever(d)


def test_corpus_changed(tmp_path, built):
    d = fresh_copy(built["flat"], tmp_path)
    with open(d / "docs.jsonl", "a") as f:
        f.write('{"id": "x", "contents": "\\"X\\"\\nnew"}\n')
    with pytest.raises(IndexFormatError, match="docs.jsonl: corpus changed since the index was built"):
        load_retriever(d)
    # Without the checksum the count still catches it.
    with pytest.raises(IndexFormatError, match="docs.jsonl: holds 204 documents but .*count 203"):
        load_retriever(d, verify=False)


def test_dimension_mismatch(tmp_path, built):
    d = fresh_copy(built["flat"], tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["dimension"] = 768
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="index.faiss: dimension 384 does not match manifest dimension 768"):
        load_retriever(d)


def test_missing_encoder_folder(tmp_path, built):
    d = fresh_copy(built["flat"], tmp_path)
    with pytest.raises(EncoderError, match="no-such-encoder: encoder folder does not exist"):
        load_retriever(d, encoder=tmp_path / "no-such-encoder")


# -- cache, dedup, sharing, threads ----------------------------------------------------------

def test_duplicates_cost_one_encode_and_cache_counts(built):
    r = load_retriever(built["flat"], shared=False)
    calls = []
    original = r.encoder.encode_queries
    r.encoder.encode_queries = lambda qs: calls.append(list(qs)) or original(qs)
    out = r.search(["capital of Chile"] * 5 + ["capital of Peru"] * 3, 2)
    assert calls == [["capital of Chile", "capital of Peru"]]  # one encode, distinct queries
    assert [h[0].title for h in out[:5]] == [out[0][0].title] * 5
    assert r.cache.stats()["misses"] == 2 and r.cache.stats()["hits"] == 0
    again = r.search(["capital of Peru", "capital of Chile"], 2)
    assert len(calls) == 1  # both cached: no encoder call
    assert r.cache.stats()["hits"] == 2
    assert [h.doc_id for h in again[0]] == [h.doc_id for h in out[5]]


def test_query_cache_lru():
    import numpy as np

    c = QueryCache(2)
    c.put_many([("a", np.ones(3)), ("b", np.zeros(3))])
    assert set(c.get_many(["a"])) == {"a"}  # a is now most recent
    c.put_many([("c", np.ones(3))])  # evicts b
    assert set(c.get_many(["a", "b", "c"])) == {"a", "c"}
    assert c.stats() == {"size": 2, "maxsize": 2, "hits": 3, "misses": 1, "hit_rate": 0.75}
    off = QueryCache(0)
    off.put_many([("a", np.ones(3))])
    assert off.get_many(["a"]) == {} and off.stats()["size"] == 0


def test_shared_loader_returns_one_instance(built):
    assert load_retriever(built["flat"]) is load_retriever(str(built["flat"]) + "/")
    assert load_retriever(built["flat"], shared=False) is not load_retriever(built["flat"])


def test_thread_safe_search_equals_sequential(built):
    r = load_retriever(built["flat"], shared=False, cache_size=8)  # tiny cache: evictions under load
    queries = [f"{q} {i}" for i in range(6) for q, _ in KNOWN]
    expected = [[h.doc_id for h in hits] for hits in r.search(queries, 3)]
    errors, results = [], {}

    def worker(t):
        try:
            results[t] = [[h.doc_id for h in hits] for hits in r.search(queries[t::4], 3)]
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for t in range(4):
        assert results[t] == expected[t::4]


def test_search_argument_errors(built):
    r = load_retriever(built["flat"])
    with pytest.raises(TypeError, match="list of strings"):
        r.search("one string", 3)
    with pytest.raises(TypeError, match=r"queries\[1\] must be a string"):
        r.search(["ok", 5], 3)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        r.search(["ok"], 0)
    assert r.search([], 3) == []


# -- CLI -------------------------------------------------------------------------------------

def test_cli_build_and_query(tmp_path, capsys):
    out = tmp_path / "cli_idx"
    assert cli_main(["index", "build", "--corpus", "sample", "--out", str(out), "--retriever", "bm25"]) == 0
    assert "built bm25 index" in capsys.readouterr().out
    assert cli_main(["index", "query", str(out), "who painted the Mona Lisa", "-k", "2"]) == 0
    text = capsys.readouterr().out
    assert "1. [" in text and "Leonardo da Vinci" in text
    assert cli_main(["index", "query", str(out), "Mona Lisa", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0][0]["title"] == "Leonardo da Vinci"


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["index", "query", str(tmp_path / "none"), "q"]) == 2
    err = capsys.readouterr().err
    assert "index folder does not exist" in err and "Traceback" not in err
    assert cli_main(["index", "build", "--corpus", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "corpus file does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["index", "--help"], ["index", "build", "--help"], ["index", "query", "--help"], ["serve", "--help"]])
def test_cli_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    assert exc.value.code == 0 and "usage: searchgym" in capsys.readouterr().out
