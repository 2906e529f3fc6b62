#!/usr/bin/env bash
# Two HC18 trainings started together on the same cores, against one alone: the seconds per
# epoch of each (median over its epochs after the first), for trainer=cpu's adaptive threads
# (CpuThreads) and for a fixed 2 threads each (what a plain torch process does on 2 cores).
#   experiments/cpu_speed/side_by_side.sh [DATA_ROOT] [EPOCHS]    (default ../shared/data, 3)
# Writes its runs under outputs/side_by_side/ (a new timestamped folder each time).
set -euo pipefail
root=${1:-../shared/data}
epochs=${2:-3}
out=outputs/side_by_side/$(date +%Y%m%d-%H%M%S)
train() {  # name, extra overrides...
  local name=$1; shift
  python -m src.train +experiment=hc18_cpu data.root="$root" trainer.max_epochs="$epochs" \
    test=false logger=csv callbacks.validation_images=null callbacks.progress_bar=null \
    hydra.run.dir="$out/$name" "$@" > /dev/null 2>&1
}
median_epoch() {  # the median "| N.N s" of a run's epoch lines, the first epoch left out
  grep -o '| [0-9.]* s$' "$1"/hc18_cpu.log | tail -n +2 | tr -d '|s ' | sort -n |
    awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'
}
train alone_auto
train alone_fixed2 callbacks.cpu_threads.threads=2
train pair_auto_a & train pair_auto_b & wait
train pair_fixed2_a callbacks.cpu_threads.threads=2 & train pair_fixed2_b callbacks.cpu_threads.threads=2 & wait
echo "| threads | alone: s/epoch | two at once: s/epoch (each) |"
echo "|---|---|---|"
echo "| CpuThreads (auto) | $(median_epoch "$out/alone_auto") | $(median_epoch "$out/pair_auto_a"), $(median_epoch "$out/pair_auto_b") |"
echo "| fixed 2 | $(median_epoch "$out/alone_fixed2") | $(median_epoch "$out/pair_fixed2_a"), $(median_epoch "$out/pair_fixed2_b") |"
grep -h "CPU threads" "$out"/*/hc18_cpu.log | sed 's/^/  /' || true
