"""The model stage: the Transformer of "Attention Is All You Need" and how it is stored.

Reading order: attention (scaled dot-product and multi-head attention, section 3.2), transformer
(embeddings, positions, encoder and decoder, section 3), cache (the decoder's incremental cache),
quantize (int8 layers for decoding), checkpoint (the self-describing checkpoint file), loading (a
checkpoint back into a model, its tokenizer and config). No loss, search or training loop here.
"""
