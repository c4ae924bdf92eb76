"""The decoder's incremental-decoding cache: per-row keys and values that beam search reorders.

Holds each decoder layer's self-attention keys and values for the positions decoded so far and
the encoder-decoder keys and values computed once per source (model.Transformer.start_cache makes
it, decode_step fills it); `select` keeps, reorders, duplicates or drops rows as the search asks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtkit.attention import attend_mask_from_padding

INITIAL_CACHE = 16  # decoder self-attention cache slots allocated up front; doubled when full


class DecoderCache:
    """Per-row decoder state for incremental decoding; made by `Transformer.start_cache`.

    Attributes:
        length: positions decoded so far; the next token goes at position `length`.
        self_kv: (L, 2, B, H, capacity, d_k) each decoder layer's self-attention keys [0] and
            values [1]; slots 0..length-1 are filled.
        cross_kv: (L, 2, B, H, S, d_k) each layer's encoder-decoder keys and values.
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
    def batch_size(self) -> int:
        return self.src_pad_mask.size(0)

    def reserve(self, length: int) -> None:
        """Make room for `length` positions, doubling the buffer when it is full."""
        capacity = self.self_kv.size(4)
        if length > capacity:
            L, _, B, H, _, d_k = self.self_kv.shape
            grown = self.self_kv.new_empty(L, 2, B, H, max(length, 2 * capacity), d_k)
            grown[:, :, :, :, : self.length] = self.self_kv[:, :, :, :, : self.length]
            self.self_kv = grown

    def select(self, index: Tensor, *, same_source: bool = False) -> None:
        """Keep, reorder or duplicate rows (new row i = old row index[i]) of the self-attention cache,
        the cross-attention keys and values and the source masks. Beam search uses it to expand
        each sentence to K beams, reorder beams and drop finished sentences.

        Args:
            index: (B',) long, rows of the current cache.
            same_source: promise that every new row i and its old row index[i] hold the same source
                sentence (reordering beams within each sentence); the cross-attention keys, values
                and masks are then left as they are instead of copied, which saves a copy of
                L*2*B*S*D numbers per step.
        """
        if same_source:
            # Reordering beams: only the filled slots, in place (the gather on the right is a copy,
            # so rows may swap). On CPU only the rows whose beam changed parent are copied (most
            # keep theirs); finding them is a host sync, which would stall a GPU, so there every
            # row is gathered.
            reorder_rows(self.self_kv, index, self.length, moved_only=index.device.type == "cpu")
        else:
            # Rows are dropped or duplicated too: one index_select over all layers' keys and values.
            self.self_kv = self.self_kv.index_select(2, index)
            self.cross_kv = self.cross_kv.index_select(2, index)
            self.src_pad_mask = self.src_pad_mask.index_select(0, index)
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
