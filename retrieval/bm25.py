"""Sparse retrieval with BM25 (``bm25s``)."""

from __future__ import annotations

import threading
from typing import Sequence

from searchgym.retrieval.base import Document, Hit
from searchgym.retrieval.dense import check_queries

STOPWORDS = "en"


def tokenize(texts: list[str]) -> list[list[str]]:
    """bm25s tokenisation as strings (lowercase, English stopwords removed); queries and
    corpus must go through the same function."""
    import bm25s

    return bm25s.tokenize(texts, stopwords=STOPWORDS, return_ids=False, show_progress=False)


class BM25Retriever:
    """Batched BM25 retriever implementing the ``Retriever`` protocol.

    Hits with score 0 (no query term in the document) are dropped, so a query made only
    of stopwords or unknown words returns an empty list.
    """

    kind = "bm25"

    def __init__(self, model, documents: Sequence[Document]):
        self.model = model
        self.documents = list(documents)
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self.documents)

    @classmethod
    def build(cls, documents: Sequence[Document]) -> "BM25Retriever":
        import bm25s

        model = bm25s.BM25()
        model.index(tokenize([f"{d.title}\n{d.text}" for d in documents]), show_progress=False)
        return cls(model, documents)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        queries = check_queries(queries, k)
        if not queries:
            return []
        distinct = list(dict.fromkeys(queries))
        k = min(int(k), self.count)
        with self._lock:  # bm25s keeps scratch state on the model
            ids, scores = self.model.retrieve(tokenize(distinct), k=k, show_progress=False, n_threads=0)
        by_query = {}
        for q, row_ids, row_scores in zip(distinct, ids.tolist(), scores.tolist()):
            by_query[q] = [
                Hit(self.documents[i].doc_id, self.documents[i].title, self.documents[i].text, float(s))
                for i, s in zip(row_ids, row_scores)
                if s > 0
            ]
        return [list(by_query[q]) for q in queries]

    def stats(self) -> dict:
        return {"kind": self.kind, "count": self.count}
