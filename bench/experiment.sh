#!/usr/bin/env bash
# MAE vs GPA-MAE ("teacher", "teacher + feature") vs a random encoder on the embedded data:
# the same demo recipe and number of steps for each, then weighted k-NN (k=20, T=0.07,
# cls token) on the embedded labelled faces (150 train / 50 test). ~15 min on 2 CPU cores.
# Usage: bash bench/experiment.sh [STEPS] [OUTDIR]     (defaults: 300, workdirs/experiment)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../scripts/venv.sh
source scripts/venv.sh
steps=${1:-300}
out=${2:-workdirs/experiment}
mkdir -p "$out"
: > "$out/results.jsonl"
for variant in mae teacher feature; do
  arg=$variant; [ "$variant" = feature ] && arg=""
  mimjax train --config "configs/demo.py${arg:+:$arg}" --workdir "$out/$variant" \
    --config.total_steps="$steps" --config.snapshot_every=0
  mimjax eval knn --workdir "$out/$variant" --dataset embedded_faces | tail -n 1 | \
    python -c "import json,sys; r=json.load(sys.stdin); r['variant']='$variant'; print(json.dumps(r))" >> "$out/results.jsonl"
done
mimjax eval knn --workdir "$out/mae" --dataset embedded_faces --random_init | tail -n 1 | \
  python -c "import json,sys; r=json.load(sys.stdin); r['variant']='random init'; print(json.dumps(r))" >> "$out/results.jsonl"
python - "$out/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| encoder | k-NN top-1 (%) |\n|---|---|")
for r in rows:
    print(f"| {r['variant']} | {r['top1']:.1f} |")
PY
