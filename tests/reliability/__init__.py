"""Reliability: bad inputs, injected faults, load and security (runs in `make test`).

Where each promise is tested:
- bad inputs through the CLI, one table: test_bad_inputs.py (config, data, checkpoints,
  translate/evaluate; each gives one `error:` line naming the file/line/key, a non-zero exit,
  no traceback, no partial output);
- fuzzing: the data readers here (test_fuzz_readers.py), the config loader in test_config.py;
- faults: test_faults.py (SIGKILL between a checkpoint's write and rename, truncated/zeroed
  last.pt, disk full, out-of-memory); kill -9 mid-run and SIGTERM (test_cli.py), Ctrl-C and NaN
  losses (test_train.py), a killed translation job (test_translate.py), a failing process in
  multi-process training (test_distributed.py);
- load: test_load.py (200,000 lines translated in flat memory; bench/translate_memory.py measures
  it, bench/data_load.py + bench/make_corpus.py the 2M-pair load);
- security: test_security.py (weights_only loads, safe_load, no eval/exec, writes only under the
  run dir) and the code-carrying pickle cases in test_bad_inputs.py and test_checkpoint.py.
"""
