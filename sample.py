"""
Sample speech from a trained Dirt model.

    python sample.py --out_dir=out-synthetic --text="Call me tomorrow."
    python sample.py --out_dir=out-synthetic --text_file=lines.txt        # one utterance per line, batched
    python sample.py --out_dir=out-synthetic --text="আমি বাংলায় কথা বলি।"     # any UTF-8 text: the model reads bytes

Writes samples/000.npy, 001.npy, ... (Stable Codec ids, 25 per second) and, for a model trained on the synthetic
corpus, prints what its recogniser hears. Sampling: --temperature (0 = greedy), --top_k, --top_p, --seed,
--max_seconds. The checkpoint is loaded with weights_only=True: no code in it runs.
"""

import os
import re
import sys
import time

import numpy as np
import torch

from codec import TOKENS_PER_SECOND
from data import CheckpointError, SyntheticSpeech, load_checkpoint
from model import EOA, GPT, N_AUDIO, GPTConfig, compile_decode_step, make_prompt, text_to_tokens

# lower: fewer slips, less variety (synthetic corpus: CER 0.17 at T=1, 0.064 at 0.8, 0.044 at 0.6, no better lower)
TEMPERATURE = 0.6
# nucleus sampling: each stage (coarse class, fine digits) draws from its smallest set of classes holding this much
# probability. The tail it cuts is where slips and new voices come from, and a long text draws from it thousands of
# times (synthetic corpus, 2,000-character texts: long CER 0.0074 -> 0.0033, one voice held in 37/48 -> 47/48; README)
TOP_P = 0.8


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def load_model(ckpt_path, device="cpu"):
    """-> (model in eval mode on device, checkpoint dict). Raises CheckpointError with a one-line reason."""
    ckpt = load_checkpoint(ckpt_path, device)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt_path} does not match the model: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), ckpt


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


SENTENCE_END = re.compile(r"(?<=[.!?;:。！？।])\s+|\n+")


def split_text(text, max_bytes, pack=True):
    """
    Split UTF-8 text into chunks of at most max_bytes: whole sentences (packed together where they fit, if pack), a
    longer sentence at spaces, a longer word between characters (never inside one).
    """
    pieces = []
    for sentence in SENTENCE_END.split(text.decode("utf-8")):
        words = sentence.split()
        while words:  # the longest run of words that fits
            n = 1
            while n < len(words) and len(" ".join(words[:n + 1]).encode()) <= max_bytes:
                n += 1
            piece, words = " ".join(words[:n]), words[n:]
            while len(piece.encode()) > max_bytes:  # a single word longer than a chunk
                cut = max_bytes
                while len(piece[:cut].encode()) > max_bytes:
                    cut -= 1
                pieces.append(piece[:cut].encode())
                piece = piece[cut:]
            pieces.append(piece.encode())
    chunks = []
    for piece in pieces:
        if pack and chunks and len(chunks[-1]) + 1 + len(piece) <= max_bytes and chunks[-1][-1:] in b".!?;:":
            chunks[-1] += b" " + piece  # sentences share a chunk; pieces of one sentence do not
        else:
            chunks.append(piece)
    return chunks


def most_likely(scores, weakest=3):
    """
    Which of several samples of one chunk to keep. scores: per sample, its token log-probabilities under one or more
    readings (GPT.token_logprobs), a 1-D tensor each. Kept: the sample whose `weakest` least likely tokens are the most
    likely, summed over its readings. A slip (a skipped word, a doubled letter, a new voice) is a token the sampler
    drew against the odds; a sample's mean hides it, its weakest tokens show it.
    """
    weakness = [sum(float(s.sort().values[:weakest].mean()) if len(s) else -np.inf for s in readings)
                for readings in scores]
    return int(np.argmax(weakness))


@torch.no_grad()
def synthesize(model, texts, max_seconds=30.0, temperature=TEMPERATURE, top_k=0, top_p=TOP_P, seed=1337,
               batch_size=16, cfg_scale=1.0, voices=None, frames_per_byte=2.5, on_token=None, decode_step=None,
               best_of=1):
    """
    Speak each text (UTF-8 bytes). Returns a list of int64 arrays of Stable Codec ids, one per text, in order.

    Texts are sampled batch_size at a time, each row stopping at its own end-of-audio. voices: None, or per text
    None or (prompt text bytes, prompt audio ids): the model continues that recording, in its voice. Any length of
    text works: a text that does not fit the context after its voice prompt (with room for frames_per_byte audio
    tokens per byte) is split at sentence ends into chunks, each spoken as the continuation of the previous chunk
    (its text and audio as the voice prompt), so the voice holds across chunks; the chunks' tokens join seamlessly.
    A model trained with anchor_continuations has only heard speech continue at an anchored sentence border: it
    speaks every sentence as its own chunk, anchored where the sentence starts. best_of: sample each chunk that many
    times in one batch and keep the one the model finds most likely (most_likely). max_seconds caps each chunk.
    cfg_scale != 1 runs the text-free prompts in the same batch for classifier-free guidance.
    on_token: streaming (one text only): called with each audio id as soon as it is sampled.
    decode_step: a torch.compile'd model.decode_and_sample (see sample.py --compile), or None for the eager one.
    """
    assert on_token is None or (len(texts) == 1 and best_of == 1), "streaming takes one text and one candidate"
    block = model.config.block_size
    device = model.wte.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    if decode_step is not None:  # a compiled step samples from the global random state (GPT.stream)
        torch.manual_seed(seed)
    empty = np.zeros(0, dtype=np.int64)
    voices = [(v[0], np.asarray(v[1], dtype=np.int64)) if v else (b"", empty) for v in voices or [None] * len(texts)]
    spoken = [[v] if len(v[1]) else [] for v in voices]  # per text: the voice prompt, then each chunk spoken
    # the previous chunk (or the voice prompt) and the current one share the context window. An anchored model
    # speaks sentence by sentence and takes any earlier chunk that fits as the prompt (see below): a sentence may
    # take 2/3 of the window, so that few are cut (a piece of a sentence has no anchor of its own)
    pack = not model.config.anchor_continuations
    max_chunk = int((block - 2) / ((2 if pack else 1.5) * (1 + frames_per_byte)))
    for text, audio in voices:
        max_chunk = min(max_chunk, int((block - 2 - len(text) - len(audio)) / (1 + frames_per_byte)))
    if max_chunk < 8:
        raise ValueError(f"the voice prompt leaves too little room in this model's block_size {block}; use a "
                         f"shorter prompt (at most ~{(block // 2) / (1 + frames_per_byte) / 12:.0f} s)")
    chunks = []
    for text, (voice_text, voice_audio) in zip(texts, voices):
        fits = 2 + len(voice_text) + len(voice_audio) + (1 + frames_per_byte) * len(text) <= block
        whole = fits and (pack or len(split_text(text, len(text), pack=False)) == 1)
        chunks.append([text] if whole else split_text(text, max_chunk, pack))  # a text that fits is not split
    outputs = [[] for _ in texts]
    order = sorted(range(len(texts)), key=lambda i: sum(map(len, chunks[i])))  # similar lengths batch well
    for start in range(0, len(order), batch_size):
        group = order[start:start + batch_size]
        for k in range(max(len(chunks[i]) for i in group)):
            active = [i for i in group if k < len(chunks[i])]
            prompts, unconds, anchors = [], [], []
            for i in active:
                # the prompt: the latest chunk that fits beside this one, so the previous one unless it is long (or
                # ran long: no end-of-audio in time, or came out empty); any earlier chunk holds the voice as well,
                # as a voice prompt does
                room = block - 2 - (1 + frames_per_byte) * len(chunks[i][k])  # 2: the space before it, SOA
                prev_text, prev_audio = next(((t, a) for t, a in reversed(spoken[i]) if 0 < len(a) <= room - len(t)),
                                             (b"", empty))
                text = prev_text + b" " + chunks[i][k] if prev_text else chunks[i][k]
                prompts += [make_prompt(text_to_tokens(text), torch.from_numpy(prev_audio))] * best_of
                anchors += [len(prev_text) if len(prev_audio) else None] * best_of  # new speech starts at the space
                unconds += [make_prompt(text_to_tokens(b""), torch.from_numpy(prev_audio))] * best_of
            longest = max(len(p) for p in prompts)
            max_new = min(int(max_seconds * TOKENS_PER_SECOND), block - longest)
            if max_new < 1:
                raise ValueError(f"text does not fit this model's block_size {block}")
            args = dict(temperature=temperature, top_k=top_k or None, top_p=top_p or None, generator=generator,
                        uncond_prompts=unconds if cfg_scale != 1.0 else None, cfg_scale=cfg_scale,
                        decode_step=decode_step, anchors=anchors)
            if on_token is None:
                audio = model.generate(prompts, max_new, **args)
            else:  # streaming one text: hand each token on as soon as it is sampled
                steps = []
                for token in model.stream(prompts, max_new, **args):
                    if int(token[0]) == EOA:
                        break
                    steps.append(int(token[0]))
                    on_token(steps[-1])
                audio = [torch.tensor(steps, dtype=torch.long)]
            if best_of > 1:  # each text's samples sit side by side: keep the most likely of each run
                # a sample scores its end too (a run-on, a missing one), where the row has room for it
                ends = [torch.cat([a.cpu(), torch.tensor([EOA] if len(p) + len(a) < block else [], dtype=torch.long)])
                        for p, a in zip(prompts, audio)]
                scores = [[s] for s in model.token_logprobs(prompts, ends, anchors)]
                # a continuation is read twice: after its prompt (does the voice carry on?) and after its own text
                # alone (does it say that text from the first word? one that re-speaks the prompt's last "!", then
                # skips a word, is likely after the prompt, not without it). Synthetic corpus, 2534 sentences of
                # long texts, best_of 4: 35 said wrong, 70 with the first reading only, 128 with no choosing
                rows = [j for j, a in enumerate(anchors) if a is not None]
                no_audio = torch.zeros(0, dtype=torch.long)
                alone = [make_prompt(text_to_tokens(b" " + chunks[active[j // best_of]][k]), no_audio) for j in rows]
                for j, s in zip(rows, model.token_logprobs(alone, [ends[j] for j in rows]) if rows else []):
                    scores[j].append(s)
                audio = [audio[j + most_likely(scores[j:j + best_of])] for j in range(0, len(audio), best_of)]
            for i, a, anchor in zip(active, audio, anchors[::best_of]):
                a = a.cpu().numpy()
                outputs[i].append(a)
                # a continuation speaks the space before its text too: as a prompt, its text must hold that space,
                # or its audio runs a byte ahead of its text and the next chunk starts by repeating the end of it
                spoken[i].append((chunks[i][k] if anchor is None else b" " + chunks[i][k], a))
    return [np.concatenate(o) if o else empty for o in outputs]


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


def load_voice(prompt_audio, prompt_text, prompt_tokens, codec_loader):
    """The voice prompt as (text bytes, audio ids), from a recording (encoded by the codec) or saved ids."""
    if not prompt_audio and not prompt_tokens:
        if prompt_text:
            raise ValueError("--prompt_text needs --prompt_audio=FILE (or --prompt_tokens=FILE.npy) to go with it")
        return None
    if prompt_audio and prompt_tokens:
        raise ValueError("give either --prompt_audio or --prompt_tokens, not both")
    if not prompt_text.strip():
        raise ValueError("a voice prompt needs its transcript: add --prompt_text='the words spoken in it'")
    if prompt_tokens:
        try:
            ids = np.load(prompt_tokens).astype(np.int64).reshape(-1)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read --prompt_tokens {prompt_tokens}: {e}") from None
        if len(ids) == 0 or ids.min() < 0 or ids.max() >= N_AUDIO:
            raise ValueError(f"--prompt_tokens {prompt_tokens} must hold Stable Codec ids 0..{N_AUDIO - 1}")
        return prompt_text.strip().encode(), ids
    import soundfile as sf

    try:
        wav, sr = sf.read(prompt_audio, dtype="float32")
    except Exception as e:  # soundfile raises several types for missing, empty or corrupt files
        raise ValueError(f"cannot read --prompt_audio {prompt_audio}: {str(e).splitlines()[0]}") from None
    if len(wav) < 0.5 * sr:
        raise ValueError(f"--prompt_audio {prompt_audio} is shorter than 0.5 s; use 3 to 10 s of clean speech")
    tokens, lengths = codec_loader().encode([wav], [sr])
    return prompt_text.strip().encode(), tokens[0, : int(lengths[0])].cpu().numpy()


if __name__ == "__main__":
    # -----------------------------------------------------------------------------
    out_dir = "out"  # the training run to sample from
    ckpt = ""  # default: <out_dir>/ckpt.pt
    text = ""
    text_file = ""  # one utterance per line, sampled in batches
    output_dir = "samples"
    max_seconds = 30.0  # per chunk of text
    temperature = TEMPERATURE
    top_k = 0  # 0 = off
    top_p = TOP_P  # 0 or 1 = off
    cfg_scale = 1.0  # classifier-free guidance; 1 = off (needs a model trained with text_dropout > 0)
    best_of = 1  # sample each chunk this many times side by side, keep the most likely (fewer slips; not with --stream)
    prompt_audio = ""  # a recording whose voice to continue (needs the codec) ...
    prompt_tokens = ""  # ... or its Stable Codec ids (.npy)
    prompt_text = ""  # the prompt's transcript
    stream = False  # write audio as it is generated (one text): to output_dir/000.wav, or stdout with stream_to='-'
    stream_to = ""  # '-' = raw 16 kHz 16-bit mono PCM on stdout (e.g. | aplay -r 16000 -f S16_LE -c 1)
    audio = "auto"  # write .wav through the codec: auto = for real-speech models, yes = always, no = never
    plot = False  # also write a spectrogram PNG of each .wav
    seed = 1337
    batch_size = 16
    codec_config = "checkpoints/stable-codec/model_config.json"
    codec_ckpt = "checkpoints/stable-codec/model.ckpt"  # '' = random weights (a test fixture, not speech)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"  # weights+cache
    compile = False  # torch.compile the decode step (a CUDA graph on GPU): a slow first chunk, then the fastest decode
    # -----------------------------------------------------------------------------
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
    # -----------------------------------------------------------------------------
    if not (temperature >= 0 and top_k >= 0 and 0 <= top_p <= 1 and 0 < max_seconds <= 3600 and batch_size >= 1
            and 0 < cfg_scale <= 20 and temperature <= 10 and audio in ("auto", "yes", "no") and 1 <= best_of <= 64
            and dtype in ("float32", "bfloat16", "float16")):
        fail("need 0 <= temperature <= 10, top_k >= 0, 0 <= top_p <= 1, 0 < max_seconds <= 3600, batch_size >= 1, "
             "0 < cfg_scale <= 20, audio in auto|yes|no, 1 <= best_of <= 64, dtype in float32|bfloat16|float16")
    if stream and best_of > 1:
        fail("--stream plays the one sample as it is made: it cannot choose among --best_of samples; drop one")
    codec = None

    def codec_loader():
        global codec
        if codec is None:
            from codec import Codec

            codec = Codec(codec_config, codec_ckpt or None, device)
        return codec

    from codec import CodecUnavailable

    try:
        texts = read_texts(text, text_file)
        voice = load_voice(prompt_audio, prompt_text, prompt_tokens, codec_loader)
        model, checkpoint = load_model(ckpt or os.path.join(out_dir, "ckpt.pt"), device)
        model = model.to(getattr(torch, dtype))  # as gpt-fast: weights and KV cache in the compute dtype
        decode_step = None
        if compile:  # one graph per cache length (GPT.stream rounds it up to a multiple of 256)
            decode_step = compile_decode_step(device)
        synthetic = checkpoint.get("config", {}).get("dataset") == "synthetic"
        on_token, finish, first = None, None, []
        if stream:
            if len(texts) != 1:
                raise ValueError("--stream speaks one text; give --text or a one-line --text_file")
            if synthetic:  # no audio to stream: show what the recogniser hears, as it is generated
                heard = []

                def on_token(token):
                    heard.append(token)
                    if not first:
                        first.append(time.time())
                    text_so_far = SyntheticSpeech().recognise(heard)[0]
                    print(f"\r{text_so_far}", end="", flush=True, file=sys.stderr)
            else:
                import soundfile as sf

                os.makedirs(output_dir, exist_ok=True)
                sink = sys.stdout.buffer if stream_to == "-" else sf.SoundFile(
                    stream_to or os.path.join(output_dir, "000.wav"), "w", 16000, 1, "PCM_16")

                def write(samples):
                    if not first:
                        first.append(time.time())
                    if stream_to == "-":
                        sink.write((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
                        sink.flush()
                    else:
                        sink.write(samples)

                decoder = StreamingDecoder(codec_loader(), write)
                on_token, finish = decoder.push, decoder.flush
        t0 = time.time()
        outputs = synthesize(model, texts, max_seconds, temperature, top_k, top_p, seed, batch_size, cfg_scale,
                             [voice] * len(texts), on_token=on_token, decode_step=decode_step, best_of=best_of)
        if finish:
            finish()
            if stream_to != "-":
                sink.close()
    except (ValueError, CheckpointError, CodecUnavailable) as e:
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
    if not stream and (audio == "yes" or (audio == "auto" and not synthetic)):  # decode to 16 kHz audio
        try:
            wavs = codec_loader().decode([torch.from_numpy(o) for o in outputs])
        except CodecUnavailable as e:
            if audio == "yes":
                fail(str(e))
            print(f"note: wrote tokens only, no .wav: {e}")
    if plot and wavs is None and not stream:
        print("note: --plot draws the audio: nothing to draw without a codec (see --audio)")
    for i, (t, tokens) in enumerate(zip(texts, outputs)):
        path = os.path.join(output_dir, f"{i:03d}.npy")
        np.save(path, tokens.astype(np.int64))
        line = f"{path}: {len(tokens)} tokens ({len(tokens) / TOKENS_PER_SECOND:.2f} s)"
        if wavs is not None:
            import soundfile as sf

            sf.write(path[:-4] + ".wav", wavs[i], 16000)
            line += f", {path[:-4]}.wav"
            if plot:
                from speech_metrics import plot_spectrogram

                title = t.decode("utf-8")
                plot_spectrogram(wavs[i], 16000, path[:-4] + ".png", title if len(title) < 80 else title[:77] + "...")
                line += f", {path[:-4]}.png"
        if recogniser:
            heard, speakers = recogniser.recognise(tokens)
            voices = sorted(set(speakers.tolist()) - {-1})
            line += f", synthetic recogniser hears {heard!r} from speaker {voices}"
        print(line)
    print(f"{n_tokens} tokens in {dt:.2f}s: {n_tokens / dt:.1f} tokens/s, "
          f"{n_tokens / TOKENS_PER_SECOND / dt:.2f}x real time")
