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

from flopsweep.config.errors import hydra_error_line, not_a_flag
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``flopsweep`` command with ``argv`` (default: this process's arguments) and return its exit status:
    0, 1 when a job failed, 2 for a config Hydra cannot compose (said in one line)."""
    from hydra.errors import HydraException

    _room_for_deep_graphs()
    if {"--help", "-h"} & set(sys.argv[1:] if argv is None else argv):
        print(help_text())
        return 0
    if "--version" in (sys.argv[1:] if argv is None else argv):  # ours, not only Hydra's (it said Hydra 1.3.8)
        import hydra
        import torch

        from flopsweep.core import __version__

        print(f"flopsweep {__version__} (PyTorch {torch.__version__}, Hydra {hydra.__version__})")
        return 0
    flag = not_a_flag(list(sys.argv[1:] if argv is None else argv))
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
        error(hydra_error_line(err, sys.argv[1:]))
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


if __name__ == "__main__":
    entry()
