#!/usr/bin/env bash
# Screen HC18 recipe ideas on one fold, one training at a time (two at once on 2 cores fight
# over them: README, "CPU speed"): each variant is hc18_cpu (hc18_unet_cpu in bf16 +
# channels-last) with one change, trained, then tested on its held-out fold at the original
# size. (The study's screen ran as hc18_unet_cpu trainer.precision=bf16-mixed
# model.channels_last=true, the same settings without the CpuThreads callback.) Then pool each: python experiments/hc18/pool_folds.py <dir>/checkpoints
#   experiments/hc18/screen.sh FOLD [VARIANT ...]   (default: every variant below)
# A variant whose folder exists is skipped (nothing is retrained or overwritten).
set -euo pipefail
fold=${1:?usage: screen.sh FOLD [VARIANT ...]}
shift
declare -A VARIANTS=(
  [base]=""
  [epochs40]="trainer.max_epochs=40"
  [width32]="model.base_channels=32"
  [size192x288]="data.image_size=[192,288]"
  [resnet18]="model=smp_unet model.encoder_name=resnet18 ~model.base_channels model.channels_last=true"
  [mobilenet_v2]="model=smp_unet model.encoder_name=mobilenet_v2 ~model.base_channels model.channels_last=true"
  [attention]="model=attention_unet model.channels_last=true"
  [dice_focal]="loss=dice_focal"
  [ema]="callbacks=ema"
  [aug_basic]="augmentation=basic"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(base epochs40 width32 size192x288 resnet18 mobilenet_v2 attention dice_focal ema aug_basic)
for name in "${names[@]}"; do
  [ -n "${VARIANTS[$name]+set}" ] || { echo "unknown variant $name (known: ${!VARIANTS[*]})" >&2; exit 2; }
  out=multirun/hc18_screen/${name}_f${fold}
  if [ -e "$out" ]; then echo "exists, skipped: $out"; continue; fi
  # shellcheck disable=SC2086
  python -m src.train +experiment=hc18_cpu data.root="${DATA_ROOT:-../shared/data}" \
    data.fold="$fold" logger=csv \
    ${VARIANTS[$name]} hydra.run.dir="$out"
done
