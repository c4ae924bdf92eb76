"""Validation during training: dev loss/perplexity, and dev BLEU/chrF from greedy decoding.

The hypotheses come from translate.translate_lines and the scores from scoring.score, the
same functions `mtkit translate` and `mtkit evaluate` use, so the BLEU logged for best.pt is the
BLEU `mtkit evaluate best.pt --valid` reproduces. It keeps the best score and the early-stopping
count; the Trainer decides what to save.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any

import datasets
import torch
from torch import nn

from mtkit.config import Config
from mtkit.data.batching import TokenBatchSampler
from mtkit.data.padding import make_batch
from mtkit.data.pairs import dev_subset
from mtkit.data.tokenizer import PAD_ID, Tokenizer
from mtkit.decoding.precision import prepare_for_decoding, resolve_decode_precision
from mtkit.decoding.scoring import validation_scoring
from mtkit.decoding.translate import translate_lines
from mtkit.model.transformer import Transformer
from mtkit.training.loss import output_losses

log = logging.getLogger("mtkit")


class Validator:
    """Holds the dev set, batched once, and scores a model on it."""

    def __init__(self, valid_ds: datasets.Dataset, tokenizer: Tokenizer, cfg: Config, device: str):
        valid_ds = dev_subset(valid_ds, cfg.train.valid_max_sentences)
        self.tokenizer, self.device, self.model_cfg = tokenizer, device, cfg.model
        self.best_metric = cfg.train.best_metric
        self.scoring = validation_scoring(cfg)  # train.py has checked that its tokenizer runs
        self.loss_settings = (cfg.train.label_smoothing, cfg.train.label_smoothing_over, cfg.train.loss_chunk_tokens)
        self.src_texts: list[str] = list(valid_ds["src"])
        self.ref_texts: list[str] = list(valid_ds["tgt"])
        # Validation BLEU is greedy (cheap and stable), decoded in decode.precision as `mtkit
        # evaluate --valid` does on this machine, so that it reproduces the logged BLEU.
        precision, why = resolve_decode_precision(cfg.decode.precision, device)
        log.info("validation decodes with %s", why)
        self.decode = replace(cfg.decode, beam_size=1, nbest=1, precision=precision)
        src_ids, tgt_ids = valid_ds["src_ids"], valid_ds["tgt_ids"]
        sampler = TokenBatchSampler([len(x) for x in src_ids], [len(x) for x in tgt_ids],
                                    cfg.train.batch_tokens, seed=0, shuffle=False)
        # Pairs with an empty side carry no signal for the loss; they still count for BLEU.
        self.loss_batches = []
        for idx in sampler.epoch_batches(0):
            pairs = [(src_ids[i], tgt_ids[i]) for i in idx if src_ids[i] and tgt_ids[i]]
            if pairs:
                self.loss_batches.append(make_batch([s for s, _ in pairs], [t for _, t in pairs]))

    def run(self, model: nn.Module) -> dict[str, Any]:
        """Score `model` (left in eval mode): valid_loss, valid_nll, valid_ppl, bleu, chrf."""
        t0 = time.monotonic()
        model.eval()
        loss_sum = nll_sum = 0.0
        tokens = 0
        with torch.inference_mode():
            for b in self.loss_batches:
                target = b["tgt_out"].to(self.device)
                hidden = model(b["src"].to(self.device), b["tgt_in"].to(self.device), features=True)  # (B, T, D)
                loss, nll = output_losses(hidden, model.output, target, *self.loss_settings)  # training's loss
                loss_sum += float(loss)
                nll_sum += float(nll)
                tokens += int((target != PAD_ID).sum())
        decoder = self.decoding_copy(model) if self.decode.precision != "fp32" else model
        hyps = [ts[0].text for ts in translate_lines(decoder, self.tokenizer, self.src_texts, self.decode, self.device)]
        del decoder
        scores = self.scoring.score(hyps, self.ref_texts, metrics=("bleu", "chrf"))
        tokens = max(tokens, 1)
        return {
            "valid_loss": loss_sum / tokens,
            "valid_nll": nll_sum / tokens,
            "valid_ppl": math.exp(min(nll_sum / tokens, 50.0)),
            "bleu": scores["bleu"],
            "chrf": scores["chrf"],
            "signature": scores["signature"]["bleu"],
            "chrf_label": scores["label"]["chrf"],
            "chrf_signature": scores["signature"]["chrf"],
            "hyps": hyps,
            "seconds": time.monotonic() - t0,
        }

    def decoding_copy(self, model: nn.Module) -> nn.Module:
        """The model prepared for decode.precision as `mtkit evaluate` prepares best.pt (a new model,
        the state dict loaded, precision.prepare_for_decoding); the training model stays fp32 and
        untouched. (fp32 needs no copy: fused and unfused fp32 projections multiply the same matrices.)"""
        with torch.random.fork_rng(devices=[]):  # its throw-away initialisation leaves training's random stream alone
            copy = Transformer(self.model_cfg, self.tokenizer.src_vocab_size, self.tokenizer.tgt_vocab_size,
                               pad_id=PAD_ID)
        copy.load_state_dict(model.state_dict())
        return prepare_for_decoding(copy.to(self.device).eval(), self.decode.precision)

    def run_and_track(self, model: nn.Module, progress: Any, metrics: Any) -> bool:
        """Validate, log, and update progress.best / best_bleu / bad_validations; True when
        train.best_metric improved (dev BLEU or chrF higher, or dev loss lower)."""
        result = self.run(model)
        value = result["valid_loss" if self.best_metric == "loss" else self.best_metric]
        improved = progress.best is None or (value < progress.best if self.best_metric == "loss" else value > progress.best)
        if improved:
            progress.best, progress.bad_validations = value, 0
        else:
            progress.bad_validations += 1
        progress.best_bleu = max(progress.best_bleu, result["bleu"])
        best = "" if self.best_metric == "bleu" else f" {self.best_metric}"
        log.info("valid step %d: loss %.3f ppl %.2f BLEU %.2f %s %.2f%s (%.1fs)", progress.step, result["valid_loss"],
                 result["valid_ppl"], result["bleu"], result["chrf_label"], result["chrf"],
                 f" *best{best}*" if improved else f" (best{best} {progress.best:.2f})", result["seconds"])
        metrics.write("valid", step=progress.step, valid_loss=result["valid_loss"], valid_nll=result["valid_nll"],
                      valid_ppl=result["valid_ppl"], bleu=result["bleu"], chrf=result["chrf"],
                      best_bleu=progress.best_bleu, best_metric=self.best_metric, best=progress.best,
                      seconds=result["seconds"], signature=result["signature"], chrf_signature=result["chrf_signature"])
        return improved
