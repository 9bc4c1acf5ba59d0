"""The onnx-int8 query backend against the fp32 encoder: embeddings, recall@10 on a real
FAISS index, per-index selection through the manifest. Real MiniLM, exported locally."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from searchgym.retrieval import load_retriever, read_corpus, sample_corpus_path
from searchgym.retrieval.encoder import Encoder, EncoderError

torch.set_num_threads(1)


def _queries() -> list[str]:
    titles = [d.title for d in read_corpus(sample_corpus_path())]
    forms = ["what is {}", "history of {}", "where is {} located", "facts about {}"]
    return [f.format(t) for t in titles[:60] for f in forms[:2]] + ["capital of France", "who wrote Hamlet"]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    import os

    os.environ["SEARCHGYM_HOME"] = str(tmp_path_factory.mktemp("home"))  # the export cache of this test
    return Encoder(), Encoder(query_backend="onnx-int8")


def test_int8_embeddings_close_to_fp32(encoders):
    fp32, int8 = encoders
    qs = _queries()
    a, b = fp32.encode_queries(qs), int8.encode_queries(qs)
    assert a.shape == b.shape == (len(qs), 384) and b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cos = (a * b).sum(1)
    assert cos.min() >= 0.97 and cos.mean() >= 0.985, (cos.min(), cos.mean())
    assert int8.encode_queries([]).shape == (0, 384)
    # dynamic quantisation scales activations per batch: a query's embedding moves a little
    # with its batch partners (not bit-reproducible across batchings; the fp32 path is)
    c = int8.encode_queries(qs[::-1])[::-1]
    assert (b * c).sum(1).min() >= 0.98


def test_int8_recall_at_10_against_fp32(index_dir, tmp_path, encoders):
    qs = _queries()
    fp32 = load_retriever(index_dir, shared=False, cache_size=0)
    fast_dir = tmp_path / "fast"
    shutil.copytree(index_dir, fast_dir)
    manifest = json.loads((fast_dir / "manifest.json").read_text())
    manifest["encoder"]["query_backend"] = "onnx-int8"  # selected per index
    (fast_dir / "manifest.json").write_text(json.dumps(manifest))
    fast = load_retriever(fast_dir, shared=False, cache_size=0)
    assert fast.encoder.query_backend == "onnx-int8" and fast.encoder.describe()["query_backend"] == "onnx-int8"
    assert "query_backend" not in fp32.encoder.describe()
    ref, got = fp32.search(qs, 10), fast.search(qs, 10)
    recall = np.mean([len({h.doc_id for h in a} & {h.doc_id for h in b}) / 10 for a, b in zip(ref, got)])
    top1 = np.mean([a[0].doc_id == b[0].doc_id for a, b in zip(ref, got)])
    assert recall >= 0.9 and top1 >= 0.9, (recall, top1)


def test_unknown_backend_is_one_clear_error():
    with pytest.raises(EncoderError, match="unknown query backend 'fp8'"):
        Encoder(query_backend="fp8")
