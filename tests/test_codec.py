"""
codec.py against the real stable_codec / stable_audio_tools classes. The real weights are not available here, so
the codec is built with random weights from a tiny stand-in config of the real architecture
(tests/fixtures/tiny_stable_codec_config.json): that checks the glue (rate, padding, lengths, token range, list
form, loudness, id layout), not audio quality.
"""
import importlib.util
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import codec  # noqa: E402

TINY_CONFIG = os.path.join(os.path.dirname(__file__), 'fixtures', 'tiny_stable_codec_config.json')
needs_stable_codec = pytest.mark.skipif(importlib.util.find_spec('stable_codec') is None,
                                        reason=f'stable_codec not installed ({codec.INSTALL})')


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # flash-attn and weight_norm notices
        return codec.Codec(TINY_CONFIG, ckpt_path=None)


def noise(samples, channels=None, scale=0.05, seed=0):
    shape = (samples,) if channels is None else (samples, channels)
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)

# -----------------------------------------------------------------------------


def test_constants():
    assert codec.TOKENS_PER_SECOND == 25 and codec.HOP * 25 == codec.SAMPLE_RATE == 16000
    assert codec.VOCAB == 46656 == 6 ** 6 and codec.PRESET == '1x46656_400bps'


def test_import_is_light():
    # scripts import codec.py for its constants without the codec installed
    code = "import codec, sys; assert not {'torchaudio', 'stable_codec', 'stable_audio_tools'} & set(sys.modules)"
    subprocess.run([sys.executable, '-c', code], check=True, cwd=os.path.join(os.path.dirname(__file__), '..'))


def test_ids_levels_roundtrip():
    ids = torch.arange(codec.VOCAB)
    levels = codec.fsq_ids_to_levels(ids)
    assert levels.shape == (codec.VOCAB, 6) and levels.min() == 0 and levels.max() == 5
    assert torch.equal(codec.levels_to_ids(levels), ids)
    assert levels[1].tolist() == [1, 0, 0, 0, 0, 0] and levels[6].tolist() == [0, 1, 0, 0, 0, 0]  # digit i = dim i
    codes = codec.levels_to_codes(torch.arange(6))
    assert torch.allclose(codes, torch.tensor([-1, -0.6, -0.2, 0.2, 0.6, 1]))


def test_unavailable_is_one_line(monkeypatch):
    with pytest.raises(codec.CodecUnavailable) as e:
        codec.Codec('no/such/model_config.json', 'no/such/model.ckpt')
    assert 'hf download stabilityai/stable-codec-speech-16k' in str(e.value) and '\n' not in str(e.value)

    def not_installed():
        raise ModuleNotFoundError("No module named 'stable_codec'")
    monkeypatch.setattr(codec, '_import_stable_codec', not_installed)
    with pytest.raises(codec.CodecUnavailable, match='pip install --no-deps -r requirements-codec.txt'):
        codec.Codec(TINY_CONFIG, None)

# -----------------------------------------------------------------------------


@needs_stable_codec
def test_fsq_mapping_matches_library(tiny):
    from stable_audio_tools.models.fsq import DitheredFSQ as TrainingFSQ
    from stable_codec.fsq import DitheredFSQ as PosthocFSQ
    ids = torch.arange(codec.VOCAB)
    levels, codes = codec.fsq_ids_to_levels(ids), codec.levels_to_codes(codec.fsq_ids_to_levels(ids))
    for fsq in (TrainingFSQ([6] * 6), PosthocFSQ([6] * 6)):
        assert torch.equal(fsq._indices_to_level_indices(ids), levels)
        assert torch.allclose(fsq.indices_to_codes(ids[:, None]), codes)
    assert torch.equal(PosthocFSQ([6] * 6)._codes_to_indices(codes[:, None]).squeeze(-1), ids)
    # the bottleneck the codec really uses: ids -> decoder latents, and latents -> ids (tanh, then nearest level)
    fsq = tiny.codec.residual_fsq
    assert torch.allclose(fsq.decode([ids[None, :, None]])[0].T.float(), codes)
    latents = torch.randn(2, 6, 200) * 2
    levels = torch.round((torch.tanh(latents.double()) + 1) * 2.5).transpose(1, 2)
    assert torch.equal(fsq.encode(latents)[0].squeeze(-1), codec.levels_to_ids(levels))


@needs_stable_codec
def test_loudness_matches_training_normalisation(tiny):
    # stable_codec's own -20 LUFS normalisation (torchaudio, slow pure-Python path here) on a quiet clip and on
    # a spiky one whose gain would clip (scaled back to a 0.95 peak)
    rng = np.random.default_rng(1)
    spiky = np.where(rng.random(8000) < 0.002, 0.5, 0) + rng.standard_normal(8000) * 0.001
    for x in (noise(8000, scale=0.01), spiky.astype(np.float32)):
        theirs = tiny.codec.volume_norm(torch.from_numpy(x)[None])[0].numpy()
        assert np.allclose(codec.normalize_loudness(x), theirs, rtol=1e-3, atol=1e-5)
    assert abs(np.abs(codec.normalize_loudness(spiky)).max() - 0.95) < 1e-6


@needs_stable_codec
def test_encode_batch_of_rates_lengths_and_channels(tiny):
    clips = [noise(48000), noise(88200, channels=2, seed=1), noise(22270, seed=2), noise(800)]  # 3, 2, 1.01, 0.1 s
    rates = [16000, 44100, 22050, 8000]
    tokens, lengths = tiny.encode(clips, rates)
    expected = [math.ceil(len(codec.preprocess(c, sr)) / codec.HOP) for c, sr in zip(clips, rates)]
    assert lengths.tolist() == expected == [75, 50, 26, 3]  # 25 tokens per second, a partial token rounds up
    assert tokens.dtype == torch.long and lengths.dtype == torch.long and tokens.shape == (4, 75)
    assert 0 <= tokens.min() and tokens.max() < codec.VOCAB and len(tokens[0].unique()) > 1
    for row, n in zip(tokens, lengths):
        assert (row[n:] == 0).all()  # padding past each clip's length


@needs_stable_codec
def test_padding_to_whole_tokens(tiny):
    tokens, lengths = tiny.encode([noise(640 * 10), noise(640 * 10 + 1)], 16000)
    assert lengths.tolist() == [10, 11] and tokens.shape == (2, 11)


@needs_stable_codec
def test_decode_lengths_and_list_form(tiny):
    tokens, lengths = tiny.encode([noise(32000), noise(16000, seed=3)], 16000)
    audio = tiny.decode(tokens, lengths)
    assert [a.shape for a in audio] == [(50 * 640,), (25 * 640,)] and all(a.dtype == np.float32 for a in audio)
    assert [len(a) for a in tiny.decode(tokens)] == [50 * 640] * 2  # no lengths: whole rows
    rows = [tokens[0, :50].numpy(), tokens[1, :25].numpy(), np.array([7, 8, 9])]
    assert [len(a) for a in tiny.decode(rows)] == [50 * 640, 25 * 640, 3 * 640]
    one = tokens[1:, :25]
    assert np.allclose(tiny.decode([one[0].numpy()])[0], tiny.decode(one)[0], atol=1e-6)


@needs_stable_codec
def test_silence_and_tiny_clips_stay_finite(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter('error', RuntimeWarning)  # no division by zero, no log of zero
        assert not codec.normalize_loudness(np.zeros(16000, np.float32)).any()
        short = codec.normalize_loudness(noise(800))  # shorter than one 400 ms loudness block
        assert np.isfinite(short).all() and np.abs(short).max() > 0.05
    tokens, lengths = tiny.encode([np.zeros(16000, np.float32), np.zeros((4410, 2), np.float32)], [16000, 44100])
    assert lengths.tolist() == [25, 3] and 0 <= tokens.min() and tokens.max() < codec.VOCAB
    assert all(np.isfinite(a).all() for a in tiny.decode(tokens, lengths))


@needs_stable_codec
def test_placeholders_do_not_leak(tiny):
    for name in codec._UNUSED_IMPORTS:
        assert not isinstance(sys.modules.get(name), codec._Placeholder)


@needs_stable_codec
def test_random_weights_are_the_same_in_every_run(tiny):
    """The stand-in codec (no checkpoint) is a fixture: the same tokens every time, the caller's RNG untouched."""
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        again = codec.Codec(TINY_CONFIG, ckpt_path=None)
    assert torch.equal(torch.rand(3), before)
    clip = noise(8000)
    assert torch.equal(again.encode([clip], 16000)[0], tiny.encode([clip], 16000)[0])
