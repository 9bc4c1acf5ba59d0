"""The README's two commands are the ones CI and users run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README must start with a bash block of commands"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = text.index("```bash")
    # nothing but the title before the commands
    assert text[:first_block].strip().startswith("# searchgym")
    assert len(text[:first_block].strip().splitlines()) == 1
    assert _readme_commands() == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    lines = [l.strip() for l in ci.splitlines() if l.strip() and not l.strip().startswith("#")]
    assert lines[-1].startswith("exec make test"), lines[-1]
    assert "make test" in _readme_commands()


def test_makefile_installs_pinned_torch_first():
    mk = (ROOT / "Makefile").read_text()
    torch_line = mk.index("-c constraints.txt torch==2.13.0")
    project_line = mk.index("-c constraints.txt -e '.[dev]'")
    assert torch_line < project_line
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
