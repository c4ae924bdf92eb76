"""mtkit: train Transformer translation models ("Attention Is All You Need") from the command line.

The package reads as the pipeline, one subpackage per stage, imports pointing one way only
(tests/test_layers.py): errors, files, extras -> config, configcheck -> hardware, memory -> data
-> model -> decoding -> training -> tools -> cli. Each subpackage's docstring gives its reading
order. Importing `mtkit` itself is cheap; the cli imports each stage when a command needs it.
"""

__version__ = "0.1.0"
