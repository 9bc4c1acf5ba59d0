"""Phrase tokens: a world's entity names (and attribute values) are whole tokens, text
still round-trips, and the model gives them a shared embedding component."""

import json

import pytest
import torch

from searchgym.agents.model import (
    build_model, build_tokenizer, phrase_token_ids, world_entity_names,
)

torch.set_num_threads(1)

NAMES = ["Gisi Linin", "Nuri Kalal", "The Bona Comet", "Kesur", "Lubul Foods"]


def _texts():
    return [f"{a} was born in {b} in {1900 + i}. <search>{a}</search>"
            for i, (a, b) in enumerate(zip(NAMES * 20, NAMES[1:] * 25))]


def test_phrases_are_single_tokens_and_text_round_trips():
    tok = build_tokenizer(_texts(), 300, phrases=NAMES + ["1942"])
    for n in NAMES + ["1942"]:
        ids = tok.encode(n, add_special_tokens=False)
        assert len(ids) == 1, (n, ids)
    s = "<search>Gisi Linin</search> The Bona Comet was made by Nuri Kalal in 1942."
    ids = tok.encode(s, add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == s
    # whole words only: a longer word containing a name is not split around it
    assert tok.convert_tokens_to_ids("Kesur") not in tok.encode("Kesurland", add_special_tokens=False)
    assert len(phrase_token_ids(tok)) == len(NAMES) + 1


def test_phrase_embeddings_share_a_component():
    tok = build_tokenizer(_texts(), 300, phrases=NAMES)
    model = build_model("smoke", tok, seed=0)
    emb = model.get_input_embeddings().weight.detach()
    ph = emb[phrase_token_ids(tok)]
    other = emb[5:5 + len(NAMES)]  # ordinary BPE tokens
    def mean_cos(x):
        x = torch.nn.functional.normalize(x, dim=1)
        c = x @ x.T
        return (c.sum() - c.diag().sum()) / (len(x) * (len(x) - 1))
    assert mean_cos(ph) > 0.3 > abs(mean_cos(other))


def test_world_entity_names_reads_names_and_numbers(tmp_path):
    (tmp_path / "kg.json").write_text(json.dumps({"entities": [
        {"eid": "E0", "etype": "country", "name": "Riova", "facts": {"population": 56}},
        {"eid": "E1", "etype": "person", "name": "Gisi Linin", "facts": {"born_in": "E0", "birth_year": 1924, "founds": []}},
    ]}))
    assert world_entity_names(tmp_path) == ["Riova", "Gisi Linin", "56", "1924"]
    (tmp_path / "kg.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="kg.json"):
        world_entity_names(tmp_path)
    assert world_entity_names(tmp_path / "nowhere") == []
