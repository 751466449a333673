"""``flopsweep``: measure one configuration, or sweep many (``-m``, ``+sweep=NAME``). The process around the job task
(:mod:`flopsweep.sweep.app`): the Hydra app that calls it, the stack's room, SIGINT and SIGTERM turned into a clean
end, a store's password kept from Hydra, Hydra's errors said in one line with the exit status, and what a sweep's
process freezes after its jobs."""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
from typing import Optional, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from flopsweep.config.schema import CONF_DIR
from flopsweep.core.console import error, run_command
from flopsweep.sinks.target import hide_passwords
from flopsweep.sweep import state
from flopsweep.sweep.app import run_one


HELP = """usage: flopsweep [group=option ...] [key=value ...]      one configuration
       flopsweep -m key=a,b key=c,d ...                     a sweep: every combination
       flopsweep +sweep=NAME [key=value ...]                a preset sweep

Measures models' FLOPs (forward, backward, optimizer step, decode steps; counted at PyTorch's dispatcher, exact),
parameters, memory and step times, on a CPU, a CUDA GPU or on meta (counts and sizes only: any size, no memory),
for one configuration or a sweep; each job's folder under outputs/, its run in MLflow.

    flopsweep model=llama3_1_8b device=meta                  count a preset on meta
    flopsweep model=gpt2_small device=cpu batch.size=8       count and time it on the CPU
    flopsweep +sweep=gpt3_family                             the GPT-3 sizes, side by side
    flopsweep model=gpt3_175b device=meta dtype=mixed_bf16 batch.size=1536 parallel.tp=8 parallel.pp=8 \\
        parallel.dp=16 parallel.zero=1 predict.hardware=H100  a parallel layout, counted rank by rank, its step
                                                              predicted

groups (group=option):
{groups}

keys of their own: workload=train|inference|generate (a training step, a forward pass, or a prompt then decoding
with a KV cache: generate.new_tokens); batch.size (a number, or max), batch.seq_len; measure.* (repeats, timing,
compile, ...); predict.hardware (a part of the hardware table, or a profile); parallel.* (dp, tp, pp, cp, ep, zero,
recompute, micro_batch_size, ...); skip_existing=true (a resume: measures only what is missing).
flopsweep --cfg job [overrides] prints the composed config; --hydra-help, Hydra's own help.

the other commands (each with --help):
  flopsweep-project    what training, a compute budget or serving costs (train, budget, serve)
  flopsweep-sync       log to MLflow the jobs a store missed
  flopsweep-report     a sweep's plots and tables
  flopsweep-calibrate  measure this machine's part, for predicted step times
  flopsweep-server     a shared MLflow tracking server (start, run, stop, status)
README.md and docs/ say more."""


def entry() -> None:
    run_command(main)


def help_text() -> str:
    """``flopsweep --help``: what it does, each config group's options (the sweep presets with what they run), its
    own keys and the other commands."""
    import textwrap

    from flopsweep.config.compose import public_options

    lines = []
    for group, options in public_options().items():
        if group == "sweep":
            for name, about in options:  # each whole, wrapped under itself (cut at 91 characters, it lost words)
                lines += textwrap.wrap(about.replace("`", ""), width=118, initial_indent=f"  +sweep={name:<17} ",
                                       subsequent_indent=" " * 27)
        elif len(options) > 1:  # batch's one option is its defaults
            lines += textwrap.wrap(", ".join(name for name, _ in options), width=118, initial_indent=f"  {group}: ",
                                   subsequent_indent=" " * (len(group) + 4))
    return HELP.format(groups="\n".join(lines))


def _room_for_deep_graphs(limit: int = 256 << 20) -> None:
    """Let the stack grow to 256 MiB (address space; pages are used only as needed). Freeing a long autograd
    chain recurses once per node: ResNet-BK's O(N) recurrence at N >= 3500 overflows the default 8 MiB and
    the process dies of a segfault, taking the rest of the sweep with it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft != resource.RLIM_INFINITY and soft < limit:
        resource.setrlimit(resource.RLIMIT_STACK, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    """One job a call (a multirun's launcher calls it for each, in whichever process runs the job: this one, a
    joblib worker, a Slurm task): the job task, then in a sweep's process what stays frozen."""
    began = time.monotonic()
    run_one(cfg)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        _freeze_what_stays(time.monotonic() - began)


def _freeze_what_stays(seconds: float) -> None:
    """After a sweep process's first job, and after every job that took over a second: a full collection, then what
    is left leaves the garbage collector's view (``gc.freeze``), so that later collections look at later jobs'
    objects only. What the imports made (torch, Hydra, MLflow, SQLAlchemy: some 300k objects) lives as long as the
    process; so do some 17k objects a rank-by-rank layout count leaves held (PyTorch's fake-tensor and DTensor state,
    about 3.5 MiB a job: ``benchmarks/bench_layout_search.py leftovers``). joblib's workers collect after every task
    that ends over a second after the last collection: 0.4 s on 2 cores with the imports in view, a second more by
    the end of a 312-layout search with the layouts' objects in view; a few ms frozen. Objects are still freed by
    reference count as usual; the collection just before leaves no cyclic garbage frozen. A job under a second skips
    it (joblib does not collect after it either)."""
    if gc.get_freeze_count() and seconds < 1.0:
        return
    gc.collect()
    gc.freeze()


def _what_is_left(sweep: state.SweepState) -> str:
    """After a disk that cannot be written stopped the command: what finished, and how to go on."""
    if sweep.sweep_dir and any(sweep.sweep_dir.glob("*/result.json")):
        return (f"the sweep stopped; what finished is in {sweep.sweep_dir}: make room and run the same command with "
                "skip_existing=true to measure the rest")
    return "the job's numbers are above" if sweep.unwritten else "nothing was measured"


def _group_key(group: str) -> str:
    """How an option of ``group`` is given: ``model=NAME``; a preset sweep is added to the defaults, ``+sweep=NAME``
    (``sweep=NAME`` fails)."""
    return "+sweep" if group == "sweep" else group


def _dotted(name: str) -> Optional[str]:
    """The key a top-level ``name`` that is none stands for: a group's key with ``_`` for its dot (``batch_size``:
    ``batch.size``) or a group's key alone (``seq_len``: ``batch.seq_len``; not a model's field); None if neither."""
    from flopsweep.config.compose import known_keys

    group, _, field = name.partition("_")
    if field in known_keys(group):
        return f"{group}.{field}"
    return next((f"{group}.{name}" for group in known_keys("") if group != "model" and name in known_keys(group)),
                None)


_HYDRA_FLAGS = {"--hydra-help", "--version", "--cfg", "--resolve", "--package", "--run", "--multirun",
                "--shell-completion", "--config-path", "--config-name", "--config-dir", "--experimental-rerun", "--info"}


def _not_a_flag(args: list[str]) -> Optional[str]:
    """The line for a ``--name`` that is none of Hydra's flags (``--model gpt2_small``, ``--batch 4``): flopsweep
    takes overrides, key=value, and the one meant where it is plain; None where every flag is Hydra's."""
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if not arg.startswith("--") or name in _HYDRA_FLAGS:
            continue
        from flopsweep.config.compose import known_keys, public_options  # (the families, torch: only for a flag)

        key = name[2:].replace("-", "_")
        value = value or (args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else "")
        options = dict(public_options().get(key, []))
        dotted = _dotted(key) or (f"{key}.size" if "size" in known_keys(key) else None)  # --batch: batch.size
        meant = f"did you mean {_group_key(key)}={value}?" if value in options else \
            f"did you mean {dotted}={value}?" if dotted and value else "model=gpt2_small, batch.size=8"
        return f"{name}: not a flag of flopsweep, which takes overrides, key=value ({meant})"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``flopsweep`` command with ``argv`` (default: this process's arguments) and return its exit status:
    0, 1 when a job failed, 2 for a config Hydra cannot compose (said in one line)."""
    from hydra.errors import HydraException

    _room_for_deep_graphs()
    if {"--help", "-h"} & set(sys.argv[1:] if argv is None else argv):
        print(help_text())
        return 0
    flag = _not_a_flag(list(sys.argv[1:] if argv is None else argv))
    if flag:  # argparse's usage lists Hydra's own flags, which a newcomer does not want
        error(flag)
        return 2
    # Hydra prints a composition error over many lines (a missing option lists every file of the group): have it
    # raise instead, and say it in one line; HYDRA_FULL_ERROR=1 set by the user still gives the whole story
    asked = os.environ.get("HYDRA_FULL_ERROR")
    sweep = state.begin(full_errors=asked == "1")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    saved_argv = sys.argv
    # a store's password never reaches Hydra: not its launcher's lines nor the files it writes (the address is kept
    # in this process's environment, sinks/target.py)
    sys.argv = [saved_argv[0] if saved_argv else "flopsweep",
                *hide_passwords(saved_argv[1:] if argv is None else list(argv))]
    handlers = {signum: signal.signal(signum, state.on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    unraisable = sys.unraisablehook
    state.keep_swallowed_interrupts()
    try:
        app()
    except (HydraException, OmegaConfBaseException, OSError) as err:
        # a disk that cannot be written: the sweep's or the run's folder not made, or Hydra's own files (the sweep's
        # multirun.yaml) on a disk full before any job
        disk = state.disk_error(err)
        if sweep.full_errors or (disk is None and not isinstance(err, (HydraException, OmegaConfBaseException))):
            raise  # an OSError of another kind (Hydra's missing config is one and is said below)
        if disk is not None:
            error(f"{state.Unwritable(sweep.sweep_dir, disk)}; {_what_is_left(sweep)}")
            return 1
        error(hydra_error_line(err))
        return 2
    except state.Unwritable as err:
        error(f"{err}; {_what_is_left(sweep)}")
        return 1
    except KeyboardInterrupt as err:
        signum = state.signal_of(err)
        then = (f"what finished is in {sweep.sweep_dir}; run the same command with skip_existing=true to measure "
                "the rest" if sweep.sweep_dir else f"what the job measured before it is in {sweep.cut}" if sweep.cut
                else "the job was not measured")
        print(f"flopsweep: interrupted by {signal.Signals(signum).name}: {then}", file=sys.stderr)
        return 128 + signum
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        sys.unraisablehook = unraisable
        sys.argv = saved_argv
        if asked is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = asked
    return 2 if sweep.refused else 1 if sweep.failed else 0


def hydra_error_line(err: BaseException) -> str:
    """One line of a Hydra or OmegaConf error: its lines joined, OmegaConf's key and type lines left out (the key is
    in the message), the options of a group that has no such option listed after it (less the internal ``_``
    ones; not the search path), and the OmegaConf error that caused it."""
    import re

    from flopsweep.config.compose import LISTED_BY, known_keys, public_options
    from flopsweep.core.errors import nearest, not_one_of
    from flopsweep.core.hardware import DTYPE_SPELLINGS

    def lines_of(text: str) -> tuple[list[str], list[str]]:
        kept, options, listing = [], [], False
        for line in (raw.strip() for raw in text.splitlines()):
            if line.startswith("Config search path"):
                break
            if not line or line.startswith(("full_key:", "object_type=", "reference_type=")):
                continue
            if line.startswith("Available options in"):
                listing = True
            elif listing:
                options += [line] if not line.startswith("_") else []
            else:
                kept.append(line)
        return kept, options

    kept, options = lines_of(str(err))
    message = " ".join(kept).replace("In 'config': ", "")
    cause = " ".join(lines_of(str(err.__cause__))[0]) if isinstance(err.__cause__, OmegaConfBaseException) else ""
    enum = re.match(r"Error merging override ([\w.]+)=(\S*)$", message)
    choices = re.match(r"Invalid value '[^']*', expected one of \[([^\]]*)\]", cause)
    if enum and choices:  # a closed set's key (workload=infer): as the schema's other refusals read
        key, value, names = enum.group(1), enum.group(2), [n.strip() for n in choices.group(1).split(",")]
        near = nearest(value, names)
        return f"{key}={value!r}: must be one of {', '.join(names)}" + (f" (did you mean {near}?)" if near else "")
    typed = re.match(r"Value '.*' (?:of type '\w+' could not be converted to (Integer|Float)|is not a valid (bool))",
                     cause)
    if enum and typed:  # batch.seq_len=abc: as the schema's other refusals read, not OmegaConf's merge message
        kind = {"Integer": "an integer", "Float": "a number", "bool": "true or false"}[typed.group(1) or typed.group(2)]
        return f"{enum.group(1)}={enum.group(2)!r}: must be {kind}"
    ambiguous = re.match(r"Ambiguous value for argument '([^']+)'", message)
    if ambiguous:  # model=a,b without -m: Hydra's three numbered choices; a sweep is what is meant
        return (f"{ambiguous.group(1)}: values with commas run one job each only in a sweep: flopsweep -m "
                f"{ambiguous.group(1)} ... (or key=[a,b] for a list, key='a,b' for a string)")
    unknown = re.match(r"Could not override '([^']+)'\. To append to your config use \+", message)
    if unknown:  # Hydra's advice is to append the key with +: a typo is meant far more often
        key = unknown.group(1)
        parent, _, name = key.rpartition(".")
        keys = [k for k in known_keys(parent) if k != name]  # not itself: refused here
        near = nearest(name, keys, cutoff=0.7)
        meant = f"{parent}.{near}" if parent and near else near or (_dotted(name) if not parent else None)
        said = [f"did you mean {meant}?"] if meant else [f"{parent or 'the config'}'s keys: {', '.join(keys)}"] \
            if parent != "model" and keys else []
        if key.startswith("model."):  # a model's fields are read where added (+model.hidden_act=...); others never
            said.append(f"+{key}=... adds one")
        return f"{key}: no such key" + (f" ({' '.join(said)})" if said else "")
    wanted = re.match(r"Could not find '([^'/]+)/([^']+)'", message)
    if wanted and options:  # a group's option that is none (model=gpt2_smal): the nearest, not 65 presets
        group, value = wanted.groups()
        key = _group_key(group)
        said = {"gpu": "cuda", **DTYPE_SPELLINGS}  # device=gpu meant cuda, not the nearest spelling (cpu)
        return f"{key}={value}: no such option ({not_one_of(value, options, LISTED_BY, key=key, spellings=said)})"
    override = getattr(err, "override", None)  # a line Hydra's grammar cannot parse
    if override and "missing EQUAL" in message:  # a bare word: what it names, as an override
        named = [f"{_group_key(group)}={override}" for group, options in public_options().items()
                 if override in dict(options)]
        return f"{override}: an override is key=value" + (f" (did you mean {named[0]}?)" if named else
                                                            " (model=gpt2_small, batch.size=8)")
    if override:
        message = f"{override}: {message}"
    if options:
        message += f" (options: {', '.join(options)})"
    return message + (f": {cause}" if cause and cause not in message else "")


if __name__ == "__main__":
    entry()
