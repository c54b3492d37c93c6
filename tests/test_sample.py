"""sample.py's building blocks: text chunking, long texts, voice prompts, guidance, streaming."""

import importlib.util
import os

import numpy as np
import pytest
import torch

import speak as gen  # synthesize's module: its generate calls are recorded
from codec import StreamingDecoder
from conftest import ROOT, run
from data import load_model
from generate import Sampling, token_logprobs
from speak import most_likely, split_text, synthesize
from model import EOA, GPT, SOA, TEXT_OFFSET, GPTConfig, make_prompt, text_to_tokens


def test_split_text_keeps_sentences_and_characters_whole():
    text = ("Hello there. This is a much longer sentence that has to be split at spaces somewhere! Short? "
            "আমি বাংলায় কথা বলি। " + "x" * 50).encode()
    chunks = split_text(text, 36)
    assert all(0 < len(c) <= 36 for c in chunks)
    assert b" ".join(chunks).split() == text.split() or b"".join(b"".join(chunks).split()) == b"".join(text.split())
    for c in chunks:
        c.decode("utf-8")  # never cut inside a character
    assert chunks[0] == b"Hello there."


@pytest.mark.slow
def test_long_text_is_chunked_and_joined(trained, monkeypatch):
    _, out_dir = trained
    model, _ = load_model(os.path.join(out_dir, "ckpt.pt"))
    text = ("Call me tomorrow. " * 40).encode()  # far beyond the 192-token block
    calls = recording(monkeypatch)
    # strict=False: this barely trained model has never heard speech continue (its chunks may stop at once)
    out = synthesize(model, [text], Sampling(max_seconds=2, temperature=1.0), strict=False)[0]
    calls = [prompts for prompts, _ in calls]
    assert len(calls) > 5 and len(out) > 0 and ((out >= 0) & (out < 46656)).all()
    # every chunk after the first continues the previous one: its prompt ends with the previous chunk's audio
    assert all(len(p[0]) <= model.config.block_size for p in calls)


def recording(monkeypatch):
    """Make synthesize's generate calls record their prompts and anchors (one entry per batched call)."""
    calls, real_generate = [], gen.generate

    def generate(model, prompts, *a, **k):
        calls.append((prompts, k["anchors"]))
        return real_generate(model, prompts, *a, **k)

    monkeypatch.setattr(gen, "generate", generate)
    return calls


@pytest.mark.slow
def test_a_text_that_fits_is_one_chunk_and_anchored_models_speak_sentence_by_sentence(trained, monkeypatch):
    _, out_dir = trained
    model, _ = load_model(os.path.join(out_dir, "ckpt.pt"))
    calls = recording(monkeypatch)
    sentence = b"A sentence longer than a chunk of a long text."  # > 27 bytes, the budget a chunk shares
    synthesize(model, [sentence, b"Come here. Go now."], Sampling(max_seconds=2))
    assert len(calls) == 1 and calls[0][1] == [None, None]  # each text whole, in one batch, nothing anchored
    assert sorted(len(p) for p in calls[0][0]) == [len(b"Come here. Go now.") + 1, len(sentence) + 1]

    torch.manual_seed(0)  # its random weights, whatever ran before
    anchored = GPT(GPTConfig(**{**model.config.__dict__, "align_audio_pos": True, "anchor_continuations": True}))
    calls.clear()
    out = synthesize(anchored.eval(), [b"Come here. Go now.", b"One more."], Sampling(max_seconds=1, temperature=1.0))
    (first, first_anchors), (second, second_anchors) = calls
    assert first_anchors == [None, None] and len(second) == 1  # the second sentence continues the first ...
    assert second_anchors == [len(b"Come here.")]  # ... anchored at its space
    text = b"Come here. Go now."
    assert (second[0][:len(text)] - TEXT_OFFSET).tolist() == list(text) and second[0][len(text)] == SOA
    first_audio = second[0][len(text) + 1:].numpy()  # the first sentence's audio is the prompt's
    assert len(first_audio) > 0 and np.array_equal(out[0][:len(first_audio)], first_audio)


@pytest.mark.slow
def test_a_chunk_after_one_too_long_to_prompt_it_keeps_the_voice_of_an_earlier_one(trained, monkeypatch):
    _, out_dir = trained
    model, _ = load_model(os.path.join(out_dir, "ckpt.pt"))
    anchored = GPT(GPTConfig(**{**model.config.__dict__, "align_audio_pos": True, "anchor_continuations": True}))
    first, long_one, last = b"Hi.", b"A sentence of 26 bytes ok.", b"And one of 25 bytes here."  # chunks <= 27 bytes
    lengths = iter([5, 150, 40])  # the second chunk runs long: with its text it leaves no room for the third
    calls = []

    def generate(model, prompts, max_new, sampling, **kwargs):
        calls.append((prompts, kwargs["anchors"]))
        return [torch.randint(0, 46656, (next(lengths),))]

    monkeypatch.setattr(gen, "generate", generate)
    synthesize(anchored, [b" ".join([first, long_one, last])], Sampling(max_seconds=8))
    (_, a1), (p2, a2), (p3, a3) = calls
    assert a1 == [None] and a2 == [len(first)]
    assert a3 == [len(first)]  # prompted by the first chunk, the latest that fits, not by nothing (a new voice)
    assert bytes((p3[0][:len(first) + 1 + len(last)] - TEXT_OFFSET).tolist()) == first + b" " + last

    # a continuation's audio starts with the space before its text: as the next prompt, its text starts with it too
    lengths, calls = iter([5, 6, 7]), []
    synthesize(anchored, [b"Come here. Go now. Sit."], Sampling(max_seconds=8))
    (p3, a3) = calls[2]
    assert a3 == [len(b" Go now.")]
    assert bytes((p3[0][:len(b" Go now. Sit.")] - TEXT_OFFSET).tolist()) == b" Go now. Sit."


@pytest.mark.slow
def test_best_of_keeps_the_sample_whose_weakest_tokens_are_most_likely(trained, monkeypatch):
    t = torch.tensor
    assert most_likely([[t([-0.1, -5.0, -0.1])], [t([-1.0, -1.0, -1.0, -1.0])]], weakest=1) == 1
    assert most_likely([[t([-0.1, -0.2, -3.0])], [t([-2.0, -2.0])]], weakest=3) == 0
    assert most_likely([[t([])], [t([-9.0])]]) == 1  # nothing at all scores lowest
    # readings add up: the first sample is likelier after its prompt, far less likely on its text alone
    assert most_likely([[t([-0.1]), t([-4.0])], [t([-0.5]), t([-0.5])]], weakest=1) == 1

    _, out_dir = trained
    model, _ = load_model(os.path.join(out_dir, "ckpt.pt"))
    calls, outs = [], []
    real_generate = gen.generate

    def generate(model, prompts, *args, **kwargs):
        calls.append((prompts, kwargs["anchors"]))
        outs.append(real_generate(model, prompts, *args, **kwargs))
        return outs[-1]

    monkeypatch.setattr(gen, "generate", generate)
    voice = (b"Call me.", np.arange(20))
    out = synthesize(model, [b"Go now.", b"Sit down here."], Sampling(max_seconds=2, temperature=1.0, best_of=3),
                     voices=[voice, None])
    (prompts, anchors), = calls
    assert len(prompts) == 6  # three samples of each text, side by side in one batch
    assert all(torch.equal(p, prompts[3 * (j // 3)]) for j, p in enumerate(prompts))
    ends = [torch.cat([o, torch.tensor([EOA])]) for o in outs[0]]
    texts = [bytes((p[:p.tolist().index(SOA)] - TEXT_OFFSET).tolist()) for p in prompts[::3]]
    # a continuation is read after its prompt and after its own text alone, with the space before it that it speaks
    alone = {b"Call me. Go now.": b" Go now.", b"Sit down here.": None}
    scores = [[s] for s in token_logprobs(model, prompts, ends, anchors)]
    for j in range(6):
        if alone[texts[j // 3]]:
            own = make_prompt(text_to_tokens(alone[texts[j // 3]]), torch.zeros(0, dtype=torch.long))
            scores[j] += token_logprobs(model, [own], [ends[j]])
    kept = [outs[0][j + most_likely(scores[j:j + 3])].numpy() for j in (0, 3)]
    assert np.array_equal(out[0], kept[texts.index(b"Call me. Go now.")])
    assert np.array_equal(out[1], kept[texts.index(b"Sit down here.")])
    # the scores are the model's: a row's log-probabilities are those of its own forward pass
    p, o = prompts[0], ends[0]
    h = model(torch.cat([p, o])[None])[0, len(p) - 1:-1]
    first = model.coarse_logits(h[:1]).log_softmax(-1)[0, int(o[0]) // 216]
    first = first + model.fine_logits(h[:1], o[:1] // 216).log_softmax(-1)[0, int(o[0]) % 216]
    assert torch.allclose(scores[0][0][0], first, atol=1e-5) and len(scores[0][0]) == len(o)

@pytest.mark.slow
def test_guidance_and_voice_prompt_run_in_one_batch(trained):
    _, out_dir = trained
    model, _ = load_model(os.path.join(out_dir, "ckpt.pt"))
    voice = (b"Tell me now.", np.arange(20) * 7)
    texts = [b"Come here.", b"Go there quickly."]
    guided = Sampling(max_seconds=2, temperature=0, cfg_scale=2.0)
    a = synthesize(model, texts, guided, voices=[voice, voice])
    b = [synthesize(model, [t], guided, voices=[voice])[0] for t in texts]
    for x, y in zip(a, b):
        assert np.array_equal(x, y)  # batched guided greedy == one by one
    with pytest.raises(ValueError, match="voice prompt"):
        synthesize(model, texts[:1], voices=[(b"long", np.zeros(400, dtype=np.int64))])


@pytest.mark.slow
def test_each_text_samples_from_its_own_seed_whatever_its_batch_mates(trained, tmp_path):
    """Text i of a batch draws from its own stream, seeded seed + i, through its chunks and its best_of samples (cfg
    draws nothing more): sampled beside others it says what it says alone with that seed."""
    work, out_dir = trained
    model, _ = load_model(os.path.join(out_dir, "ckpt.pt"))
    voice = (b"Tell me now.", np.arange(15) * 11)
    texts = [b"Call me tomorrow.", b"We met at the old station. It was late. Nobody else was there.", b"Go."]
    for sampling in [Sampling(max_seconds=2, temperature=1.0, top_p=0.9), Sampling(max_seconds=2, best_of=2),
                     Sampling(max_seconds=2, temperature=1.0, cfg_scale=1.5)]:
        together = synthesize(model, texts, sampling, seed=11, voices=[voice, None, voice], strict=False)
        for i, text in enumerate(texts):
            alone = synthesize(model, [text], sampling, seed=11 + i, voices=[[voice, None, voice][i]], strict=False)
            assert len(alone[0]) > 0 and np.array_equal(together[i], alone[0]), (sampling, i)
        again = synthesize(model, texts[::-1], sampling, seed=[13, 12, 11], voices=[voice, None, voice], strict=False)
        assert all(np.array_equal(a, b) for a, b in zip(together, again[::-1]))  # a seed per text, any order
    assert not np.array_equal(*synthesize(model, texts[:1] * 2, Sampling(max_seconds=2, temperature=1.0)))
    # sample.py: the texts of a --text_file get --seed, --seed + 1, ...
    (tmp_path / "two.txt").write_text("Call me tomorrow.\nSit down here.\n")
    for name, args in [("both", ["--text_file=two.txt", "--seed=21"]), ("first", ["--text=Call me tomorrow.",
                       "--seed=21"]), ("second", ["--text=Sit down here.", "--seed=22"])]:
        run("sample.py", f"--out_dir={out_dir}", *args, "--temperature=1.0", "--max_seconds=2",
            f"--output_dir={name}", cwd=tmp_path)
    both = [np.load(tmp_path / "both" / f"00{i}.npy") for i in (0, 1)]
    assert np.array_equal(both[0], np.load(tmp_path / "first" / "000.npy"))
    assert np.array_equal(both[1], np.load(tmp_path / "second" / "000.npy"))


@pytest.mark.slow
@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=1.0),
                                      dict(temperature=1.0, cfg_scale=1.5)])
def test_texts_that_join_a_running_batch_and_stream_say_what_they_say_alone(trained, settings):
    """synthesize(join=...), as serve.py uses it: texts (and a long text's next chunks) that join the running batch
    at a step boundary, each streamed with its own end and dropped when its on_token says so, come out as each does
    alone (greedy, sampled with its own seed, guided), whatever the voices beside them and whenever they joined."""
    _, out_dir = trained
    model, _ = load_model(os.path.join(out_dir, "ckpt.pt"))
    greedy = Sampling(max_seconds=2, **settings)
    voice = (b"Tell me now.", np.arange(15) * 11)
    first = [b"We met at the old station. It was late. Nobody else was there.", b"Go."]  # 3 chunks; 1
    later = [(b"Call me tomorrow.", voice, 5), (b"Sit down here.", None, 6), (b"Drop me.", None, 7)]  # 2, 3, 4
    got, ended = {}, []

    def on_token(i, token):
        if token is None:
            ended.append(i)
        else:
            got.setdefault(i, []).append(token)
        return i != 4 or len(got[i]) < 3  # text 4 goes away after 3 tokens

    out = synthesize(model, first, greedy, seed=[3, 4], batch_size=3, voices=[voice, None], on_token=on_token,
                     strict=False, join=lambda n: [later.pop(0) for _ in range(min(n, len(later)))])
    texts = [(t, v) for t, v in zip(first, [voice, None])] + [(b"Call me tomorrow.", voice), (b"Sit down here.", None)]
    for i, (text, v) in enumerate(texts):
        alone = synthesize(model, [text], greedy, seed=3 + i, voices=[v], strict=False)[0]
        assert np.array_equal(out[i], alone) and got.get(i, []) == alone.tolist(), i
    assert len(got[4]) == 3 and 4 not in ended and sorted(ended) == [0, 1, 2, 3]
    assert len(out) == 5 and not later  # batch_size 3: 2 joined at once, 3 and 4 as rows came free


@pytest.mark.slow
def test_streaming_decoder_is_seamless():
    if importlib.util.find_spec("stable_codec") is None:
        pytest.skip("stable_codec not installed: pip install --no-deps -r requirements-codec.txt")
    from codec import Codec

    codec = Codec(os.path.join(ROOT, "tests", "fixtures", "tiny_stable_codec_config.json"), None, "cpu")
    ids = np.random.default_rng(0).integers(0, 46656, 90)
    whole = codec.decode([ids])[0]
    pieces = []
    decoder = StreamingDecoder(codec, pieces.append, hop=10, context=50, lookahead=4)
    for t in ids:
        decoder.push(int(t))
    assert len(pieces) >= 5 and sum(map(len, pieces)) < len(whole)  # audio came out before the end
    decoder.flush()
    streamed = np.concatenate(pieces)
    assert len(streamed) == len(whole) == 90 * 640
    assert np.abs(streamed - whole).max() < 0.02 * np.abs(whole).max()


@pytest.mark.slow
def test_sample_cli_prompt_stream_and_errors(trained, tmp_path):
    work, out_dir = trained
    np.save(tmp_path / "voice.npy", np.arange(15) * 11)
    proc = run("sample.py", f"--out_dir={out_dir}", "--text=Call me.", f"--prompt_tokens={tmp_path}/voice.npy",
               "--prompt_text=Tell me now.", "--cfg_scale=1.5", "--stream=True", "--max_seconds=2",
               f"--output_dir={tmp_path}/s", cwd=work)
    assert "streamed: time to first token" in proc.stderr and os.path.exists(tmp_path / "s" / "000.npy")
    for args, needle in [(["--prompt_tokens=" + str(tmp_path / "voice.npy")], "needs its transcript"),
                         (["--prompt_text=hello"], "needs --prompt_audio"),
                         (["--prompt_audio=/nonexistent.wav", "--prompt_text=hi"],
                          "--prompt_audio /nonexistent.wav cannot be read"),
                         (["--cfg_scale=0"], "cfg_scale"), (["--max_seconds=-1"], "max_seconds"),
                         (["--best_of=0"], "best_of"), (["--stream=True", "--best_of=2"], "best_of"),
                         (["--stream=True", "--text_file=" + str(tmp_path / "two.txt")], "one text")]:
        (tmp_path / "two.txt").write_text("one\ntwo\n")
        extra = [] if any(a.startswith("--text_file") for a in args) else ["--text=hi"]
        proc = run("sample.py", f"--out_dir={out_dir}", *extra, *args, cwd=work, check=False)
        assert proc.returncode == 1 and needle in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


@pytest.mark.slow
def test_sample_writes_wav_and_a_readable_spectrogram(trained, tmp_path):
    if importlib.util.find_spec("stable_codec") is None or importlib.util.find_spec("matplotlib") is None:
        pytest.skip("needs the codec and matplotlib: bash setup.sh")
    import soundfile as sf

    work, out_dir = trained
    fixture = os.path.join(ROOT, "tests", "fixtures", "tiny_stable_codec_config.json")
    run("sample.py", f"--out_dir={out_dir}", "--text=Call me tomorrow.", "--audio=yes", "--plot=True",
        f"--codec_config={fixture}", "--codec_ckpt=", "--max_seconds=2", f"--output_dir={tmp_path}", cwd=work)
    tokens = np.load(tmp_path / "000.npy")
    wav, sr = sf.read(tmp_path / "000.wav")
    assert sr == 16000 and len(wav) == 640 * len(tokens)
    png = (tmp_path / "000.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000  # a drawn spectrogram, not an empty canvas


@pytest.mark.slow
def test_decode_compile_options_exist_in_this_torch(monkeypatch):
    """The CUDA settings of the compiled step (no GPU here) are options this torch knows: torch.compile checks them
    when it wraps the function, and an unknown one (a renamed inductor setting after an upgrade) raises."""
    from generate import decode_and_sample, decode_compile_options

    cpu = decode_compile_options("cpu")  # each matvec's input computed once, not once per weight row
    assert cpu == {"realize_acc_reads_threshold": 1}
    torch.compile(decode_and_sample, dynamic=False, options=cpu)
    for capability, pdl in (((8, 0), False), ((9, 0), True)):  # programmatic dependent launch: Hopper and newer
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        options = decode_compile_options("cuda")
        assert options["triton.cudagraphs"] and options.get("triton.enable_pdl", False) == pdl
        torch.compile(decode_and_sample, dynamic=False, options=options)
    with pytest.raises(RuntimeError, match="Unexpected optimization option"):
        torch.compile(decode_and_sample, options={**options, "triton.no_such_setting": True})


@pytest.mark.slow
def test_compiled_decode_step_speaks_as_the_eager_one(trained):
    """sample.py --compile: torch.compile'd decode_and_sample (a CUDA graph on GPU) must not change the output."""
    from generate import compile_decode_step

    _, out_dir = trained
    model, _ = load_model(os.path.join(out_dir, "ckpt.pt"))
    texts = [b"Call me tomorrow.", b"A longer line of text to say."]
    greedy = Sampling(max_seconds=2, temperature=0)
    eager = synthesize(model, texts, greedy)
    step = compile_decode_step("cpu")  # what sample.py --compile runs
    compiled = synthesize(model, texts, greedy, decode_step=step)
    for a, b in zip(eager, compiled):
        assert np.array_equal(a, b)
    # sampling runs in the compiled step too, from each text's own draws (draw_noise), given to the graph as input
    sampling = Sampling(max_seconds=2, temperature=1.0)
    sampled = [synthesize(model, texts, sampling, decode_step=step) for _ in range(2)] + [synthesize(model, texts,
                                                                                                     sampling)]
    for a, b, c in zip(*sampled):
        assert len(a) > 0 and np.array_equal(a, b) and np.array_equal(a, c) and ((a >= 0) & (a < 46656)).all()


@pytest.mark.slow
def test_a_chunk_that_comes_back_without_its_speech_is_an_error(trained, monkeypatch):
    """A model that never heard speech continue ends every chunk after the first at once: said, with the fix. A
    chunk that comes back short now and then (a slip) is sampled again."""
    _, out_dir = trained
    model, _ = load_model(os.path.join(out_dir, "ckpt.pt"))
    text = b"Come here now please. Go there quickly today. Sit down."  # three chunks in a 192-token block
    frames = iter([])
    monkeypatch.setattr(gen, "generate", lambda m, prompts, *a, **k: [torch.randint(0, 46656, (next(frames),))])
    frames = iter([60, 2, 1, 0])  # the second chunk, three times
    with pytest.raises(gen.SpeechMissing, match="chunk 2 of 3, ended after 0 frames .* has not learned to continue"):
        synthesize(model, [text], Sampling(max_seconds=8))
    anchored = GPT(GPTConfig(**{**model.config.__dict__, "align_audio_pos": True, "anchor_continuations": True}))
    frames = iter([60, 2, 1, 0])  # a model that has learned to continue stopped: a slip, three times
    with pytest.raises(gen.SpeechMissing, match="stopped mid-text 3 times: try --best_of"):
        synthesize(anchored, [text], Sampling(max_seconds=8))
    frames = iter([60, 2, 50, 40])  # the slip sampled again comes back whole
    assert [len(o) for o in synthesize(anchored, [text], Sampling(max_seconds=8))] == [150]
    frames = iter([60, 2, 50])  # eval.py scores short outputs instead
    assert [len(o) for o in synthesize(model, [text], Sampling(max_seconds=8), strict=False)] == [112]
