"""The decoder's incremental-decoding cache: per-row keys and values that beam search reorders.

Holds each decoder layer's self-attention keys and values for the positions decoded so far and
the encoder-decoder keys and values computed once per source sentence (model.Transformer.start_cache
makes it, decode_step fills it); `select` keeps, reorders, duplicates or drops rows as the search asks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtkit.model.attention import attend_mask_from_padding

INITIAL_CACHE = 16  # decoder self-attention cache slots allocated up front; doubled when full


class DecoderCache:
    """Per-row decoder state for incremental decoding; made by `Transformer.start_cache`.

    Beam search decodes `beams` rows per source sentence. The rows differ in what they have decoded
    (self-attention keys and values) but share their sentence's encoder-decoder keys and values,
    which are kept once per sentence: the decoder attends with the K beams' queries together, so
    the encoder memory is neither copied K times nor gathered again when beams change places.

    Attributes:
        length: positions decoded so far; the next token goes at position `length`.
        self_kv: (L, 2, B * beams, H, capacity, d_k) each decoder layer's self-attention keys [0]
            and values [1], rows grouped by sentence; slots 0..length-1 are filled.
        cross_kv: (L, 2, B, H, S, d_k) each layer's encoder-decoder keys and values per sentence.
        src_pad_mask: (B, S) True = padding.
        src_attend_mask: (B, 1, 1, S) True = may attend (not padding).
    """

    def __init__(self, cross_kv: Tensor, src_pad_mask: Tensor):
        L, _, B, H, _, d_k = cross_kv.shape
        self.cross_kv, self.src_pad_mask = cross_kv, src_pad_mask
        self.src_attend_mask = attend_mask_from_padding(src_pad_mask)
        # A preallocated buffer written in place: appending with torch.cat would copy all the past
        # keys every step (O(T^2) copying per sentence); here a step writes one slot and a full
        # buffer doubles, so copying is O(T) in all.
        self.self_kv = cross_kv.new_empty(L, 2, B, H, INITIAL_CACHE, d_k)
        self.length = 0

    @property
    def beams(self) -> int:
        """Rows per source sentence."""
        return self.self_kv.size(2) // self.src_pad_mask.size(0)

    def reserve(self, length: int) -> None:
        """Make room for `length` positions, doubling the buffer when it is full."""
        capacity = self.self_kv.size(4)
        if length > capacity:
            L, _, B, H, _, d_k = self.self_kv.shape
            grown = self.self_kv.new_empty(L, 2, B, H, max(length, 2 * capacity), d_k)
            grown[:, :, :, :, : self.length] = self.self_kv[:, :, :, :, : self.length]
            self.self_kv = grown

    def select(self, rows: Tensor, sentences: Tensor | None = None) -> None:
        """New row i = old row rows[i]; beam search reorders, expands and drops beams with it.

        Args:
            rows: (B' * beams',) long, rows of the current cache, grouped by sentence: the rows of
                new sentence j are rows[j * beams' : (j + 1) * beams'], all taken from the rows of
                one old sentence (the one `sentences[j]` names).
            sentences: (B',) long, the old sentence of each new one, when sentences are dropped or
                reordered; None keeps the sentences as they are (beams reordered or expanded within
                each), and the encoder-decoder keys and values are not touched.
        """
        if sentences is None and rows.numel() == self.self_kv.size(2):
            # Reordering beams: only the filled slots, in place (the gather on the right is a copy,
            # so rows may swap). On CPU only the rows whose beam changed parent are copied (most
            # keep theirs); finding them is a host sync, which would stall a GPU, so there every
            # row is gathered.
            reorder_rows(self.self_kv, rows, self.length, moved_only=rows.device.type == "cpu")
        else:
            # Rows are dropped or duplicated: one gather over all layers' keys and values, of the
            # filled slots only (the rest of the buffer is never read before it is written).
            kv = self.self_kv
            self.self_kv = kv.new_empty(*kv.shape[:2], rows.numel(), *kv.shape[3:])
            self.self_kv[:, :, :, :, : self.length] = kv[:, :, rows, :, : self.length]
        if sentences is not None:
            self.cross_kv = self.cross_kv.index_select(2, sentences)
            self.src_pad_mask = self.src_pad_mask.index_select(0, sentences)
            self.src_attend_mask = attend_mask_from_padding(self.src_pad_mask)


def reorder_rows(kv: Tensor, index: Tensor, length: int, moved_only: bool) -> None:
    """In place, new row i of kv (L, 2, B, H, capacity, d_k) = old row index[i], slots :length only.

    moved_only copies just the rows with index[i] != i, which costs a host sync to find them.
    """
    if moved_only:
        moved = (index != torch.arange(index.numel(), device=index.device)).nonzero().squeeze(1)
        if moved.numel():
            kv[:, :, moved, :, :length] = kv[:, :, index[moved], :, :length]
    else:
        kv[:, :, :, :, :length] = kv[:, :, index, :, :length]
