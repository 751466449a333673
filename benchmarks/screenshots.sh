#!/usr/bin/env bash
# What a person sees in MLflow's UI, as PNGs: the experiment's runs table (classic view), the latest sweep's saved view
# (table and charts) and one job run's page, taken
# with headless Chromium (Debian: apt-get install chromium) from a store flopsweep wrote. Look at them before calling a
# UI change done (issue 18).
#
#   bash benchmarks/screenshots.sh [STORE_DB] [OUT]   # defaults: outputs/mlflow.db, outputs/screenshots
#   EXPERIMENT=quickstart: that experiment's latest job and sweep (default: the latest job's experiment)
set -euo pipefail
command -v chromium >/dev/null || { echo "screenshots.sh: needs chromium on the PATH (Debian: apt-get install chromium)" >&2; exit 1; }
DB=$(realpath "${1:-outputs/mlflow.db}")
OUT=${2:-outputs/screenshots}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
PORT=${PORT:-5077}
mkdir -p "$OUT"
"$(dirname "$PY")/mlflow" ui --backend-store-uri "sqlite:///$DB" --host 127.0.0.1 --port "$PORT" >/dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.5; done
read -r EXPERIMENT RUN VIEW < <("$PY" - "$DB" "${EXPERIMENT:-}" <<'PYEOF'
import sys
from mlflow.tracking import MlflowClient
client = MlflowClient(f"sqlite:///{sys.argv[1]}")
# EXPERIMENT's latest job, else the latest job's experiment (the latest experiment may hold none: a projection's, a
# sweep that never started)
ids = [e.experiment_id for e in client.search_experiments() if sys.argv[2] in ("", e.name)]
runs = client.search_runs(ids, "tags.`flopsweep.kind` = 'job'", max_results=1,
                          order_by=["attributes.start_time DESC"]) if ids else []
if not runs:
    sys.exit(f"screenshots.sh: no flopsweep job in {sys.argv[1]}" + (f"'s experiment {sys.argv[2]!r}" if sys.argv[2]
             else "") + ": run make demo first")
run = runs[0]
sweep = client.search_runs([run.info.experiment_id], "tags.`flopsweep.kind` = 'sweep'", max_results=1,
                           order_by=["attributes.start_time DESC"])
view = f"flopsweep-{sweep[0].info.run_id}" if sweep else ""
print(run.info.experiment_id, run.info.run_id, view)
PYEOF
)
[ -n "${RUN:-}" ] || exit 1
shot() {
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=${SIZE:-2400,1000} --virtual-time-budget=15000 \
    --screenshot="$OUT/$1" "http://127.0.0.1:$PORT/#/$2" >/dev/null 2>&1
  echo "$OUT/$1"
}
shot runs_table.png "experiments/$EXPERIMENT?workflowType=machine_learning"
if [ -n "$VIEW" ]; then  # the latest sweep's saved view (flopsweep/sinks/views.py), as the sweep's last line gives it
  shot sweep_view.png "experiments/$EXPERIMENT/runs?viewStateShareKey=$VIEW&workflowType=machine_learning"
  shot sweep_charts.png "experiments/$EXPERIMENT/runs?viewStateShareKey=$VIEW&workflowType=machine_learning&compareRunsMode=CHART"
fi
shot run_page.png "experiments/$EXPERIMENT/runs/$RUN?workflowType=machine_learning"
# DOCS=docs/images: the README's images, as they were made: the view cropped to the page (MLflow's assistant panel
# left out), and the report's module and memory plots of the latest report under outputs/reports (make demo, then
# flopsweep-report quickstart); fewer colours, a smaller file
if [ -n "${DOCS:-}" ]; then
  "$PY" - "$OUT" "$DOCS" <<'PYEOF'
import sys
from pathlib import Path
from PIL import Image
shots, docs = Path(sys.argv[1]), Path(sys.argv[2])
docs.mkdir(parents=True, exist_ok=True)
for name, height in (("sweep_view", 480), ("sweep_charts", 1000)):
    Image.open(shots / f"{name}.png").convert("RGB").crop((0, 0, 1780, height)).quantize(colors=128).save(
        docs / f"mlflow_{name}.png", optimize=True)
report = max(Path("outputs/reports").glob("*/module_flops.png"), key=lambda p: p.stat().st_mtime).parent
for name in ("module_flops", "memory_breakdown"):
    Image.open(report / f"{name}.png").convert("RGB").quantize(colors=64).save(docs / f"report_{name}.png", optimize=True)
print(f"{docs}: mlflow_sweep_view.png, mlflow_sweep_charts.png, report_module_flops.png, report_memory_breakdown.png")
PYEOF
fi
