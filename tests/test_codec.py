"""
codec.py against the real stable_codec / stable_audio_tools classes. The real weights are not available here, so
the codec is built with random weights from a tiny stand-in config of the real architecture
(tests/fixtures/tiny_stable_codec_config.json): that checks the glue (rate, padding, lengths, token range, list
form, loudness, id layout), not audio quality.
"""
import contextlib
import importlib.util
import json
import math
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from conftest import run
from test_cli import one_line_error

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import codec  # noqa: E402

pytestmark = pytest.mark.slow  # the whole file: see pytest.ini

TINY_CONFIG = os.path.join(os.path.dirname(__file__), 'fixtures', 'tiny_stable_codec_config.json')
needs_stable_codec = pytest.mark.skipif(importlib.util.find_spec('stable_codec') is None,
                                        reason=f'stable_codec not installed ({codec.INSTALL})')


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
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
    again = codec.Codec(TINY_CONFIG, ckpt_path=None)
    assert torch.equal(torch.rand(3), before)
    clip = noise(8000)
    assert torch.equal(again.encode([clip], 16000)[0], tiny.encode([clip], 16000)[0])


# -----------------------------------------------------------------------------
# checkpoints: genuine ones load every tensor, anything else is one line


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """A tiny codec whose weights differ from the random stand-in's, saved in the layouts of the published files
    (stable_audio_tools' export_model): model.safetensors by safetensors' save_model, model.ckpt as
    {'state_dict': model.state_dict()}. Returns (folder, that codec)."""
    from safetensors.torch import save_model
    source = codec.Codec(TINY_CONFIG, ckpt_path=None)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in source.codec.model.parameters():
            p.mul_(1 + 0.5 * torch.randn(p.shape, generator=generator))
    folder = tmp_path_factory.mktemp('codec')
    save_model(source.codec.model, str(folder / 'model.safetensors'))
    torch.save({'state_dict': source.codec.model.state_dict()}, folder / 'model.ckpt')
    return folder, source


def refused(ckpt, *needles, config=TINY_CONFIG):
    with pytest.raises(codec.CodecCheckpointError) as e:
        codec.Codec(config, str(ckpt))
    message = str(e.value)
    assert '\n' not in message and isinstance(e.value, codec.CodecUnavailable), message
    assert 'weights_only' not in message, message  # torch's advice (to run the file's code) is never passed on
    for needle in needles:
        assert needle in message, message
    return message


@needs_stable_codec
@pytest.mark.parametrize('name', ['model.safetensors', 'model.ckpt'])
def test_genuine_checkpoint_loads_every_tensor(saved, tiny, name):
    folder, source = saved
    loaded = codec.Codec(TINY_CONFIG, str(folder / name))
    clip = noise(16000)
    tokens = loaded.encode([clip], 16000)[0]
    assert torch.equal(tokens, source.encode([clip], 16000)[0])
    assert not torch.equal(tokens, tiny.encode([clip], 16000)[0])  # the file's weights, not the random stand-in's
    assert np.array_equal(loaded.decode(tokens)[0], source.decode(tokens)[0])
    levels = [q._levels.tolist() for q in loaded.codec.residual_fsq.quantizers]
    assert levels == [[6] * 6]  # the post-hoc bottleneck: one stage of 6 dimensions x 6 levels


def edited(state, how):
    state = dict(state)
    key = 'encoder.layers.0.bias'
    if how == 'renamed':
        state['encoder.layers.0.bias_renamed'] = state.pop(key)
    elif how == 'reshaped':
        state[key] = torch.zeros(3)
    else:  # an extra tensor: a deeper model's layer, say
        state['decoder.layers.9.weight'] = torch.zeros(2)
    return state


@needs_stable_codec
@pytest.mark.parametrize('how,needles', [
    ('renamed', ["1 of the model's", 'tensors missing (e.g. encoder.layers.0.bias)', '1 not in the model']),
    ('reshaped', ['1 of another shape (e.g. encoder.layers.0.bias: [3] in the file, [128] in the model)']),
    ('extra', ['1 not in the model (e.g. decoder.layers.9.weight)']),
])
def test_checkpoint_of_another_model_is_refused(saved, tmp_path, how, needles):
    folder, source = saved
    state = edited(source.codec.model.state_dict(), how)
    torch.save({'state_dict': state}, tmp_path / 'model.ckpt')
    message = refused(tmp_path / 'model.ckpt', *needles, 'does not fit the model of', 'model_config.json')
    assert message.startswith(f"codec checkpoint {tmp_path / 'model.ckpt'} ")
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / 'model.safetensors'))
    refused(tmp_path / 'model.safetensors', *needles)


class Hostile:
    """Unpickling this runs os.mkdir(marker): a stand-in for any code a pickle can carry."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@needs_stable_codec
@pytest.mark.parametrize('kind,needles', [
    ('truncated.ckpt', ['is truncated or corrupt', 'download it again']),
    ('truncated.safetensors', ['is truncated or corrupt (SafetensorError', 'download it again']),
    ('not_a_checkpoint.ckpt', ['is truncated or corrupt (UnpicklingError)']),
    ('empty.ckpt', ['is empty (0 bytes)', 'hf download stabilityai/stable-codec-speech-16k']),
    ('lfs.safetensors', ['is a Git LFS pointer, not the file: run git lfs pull', 'hf download']),
    ('bare_state_dict.ckpt', ["holds no {'state_dict'"]),
    ('hostile.ckpt', ['is a pickle that needs code to load (posix.mkdir), refused before any of it ran']),
    ('hostile.pkl', ['is a pickle that needs code to load (posix.mkdir)']),
])
def test_unreadable_checkpoint_is_one_line(saved, tmp_path, kind, needles):
    folder, source = saved
    path, marker = tmp_path / kind, str(tmp_path / 'code_ran')
    if kind.startswith('truncated'):
        path.write_bytes((folder / ('model' + os.path.splitext(kind)[1])).read_bytes()[:5000])
    elif kind == 'not_a_checkpoint.ckpt':
        path.write_text('{"sample_rate": 16000}')
    elif kind == 'empty.ckpt':
        path.write_bytes(b'')
    elif kind == 'lfs.safetensors':  # what a clone without git-lfs holds in place of the weights
        path.write_text('version https://git-lfs.github.com/spec/v1\n'
                        'oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 38392864\n')
    elif kind == 'bare_state_dict.ckpt':
        torch.save(source.codec.model.state_dict(), path)
    elif kind == 'hostile.ckpt':
        torch.save({'state_dict': {'encoder.layers.0.bias': Hostile(marker)}}, path)
    else:
        path.write_bytes(pickle.dumps(Hostile(marker), protocol=2))  # torch.save's protocol
    refused(path, *needles, str(path))
    if kind.startswith('hostile'):
        assert not os.path.exists(marker)  # refused unread: nothing in it ran
        with contextlib.suppress(Exception):  # what an unguarded load does: the file is really hostile
            torch.load(path, weights_only=False)
        assert os.path.exists(marker)


@needs_stable_codec
@pytest.mark.parametrize('text,needles', [
    ('{"model_type": "autoencoder",', ['is not JSON (Expecting', 'model_config.json']),
    ('[1, 2]', ['is JSON but not an object']),
    ('{"model_type": "autoencoder", "sample_rate": 16000}', ["cannot build a model", "(KeyError: 'model')"]),
    ('{"model_type": "diffusion_uncond_typo", "sample_rate": 16000}', ['(NotImplementedError: Unknown model type']),
    ('RATE', ['is not the 16000 Hz, 640 samples per token speech codec']),
])
def test_bad_config_is_one_line(saved, tmp_path, text, needles):
    folder, _ = saved
    config = tmp_path / 'model_config.json'
    if text == 'RATE':  # builds, but is not the speech codec at 16 kHz
        text = json.dumps(dict(json.load(open(TINY_CONFIG)), sample_rate=44100))
    config.write_text(text)
    with pytest.raises(codec.CodecCheckpointError) as e:
        codec.Codec(str(config), str(folder / 'model.ckpt'))
    message = str(e.value)
    assert '\n' not in message and str(config) in message, message
    for needle in needles:
        assert needle in message, message


@needs_stable_codec
def test_one_note_and_no_library_noise(saved, capfd, monkeypatch):
    """Building a codec lets no warning or print of the libraries through: only codec.py's note that this machine
    lacks flash-attn, once per process however many codecs are built, and none for the random stand-in."""
    folder, _ = saved
    monkeypatch.setattr(codec, '_NOTED', set())
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        codec.Codec(TINY_CONFIG, None)
        assert capfd.readouterr() == ('', '')
        for name in ('model.ckpt', 'model.safetensors'):
            loaded = codec.Codec(TINY_CONFIG, str(folder / name))
    out, err = capfd.readouterr()
    assert not caught and out == ''
    flash = any(getattr(m, 'use_fa_flash', False) for m in loaded.codec.model.modules())
    assert err.splitlines() == ([] if flash else [
        'note: Stable Codec without flash-attn on CUDA uses full instead of sliding-window attention: real weights '
        'give degraded audio and tokens that differ from a GPU run'])

# -----------------------------------------------------------------------------
# the same through prepare.py: one `error:` line, nothing written


@needs_stable_codec
@pytest.mark.parametrize('cause,needles', [
    ('truncated', ['is truncated or corrupt']),
    ('empty', ['is empty (0 bytes)']),
    ('lfs', ['is a Git LFS pointer']),
    ('hostile', ['is a pickle that needs code to load']),
    ('other_model', ['does not fit the model of']),
    ('config', ['is not JSON']),
])
def test_prepare_refuses_a_bad_codec_in_one_line(saved, tmp_path, cause, needles):
    sf = pytest.importorskip('soundfile')
    folder, source = saved
    sf.write(tmp_path / 'hello.wav', noise(16000), 16000)
    (tmp_path / 'manifest.jsonl').write_text(json.dumps({'audio': 'hello.wav', 'text': 'Hello.'}) + '\n')
    ckpt, config = tmp_path / 'model.ckpt', TINY_CONFIG
    if cause == 'truncated':
        ckpt.write_bytes((folder / 'model.ckpt').read_bytes()[:5000])
    elif cause == 'empty':
        ckpt.write_bytes(b'')
    elif cause == 'lfs':
        ckpt.write_text('version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n')
    elif cause == 'hostile':
        torch.save({'state_dict': {'x': Hostile(str(tmp_path / 'code_ran'))}}, ckpt)
    elif cause == 'other_model':
        torch.save({'state_dict': edited(source.codec.model.state_dict(), 'reshaped')}, ckpt)
    else:
        ckpt = folder / 'model.ckpt'
        config = tmp_path / 'model_config.json'
        config.write_text('not json')
    proc = run('prepare.py', '--dataset=mine', f'--input={tmp_path / "manifest.jsonl"}', f'--out_dir={tmp_path}/out',
               f'--codec_config={config}', f'--codec_ckpt={ckpt}', '--device=cpu', cwd=tmp_path, check=False)
    one_line_error(proc, *needles)
    assert proc.stderr.startswith('error: ')
    assert not os.path.exists(tmp_path / 'out') and not os.path.exists(tmp_path / 'code_ran')
