"""Rows of piece ids -> the padded tensors the model takes (training, validation and translation).

The source gets EOS; the target is split into the decoder's input (BOS + ids) and the output it
is trained to predict (ids + EOS); every row is right-padded with PAD. Which rows go together is
batching.py's job.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mtkit.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


def make_batch(src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]] | None = None,
               pad_to: int = 1) -> dict[str, torch.Tensor]:
    """Pad rows of piece ids into int64 tensors (used by training, validation and translation).

    Returns:
        "src": [B, S] ids + EOS, right-padded with PAD;
        with `tgt_ids` also "tgt_in": [B, T] BOS + ids and "tgt_out": [B, T] ids + EOS (padded).
        S and T are rounded up to a multiple of `pad_to` (8 on GPU: tensor-core friendly shapes).
    """
    batch = {"src": torch.from_numpy(_pad(src_ids, lead=None, tail=EOS_ID, pad_to=pad_to))}
    if tgt_ids is not None:
        if len(tgt_ids) != len(src_ids):
            raise ValueError(f"make_batch: {len(src_ids)} source rows but {len(tgt_ids)} target rows")
        batch["tgt_in"] = torch.from_numpy(_pad(tgt_ids, lead=BOS_ID, tail=None, pad_to=pad_to))
        batch["tgt_out"] = torch.from_numpy(_pad(tgt_ids, lead=None, tail=EOS_ID, pad_to=pad_to))
    return batch


def _pad(rows: Sequence[Sequence[int]], lead: int | None, tail: int | None, pad_to: int = 1) -> np.ndarray:
    """[B, max_len + 1 rounded up to pad_to] int64: optional `lead` id, the row, optional `tail` id, then PAD."""
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = -(-(int(lens.max(initial=0)) + 1) // pad_to) * pad_to
    out = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    offset = 0 if lead is None else 1
    if lens.sum():
        flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
        # Row-major boolean assignment fills each row's first len(row) slots in order.
        out[:, offset:][np.arange(width - offset) < lens[:, None]] = flat
    if lead is not None:
        out[:, 0] = lead
    if tail is not None:
        out[np.arange(len(rows)), lens] = tail
    return out
