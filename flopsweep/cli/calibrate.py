"""``flopsweep-calibrate``: measure the part this machine runs on (matmuls over shapes and dtypes, attention, memory
bandwidth over sizes, launch costs) and keep the profile where later jobs on this machine find it, to predict a
step's time from its counted ops; logged to MLflow too.

    flopsweep-calibrate --device cpu        # 20 to 35 s on 2 cores
    flopsweep-calibrate --device cuda       # a minute on an H100

A job timed on this part then records ``time/step_predicted_s`` beside its measured median; a ``device=meta`` job
predicts for any part with ``predict.hardware=<part or profile.json>``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from flopsweep.cli.parser import OneLineParser
from flopsweep.core.console import error, run_command, warning
from flopsweep.core.result import loaded
from flopsweep.core.text import plain
from flopsweep.core.errors import ConfigError


def main(argv: Optional[list[str]] = None) -> int:
    parser = OneLineParser(prog="flopsweep-calibrate", description=plain(__doc__))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's, one per core)")
    parser.add_argument("--quick", action="store_true", help="a coarse grid in seconds (a check, not a profile to "
                        "predict with)")
    parser.add_argument("--out", type=Path, help="the profile's file (default: the calibration folder, "
                        "$FLOPSWEEP_CALIBRATION_DIR or ~/.cache/flopsweep/calibration, named by the part)")
    parser.add_argument("--experiment", default="calibration", help="MLflow experiment (default calibration)")
    parser.add_argument("--uri", help="tracking URI (default: MLFLOW_TRACKING_URI, else the local store)")
    parser.add_argument("--store-dir", help="the local store's folder (default: outputs, unless "
                        "MLFLOW_TRACKING_URI is set)")
    parser.add_argument("--no-log", action="store_true", help="write the profile only, no MLflow run")
    args = parser.parse_args(argv)
    try:
        device = _device(args.device)
        if args.threads is not None and args.threads < 1:
            raise ConfigError("threads", args.threads, "must be >= 1")
    except ConfigError as err:
        error(str(err), "flopsweep-calibrate")
        return 2
    import torch

    from flopsweep.measure.calibrate import calibrate
    from flopsweep.measure.calibration import profile_path
    from flopsweep.measure.system import OtherWork

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with OtherWork() as others:  # the cores other processes kept busy while it measured (not its own threads)
        cal = calibrate(device, quick=args.quick,
                        tick=lambda what: print(f"calibrating {device}: {what} ({time.perf_counter() - start:.0f} s)",
                                                flush=True))
    busy = others.cores if device == "cpu" and loaded(others.cores, os.cpu_count() or 1, torch.get_num_threads()) \
        else None
    path = args.out or profile_path(cal.part)
    kept = busy is not None and args.out is None and path.is_file()
    if kept:  # the profile jobs find stays: a busy machine's figures go beside it
        path = path.with_suffix(".busy.json")
    path = cal.save(path)
    figures = cal.figures()
    print(f"{cal.part}: calibrated in {time.perf_counter() - start:.0f} s")
    for name, value in figures.items():
        print(f"  {name:34} {value:10.2f}")
    print(f"profile: {path} (digest {cal.digest()})")
    if busy is not None:
        warning(f"the machine was busy as it calibrated (other work kept {busy:.1f} of its {os.cpu_count()} cores "
                "busy): the profile's figures may be low, and every prediction made with it slow; " +
                (f"{profile_path(cal.part)} (the profile jobs use) is kept, this one beside it (move it there, or "
                 "give --out, to use it)" if kept else "calibrate again when it is idle"), "flopsweep-calibrate")
    if not args.no_log:
        from flopsweep.sinks.calibration import log_calibration
        from flopsweep.sinks.target import target_at

        target = target_at(args.uri, args.store_dir, args.experiment)
        print("logged:", log_calibration(target, path, cal.to_dict(), cal.digest(), figures))
    return 0


def _device(text: str) -> str:
    import torch

    if text == "cpu":
        return text
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError("device", text, "no CUDA device here")
        return text if text != "cuda" else "cuda:0"
    raise ConfigError("device", text, "must be cpu, cuda or cuda:N")


def entry() -> None:
    run_command(main)


if __name__ == "__main__":
    entry()
