"""Tests for mtkit.model.transformer and mtkit.model.attention: shapes, positions, attention, masking, the decoder cache, tying, saving."""

import io
import math

import pytest
import torch

from mtkit.config import ModelConfig
from mtkit.errors import ConfigError
from mtkit.model.attention import MultiHeadAttention, matmul_attention, reference_attention
from mtkit.model.transformer import Transformer, sinusoidal_positions

V = 23  # vocabulary size of the tiny models; id 0 is padding


def tiny(seed: int = 0, vocab: int = V, **overrides) -> Transformer:
    """A 16-wide, 2-head, 1+2-layer model in eval mode (no dropout), seeded."""
    torch.manual_seed(seed)
    fields = dict(d_model=16, heads=2, d_ff=32, encoder_layers=1, decoder_layers=2, dropout=0.1)
    fields.update(overrides)
    return Transformer(ModelConfig(**fields), vocab, vocab).eval()


def tokens(*shape: int, seed: int = 1) -> torch.Tensor:
    """Random non-pad ids."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, V, shape, generator=g)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return torch.allclose(a, b, atol=atol, rtol=0)


# ----------------------------------------------------------------------------- shapes and positions


def test_shapes():
    model = tiny()
    src, tgt = tokens(3, 5), tokens(3, 7, seed=2)
    assert model(src, tgt).shape == (3, 7, V)
    memory, src_pad_mask = model.encode(src)
    assert memory.shape == (3, 5, 16) and src_pad_mask.shape == (3, 5)
    assert src_pad_mask.dtype == torch.bool and not src_pad_mask.any()
    cache = model.start_cache(memory, src_pad_mask)
    assert cache.length == 0 and cache.beams == 1 and cache.self_kv.size(3) == 3
    assert model.decode_step(tgt[:, 0], cache).shape == (3, V)
    assert cache.length == 1


def test_sinusoidal_positions_match_the_formula():
    d_model = 16
    pe = sinusoidal_positions(60, d_model)
    assert pe.shape == (60, d_model) and pe.dtype == torch.float32
    for pos, i in [(0, 0), (1, 0), (7, 3), (59, 7), (33, 5)]:
        angle = pos / 10000 ** (2 * i / d_model)
        assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert sinusoidal_positions(4, 5).shape == (4, 5)  # odd widths work too


def test_halves_layout_holds_the_same_sines_then_the_cosines():
    # Marian's and fairseq's table (model.positions: halves): every sine, then every cosine.
    inter, halves = sinusoidal_positions(40, 16), sinusoidal_positions(40, 16, layout="halves")
    assert torch.equal(halves[:, :8], inter[:, 0::2]) and torch.equal(halves[:, 8:], inter[:, 1::2])
    odd = sinusoidal_positions(9, 5, layout="halves")  # 3 sines, 2 cosines
    assert torch.equal(odd[:, :3], sinusoidal_positions(9, 5)[:, 0::2])


def test_positions_have_no_maximum_length():
    pe = sinusoidal_positions(5000, 8)
    angle = 4999 / 10000 ** (2 * 1 / 8)
    assert pe[4999, 2].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert pe[4999, 3].item() == pytest.approx(math.cos(angle), abs=1e-6)

    model, reference = tiny(), tiny()
    model.positions = model.positions[:4]  # as if only 4 positions had been needed so far
    src, tgt = tokens(2, 9), tokens(2, 11, seed=2)
    with torch.no_grad():
        assert close(model(src, tgt), reference(src, tgt))
    assert model.positions.size(0) >= 11
    assert "positions" not in model.state_dict()  # rebuilt, never saved


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize("masked", [False, True])
def test_reference_attention_equals_fast_path(masked):
    torch.manual_seed(0)
    mha = MultiHeadAttention(d_model=16, heads=2)
    query, key_value = torch.randn(3, 4, 16), torch.randn(3, 6, 16)
    attend_mask = None
    if masked:  # row b may attend to its first 6 - b keys
        attend_mask = (torch.arange(6) < torch.tensor([6, 5, 2])[:, None])[:, None, None, :]  # (B, 1, 1, 6)
    q = mha.split_heads(mha.w_q(query))
    k, v = mha.split_heads(mha.w_k(key_value)), mha.split_heads(mha.w_v(key_value))
    out, weights = reference_attention(q, k, v, attend_mask)  # (B, H, 4, d_k), (B, H, 4, 6)
    assert close(weights.sum(-1), torch.ones(3, 2, 4))
    if masked:
        assert (weights[2, :, :, 2:] == 0).all()
    expected = mha.w_o(out.transpose(1, 2).reshape(3, 4, 16))
    assert close(mha(query, key_value, attend_mask), expected)


def test_fused_self_attention_projections_equal_one_matmul_per_role():
    """Self-attention projects Q, K, V with one stacked matmul: the same as W^Q, W^K, W^V apart,
    forward and backward (each weight gets its own gradient)."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(d_model=16, heads=2)
    x = torch.randn(3, 5, 16)
    q, k, v = (mha.split_heads(w(x)) for w in (mha.w_q, mha.w_k, mha.w_v))
    out, _ = reference_attention(q, k, v, torch.ones(5, 5, dtype=torch.bool).tril())
    expected = mha.w_o(out.transpose(1, 2).reshape(3, 5, 16))
    expected.sum().backward()
    grads = [p.grad.clone() for p in mha.parameters()]
    mha.zero_grad()
    fused = mha(x, x, is_causal=True)
    fused.sum().backward()
    assert close(fused, expected)
    for p, g in zip(mha.parameters(), grads, strict=True):
        assert close(p.grad, g)


def test_reference_attention_causal_mask_equals_is_causal():
    torch.manual_seed(0)
    mha = MultiHeadAttention(d_model=16, heads=2)
    x = torch.randn(2, 5, 16)
    causal_attend_mask = torch.ones(5, 5, dtype=torch.bool).tril()  # True = key j <= query i
    assert close(mha(x, x, is_causal=True), mha(x, x, causal_attend_mask))


@pytest.mark.parametrize("causal", [False, True])
def test_matmul_attention_equals_sdpa(causal):
    """The bf16-on-CPU path: equal to the fused kernel in fp32, and close to it in bf16, forward and backward."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 5, 8, requires_grad=True) for _ in range(3))
    attend_mask = None if causal else (torch.arange(5) < torch.tensor([5, 4, 1])[:, None])[:, None, None, :]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attend_mask, is_causal=causal)
    grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    got = matmul_attention(q, k, v, attend_mask, causal)
    assert close(got, expected)
    assert all(close(a, b) for a, b in zip(torch.autograd.grad(got.square().sum(), (q, k, v)), grads))
    q16, k16, v16 = (x.detach().bfloat16().requires_grad_() for x in (q, k, v))
    got16 = matmul_attention(q16, k16, v16, attend_mask, causal)
    assert got16.dtype == torch.bfloat16
    assert close(got16.float(), expected, atol=3e-2)
    grads16 = torch.autograd.grad(got16.float().square().sum(), (q16, k16, v16))
    assert all(close(a.float(), b, atol=6e-2) for a, b in zip(grads16, grads))


def test_bf16_model_on_cpu_takes_the_matmul_path(monkeypatch):
    """Under bf16 autocast on the CPU the model does not call the fused kernel, and matches fp32."""
    model = tiny()
    src, tgt = tokens(2, 5), tokens(2, 6, seed=2)
    with torch.no_grad():
        expected = model(src, tgt)

    def refuse(*args, **kwargs):
        raise AssertionError("F.scaled_dot_product_attention called in bf16 on the CPU")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", refuse)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(src, tgt)
    assert close(got.float(), expected, atol=0.1)
    assert got.float().argmax(-1).eq(expected.argmax(-1)).float().mean() > 0.9


# ----------------------------------------------------------------------------- masking


def test_causality():
    model = tiny()
    src, tgt = tokens(2, 5), tokens(2, 8, seed=2)
    changed = tgt.clone()
    changed[:, 4:] = tokens(2, 4, seed=3)
    with torch.no_grad():
        a, b = model(src, tgt), model(src, changed)
    assert close(a[:, :4], b[:, :4])
    assert not close(a[:, 4:], b[:, 4:])


def test_source_padding_changes_nothing():
    model = tiny()
    src, tgt = tokens(2, 5), tokens(2, 6, seed=2)
    padded = torch.cat([src, torch.zeros(2, 3, dtype=torch.long)], dim=1)  # (2, 8), 3 pads each
    with torch.no_grad():
        assert close(model(src, tgt), model(padded, tgt))
        memory, src_pad_mask = model.encode(padded)
        assert close(memory[:, :5], model.encode(src)[0])
    assert src_pad_mask[:, 5:].all() and not src_pad_mask[:, :5].any()


def test_mixed_length_batch_equals_each_sentence_alone():
    """Source and target right-padding in a batch: real positions match the unpadded sentences."""
    model = tiny()
    src, tgt = tokens(2, 7), tokens(2, 6, seed=2)
    src[1, 4:] = 0  # sentence 1: 4 source tokens, 3 target tokens
    tgt[1, 3:] = 0
    with torch.no_grad():
        batch = model(src, tgt)
        alone = model(src[1:, :4], tgt[1:, :3])
        first = model(src[:1], tgt[:1])
    assert close(batch[1:, :3], alone)
    assert close(batch[:1], first)


# ----------------------------------------------------------------------------- incremental decoding


IMPORTED = dict(norm_first=False, activation="swish", attention_bias=True, output_bias=True, scale_embeddings=False,
                positions="halves")  # what a Marian model needs (mtkit import)


@pytest.mark.parametrize("options", [dict(norm_first=True), dict(norm_first=False), IMPORTED,
                                     dict(activation="gelu", attention_bias=True)])
def test_decode_step_equals_forward(options):
    model = tiny(**options)
    if options.get("attention_bias"):  # biases start at zero: make them count
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.5)
    src, tgt = tokens(3, 6), tokens(3, 20, seed=2)  # 20 steps: the cache grows past 16 slots
    src[2, 3:] = 0
    with torch.no_grad():
        expected = model(src, tgt)  # (3, 20, V)
    with torch.inference_mode():
        cache = model.start_cache(*model.encode(src))
        steps = torch.stack([model.decode_step(tgt[:, t], cache) for t in range(20)], dim=1)
    assert cache.length == 20
    assert close(steps, expected)
    # Fused for decoding (stacked projections, their biases too): the same logits.
    with torch.inference_mode():
        model.fuse_for_decoding()
        cache = model.start_cache(*model.encode(src))
        fused = torch.stack([model.decode_step(tgt[:, t], cache) for t in range(20)], dim=1)
    assert close(fused, expected)


def test_decode_steps_over_many_keys_take_the_matmul_path_and_equal_forward(monkeypatch):
    """With d_k 64, self-attention of a step over 7 or more cached positions runs as two matmuls
    (one_query_over_many_keys); before that, and in encoder-decoder attention, the fused kernel."""
    model = tiny(d_model=64, heads=1)  # d_k 64: 64 * 7 keys >= MATMUL_MIN_PRODUCTS
    src, tgt = tokens(3, 6), tokens(3, 12, seed=2)
    src[2, 3:] = 0
    with torch.no_grad():
        expected = model(src, tgt)
    fused_keys = []  # key counts of the decoder self-attention calls that reached the fused kernel
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(q, k, v, attn_mask=None, **kwargs):
        if attn_mask is None:
            fused_keys.append(k.size(-2))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    with torch.inference_mode():
        cache = model.start_cache(*model.encode(src))
        steps = torch.stack([model.decode_step(tgt[:, t], cache) for t in range(12)], dim=1)
    assert sorted(set(fused_keys)) == [1, 2, 3, 4, 5, 6]  # 7 keys and more: the matmuls
    assert close(steps, expected)


def test_cache_select_reorders_expands_and_drops_rows():
    model = tiny()
    src = tokens(2, 5)
    src[1, 3:] = 0
    seqs = tokens(4, 8, seed=2)  # a different target prefix for each row that exists at some point
    with torch.no_grad():
        def check(row_src: list[int], row_seq: list[int], t: int):
            """decode_step at position t equals the teacher-forced forward of each row's history."""
            step = model.decode_step(seqs[row_seq, t], cache)
            assert close(step, model(src[row_src], seqs[row_seq, : t + 1])[:, t])

        cache = model.start_cache(*model.encode(src))
        for t in range(3):
            check([0, 1], [0, 1], t)
        cache.select(torch.tensor([1, 0]), torch.tensor([1, 0]))  # swap the two sentences
        assert cache.src_pad_mask[0, 3:].all()  # sentence 0 is now the padded one
        check([1, 0], [1, 0], 3)
        # Two beams per sentence: the rows are copied, the memory is not.
        cross_kv = cache.cross_kv
        cache.select(torch.tensor([0, 0, 1, 1]))
        assert cache.cross_kv is cross_kv and cache.beams == 2
        seqs[2, :4], seqs[3, :4] = seqs[1, :4].clone(), seqs[0, :4].clone()  # beams share their parents' histories
        check([1, 1, 0, 0], [1, 2, 0, 3], 4)
        cache.select(torch.tensor([1, 1, 3, 2]))  # reorder and duplicate beams within each sentence
        assert cache.cross_kv is cross_kv
        seqs[1, :5] = seqs[2, :5]
        seqs[0, :5], seqs[3, :5] = seqs[3, :5].clone(), seqs[0, :5].clone()
        check([1, 1, 0, 0], [1, 2, 0, 3], 5)
        cache.select(torch.tensor([2, 3]), torch.tensor([1]))  # drop sentence 0 (src row 1)
        assert cache.cross_kv.size(2) == 1 and cache.beams == 2
        check([0, 0], [0, 3], 6)


def test_gather_rows_copies_the_filled_slots_of_the_chosen_rows():
    from mtkit.model.cache import gather_rows

    kv = torch.randn(8, 2, 2, 4, 3, 5)  # (capacity, L, 2, B, H, d_k)
    index = torch.tensor([2, 0, 0, 3])  # rows swap, duplicate and stay
    out = torch.full_like(kv, 7.0)
    gather_rows(kv, index, 6, out)
    assert torch.equal(out[:6], kv[:6, :, :, index])
    assert (out[6:] == 7).all()  # slots past the length untouched
    fewer = torch.full((10, 2, 2, 2, 3, 5), 7.0)  # dropping rows, into a larger buffer
    gather_rows(kv, torch.tensor([3, 1]), 6, fewer)
    assert torch.equal(fewer[:6], kv[:6, :, :, [3, 1]]) and (fewer[6:] == 7).all()


def test_beam_reorder_keeps_each_row_its_own_keys():
    model = tiny()
    src, tgt = tokens(1, 5), tokens(3, 4, seed=3)
    with torch.no_grad():  # three beams of one sentence, reordered as beam search does
        cache = model.start_cache(*model.encode(src))
        cache.select(torch.tensor([0, 0, 0]))
        for t in range(3):
            model.decode_step(tgt[:, t], cache)
        cache.select(torch.tensor([2, 0, 0]))
        step = model.decode_step(tgt[[2, 0, 0], 3], cache)
        assert close(step, model(src.expand(3, 5), tgt[[2, 0, 0]])[:, 3])


# ----------------------------------------------------------------------------- parameters


def test_tied_embeddings_share_one_parameter():
    model = tiny(tie_embeddings=True)
    assert model.src_embed.weight is model.tgt_embed.weight is model.output.weight
    untied = tiny(tie_embeddings=False)
    weights = {id(untied.src_embed.weight), id(untied.tgt_embed.weight), id(untied.output.weight)}
    assert len(weights) == 3
    assert untied.num_parameters() - model.num_parameters() == 2 * V * 16


def test_tying_different_vocabularies_is_a_config_error():
    cfg = ModelConfig(d_model=16, heads=2, d_ff=32, encoder_layers=1, decoder_layers=1, tie_embeddings=True)
    with pytest.raises(ConfigError, match="tie_embeddings"):
        Transformer(cfg, 30, 31)
    untied = Transformer(ModelConfig(d_model=16, heads=2, tie_embeddings=False), 30, 31)
    assert untied(tokens(1, 3), tokens(1, 2)).shape == (1, 2, 31)


def test_initialisation():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(d_model=64, heads=2, d_ff=64), 500, 500)
    assert model.src_embed.weight.std().item() == pytest.approx(64**-0.5, rel=0.05)
    w = model.encoder_layers[0].ffn.w_1.weight  # Xavier-uniform: U(+-sqrt(6 / (fan_in + fan_out)))
    assert w.abs().max().item() <= math.sqrt(6 / 128)
    assert w.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.1)


def test_num_parameters_and_flops():
    model = tiny(tie_embeddings=True)
    D, F, N_e, N_d = 16, 32, 1, 2
    linear = N_e * (4 * D * D + 2 * D * F) + N_d * (8 * D * D + 2 * D * F)  # matmul weights
    biases_and_norms = (N_e + N_d) * (F + D) + (2 * N_e + 3 * N_d) * 2 * D + 2 * 2 * D
    assert model.num_parameters() == linear + V * D + biases_and_norms
    # Equal lengths and no attention terms: 6 x (matmul weights + output projection).
    flops = model.flops_per_target_token(10, 10)
    attention = 3 * (N_e * 4 * 10 * D + N_d * 4 * 20 * D)
    assert flops == pytest.approx(6 * (linear + V * D) + attention)


def test_state_dict_round_trip():
    model = tiny(seed=0)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other = tiny(seed=5)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.src_embed.weight is other.output.weight  # still tied after loading
    src, tgt = tokens(2, 5), tokens(2, 4, seed=2)
    with torch.no_grad():
        assert torch.equal(model(src, tgt), other(src, tgt))


@pytest.mark.parametrize("norm_first", [True, False])
def test_norm_first_structure(norm_first):
    model = tiny(norm_first=norm_first)
    has_final_norm = isinstance(model.encoder_norm, torch.nn.LayerNorm)
    assert has_final_norm == norm_first
    assert isinstance(model.decoder_norm, torch.nn.LayerNorm) == norm_first
    assert any(k.startswith("encoder_norm.") for k in model.state_dict()) == norm_first
    assert torch.isfinite(model(tokens(2, 5), tokens(2, 4, seed=2))).all()


def test_dropout_only_in_training():
    model = tiny(dropout=0.3, attention_dropout=0.2)
    src, tgt = tokens(2, 5), tokens(2, 4, seed=2)
    model.train()
    assert not torch.equal(model(src, tgt), model(src, tgt))
    model.eval()
    assert torch.equal(model(src, tgt), model(src, tgt))


# ----------------------------------------------------------------------------- learning


def test_overfits_a_copy_task():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(d_model=32, heads=2, d_ff=64, encoder_layers=1, decoder_layers=1,
                                    dropout=0.0), 12, 12)
    src = torch.randint(3, 12, (8, 6))  # 0 pad, 1 BOS, 2 EOS
    tgt_in = torch.cat([torch.ones(8, 1, dtype=torch.long), src], dim=1)  # BOS + copy
    tgt_out = torch.cat([src, torch.full((8, 1), 2)], dim=1)  # copy + EOS
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt_out.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
