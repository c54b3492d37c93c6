"""
Stable Codec as the speech tokenizer: audio <-> 25 tokens per second from a vocabulary of 46656.

Why this module exists: stable_codec.StableCodec takes a tensor that the caller has already made 16 kHz mono,
loudness-normalised and padded to the codec hop, and returns its tokens as a list of (B, S, 1) tensors; its
package also cannot be pip-installed next to a current torch. Codec does that preparation, speaks numpy, keeps
track of lengths, and imports stable_codec with the small install of requirements-codec.txt.

    codec = Codec()                               # loads checkpoints/stable-codec/{model_config.json,model.ckpt}:
                                                  # every tensor, or a one-line error (model.safetensors loads too)
    tokens, lengths = codec.encode([wav], [sr])   # wav: float array [L] or [L, C] at any rate
    audio = codec.decode(tokens, lengths)         # list of float32 arrays at 16 kHz
    StreamingDecoder(codec, write)                # audio as the tokens arrive (sample.py --stream)

A token id is a mixed-radix number: base-6 digit i is the quantisation level (0..5) of latent dimension i, and
level k is the latent value k * 2/5 - 1. So ids that differ in one digit differ in one latent dimension only
(fsq_ids_to_levels / levels_to_ids / levels_to_codes expose this structure to the model).

Install (keeps your torch) and get the weights, which are gated on Hugging Face (accept the licence there first):
    pip install --no-deps -r requirements-codec.txt
    hf download stabilityai/stable-codec-speech-16k --local-dir checkpoints/stable-codec
The codec's transformer needs flash-attn (CUDA) for its sliding-window attention; elsewhere stable_audio_tools
falls back to full attention and the real weights give degraded audio. Prepare token datasets on a GPU.
"""
import contextlib
import importlib.util
import io
import json
import math
import os
import sys
import types
import warnings

import numpy as np
import torch

from common import load_exactly, load_tensors, why_unreadable

SAMPLE_RATE = 16000
HOP = 640  # audio samples per token
TOKENS_PER_SECOND = SAMPLE_RATE // HOP  # 25
PRESET = '1x46656_400bps'  # one FSQ stage, 6 latent dimensions x 6 levels
LEVELS, DIMS = 6, 6
VOCAB = LEVELS ** DIMS  # 46656
TARGET_LUFS = -20.0  # the loudness the codec was trained at
CODEC_REPO = 'stabilityai/stable-codec-speech-16k'  # the Hugging Face model the weights come from
CONFIG_PATH = 'checkpoints/stable-codec/model_config.json'  # where `hf download` below puts the weights
CKPT_PATH = 'checkpoints/stable-codec/model.ckpt'
SAFETENSORS_PATH = 'checkpoints/stable-codec/model.safetensors'  # the same weights: either file is read

INSTALL = 'pip install --no-deps -r requirements-codec.txt'
DOWNLOAD = (f'pip install huggingface_hub && hf auth login && hf download {CODEC_REPO} '
            '--local-dir checkpoints/stable-codec (after accepting the licence on that model page)')


class CodecUnavailable(RuntimeError):
    """stable_codec or the weights are missing; the message is one line with the commands that fix it."""


class CodecCheckpointError(CodecUnavailable):
    """The codec's files are there but unusable: a config stable_audio_tools cannot build, or a checkpoint that is
    unreadable or holds another model's weights. One line naming the file and the fix."""

# -----------------------------------------------------------------------------
# token ids <-> FSQ levels <-> latent values

_BASIS = [LEVELS ** i for i in range(DIMS)]  # = cumprod([1, 6, 6, 6, 6, 6]), as in stable_codec's DitheredFSQ


def fsq_ids_to_levels(ids):
    """Token ids [...] -> LongTensor [..., 6] of levels 0..5 (digit i of the id in base 6 = dimension i)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    return ids.unsqueeze(-1) // torch.tensor(_BASIS, device=ids.device) % LEVELS


def levels_to_ids(levels):
    """LongTensor [..., 6] of levels 0..5 -> token ids [...]."""
    levels = torch.as_tensor(levels, dtype=torch.long)
    return (levels * torch.tensor(_BASIS, device=levels.device)).sum(-1)


def levels_to_codes(levels):
    """Levels [..., 6] -> the latent values the decoder sees: k * 2/5 - 1, one of -1, -0.6, -0.2, 0.2, 0.6, 1."""
    return torch.as_tensor(levels, dtype=torch.float32) * (2 / (LEVELS - 1)) - 1

# -----------------------------------------------------------------------------
# audio preparation (what stable_codec does itself only when given a file path)


def normalize_loudness(x, target=TARGET_LUFS):
    """Scale a 16 kHz mono clip to `target` LUFS like stable_audio_tools' VolumeNorm, which the codec was trained
    with: near-silence (mean square < 1e-6) is left alone, and a result that would clip is scaled to a 0.95 peak.
    pyloudnorm measures the same ITU-R BS.1770 loudness as torchaudio's Loudness (within 0.01 dB unless the
    signal nears full scale, where torchaudio clamps its filtered signal) and is hundreds of times faster than
    torchaudio without its compiled extension."""
    import pyloudnorm
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0 or np.mean(x ** 2) < 1e-6:
        return x.astype(np.float32)
    # BS.1770 gates 400 ms blocks: a shorter clip is measured repeated up to that length
    loudness = pyloudnorm.Meter(SAMPLE_RATE).integrated_loudness(np.resize(x, max(len(x), SAMPLE_RATE * 2 // 5)))
    if not np.isfinite(loudness):  # every block gated out: nothing to measure
        return x.astype(np.float32)
    y = x * 10 ** ((target - loudness) / 20)
    peak = np.abs(y).max()
    return (y * 0.95 / peak if peak > 1 else y).astype(np.float32)


def preprocess(wav, sample_rate):
    """Float array [L] or [L, C] (soundfile's layout) at any rate -> float32 [L'] mono, 16 kHz, -20 LUFS."""
    import soxr
    x = np.asarray(wav, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)  # downmix by averaging channels, as stable_audio_tools does
    if sample_rate != SAMPLE_RATE:
        x = soxr.resample(x, sample_rate, SAMPLE_RATE)
    return normalize_loudness(x)


def load_audio(path, sr=SAMPLE_RATE, format=None):
    """
    An audio file (a path, or a binary file object such as io.BytesIO of a file's bytes) -> mono float32 at sr
    (channels averaged, soxr's resampler, as preprocess): the one reader of sample.py, eval.py and prepare.py. WAV,
    FLAC, OGG, MP3 through soundfile; anything else FFmpeg reads through PyAV (requirements-eval.txt), and
    format='g722' for raw G.722. Raises ValueError with a one-line reason.
    """
    import soundfile
    import soxr
    if format is None:
        try:
            wav, file_sr = soundfile.read(path, dtype='float32', always_2d=True)
        except soundfile.LibsndfileError:
            pass  # not a format libsndfile knows: FFmpeg's turn
        except OSError as e:  # missing or unreadable file
            raise ValueError(e.strerror or str(e)) from None
        else:
            wav = wav.mean(axis=1)
            return wav if file_sr == sr else soxr.resample(wav, file_sr, sr).astype(np.float32)
    try:
        import av
    except ImportError:
        raise ValueError('not a format soundfile reads, and PyAV, which reads the rest, is not installed '
                         '(pip install av)') from None
    if hasattr(path, 'seek'):
        path.seek(0)  # soundfile may have read part of it
    try:
        resampler = av.AudioResampler(format='flt', layout='mono', rate=sr)
        chunks = []
        with av.open(path, format=format) as f:
            for frame in f.decode(audio=0):
                chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(frame)]
        chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]  # flush
    except Exception as e:  # FFmpeg's errors for a file that is not audio (or is not there)
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0] if str(e) else ''
        raise ValueError(why or type(e).__name__) from None
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


SILENCE_DB = -60.0  # a clip quieter than this (RMS, dB full scale) is silent: prepare.py skips it, a voice refuses it


def rms_db(x):
    """Loudness of a clip as RMS in dB full scale (-200 for digital silence): silent below SILENCE_DB."""
    return 10 * math.log10(max(float(np.mean(np.square(x, dtype=np.float64))), 1e-20))

# -----------------------------------------------------------------------------
# importing stable_codec without its training dependencies

# stable_audio_tools imports these at module level for training, logging, plotting and hub downloads, none of
# which the codec runs. Each one that is not installed is replaced by a placeholder while stable_codec is being
# imported (calling anything from it raises), which keeps them out of requirements-codec.txt.
# module imported -> package that provides it
_UNUSED_IMPORTS = {
    'k_diffusion': 'k_diffusion',
    'wandb': 'wandb',
    'pytorch_lightning': 'pytorch_lightning',
    'pytorch_lightning.loggers': 'pytorch_lightning',
    'huggingface_hub': 'huggingface_hub',
    'stable_audio_tools.interface.aeiou': 'matplotlib',  # stable_audio_tools' plots (matplotlib, PIL)
}


class _Placeholder(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise ImportError(f'{self.__name__}.{name} is not installed (codec.py stood in for it at import)')
        return unavailable


def _import_torchaudio():
    """PyPI's torchaudio wheels are CUDA builds for one torch release, so next to another torch (or a CPU-only
    one) the compiled extension fails to load and takes `import torchaudio` down with it. stable_codec needs only
    torchaudio's Python code, which torchaudio runs on its own when the extension is absent: import it that way."""
    if importlib.util.find_spec('torchaudio') is None:
        raise ModuleNotFoundError("No module named 'torchaudio'")
    try:
        import torchaudio
    except (OSError, RuntimeError, ImportError):
        for name in [n for n in sys.modules if n == 'torchaudio' or n.startswith('torchaudio.')]:
            del sys.modules[name]
        ext = types.ModuleType('torchaudio._extension')
        ext._IS_TORCHAUDIO_EXT_AVAILABLE = ext._IS_ALIGN_AVAILABLE = False
        ext.fail_if_no_align = lambda func: func
        sys.modules['torchaudio._extension'] = ext
        import torchaudio
    return torchaudio


def _import_stable_codec():
    _import_torchaudio()
    import soxr, pyloudnorm  # noqa: F401  (used by preprocess; checked here so a missing one is reported early)
    added = [m for m, pkg in _UNUSED_IMPORTS.items() if m not in sys.modules and importlib.util.find_spec(pkg) is None]
    sys.modules.update({m: _Placeholder(m) for m in added})
    try:
        from stable_codec import StableCodec  # its flash-attn notices go where Codec puts them (_library_output)
        import stable_audio_tools.models.autoencoders  # noqa: F401  (the model code: imports the rest now)
    finally:
        for m in added:  # nothing outside stable_audio_tools should ever see a placeholder
            sys.modules.pop(m, None)
    return StableCodec

# -----------------------------------------------------------------------------
# reading the codec's files: every tensor of the model from the checkpoint, or a one-line error

# stable_codec loads weights with stable_audio_tools' copy_state_dict, which skips every key whose name or shape does
# not match the model: a checkpoint of another config (or another stable_audio_tools' layer names) would load as
# random weights without a word, and prepare.py would write a corpus of meaningless tokens. So Codec builds the
# model with no checkpoint and loads the file itself, requiring an exact match.


def read_config(path):
    """The codec config as a dict, or CodecCheckpointError naming the file."""
    try:
        with open(path, encoding='utf-8') as f:
            config = json.load(f)
    except Exception as e:  # not JSON, not text, nested past the parser's depth, unreadable: all one mistake
        reason = e.strerror if isinstance(e, OSError) else (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise CodecCheckpointError(f'codec config {path} is not JSON ({reason}): pass the model_config.json that '
                                   f'came with the checkpoint, or download both again: {DOWNLOAD}') from None
    if not isinstance(config, dict):
        raise CodecCheckpointError(f'codec config {path} is JSON but not an object: pass the model_config.json '
                                   f'that came with the checkpoint')
    return config


def read_state_dict(path):
    """A codec checkpoint's tensors, read as stable_audio_tools' load_ckpt_state_dict reads the published files
    (get_pretrained_model loads those strictly, so their names are the model's own and nothing is stripped):
    *.safetensors with safetensors, anything else with torch.load as {'state_dict': {name: tensor}}, no code from
    the file run (common.load_tensors). Whatever is wrong with the file is a CodecCheckpointError of one line."""
    path = os.fspath(path)
    what = f'codec checkpoint {path} is not a Stable Codec checkpoint (model.ckpt or model.safetensors)'
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = load_tensors(path)
            state = state.get('state_dict') if isinstance(state, dict) else None
    except Exception as e:  # safetensors' and torch's errors for a cut or damaged file have no common type
        raise CodecCheckpointError(f'{what}: {why_unreadable(path, e)}; download it again: {DOWNLOAD}') from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CodecCheckpointError(f"{what}: it holds no {{'state_dict': {{name: tensor}}}}, the layout "
                                   "stable_audio_tools exports; use the published model.ckpt or model.safetensors")
    return state


def load_weights(model, state, ckpt_path, config_path):
    """Copy `state` into `model` if it holds exactly the model's tensors (every parameter and persistent buffer,
    same names and shapes, nothing else); otherwise CodecCheckpointError with the counts and one example each.
    Non-persistent buffers (the training FSQ's level tables) are computed from the config, never saved."""
    problems = load_exactly(model, state)
    if problems:
        raise CodecCheckpointError(f'codec checkpoint {ckpt_path} does not fit the model of {config_path}: '
                                   f'{problems}. Fix: pass the model_config.json that came with this '
                                   f'checkpoint, or download both again: {DOWNLOAD}')


# -----------------------------------------------------------------------------
# the library's output: one place decides what a user sees

_NOTED = set()  # notes already printed by this process: each is said once however many Codecs are built
_NOISE = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)  # e.g. torch's weight_norm deprecation


@contextlib.contextmanager
def _library_output():
    """Collect what stable_codec and stable_audio_tools print and warn while they are imported and build the model
    (loading notices and flash-attn notices on stdout, deprecations from torch). Yields the list of warnings;
    Codec turns the ones that matter into `note:` lines once the codec is built."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        yield caught


def _note(message):
    if message not in _NOTED:
        _NOTED.add(message)
        print(f'note: {message}', file=sys.stderr)

# -----------------------------------------------------------------------------


class Codec:
    """The real stable_codec.StableCodec with the 1x46656 preset. ckpt_path=None builds random weights from the
    config (for tests with a small stand-in config), the same ones in every run. Any problem with the codec's files
    is a CodecUnavailable (CodecCheckpointError for a bad file) whose message is one line."""

    def __init__(self, config_path=CONFIG_PATH, ckpt_path=CKPT_PATH, device='cpu'):
        self.device = torch.device(device)
        if ckpt_path == CKPT_PATH and not os.path.exists(ckpt_path):  # the default place: either published file
            ckpt_path = SAFETENSORS_PATH if os.path.exists(SAFETENSORS_PATH) else ckpt_path
        with _library_output() as caught:
            self.codec = self._build(config_path, ckpt_path)
            self.codec.to(self.device)
            self.codec.device = self.device  # StableCodec places its post-hoc bottleneck there
            try:
                self.codec.set_posthoc_bottleneck(PRESET)
                stages = [q._levels.tolist() for q in self.codec.residual_fsq.quantizers]
            except Exception as e:  # a config of another kind of model: no FSQ bottleneck to set
                stages = type(e).__name__
        if stages != [[LEVELS] * DIMS]:
            raise CodecCheckpointError(f'codec config {config_path} gives no {PRESET} bottleneck (FSQ stages: '
                                       f'{stages}): pass the model_config.json of {CODEC_REPO}')

        for w in caught:
            if not issubclass(w.category, _NOISE):
                _note(str(w.message).splitlines()[0])
        # stable_audio_tools' own flash-attn notice goes to stdout among its other prints; this one is ours. With
        # random weights (a test fixture) the tokens mean nothing anyway, so there is nothing to degrade.
        if ckpt_path is not None and any(list(getattr(m, 'sliding_window', [-1, -1])) != [-1, -1]
                                         and not getattr(m, 'use_fa_flash', False) for m in self.codec.model.modules()):
            _note('Stable Codec without flash-attn on CUDA uses full instead of sliding-window attention: real '
                  'weights give degraded audio and tokens that differ from a GPU run')

    @staticmethod
    def _build(config_path, ckpt_path):
        """StableCodec on the CPU with the checkpoint's weights (or the random stand-in), or a one-line error."""
        problems, fixes = [], []
        try:
            StableCodec = _import_stable_codec()
        except ImportError as e:
            problems.append(f'stable_codec not importable ({e})')
            fixes.append(INSTALL)
        missing = [p for p in (config_path, ckpt_path) if p is not None and not os.path.exists(p)]
        if missing:
            problems.append('missing ' + ', '.join(missing))
            fixes.append(DOWNLOAD)
        if problems:
            raise CodecUnavailable(f"Stable Codec unavailable: {'; '.join(problems)}. Fix: {' && '.join(fixes)}")

        config = read_config(config_path)
        # no checkpoint yet: random weights, the same in every run (a test fixture's tokens must be reproducible),
        # drawn in a forked RNG so the caller's random state is untouched
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                codec = StableCodec(model_config_path=config_path, ckpt_path=None, device=torch.device('cpu'))
        except Exception as e:  # the config's own mistakes: a missing key, an unknown type, a bad value
            reason = str(e).splitlines()[0] if str(e) else ''
            raise CodecCheckpointError(f'stable_audio_tools cannot build a model from codec config {config_path} '
                                       f'({type(e).__name__}: {reason}): pass the model_config.json that came with '
                                       f'the checkpoint') from None
        if config.get('sample_rate') != SAMPLE_RATE or getattr(codec.model, 'downsampling_ratio', 0) != HOP:
            raise CodecCheckpointError(f'codec config {config_path} is not the {SAMPLE_RATE} Hz, {HOP} samples per '
                                       f'token speech codec (stable-codec-speech-16k) this project uses')
        if ckpt_path is not None:
            load_weights(codec.model, read_state_dict(ckpt_path), ckpt_path, config_path)
        return codec

    @torch.no_grad()
    def encode(self, waveforms, sample_rates):
        """waveforms: list of float arrays [L] or [L, C]; sample_rates: one rate per clip (or one int for all).
        Returns tokens LongTensor [B, S] (ids 0..46655) and lengths LongTensor [B]: clip i is tokens[i, :lengths[i]],
        the rest is 0. Clips are padded with silence, which the encoder's attention also sees, so a clip's tokens
        (mostly its last ones) can depend on what it is batched with: batch clips of similar length."""
        if isinstance(sample_rates, int):
            sample_rates = [sample_rates] * len(waveforms)
        clips = [preprocess(w, sr) for w, sr in zip(waveforms, sample_rates)]
        lengths = torch.tensor([math.ceil(len(c) / HOP) for c in clips], dtype=torch.long)
        batch = torch.zeros(len(clips), 1, max(1, int(lengths.max())) * HOP)  # padded to whole tokens
        for i, c in enumerate(clips):
            batch[i, 0, :len(c)] = torch.from_numpy(c)
        _, stages = self.codec.encode(batch.to(self.device), posthoc_bottleneck=True)
        tokens = stages[0].squeeze(-1).long().cpu()  # one FSQ stage: [B, S, 1] -> [B, S]
        tokens[torch.arange(tokens.shape[1]) >= lengths[:, None]] = 0
        return tokens, lengths

    @torch.no_grad()
    def decode(self, tokens, lengths=None):
        """tokens: LongTensor [B, S] or a list of 1-D token arrays. Returns a list of float32 arrays at 16 kHz,
        item i cut to lengths[i] * 640 samples (default: its whole row, or its list entry's length)."""
        if not torch.is_tensor(tokens):
            rows = [torch.as_tensor(np.asarray(t), dtype=torch.long).reshape(-1) for t in tokens]
            lengths = [len(r) for r in rows] if lengths is None else lengths
            tokens = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        lengths = [tokens.shape[1]] * len(tokens) if lengths is None else [int(n) for n in lengths]
        if tokens.shape[1] == 0:
            return [np.zeros(0, np.float32) for _ in lengths]
        audio = self.codec.decode([tokens.long().unsqueeze(-1).to(self.device)], posthoc_bottleneck=True)
        audio = audio[:, 0].float().cpu().numpy()  # [B, 1, S * 640] -> [B, S * 640]
        return [audio[i, :n * HOP].copy() for i, n in enumerate(lengths)]


def pcm16(samples):
    """Float audio in [-1, 1] -> raw 16-bit little-endian PCM bytes (what `aplay -f S16_LE` and a WAV's data hold)."""
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


class StreamingDecoder:
    """
    Turns a growing list of codec ids into audio as it grows. Every `hop` new tokens it decodes a window that
    reaches `context` tokens back (the decoder's attention and convolutions see the same left context as in one
    long decode, so borders are seamless) and holds back the last `lookahead` tokens, whose audio still depends on
    tokens to come. write(samples) receives float32 audio at 16 kHz in order; flush() writes the rest.
    """

    def __init__(self, codec, write, hop=10, context=50, lookahead=4):
        self.codec, self.write = codec, write
        self.hop, self.context, self.lookahead = hop, context, lookahead
        self.tokens, self.done = [], 0  # ids so far; ids whose audio has been written

    def push(self, token):
        self.tokens.append(token)
        if len(self.tokens) - self.lookahead - self.done >= self.hop:
            self._emit(len(self.tokens) - self.lookahead)

    def flush(self):
        if len(self.tokens) > self.done:
            self._emit(len(self.tokens))

    def _emit(self, upto):
        start = max(0, self.done - self.context)
        wav = self.codec.decode([np.array(self.tokens[start:], dtype=np.int64)])[0]
        hop = len(wav) // (len(self.tokens) - start)  # samples per token (640 for Stable Codec)
        self.write(wav[(self.done - start) * hop:(upto - start) * hop])
        self.done = upto
