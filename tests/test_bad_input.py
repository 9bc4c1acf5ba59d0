"""Bad input everywhere (issue #8, item 1): every user error at the CLI exits non-zero with
one clear line naming the file / key / id, never a traceback, and loses nothing.

The CLI cases run the real ``searchgym.cli.main`` in child processes: one interpreter
imports the package once, then forks a child per case whose stderr is captured (an
uncaught exception prints the interpreter's ``Traceback`` exactly as ``python -m
searchgym`` would). Two cases also go through ``python -m searchgym`` and the installed
``searchgym`` entry point. Plus a hypothesis fuzz of ``SearchEnv.step`` with arbitrary
strings on a real BM25 index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.slow

DRIVER = r'''
import json, os, sys, time, traceback
cases, errdir, out = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
from searchgym.cli import main
# what the handlers import lazily, imported once before the forks (each child would pay seconds)
import importlib
for m in ("faiss", "bm25s", "yaml", "torch", "transformers", "safetensors", "sentence_transformers",
          "searchgym.retrieval.index", "searchgym.retrieval.server", "searchgym.envs",
          "searchgym.agents.policy", "searchgym.agents.model", "searchgym.agents.demos",
          "searchgym.training.sft", "searchgym.training.rl"):
    importlib.import_module(m)
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM  # noqa: F401
results = {}
for name, argv in cases.items():
    err = os.path.join(errdir, name + ".err")
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()  # what the interpreter prints for an uncaught exception
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    _, status = os.waitpid(pid, 0)
    results[name] = {"rc": os.waitstatus_to_exitcode(status), "stderr": open(err).read(),
                     "seconds": time.perf_counter() - t0}
json.dump(results, open(out, "w"))
'''


def _env(root: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "SEARCHGYM_HOME": str(root / "home"), "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(lines), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Everything the cases need: two smoke worlds, a BM25 index, a tiny dense index,
    a tiny model, demonstrations of world 0 and a one-step RL run with a checkpoint."""
    from searchgym.agents.demos import build_matched, write_demos
    from searchgym.agents.model import init_model
    from searchgym.envs.world import ensure_index, ensure_world
    from searchgym.retrieval import Document, build_index
    from searchgym.training.config import rl_preset
    from searchgym.training.rl import train_rl

    root = tmp_path_factory.mktemp("bad")
    w0 = ensure_world("smoke", 0, root=root / "worlds")
    w1 = ensure_world("smoke", 1, root=root / "worlds")
    ensure_index(w0, "bm25")
    docs = [Document(f"d{i}", f"Title {i}", f"passage number {i} about topic {i % 3}") for i in range(6)]
    dense = build_index(docs, root / "dense", kind="dense", progress=False)
    model = root / "model"
    init_model("smoke", model, world_dir=w0, seed=0)
    sets = build_matched(w0, 4, index_kind="bm25", batch_size=8)
    demos = root / "demos_w0.jsonl"
    write_demos(sets["narrow"], demos)
    rl_over = dict(retriever="bm25", steps=1, batch_questions=2, n_samples=2, ppo_epochs=1, num_minibatches=1,
                   max_new_tokens=8, max_turns=1, save_every=1, tensorboard=False, threads=1)
    run = root / "rl_run"
    train_rl(rl_preset("smoke", init=str(model), out=str(run), world=str(w0), **rl_over), progress=False)
    return {"root": root, "w0": w0, "w1": w1, "dense": dense, "model": model, "demos": demos, "run": run,
            "rl_over": rl_over}


def _corrupt_indexes(ws) -> dict[str, Path]:
    """Copies of the tiny dense index, each broken one way."""
    root, src = ws["root"] / "broken", ws["dense"]
    out = {}

    def copy(name):
        d = root / name
        shutil.copytree(src, d)
        out[name] = d
        return d

    (copy("no_faiss") / "index.faiss").unlink()
    (copy("no_manifest") / "manifest.json").unlink()
    d = copy("truncated_faiss")
    (d / "index.faiss").write_bytes((src / "index.faiss").read_bytes()[:200])
    d = copy("garbage_faiss")
    (d / "index.faiss").write_bytes(os.urandom(4096))
    for name, edit in (("other_dimension", {"dimension": 768}),
                       ("other_encoder", {"encoder": {"name": "e5-base-v2", "path": None}}),
                       ("manifest_not_json", None)):
        d = copy(name)
        if edit is None:
            (d / "manifest.json").write_text("{ torn", encoding="utf-8")
        else:
            m = json.loads((d / "manifest.json").read_text())
            m.update(edit)
            (d / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    d = copy("docs_changed")
    with open(d / "docs.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": "extra", "contents": "\\"X\\"\\nan extra passage"}\n')
    # a world whose cached dense index is corrupt: eval must fail naming the FAISS file
    w = root / "world_bad_index"
    shutil.copytree(ws["w0"], w, ignore=shutil.ignore_patterns("index-*"))
    shutil.copytree(out["truncated_faiss"], w / "index-dense")
    out["world_bad_index"] = w
    return out


def _cases(ws) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (argv, substrings the error line must contain)."""
    root, w0, w1, model = ws["root"], str(ws["w0"]), str(ws["w1"]), str(ws["model"])
    c = root / "cases"
    c.mkdir()
    good = '{"id": "1", "contents": "\\"A\\"\\nsome text"}\n'
    corpora = {
        "non_json": [good, "this is not json\n"],
        "missing_contents": [good, good, '{"id": "3"}\n'],
        "wrong_type": ['{"id": "1", "contents": 42}\n'],
        "not_object": ['["id", "contents"]\n'],
        "empty": [],
    }
    where = {"non_json": ":2:", "missing_contents": ":3:", "wrong_type": ":1:", "not_object": ":1:", "empty": ""}
    cases: dict[str, tuple[list[str], list[str]]] = {}
    for name, lines in corpora.items():
        p = _jsonl(c / f"corpus_{name}.jsonl", lines)
        cases[f"corpus_{name}"] = (["index", "build", "--corpus", str(p), "--out", str(c / f"idx_{name}"),
                                    "--retriever", "bm25"], [f"corpus_{name}.jsonl{where[name]}"])
    binary = c / "corpus_binary.jsonl"
    binary.write_bytes(b'{"id": "1", "contents": "\xff\xfe"}\n')
    cases["corpus_binary"] = (["index", "build", "--corpus", str(binary), "--out", str(c / "idx_binary")],
                              ["corpus_binary.jsonl", "UTF-8"])

    broken = _corrupt_indexes(ws)
    expect = {"no_faiss": ["index.faiss", "missing"], "no_manifest": ["manifest.json", "missing"],
              "truncated_faiss": ["index.faiss", "corrupt"], "garbage_faiss": ["index.faiss", "corrupt"],
              "other_dimension": ["dimension 384", "768"], "other_encoder": ["manifest.json", "e5-base-v2"],
              "manifest_not_json": ["manifest.json", "not valid JSON"], "docs_changed": ["docs.jsonl", "sha256"]}
    for name, needles in expect.items():
        cases[f"index_{name}"] = (["index", "query", str(broken[name]), "some query"], needles)
    cases["serve_truncated_faiss"] = (["serve", "--index", str(broken["truncated_faiss"]), "--port", "9"],
                                      ["index.faiss", "corrupt"])
    cases["eval_world_bad_index"] = (["eval", "--policy", "random", "--env", "searchgym/SingleHop-v0", "-n", "1",
                                      "--world", str(broken["world_bad_index"])], ["index-dense/index.faiss", "corrupt"])

    # training configs: unknown keys (top level, nested), wrong types, bad values
    yamls = {"sft_unknown": "epochs: 2\nbogus: 1\n", "sft_nested_unknown": "optim:\n  lr: 0.1\n  lrr: 2\n",
             "sft_wrong_type": "optim:\n  lr: fast\n", "sft_bad_value": "epochs: -3\n",
             "sft_not_yaml": "epochs: [1\n", "rl_nested_unknown": "optim: {betaa: 0.5}\n",
             "rl_wrong_type": "temperature: hot\n", "rl_bad_value": "optim: {beta1: 2}\n",
             "rl_env_kwargs": "env_kwargs: {top_k: 5}\n"}
    keys = {"sft_unknown": ["sft.bogus"], "sft_nested_unknown": ["sft.optim.lrr"],
            "sft_wrong_type": ["sft.optim.lr", "float"], "sft_bad_value": ["sft.epochs", "-3"],
            "sft_not_yaml": ["sft_not_yaml.yaml", "not valid YAML (line 2, column 1"], "rl_nested_unknown": ["rl.optim.betaa"],
            "rl_wrong_type": ["rl.temperature", "float"], "rl_bad_value": ["rl.optim.beta1"],
            "rl_env_kwargs": ["rl.env_kwargs", "top_k"]}
    for name, text in yamls.items():
        y = c / f"{name}.yaml"
        y.write_text(text, encoding="utf-8")
        if name.startswith("sft"):
            argv = ["train", "sft", "--model", model, "--demos", str(ws["demos"]), "--out", str(c / f"out_{name}"),
                    "--world", w0, "--preset", "smoke", "--config", str(y)]
        else:
            argv = ["train", "rl", "--init", model, "--out", str(c / f"out_{name}"), "--world", w0,
                    "--preset", "smoke", "--config", str(y)]
        cases[f"config_{name}"] = (argv, keys[name])

    # model paths that are not models
    (c / "empty_dir").mkdir()
    (c / "garbage_config").mkdir()
    (c / "garbage_config" / "config.json").write_text('{"hello": "world"}', encoding="utf-8")
    (c / "plain_file").write_text("not a model", encoding="utf-8")
    bad_weights = c / "bad_weights"
    shutil.copytree(model, bad_weights)
    (bad_weights / "model.safetensors").write_bytes(b"\x00" * 64)
    ev = ["eval", "--env", "searchgym/SingleHop-v0", "-n", "1", "--world", w0, "--policy"]
    cases["model_eval_empty_dir"] = (ev + [str(c / "empty_dir")], ["empty_dir", "no config.json"])
    cases["model_eval_garbage_config"] = (ev + [str(c / "garbage_config")], ["garbage_config", "model_type"])
    cases["model_eval_plain_file"] = (ev + [str(c / "plain_file")], ["plain_file", "not a model folder"])
    cases["model_sft_garbage_config"] = (["train", "sft", "--model", str(c / "garbage_config"), "--demos",
                                          str(ws["demos"]), "--out", str(c / "out_sft_model"), "--world", w0,
                                          "--preset", "smoke"], ["garbage_config", "model_type"])
    cases["model_sft_bad_weights"] = (["train", "sft", "--model", str(bad_weights), "--demos", str(ws["demos"]),
                                       "--out", str(c / "out_sft_weights"), "--world", w0, "--preset", "smoke"],
                                      ["bad_weights", "cannot load"])
    cases["model_rl_empty_dir"] = (["train", "rl", "--init", str(c / "empty_dir"), "--out", str(c / "out_rl_model"),
                                    "--world", w0, "--preset", "smoke"], ["empty_dir", "no config.json"])
    cases["model_rl_plain_file"] = (["train", "rl", "--init", str(c / "plain_file"), "--out",
                                     str(c / "out_rl_file"), "--world", w0, "--preset", "smoke"],
                                    ["plain_file", "not a model folder"])

    # demonstrations: another world, a torn last line, a non-JSON line
    lines = ws["demos"].read_text(encoding="utf-8").splitlines(keepends=True)
    torn = _jsonl(c / "demos_torn.jsonl", lines[:-1] + [lines[-1][: len(lines[-1]) // 2]])
    nonjson = _jsonl(c / "demos_nonjson.jsonl", lines[:1] + ["{oops\n"] + lines[1:])
    sft = ["train", "sft", "--model", model, "--preset", "smoke", "--demos"]
    cases["demos_other_world"] = (sft + [str(ws["demos"]), "--out", str(c / "out_demos_w1"), "--world", w1],
                                  ["demos_w0.jsonl:1", "smoke-s0", "smoke-s1"])
    cases["demos_torn_line"] = (sft + [str(torn), "--out", str(c / "out_demos_torn"), "--world", w0],
                                [f"demos_torn.jsonl:{len(lines)}", "not valid JSON"])
    cases["demos_non_json"] = (sft + [str(nonjson), "--out", str(c / "out_demos_nonjson"), "--world", w0],
                               ["demos_nonjson.jsonl:2", "not valid JSON"])

    # episode records for the diversity metrics
    rollouts = {"empty": (b"", ["rollouts_empty.jsonl", "no episode records"]),
                "binary": (b"\xff\xfe\n", ["rollouts_binary.jsonl:1", "UTF-8"]),
                "non_json": (b'{"correct": true}\nnope\n', ["rollouts_non_json.jsonl:2", "not valid JSON"])}
    for name, (data, needles) in rollouts.items():
        r = c / f"rollouts_{name}.jsonl"
        r.write_bytes(data)
        cases[f"metrics_{name}"] = (["diversity", str(r), "--no-vendi"], needles)

    cases["env_unknown_id"] = (["eval", "--policy", "random", "--env", "Nope-v0", "-n", "1"],
                               ["Nope-v0", "searchgym/MultiHop-v0"])

    # resume a run with another objective and learning rate
    y = c / "resume.yaml"
    y.write_text(json.dumps({**ws["rl_over"], "optim": {"lr": 0.5}}), encoding="utf-8")
    cases["resume_other_config"] = (["train", "rl", "--resume", "--init", model, "--out", str(ws["run"]),
                                     "--world", w0, "--preset", "smoke", "--objective", "clip_higher",
                                     "--config", str(y)],
                                    ["refusing to resume", "rl.objective", "'grpo'", "'clip_higher'", "rl.optim.lr"])
    return cases


@pytest.fixture(scope="module")
def cli(ws):
    """Run every case; returns name -> (result, expected substrings), plus digests of the
    RL run folder before and after."""
    cases = _cases(ws)
    root = ws["root"]
    before = _tree_digest(ws["run"])
    (root / "driver.py").write_text(DRIVER, encoding="utf-8")
    (root / "cases.json").write_text(json.dumps({k: v[0] for k, v in cases.items()}), encoding="utf-8")
    errdir = root / "stderr"
    errdir.mkdir()
    subprocess.run([sys.executable, str(root / "driver.py"), str(root / "cases.json"), str(errdir),
                    str(root / "results.json")], env=_env(root), check=True, timeout=900, cwd=root)
    results = json.loads((root / "results.json").read_text())
    return {k: (results[k], v[1]) for k, v in cases.items()}, before, _tree_digest(ws["run"])


CASE_NAMES = [
    "corpus_non_json", "corpus_missing_contents", "corpus_wrong_type", "corpus_not_object", "corpus_empty",
    "corpus_binary", "index_no_faiss", "index_no_manifest", "index_truncated_faiss", "index_garbage_faiss",
    "index_other_dimension", "index_other_encoder", "index_manifest_not_json", "index_docs_changed",
    "serve_truncated_faiss", "eval_world_bad_index", "config_sft_unknown", "config_sft_nested_unknown",
    "config_sft_wrong_type", "config_sft_bad_value", "config_sft_not_yaml", "config_rl_nested_unknown",
    "config_rl_wrong_type", "config_rl_bad_value", "config_rl_env_kwargs", "model_eval_empty_dir",
    "model_eval_garbage_config", "model_eval_plain_file", "model_sft_garbage_config", "model_sft_bad_weights",
    "model_rl_empty_dir", "model_rl_plain_file", "demos_other_world", "demos_torn_line", "demos_non_json",
    "metrics_empty", "metrics_binary", "metrics_non_json", "env_unknown_id", "resume_other_config",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_cli_user_error(cli, name):
    results, _, _ = cli
    res, needles = results[name]
    err = res["stderr"]
    assert res["rc"] == 2, f"{name}: exit {res['rc']}\n{err}"
    assert "Traceback" not in err, err
    msg = [line for line in err.splitlines() if ": error: " in line]
    assert msg, err
    for needle in needles:
        assert needle in err, f"{name}: {needle!r} not in {err!r}"


def test_cli_cases_all_listed(cli):
    assert sorted(cli[0]) == sorted(CASE_NAMES)


def test_resume_refusal_lists_only_what_differs(cli):
    """``optim: {lr: ...}`` in a YAML changes lr only: the rest of the section keeps the
    preset/default values (they are not reset to OptimConfig's class defaults)."""
    err = cli[0]["resume_other_config"][0]["stderr"]
    assert "rl.optim.lr" in err and "warmup_steps" not in err and "min_lr_ratio" not in err
    assert "rl.steps" not in err and "rl.threads" not in err


def test_nothing_written_or_lost(cli, ws):
    """Refused commands leave no output behind, and the refused resume changes nothing."""
    _, before, after = cli
    assert before == after and any(k.startswith("checkpoints/") for k in before)
    c = ws["root"] / "cases"
    left = sorted(p.name for p in c.iterdir() if p.name.startswith(("out_", "idx_")))
    assert left == [], left


def test_real_entry_points(ws, cli):
    """The same errors through ``python -m searchgym`` and the installed ``searchgym`` script."""
    root = ws["root"]
    r = subprocess.run([sys.executable, "-m", "searchgym", "eval", "--policy", "random", "--env",
                        "searchgym/Nope-v0", "-n", "1"], env=_env(root), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown env id 'searchgym/Nope-v0'" in r.stderr and "searchgym/Mixed-v0" in r.stderr
    exe = Path(sys.executable).with_name("searchgym")
    r = subprocess.run([str(exe), "index", "build", "--corpus", str(root / "cases" / "corpus_non_json.jsonl"),
                        "--out", str(root / "cases" / "idx_entry")], env=_env(root), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "corpus_non_json.jsonl:2: not valid JSON" in r.stderr
    assert not (root / "cases" / "idx_entry").exists()


# ----------------------------------------------------------------------------- in-process


def test_gymnasium_make_unknown_id():
    import gymnasium

    import searchgym.envs as E

    with pytest.raises(gymnasium.error.NameNotFound, match="Nope.*searchgym"):
        gymnasium.make("searchgym/Nope-v0")
    with pytest.raises(ValueError) as e:
        E.make("searchgym/Nope-v0")
    for env_id in ("searchgym/SingleHop-v0", "searchgym/MultiHop-v0", "searchgym/Mixed-v0"):
        assert env_id in str(e.value)


def test_world_fingerprint_and_demo_records(ws):
    from searchgym.agents.demos import load_demos
    from searchgym.envs.world import world_fingerprint

    f0, f1 = world_fingerprint(ws["w0"]), world_fingerprint(ws["w1"])
    assert f0 != f1 and f0.startswith("smoke-s0-") and f1.startswith("smoke-s1-")
    recs = load_demos(ws["demos"], world_dir=ws["w0"])
    assert recs and all(r["world"] == f0 for r in recs)
    with pytest.raises(ValueError, match="smoke-s0"):
        load_demos(ws["demos"], world_dir=ws["w1"])
    # a file without the field (written before it existed) is accepted
    legacy = ws["root"] / "legacy.jsonl"
    legacy.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "world"}) + "\n" for r in recs))
    assert len(load_demos(legacy, world_dir=ws["w1"])) == len(recs)
    # a valid last line without its newline is kept, not dropped as a torn append
    legacy.write_text(legacy.read_text().rstrip("\n"))
    assert len(load_demos(legacy)) == len(recs)


def test_resume_same_config_still_works(ws):
    """Another world is refused and changes nothing; the same config resumes (extending
    ``steps`` is allowed)."""
    from searchgym.retrieval.fileio import read_jsonl
    from searchgym.training.config import rl_preset
    from searchgym.training.rl import RLTrainer

    run = ws["root"] / "rl_resume_ok"
    shutil.copytree(ws["run"], run)
    over = {**ws["rl_over"], "steps": 2}
    cfg = rl_preset("smoke", init=str(ws["model"]), out=str(run), world=str(ws["w0"]), **over)
    other = dataclasses.replace(cfg, world=str(ws["w1"]))
    before = _tree_digest(run)
    with pytest.raises(ValueError, match=r"refusing to resume.*world: '.*smoke-s0-g\d+' in the run, '.*smoke-s1"):
        RLTrainer(other, progress=False).run(resume=True)
    assert _tree_digest(run) == before
    RLTrainer(cfg, progress=False).run(resume=True)
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl", skip_torn_tail=False)] == [1, 2]


@pytest.fixture(scope="module")
def fuzz_env(ws):
    from searchgym.envs.env import EnvConfig, SearchEnv
    from searchgym.envs.world import load_questions
    from searchgym.retrieval import load_retriever

    cfg = EnvConfig(max_turns=3, format_penalty=0.5)
    retriever = load_retriever(ws["w0"] / "index-bm25")
    return SearchEnv(load_questions(ws["w0"], "train"), retriever, cfg, render_mode="ansi")


_tags = ["<search>", "</search>", "<answer>", "</answer>", "<think>", "</think>", "<information>", "</information>"]
actions = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(st.sampled_from(_tags), st.text(max_size=20)), max_size=30).map("".join),
    st.builds(lambda a, b, n: a + "x" * n + b, st.sampled_from(_tags), st.sampled_from(_tags),
              st.integers(0, 20_000)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(actions, min_size=1, max_size=4), st.integers(0, 10_000))
def test_fuzz_env_step(fuzz_env, texts, qidx):
    """Arbitrary strings never crash an episode; rewards are finite and in [-1, 1] (a score
    in [0, 1] minus a format penalty in [0, 1]); observations stay within max_obs_chars."""
    env = fuzz_env
    obs, _ = env.reset(options={"index": qidx % len(env.questions)})
    assert env.observation_space.contains(obs)
    done, turns = False, 0
    while not done:
        text = texts[turns % len(texts)]
        obs, reward, terminated, truncated, info = env.step(text)
        turns += 1
        assert isinstance(obs, str) and len(obs) <= env.config.max_obs_chars
        assert env.observation_space.contains(obs)
        assert math.isfinite(reward) and -1.0 <= reward <= 1.0
        assert info["action"] in ("search", "answer", "invalid") and info["format_error"] == (info["action"] == "invalid")
        if info["action"] == "search":
            assert len(info["query"]) <= env.config.max_query_chars
        done = terminated or truncated
        assert turns <= env.config.max_turns
    assert "signature" in info and isinstance(env.render(), str)
    with pytest.raises(RuntimeError):
        env.step("<answer>x</answer>")


def test_env_step_1mb_action(fuzz_env):
    env = fuzz_env
    env.reset(options={"index": 0})
    obs, reward, *_ = env.step("<search>" + "ab " * (1 << 19) + "</search>")
    assert len(obs) <= env.config.max_obs_chars and reward == 0.0
    obs, reward, *_ = env.step("<think>" * (1 << 17))
    assert obs.strip().startswith("My previous action is invalid")
