"""Persistent user tasks: task files under SEARCHGYM_HOME, entry points, pickled EnvSpecs.

The env id of a user task must work wherever an env is made: every CLI command, a fresh
Python process, and a worker process that only received the pickled ``EnvSpec`` (what a
Ray/verl worker gets), even with an empty SEARCHGYM_HOME of its own.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import pytest

import searchgym.envs  # noqa: F401
from searchgym.cli import main
from searchgym.envs import registry as R
from searchgym.envs.tasks import TaskFormatError

DOCS = [("d1", "Ada Lovelace", "Ada Lovelace wrote the first published program, for the Analytical Engine."),
        ("d2", "Grace Hopper", "Grace Hopper built the first compiler, the A-0 System."),
        ("d3", "Alan Turing", "Alan Turing described the universal machine in 1936.")]
QA = [("Who built the first compiler?", ["Grace Hopper"]), ("Who described the universal machine?", ["Alan Turing"])]


def make_project(root: Path, name: str = "pioneers") -> Path:
    """A user's project: Search-R1 JSONL corpus, JSONL QA, a task file with relative paths."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"id": i, "contents": f'"{t}"\n{b}'}) + "\n" for i, t, b in DOCS))
    (root / "qa.jsonl").write_text("".join(json.dumps({"question": q, "golden_answers": g}) + "\n" for q, g in QA))
    (root / "task.yaml").write_text(textwrap.dedent(f"""\
        name: {name}
        qa: qa.jsonl
        corpus: corpus.jsonl
        retriever: bm25
        env: {{topk: 2, max_turns: 3}}
        """))
    return root / "task.yaml"


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHGYM_HOME", str(tmp_path / "home"))
    yield tmp_path / "home"
    for spec in R.user_tasks():  # leave the process registry as it was
        R.TASKS.pop(spec.name, None)
        gym.registry.pop(spec.env_id, None)


def _env_vars(home: Path) -> dict:
    return {**os.environ, "SEARCHGYM_HOME": str(home), "OMP_NUM_THREADS": "1"}


def test_task_add_list_rm(tmp_path, home, capsys):
    task = make_project(tmp_path / "proj")
    assert main(["task", "add", str(task)]) == 0
    stored = home / "tasks" / "pioneers.yaml"
    assert stored.is_file()
    rec = R.read_task_file(stored).to_record()
    assert rec["qa"]["train"] == str((tmp_path / "proj" / "qa.jsonl").resolve())  # absolute once stored
    assert rec["env"]["topk"] == 2 and rec["env"]["doc_chars"] == R.EXTERNAL_ENV_DEFAULTS["doc_chars"]
    assert main(["task", "add", str(task)]) == 0  # the same record again: fine
    capsys.readouterr()
    assert main(["task", "list"]) == 0
    assert "searchgym/pioneers" in capsys.readouterr().out
    env = R.make("searchgym/pioneers", split="test")
    obs, info = env.reset(options={"index": 0})
    assert "Who built the first compiler?" in obs
    obs, *_ = env.step("<search> first compiler </search>")
    assert "A-0 System" in obs
    # a different task under the same name is refused unless --force
    other = make_project(tmp_path / "proj2")
    (other.parent / "qa.jsonl").write_text(json.dumps({"question": "x?", "golden_answers": ["y"]}) + "\n")
    assert main(["task", "add", str(other)]) == 2
    assert "different task" in capsys.readouterr().err
    assert main(["task", "add", str(other), "--force"]) == 0
    assert main(["task", "rm", "pioneers"]) == 0
    assert not stored.exists() and "searchgym/pioneers" not in gym.registry
    assert main(["task", "rm", "pioneers"]) == 2


@pytest.mark.parametrize("body, message", [
    ("name: t\nqa: qa.jsonl\ncorpus: corpus.jsonl\ncorpsu: x\n", "unknown key"),
    ("name: t\nqa: qa.jsonl\n", "exactly one of 'corpus'"),
    ("name: t\nqa: qa.jsonl\ncorpus: corpus.jsonl\nenv: {topk: 0}\n", "topk"),
    ("name: t\nqa: qa.jsonl\ncorpus: corpus.jsonl\nprompt: mine\n", "prompt must be"),
    ("name: MultiHop-v0\nqa: qa.jsonl\ncorpus: corpus.jsonl\n", "built-in"),
    ("name: t\nqa: missing.jsonl\ncorpus: corpus.jsonl\n", "QA file not found"),
    ("name: [t\n", "not valid YAML"),
])
def test_bad_task_files_are_one_line_errors(tmp_path, home, capsys, body, message):
    make_project(tmp_path / "proj")
    bad = tmp_path / "proj" / "bad.yaml"
    bad.write_text(body)
    assert main(["task", "add", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (home / "tasks").exists() or not list((home / "tasks").iterdir())


def test_register_task_writes_the_same_record_as_task_add(tmp_path, home):
    task = make_project(tmp_path / "proj")
    spec = R.read_task_file(task)
    env_id = R.register_task("pioneers", qa=tmp_path / "proj" / "qa.jsonl", corpus_or_index=tmp_path / "proj" / "corpus.jsonl",
                             topk=2, max_turns=3)
    assert env_id == "searchgym/pioneers"
    assert R.read_task_file(home / "tasks" / "pioneers.yaml").to_record() == spec.to_record()
    assert gym.spec(env_id).kwargs["task_record"] == spec.to_record()


def test_user_task_in_fresh_processes_and_cli_commands(tmp_path, home):
    task = make_project(tmp_path / "proj")
    assert main(["task", "add", str(task)]) == 0
    code = ("import gymnasium, searchgym.envs; e = gymnasium.make('searchgym/pioneers', split='train'); "
            "o, i = e.reset(options={'index': 1}); print(i['golden_answers'][0]); "
            "print(e.step('<search> universal machine </search>')[0].count('1936'))")
    r = subprocess.run([sys.executable, "-c", code], env=_env_vars(home), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["Alan", "Turing", "1"]
    out = tmp_path / "ev.jsonl"
    r = subprocess.run([sys.executable, "-m", "searchgym", "eval", "--policy", "random", "--env", "searchgym/pioneers",
                        "--split", "test", "-n", "2", "--out", str(out)], env=_env_vars(home),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(out.read_text().splitlines()) == 2
    pq = tmp_path / "ex.parquet"
    r = subprocess.run([sys.executable, "-m", "searchgym", "export", "verl", "--env", "searchgym/pioneers",
                        "--split", "train", "--out", str(pq)], env=_env_vars(home), capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr
    assert "wrote 2 rows of searchgym/pioneers" in r.stdout


def _make_from_pickled_spec(blob: bytes) -> str:
    import gymnasium

    env = gymnasium.make(pickle.loads(blob))
    obs, info = env.reset(options={"index": 0})
    obs, *_ = env.step("<search> first compiler </search>")
    return f"{os.environ.get('SEARCHGYM_HOME')}|{info['golden_answers'][0]}|{'A-0 System' in obs}"


def test_pickled_envspec_makes_the_env_in_a_subprocess_without_task_files(tmp_path, home):
    task = make_project(tmp_path / "proj")
    assert main(["task", "add", str(task)]) == 0
    blob = pickle.dumps(gym.spec("searchgym/pioneers"))
    (tmp_path / "spec.pkl").write_bytes(blob)
    empty_home = tmp_path / "worker-home"  # the worker sees no stored tasks at all
    code = ("import pickle, sys, gymnasium; spec = pickle.load(open(sys.argv[1], 'rb')); "
            "e = gymnasium.make(spec); o, i = e.reset(options={'index': 0}); "
            "print(i['golden_answers'][0], 'A-0 System' in e.step('<search> first compiler </search>')[0])")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "spec.pkl")], env=_env_vars(empty_home),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["Grace", "Hopper", "True"]
    assert not (empty_home / "tasks").exists()


def test_pickled_envspec_in_a_spawned_worker(tmp_path, home, monkeypatch):
    """A Ray-style worker: a fresh interpreter (spawn) that receives only the pickled spec."""
    task = make_project(tmp_path / "proj")
    assert main(["task", "add", str(task)]) == 0
    blob = pickle.dumps(gym.spec("searchgym/pioneers"))
    monkeypatch.setenv("SEARCHGYM_HOME", str(tmp_path / "worker-home"))
    with mp.get_context("spawn").Pool(1) as pool:
        result = pool.apply(_make_from_pickled_spec, (blob,))
    assert result == f"{tmp_path / 'worker-home'}|Grace Hopper|True"


@pytest.mark.slow
def test_pickled_envspec_in_a_ray_worker(tmp_path, home):
    ray = pytest.importorskip("ray")
    task = make_project(tmp_path / "proj")
    assert main(["task", "add", str(task)]) == 0
    blob = pickle.dumps(gym.spec("searchgym/pioneers"))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"SEARCHGYM_HOME": str(tmp_path / "ray-home"), "OMP_NUM_THREADS": "1"}})

    def worker(blob: bytes) -> str:  # defined here: cloudpickle ships it by value, as user code is
        import os
        import pickle

        import gymnasium

        env = gymnasium.make(pickle.loads(blob))
        obs, info = env.reset(options={"index": 0})
        obs, *_ = env.step("<search> first compiler </search>")
        return f"{os.environ.get('SEARCHGYM_HOME')}|{info['golden_answers'][0]}|{'A-0 System' in obs}"

    try:
        result = ray.get(ray.remote(worker).remote(blob), timeout=300)
    finally:
        ray.shutdown()
    assert result == f"{tmp_path / 'ray-home'}|Grace Hopper|True"


def test_entry_point_tasks_are_registered_in_a_fresh_process(tmp_path, home):
    """A package ships a task through the ``searchgym.tasks`` entry-point group (a real
    installed-distribution layout on sys.path, read by importlib.metadata)."""
    task = make_project(tmp_path / "proj", name="shipped")
    site = tmp_path / "site"
    (site / "mytasks").mkdir(parents=True)
    (site / "mytasks" / "__init__.py").write_text(f"TASK_FILE = {str(task)!r}\n\ndef tasks():\n    return [TASK_FILE]\n")
    dist = site / "mytasks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mytasks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[searchgym.tasks]\nshipped = mytasks:tasks\n")
    env = {**_env_vars(home), "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-m", "searchgym", "envs", "list"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "searchgym/shipped" in r.stdout and "entry point shipped" in r.stdout
    r = subprocess.run([sys.executable, "-m", "searchgym", "task", "rm", "shipped"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "uninstall the package" in r.stderr


def test_broken_stored_task_is_skipped_with_a_warning(tmp_path, home):
    (home / "tasks").mkdir(parents=True)
    (home / "tasks" / "broken.yaml").write_text("name: broken\nqa: [\n")
    with pytest.warns(UserWarning, match="broken.yaml"):
        R.load_persistent_tasks()
    assert "searchgym/broken" not in gym.registry
    with pytest.raises(TaskFormatError):
        R.read_task_file(home / "tasks" / "broken.yaml")
