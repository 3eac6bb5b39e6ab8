#!/usr/bin/env bash
# The main job on the embedded default, end to end, on one machine:
#   set up .venv -> start a local Ray head (token auth) + MLflow server (127.0.0.1, SQLite) ->
#   generate the shapes benchmark (MSRVTT layout) -> `ray job submit` training with 2 DDP workers ->
#   print the R@K/MdR table and the MLflow URL. The servers stay up; stop them with cluster/stop_local.sh.
# Extra arguments are passed to the training job as config overrides (e.g. train.epochs=2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash cluster/setup_env.sh
VENV="${ETVA_VENV:-$ROOT/.venv}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

CONFIG="${ETVA_CONFIG:-ray_jobs/configs/shapes.yaml}"
DATA_ROOT="${ETVA_DATA_ROOT:-$ROOT/data/shapes}"
RUN_NAME="${ETVA_RUN_NAME:-shapes-$(date +%Y%m%d-%H%M%S)}"

bash cluster/start_local.sh
# shellcheck disable=SC1091
source "${ETVA_STATE_DIR:-$ROOT/runs/local}/env.sh"

echo "[quickstart] generating the shapes benchmark in $DATA_ROOT (reused when already there)"
SYNTH_ARGS=$("$VENV/bin/python" - "$CONFIG" <<'PY'
import sys
from etva.config import load_config
c = load_config(sys.argv[1]).data.synth
print(f"--num-videos {c.num_videos} --seed {c.seed} --width {c.width} --height {c.height} --fps {c.fps} "
      f"--duration {c.duration_s} --captions-per-video {c.captions_per_video}")
PY
)
# shellcheck disable=SC2086
"$VENV/bin/etva" data synth --out "$DATA_ROOT" $SYNTH_ARGS

echo "[quickstart] submitting training ($CONFIG, run $RUN_NAME) to $RAY_API_SERVER_ADDRESS"
export ETVA_GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
"$VENV/bin/ray" job submit --working-dir "$ROOT" \
  --runtime-env-json "{\"env_vars\": {\"ETVA_GIT_COMMIT\": \"$ETVA_GIT_COMMIT\", \"HF_HUB_OFFLINE\": \"1\"}}" \
  -- python -m ray_jobs.train --config "$CONFIG" --run-name "$RUN_NAME" \
  "data.root=$DATA_ROOT" "ray.storage_path=$ROOT/runs/ray" "mlflow.tracking_uri=$MLFLOW_TRACKING_URI" "$@"

cat <<MSG

[quickstart] done. Explore the run in the MLflow UI: $MLFLOW_TRACKING_URI
             Ray dashboard / Jobs API: $RAY_API_SERVER_ADDRESS
             Stop the servers: bash cluster/stop_local.sh
MSG
