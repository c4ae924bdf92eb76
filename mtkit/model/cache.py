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

    The self-attention keys and values are stored slot first: the positions decoded so far are
    one contiguous block at the front of the buffer, so moving rows (every beam-search step) is
    one gather of contiguous (H * d_k) pieces into a second buffer, at memory speed. With the row
    first, the filled slots of a row are spread over every layer and head, and the same gather
    ran 2.5-8x slower (BENCHMARKS.md, issue 25's fourth pass).

    Attributes:
        length: positions decoded so far; the next token goes at position `length`.
        self_kv: (capacity, L, 2, B * beams, H, d_k) each decoder layer's self-attention keys [0]
            and values [1] per slot, rows grouped by sentence; slots 0..length-1 are filled.
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
        self.self_kv = cross_kv.new_empty(INITIAL_CACHE, L, 2, B, H, d_k)
        self.spare: Tensor | None = None  # the buffer `select` gathers into next (same shape)
        self.length = 0

    @property
    def beams(self) -> int:
        """Rows per source sentence."""
        return self.self_kv.size(3) // self.src_pad_mask.size(0)

    def reserve(self, length: int) -> None:
        """Make room for `length` positions, doubling the buffer when it is full."""
        capacity = self.self_kv.size(0)
        if length > capacity:
            grown = self.self_kv.new_empty(max(length, 2 * capacity), *self.self_kv.shape[1:])
            grown[: self.length] = self.self_kv[: self.length]
            self.self_kv, self.spare = grown, None

    @torch.no_grad()  # decoding state, never part of a training graph (an out= gather cannot be)
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
        kv = self.self_kv
        shape = (kv.size(0), *kv.shape[1:3], rows.numel(), *kv.shape[4:])  # (capacity, L, 2, B', H, d_k)
        same = self.spare is not None and self.spare.shape == shape
        out = self.spare if same else kv.new_empty(shape)
        gather_rows(kv, rows, self.length, out)
        self.spare = kv if kv.shape == shape else None  # reordering beams swaps two buffers
        self.self_kv = out
        if sentences is not None:
            self.cross_kv = self.cross_kv.index_select(2, sentences)
            self.src_pad_mask = self.src_pad_mask.index_select(0, sentences)
            self.src_attend_mask = attend_mask_from_padding(self.src_pad_mask)


def gather_rows(kv: Tensor, rows: Tensor, length: int, out: Tensor) -> None:
    """out[:length, ..., i, :, :] = kv[:length, ..., rows[i], :, :] for kv (capacity, L, 2, B, H, d_k)
    and out (capacity', L, 2, B', H, d_k), B' = len(rows); the slots past `length` are not touched.

    Seen as 2-D, the filled slots of both are contiguous runs of (H * d_k) pieces, one per (slot,
    layer, key or value, row), so one index_select copies piece by piece straight into `out`.
    """
    if length == 0:
        return
    B, B_new, piece = kv.size(3), rows.numel(), kv.size(4) * kv.size(5)
    blocks = length * kv.size(1) * kv.size(2)  # (slot, layer, key or value) blocks of B rows
    src = kv.view(-1, piece)[: blocks * B]  # (blocks * B, H * d_k)
    index = (torch.arange(blocks, device=rows.device)[:, None] * B + rows).view(-1)  # (blocks * B',)
    torch.index_select(src, 0, index, out=out.view(-1, piece)[: blocks * B_new])
