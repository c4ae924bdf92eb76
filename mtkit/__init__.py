"""mtkit: train Transformer translation models ("Attention Is All You Need") from the command line.

Reading order: config, data, batching, tokenizer, model, train, checkpoint, search, translate,
evaluate, cli. Importing the package is cheap; torch, datasets and sacrebleu load where used.
"""

__version__ = "0.1.0"
