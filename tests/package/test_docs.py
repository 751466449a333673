"""The docs' commands cannot rot (issue 30): every fenced shell block of README.md and docs/*.md is valid bash as
written, with no placeholder a paste would run (a literal ``...``) and no bare ``pip``/``python`` where the project's
environment is meant; every ``flopsweep`` command in docs/ composes and resolves its first and last job (nothing is
measured); every Python block compiles. README's commands are checked job by job in tests/package/test_readme.py."""

import re
import shlex
import subprocess

import pytest

from flopsweep.config.resolve import resolve
from tests.helpers import REPO, compose_config, shell_commands
from tests.package.test_readme import SKIP, jobs_of

FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def blocks(*languages: str) -> list[tuple[str, str]]:
    """``(file:line, body)`` of every fenced block in one of ``languages``."""
    found = []
    for path in FILES:
        text = path.read_text()
        for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
            if match.group(1) in languages:
                where = f"{path.relative_to(REPO)}:{text[:match.start()].count(chr(10)) + 1}"
                found.append((where, match.group(2)))
    return found


SHELL = blocks("bash", "sh", "shell")


def test_the_docs_have_shell_blocks_to_check():
    assert len(SHELL) >= 30 and any(where.startswith("docs/") for where, _ in SHELL)


@pytest.mark.parametrize("body", [b for _, b in SHELL], ids=[w for w, _ in SHELL])
def test_a_shell_block_is_valid_bash_with_nothing_a_paste_would_trip_on(body):
    parsed = subprocess.run(["bash", "-n"], input=body, text=True, capture_output=True)
    assert parsed.returncode == 0, parsed.stderr  # an unquoted range(1,11) fails here
    for command in shell_commands(body):
        words = shlex.split(command, comments=True)
        assert "..." not in words, command
        assert not [w for w in words if re.search(r"path/to/|\bmypkg\b", w)], f"{command!r}: a placeholder"
        assert not words or words[0] not in ("pip", "python", "python3", "flopsweep", "pytest"), \
            f"{command!r}: the environment's own (.venv/bin/{words[0]}) is meant"


def test_a_transcripts_command_pastes_as_the_shell_blocks_do():
    """``$ flopsweep ...`` in a printed session: pasted, it is not found (127); the environment's own is meant."""
    bare = [f"{path.name}:{n}" for path in FILES for n, line in enumerate(path.read_text().splitlines(), 1)
            if re.match(r"\$ (pip|python3?|flopsweep[\w-]*|pytest) ", line)]
    assert not bare


def docs_commands() -> list[tuple[str, list[str]]]:
    found = []
    for where, body in SHELL:
        if where.startswith("README"):
            continue
        for line in shell_commands(body):
            if line.startswith(".venv/bin/flopsweep ") and not any(s in line for s in SKIP):
                found.append((where, shlex.split(line)[1:]))
    return found


COMMANDS = docs_commands()


@pytest.mark.slow  # 16 commands, the HF presets' configs built: some 20 s
@pytest.mark.parametrize("args", [a for _, a in COMMANDS], ids=[f"{w} {' '.join(a)[:60]}" for w, a in COMMANDS])
def test_a_docs_flopsweep_command_resolves_its_jobs(args):
    jobs = jobs_of(args)
    assert jobs
    for job in {0: jobs[0], len(jobs) - 1: jobs[-1]}.values():
        resolve(compose_config(*job))


def test_every_documented_flopsweep_command_says_its_device():
    """A command that only counts says device=meta (the default, cpu, times a 2,048-token model for minutes); one
    that times says device=cpu or cuda; a sweep preset sets its own."""
    for where, body in SHELL:
        for line in shell_commands(body):
            if line.startswith(".venv/bin/flopsweep ") and "--help" not in line:
                assert "device=" in line or "+sweep=" in line, f"{where}: {line}"


PYTHON = blocks("python")


@pytest.mark.parametrize("body", [b for _, b in PYTHON], ids=[w for w, _ in PYTHON])
def test_a_python_block_compiles(body):
    compile(body, "<docs>", "exec")


@pytest.mark.slow  # two real sweeps of the GPT-3 family on meta: some 40 s
def test_the_projection_docs_pandas_block_runs_as_written_after_its_sweep_ran_twice(tmp_path):
    """docs/projection.md: the sweep of section 1, run twice (as a user does), then section 2's block as written."""
    import contextlib
    import io
    import os

    from tests.helpers import run_app

    for _ in range(2):
        done = run_app("+sweep=gpt3_family", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    ((_, body),) = [(w, b) for w, b in PYTHON if w.startswith("docs/projection.md") and "load_runs" in b]
    before = os.getcwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(body, "docs/projection.md", "exec"), {})
    finally:
        os.chdir(before)


def test_the_readmes_training_loop_block_runs_as_written():
    """README's own-loop example, pasted into Python: a model, a step, the meter around it (a newcomer found the
    block's names undefined and a literal ``...``)."""
    import contextlib
    import io

    ((_, body),) = [(w, b) for w, b in PYTHON if w.startswith("README") and "flopsweep.meter" in b]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(body, "README.md", "exec"), {})
    flops, seconds = out.getvalue().split()
    assert int(float(flops)) == 2 * 8 * (512 * 2048 + 2048 * 512) and float(seconds) > 0  # two linears' products


def test_a_time_a_command_is_said_to_take_says_on_what():
    """``# about 35 s``: a newcomer on a busy machine took twice as long and doubted the tool; every time quoted beside
    a command says its machine (2 idle cores, an H100), as the figures in docs/benchmarks.md do."""
    bare = [f"{where}: {line.strip()}" for where, body in SHELL for line in body.splitlines()
            if "#" in line and re.search(r"#.*(?<!after )\b(\d+ ?(s|min)|a few minutes)\b", line)
            and not re.search(r"idle cores|H100|H200", line.split("#", 1)[1])]
    assert not bare
