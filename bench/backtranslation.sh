#!/usr/bin/env bash
# The back-translation round trip on Ding, start to finish (docs/backtranslation.md):
#   1. split Ding's training pairs: 2 of every 3 stay parallel; of the third, only the English side
#      is kept, as monolingual text (so no data leaves the project)
#   2. train en->de on the parallel part
#   3. back-translate the monolingual English into German with it (--sample --topk 10)
#   4. train de->en on the parallel part alone, and on it plus the back-translations, tagged <BT>,
#      for the same time budget
#   Where there are two cores every training run gets one core for the budget, the two de->en runs
#   side by side; SEQUENTIAL=1 gives each every core, one after the other.
#   5. evaluate both on Ding's dev and test sets (beam 5), one JSON line each
# usage: bash bench/backtranslation.sh [BUDGET per training run, default 10m]   (after `make data`)
# Everything goes under $WORK (default runs/bt); running it again reuses finished steps.
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${1:-10m}
MTKIT=${MTKIT:-.venv/bin/mtkit}
D=data/ding-de-en
W=${WORK:-runs/bt}
mkdir -p "$W/data"

if [ ! -s "$W/data/mono.en" ]; then
  for side in de en; do awk 'NR % 3 != 0' "$D/train.$side" > "$W/data/par.$side"; done
  awk 'NR % 3 == 0' "$D/train.en" > "$W/data/mono.en"
fi
echo "== $(wc -l < "$W/data/par.de") parallel pairs, $(wc -l < "$W/data/mono.en") monolingual English lines" >&2

common=(--set train.max_time="$BUDGET" --set data.test=null)
# Every model of the round trip trains on one core for the budget where there are two cores: the two
# de->en runs side by side (taskset), so that whatever else the machine does slows both alike, and
# en->de alone on the first core. SEQUENTIAL=1 runs each on every core, one after the other.
side_by_side=1
if [ "${SEQUENTIAL:-0}" = 1 ] || [ "$(nproc)" -lt 2 ] || ! command -v taskset > /dev/null; then side_by_side=0; fi
on_core() {  # on_core N CMD...: CMD on core N, one thread (or as it is, one after the other)
  local core=$1; shift
  if [ $side_by_side = 1 ]; then taskset -c "$core" "$@" --set train.threads=1; else "$@"; fi
}
echo "== en->de for $BUDGET" >&2
on_core 0 $MTKIT train configs/ding-de-en.yaml "${common[@]}" --set run_dir="$W/en-de" \
  --set data.src_lang=en --set data.tgt_lang=de \
  --set data.train.src="$W/data/par.en" --set data.train.tgt="$W/data/par.de" \
  --set data.valid.src="$D/dev.en" --set data.valid.tgt="$D/dev.de"

if [ ! -s "$W/data/bt.de" ]; then
  echo "== back-translating $W/data/mono.en (sampling, top-k 10)" >&2
  start=$(date +%s)
  $MTKIT translate "$W/en-de" -i "$W/data/mono.en" -o "$W/data/bt.de" --sample --topk 10 --seed 1
  echo "== back-translation took $(( $(date +%s) - start )) s" >&2
fi

corpora="[{src: $W/data/par.de, tgt: $W/data/par.en, weight: 2, name: parallel},"
corpora+=" {src: $W/data/bt.de, tgt: $W/data/mono.en, weight: 1, tag: '<BT>', name: bt}]"
base=(--set run_dir="$W/de-en-base" --set data.train.src="$W/data/par.de" --set data.train.tgt="$W/data/par.en")
with_bt=(--set run_dir="$W/de-en-bt" --set "data.train=$corpora")
if [ $side_by_side = 0 ]; then
  echo "== de->en on the parallel part alone, $BUDGET" >&2
  $MTKIT train configs/ding-de-en.yaml "${common[@]}" "${base[@]}"
  echo "== de->en with the back-translations (tagged <BT>, their natural share), $BUDGET" >&2
  $MTKIT train configs/ding-de-en.yaml "${common[@]}" "${with_bt[@]}"
else
  echo "== de->en without and with the back-translations (tagged <BT>, their natural share)," \
    "side by side, one core each, $BUDGET; logs in $W/de-en-{base,bt}.out" >&2
  on_core 0 $MTKIT train configs/ding-de-en.yaml "${common[@]}" "${base[@]}" > "$W/de-en-base.out" 2>&1 &
  base_pid=$!
  on_core 1 $MTKIT train configs/ding-de-en.yaml "${common[@]}" "${with_bt[@]}" > "$W/de-en-bt.out" 2>&1 &
  bt_pid=$!
  wait $base_pid || { echo "error: the base run failed; see $W/de-en-base.out" >&2; exit 1; }
  wait $bt_pid || { echo "error: the back-translation run failed; see $W/de-en-bt.out" >&2; exit 1; }
fi

for run in de-en-base de-en-bt; do
  for split in dev test; do
    printf '{"run": "%s", "split": "%s", "scores": ' "$run" "$split"
    $MTKIT evaluate "$W/$run" --src "$D/$split.de" --ref "$D/$split.en" --json | tr -d '\n'
    echo "}"
  done
done
