"""
eval.py's real-speech modes as a user runs them, and the plots of speech_metrics.py:
    reference  Whisper tiny.en on 40 real Asterisk recordings (the ceiling): WER <= 10%
    roundtrip  the same pipeline through Stable Codec, here the tiny random-weight stand-in (every step runs; the
               scores mean nothing)
    model      the tiny checkpoint of conftest's `trained` fixture, decoded by the stand-in codec
plus the one-line errors and the "not computed" path. Tests skip, saying why, only where the eval extras, the codec
packages or the Asterisk prompts are missing; with REQUIRE_SPEECH_METRICS=1 (as in CI) a missing one is an error.
"""
import csv
import importlib.util
import json
import os
import struct
import sys

import numpy as np
import pytest
import soundfile

from conftest import ROOT, one_line_error, run

sys.path.insert(0, ROOT)
import speech_metrics as sm  # noqa: E402

pytestmark = pytest.mark.slow  # the whole file: see pytest.ini

TINY_CODEC = os.path.join(ROOT, "tests", "fixtures", "tiny_stable_codec_config.json")
FIXTURE_CODEC = [f"--codec_config={TINY_CODEC}", "--codec_ckpt="]
HAVE = sm.available()
HAVE["codec"] = None if importlib.util.find_spec("stable_codec") else "stable_codec not installed " \
    "(pip install --no-deps -r requirements-codec.txt)"
HAVE["av"] = None if importlib.util.find_spec("av") else "av not installed (pip install av)"
if os.environ.get("REQUIRE_SPEECH_METRICS") and any(HAVE.values()):
    raise RuntimeError(f"REQUIRE_SPEECH_METRICS is set but: {HAVE}")


def needs(*metrics):
    missing = [f"{m}: {HAVE[m]}" for m in metrics if HAVE[m]]
    return pytest.mark.skipif(bool(missing), reason="; ".join(missing) + " (CI installs the eval and codec extras)")


def last_json(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """Three Asterisk prompts saved as WAV files with an `audio_path|transcript` list, as a user would have them."""
    folder = tmp_path_factory.mktemp("recordings")
    lines = []
    for name, wav, text in sm.load_asterisk_prompts(3, min_words=5):
        soundfile.write(folder / f"{name}.wav", wav, sm.SR)
        lines.append(f"{name}.wav|{text}")
    (folder / "test.txt").write_text("\n".join(lines) + "\n")
    return folder


def tone(path, seconds=1.0):
    t = np.arange(int(seconds * sm.SR)) / sm.SR
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2), sm.SR)
    return path

# -----------------------------------------------------------------------------


@needs("asterisk", "whisper", "wer")
def test_reference_mode_on_real_speech(tmp_path):
    proc = run("eval.py", "--mode=reference", "--n=40", cwd=tmp_path)
    result = last_json(proc)
    print(f"\nreference mode: {result}")
    assert result["mode"] == "reference" and result["n"] == 40
    assert result["wer"] <= 0.10 and result["cer"] <= 0.05  # ~3% and ~1% measured; tiny.en on clean speech
    rows = read_csv(tmp_path / "eval_reference.csv")  # the default CSV path outside model mode
    assert len(rows) == 40 and all(r["hypothesis"] for r in rows)
    assert sum(float(r["wer"]) == 0 for r in rows) >= 30  # most prompts transcribed exactly
    # the same transcripts against the wrong references must score badly, or WER measures nothing
    texts, hyps = [r["text"] for r in rows], [r["hypothesis"] for r in rows]
    assert sm.wer_cer(texts[1:] + texts[:1], hyps)[0] > 0.7
    assert "WER" in proc.stdout and "worst transcripts" in proc.stdout  # the table a person reads
    if HAVE["mos"] is None:
        assert 3.3 < result["mos_p808"] < 4.5, result  # professional studio recordings
        assert all(3.0 < float(r["mos_p808"]) for r in rows)
    if HAVE["speaker"] is None:  # every line against another recording of the same speaker
        assert result["speaker_sim"] > 0.75 and min(float(r["speaker_sim"]) for r in rows) > 0.6, result
    assert result["eval_seconds"] < 300  # ~70 s on 2 cores, some of them busy


@needs("asterisk", "whisper", "wer", "codec")
def test_roundtrip_mode_runs_every_step(recordings, tmp_path):
    proc = run("eval.py", "--mode=roundtrip", f"--test_list={recordings}/test.txt", *FIXTURE_CODEC,
               f"--csv={tmp_path}/rt.csv", f"--audio_dir={tmp_path}/heard", cwd=tmp_path)
    result = last_json(proc)
    assert result["mode"] == "roundtrip" and result["n"] == 3
    assert result["reference_wer"] <= 0.5 and 0 <= result["wer"] and result["codec_seconds"] > 0
    assert result["delta_wer"] == pytest.approx(result["wer"] - result["reference_wer"], abs=1e-3)
    assert result["not_computed"]["speaker_sim"] == "no prompt_audio in the test list"
    if HAVE["speaker"] is None:
        assert "speaker_sim_to_reference" in result or "speaker_sim_to_reference" in result["not_computed"]
    rows = read_csv(tmp_path / "rt.csv")
    assert len(rows) == 3 and {"hypothesis", "reference_hypothesis", "wer", "reference_wer"} <= set(rows[0])
    for row in rows:  # the decoded clip: 16 kHz, the original rounded up to whole codec tokens (640 samples)
        original, sr = soundfile.read(recordings / f"{row['name']}.wav")
        decoded, decoded_sr = soundfile.read(next((tmp_path / "heard").glob(f"*_{row['name']}.wav")))
        assert decoded_sr == sr == 16000 and len(decoded) == -(-len(original) // 640) * 640
    assert "delta" in proc.stdout


@needs("whisper", "wer", "codec", "av")
def test_model_mode_speaks_scores_and_uses_voice_prompts(trained, tmp_path):
    work, out_dir = trained
    tone(tmp_path / "voice.wav")
    lines = [{"text": "Call me tomorrow.", "prompt_audio": "voice.wav", "prompt_text": "Hello there."},
             {"text": "Press one to continue."}, {"text": "Good night."}]
    (tmp_path / "lines.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    proc = run("eval.py", "--mode=model", f"--out_dir={out_dir}", f"--test_list={tmp_path}/lines.jsonl",
               "--max_seconds=2", *FIXTURE_CODEC, cwd=work)
    result = last_json(proc)
    assert result["mode"] == "model" and result["n"] == 3 and result["iter_num"] == 40
    assert 0 <= result["wer"] and 0 <= result["cer"] and result["tokens_per_s"] > 0
    assert 0 < result["audio_seconds"] <= 3 * 2 + 0.1  # --max_seconds caps each line
    if HAVE["speaker"] is None:  # a score, or the reason there is none (resemblyzer hears no voice in noise)
        assert "speaker_sim" in result or "silent" in result["not_computed"]["speaker_sim"], result
    rows = read_csv(os.path.join(out_dir, "eval_model.csv"))  # model mode's CSV lands beside the checkpoint
    assert [r["text"] for r in rows] == [line["text"] for line in lines]


def test_one_line_errors(tmp_path):
    # a Whisper model path that isn't there, and a codec that isn't there: "error: ...", exit 1, no traceback
    one_line_error(run("eval.py", "--mode=reference", f"--asr_model={tmp_path}/no-such-model", cwd=tmp_path,
                       check=False), "--asr_model", "no-such-model")
    one_line_error(run("eval.py", "--mode=roundtrip", f"--codec_config={tmp_path}/none.json", cwd=tmp_path,
                       check=False), "Stable Codec unavailable")
    (tmp_path / "bad.txt").write_text("missing.wav|some words\n")  # skipped and reported; then nothing is left
    proc = run("eval.py", "--mode=reference", f"--test_list={tmp_path}/bad.txt", cwd=tmp_path, check=False)
    one_line_error(proc, "no line of", "bad.txt", "1 missing audio")
    assert f"skip missing: missing audio ({tmp_path}/missing.wav)" in proc.stdout


@needs("wer", "av")
def test_missing_packages_are_not_computed(tmp_path):
    # stand-ins that fail to import, first on the path: Whisper, DNSMOS and resemblyzer are "not installed"
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for module in ("faster_whisper", "speechmos", "resemblyzer"):
        (hidden / f"{module}.py").write_text("raise ImportError('hidden by the test')\n")
    tone(tmp_path / "a.wav")
    tone(tmp_path / "b.wav", 2.0)
    (tmp_path / "list.jsonl").write_text('{"audio": "a.wav", "text": "one", "prompt_audio": "b.wav"}\n'
                                         '{"audio": "b.wav", "text": "two"}\n')
    env = {**os.environ, "PYTHONPATH": str(hidden)}
    proc = run("eval.py", "--mode=reference", f"--test_list={tmp_path}/list.jsonl", cwd=tmp_path, env=env)
    result = last_json(proc)
    assert result["n"] == 2 and result["wer"] is None and result["audio_seconds"] == pytest.approx(3.0)
    assert set(result["not_computed"]) == {"wer", "cer", "mos_p808", "speaker_sim"}
    for why in result["not_computed"].values():
        assert "hidden by the test" in why and "pip install" in why and "\n" not in why
    assert proc.stdout.count("not computed: ") == 4
    assert len(read_csv(tmp_path / "eval_reference.csv")) == 2

# -----------------------------------------------------------------------------
# pictures


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])  # IHDR: width, height


@needs("plot")
def test_plot_spectrogram(tmp_path):
    t = np.arange(int(1.5 * sm.SR)) / sm.SR
    chirp = 0.5 * np.sin(2 * np.pi * (200 + 1000 * t) * t)  # 200 Hz rising to 3.2 kHz
    fig = sm.plot_spectrogram(chirp, sm.SR, tmp_path / "spec.png", "a chirp")
    assert png_size(tmp_path / "spec.png") == (1000, 400) and os.path.getsize(tmp_path / "spec.png") > 20_000
    ax, bar = fig.axes  # the spectrogram and its colorbar
    assert ax.get_title() == "a chirp" and "(s)" in ax.get_xlabel() and "Hz" in ax.get_ylabel()
    assert ax.get_xlim()[1] == pytest.approx(1.5, abs=0.05) and ax.get_ylim() == (0, 8000)
    assert bar.get_ylabel() == "dB"
    db = ax.collections[0].get_array().reshape(80, -1)
    # the loudest band follows the chirp: low at the start, high at the end
    assert db[:, 10].argmax() < db[:, -10].argmax()


@needs("plot")
def test_plot_alignment(tmp_path):
    import torch
    text = "Call me tomorrow."
    attn = torch.softmax(-0.2 * (torch.arange(17.0)[:, None] - torch.arange(50.0)[None] * 17 / 50) ** 2, 0)
    fig = sm.plot_alignment(attn, tmp_path / "align.png", "diagonal", text=text)
    assert os.path.getsize(tmp_path / "align.png") > 10_000 and png_size(tmp_path / "align.png")[0] == 1000
    ax, bar = fig.axes
    assert ax.get_xlim() == pytest.approx((0, 2.0)) and "(s;" in ax.get_xlabel() and ax.get_ylabel() == "text byte"
    assert [t.get_text() for t in ax.get_yticklabels()][:4] == ["C", "a", "l", "l"]
    assert bar.get_ylabel() == "attention weight"
    with pytest.raises(ValueError, match="2-D"):
        sm.plot_alignment(np.zeros(5), tmp_path / "x.png")
