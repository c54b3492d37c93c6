"""
Serve a Dirt model over HTTP: OpenAI's /v1/audio/speech, with batching, streaming, named voices and a web page.

    python serve.py --out_dir=out-synthetic                    # runs until stopped: http://127.0.0.1:8000/
    python serve.py --out_dir=out-synthetic --voices=voices     # runs until stopped: voices/NAME.wav + NAME.txt

POST /v1/audio/speech takes OpenAI's request ({"model": "dirt", "input": "...", "voice": "default",
"response_format": "wav"}) plus Dirt's own sampling fields (temperature, top_k, top_p, cfg_scale, max_seconds, seed)
and "stream": true for audio as it is made. GET /v1/voices lists the voices, GET /health the state, GET / is a page to
try it. Requests that arrive while a batch is being sampled join it at the next step boundary, each answered at
its own end-of-audio (docs/serving.md: how, and what it gains). Each request
samples from its own random stream, so {"input": T, "seed": S} answers what `sample.py --text=T --seed=S` writes,
whatever else the server is doing; one without a seed gets a fresh one, in the X-Dirt-Seed header. Needs
`pip install -r requirements-serve.txt`; audio needs the codec (as sample.py; a synthetic-corpus model without one
answers response_format "tokens" only).
"""

import asyncio
import io
import json
import os
import re
import secrets
import socket
import threading
import time
import traceback
import urllib.parse
from dataclasses import replace

import numpy as np
import torch

from codec import (CKPT_PATH, CONFIG_PATH, SAMPLE_RATE, TOKENS_PER_SECOND, Codec, CodecCheckpointError,
                   CodecUnavailable, StreamingDecoder, pcm16)
from common import DTYPES, check_device, default_device, default_dtype, fail
from data import CheckpointError, load_model
from generate import Sampling
from speak import SEEDS, SpeechMissing, check_seeds, load_voice, synthesize
from synthetic import SyntheticSpeech

# -----------------------------------------------------------------------------
out_dir = "out"  # the model to serve: a training run's out_dir or an exported folder (export.py)
ckpt = ""  # a checkpoint file, in place of out_dir
host = "127.0.0.1"  # 0.0.0.0 to serve other machines (there is no authentication)
port = 8000
voices = ""  # a folder of voice prompts: NAME.wav (any audio file the codec reads) or NAME.npy (codec ids) + NAME.txt
globals().update(Sampling.defaults())  # a request's sampling settings when it gives none; max_seconds is also its cap
# limits: a request over one is answered at once with a JSON error (4xx, or 503 when the server is full)
max_chars = 2000  # the longest input, in characters
max_concurrent = 64  # requests queued or being spoken at once; one more gets a 503
max_batch = 32  # rows sampled side by side
join = True  # requests join the running batch at the next step boundary; False: they wait for the next batch
max_queue_wait = 30.0  # seconds a request may wait for its batch to start before it gets a 503
request_timeout = 120.0  # seconds from arrival to the end of the answer; then a 504 (or a stream cut short)
codec_config = CONFIG_PATH
codec_ckpt = CKPT_PATH  # '' = random weights (a test fixture, not speech)
audio = "auto"  # answer audio through the codec: auto = when the codec loads, yes = required, no = tokens only
device = default_device()
dtype = default_dtype()  # of the weights and the KV cache
# torch's CPU threads for sampling; 0 = one fewer than torch's default (its cores, or OMP_NUM_THREADS), at least
# one: the core left is the event loop's (HTTP, JSON, WAV encoding), which a sampler spread over every core would
# wait on (docs/serving.md: Threads)
threads = 0
# -----------------------------------------------------------------------------
FORMATS = {"wav": ("audio/wav", "WAV", "PCM_16"), "flac": ("audio/flac", "FLAC", "PCM_16"),
           "mp3": ("audio/mpeg", "MP3", "MPEG_LAYER_III"),
           "pcm": (f"audio/L16; rate={SAMPLE_RATE}; channels=1", None, None),
           "tokens": ("application/json", None, None)}  # tokens: Dirt's own, the codec ids and what they say
STREAMED = ("wav", "pcm", "tokens")  # formats that can be written before their length is known
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "cfg_scale", "max_seconds")
VOICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ClientError(Exception):
    """A request the server will not serve: an HTTP status and a one-line message that says what to change."""

    def __init__(self, status, message, param=None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


class Job:
    """One request: what to say, how, and the channel its tokens travel back on (sampler thread -> event loop)."""

    def __init__(self, rid, text, voice, sampling, seed, streamed, loop):
        self.id, self.text, self.voice, self.sampling, self.seed = rid, text, voice, sampling, seed
        self.streamed, self.loop, self.events = streamed, loop, asyncio.Queue()
        self.tokens, self.batch = [], 0
        self.arrived, self.started, self.first, self.finished = time.time(), None, None, None
        self.first_audio = None  # when the first bytes of the answer left (streamed: as soon as audio is made)
        self.cancelled = False  # set by the event loop: disconnected, timed out or waited too long

    def send(self, event):  # from the sampler thread
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Batcher:
    """
    One thread samples; requests queue for it. It takes the oldest request and every waiting one that samples the
    same way (one Sampling per batch, as synthesize has; each row has its own seed), up to max_batch, and speaks them
    side by side; each row's tokens go back as they are made, and its answer at its own end-of-audio. Requests that
    arrive meanwhile join the running batch at the next step boundary, into the rows that have ended (synthesize's
    join, through generate.stream's: docs/serving.md).
    """

    def __init__(self, model):
        self.model, self.queue, self.running = model, [], []
        self.wake = threading.Condition()
        threading.Thread(target=self.loop, daemon=True, name="sampler").start()

    def live(self):
        """The requests being spoken: taken into the batch, neither finished nor gone."""
        return [j for j in self.running if j.finished is None and not j.cancelled]

    def submit(self, job):
        with self.wake:
            if len(self.queue) + len(self.live()) >= max_concurrent:
                raise ClientError(503, f"server busy: {max_concurrent} requests already queued or being spoken "
                                       "(--max_concurrent); try again shortly")
            self.queue.append(job)
            self.wake.notify()

    def cancel(self, job):
        """The event loop's side: the request is gone (disconnected, timed out, waited too long); free its place."""
        with self.wake:
            job.cancelled = True
            if job in self.queue:
                self.queue.remove(job)

    def take(self, key, n, rows):
        """Up to n queued requests that sample as key says, oldest first; none while an older one samples otherwise
        (it goes first, in the next batch, once this one drains). rows: the batch's rows with them."""
        with self.wake:
            if not self.queue or self.queue[0].sampling != key:
                return []
            jobs = [j for j in self.queue if j.sampling == key][:n]
            self.queue = [j for j in self.queue if j not in jobs]
            self.running += jobs
        now = time.time()
        for job in jobs:
            job.started, job.batch = now, rows - n + len(jobs)
        return jobs

    def loop(self):
        while True:
            with self.wake:
                while not self.queue:
                    self.wake.wait()
                key = self.queue[0].sampling
            batch = self.take(key, max_batch, max_batch)

            def join_queued(n):
                jobs = self.take(key, n, max_batch)
                batch.extend(jobs)  # numbered on, as synthesize numbers the texts it is given
                return [(j.text, j.voice, j.seed) for j in jobs]

            def on_token(i, token):
                job = batch[i]
                if job.cancelled:
                    return False
                if token is None:
                    job.finished = time.time()
                    job.send(("done", None))
                    return True
                if isinstance(token, SpeechMissing):  # this text alone fails, with why and what to change
                    job.finished = time.time()
                    job.send(("error", re.sub(r"^text \d+", "the input", str(token)).replace("--", "")))
                    return True
                job.tokens.append(token)
                if job.first is None:
                    job.first = time.time()
                if job.streamed:
                    job.send(("token", token))
                return True
            try:
                synthesize(self.model, [j.text for j in batch], key, [j.seed for j in batch], max_batch,
                           [j.voice for j in batch], on_token=on_token,
                           join=join_queued if join else None)
            except Exception:  # the server's fault, not a request's: the log keeps the traceback
                traceback.print_exc()
                for job in batch:
                    if job.finished is None:
                        job.send(("error", "the sampler failed on this batch; see the server log"))
            with self.wake:
                self.running = []


def error_response(status, message, param=None):
    from fastapi.responses import JSONResponse

    kind = "server_busy" if status in (503, 504) else "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


def parse_request(body):
    """The JSON body of POST /v1/audio/speech -> (text bytes, voice name, format, stream, Sampling, seed)."""
    try:
        req = json.loads(body)
    except UnicodeDecodeError as e:
        raise ClientError(400, f"the request body is not UTF-8 (byte {e.start}); send UTF-8 JSON") from None
    except ValueError as e:
        raise ClientError(400, f"the request body is not JSON ({e}); send {{\"input\": \"...\"}}") from None
    if not isinstance(req, dict):
        raise ClientError(400, "the request body must be a JSON object such as {\"input\": \"Hello.\"}")
    known = {"model", "input", "voice", "response_format", "speed", "stream", "seed", *SAMPLING_FIELDS}
    unknown = sorted(set(req) - known)
    if unknown:
        raise ClientError(400, f"unknown field {unknown[0]!r}; the fields are {', '.join(sorted(known))}", unknown[0])
    if req.get("model", "dirt") not in ("dirt", MODEL_NAME) or not isinstance(req.get("model", ""), str):
        raise ClientError(400, f"model {req['model']!r} is not served here; use \"dirt\"", "model")
    text = req.get("input")
    if not isinstance(text, str) or not text.strip():
        raise ClientError(400, "input is missing or empty: give the text to speak, e.g. \"input\": \"Hello.\"", "input")
    try:
        text.encode()
    except UnicodeEncodeError as e:  # a lone surrogate: "\ud800" is valid JSON, not text
        raise ClientError(400, f"input is not valid Unicode at character {e.start}", "input") from None
    if len(text) > max_chars:
        raise ClientError(413, f"input has {len(text)} characters, over this server's limit of {max_chars} "
                               "(--max_chars); split it into several requests", "input")
    voice = "default" if req.get("voice") is None else req["voice"]
    if not isinstance(voice, str) or voice not in VOICES:
        raise ClientError(400, f"unknown voice {voice!r}; this server has: {', '.join(VOICES)}", "voice")
    fmt = "wav" if req.get("response_format") is None else req["response_format"]
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ClientError(400, f"response_format {fmt!r} is not one of {', '.join(FORMATS)}", "response_format")
    if fmt != "tokens" and CODEC is None:
        raise ClientError(400, f"response_format {fmt!r} needs the codec, which this server has not loaded "
                               "(start it with the codec, see --audio); use \"tokens\"", "response_format")
    stream = req.get("stream", False)
    if not isinstance(stream, bool) or (stream and fmt not in STREAMED):
        raise ClientError(400, f"stream must be true or false, and a stream's response_format one of "
                               f"{', '.join(STREAMED)}", "stream")
    if req.get("speed", 1.0) != 1.0:
        raise ClientError(400, "speed: Dirt speaks at the pace its model learned; only 1.0 is supported", "speed")
    settings = {k: req[k] for k in SAMPLING_FIELDS if k in req}
    try:
        sampling = replace(SAMPLING, **settings)  # Sampling checks every value; a string is out of range too
    except (ValueError, TypeError) as e:
        raise ClientError(400, str(e).replace("--", ""), next(iter(settings), None)) from None
    if sampling.max_seconds > SAMPLING.max_seconds:
        raise ClientError(400, f"max_seconds {sampling.max_seconds} is over this server's {SAMPLING.max_seconds} "
                               "(--max_seconds)", "max_seconds")
    # no seed: a fresh one, answered in X-Dirt-Seed (and logged), so that any answer can be asked for again
    job_seed = req["seed"] if req.get("seed") is not None else secrets.randbelow(SEEDS)
    try:
        check_seeds([job_seed])
    except ValueError:
        raise ClientError(400, f"seed must be an integer from 0 to {SEEDS - 1}, not {job_seed!r}", "seed") from None
    return text.strip().encode(), voice, fmt, stream, sampling, job_seed


def heard(tokens):
    """What the synthetic corpus's recogniser hears in the tokens ('' for a real-speech model)."""
    return SyntheticSpeech().recognise(tokens)[0] if SYNTHETIC else ""


def encode(tokens, fmt):
    """The answer's bytes: the audio in fmt (decoded by the codec), or the tokens as JSON."""
    if fmt == "tokens":
        return json.dumps({"tokens": tokens, "seconds": len(tokens) / TOKENS_PER_SECOND, "heard": heard(tokens)})
    wav = CODEC.decode([np.array(tokens, dtype=np.int64)])[0] if tokens else np.zeros(0, np.float32)
    pcm = pcm16(wav)  # one conversion to 16 bits for every format, streamed or not
    if fmt == "pcm":
        return pcm
    import soundfile as sf

    out = io.BytesIO()
    sf.write(out, np.frombuffer(pcm, "<i2"), SAMPLE_RATE, FORMATS[fmt][2], format=FORMATS[fmt][1])
    return out.getvalue()


def wav_header():
    """A 16-bit mono WAV header for a stream of unknown length (sizes 0xFFFFFFFF: players read to the end)."""
    import struct

    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16) + b"data" + struct.pack("<I", 0xFFFFFFFF))


def log(job, status):
    def since(t):
        return f"{(t - job.arrived) * 1000:.0f} ms" if t else "none"
    print(f"request {job.id}: {status}, {len(job.text.decode())} chars, {len(job.tokens) / TOKENS_PER_SECOND:.2f} s "
          f"of audio, latency {time.time() - job.arrived:.2f} s, first token {since(job.first)}, first audio "
          f"{since(job.first_audio)}, batch of {job.batch}, seed {job.seed}", flush=True)


async def read_body(request):
    """The request's body, kept no further than the longest a request within --max_chars can be: past that a 413, so
    that no client can make the server hold gigabytes. The rest is read and dropped, so that the client, still
    sending, gets the answer instead of a reset connection."""
    limit = 12 * max_chars + 65536  # every character JSON-escaped as a surrogate pair (12 bytes), other fields
    body, size = bytearray(), 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            body += chunk
    if size > limit:
        raise ClientError(413, f"the request body is {size} bytes, over {limit}: input is at most {max_chars} "
                               "characters on this server (--max_chars); split it into several requests", "input")
    return bytes(body)


async def next_event(job, disconnected):
    """The job's next event from the sampler; a ClientError on a disconnect, a timeout or a long wait in the queue."""
    while True:
        if time.time() - job.arrived > request_timeout:
            raise ClientError(504, f"request timed out after {request_timeout} s (--request_timeout)")
        if job.started is None and time.time() - job.arrived > max_queue_wait:
            raise ClientError(503, f"waited over {max_queue_wait} s for a batch (--max_queue_wait); the server is "
                                   "busy, try again shortly")
        try:
            return await asyncio.wait_for(job.events.get(), 0.2)
        except asyncio.TimeoutError:
            if await disconnected():
                raise ClientError(499, "client disconnected")


async def whole_answer(batcher, job, fmt, headers, disconnected):
    """The answer in one piece once the job is done: its audio in fmt, or its tokens."""
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import Response

    try:
        while (event := await next_event(job, disconnected))[0] == "token":
            pass
    except ClientError as e:
        batcher.cancel(job)
        log(job, e.status)
        raise
    if event[0] == "error":
        log(job, 500)
        return error_response(500, event[1])
    body = await run_in_threadpool(encode, job.tokens, fmt)
    headers.update({"X-Dirt-Tokens": str(len(job.tokens)), "X-Dirt-Heard": urllib.parse.quote(heard(job.tokens))})
    job.first_audio = time.time()
    log(job, 200)
    return Response(body, media_type=FORMATS[fmt][0], headers=headers)


async def streamed_answer(batcher, job, fmt):
    """The answer as it is made: one token id per line, or raw PCM (after a WAV header) as fast as the streaming
    decoder turns the tokens into audio."""
    from fastapi.concurrency import run_in_threadpool

    pieces, status = [], 200
    decoder = None if fmt == "tokens" else StreamingDecoder(CODEC, lambda wav: pieces.append(pcm16(wav)))
    try:
        if fmt == "wav":
            yield wav_header()
        while True:  # a client that goes away closes this generator: see finally
            kind, value = await next_event(job, lambda: asyncio.sleep(0, result=False))
            if kind == "error":
                status = 500
                break
            if decoder is None and kind == "token":
                pieces.append(f"{value}\n".encode())
            elif decoder is not None:
                await run_in_threadpool(*([decoder.push, value] if kind == "token" else [decoder.flush]))
            for piece in pieces:
                job.first_audio = job.first_audio or time.time()
                yield piece
            pieces.clear()
            if kind == "done":
                break
    except ClientError as e:  # a timeout: the stream just ends, short
        status = e.status
    finally:  # also when the client goes away: the generator is closed, and the row dropped
        if job.finished is None:
            batcher.cancel(job)
        log(job, status if not job.cancelled or status != 200 else 499)


def make_app(batcher):
    """The HTTP side: OpenAI's speech endpoint and Dirt's own, every error a JSON one."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, StreamingResponse

    app = FastAPI(title="Dirt", docs_url=None, redoc_url=None)
    ids = iter(range(1, 1 << 62))
    page = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.html"), encoding="utf-8").read()

    @app.exception_handler(ClientError)
    async def client_error(request, e):
        print(f"rejected {request.method} {request.url.path}: {e.status} {e.message}", flush=True)
        return error_response(e.status, e.message, e.param)

    @app.exception_handler(404)
    @app.exception_handler(405)
    async def not_here(request, e):
        return error_response(e.status_code, f"{request.method} {request.url.path}: {e.detail}; the endpoints are "
                                             "POST /v1/audio/speech, GET /v1/voices, GET /health, GET /")

    @app.get("/")
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": MODEL_NAME, "synthetic": SYNTHETIC, "codec": CODEC is not None,
                "queued": len(batcher.queue), "running": len(batcher.live()), "voices": list(VOICES),
                "sampling": {k: getattr(SAMPLING, k) for k in SAMPLING_FIELDS}}  # a request's, when it gives none

    @app.get("/v1/voices")
    async def list_voices():
        return {"voices": [{"name": name, "transcript": v[0].decode() if v else ""} for name, v in VOICES.items()]}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": "dirt", "object": "model", "owned_by": MODEL_NAME}]}

    @app.post("/v1/audio/speech")
    async def speech(request: Request):
        text, voice, fmt, stream, sampling, job_seed = parse_request(await read_body(request))
        job = Job(next(ids), text, VOICES[voice], sampling, job_seed, stream, asyncio.get_running_loop())
        batcher.submit(job)
        headers = {"X-Request-Id": str(job.id), "X-Dirt-Seed": str(job.seed)}
        if stream:
            return StreamingResponse(streamed_answer(batcher, job, fmt), media_type=FORMATS[fmt][0], headers=headers)
        return await whole_answer(batcher, job, fmt, headers, request.is_disconnected)

    return app


def load_voices(folder, codec_loader):
    """{name: (transcript bytes, codec ids) or None}: 'default' (the model's own voice), then the folder's."""
    found = {"default": None}
    if not folder:
        return found
    if not os.path.isdir(folder):
        raise ValueError(f"--voices={folder} is not a folder; give one holding NAME.wav (or NAME.npy) + NAME.txt")
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext == ".txt" or stem.startswith("."):
            continue
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise ValueError(f"--voices: {name} is not a file; the folder holds NAME.wav (or NAME.npy) + NAME.txt only")
        if not VOICE_NAME.fullmatch(stem) or stem == "default" or stem in found:
            raise ValueError(f"--voices: {name}: a voice name is letters, digits, _ or - (not 'default'), one file "
                             "per name")
        transcript = os.path.join(folder, stem + ".txt")
        if not os.path.isfile(transcript):
            raise ValueError(f"--voices: {name} has no transcript: write the words spoken in it to {transcript}")
        try:
            with open(transcript, encoding="utf-8") as f:
                words = f.read()
            if not words.strip():
                raise ValueError(f"{transcript} is empty: write the words spoken in {name} to it")
            found[stem] = load_voice(path, words, codec_loader, ids=ext == ".npy")
        except UnicodeDecodeError as e:
            raise ValueError(f"--voices: {transcript} is not UTF-8 (byte {e.start}); re-save it as UTF-8") from None
        except ValueError as e:  # it names the file
            raise ValueError(f"--voices: {e}") from None
    return found


if __name__ == "__main__":
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        fail(f"serve.py needs {e.name}: pip install -r requirements-serve.txt")
    try:
        SAMPLING = Sampling.from_settings(globals())
        check_device(device, dtype)
        if best_of != 1:
            raise ValueError("--best_of must be 1: the server streams each row's one sample as it is made")
        if audio not in ("auto", "yes", "no"):
            raise ValueError(f"--audio={audio!r}: use auto, yes or no")
        for name in ("max_chars", "max_concurrent", "max_batch", "max_queue_wait", "request_timeout", "port"):
            if not globals()[name] > 0:
                raise ValueError(f"--{name} must be above 0")
        if port > 65535:
            raise ValueError(f"--port={port}: a port is 1 to 65535")
        if not host.strip():  # the socket would take '' for every interface: say so instead
            raise ValueError("--host is empty: give an address, 127.0.0.1 (this machine) or 0.0.0.0 (every interface)")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ValueError(f"--threads={threads!r}: use 0 (one fewer than torch's default) or a number of threads")
        torch.set_num_threads(threads or max(1, torch.get_num_threads() - 1))
        with socket.socket() as s:  # a taken port is a one-line error now, not uvicorn's traceback later
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a closed one's TIME_WAIT is fine
            try:
                s.bind((host, port))
            except OSError as e:
                raise ValueError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host")
        model, checkpoint = load_model(ckpt or out_dir, device)
        model = model.to(DTYPES[dtype])
        MODEL_NAME = os.path.basename(os.path.normpath(ckpt or out_dir))
        SYNTHETIC = checkpoint.get("config", {}).get("dataset") == "synthetic"
        CODEC = None
        if audio != "no":
            try:
                CODEC = Codec(codec_config, codec_ckpt or None, device)
            except CodecUnavailable as e:
                if audio == "yes" or not SYNTHETIC or isinstance(e, CodecCheckpointError):  # a bad file: say so
                    raise ValueError(f"{e} (or --audio=no to serve tokens only)") from None
                print(f"note: tokens only, no audio: {e}")
        VOICES = load_voices(voices, lambda: CODEC if CODEC else Codec(codec_config, codec_ckpt or None, device))
        for name, voice in VOICES.items():  # one token in each voice: a prompt too long for the model fails now
            try:
                one_token = replace(SAMPLING, max_seconds=1 / TOKENS_PER_SECOND)
                synthesize(model, [b"Hello."], one_token, voices=[voice], strict=False)
            except ValueError as e:
                raise ValueError(f"--voices: {name}: {e}") from None
    except (ValueError, CheckpointError, CodecUnavailable) as e:
        fail(str(e))
    print(f"serving {MODEL_NAME} on http://{host}:{port}/ (voices: {', '.join(VOICES)}; codec: "
          f"{'yes' if CODEC else 'no'}; batches of up to {max_batch}; CPU threads: {torch.get_num_threads()})",
          flush=True)
    uvicorn.run(make_app(Batcher(model)), host=host, port=port, log_level="warning", access_log=False)
