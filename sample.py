"""
Sample speech from a trained Dirt model.

    python sample.py --out_dir=out-synthetic --text="Call me tomorrow."
    python sample.py --out_dir=out-synthetic --text_file=lines.txt        # one utterance per line, batched
    python sample.py --out_dir=out-synthetic --text="Hi." --quantize=int8  # int8 weights (quantize.py): faster
    python sample.py --out_dir=out-synthetic --text="আমি বাংলায় কথা বলি।"     # any UTF-8 text: the model reads bytes

Writes samples/000.npy, 001.npy, ... (Stable Codec ids, 25 per second) and, for a model trained on the synthetic
corpus, prints what its recogniser hears; for a real-speech model also 000.wav, ... through the codec. How to sample
(--temperature, --top_p, --best_of, ...: generate.Sampling) is set the same way in eval.py and bench.py;
`python sample.py --help` lists every setting. Each text samples from its own random stream, line i of --text_file
seeded --seed + i, so it comes out as `--text=<line i> --seed=<seed + i>` would, whatever the other lines. The
checkpoint is loaded with weights_only=True: no code in it runs.
"""

import os
import sys
import time

import numpy as np
import torch

from codec import (CKPT_PATH, CONFIG_PATH, SAMPLE_RATE, TOKENS_PER_SECOND, CodecCheckpointError, CodecUnavailable,
                   StreamingDecoder, pcm16)
from common import DTYPES, check_device, default_device, default_dtype, fail
from data import CheckpointError, load_model
from generate import Sampling, compile_decode_step
from quantize import Quantization, quantize_model
from speak import BATCH_SIZE, SEED, check_seeds, load_voice, synthesize
from synthetic import SyntheticSpeech


def read_texts(text, text_file):
    """The utterances to speak, from --text or --text_file (one per line), as UTF-8 bytes; errors are one line."""
    if text and text_file:
        raise ValueError("give either --text or --text_file, not both")
    if not text_file and not text.strip():
        raise ValueError("no text to speak: give --text='some words' or --text_file=FILE (one utterance per line)")
    if text_file:
        try:
            with open(text_file, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise ValueError(f"cannot read --text_file {text_file}: {e.strerror}") from None
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{text_file} is not valid UTF-8 (byte {e.start}); re-save it as UTF-8") from None
        lines = [line.strip() for line in raw.split(b"\n")]
        texts = [line for line in lines if line]
        if not texts:
            raise ValueError(f"{text_file} has no text (all lines are empty)")
        return texts
    return [text.strip().encode("utf-8")]


def read_voice(prompt_audio, prompt_text, prompt_tokens, codec_loader):
    """The voice prompt of --prompt_audio or --prompt_tokens with --prompt_text (speak.load_voice), or None."""
    if not prompt_audio and not prompt_tokens:
        if prompt_text:
            raise ValueError("--prompt_text needs --prompt_audio=FILE (or --prompt_tokens=FILE.npy) to go with it")
        return None
    if prompt_audio and prompt_tokens:
        raise ValueError("give either --prompt_audio or --prompt_tokens, not both")
    if not prompt_text.strip():
        raise ValueError("a voice prompt needs its transcript: add --prompt_text='the words spoken in it'")
    try:
        return load_voice(prompt_tokens or prompt_audio, prompt_text, codec_loader, ids=bool(prompt_tokens))
    except ValueError as e:  # it names the file: say which setting gave it
        raise ValueError(f"{'--prompt_tokens' if prompt_tokens else '--prompt_audio'} {e}") from None


if __name__ == "__main__":
    # -----------------------------------------------------------------------------
    out_dir = "out"  # the model to sample from: a training run's out_dir or an exported folder (export.py)
    ckpt = ""  # a checkpoint file, in place of out_dir
    text = ""
    text_file = ""  # one utterance per line, sampled in batches
    output_dir = "samples"
    globals().update(Sampling.defaults())  # temperature, top_k, top_p, cfg_scale, best_of, max_seconds
    globals().update(Quantization.defaults())  # quantize: int8 / int4 weights (quantize.py), made at load time
    prompt_audio = ""  # a recording whose voice to continue (needs the codec) ...
    prompt_tokens = ""  # ... or its Stable Codec ids (.npy)
    prompt_text = ""  # the prompt's transcript
    stream = False  # write audio as it is generated (one text): to output_dir/000.wav, or stdout with stream_to='-'
    stream_to = ""  # '-' = raw 16 kHz 16-bit mono PCM on stdout (e.g. | aplay -r 16000 -f S16_LE -c 1)
    audio = "auto"  # write .wav through the codec: auto = for real-speech models, yes = always, no = never
    plot = False  # also write a spectrogram PNG of each .wav
    seed = SEED  # text i of a batch draws from its own random stream, seeded seed + i
    batch_size = BATCH_SIZE  # texts sampled side by side
    codec_config = CONFIG_PATH
    codec_ckpt = CKPT_PATH  # '' = random weights (a test fixture, not speech)
    device = default_device()
    dtype = default_dtype()  # of the weights and the KV cache
    compile = False  # torch.compile the decode step (a CUDA graph on GPU): a slow first chunk, then the fastest decode
    # -----------------------------------------------------------------------------
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
    # -----------------------------------------------------------------------------
    try:
        sampling = Sampling.from_settings(globals())
        quantize = Quantization.from_settings(globals()).quantize
        check_device(device, dtype)
    except ValueError as e:
        fail(str(e))
    if batch_size < 1:
        fail(f"--batch_size={batch_size}: sample at least 1 text at a time")
    if audio not in ("auto", "yes", "no"):
        fail(f"--audio={audio!r}: use auto, yes or no")
    if stream and best_of > 1:
        fail("--stream plays the one sample as it is made: it cannot choose among --best_of samples; drop one")
    if not output_dir.strip():
        fail("--output_dir is empty: give a folder for the samples (e.g. samples)")
    if os.path.isfile(output_dir):
        fail(f"--output_dir={output_dir} is a file; give a folder for the samples")
    if stream_to and not stream:
        fail(f"--stream_to={stream_to} needs --stream=True")
    if stream_to not in ("", "-") and not os.path.isdir(os.path.dirname(os.path.abspath(stream_to))):
        fail(f"--stream_to={stream_to}: its folder does not exist; give a .wav path in an existing folder, or '-'")
    codec = None

    def codec_loader():
        global codec
        if codec is None:
            from codec import Codec

            codec = Codec(codec_config, codec_ckpt or None, device)
        return codec

    sink = None  # --stream: the .wav (or stdout) the audio goes to as it is made
    try:
        texts = read_texts(text, text_file)
        check_seeds([seed + i for i in range(len(texts))])
        voice = read_voice(prompt_audio, prompt_text, prompt_tokens, codec_loader)
        model, checkpoint = load_model(ckpt or out_dir, device)
        model = model.to(DTYPES[dtype])  # as gpt-fast: weights and KV cache in the compute dtype
        model = quantize_model(model, quantize)
        decode_step = None
        if compile:  # one graph per cache length (generate.stream rounds it up to a multiple of 256)
            decode_step = compile_decode_step(device)
        synthetic = checkpoint.get("config", {}).get("dataset") == "synthetic"
        want_audio = audio == "yes" or (audio == "auto" and not synthetic)
        if want_audio or (stream and not synthetic):  # the codec before the sampling: a missing one costs no wait
            try:
                codec_loader()
            except CodecUnavailable as e:
                if audio == "yes" or stream or isinstance(e, CodecCheckpointError):  # a bad file is a mistake
                    raise
                print(f"note: tokens only, no .wav: {e}")
                want_audio = False
        on_token, finish, first = None, None, []
        if stream:
            if len(texts) != 1:
                raise ValueError("--stream speaks one text; give --text or a one-line --text_file")
            if synthetic and stream_to:
                raise ValueError(f"--stream_to={stream_to}: a synthetic-corpus model streams what the recogniser "
                                 "hears (on stderr), not audio; drop --stream_to")
            if synthetic:  # no audio to stream: show what the recogniser hears, as it is generated
                heard = []

                def on_token(_, token):
                    if type(token) is not int:  # the end, or a SpeechMissing that synthesize raises
                        return
                    heard.append(token)
                    if not first:
                        first.append(time.time())
                    text_so_far = SyntheticSpeech().recognise(heard)[0]
                    print(f"\r{text_so_far}", end="", flush=True, file=sys.stderr)
            else:
                import soundfile as sf

                os.makedirs(output_dir, exist_ok=True)
                sink = sys.stdout.buffer if stream_to == "-" else sf.SoundFile(
                    stream_to or os.path.join(output_dir, "000.wav"), "w", SAMPLE_RATE, 1, "PCM_16")

                def write(samples):
                    if not first:
                        first.append(time.time())
                    if stream_to == "-":
                        sink.write(pcm16(samples))
                        sink.flush()
                    else:
                        sink.write(samples)

                decoder = StreamingDecoder(codec_loader(), write)
                # None: the end; a SpeechMissing (not an id) is raised by synthesize, as without --stream
                on_token, finish = lambda _, token: token is None or type(token) is int and decoder.push(token), \
                    decoder.flush
        t0 = time.time()
        outputs = synthesize(model, texts, sampling, seed, batch_size, [voice] * len(texts), on_token=on_token,
                             decode_step=decode_step)
        if finish:
            finish()
            if stream_to != "-":
                sink.close()
    except (ValueError, CheckpointError, CodecUnavailable) as e:
        if sink is not None and sink is not sys.stdout.buffer:  # no half a .wav left behind
            sink.close()
            os.remove(sink.name)
        fail(str(e))
    dt = time.time() - t0
    if stream:
        print(file=sys.stderr)
        ttfa = f"{(first[0] - t0) * 1000:.0f} ms" if first else "none"
        print(f"streamed: time to first {'token' if synthetic else 'audio'} {ttfa}", file=sys.stderr)
        if stream_to == "-":
            sys.exit(0)
    n_tokens = sum(len(o) for o in outputs)
    os.makedirs(output_dir, exist_ok=True)
    recogniser = SyntheticSpeech() if synthetic else None
    wavs = None
    if not stream and want_audio:  # decode to 16 kHz audio
        wavs = codec_loader().decode([torch.from_numpy(o) for o in outputs])
    if plot and wavs is None and not stream:
        print("note: --plot draws the audio: nothing to draw without a codec (see --audio)")
    for i, (t, tokens) in enumerate(zip(texts, outputs)):
        path = os.path.join(output_dir, f"{i:03d}.npy")
        np.save(path, tokens.astype(np.int64))
        line = f"{path}: {len(tokens)} tokens ({len(tokens) / TOKENS_PER_SECOND:.2f} s)"
        if wavs is not None:
            import soundfile as sf

            sf.write(path[:-4] + ".wav", wavs[i], SAMPLE_RATE)
            line += f", {path[:-4]}.wav"
            if plot:
                from speech_metrics import plot_spectrogram

                title = t.decode("utf-8")
                title = title if len(title) < 80 else title[:77] + "..."
                plot_spectrogram(wavs[i], SAMPLE_RATE, path[:-4] + ".png", title)
                line += f", {path[:-4]}.png"
        if recogniser:
            heard, speakers = recogniser.recognise(tokens)
            voices = sorted(set(speakers.tolist()) - {-1})
            line += f", synthetic recogniser hears {heard!r} from speaker {voices}"
        print(line)
    print(f"{n_tokens} tokens in {dt:.2f}s: {n_tokens / dt:.1f} tokens/s, "
          f"{n_tokens / TOKENS_PER_SECOND / dt:.2f}x real time")
