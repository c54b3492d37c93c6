"""
Stable Codec as the speech tokenizer: audio <-> 25 tokens per second from a vocabulary of 46656.

Why this module exists: stable_codec.StableCodec takes a tensor that the caller has already made 16 kHz mono,
loudness-normalised and padded to the codec hop, and returns its tokens as a list of (B, S, 1) tensors; its
package also cannot be pip-installed next to a current torch. Codec does that preparation, speaks numpy, keeps
track of lengths, and imports stable_codec with the small install of requirements-codec.txt.

    codec = Codec()                               # loads checkpoints/stable-codec/{model_config.json,model.ckpt}
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
import math
import os
import sys
import types
import warnings

import numpy as np
import torch

SAMPLE_RATE = 16000
HOP = 640  # audio samples per token
TOKENS_PER_SECOND = SAMPLE_RATE // HOP  # 25
PRESET = '1x46656_400bps'  # one FSQ stage, 6 latent dimensions x 6 levels
LEVELS, DIMS = 6, 6
VOCAB = LEVELS ** DIMS  # 46656
TARGET_LUFS = -20.0  # the loudness the codec was trained at
CONFIG_PATH = 'checkpoints/stable-codec/model_config.json'  # where `hf download` below puts the weights
CKPT_PATH = 'checkpoints/stable-codec/model.ckpt'

INSTALL = 'pip install --no-deps -r requirements-codec.txt'
DOWNLOAD = ('pip install huggingface_hub && hf auth login && hf download stabilityai/stable-codec-speech-16k '
            '--local-dir checkpoints/stable-codec (after accepting the licence on that model page)')


class CodecUnavailable(RuntimeError):
    """stable_codec or the weights are missing; the message is one line with the commands that fix it."""

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
        with contextlib.redirect_stdout(io.StringIO()):  # stable_audio_tools prints flash-attn notices
            from stable_codec import StableCodec
            import stable_audio_tools.models.autoencoders  # noqa: F401  (the model code: imports the rest now)
    finally:
        for m in added:  # nothing outside stable_audio_tools should ever see a placeholder
            sys.modules.pop(m, None)
    return StableCodec

# -----------------------------------------------------------------------------


class Codec:
    """The real stable_codec.StableCodec with the 1x46656 preset. ckpt_path=None builds random weights from the
    config (for tests with a small stand-in config), the same ones in every run."""

    def __init__(self, config_path=CONFIG_PATH, ckpt_path=CKPT_PATH, device='cpu'):
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

        self.device = torch.device(device)
        # random weights (no ckpt_path) are the same in every run: a test fixture's tokens must be reproducible
        with contextlib.redirect_stdout(io.StringIO()), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # forked: the caller's random state is untouched
            self.codec = StableCodec(model_config_path=config_path, ckpt_path=ckpt_path, device=self.device)
        self.codec.set_posthoc_bottleneck(PRESET)
        assert self.codec.sample_rate == SAMPLE_RATE and self.codec.model.downsampling_ratio == HOP
        if any(list(getattr(m, 'sliding_window', [-1, -1])) != [-1, -1] and not getattr(m, 'use_fa_flash', False)
               for m in self.codec.model.modules()):
            warnings.warn('Stable Codec without flash-attn on CUDA uses full instead of sliding-window attention: '
                          'real weights give degraded audio and tokens that differ from a GPU run', stacklevel=2)

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
