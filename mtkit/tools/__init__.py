"""Tools around a trained model: looking inside it, averaging checkpoints, describing the machine.

inspection (attention weights and the position table as arrays), plots (drawing them), average
(`mtkit average`), info (`mtkit info`).
"""
