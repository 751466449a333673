"""The README's commands cannot rot: every ``flopsweep`` command in it composes and resolves, job by job for a sweep
(nothing is measured: a renamed key, group or preset fails here), and its ``flopsweep-project`` commands that need no
earlier run run as written."""

import itertools
import re
import shlex

import pytest
from omegaconf import OmegaConf

from flopsweep.cli.project import NAMES, main as project
from flopsweep.config.resolve import resolve
from tests.helpers import REPO, compose_config, run_main, shell_commands

# a GPU, a cluster, placeholders (a folder an earlier command made, a file of yours)
SKIP = ("device=cuda", "slurm", "<", "path/to/")


def readme_commands(tool: str) -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    lines = [line for block in blocks for line in shell_commands(block)]
    return [shlex.split(line)[1:] for line in lines
            if line.startswith(f".venv/bin/{tool} ") and not any(s in line for s in SKIP)]


def jobs_of(args: list[str]) -> list[list[str]]:
    """The jobs a command runs, each as its overrides: the sweep preset's values and the command's sweeps (comma
    lists, ``range(...)``, as Hydra's own override parser reads them), crossed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from flopsweep.config.compose import register_configs
    from flopsweep.config.schema import CONF_DIR

    overrides = [a for a in args if a != "-m" and not a.startswith(("hydra/", "hydra."))]
    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = {text: o for text, o in zip(overrides, parsed) if o.is_sweep_override()}
    fixed = [o for o in overrides if o not in swept]
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=fixed, return_hydra_config=True)
    params = dict(OmegaConf.select(cfg, "hydra.sweeper.params") or {})
    params.update((text.split("=", 1)[0], ",".join(o.sweep_string_iterator())) for text, o in swept.items())
    if cfg.hydra.sweeper.get("_target_", "").endswith("LayoutSweeper"):  # its jobs: the layouts it enumerates
        from flopsweep.sweep.layouts import enumerate_layouts, search_model, search_overrides

        layouts = enumerate_layouts(cfg.parallel.gpus, search_model(cfg))
        return [[*fixed, *search_overrides(layout)] for layout in (layouts[0], layouts[-1])]
    keys = list(params)
    return [[*fixed, *(f"{k}={v}" for k, v in zip(keys, values))]
            for values in itertools.product(*(str(params[k]).split(",") for k in keys))]


COMMANDS = [list(c) for c in dict.fromkeys(map(tuple, readme_commands("flopsweep")))]  # each once


def test_the_readme_has_commands_to_check():
    assert len(COMMANDS) >= 8 and any("+sweep=gpt3_family" in c for c in COMMANDS)


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_readme_flopsweep_command_resolves_every_job(args):
    jobs = jobs_of(args)
    assert jobs
    for job in jobs:
        resolve(compose_config(*job))


def test_the_readme_spells_each_project_command_as_a_subcommand():
    commands = readme_commands("flopsweep-project")
    assert {"train", "budget", "serve"} <= {c[0] for c in commands}
    assert all(c[0] in NAMES for c in commands)


@pytest.mark.parametrize("args", [pytest.param(a, marks=[pytest.mark.slow] if "budget" in a else [])  # 9 s
                                  for a in readme_commands("flopsweep-project") if "--model" in a], ids=" ".join)
def test_a_readme_project_command_runs(args, tmp_path):
    out = run_main(project, *args, "--no-log", cwd=tmp_path)
    assert out.returncode == 0 and out.stderr == "", out.stderr  # no note of an old spelling either
