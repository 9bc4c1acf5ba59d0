"""Security checks of the source tree (issue #8, item 4) and of checkpoint loading.

The scan parses every Python file of the repository (``ast``, so comments and strings do
not count) and fails on: ``torch.load`` without ``weights_only=True``; pickle-based loaders
(``pickle``/``dill``/``joblib``/``pandas.read_pickle``, ``np.load(allow_pickle=True)``);
``yaml.load`` without a safe loader, ``yaml.unsafe_load``/``full_load``; the builtins
``eval``/``exec``; ``shell=True``, ``os.system``, ``os.popen``; ``trust_remote_code=True``.
"""

from __future__ import annotations

import ast
import os
import random
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "node_modules", "build", "dist", "runs", "__pycache__"}

_PICKLE_LOADERS = {("pickle", "load"), ("pickle", "loads"), ("cPickle", "load"), ("cPickle", "loads"),
                   ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("pd", "read_pickle"),
                   ("pandas", "read_pickle"), ("shelve", "open")}
_SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    return ""


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def find_violations(source: str, filename: str = "<src>") -> list[str]:
    """Forbidden calls in ``source``, as ``file:line: what`` strings."""
    tree = ast.parse(source, filename=filename)
    found = []
    # `import pickle as pk`, `from torch import load`: resolve aliases to the full name
    alias: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    alias[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                alias[a.asname or a.name] = f"{node.module}.{a.name}"

    def bad(node, what):
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        if head in alias:
            name = alias[head] + (f".{rest}" if rest else "")
        parts = tuple(name.split("."))
        if name.endswith("torch.load") or name == "torch.load":
            if not _is_true(_kw(node, "weights_only")):
                bad(node, "torch.load without weights_only=True")
        if parts[-2:] in _PICKLE_LOADERS:
            bad(node, f"{name}: pickle-based loading")
        if parts[-1:] == ("load",) and parts[-2:-1] in (("np",), ("numpy",)) and _is_true(_kw(node, "allow_pickle")):
            bad(node, "np.load(allow_pickle=True)")
        if parts[-2:] == ("yaml", "load"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader).split(".")[-1] not in _SAFE_YAML_LOADERS:
                bad(node, "yaml.load without a safe Loader (use yaml.safe_load)")
        if parts[-2:] in (("yaml", "unsafe_load"), ("yaml", "full_load"), ("yaml", "load_all")):
            bad(node, f"{name}: unsafe YAML loading")
        if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec") and node.func.id not in alias:
            bad(node, f"builtin {node.func.id}()")
        if name in ("os.system", "os.popen"):
            bad(node, f"{name}: runs a shell")
        if _is_true(_kw(node, "shell")):
            bad(node, "shell=True")
        if _is_true(_kw(node, "trust_remote_code")):
            bad(node, "trust_remote_code=True")
    return found


def _python_files() -> list[Path]:
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        out += [Path(root) / f for f in files if f.endswith(".py")]
    return out


#: (file, pattern) pairs that are allowed, each with why. Only tests, never package code.
ALLOWED = {
    ("tests/test_tasks_persistent.py", "pickle.loads: pickle-based loading"):
        "the persistent-task contract itself: an EnvSpec pickled by the same test must make the env in a "
        "fresh process, as a Ray worker does (bytes the test made, never read from disk)",
}


def test_source_tree_has_no_unsafe_loading_or_shell():
    files = _python_files()
    assert len(files) > 50, f"scan found only {len(files)} files under {REPO}"
    here = Path(__file__).resolve()
    violations = []
    for f in files:
        if f.resolve() == here:  # this file spells the patterns out in its self-test below
            continue
        violations += find_violations(f.read_text(encoding="utf-8"), str(f.relative_to(REPO)))
    violations = [v for v in violations if tuple(x.strip() for x in (v.split(":")[0], v.split(": ", 1)[1]))
                  not in ALLOWED]
    assert not violations, "forbidden patterns:\n" + "\n".join(violations)


@pytest.mark.parametrize("src, caught", [
    ("import torch\ntorch.load(f)", True),
    ("import torch\ntorch.load(f, weights_only=False)", True),
    ("import torch\ntorch.load(f, map_location='cpu', weights_only=True)", False),
    ("import pickle\npickle.load(f)", True),
    ("import pickle\npickle.loads(b)", True),
    ("import numpy as np\nnp.load(f, allow_pickle=True)", True),
    ("import numpy as np\nnp.load(f)", False),
    ("import yaml\nyaml.load(s)", True),
    ("import yaml\nyaml.load(s, Loader=yaml.FullLoader)", True),
    ("import yaml\nyaml.load(s, Loader=yaml.SafeLoader)", False),
    ("import yaml\nyaml.safe_load(s)", False),
    ("import yaml\nyaml.unsafe_load(s)", True),
    ("eval(user_input)", True),
    ("exec(code)", True),
    ("model.eval()", False),
    ("import subprocess\nsubprocess.run(cmd, shell=True)", True),
    ("import subprocess\nsubprocess.run(['ls', path])", False),
    ("import os\nos.system('ls ' + p)", True),
    ("AutoModel.from_pretrained(p, trust_remote_code=True)", True),
    ("# torch.load(f) in a comment\ns = 'pickle.load(f)'", False),
    ("from torch import load\nload(f)", True),
    ("from torch import load as tl\ntl(f, weights_only=True)", False),
    ("import pickle as pk\npk.loads(b)", True),
    ("import numpy\nnumpy.load(f, allow_pickle=True)", True),
    ("import yaml as y\ny.load(s)", True),
])
def test_scanner_catches_each_pattern(src, caught):
    assert bool(find_violations(src)) is caught, find_violations(src)


# ----------------------------------------------------------------------------- checkpoints


def _tiny_model():
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return Qwen2ForCausalLM(cfg)


def _draws(gen):
    import torch

    return (random.random(), np.random.random(3).tolist(), np.random.normal(size=3).tolist(),
            torch.rand(3).tolist(), torch.rand(3, generator=gen).tolist())


def test_checkpoint_restores_every_rng_with_weights_only(tmp_path):
    """The RNG states (python, numpy incl. its cached Gaussian, torch, the trainer's
    generator) and optimizer state survive a weights_only round trip exactly."""
    import torch

    from searchgym.training.checkpoint import load_checkpoint, save_checkpoint

    torch.set_num_threads(1)
    model = _tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(7)
    random.seed(1)
    np.random.seed(2)
    np.random.normal()  # leaves a cached Gaussian in numpy's legacy state (has_gauss=1)
    torch.manual_seed(3)
    torch.rand(5, generator=gen)
    assert np.random.get_state()[3] == 1
    ck = save_checkpoint(tmp_path, 3, model, None, opt, metrics_offset=17, generator=gen, extra={"ema": [0.5]})
    expected = _draws(gen)
    _draws(gen)  # move every RNG on

    opt2 = torch.optim.AdamW(_tiny_model().parameters(), lr=1e-3)
    gen2 = torch.Generator().manual_seed(99)
    state = load_checkpoint(ck, opt2, None, gen2)
    assert (state["step"], state["metrics_offset"], state["extra"]) == (3, 17, {"ema": [0.5]})
    assert _draws(gen2) == expected
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)


class _Payload:
    """Unpickling this would create a folder: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_checkpoint_with_pickled_objects_is_refused_without_running_them(tmp_path):
    import torch

    from searchgym.training.checkpoint import load_checkpoint

    ck = tmp_path / "checkpoints" / "step_00000001"
    ck.mkdir(parents=True)
    marker = tmp_path / "code_ran"
    torch.save({"step": 1, "rng": _Payload(str(marker))}, ck / "trainer_state.pt")
    with pytest.raises(ValueError, match="not a searchgym checkpoint state"):
        load_checkpoint(ck)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_checkpoint_state_is_a_clear_error(tmp_path, damage):
    """A truncated or overwritten trainer_state.pt is a ValueError naming the file (the
    CLI prints it as one line), not torch's bare RuntimeError."""
    import torch

    from searchgym.training.checkpoint import load_checkpoint, save_checkpoint

    model = _tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ck = save_checkpoint(tmp_path, 1, model, None, opt, metrics_offset=0)
    f = ck / "trainer_state.pt"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 64)
    with pytest.raises(ValueError, match="trainer_state.pt"):
        load_checkpoint(ck, torch.optim.AdamW(_tiny_model().parameters(), lr=1e-3))
