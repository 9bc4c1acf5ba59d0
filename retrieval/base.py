"""Core retrieval types: documents, hits, the batched ``Retriever`` protocol, corpus I/O.

The corpus format is Search-R1's JSONL: one ``{"id": "...", "contents": "\\"Title\\"\\nbody"}``
object per line, the title being the first line of ``contents`` (quotes optional).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

from searchgym.retrieval.fileio import atomic_path, iter_jsonl


@dataclass(frozen=True)
class Document:
    """One corpus passage."""

    doc_id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        """Search-R1's ``contents`` field: quoted title, newline, body."""
        return f'"{self.title}"\n{self.text}'


@dataclass(frozen=True)
class Hit:
    """One retrieved passage with its score (higher is better)."""

    doc_id: str
    title: str
    text: str
    score: float


@runtime_checkable
class Retriever(Protocol):
    """Anything that answers a batch of queries with the top-k hits of each."""

    def search(self, queries: list[str], k: int) -> list[list[Hit]]: ...


class CorpusFormatError(ValueError):
    """A corpus line is not a Search-R1 JSONL record."""


def split_contents(contents: str) -> tuple[str, str]:
    """Split Search-R1 ``contents`` into (title, body)."""
    title, _, body = contents.partition("\n")
    title = title.strip()
    if len(title) >= 2 and title[0] == '"' and title[-1] == '"':
        title = title[1:-1]
    return title, body.strip()


def read_corpus(path: str | Path) -> Iterator[Document]:
    """Stream documents from a Search-R1 JSONL corpus.

    Raises ``CorpusFormatError`` naming the file and line for a malformed line.
    Blank lines are skipped.
    """
    path = Path(path)
    for lineno, record in iter_jsonl(path, CorpusFormatError):
        if not isinstance(record, dict):
            raise CorpusFormatError(f"{path}:{lineno}: expected a JSON object")
        doc_id, contents = record.get("id"), record.get("contents")
        if doc_id is None or not isinstance(contents, str):
            raise CorpusFormatError(f"{path}:{lineno}: a record needs 'id' and a string 'contents'")
        title, text = split_contents(contents)
        yield Document(doc_id=str(doc_id), title=title, text=text)


def write_corpus(documents, path: str | Path) -> None:
    """Write documents as Search-R1 JSONL, atomically (temp file + rename)."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for doc in documents:
            f.write(json.dumps({"id": doc.doc_id, "contents": doc.contents}, ensure_ascii=False))
            f.write("\n")
