"""Tiny offline model and tokenizer.

``build_tokenizer`` trains a byte-level BPE with ``tokenizers`` (no unknown tokens: any text
round-trips) and adds the protocol tags as single, non-special added tokens, so a tag is
always exactly one token id and ``decode(skip_special_tokens=True)`` keeps it.
``build_model`` makes a Qwen2-architecture causal LM from a ``transformers`` config sized
by preset. ``init_model`` does both and saves a HF model folder (safetensors + fast
tokenizer) that ``AutoModelForCausalLM`` / ``AutoTokenizer`` load offline.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from searchgym.agents.scripted import tokenizer_training_texts
from searchgym.envs.protocol import TAGS  # the protocol's tags; each is one added token
from searchgym.envs.world import load_entities
from searchgym.retrieval.fileio import atomic_dir, atomic_write_json

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


@dataclass(frozen=True)
class ModelPreset:
    """Sizes of the tiny Qwen2 model and its tokenizer."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 2048
    entity_tokens: bool = True
    """Add the world's entity names as whole tokens (see ``build_tokenizer``)."""


PRESETS: dict[str, ModelPreset] = {
    # Well under 1M parameters: CI and smoke runs.
    "smoke": ModelPreset(1024, 64, 192, 2, 4, 2),
    # About a million parameters plus the phrase embeddings: the main experiment on 2 CPU
    # cores (2 SFT warm starts + 28 RL arms in about an hour). Sized by measurement: this
    # shape trains ~2.5x faster than hidden 192 x 4 layers at equal SFT quality per minute.
    "small": ModelPreset(3072, 128, 384, 3, 4, 2),
}


def get_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}") from None


def build_tokenizer(texts: Iterable[str], vocab_size: int, phrases: Iterable[str] = ()):
    """Train a byte-level BPE on ``texts`` and return a ``PreTrainedTokenizerFast``.

    The protocol tags are added tokens (one id each, not special, so decoding with
    ``skip_special_tokens=True`` keeps them); BOS/EOS/PAD are special tokens.
    ``phrases`` (e.g. a world's entity names) become whole-word added tokens: a tiny model
    then copies a name from the question or a retrieved passage as ONE token instead of
    a run of sub-word pieces, which is what makes multi-hop search learnable by SFT in
    minutes on a CPU (measured: 3% vs. far higher validation accuracy, see README).
    Text still round-trips exactly (spaces around a phrase stay their own tokens).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, single_word=False, normalized=False, special=False) for t in TAGS])
    names = sorted({p.strip() for p in phrases if p and p.strip()} - set(TAGS))
    if names:
        tok.add_tokens([AddedToken(n, single_word=True, normalized=False, special=False) for n in names])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
    )
    return fast


def build_model(preset: ModelPreset | str, tokenizer, seed: int = 0):
    """A randomly initialised Qwen2 causal LM sized by ``preset`` for ``tokenizer``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if isinstance(preset, str):
        preset = get_preset(preset)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads,
        max_position_embeddings=preset.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    ids = phrase_token_ids(tokenizer)
    if ids and preset.entity_tokens:
        # Give every phrase token (entity names, attribute values) one shared embedding
        # component on top of its random one: attention can then learn "find the entity
        # in the question / passage" once for all of them, and the tied LM head still
        # copies the specific one. Measured on the small world (narrow demos, 564 SFT
        # steps): train loss 0.21 with it vs 0.69 without.
        emb = model.get_input_embeddings().weight
        g = torch.Generator().manual_seed(seed + 1)
        shared = torch.randn(emb.shape[1], generator=g) * config.initializer_range
        with torch.no_grad():
            emb[ids] += shared
    return model


def phrase_token_ids(tokenizer) -> list[int]:
    """Ids of the whole-phrase added tokens (``build_tokenizer(phrases=...)``)."""
    skip = set(TAGS) | {BOS, EOS, PAD}
    added = getattr(tokenizer, "get_added_vocab", lambda: {})()
    return sorted(i for t, i in added.items() if t not in skip)


def count_parameters(model) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def world_entity_names(world_dir: str | Path) -> list[str]:
    """Every entity name and attribute value (years, counts) of a world, from its
    ``kg.json``; empty if the folder has none. These become whole tokens."""
    if not (Path(world_dir) / "kg.json").exists():
        return []
    ents = load_entities(world_dir).values()
    out = [e.name for e in ents]
    for e in ents:
        for v in e.facts.values():
            if isinstance(v, int) and not isinstance(v, bool):  # str facts are entity ids
                out.append(str(v))
    return out


def world_texts(world_dir: str | Path) -> list[str]:
    """Texts to train the tokenizer on: every corpus passage and question of a world, plus
    prompts and templated demonstration text so tags and think phrases tokenise well."""
    return tokenizer_training_texts(world_dir)


def init_model(
    preset: str, out_dir: str | Path, texts: Iterable[str] | None = None,
    world_dir: str | Path | None = None, seed: int = 0,
) -> dict:
    """Train the tokenizer, build the model, save both to ``out_dir`` (atomically).

    Give either ``texts`` or ``world_dir``. Returns a summary dict (parameter count,
    vocabulary size, preset).
    """
    p = get_preset(preset)
    if texts is None:
        if world_dir is None:
            raise ValueError("init_model needs texts or world_dir")
        texts = world_texts(world_dir)
    texts = list(texts)
    if not texts:
        raise ValueError("no text to train the tokenizer on")
    names = world_entity_names(world_dir) if (world_dir is not None and p.entity_tokens) else []
    tokenizer = build_tokenizer(texts, p.vocab_size, phrases=names)
    model = build_model(p, tokenizer, seed=seed)
    summary = {
        "preset": preset,
        "parameters": count_parameters(model),
        "vocab_size": len(tokenizer),
        "architecture": "Qwen2ForCausalLM",
        "sizes": asdict(p),
        "seed": seed,
        "world": str(world_dir) if world_dir is not None else None,
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(Path(tmp) / "searchgym_model.json", summary)
    return summary


def load_model(path: str | Path, dtype=None):
    """Load (model, tokenizer) from a local HF folder, offline. The model is in eval mode."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        kind = "is a file, not a model folder" if path.exists() else "model folder not found"
        raise FileNotFoundError(f"{path}: {kind}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a model folder (no config.json)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        # the config first: a garbage config.json is then reported as such, not as a
        # confusing tokenizer error
        AutoConfig.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=dtype or torch.float32
        )
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:  # a bad folder's errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(f"{path}: cannot load a HF causal LM ({first})") from None
    model.eval()
    return model, tokenizer
