"""Shared fixtures of the retrieval server tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    """A dense index over the bundled sample corpus."""
    from searchgym.retrieval import build_index, sample_corpus_path

    return build_index(sample_corpus_path(), tmp_path_factory.mktemp("srv") / "dense", progress=False)


@pytest.fixture(scope="module")
def reference(index_dir):
    """An independent in-process retriever (own instance, no cache): the ground truth."""
    from searchgym.retrieval import load_retriever

    return load_retriever(index_dir, shared=False, cache_size=0)
