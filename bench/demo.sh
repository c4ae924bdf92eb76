#!/usr/bin/env bash
# `make demo`: the main job on the real corpus, start to finish.
#   1. build the Ding German->English corpus (make data, run before this script)
#   2. train configs/ding-de-en.yaml for a time budget (default 30m; progress on stderr)
#   3. translate a few sentences
#   4. evaluate best.pt on the test split with beam 5 (BLEU/chrF/TER with sacreBLEU signatures)
# Running it again finds the run finished (its budget counts every call) and only translates and
# evaluates; a larger DEMO_TIME trains on. Delete runs/ding-de-en to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${1:-30m}
MTKIT=${MTKIT:-.venv/bin/mtkit}
RUN=runs/ding-de-en

echo "== train configs/ding-de-en.yaml for at most $BUDGET (run dir $RUN)" >&2
$MTKIT train configs/ding-de-en.yaml --set train.max_time="$BUDGET"

echo "== translate a few sentences with $RUN/best.pt" >&2
printf '%s\n' \
  "Das Haus ist sehr alt." \
  "Ich habe keine Zeit." \
  "Wir fahren morgen nach Berlin." \
  "Er hat den Zug verpasst." |
  $MTKIT translate "$RUN"

echo "== evaluate on data/ding-de-en/test (beam 5)" >&2
$MTKIT evaluate "$RUN" --src data/ding-de-en/test.de --ref data/ding-de-en/test.en -o "$RUN/test.hyp.en"
