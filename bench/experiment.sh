#!/usr/bin/env bash
# MAE vs GPA-MAE ("teacher", "teacher + feature") vs a random encoder on the embedded data:
# the same demo recipe and number of steps for each, then weighted k-NN (k=20, T=0.07,
# cls token) and a linear probe (configs/linprobe.py:runlocal, BatchNorm + linear on the
# frozen cls token) on the embedded labelled faces (150 train / 50 test). ~20 min on 2 CPU cores.
# Usage: bash bench/experiment.sh [STEPS] [OUTDIR]     (defaults: 300, workdirs/experiment)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../scripts/venv.sh
source scripts/venv.sh
steps=${1:-300}
out=${2:-workdirs/experiment}
mkdir -p "$out"
: > "$out/results.jsonl"
for variant in mae teacher feature random; do
  case $variant in
    mae|teacher) args=(--config "configs/demo.py:$variant" --config.total_steps="$steps") ;;
    feature) args=(--config configs/demo.py --config.total_steps="$steps") ;;
    # the MAE recipe's architecture, one step at learning rate 0: the weights stay at their init
    random) args=(--config configs/demo.py:mae --config.total_steps=1 --config.optimizer.lr=-1
                  --config.optimizer.blr=0 --config.optimizer.warmup_steps=0) ;;
  esac
  mimjax train "${args[@]}" --workdir "$out/$variant" --config.snapshot_every=0
  mimjax eval knn --workdir "$out/$variant" --dataset embedded_faces > /dev/null
  mimjax eval linprobe --config configs/linprobe.py:runlocal --workdir "$out/$variant" > /dev/null
  python - "$out/$variant" "$variant" >> "$out/results.jsonl" <<'PY'
import json, os, sys
w, name = sys.argv[1:]
knn, lp = (json.load(open(os.path.join(w, f))) for f in ("knn.json", "linprobe.json"))
print(json.dumps({"variant": name, "knn_top1": knn["top1"], "linprobe_top1": lp["top1"]}))
PY
done
python - "$out/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| encoder | k-NN top-1 (%) | linear probe top-1 (%) |\n|---|---|---|")
for r in rows:
    print(f"| {r['variant']} | {r['knn_top1']:.1f} | {r['linprobe_top1']:.1f} |")
PY
