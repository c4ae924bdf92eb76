"""mtkit: train Transformer translation models ("Attention Is All You Need") from the command line.

Reading order: config, sources, tokenizer, data, batching, model, loss, train, distributed,
checkpoint, search, translate, evaluate, cli (the README says what each holds). Importing the
package is cheap; torch, datasets and sacrebleu load where they are used.
"""

__version__ = "0.1.0"
