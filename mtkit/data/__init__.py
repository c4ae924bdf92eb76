"""The data stage: corpora in, token batches out.

Reading order: readers (rows of text, TSV/CSV, JSONL with line-numbered errors), sources (any
corpus format into an Arrow table of src/tgt), tokenizer (SentencePiece and the special ids),
run_tokenizer (a run dir's tokenizer, trained once), pairs (encode, filter, count drops),
upsample (which pairs an epoch repeats), batching (token-budget length buckets, a resumable
position, shards), padding (rows of ids into tensors), check (`mtkit data check`); ding and
synthetic make corpora. Nothing here knows about models.
"""
