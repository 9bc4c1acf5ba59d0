"""Paths of the data files shipped inside the package."""

from __future__ import annotations

from pathlib import Path


def sample_corpus_path() -> Path:
    """The bundled sample corpus: 203 short factual documents in Search-R1 JSONL
    (countries, capitals, elements, planets, people, rivers, mountains)."""
    path = Path(__file__).with_name("data") / "sample_corpus.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bundled sample corpus is missing from the installation")
    return path
