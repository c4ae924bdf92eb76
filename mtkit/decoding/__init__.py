"""The decoding stage: a trained model in, translations and scores out.

Reading order: search (greedy and beam search) with search_state (the bookkeeping both share),
precision (what decode.precision runs and the model prepared for it), settings (decode settings
from a checkpoint, --set and flags), textio (input lines, checked), translate (lines and files,
one output line per input line), ct2 (CTranslate2 export and engine), loading (what translate and
evaluate decode with), scoring (sacreBLEU), evaluate (`mtkit evaluate`).
"""
