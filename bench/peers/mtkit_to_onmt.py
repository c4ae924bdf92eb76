"""Write an mtkit checkpoint's weights as an OpenNMT-py 3.5.1 checkpoint, to time both on one network.

usage: bench/.cache/peers/onmt/bin/python bench/peers/mtkit_to_onmt.py --mtkit CKPT --spm SPM.model
           --template ONMT_CKPT --out OUT.pt

(the OpenNMT-py venv has no sentencepiece: the pieces are read with mtkit's venv, which --spm runs)

Runs in the OpenNMT-py venv. The two Transformers are the same network when mtkit's is pre-norm
with tied embeddings: OpenNMT-py's pre-norm layers, sinusoidal positions (sin on even, cos on odd
dimensions), sqrt(d_model) embedding scaling and final LayerNorms. The options are taken from
`--template` (any OpenNMT-py 3.5.1 transformer checkpoint, e.g. one of bench/peers' runs) and set
to mtkit's sizes; FFN biases on, LayerNorm eps 1e-5 as mtkit's, a zero generator bias (mtkit's
output projection has none). The vocabulary is the SentencePiece model's pieces in id order (mtkit
uses SentencePiece's ids), with mtkit's PAD/UNK/BOS/EOS named as OpenNMT-py names them.
"""

from __future__ import annotations

import argparse

import torch

MTKIT_SPECIALS = {0: "<blank>", 1: "<unk>", 2: "<s>", 3: "</s>"}  # mtkit's PAD, UNK, BOS, EOS ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mtkit", required=True)
    ap.add_argument("--spm", required=True)
    ap.add_argument("--template", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import subprocess
    from pathlib import Path

    mtkit_python = Path(__file__).resolve().parents[2] / ".venv/bin/python"
    pieces = subprocess.run(
        [str(mtkit_python), "-c", "import sys, sentencepiece as s; p = s.SentencePieceProcessor(model_file=sys.argv[1]);"
         " print('\\n'.join(p.id_to_piece(i) for i in range(p.get_piece_size())))", args.spm],
        check=True, capture_output=True, text=True).stdout.split("\n")[:-1]
    src = torch.load(args.mtkit, map_location="cpu", weights_only=False)
    m, w = src["config"]["model"], src["model"]
    assert m["norm_first"] and m["tie_embeddings"], "OpenNMT-py's transformer is pre-norm; tied embeddings only"
    vocab = [MTKIT_SPECIALS.get(i, piece) for i, piece in enumerate(pieces)]
    assert len(vocab) == w["src_embed.weight"].size(0)

    template = torch.load(args.template, map_location="cpu", weights_only=False)
    opt = template["opt"]
    opt.enc_layers, opt.dec_layers = m["encoder_layers"], m["decoder_layers"]
    opt.hidden_size = opt.word_vec_size = opt.src_word_vec_size = opt.tgt_word_vec_size = m["d_model"]
    opt.heads, opt.transformer_ff = m["heads"], m["d_ff"]
    opt.add_ffnbias, opt.add_qkvbias, opt.norm_eps = True, False, 1e-5
    opt.share_embeddings = opt.share_decoder_embeddings = True

    out = {}
    emb = w["src_embed.weight"]
    for side in ("encoder", "decoder"):
        out[f"{side}.embeddings.make_embedding.emb_luts.0.weight"] = emb
        out[f"{side}.embeddings.make_embedding.pe.pe"] = template["model"][f"{side}.embeddings.make_embedding.pe.pe"]
        out[f"{side}.layer_norm.weight"] = w[f"{side}_norm.weight"]
        out[f"{side}.layer_norm.bias"] = w[f"{side}_norm.bias"]

    def attention(to: str, frm: str) -> None:
        for mine, theirs in (("w_q", "linear_query"), ("w_k", "linear_keys"), ("w_v", "linear_values"),
                             ("w_o", "final_linear")):
            out[f"{to}.{theirs}.weight"] = w[f"{frm}.{mine}.weight"]

    def norm(to: str, frm: str) -> None:
        out[f"{to}.weight"], out[f"{to}.bias"] = w[f"{frm}.weight"], w[f"{frm}.bias"]

    def ffn(to: str, frm: str) -> None:
        for k in ("w_1", "w_2"):
            out[f"{to}.{k}.weight"], out[f"{to}.{k}.bias"] = w[f"{frm}.ffn.{k}.weight"], w[f"{frm}.ffn.{k}.bias"]
        norm(f"{to}.layer_norm", f"{frm}.ffn_residual.norm")

    for i in range(m["encoder_layers"]):
        to, frm = f"encoder.transformer.{i}", f"encoder_layers.{i}"
        attention(f"{to}.self_attn", f"{frm}.self_attn")
        norm(f"{to}.layer_norm", f"{frm}.self_attn_residual.norm")
        ffn(f"{to}.feed_forward", frm)
    for i in range(m["decoder_layers"]):
        to, frm = f"decoder.transformer_layers.{i}", f"decoder_layers.{i}"
        attention(f"{to}.self_attn", f"{frm}.self_attn")
        attention(f"{to}.context_attn", f"{frm}.cross_attn")
        norm(f"{to}.layer_norm_1", f"{frm}.self_attn_residual.norm")
        norm(f"{to}.layer_norm_2", f"{frm}.cross_attn_residual.norm")
        ffn(f"{to}.feed_forward", frm)
    generator = {"weight": w["output.weight"], "bias": torch.zeros(len(vocab))}
    torch.save({"model": out, "generator": generator, "opt": opt, "optim": None,
                "vocab": {**template["vocab"], "src": vocab, "tgt": vocab}}, args.out)
    print(f"wrote {args.out}: {len(out)} tensors, vocabulary {len(vocab)}")


if __name__ == "__main__":
    main()
