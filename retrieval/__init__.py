"""searchgym.retrieval: corpus store, dense (FAISS) and BM25 retrievers, server, client."""

from searchgym.retrieval.base import Document, Hit, Retriever, read_corpus

__all__ = ["Document", "Hit", "Retriever", "read_corpus"]
