"""No command destroys what it did not write.

Every command with an ``--out`` is run against a folder (or file) holding a user's data:
it must refuse in one line (exit 2) and leave every byte, name and mode as it was;
``--force`` overrides; its own earlier output is replaced as before. Also: temp folders
of a build killed by SIGTERM / SIGKILL, duplicate document ids, serve on a busy port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from searchgym.cli import OUTPUTS, build_parser, main
from searchgym.retrieval.fileio import ForeignOutputError, remove_dead_temps

SEARCHGYM = [sys.executable, "-m", "searchgym"]


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its bytes (files) and mode: equal snapshots = untouched."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, p.read_bytes() if p.is_file() else None)
    return out


@pytest.fixture()
def user_project(tmp_path, monkeypatch):
    """A user's project folder: a corpus, a QA file, notes; plus an empty SEARCHGYM_HOME."""
    monkeypatch.setenv("SEARCHGYM_HOME", str(tmp_path / "home"))
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "corpus.jsonl").write_text(json.dumps({"id": "d1", "contents": '"Ada"\nAda wrote programs.'}) + "\n")
    (proj / "qa.jsonl").write_text(json.dumps({"question": "Who wrote programs?", "golden_answers": ["Ada"]}) + "\n")
    (proj / "notes").mkdir()
    (proj / "notes" / "todo.txt").write_text("keep me\n")
    (proj / "config.json").write_text('{"hidden_size": 8}\n')  # looks like a HF model, is not a run
    return proj


def _commands(proj: Path, tmp: Path) -> dict[tuple[str, ...], list[str]]:
    """One invocation per command of OUTPUTS whose output is the user's folder/file."""
    qa = str(proj / "qa.jsonl")
    corpus = str(proj / "corpus.jsonl")
    return {
        ("index", "build"): ["index", "build", "--corpus", corpus, "--out", str(proj), "--retriever", "bm25"],
        ("index", "import"): ["index", "import", "--faiss", str(tmp / "x.faiss"), "--corpus", corpus, "--out", str(proj)],
        ("world",): ["world", "--preset", "smoke", "--out", str(proj)],
        ("model", "init"): ["model", "init", "--preset", "smoke", "--world", str(tmp), "--out", str(proj)],
        ("demos",): ["demos", "--world", str(tmp), "--kind", "diverse", "-n", "2", "--out", qa],
        ("eval",): ["eval", "--policy", "random", "--env", "searchgym/SingleHop-v0", "-n", "1", "--out", qa],
        ("train", "sft"): ["train", "sft", "--model", str(tmp), "--demos", qa, "--out", str(proj)],
        ("train", "rl"): ["train", "rl", "--init", str(tmp), "--objective", "grpo", "--out", str(proj)],
        ("export", "verl"): ["export", "verl", "--env", "searchgym/SingleHop-v0", "--out", str(proj / "notes" / "todo.txt")],
        ("run",): ["run", "--preset", "smoke", "--out", str(proj)],
        ("merge",): ["merge", str(tmp), "--out", str(proj)],
        ("compare",): ["compare", str(tmp), str(tmp), "--out", str(proj / "notes" / "todo.txt")],
        ("contrast",): ["contrast", str(tmp), str(tmp), "--out", str(proj / "notes" / "todo.txt")],
    }


def test_every_command_with_an_out_is_guarded():
    """A new command with --out must declare its own-output marker in searchgym.cli.OUTPUTS."""
    import argparse

    parser = build_parser()
    found = set()

    def walk(p, words):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    walk(sp, words + (name,))
        if "--out" in p._option_string_actions:
            found.add(words)

    walk(parser, ())
    assert found == set(OUTPUTS), f"unguarded: {found - set(OUTPUTS)}; stale: {set(OUTPUTS) - found}"
    for words in OUTPUTS:
        args = parser.parse_args(list(words) + _required_stub(words) + ["--force"])
        assert args.force is True


def _required_stub(words):
    return {
        ("index", "build"): ["--corpus", "c", "--out", "o"], ("index", "import"): ["--faiss", "f", "--corpus", "c", "--out", "o"],
        ("world",): [], ("model", "init"): ["--world", "w", "--out", "o"],
        ("demos",): ["--world", "w", "--kind", "narrow", "--out", "o"], ("eval",): ["--policy", "random", "--env", "e"],
        ("train", "sft"): ["--model", "m", "--demos", "d", "--out", "o"], ("train", "rl"): [],
        ("export", "verl"): ["--out", "o.parquet"], ("run",): [], ("merge",): ["r", "--out", "o"],
        ("compare",): ["a", "b", "--out", "o.md"], ("contrast",): ["a", "b", "--out", "o.md"],
    }[words]


@pytest.mark.parametrize("key", sorted(OUTPUTS), ids=lambda k: "-".join(k))
def test_refusal_leaves_user_folder_byte_identical(key, user_project, tmp_path, capsys):
    before = snapshot(tmp_path)
    argv = _commands(user_project, tmp_path)[key]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "refusing to" in err and "--force" in err, err
    assert snapshot(tmp_path) == before


def test_refusal_in_a_fresh_process_has_no_traceback(user_project, tmp_path):
    before = snapshot(tmp_path)
    r = subprocess.run(SEARCHGYM + ["index", "build", "--corpus", str(user_project / "corpus.jsonl"),
                                    "--out", str(user_project)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert snapshot(tmp_path) == before


def test_own_output_is_replaced_and_force_overrides(user_project, tmp_path, capsys):
    corpus = str(user_project / "corpus.jsonl")
    idx = tmp_path / "idx"
    assert main(["index", "build", "--corpus", corpus, "--out", str(idx), "--retriever", "bm25"]) == 0
    assert main(["index", "build", "--corpus", corpus, "--out", str(idx), "--retriever", "bm25"]) == 0  # its own
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["index", "build", "--corpus", corpus, "--out", str(empty), "--retriever", "bm25"]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("x")
    assert main(["index", "build", "--corpus", corpus, "--out", str(other), "--retriever", "bm25", "--force"]) == 0
    assert not (other / "mine.txt").exists() and (other / "manifest.json").is_file()
    # a world over its own earlier output: allowed; over an index folder: refused
    w = tmp_path / "w"
    assert main(["world", "--preset", "smoke", "--out", str(w)]) == 0
    assert main(["world", "--preset", "smoke", "--seed", "1", "--out", str(w)]) == 0
    assert main(["world", "--preset", "smoke", "--out", str(idx)]) == 2
    capsys.readouterr()


def test_library_writers_refuse_too(user_project, tmp_path):
    from searchgym.envs.world import WorldConfig, generate_world, write_world
    from searchgym.retrieval import build_index

    before = snapshot(tmp_path)
    with pytest.raises(ForeignOutputError, match="not an index folder"):
        build_index(user_project / "corpus.jsonl", user_project, kind="bm25")
    with pytest.raises(ForeignOutputError, match="not a searchgym world"):
        write_world(generate_world(WorldConfig(preset="smoke")), user_project)
    assert snapshot(tmp_path) == before
    with pytest.raises(ForeignOutputError, match="not a folder"):
        build_index(user_project / "corpus.jsonl", user_project / "qa.jsonl", kind="bm25")


def test_train_out_from_config_yaml_is_guarded(user_project, tmp_path, capsys):
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(f"init: {tmp_path}\nout: {user_project}\n")
    before = snapshot(tmp_path)
    assert main(["train", "rl", "--config", str(cfg), "--objective", "grpo"]) == 2
    assert "refusing" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temps_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    target = tmp_path / "idx"
    dead = tmp_path / f".idx.{_dead_pid()}-abc.tmp"
    dead.mkdir()
    (dead / "docs.jsonl").write_text("x")
    old = tmp_path / f".idx.old.{_dead_pid()}"
    old.mkdir()
    live = tmp_path / f".idx.{os.getpid()}-xyz.tmp"
    live.mkdir()
    foreign = tmp_path / ".idx.notes.tmp"  # not a name this module makes: never touched
    foreign.write_text("x")
    removed = remove_dead_temps(target)
    assert sorted(removed) == sorted([dead, old])
    assert live.is_dir() and foreign.is_file()


@pytest.mark.slow
def test_sigterm_during_a_dense_build_leaves_no_temp(tmp_path):
    from searchgym.retrieval import sample_corpus_path

    out = tmp_path / "idx"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(SEARCHGYM + ["index", "build", "--corpus", str(sample_corpus_path()), "--out", str(out),
                                      "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".idx.*.tmp/docs.jsonl")):
        time.sleep(0.05)
    assert list(tmp_path.glob(".idx.*.tmp")), "the build's temp folder never appeared"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert list(tmp_path.iterdir()) == [], "SIGTERM left files behind"


def test_duplicate_document_ids_are_refused(tmp_path):
    from searchgym.retrieval import build_index
    from searchgym.retrieval.base import CorpusFormatError

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "contents": f'"T{n}"\nbody {n}'}) + "\n"
                              for n, i in enumerate(["a", "b", "a"])))
    with pytest.raises(CorpusFormatError, match=r"duplicate document id 'a' \(records 1 and 3\)"):
        build_index(corpus, tmp_path / "idx", kind="bm25")
    assert not (tmp_path / "idx").exists()


def test_serve_on_a_busy_port_fails_before_its_banner(tmp_path):
    from searchgym.retrieval import build_index, sample_corpus_path

    idx = build_index(sample_corpus_path(), tmp_path / "idx", kind="bm25")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        r = subprocess.run(SEARCHGYM + ["serve", "--index", str(idx), "--port", str(port)],
                           capture_output=True, text=True, timeout=120)
    finally:
        busy.close()
    assert r.returncode == 2
    assert r.stdout == "", "the banner was printed although the port is busy"
    assert r.stderr.strip().count("\n") == 0 and f"cannot listen on 127.0.0.1:{port}" in r.stderr
