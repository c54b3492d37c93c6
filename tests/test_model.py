"""model.py, generate.py and optim.py: shapes, causal masking, RoPE and RMSNorm, packed rows, activation
checkpointing, the KV cache, batching and sampling, the optimizers."""

import itertools
import math
import random

import pytest
import torch

import generate as generate_module
from generate import Sampling, decode_and_sample, decode_one_token, generate, pick, prefill, sample_audio_token
from model import EOA, GPT, N_AUDIO, N_COARSE, N_FINE, PAD, SOA, TEXT_OFFSET, VOCAB_SIZE, GPTConfig, make_prompt
from layers import RMSNorm
from model import apply_rope, packed_layout, rope_tables, stream_positions, text_to_tokens
from optim import Muon, adamw, configure_optimizers


def tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(block_size=64, n_layer=2, n_head=4, n_embd=32, qk_norm=True)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def stream(text, n_audio, seed=0):
    g = torch.Generator().manual_seed(seed)
    return make_prompt(text_to_tokens(text), torch.randint(0, N_AUDIO, (n_audio,), generator=g))


def test_token_layout():
    assert VOCAB_SIZE % 64 == 0 and VOCAB_SIZE > PAD
    assert (TEXT_OFFSET, SOA, EOA) == (46656, 46912, 46913)
    assert text_to_tokens("আ").tolist() == [TEXT_OFFSET + b for b in "আ".encode()]  # 3 bytes, one each
    assert text_to_tokens("").numel() == 0


def test_shapes_and_loss_only_on_targets():
    model = tiny()
    x = torch.randint(0, VOCAB_SIZE, (3, 20))
    assert model(x).shape == (3, 20, 32)
    y = torch.full((3, 20), -1)
    y[:, 10:] = torch.randint(0, N_AUDIO, (3, 10))
    y[:, -1] = EOA
    loss = model(x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    y2 = y.clone()
    y2[:, :10] = 7  # a change where targets were masked changes the loss; masked positions never count
    assert not torch.isclose(model(x, y2), loss)


def test_factored_head_is_the_exact_joint_distribution():
    model = tiny()
    h = model(torch.randint(0, VOCAB_SIZE, (1, 5)))[0, -1:]
    log_coarse = model.coarse_logits(h).log_softmax(-1)[0]  # [217]
    fine = model.fine_logits(h.expand(N_COARSE, -1), torch.arange(N_COARSE)).log_softmax(-1)  # [216, 216]
    joint = (log_coarse[:N_COARSE, None] + fine).flatten()  # log P(id) for id = coarse * 216 + fine
    assert joint.shape == (N_AUDIO,)
    torch.testing.assert_close(torch.cat([joint, log_coarse[-1:]]).logsumexp(0), torch.tensor(0.0), atol=1e-5,
                               rtol=0)
    # the training loss is -log P(target) under that same joint
    x = torch.randint(0, VOCAB_SIZE, (1, 5))
    h = model(x)[0]
    targets = torch.tensor([12345, 46655, 0, EOA, 999])
    expected = []
    for i, t in enumerate(targets.tolist()):
        lc = model.coarse_logits(h[i]).log_softmax(-1)
        if t == EOA:
            expected.append(-lc[N_COARSE])
        else:
            lf = model.fine_logits(h[i], torch.tensor(t // N_FINE)).log_softmax(-1)
            expected.append(-(lc[t // N_FINE] + lf[t % N_FINE]))
    torch.testing.assert_close(model(x, targets[None]), torch.stack(expected).mean())


def test_causal_masking():
    model = tiny()
    x = torch.randint(0, VOCAB_SIZE, (1, 16))
    x2 = x.clone()
    x2[0, 10:] = (x2[0, 10:] + 1) % VOCAB_SIZE
    a, b = model(x), model(x2)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_rope_is_the_pairwise_rotation_bit_for_bit():
    x = torch.randn(2, 5, 3, 8)
    pos = torch.rand(2, 5) * 100
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)
    angles = pos[..., None] * inv_freq
    cos, sin = angles.cos()[:, :, None], angles.sin()[:, :, None]
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # the rotation as it was written before: split, rotate, stack
    expected = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    assert torch.equal(apply_rope(x, *rope_tables(pos, inv_freq)), expected)


def test_compiled_ropes_partners_are_the_swapped_pairs(monkeypatch):
    """The form a compiled graph takes (neighbours on either side), run eagerly: the same values and gradients."""
    x = torch.randn(2, 5, 3, 8, requires_grad=True)
    tables = rope_tables(torch.rand(2, 5) * 100, 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8))
    g = torch.randn(2, 5, 3, 8)
    y = apply_rope(x, *tables)
    dx = torch.autograd.grad(y, x, g)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    y2 = apply_rope(x, *tables)
    assert torch.equal(y, y2) and torch.equal(dx[0], torch.autograd.grad(y2, x, g)[0])


def test_rmsnorm_has_nn_rmsnorms_outputs_and_gradients():
    torch.manual_seed(0)
    ours, theirs = RMSNorm(16), torch.nn.RMSNorm(16)
    with torch.no_grad():
        ours.weight.normal_()
        theirs.weight.copy_(ours.weight)
    x = torch.randn(3, 5, 16, requires_grad=True)
    g = torch.randn(3, 5, 16)
    grads = []
    for norm in (ours, theirs):
        y = norm(x)
        grads.append((y,) + torch.autograd.grad(y, (x, norm.weight), g))
    assert torch.equal(grads[0][0], grads[1][0])  # the same forward bits: greedy tokens and losses stay
    for a, b in zip(grads[0][1:], grads[1][1:]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"n_kv_head": 2}, {"tie_weights": True, "qk_norm": False},
                                {"audio_pos_rate": 0.55}, {"audio_pos_rate": 0.55, "align_audio_pos": True}])
def test_kv_cache_matches_full_forward(kw):
    model = tiny(**kw)
    s = stream("hello", 12)[None]
    full = model(s)
    P = 8
    model.setup_cache(1, s.shape[1])
    valid = torch.ones(1, s.shape[1], dtype=torch.bool)
    soa_at = torch.tensor([[int((s[0] == SOA).nonzero()[0])]])
    pos = stream_positions(torch.arange(s.shape[1])[None], soa_at, model.config.audio_pos_rate,
                           model.config.align_audio_pos)
    logits = [prefill(model, s[:, :P], pos[:, :P], valid, P)]
    for t in range(P, s.shape[1]):
        logits.append(decode_one_token(model, s[:, t:t + 1], pos[:, t:t + 1], valid, torch.tensor([t])))
    model.clear_cache()
    torch.testing.assert_close(torch.stack(logits, 1), full[:, P - 1:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.coarse_logits(torch.stack(logits, 1)), model.coarse_logits(full[:, P - 1:]),
                               atol=1e-4, rtol=1e-4)


def targets_of(s):
    """What data.get_batch makes of a stream: inputs all but the EOA, targets the next audio id or the EOA."""
    y = torch.where(s[1:] < N_AUDIO, s[1:], -1)
    y[-1] = EOA
    return s[:-1], y


@pytest.mark.parametrize("kw", [{}, {"n_kv_head": 2}, {"audio_pos_rate": 0.55},
                                {"audio_pos_rate": 0.55, "align_audio_pos": True},
                                {"audio_pos_rate": 0.55, "align_audio_pos": True, "anchor_continuations": True},
                                {"audio_pos_rate": 0.55, "align_audio_pos": True, "anchor_continuations": True,
                                 "mark_borders": True}])
def test_packed_row_equals_each_utterance_alone(kw):
    model = tiny(**kw)
    if model.border is not None:
        with torch.no_grad():
            model.border.normal_()
    utterances = [stream("hello", 9, seed=1), stream("", 6, seed=2), stream("a longer text", 14, seed=3),
                  stream("x", 3, seed=4)]  # the second without its text, as text_dropout makes them
    parts = [targets_of(s) for s in utterances]
    anchors = [torch.full((len(x),), -1) for x, _ in parts]
    anchors[0][5 + 4], anchors[2][13 + 6] = 3, 8  # two sentences: the 4th / 6th frame ends the first
    pad = 64 - sum(len(x) for x, _ in parts)
    x = torch.cat([x for x, _ in parts] + [torch.full((pad,), PAD)])[None]
    y = torch.cat([y for _, y in parts] + [torch.full((pad,), -1)])[None]
    doc = torch.cat([torch.full((len(p[0]),), d) for d, p in enumerate(parts)] + [torch.full((pad,), 4)])[None]
    anchor = torch.cat(anchors + [torch.full((pad,), -1)])[None]
    packed = model(x, doc=doc, anchor=anchor)[0]
    at, losses = 0, []
    for (ux, uy), ua in zip(parts, anchors):
        alone = model(ux[None], anchor=ua[None])[0]
        torch.testing.assert_close(packed[at:at + len(ux)], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.coarse_logits(packed[at:at + len(ux)]), model.coarse_logits(alone),
                                   atol=1e-5, rtol=0)
        losses.append(model(ux[None], uy[None], anchor=ua[None]) * int((uy >= 0).sum()))
        at += len(ux)
    # the row's loss is the mean over all its targets, as if the utterances had been run one by one
    torch.testing.assert_close(model(x, y, doc=doc, anchor=anchor), sum(losses) / int((y >= 0).sum()), atol=1e-5,
                               rtol=0)
    # anchors move positions only in a model that uses them
    moved = not torch.allclose(packed, model(x, doc=doc)[0])
    assert moved == model.config.anchor_continuations


def test_packed_layout_restarts_positions_per_utterance():
    a, b = stream("ab", 3), stream("xyz", 2)  # [a b SOA audio audio audio], [x y z SOA audio audio]
    idx = torch.cat([a, b])[None]
    doc = torch.tensor([[5] * len(a) + [2] * len(b)])  # any ids: an utterance is a run of equal ones
    pos, mask, starts = packed_layout(idx, doc, rate=0.5)
    assert pos[0].tolist() == [0, 1, 2, 2.5, 3, 3.5, 0, 1, 2, 3, 3.5, 4]
    assert packed_layout(idx, doc, rate=0.5, aligned=True)[0][0].tolist() == [0, 1, 2, 0, 0.5, 1, 0, 1, 2, 3, 0, 0.5]
    assert starts[0].nonzero().flatten().tolist() == [0, len(a)]
    # the first utterance continues after its 2nd frame at byte 2: that frame sits a step before it, the next at it
    anchor = torch.full_like(idx, -1)
    anchor[0, 4] = 2
    aligned = packed_layout(idx, doc, rate=0.5, aligned=True, anchor=anchor)[0][0].tolist()
    assert aligned == [0, 1, 2, 0, 1.5, 2, 0, 1, 2, 3, 0, 0.5]
    block = torch.zeros(len(idx[0]), len(idx[0]), dtype=torch.bool)
    block[:len(a), :len(a)] = block[len(a):, len(a):] = True
    assert torch.equal(mask[0, 0], block.tril())


def test_activation_checkpointing_gives_the_same_gradients():
    grads, calls = [], []
    for checkpointing in (False, True):
        model = tiny(dropout=0.1).train()  # dropout too: the recomputed forward must draw the same masks
        model.activation_checkpointing = checkpointing
        model.blocks[0].register_forward_pre_hook(lambda *_: calls.append(checkpointing))
        x = torch.randint(0, VOCAB_SIZE, (2, 24), generator=torch.Generator().manual_seed(0))
        y = torch.randint(0, N_AUDIO, (2, 24), generator=torch.Generator().manual_seed(1))
        doc = torch.tensor([[0] * 10 + [1] * 14, [0] * 24])
        torch.manual_seed(2)
        model(x, y, doc=doc).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert calls == [False, True, True]  # checkpointed, a block runs again in the backward pass
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize("kw", [{}, {"audio_pos_rate": 0.55}, {"audio_pos_rate": 0.55, "align_audio_pos": True}])
def test_batched_greedy_equals_one_by_one(kw):
    model = tiny(**kw)
    prompts = [make_prompt(text_to_tokens(t)) for t in ["a", "a longer text", "mid size"]]
    batched = generate(model, prompts, 12, Sampling(temperature=0))
    alone = [generate(model, [p], 12, Sampling(temperature=0))[0] for p in prompts]
    for a, b in zip(batched, alone):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mark_borders", [False, True])
def test_anchored_generation_sees_the_positions_training_gives(mark_borders):
    """A voice prompt anchored at the byte its new text starts: generating equals the training stream's forward."""
    model = tiny(audio_pos_rate=0.55, align_audio_pos=True, anchor_continuations=True, mark_borders=mark_borders)
    if mark_borders:
        with torch.no_grad():
            model.border.normal_()  # a trained mark, not the zeros it starts from
    g = torch.Generator().manual_seed(3)
    prompt_audio = torch.randint(0, N_AUDIO, (11,), generator=g)
    prompts = [make_prompt(text_to_tokens("first one. then this"), prompt_audio), make_prompt(text_to_tokens("hi"))]
    anchors = [10, None]  # the prompt's sentence ends at byte 10: " then this" is new
    fed_at = []

    def recording_step(model, token, pos, valid, input_pos, *sampling):
        fed_at.append(pos[0].item())
        return decode_and_sample(model, token, pos, valid, input_pos, *sampling)

    out = generate(model, prompts, 8, Sampling(temperature=0), anchors=anchors, decode_step=recording_step)
    assert fed_at == pytest.approx([10 + 0.55 * k for k in range(len(fed_at))])  # the new speech starts at byte 10
    unanchored = generate(model, prompts[1:], 8, Sampling(temperature=0))[0]
    assert torch.equal(out[1], unanchored)  # an unanchored row is unchanged
    full = torch.cat([prompts[0], out[0]])
    anchor = torch.full_like(full, -1)
    anchor[len(prompts[0]) - 1] = 10  # as data.get_batch marks a two-sentence utterance's border
    h = model(full[None], anchor=anchor[None])[0, len(prompts[0]) - 1:-1]
    assert torch.equal(sample_audio_token(model, h, Sampling(temperature=0)), out[0])
    assert not torch.allclose(h, model(full[None])[0, len(prompts[0]) - 1:-1])  # the anchor moved the positions
    if mark_borders:  # and the mark is in both paths: without it, the same positions give other states
        with torch.no_grad():
            model.border.zero_()
        assert not torch.allclose(h, model(full[None], anchor=anchor[None])[0, len(prompts[0]) - 1:-1])


def test_sampling_emits_only_audio_or_eoa():
    model = tiny()
    h = torch.randn(256, 32)
    for kw in [dict(temperature=1.0), dict(temperature=0), dict(top_k=5), dict(top_p=0.9), dict(temperature=3.0)]:
        tokens = sample_audio_token(model, h, Sampling(**kw))
        assert ((tokens >= 0) & (tokens < N_AUDIO) | (tokens == EOA)).all(), kw
    with torch.no_grad():
        model.coarse_head.weight[-1] = 10.0  # make EOA overwhelmingly likely for h = ones
    assert (sample_audio_token(model, torch.ones(4, 32), Sampling(temperature=1.0)) == EOA).all()
    out = generate(tiny(), [make_prompt(text_to_tokens("hi"))] * 4, 20, Sampling(temperature=1.5))
    assert all(((o >= 0) & (o < N_AUDIO)).all() for o in out)


def test_top_k_one_is_greedy_and_top_p_keeps_the_head():
    model = tiny()
    h = torch.randn(8, 32)
    greedy = sample_audio_token(model, h, Sampling(temperature=0))
    assert torch.equal(sample_audio_token(model, h, Sampling(temperature=1.0, top_k=1)), greedy)
    assert torch.equal(sample_audio_token(model, h, Sampling(temperature=1.0, top_p=1e-6)), greedy)


@pytest.mark.parametrize("kw", [dict(temperature=1.3, top_p=0), dict(temperature=0.7, top_p=0.8),
                                dict(temperature=1.0, top_k=5, top_p=1), dict(temperature=0.9, top_k=8, top_p=0.5),
                                dict(temperature=0.5, top_p=0.99)])
def test_pick_draws_from_the_cut_distribution(kw, monkeypatch):
    """pick's inverse-CDF draws against the distribution they should follow: top-k, then the smallest set of most
    likely classes whose mass reaches top_p, renormalised; nothing outside it ever comes out. Rows whose nucleus
    holds more than the NUCLEUS_HEAD classes pick looks at first (top_p=0.99) are sorted whole."""
    torch.manual_seed(0)
    logits, n, sampling = torch.randn(1, 30) * 0.6, 200_000, Sampling(**kw)
    monkeypatch.setattr(generate_module, "NUCLEUS_HEAD", 16)
    got = pick(logits.expand(n, -1), sampling, torch.rand(n)).bincount(minlength=30).float() / n
    z, order = (logits[0] / sampling.temperature).sort(descending=True)
    keep = torch.arange(30) < (sampling.top_k or 30)
    p = z.masked_fill(~keep, float("-inf")).softmax(-1)  # top-k, renormalised, then the nucleus
    if 0 < sampling.top_p < 1:
        keep &= p.cumsum(0) - p <= sampling.top_p
    want = torch.zeros(30).index_put_((order[keep],), p[keep] / p[keep].sum())
    assert 1 < int(keep.sum()) < 30 or not (sampling.top_k or 0 < sampling.top_p < 1)
    assert (got[want == 0] == 0).all() and (got - want).abs().max() < 0.005  # ~5 standard errors at most


@pytest.mark.parametrize("calls", ["as set", "free"])
def test_stream_rows_join_stop_and_end_at_their_own_caps(calls, monkeypatch):
    """generate.stream's continuous batching: rows joining at step boundaries (into rows that ended, and the yields'
    spare width), each row's own max_new_tokens, a row stopped by its caller; every row says what it says alone.
    Calls free: every row that starts at a slot of its own is prefilled, and reads the cache, in calls of its own."""
    if calls == "free":
        monkeypatch.setattr(generate_module, "WINDOW_CALL", {"cpu": 0})
        monkeypatch.setattr(generate_module, "PREFILL_CALL", {"cpu": 0})
    model = tiny(align_audio_pos=True, audio_pos_rate=0.57)
    texts = ["hi", "a longer prompt here", "x", "mid", "zz"]
    prompts = [make_prompt(text_to_tokens(t)) for t in texts]
    sampling = Sampling(temperature=1.0)
    gens = lambda i: torch.Generator().manual_seed(10 + i)  # noqa: E731
    alone = [generate(model, [p], cap, sampling, [gens(i)])[0].tolist()
             for i, (p, cap) in enumerate(zip(prompts, [6, 9, 12, 7, 9]))]
    waiting, rows, got, stop, step = [2, 3, 4], {0: 0, 1: 1}, {}, set(), 0

    def join(free):
        if step < 3 or not waiting:  # the first joins after a few steps, into the spare rows
            return []
        new = []
        for j in free[:2]:
            i = waiting.pop(0)
            rows[j] = i
            new.append((prompts[i], None, gens(i), None, [6, 9, 12, 7, 9][i]))
            if not waiting:
                break
        return new

    for token in generate_module.stream(model, prompts[:2], [6, 9], sampling, [gens(0), gens(1)], join=join,
                                        capacity=3, stop=stop):
        step += 1
        for j, t in enumerate(token.tolist()):
            i = rows.get(j)
            if i is None or t == EOA:
                rows.pop(j, None)
                continue
            got.setdefault(i, []).append(t)
            if i == 4 and len(got[4]) == 2:
                stop.add(j)  # its caller goes away
                rows.pop(j)
    assert [got[i] for i in range(4)] == alone[:4] and got[4] == alone[4][:2] and not waiting
    assert [len(a) for a in alone] == [6, 9, 12, 7, 9]  # each ran to its own cap (a flat random model: no EOA)


def test_row_windows_cut_where_reading_costs_least():
    """generate.row_windows: runs of adjacent rows that cover every row once, each reading from its lowest start, at
    the least cost (slots read plus one call per run) of every way to cut a few rows."""
    rng = random.Random(0)
    assert generate_module.row_windows([5, 0, 9], math.inf) == [(0, 3, 0)]  # no call is worth it: one run
    for _ in range(200):
        n, call = rng.randint(1, 7), rng.choice([0, 20, 100])
        starts = [rng.randint(0, 60) for _ in range(n)]
        runs = generate_module.row_windows(starts, call)
        assert [a for a, _, _ in runs] == [0] + [b for _, b, _ in runs[:-1]] and runs[-1][1] == n
        assert all(a < b and lo == min(starts[a:b]) for a, b, lo in runs)

        def cost(runs):  # read up to slot 100
            return sum(call + (b - a) * (100 - lo) for a, b, lo in runs)

        every = [[(a, b, min(starts[a:b])) for a, b in zip((0, *cuts), (*cuts, n))]
                 for k in range(n) for cuts in itertools.combinations(range(1, n), k)]
        assert cost(runs) == min(map(cost, every))


def test_generate_respects_block_size():
    model = tiny()
    with pytest.raises(ValueError, match="block_size"):
        generate(model, [make_prompt(text_to_tokens("x" * 60))], 10)


def test_param_count_and_mfu():
    model = tiny()
    n = model.get_num_params()
    assert n == sum(p.numel() for p in model.parameters()) - model.wte.weight.numel() - 2 * 216 * 32
    mfu = model.estimate_mfu(tokens_per_iter=1000, seq_len=64, dt=1.0, peak_flops=1e12)
    assert mfu == pytest.approx(model.flops_per_token(64) * 1000 / 1e12)


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_optimizers_cover_every_parameter_once_and_step(name):
    model = tiny().train()
    optimizers = configure_optimizers(model, 0.1, 1e-2, (0.9, 0.95), "cpu", name)
    assert len(optimizers) == (2 if name == "muon" else 1)
    covered = [id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]]
    assert sorted(covered) == sorted(id(p) for p in model.parameters())
    if name == "muon":  # Muon takes exactly the blocks' matrices
        muon = {id(p) for group in optimizers[1].param_groups for p in group["params"]}
        assert muon == {id(p) for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    x = torch.randint(0, N_AUDIO, (4, 16))
    y = torch.randint(0, N_AUDIO, (4, 16))
    losses = []
    for _ in range(5):
        loss = model(x, y)
        losses.append(loss.item())
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="adamw"):
        configure_optimizers(model, 0.1, 1e-2, (0.9, 0.95), "cpu", "sgd")


def test_reused_table_gradient_is_the_dense_one_bit_for_bit():
    """
    On a CPU the input table's gradient arrives as its rows, summed into kept buffers (optim.reuse_table_grad): the
    parameters after steps of two micro-steps each (rows repeated within and across them) are those of autograd's
    dense gradient, bit for bit, and the gradient lives in the same buffer every step.
    """
    models = [tiny().train(), tiny().train()]
    reused = configure_optimizers(models[0], 0.1, 1e-2, (0.9, 0.95), "cpu")
    named = [(n, p) for n, p in models[1].named_parameters()]
    plain = [adamw([{"params": [p for n, p in named if p.dim() >= 2], "weight_decay": 0.1},
                    {"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0}], 1e-2, (0.9, 0.95), "cpu")]
    assert models[0].wte.sparse and not models[1].wte.sparse
    g = torch.Generator().manual_seed(0)
    where = set()
    for _ in range(3):
        batches = []
        for _ in range(2):
            x = torch.randint(0, 40, (4, 16), generator=g)  # 40 ids over 64 places: many repeats
            x[:, :4] = torch.randint(TEXT_OFFSET, TEXT_OFFSET + 4, (4, 4), generator=g)
            batches.append((x, torch.roll(x, -1, 1)))
        for model, optimizers in zip(models, (reused, plain)):
            for x, y in batches:
                model(x, y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if model is models[0]:
                assert not model.wte.weight.grad.is_sparse
                where.add(model.wte.weight.grad.data_ptr())
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
    assert len(where) == 1
    for (n, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.equal(a, b), n


def test_muon_matches_torch_muon():
    """
    Ours runs Newton-Schulz in float32 on CPU, matrices of one shape batched together; torch.optim.Muon one by one
    in bf16: the same steps up to bf16 rounding.
    """
    torch.manual_seed(0)
    shapes = [(96, 32), (32, 80), (96, 32), (32, 80), (96, 32)]  # tall and wide, three of one shape
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opts = [Muon(ours, lr=0.01, weight_decay=0.1),
            torch.optim.Muon(ref, lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")]
    start = [p.detach().clone() for p in ours]
    for _ in range(3):
        for a, b in zip(ours, ref):
            g = torch.randn(a.shape)
            a.grad, b.grad = g.clone(), g.clone()
        for opt in opts:
            opt.step()
    for a, b, s in zip(ours, ref, start):
        assert (a - s).abs().max() > 0.01  # it moved
        torch.testing.assert_close(a.detach(), b.detach(), atol=2e-3, rtol=0)
