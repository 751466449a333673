"""A job's step time predicted from its counted ops: the profile chosen (``predict.hardware``, else the device timed),
the prediction, and its metrics beside the measured ones."""

from __future__ import annotations

from typing import Any, Optional

from flopsweep.build.spec import JobSpec
from flopsweep.core import metrics as M
from flopsweep.core.errors import one_line
from flopsweep.core.hardware import accelerator
from flopsweep.measure.calibration import Calibration
from flopsweep.measure.count import StepCount
from flopsweep.measure.defaults import profile_for
from flopsweep.measure.predict import Prediction, predict
from flopsweep.measure.timing import TimingRecord

PHASE_METRICS = {"forward": M.TIME_FORWARD_PREDICTED, "backward": M.TIME_BACKWARD_PREDICTED,
                 "optimizer": M.TIME_OPTIMIZER_PREDICTED}


def predict_step(spec: JobSpec, count: Optional[StepCount],
                 timing: Optional[TimingRecord]) -> tuple[Optional[Prediction], dict[str, Any]]:
    """The prediction for this job (None where there is no count or no profile), and what ``info.prediction`` records
    of it (or why there is none)."""
    if count is None:
        return None, {}
    hardware = spec.predict.hardware
    if hardware is None and timing is None:
        return None, {}  # a meta job predicts only for a part it is given
    gpu = timing is not None and timing.device.startswith("cuda")
    try:
        cal, origin = profile_for(hardware, timing.device_name if timing is not None else None, gpu)
        if cal is None:
            return None, {"error": origin}
        prediction = predict(count.trace, cal, fused=bool(spec.predict.fused), autocast=spec.dtype.autocast)
    except Exception as err:  # noqa: BLE001 - whatever a profile holds, the job's measurements stand
        return None, {"error": f"not predicted: {one_line(err, 300)}"}
    notes = list(prediction.notes)
    if spec.device.is_meta and spec.dtype.autocast is not None:
        notes.append("counted on meta, which has no autocast: the matmuls are predicted in "
                     f"{spec.dtype.autocast}, the activations' bytes at float32 and autocast's weight casts left out")
    compared = timing is not None and _same_part(cal, timing)
    if compared and cal.device == "cpu" and cal.threads not in (None, timing.threads):
        notes.append(f"calibrated on {cal.threads} threads, timed on {timing.threads}: not compared")
        compared = False
    info = {"part": cal.part, "profile": origin, "digest": prediction.digest, "default": prediction.default,
            "fused": prediction.fused, "bound": prediction.bound(), "notes": notes, "of_timed_device": compared}
    if cal.date:
        info["calibrated"] = cal.date
    return prediction, info


def _same_part(cal: Calibration, timing: TimingRecord) -> bool:
    """Whether a profile is of the device the job timed (so that the two compare): its part is the timed device's name,
    or, for a GPU, the same row of the hardware table."""
    gpu = timing.device.startswith("cuda")
    if (cal.device == "cuda") != gpu:
        return False
    if cal.part == timing.device_name:
        return True
    return gpu and accelerator(cal.part) is not None and accelerator(cal.part) is accelerator(timing.device_name)


def prediction_metrics(prediction: Optional[Prediction], timing: Optional[TimingRecord], model_flops: Optional[int],
                       dtype: str) -> dict[str, float]:
    """``time/*_predicted_s`` per phase and for the step, its ratio to the measured median, what bounds it, and the
    MFU it predicts (model FLOPs over the predicted step at the part's peak in ``dtype``, where the part has one)."""
    if prediction is None:
        return {}
    m: dict[str, float] = {PHASE_METRICS[p]: t.seconds for p, t in prediction.phases.items() if p in PHASE_METRICS}
    m[M.TIME_STEP_PREDICTED] = prediction.seconds
    shares = prediction.shares()
    m[M.PREDICTED_SHARE_COMPUTE] = shares["compute"]
    m[M.PREDICTED_SHARE_MEMORY] = shares["memory"]
    m[M.PREDICTED_SHARE_LAUNCH] = shares["launch"]
    if timing is not None and timing.method == "full" and timing.step.median > 0:  # per_block leaves out the head
        m[M.TIME_STEP_PREDICTED_RATIO] = prediction.seconds / timing.step.median
    peak = prediction.peak.get(dtype)
    if model_flops and peak and prediction.seconds > 0:
        m[M.MFU_PREDICTED] = model_flops / prediction.seconds / peak
    return m
