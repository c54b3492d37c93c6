"""quantize.py and the lean trunk: int8 / int4 weights give logits close to fp32 in eager and compiled decode
steps, the cached decode equals the full forward, the compiled product-and-sum equals F.linear."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bench import decode_bytes
from generate import Sampling, compile_decode_step, decode_compile_options, decode_one_token, generate, prefill
from layers import Linear, matvec
from model import GPT, N_AUDIO, GPTConfig, make_prompt, text_to_tokens
from quantize import QuantLinear, Quantization, logits_difference, quantize_model


def tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, qk_norm=True)
    cfg.update(kw)
    model = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # weights spread as a trained model's are, so that the logits are not flat
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def streams(n=3, audio=20):
    g = torch.Generator().manual_seed(1)
    return [make_prompt(text_to_tokens(f"text {i}."), torch.randint(0, N_AUDIO, (audio,), generator=g))
            for i in range(n)]


@pytest.mark.parametrize("mode,tolerance", [("int8", 0.02), ("int4", 0.25)])
def test_quantised_logits_stay_close_and_only_linears_change(mode, tolerance):
    model = tiny()
    q = quantize_model(copy.deepcopy(model), mode)
    quantised = [name for name, m in q.named_modules() if isinstance(m, QuantLinear)]
    assert len(quantised) == 2 * 4 + 2 and "coarse_head" in quantised and "fine_head" in quantised
    assert not any(isinstance(m, Linear) for m in q.modules())
    assert torch.equal(q.wte.weight, model.wte.weight)  # embeddings stay
    with torch.no_grad():
        scale = float(model.coarse_logits(model(streams()[0][None])).abs().mean())
    drift = logits_difference(model, q, streams())
    assert 0 < drift < tolerance * scale, (drift, scale)
    # a model whose head is its embedding table keeps the head as it is
    tied = quantize_model(tiny(tie_weights=True), mode)
    assert isinstance(tied.coarse_head, Linear) and isinstance(tied.blocks[0].mlp.down, QuantLinear)


def test_int8_rows_round_to_their_scale():
    linear = Linear(64, 8, bias=True)
    q = QuantLinear(linear, 8)
    assert q.weight.dtype == torch.int8 and int(q.weight.abs().max(dim=1).values.min()) == 127  # each row's max
    x = torch.randn(3, 64)
    err = (q(x) - linear(x)).abs().max()
    assert err < 1e-2 * linear(x).abs().max()
    q4 = QuantLinear(linear, 4)
    assert q4.weight.dtype == torch.uint8 and q4.weight.shape == (8, 1, 32) and q4.group == 64  # 2 per byte


@pytest.mark.parametrize("mode", ["", "int8", "int4"])
def test_cached_decode_equals_the_full_forward(mode):
    model = quantize_model(tiny(), mode)
    seq = streams(1, 12)[0][None]
    T, P = seq.shape[1], 8
    with torch.no_grad():
        full = model(seq)
        pos = torch.arange(T)[None].float()
        valid = torch.ones(1, T, dtype=torch.bool)
        model.setup_cache(1, T)
        hs = [prefill(model, seq[:, :P], pos[:, :P], valid[:, :P], P)]
        for t in range(P, T):
            hs.append(decode_one_token(model, seq[:, t:t + 1], pos[:, t:t + 1], valid[:, :t + 1], torch.tensor([t])))
        model.clear_cache()
    torch.testing.assert_close(torch.stack(hs, 1)[0], full[0, P - 1:], atol=2e-5, rtol=1e-4)


@pytest.mark.slow
def test_compiled_batch1_step_matches_eager():
    """The compiled CPU step multiplies by matvec (int4: its own grouped form): the same tokens and hidden states."""
    assert torch.equal(matvec(torch.ones(1, 4), torch.eye(4)[:3]), F.linear(torch.ones(1, 4), torch.eye(4)[:3]))
    for mode in ("", "int8", "int4"):
        model = quantize_model(tiny(), mode)
        step = torch.compile(decode_one_token, dynamic=False, options=decode_compile_options("cpu"))
        seq = streams(1, 4)[0][None]
        T = seq.shape[1]
        pos, valid = torch.arange(T)[None].float(), torch.ones(1, T, dtype=torch.bool)
        with torch.no_grad():
            model.setup_cache(1, T)
            prefill(model, seq[:, :T - 1], pos[:, :T - 1], valid[:, :T - 1], T - 1)
            args = (seq[:, -1:], pos[:, -1:], valid, torch.tensor([T - 1]))
            eager, compiled = decode_one_token(model, *args), step(model, *args)
            model.clear_cache()
        torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
        if mode != "int8":  # the whole compiled step, sampling included, once (fp32's: tests/test_sample.py)
            continue
        greedy = Sampling(temperature=0.0)
        prompts = [make_prompt(text_to_tokens("Hi there."))]
        out = generate(model, prompts, 6, greedy, decode_step=compile_decode_step("cpu"))
        assert torch.equal(out[0], generate(model, prompts, 6, greedy)[0])


def test_quantised_bytes_per_step_are_counted():
    model = tiny()
    fp = decode_bytes(model, 1, 10, 4)
    q8 = decode_bytes(quantize_model(copy.deepcopy(model), "int8"), 1, 10, 4)
    q4 = decode_bytes(quantize_model(copy.deepcopy(model), "int4"), 1, 10, 4)
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, Linear))
    rows = sum(m.weight.shape[0] for m in model.modules() if isinstance(m, Linear))
    assert fp - q8 == linears * 4 - (linears + 4 * rows)  # int8 weights and an fp32 scale per row
    assert q4 < q8 < fp


def test_the_setting_names_its_choices():
    assert Quantization().quantize == "" and Quantization("int4").quantize == "int4"
    with pytest.raises(ValueError, match="--quantize='int2' is not a quantisation"):
        Quantization("int2")
