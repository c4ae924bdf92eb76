"""The training stage: a config in, checkpoints, logs and metrics out.

Reading order: train (set-up, then the Trainer), trainer (the loop: next group, lr, step, after
update, validate and save, stop reason, finish), step (one optimizer update), sampling (what an
update draws), loss (label smoothing), schedule (warmup, inverse square root, cooldown), budget
(when training stops; the time plan), ema, interrupt (Ctrl-C / SIGTERM), distributed (torchrun),
rundir (fresh start or resume, saving), state (counters and random streams), validate,
manifest (what a run trained from and on), runlog (logs and metrics.jsonl), curves (curves.png).
"""
