"""Run a peer's own training CLI under a wall-clock budget; runs inside the peer's venv.

usage: bench/.cache/peers/onmt/bin/python bench/peers/drivers/budget.py onmt MINUTES CONFIG.yaml
       bench/.cache/peers/joeynmt/bin/python bench/peers/drivers/budget.py joeynmt MINUTES|inf CONFIG.yaml

Neither OpenNMT-py 3.5.1 nor JoeyNMT 2.3.0 has a time limit option, so this starts the toolkit's
CLI entry point (onmt.bin.train:main, the `onmt_train` script; joeynmt.__main__:main, i.e.
`python -m joeynmt train CONFIG --skip-test`) in this process after wrapping one function so that
training ends cleanly when the budget is spent, through the toolkit's own end-of-training path:

- OpenNMT-py: Trainer.train gets its batch iterator wrapped; the wrapper stops yielding batches
  once the budget is spent, the training loop ends as at the end of data, and Trainer.train
  saves the final checkpoint (MODEL_step_N.pt) as it does after train_steps.
- JoeyNMT: TrainManager._train_step sets the trainer's own `is_max_update` flag once the budget is
  spent; that update completes, the loop stops as at `training.updates`, and JoeyNMT saves
  N.ckpt (and the latest.ckpt link) in its `finally` block.

JoeyNMT always runs through this driver (MINUTES may be inf), for one more change: JoeyNMT sets
the learning rate after each update, so its first update would run at the optimizer's initial
rate, `learning_rate` = the peak P. The driver calls the scheduler once before training (as
JoeyNMT does after an update), so update 1 runs at P / W and update k >= 2 at (k-1) * P / W.

The clock starts when the first training batch is ready (model built, data read), as mtkit's
train.max_time starts after its data preparation; validation time counts, as in mtkit.
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    toolkit, minutes, config = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    budget = minutes * 60  # inf: no budget
    state = {"deadline": None, "announced": False}

    def spent() -> bool:
        now = time.monotonic()
        if state["deadline"] is None:
            state["deadline"] = now + budget
            if budget < float("inf"):
                print(f"budget: {minutes:g} minutes of training from the first batch on", flush=True)
            return False
        return now >= state["deadline"]

    def announce(step) -> None:
        if not state["announced"]:
            state["announced"] = True
            print(f"budget: {minutes:g} minutes spent at step {step}; stopping and saving", flush=True)

    if toolkit == "onmt":
        import onmt.trainer

        original = onmt.trainer.Trainer.train

        def until_spent(batches, trainer):
            for item in batches:
                if spent():
                    announce(trainer.optim.training_step - 1)
                    return
                yield item

        def train(self, train_iter, *args, **kwargs):
            return original(self, until_spent(train_iter, self), *args, **kwargs)

        onmt.trainer.Trainer.train = train
        from onmt.bin.train import main as cli

        sys.argv = ["onmt_train", "-config", config]
    elif toolkit == "joeynmt":
        import joeynmt.training

        original_step = joeynmt.training.TrainManager._train_step

        def _train_step(self, batch):
            if spent() and not self.stats.is_max_update:
                announce(self.stats.steps + 1)
                self.stats.is_max_update = True  # this update completes, then the loop ends
            return original_step(self, batch)

        joeynmt.training.TrainManager._train_step = _train_step
        original_init = joeynmt.training.TrainManager.__init__

        def __init__(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            if self.scheduler is not None and self.scheduler_step_at == "step" and self.stats.steps == 0:
                self.scheduler.step(0)  # the rate of update 1: step * P / W with step 1, not P
                print(f"learning rate of update 1 set to {self.optimizer.param_groups[0]['lr']:.3g}", flush=True)

        joeynmt.training.TrainManager.__init__ = __init__
        from joeynmt.__main__ import main as cli

        sys.argv = ["joeynmt", "train", config, "--skip-test"]
    else:
        sys.exit(f"error: unknown toolkit {toolkit!r} (onmt or joeynmt)")
    cli()


if __name__ == "__main__":
    main()
