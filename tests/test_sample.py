"""sample.py's building blocks: text chunking, long texts, voice prompts, guidance, streaming."""

import importlib.util
import os

import numpy as np
import pytest
import torch

from conftest import ROOT, run
from model import GPT, SOA, TEXT_OFFSET, GPTConfig
from sample import StreamingDecoder, load_model, split_text, synthesize


def test_split_text_keeps_sentences_and_characters_whole():
    text = ("Hello there. This is a much longer sentence that has to be split at spaces somewhere! Short? "
            "আমি বাংলায় কথা বলি। " + "x" * 50).encode()
    chunks = split_text(text, 36)
    assert all(0 < len(c) <= 36 for c in chunks)
    assert b" ".join(chunks).split() == text.split() or b"".join(b"".join(chunks).split()) == b"".join(text.split())
    for c in chunks:
        c.decode("utf-8")  # never cut inside a character
    assert chunks[0] == b"Hello there."


def test_long_text_is_chunked_and_joined(trained):
    _, out_dir = trained
    model, _ = load_model(os.path.join(out_dir, "ckpt.pt"))
    text = ("Call me tomorrow. " * 40).encode()  # far beyond the 192-token block
    calls = []
    real_generate = model.generate
    model.generate = lambda prompts, *a, **k: calls.append(prompts) or real_generate(prompts, *a, **k)
    out = synthesize(model, [text], max_seconds=2, temperature=1.0)[0]
    assert len(calls) > 5 and len(out) > 0 and ((out >= 0) & (out < 46656)).all()
    # every chunk after the first continues the previous one: its prompt ends with the previous chunk's audio
    assert all(len(p[0]) <= model.config.block_size for p in calls)


def recording(model):
    """Make model.generate record its prompts and anchors (one entry per batched call)."""
    calls, real_generate = [], model.generate
    model.generate = lambda prompts, *a, **k: calls.append((prompts, k["anchors"])) or real_generate(prompts, *a, **k)
    return calls


def test_a_text_that_fits_is_one_chunk_and_anchored_models_speak_sentence_by_sentence(trained):
    _, out_dir = trained
    model, _ = load_model(os.path.join(out_dir, "ckpt.pt"))
    calls = recording(model)
    sentence = b"A sentence longer than a chunk of a long text."  # > 27 bytes, the budget a chunk shares
    synthesize(model, [sentence, b"Come here. Go now."], max_seconds=2)
    assert len(calls) == 1 and calls[0][1] == [None, None]  # each text whole, in one batch, nothing anchored
    assert sorted(len(p) for p in calls[0][0]) == [len(b"Come here. Go now.") + 1, len(sentence) + 1]

    anchored = GPT(GPTConfig(**{**model.config.__dict__, "align_audio_pos": True, "anchor_continuations": True}))
    calls = recording(anchored.eval())
    out = synthesize(anchored, [b"Come here. Go now.", b"One more."], max_seconds=1, temperature=1.0)
    (first, first_anchors), (second, second_anchors) = calls
    assert first_anchors == [None, None] and len(second) == 1  # the second sentence continues the first ...
    assert second_anchors == [len(b"Come here.")]  # ... anchored at its space
    text = b"Come here. Go now."
    assert (second[0][:len(text)] - TEXT_OFFSET).tolist() == list(text) and second[0][len(text)] == SOA
    first_audio = second[0][len(text) + 1:].numpy()  # the first sentence's audio is the prompt's
    assert len(first_audio) > 0 and np.array_equal(out[0][:len(first_audio)], first_audio)


def test_guidance_and_voice_prompt_run_in_one_batch(trained):
    _, out_dir = trained
    model, _ = load_model(os.path.join(out_dir, "ckpt.pt"))
    voice = (b"Tell me now.", np.arange(20) * 7)
    texts = [b"Come here.", b"Go there quickly."]
    a = synthesize(model, texts, max_seconds=2, temperature=0, cfg_scale=2.0, voices=[voice, voice])
    b = [synthesize(model, [t], max_seconds=2, temperature=0, cfg_scale=2.0, voices=[voice])[0] for t in texts]
    for x, y in zip(a, b):
        assert np.array_equal(x, y)  # batched guided greedy == one by one
    with pytest.raises(ValueError, match="voice prompt"):
        synthesize(model, texts[:1], voices=[(b"long", np.zeros(400, dtype=np.int64))])


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


def test_sample_cli_prompt_stream_and_errors(trained, tmp_path):
    work, out_dir = trained
    np.save(tmp_path / "voice.npy", np.arange(15) * 11)
    proc = run("sample.py", f"--out_dir={out_dir}", "--text=Call me.", f"--prompt_tokens={tmp_path}/voice.npy",
               "--prompt_text=Tell me now.", "--cfg_scale=1.5", "--stream=True", "--max_seconds=2",
               f"--output_dir={tmp_path}/s", cwd=work)
    assert "streamed: time to first token" in proc.stderr and os.path.exists(tmp_path / "s" / "000.npy")
    for args, needle in [(["--prompt_tokens=" + str(tmp_path / "voice.npy")], "needs its transcript"),
                         (["--prompt_text=hello"], "needs --prompt_audio"),
                         (["--prompt_audio=/nonexistent.wav", "--prompt_text=hi"], "cannot read --prompt_audio"),
                         (["--cfg_scale=0"], "cfg_scale"), (["--max_seconds=-1"], "max_seconds"),
                         (["--stream=True", "--text_file=" + str(tmp_path / "two.txt")], "one text")]:
        (tmp_path / "two.txt").write_text("one\ntwo\n")
        extra = [] if any(a.startswith("--text_file") for a in args) else ["--text=hi"]
        proc = run("sample.py", f"--out_dir={out_dir}", *extra, *args, cwd=work, check=False)
        assert proc.returncode == 1 and needle in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


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


def test_compiled_decode_step_speaks_as_the_eager_one(trained):
    """sample.py --compile: torch.compile'd decode_one_token (a CUDA graph on GPU) must not change the output."""
    from model import decode_one_token

    _, out_dir = trained
    model, _ = load_model(os.path.join(out_dir, "ckpt.pt"))
    texts = [b"Call me tomorrow.", b"A longer line of text to say."]
    eager = synthesize(model, texts, max_seconds=2, temperature=0)
    step = torch.compile(decode_one_token, dynamic=False)
    compiled = synthesize(model, texts, max_seconds=2, temperature=0, decode_step=step)
    for a, b in zip(eager, compiled):
        assert np.array_equal(a, b)
