"""searchgym.retrieval: corpus store, dense (FAISS) and BM25 retrievers, server, client.

Heavy modules (torch, faiss, bm25s, httpx) load on first use of the names that need them.
"""

from searchgym.retrieval.base import CorpusFormatError, Document, Hit, Retriever, read_corpus, write_corpus

_LAZY = {
    "build_index": "searchgym.retrieval.index",
    "load_retriever": "searchgym.retrieval.index",
    "read_manifest": "searchgym.retrieval.index",
    "IndexFormatError": "searchgym.retrieval.index",
    "DenseRetriever": "searchgym.retrieval.dense",
    "BM25Retriever": "searchgym.retrieval.bm25",
    "Encoder": "searchgym.retrieval.encoder",
    "EncoderError": "searchgym.retrieval.encoder",
    "QueryCache": "searchgym.retrieval.encoder",
    "default_encoder_path": "searchgym.retrieval.encoder",
    "RemoteRetriever": "searchgym.retrieval.client",
    "RetrievalRequestError": "searchgym.retrieval.client",
    "ServerConfig": "searchgym.retrieval.server",
    "create_app": "searchgym.retrieval.server",
    "sample_corpus_path": "searchgym.retrieval.data_files",
}

__all__ = ["CorpusFormatError", "Document", "Hit", "Retriever", "read_corpus", "write_corpus", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
