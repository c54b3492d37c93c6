"""
Benchmark Dirt on this machine, with random weights (or a checkpoint's), and say how far each figure is from what
the hardware allows. nanoGPT's bench.py, for a TTS model: what matters is decode speed, not only training speed.

    python bench.py config/train_small.py                        # sampling, batch 1 and batch 8
    python bench.py config/train_small.py --mode=train           # training steps: tokens/s, ms/iter, MFU, memory
    python bench.py config/train_small.py --compile=True         # the decode step compiled (a CUDA graph on a GPU)
    python bench.py config/train_small.py --quantize=int8        # int8 weights (quantize.py) in the main rows
    python bench.py config/train_small.py --threads=1            # a small CPU shared with other work (see below)
    python bench.py --ckpt=out-synthetic/ckpt.pt                 # a trained model's shape and weights
    python bench.py --n_layer=2 --n_head=2 --n_embd=64 --block_size=128 --prompt_len=16 --new_tokens=16
    python bench.py --mode=serve --ckpt=out-synthetic            # serve.py: 32 clients against one at a time

A config file is a training recipe: bench takes only the model from it (every model.GPTConfig field, so it times
exactly the model the recipe trains) and ignores its training settings. --key=value flags override any setting
below; python bench.py --help lists them.

--mode=sample (the default) times prefill and decode separately, at batch 1 and at --batch_size. With --compare=True
(the default) batch 1 is timed side by side, the runs interleaved: the dtype eager and (--compile=True) compiled,
int8 and int4 weights (quantize.py, compiled alike), and, when it is installed, Hugging Face transformers'
LlamaForCausalLM.generate at the same dims with a plain 46976-way head and the same sampling (the peer; not a
requirement). Each row:
    prefill_ms      the prompt (prompt_len tokens per row) through the model, filling the KV cache
    ttfa_ms         time to first audio: prefill, then the first step (sample the first token, decode it)
    step_ms         one decode step, decode_and_sample: feed a token per row, sample the next (the factored head,
                    with the sampling settings of generate.Sampling, sample.py's defaults unless given);
                    median of runs. --compile=True makes the whole step one CUDA graph on a GPU
                    (generate.decode_compile_options: the inductor settings that shorten it, on a CPU too)
    tokens_per_s    audio tokens per second, all rows together
    rtf             seconds of audio per second of compute, all rows together (25 tokens = 1 s), as eval.py
    roofline        a decode step must read every weight once (only the embedding rows it looks up) and the KV
                    cache up to the current position (int8 / int4 rows: their bytes): bytes_per_step / the MEASURED
                    bandwidth of a matrix-vector product on this device (the faster of F.linear and, on a CPU, the
                    compiled product-and-sum a compiled step uses, each the median of readings taken between the
                    timed runs, under the same load; a streaming sum and a copy are printed beside them) is the
                    fastest a step can be.
                    roofline_fraction = that time / the measured step time.
--mode=train times full optimizer steps (forward, backward, clip, AdamW) on random token rows of block_size
(--nanogpt=CHECKOUT: nanoGPT's step at the same trunk dims too, the steps interleaved):
    step_ms, tokens_per_s, peak memory (CUDA: max allocated; CPU: the process's max RSS), and MFU from
    GPT.estimate_mfu over a peak FLOP/s looked up by GPU name, or on a CPU MEASURED with a large matmul.
--mode=serve starts serve.py in a subprocess on a free port of 127.0.0.1 with --ckpt's model (the sampling settings
are its defaults, --serve_args more of its flags) and sends it a mix of requests (serve_mix: texts of 1 to 3
sentences, client c in the server's voice c mod n, a seed each, one answer in 8 a WAV when it has a codec): all of
them one at a time on one connection, then from --clients clients at once, each sending its --requests_per_client
one after another; --runs times, interleaved. It prints the tokens/s of both and their ratio (what joining the
running batch buys), latency under load, and how many answers differ from the same request's answer alone (0: each
samples from its own seed). tests/test_serve.py checks that every answer is right; the ratio is measured here.
The LAST line printed is one JSON object with every figure; in sample mode its step figures are batch 1's, and
batch_n holds the same keys for --batch_size.

On a CPU every figure moves with the machine's load (printed, and in the JSON). On a small machine shared with other
processes, OpenMP threads that spin-wait for each other can make a step several times slower: compare --threads=1
with the default, and try OMP_WAIT_POLICY=PASSIVE in the environment.
"""

import concurrent.futures
import copy
import http.client
import importlib.util
import json
import os
import re
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, fields

import torch

from codec import TOKENS_PER_SECOND
from common import DTYPES, check_device, default_device, default_dtype, fail, gpu_peak_flops
from data import CheckpointError, load_model
from generate import Sampling, compile_decode_step, decode_and_sample, prefill, sample_audio_token
from layers import matvec
from model import EOA, GPT, N_AUDIO, PAD, SOA, TEXT_OFFSET, VOCAB_SIZE, GPTConfig
from optim import adamw, configure_optimizers
from quantize import MODES, QuantLinear, Quantization, quantize_model


def decode_bytes(model, batch_size, context_len, dtype_bytes):
    """
    Bytes one decode step (sample_audio_token + decode_one_token) cannot avoid moving: every weight once, except the
    embedding tables (wte, coarse_embed, fine_embed), of which only the rows it looks up: per sequence, one row of
    each for the input token and a coarse_embed row for the fine head; and every layer's keys and values for
    context_len positions per sequence. Activations, RoPE rows and the new key/value writes (KBs) are left out.
    Quantised layers (quantize.py) count the bytes of their int8 / int4 weights, scales and offsets.
    """
    cfg = model.config
    tables = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    weights = sum(p.numel() for p in model.parameters()) - sum(t.numel() for t in tables)
    quantised = sum(b.nbytes for m in model.modules() if isinstance(m, QuantLinear) for b in m.buffers())
    rows = batch_size * (len(tables) + 1) * cfg.n_embd
    kv = 2 * cfg.n_layer * batch_size * context_len * cfg.n_kv_head * (cfg.n_embd // cfg.n_head)
    return (weights + rows + kv) * dtype_bytes + quantised


def timed_once(fn, sync):
    """Seconds of one call."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def timed(fn, sync, reps):
    """Seconds of each of reps calls, after one untimed call."""
    fn()
    return [timed_once(fn, sync) for _ in range(reps)]


def bandwidth_probe(device, megabytes, sync, reps=3):
    """
    A function that, each time it is called, adds reps GB/s readings of streaming kernels on a buffer far bigger than
    the caches to the dict it returns: a sum, a copy, and the matrix-vector product a decode step makes (a vector
    times a weight matrix [out, in]) as F.linear and, on a CPU, as the compiled product-and-sum a compiled step uses
    (layers.matvec). Called between timed generations, its readings see the same load as the steps do (on a shared
    machine both move with it). The roofline takes the faster GEMV's median (bench prints which): the bandwidth a
    decode step's weights can be read at; the sum and the copy show what plain streaming reaches.
    """
    x = torch.rand(megabytes * 2**20 // 4, device=device)  # fp32
    y = torch.empty_like(x)
    mat = x.view(-1, 4096)
    vec = torch.rand(1, 4096, device=device)
    kernels = {"sum": (lambda: x.sum(), x.nbytes), "copy": (lambda: y.copy_(x), 2 * x.nbytes),  # read + write
               "gemv": (lambda: torch.nn.functional.linear(vec, mat), mat.nbytes)}
    if not device.startswith("cuda"):
        compiled = torch.compile(lambda: matvec(vec, mat), dynamic=False)
        kernels["gemv_compiled"] = (compiled, mat.nbytes)
    readings = {name: [] for name in kernels}

    def probe():
        for name, (fn, nbytes) in kernels.items():
            readings[name] += [nbytes / t / 1e9 for t in timed(fn, sync, reps)]
        return readings

    return probe


def matmul_flops(device, dtype, sync, n=1024, reps=10):
    """FLOP/s of a large square matmul, the fastest of reps (a peak): what a CPU's MFU is measured against."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / min(timed(lambda: a @ b, sync, reps))


def device_name(device, threads=None):
    """The GPU's name, or the CPU's with the threads torch uses (this process's, or those given)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    name = "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name} ({threads or torch.get_num_threads()} threads)"


def peak_memory_bytes(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KB


# -----------------------------------------------------------------------------
# sample mode


def sample_run(model, decode_step, sampling, prompt, pos, valid, n_steps, generator, sync):
    """One generation of n_steps tokens per row. -> (prefill s, first step s, mean s of the steps after it)."""
    P = prompt.shape[1]
    sync()
    t0 = time.perf_counter()
    h = prefill(model, prompt, pos[:, :P], valid[:, :P], P)  # as generate.stream does
    token = sample_audio_token(model, h, sampling, generator)
    sync()
    t1 = time.perf_counter()
    compiled = decode_step is not decode_and_sample
    slots = torch.arange(valid.shape[1], device=h.device)
    for t in range(n_steps):
        # the random model emits EOA now and then: the step is timed all the same, as if the row went on
        slot = P + t
        seen = valid if compiled else valid[:, :slot + 1]  # as generate.stream does
        token = decode_step(model, token, pos[:, slot:slot + 1], seen, slots[slot:slot + 1], sampling,
                            None if compiled else generator).clone()
        # cloned as stream()'s torch.where copies it too: a CUDA graph's output is overwritten by its next replay
        if t == 0:
            sync()
            t2 = time.perf_counter()
    sync()
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, (t3 - t2) / (n_steps - 1)


def bench_sample(runners, models, batch, prompt_len, new_tokens, runs, warmup, probe, device, seed):
    """
    Medians of runs generations at one batch size (after warmup ones) of each of runners, {name: fn(prompt, pos,
    valid, generator) -> (prefill s, first step s, mean step s)}, taking turns within each run (interleaved: all see
    the same load), bandwidth probed before each. models: the Dirt models whose caches they use. -> {name: row}
    """
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    total = prompt_len + new_tokens
    text = torch.randint(TEXT_OFFSET, TEXT_OFFSET + 256, (batch, prompt_len - 1), device=device)
    prompt = torch.cat([text, torch.full((batch, 1), SOA, device=device)], dim=1)
    pos = torch.arange(total, device=device).repeat(batch, 1)  # [B, total], contiguous as in generate
    valid = torch.ones(batch, total, dtype=torch.bool, device=device)  # no padding: every row is prompt_len long
    for model in models:
        model.setup_cache(batch, total)  # once, as gpt-fast: a compiled step keeps seeing the same buffers
    try:
        for _ in range(warmup):
            for run in runners.values():
                run(prompt, pos, valid, generator)
        results = {name: [] for name in runners}
        for _ in range(runs):
            for name, run in runners.items():
                probe()
                results[name].append(run(prompt, pos, valid, generator))
    finally:
        for model in models:
            model.clear_cache()
    rows = {}
    for name, res in results.items():
        prefill_s, _, step_s = (statistics.median(r[i] for r in res) for i in range(3))
        rows[name] = {"name": name, "batch_size": batch, "prefill_ms": 1e3 * prefill_s,
                      "prefill_tokens_per_s": batch * prompt_len / prefill_s,
                      "ttfa_ms": 1e3 * statistics.median(r[0] + r[1] for r in res), "step_ms": 1e3 * step_s,
                      "tokens_per_s": batch / step_s, "rtf": batch / step_s / TOKENS_PER_SECOND}
    return rows


def hf_peer(model, sampling, new_tokens, device, ptdtype, sync):
    """
    The peer: Hugging Face transformers' LlamaForCausalLM at model's dims (layers, width, heads, KV heads, SwiGLU
    width, RoPE) with a plain VOCAB_SIZE-way head, sampled by its generate() with the same settings. -> (a runner for
    bench_sample, its bytes per step at a context), or a line saying why there is none (transformers is a measuring
    tool here, not a requirement). Its step: (a generate of new_tokens - a generate of 1) / (new_tokens - 1).
    """
    if importlib.util.find_spec("transformers") is None:
        return "transformers is not installed (pip install transformers, outside Dirt's requirements, to time it)"
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except Exception as e:  # an install that cannot import here: the row is left out, the reason said
        return f"transformers does not import here: {(str(e).splitlines() or [type(e).__name__])[0]}"

    cfg = model.config
    hidden = model.blocks[0].mlp.gate_up.out_features // 2 if cfg.n_layer else 0
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=cfg.n_embd, intermediate_size=hidden, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head, max_position_embeddings=cfg.block_size,
        rope_theta=cfg.rope_theta, tie_word_embeddings=False, attention_bias=cfg.bias, mlp_bias=cfg.bias,
        pad_token_id=PAD, eos_token_id=None, bos_token_id=None)).to(device, ptdtype).eval()
    sampled = sampling.temperature > 0
    args = dict(do_sample=sampled, pad_token_id=PAD, eos_token_id=None)
    if sampled:  # generate's top_k defaults to 50: ours is off unless set
        args.update(temperature=sampling.temperature, top_k=sampling.top_k,
                    top_p=sampling.top_p if 0 < sampling.top_p < 1 else 1.0)

    def generate(prompt, n):
        sync()
        t0 = time.perf_counter()
        hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n, **args)
        sync()
        return time.perf_counter() - t0

    def run(prompt, pos, valid, generator):
        first, full = generate(prompt, 1), generate(prompt, new_tokens)
        return first, (full - first) / (new_tokens - 1), (full - first) / (new_tokens - 1)

    def nbytes(batch, context):  # every weight but the input table, a row of it and the KV cache per sequence
        weights = sum(p.numel() for p in hf.parameters()) - hf.model.embed_tokens.weight.numel()
        kv = 2 * cfg.n_layer * context * cfg.n_kv_head * (cfg.n_embd // cfg.n_head)
        return (weights + batch * (cfg.n_embd + kv)) * ptdtype.itemsize

    return run, nbytes


def roofline(row, nbytes, prompt_len, new_tokens, bandwidth):
    """Add the memory-bandwidth roofline of a bench_sample row: the fastest its decode step could be. nbytes(batch,
    context): the bytes a step moves (decode_bytes)."""
    context = prompt_len + (new_tokens + 1) / 2  # step t attends to prompt_len + t + 1 positions: the mean
    nbytes = nbytes(row["batch_size"], context)
    roofline_s = nbytes / (bandwidth * 1e9)
    return {**row, "mean_context": context, "bytes_per_step": int(nbytes), "roofline_ms": 1e3 * roofline_s,
            "roofline_fraction": 1e3 * roofline_s / row["step_ms"]}


# -----------------------------------------------------------------------------
# train mode


def train_batch(batch, seq_len, prompt_len, device):
    """Random rows shaped like training streams: text bytes, SOA, audio; targets on the audio and a final EOA."""
    x = torch.randint(0, N_AUDIO, (batch, seq_len), device=device)
    x[:, :prompt_len - 1] = torch.randint(TEXT_OFFSET, TEXT_OFFSET + 256, (batch, prompt_len - 1), device=device)
    x[:, prompt_len - 1] = SOA
    y = torch.full_like(x, -1)
    y[:, prompt_len - 1:-1] = x[:, prompt_len:]
    y[:, -1] = EOA
    return x, y


def optimizer_step(model, loss_fn, optimizers, compile_, ptdtype, device):
    """One training step as train.py takes it: forward, backward, clip at 1.0, step, zero the gradients."""
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    model.train()
    step_fn = torch.compile(loss_fn) if compile_ else loss_fn
    autocast = torch.autocast(device_type, dtype=ptdtype, enabled=ptdtype != torch.float32)

    def step():
        with autocast:
            loss = step_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def nanogpt_step(path, cfg, batch, vocab, compile_, ptdtype, device):
    """
    The peer: nanoGPT's model.py from a checkout at path (https://github.com/karpathy/nanoGPT; not part of Dirt) at
    the same trunk dims (layers, heads, width, block_size; no biases, no dropout, as its train.py defaults) with a
    vocab-way head, stepped as its train.py does (its configure_optimizers' groups), by the same AdamW as Dirt's.
    -> a step function.
    """
    spec = importlib.util.spec_from_file_location("nanogpt_model", os.path.join(path, "model.py"))
    peer = sys.modules["nanogpt_model"] = importlib.util.module_from_spec(spec)  # torch.compile looks it up
    spec.loader.exec_module(peer)
    model = peer.GPT(peer.GPTConfig(block_size=cfg.block_size, vocab_size=vocab, n_layer=cfg.n_layer,
                                    n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=0.0, bias=False)).to(device)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    # its parameter groups (matrices decay, the rest not, as Dirt's), stepped by the same AdamW as Dirt's: nanoGPT
    # fuses it only on CUDA, so on a CPU its own would be torch's per-tensor loop, a different implementation
    groups = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), device_type).param_groups
    optimizer = adamw([{k: g[k] for k in ("params", "weight_decay")} for g in groups], 1e-4, (0.9, 0.95), device_type)
    x = torch.randint(vocab, (batch, cfg.block_size), device=device)
    y = torch.randint(vocab, (batch, cfg.block_size), device=device)
    return optimizer_step(model, lambda: model(x, y)[1], [optimizer], compile_, ptdtype, device)


def bench_train(model, batch, seq_len, prompt_len, steps, warmup, compile_, ptdtype, device, sync, peak_flops,
                peers=None):
    """Medians of steps optimizer steps of model (and of each of peers, {name: step fn}, taking turns with it)."""
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    optimizers = configure_optimizers(model, 0.1, 1e-4, (0.9, 0.95), device_type)
    x, y = train_batch(batch, seq_len, prompt_len, device)
    runs = {"dirt": optimizer_step(model, lambda: model(x, y), optimizers, compile_, ptdtype, device), **(peers or {})}
    for _ in range(max(1, warmup)):  # compiles, allocates the optimizer state
        for step in runs.values():
            step()
    times = {name: [] for name in runs}
    for _ in range(steps):
        for name, step in runs.items():
            times[name].append(timed_once(step, sync))
    dt = statistics.median(times["dirt"])
    tokens = batch * seq_len
    return {
        "batch_size": batch,
        "seq_len": seq_len,
        "step_ms": 1e3 * dt,
        "tokens_per_s": tokens / dt,
        "mfu": model.estimate_mfu(tokens, seq_len, dt, peak_flops) if peak_flops else None,
        "peak_flops": peak_flops or None,
        "flops_per_token": model.flops_per_token(seq_len),
        "peak_memory_MB": peak_memory_bytes(device) / 2**20,
        "peers": {name: {"step_ms": 1e3 * statistics.median(t), "tokens_per_s": tokens / statistics.median(t)}
                  for name, t in times.items() if name != "dirt"},
    }


# -----------------------------------------------------------------------------
# serve mode

# the mix's texts: 1 to 3 short sentences, each short enough to be spoken whole, not in chunks, by a small model (the
# tests' tiny one, with a voice prompt: it has not learned to continue speech)
SERVE_TEXTS = ("Go.", "Call me tomorrow.", "The rain stopped.", "Sit down. Come back.", "We met at the old station.")


def serve_mix(clients, per_client, voices, audio, **fields):
    """The requests of the serving benchmark, per client: client c's r-th request says SERVE_TEXTS[(c + r) % 5] in
    voices[c % len(voices)] with seed 100 c + r (its answer is the same alone or under load), answered as a WAV one
    time in 8 when the server has a codec (audio), else as tokens; fields: more request fields (temperature, ...)."""
    return [[{"input": SERVE_TEXTS[(c + r) % len(SERVE_TEXTS)], "voice": voices[c % len(voices)], "seed": 100 * c + r,
              "response_format": "wav" if audio and (c + r) % 8 == 0 else "tokens", **fields}
             for r in range(per_client)] for c in range(clients)]


def ask_in_turn(address, bodies, timeout):
    """One client: each body POSTed to /v1/audio/speech after the last is answered, on one keep-alive connection (as
    OpenAI's client keeps one). -> [(seconds, status, tokens (X-Dirt-Tokens; 0 if none), answer bytes)]"""
    connection = http.client.HTTPConnection(address, timeout=timeout)
    answers = []
    try:
        for body in bodies:
            t0 = time.perf_counter()
            connection.request("POST", "/v1/audio/speech", json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
            answers.append((time.perf_counter() - t0, response.status, int(response.getheader("X-Dirt-Tokens", 0)),
                            data))
    finally:
        connection.close()
    return answers


def serve_round(address, mix, together, timeout):
    """Every request of mix (serve_mix's): one at a time on one connection, or (together) each client on its own
    thread, all at once, each sending its requests in turn. -> (seconds, the answers in mix's order)."""
    t0 = time.perf_counter()
    if together:
        with concurrent.futures.ThreadPoolExecutor(len(mix)) as pool:
            answers = [a for client in pool.map(lambda bodies: ask_in_turn(address, bodies, timeout), mix)
                       for a in client]
    else:
        answers = ask_in_turn(address, [body for bodies in mix for body in bodies], timeout)
    return time.perf_counter() - t0, answers


def start_server(args, log_path, timeout):
    """serve.py (args: its flags) in a subprocess, on a free port of 127.0.0.1, its output in log_path; waits until
    /health answers. -> (process, "127.0.0.1:port", /health's JSON). RuntimeError with its last line if it ends."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.py"),
                                 *args, "--host=127.0.0.1", f"--port={port}"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        connection = http.client.HTTPConnection(f"127.0.0.1:{port}", timeout=10)
        try:
            connection.request("GET", "/health")
            return proc, f"127.0.0.1:{port}", json.loads(connection.getresponse().read())
        except OSError:
            time.sleep(0.2)
        finally:
            connection.close()
    stop_server(proc)
    with open(log_path) as f:
        last = (f.read().strip().splitlines() or [f"no answer in {timeout} s"])[-1]
    raise RuntimeError(f"serve.py did not start: {last.removeprefix('error: ')}")


def serve_report(ckpt, serve_args, sampling, device, dtype, threads, clients, per_client, runs, warmup, timeout=600):
    """serve.py with ckpt's model (sampling: its defaults for a request; serve_args: more of its flags) on loopback,
    timed by bench_serve with clients x per_client requests of the mix; prints the figures. -> the JSON report."""
    flags = [f"--ckpt={ckpt}", f"--device={device}", f"--dtype={dtype}", *([f"--threads={threads}"] if threads else []),
             *(f"--{k}={v}" for k, v in asdict(sampling).items()), *shlex.split(serve_args)]
    with tempfile.TemporaryDirectory() as folder:
        log_path = os.path.join(folder, "serve.log")
        proc, address, health = start_server(flags, log_path, timeout)
        try:
            mix = serve_mix(clients, per_client, health["voices"], health["codec"])
            for _ in range(warmup):  # untimed: client 0's requests, one at a time
                ask_in_turn(address, mix[0], timeout)
            r = bench_serve(address, mix, runs, timeout)
        finally:
            stop_server(proc)
            with open(log_path) as f:
                found = re.search(r"CPU threads: (\d+)", f.read())  # its start-up line
    served_by = int(found[1]) if found else None
    report = {"mode": "serve", "device": device_name(device, served_by), "dtype": dtype, "threads": served_by,
              "load_1min": os.getloadavg()[0],
              "ckpt": ckpt, "serve_args": serve_args, "sampling": asdict(sampling), "voices": health["voices"],
              "codec": health["codec"], "clients": clients, "requests_per_client": per_client, **r}
    print(f"serve: {ckpt} on {report['device']}, load average {report['load_1min']:.2f}; {r['requests']} requests "
          f"({clients} clients x {per_client}; voices {', '.join(health['voices'])}; "
          f"{'one in 8 as WAV' if health['codec'] else 'tokens only'}), {r['tokens'] // runs} tokens; runs: {runs}")
    print(f"one at a time: {r['alone_tokens_per_s']:.0f} tokens/s, latency p50 {r['alone_latency_p50_s']:.3f} s")
    print(f"{clients} clients at once: {r['together_tokens_per_s']:.0f} tokens/s, latency p50 {r['latency_p50_s']:.3f} "
          f"s, p95 {r['latency_p95_s']:.3f} s: {r['speedup']:.2f}x the tokens/s of one at a time (rounds: "
          + ", ".join(f"{x:.2f}x" for x in r["speedups"]) + ")")
    print(f"{r['stopped_short']} of {r['requests']} said the model stopped their text short (500); "
          f"{r['mismatched']} answers differed from the same request's first answer one at a time")
    return report


def stop_server(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_serve(address, mix, runs, timeout):
    """
    runs rounds of mix (serve_mix's), each one at a time and then together (interleaved: both see the same load on
    the machine). Each answer is checked against the first round's one at a time: the same status and tokens, and a
    tokens answer the same bytes (a WAV is those tokens decoded: equal up to float order). An answer other than 200
    or 500 (a text the model stopped short, said so) is a RuntimeError. -> the figures, totals over the rounds.
    """
    bodies = [body for client in mix for body in client]
    seconds, latency, speedups, mismatched, first = {False: 0.0, True: 0.0}, {False: [], True: []}, [], 0, None
    for _ in range(runs):
        taken = {}
        for together in (False, True):
            taken[together], answers = serve_round(address, mix, together, timeout)
            failed = [(body, a) for body, a in zip(bodies, answers) if a[1] not in (200, 500)]
            if failed:
                raise RuntimeError(f"{len(failed)} of {len(bodies)} requests failed, the first {failed[0][0]}: "
                                   f"{failed[0][1][1]} {failed[0][1][3][:300].decode(errors='replace')}")
            seconds[together] += taken[together]
            latency[together] += [a[0] for a in answers]
            first = first or answers
            mismatched += sum(a[1:3] != b[1:3] or (body["response_format"] == "tokens" and a[3] != b[3])
                              for a, b, body in zip(answers, first, bodies))
        speedups.append(taken[False] / taken[True])
    tokens = runs * sum(a[2] for a in first)
    under_load = sorted(latency[True])
    return {"requests": len(bodies), "runs": runs, "tokens": tokens, "stopped_short": sum(a[1] == 500 for a in first),
            "mismatched": mismatched, "alone_s": seconds[False], "together_s": seconds[True],
            "alone_tokens_per_s": tokens / seconds[False], "together_tokens_per_s": tokens / seconds[True],
            "speedup": seconds[False] / seconds[True], "speedups": speedups,
            "latency_p50_s": statistics.median(under_load), "latency_p95_s": under_load[int(0.95 * len(under_load))],
            "alone_latency_p50_s": statistics.median(latency[False])}


# -----------------------------------------------------------------------------


if __name__ == "__main__":
    # -----------------------------------------------------------------------------
    mode = "sample"  # 'sample', 'train' or 'serve' (serve.py in a subprocess, on loopback: its tokens/s under load)
    # a checkpoint (or out_dir, or exported folder) to take the shape and weights from; default: random weights of the
    # shape below. serve: the model to serve (required)
    ckpt = ""
    # the model: every field of model.GPTConfig; a config file (a training recipe) sets these and nothing else
    globals().update({f.name: f.default for f in fields(GPTConfig)})
    _file_keys = [f.name for f in fields(GPTConfig)]
    # how to sample (generate.Sampling, as sample.py); the decode step is timed with these (serve: serve.py's defaults)
    globals().update(Sampling.defaults())
    globals().update(Quantization.defaults())  # quantize: the weights of the main rows (batch 1 and batch_size)
    # sample: at batch 1, side by side with the main row, interleaved: dtype eager and compiled (with --compile=True),
    # int8 and int4 (compiled alike), and transformers' generate at the same dims when it is installed
    compare = True
    # what is timed
    batch_size = 0  # sample: batch N (batch 1 is timed too), 0 = 8; train: rows per step, 0 = 1 on a CPU, 16 on a GPU
    prompt_len = 100  # tokens before the audio (text bytes + SOA); ~100 bytes is a sentence
    new_tokens = 100  # audio tokens per timed generation (4 s); train mode: rows are block_size long
    runs = 5  # timed generations (sample) or optimizer steps (train); figures are medians
    warmup = 1  # untimed ones first (compilation happens here)
    bandwidth_mb = 0  # the buffer that measures memory bandwidth, far bigger than the caches; 0 = 256 (CPU), 1024 (GPU)
    # system
    device = default_device()
    dtype = default_dtype()
    compile = False  # torch.compile: the decode step (CUDA graphs on a GPU) or the training model
    threads = 0  # CPU threads for torch; 0 = torch's default (one per core; serve: serve.py's, one fewer)
    peak_flops = 0.0  # train mode: the device's peak FLOP/s; 0 = by GPU name, or measured on a CPU
    # train mode: a nanoGPT checkout (its model.py) whose train step is timed too, taking turns with Dirt's, at the
    # same trunk dims with a nanogpt_vocab-way head (the peer for the trunk's speed; not part of Dirt)
    nanogpt = ""
    nanogpt_vocab = 65  # its shakespeare_char vocabulary
    # serve mode: runs rounds of a mix of requests (texts of 1 to 3 sentences, client c in the server's voice c mod n,
    # one answer in 8 a WAV when it has a codec), sent one at a time, then by this many clients at once, each sending
    # its requests one after another; warmup: client 0's requests first, untimed
    clients = 32
    requests_per_client = 4
    serve_args = ""  # more serve.py flags, e.g. "--voices=voices --max_batch=16"
    seed = 1337
    # -----------------------------------------------------------------------------
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
    # -----------------------------------------------------------------------------
    if mode not in ("sample", "train", "serve"):
        fail(f"mode must be 'sample', 'train' or 'serve', not {mode!r}")
    if mode == "serve" and not ckpt:
        fail("--mode=serve needs --ckpt: the model to serve (a training run's out_dir, a checkpoint or an exported "
             "folder)")
    if nanogpt and not os.path.isfile(os.path.join(nanogpt, "model.py")):
        fail(f"--nanogpt={nanogpt} has no model.py: give a nanoGPT checkout (git clone "
             "https://github.com/karpathy/nanoGPT)")
    try:
        check_device(device, dtype)
        sampling = Sampling.from_settings(globals())
        quantize = Quantization.from_settings(globals()).quantize
        shape = GPTConfig(**{f.name: globals()[f.name] for f in fields(GPTConfig)})
    except ValueError as e:
        fail(str(e))
    if mode == "serve" and (compile or quantize):
        fail("--mode=serve times serve.py as it runs: --compile and --quantize are not serve.py settings")
    limits = {"prompt_len": (prompt_len >= 2, ">= 2"), "new_tokens": (new_tokens >= 2, ">= 2"),
              "runs": (runs >= 1, ">= 1"), "warmup": (warmup >= 0, ">= 0"),
              "batch_size": (batch_size >= 0, ">= 0 (0 = the mode's default)"),
              "threads": (threads >= 0, ">= 0 (0 = torch's default)"),
              "bandwidth_mb": (bandwidth_mb >= 0, ">= 0 (0 = the device's default)"),
              "clients": (clients >= 1, ">= 1"), "requests_per_client": (requests_per_client >= 1, ">= 1")}
    for name, (ok, allowed) in limits.items():
        if not ok:
            fail(f"--{name}={globals()[name]!r} is out of range: use {allowed}")
    if threads:
        torch.set_num_threads(threads)
    if mode == "serve":  # serve.py loads the model, in its own process: nothing is built here
        try:
            report = serve_report(ckpt, serve_args, sampling, device, dtype, threads, clients, requests_per_client,
                                  runs, warmup)
        except (RuntimeError, OSError) as e:
            fail(f"--mode=serve: {e}")
        print(json.dumps(report))
        sys.exit(0)
    cuda = device.startswith("cuda")
    ptdtype = DTYPES[dtype]
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    batch_size = batch_size or (8 if mode == "sample" else 16 if cuda else 1)

    torch.manual_seed(seed)
    if ckpt:
        try:
            model, _ = load_model(ckpt, device)
        except CheckpointError as e:
            fail(str(e))
    else:
        model = GPT(shape).to(device)
    cfg = model.config
    if mode == "sample" and prompt_len + new_tokens > cfg.block_size:
        fail(f"prompt_len ({prompt_len}) + new_tokens ({new_tokens}) exceeds block_size {cfg.block_size}")

    n_params = sum(p.numel() for p in model.parameters())
    name = device_name(device)
    report = {"mode": mode, "device": name, "dtype": dtype, "compile": compile, "threads": torch.get_num_threads(),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_1min": os.getloadavg()[0],
              "params": n_params, "params_non_embedding": model.get_num_params(),
              "config": asdict(cfg)}
    print(f"{mode}: {n_params / 1e6:.1f}M parameters ({model.get_num_params() / 1e6:.1f}M without embeddings), "
          f"{dtype} on {name}, compile {'on' if compile else 'off'}, load average {report['load_1min']:.2f}")

    if mode == "sample":
        model = model.to(ptdtype).eval()  # gpt-fast: weights in the compute dtype, the cache too
        probe = bandwidth_probe(device, bandwidth_mb or (1024 if cuda else 256), sync)
        step = compile_decode_step(device) if compile else decode_and_sample  # on CUDA, a CUDA graph
        how = "compiled" if compile else "eager"
        # the rows timed side by side at batch 1: this dtype eager (and compiled), each quantisation, the peer
        models = {"": model}
        for q in sorted(({quantize} | (set(MODES) if compare else set())) - {""}):
            models[q] = quantize_model(copy.deepcopy(model), q)
        entries = {f"{quantize or dtype} {how}": (models[quantize], step)}
        if compare:
            entries = {f"{dtype} eager": (model, decode_and_sample), f"{dtype} {how}": (model, step),
                       **{f"{q} {how}": (models[q], step) for q in MODES}}
        def dirt(m, s):  # a bench_sample runner, and the bytes its step moves
            return (lambda prompt, pos, valid, generator: sample_run(m, s, sampling, prompt, pos, valid, new_tokens,
                                                                     generator, sync),
                    lambda b, context: decode_bytes(m, b, context, ptdtype.itemsize))

        runner, nbytes = {}, {}
        for name, (m, s) in entries.items():
            runner[name], nbytes[name] = dirt(m, s)
        peer = hf_peer(model, sampling, new_tokens, device, ptdtype, sync) if compare else None
        if isinstance(peer, tuple):
            runner["hf generate"], nbytes["hf generate"] = peer
        if compile:
            print("compiling the decode steps... (the warmup run)")
        main = next(iter(entries)) if not compare else f"{quantize or dtype} {how}"
        with torch.no_grad():
            rows = bench_sample(runner, list(models.values()), 1, prompt_len, new_tokens, runs, warmup, probe, device,
                                seed)
            if batch_size > 1:
                row_n = bench_sample({main: runner[main]}, [entries[main][0]], batch_size, prompt_len, new_tokens,
                                     runs, warmup, probe, device, seed)[main]
        kernels = {k: statistics.median(gbps) for k, gbps in probe().items()}  # one more reading, after the last run
        # the roofline's bandwidth: the fastest matrix-vector product, what a decode step's weights are read by
        best = max((k for k in kernels if k.startswith("gemv")), key=kernels.get)
        bandwidth = kernels[best]
        rows = {k: roofline(r, nbytes[k], prompt_len, new_tokens, bandwidth) for k, r in rows.items()}
        row_n = roofline(row_n, nbytes[main], prompt_len, new_tokens, bandwidth) if batch_size > 1 else rows[main]
        print(f"memory bandwidth {bandwidth:.1f} GB/s, the {best} kernel's, the fastest matrix-vector product "
              "(medians, probed between runs: " +
              ", ".join(f"{k} {v:.1f}" for k, v in kernels.items()) + ")")
        print(f"prompt {prompt_len} tokens, {new_tokens} new tokens per run, medians of {runs} interleaved runs")
        print(f"{'':16s}  batch  prefill ms  ttfa ms  step ms  tokens/s     rtf  MB/step  roofline ms  of roofline")
        for r in [*rows.values()] + ([row_n] if batch_size > 1 else []):
            print(f"{r['name']:>16s}  {r['batch_size']:5d}  {r['prefill_ms']:10.1f}  {r['ttfa_ms']:7.1f}  "
                  f"{r['step_ms']:7.2f}  {r['tokens_per_s']:8.1f}  {r['rtf']:6.2f}  {r['bytes_per_step'] / 1e6:7.1f}  "
                  f"{r['roofline_ms']:11.2f}  {100 * r['roofline_fraction']:10.0f}%")
        if isinstance(peer, tuple):
            hf = rows["hf generate"]
            print(f"{main} is {rows[main]['tokens_per_s'] / hf['tokens_per_s']:.2f}x the tokens/s of hf generate "
                  f"(transformers' LlamaForCausalLM at these dims, a plain {VOCAB_SIZE}-way head, same sampling)")
        elif compare:
            print(f"no peer row: {peer}")
        report.update(prompt_len=prompt_len, new_tokens=new_tokens, runs=runs, bandwidth_GBps=bandwidth,
                      bandwidth_kernel=best, bandwidth_by_kernel_GBps=kernels, quantize=quantize,
                      batch_sizes=sorted({1, batch_size}), **rows[main], batch_n=row_n, rows=rows)
    else:
        peak_source = "given"
        if not peak_flops and cuda:
            peak_flops = gpu_peak_flops(device)
            peak_source = "table (dense bf16)" if peak_flops else "unknown GPU: pass --peak_flops"
        elif not peak_flops:
            peak_flops = matmul_flops(device, ptdtype, sync)
            peak_source = f"measured: the best 1024^3 {dtype} matmul on this CPU"
        peers = {}
        if nanogpt:
            peers["nanogpt"] = nanogpt_step(nanogpt, cfg, batch_size, nanogpt_vocab, compile, ptdtype, device)
        r = bench_train(model, batch_size, cfg.block_size, min(prompt_len, cfg.block_size // 4), runs, warmup,
                        compile, ptdtype, device, sync, peak_flops, peers)
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"batch {batch_size} x {cfg.block_size} tokens, medians of {runs} steps"
              + (" (interleaved)" if peers else ""))
        print(f"step {r['step_ms']:.0f} ms, {r['tokens_per_s']:,.0f} tokens/s, MFU {mfu} "
              f"(peak {peak_flops / 1e12:.3f} TFLOP/s, {peak_source}), peak memory {r['peak_memory_MB']:,.0f} MB")
        for name, p in r["peers"].items():
            ratio = r["tokens_per_s"] / p["tokens_per_s"]
            print(f"{name} (vocab {nanogpt_vocab}, same trunk dims): step {p['step_ms']:.0f} ms, "
                  f"{p['tokens_per_s']:,.0f} tokens/s; Dirt is {ratio:.2f}x its tokens/s")
        report.update(runs=runs, peak_flops_source=peak_source, **r)
    print(json.dumps(report))
