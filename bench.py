"""
Benchmark Dirt on this machine, with random weights (or a checkpoint's), and say how far each figure is from what
the hardware allows. nanoGPT's bench.py, for a TTS model: what matters is decode speed, not only training speed.

    python bench.py config/train_small.py                        # sampling, batch 1 and batch 8
    python bench.py config/train_small.py --mode=train           # training steps: tokens/s, ms/iter, MFU, memory
    python bench.py config/train_small.py --compile=True         # the decode step compiled (a CUDA graph on a GPU)
    python bench.py config/train_small.py --threads=1            # a small CPU shared with other work (see below)
    python bench.py --ckpt=out-synthetic/ckpt.pt                 # a trained model's shape and weights
    python bench.py --n_layer=2 --n_head=2 --n_embd=64 --block_size=128 --prompt_len=16 --new_tokens=16

A config file is a training recipe: bench takes only the model from it (every model.GPTConfig field, so it times
exactly the model the recipe trains) and ignores its training settings. --key=value flags override any setting
below; python bench.py --help lists them.

--mode=sample (the default) times prefill and decode separately, at batch 1 and at --batch_size:
    prefill_ms      the prompt (prompt_len tokens per row) through the model, filling the KV cache
    ttfa_ms         time to first audio: prefill, then the first step (sample the first token, decode it)
    step_ms         one decode step, decode_and_sample: feed a token per row, sample the next (the factored head,
                    with the sampling settings of generate.Sampling, sample.py's defaults unless given);
                    median of runs. --compile=True makes the whole step one CUDA graph on a GPU
                    (generate.decode_compile_options: the inductor settings that shorten it)
    tokens_per_s    audio tokens per second, all rows together
    rtf             seconds of audio per second of compute, all rows together (25 tokens = 1 s), as eval.py
    roofline        a decode step must read every weight once (only the embedding rows it looks up) and the KV
                    cache up to the current position: bytes_per_step / the MEASURED memory bandwidth of this device
                    (the best of a streaming sum, a copy and a matrix-vector product, each the median of readings
                    taken between the timed runs, under the same load) is the fastest a step can be.
                    roofline_fraction = that time / the measured step time.
--mode=train times full optimizer steps (forward, backward, clip, AdamW) on random token rows of block_size:
    step_ms, tokens_per_s, peak memory (CUDA: max allocated; CPU: the process's max RSS), and MFU from
    GPT.estimate_mfu over a peak FLOP/s looked up by GPU name, or on a CPU MEASURED with a large matmul.
The LAST line printed is one JSON object with every figure; its step figures are batch 1's, and batch_n holds the
same keys for --batch_size.

On a CPU every figure moves with the machine's load (printed, and in the JSON). On a small machine shared with other
processes, OpenMP threads that spin-wait for each other can make a step several times slower: compare --threads=1
with the default, and try OMP_WAIT_POLICY=PASSIVE in the environment.
"""

import json
import os
import resource
import statistics
import time
from dataclasses import asdict, fields

import torch

from codec import TOKENS_PER_SECOND
from common import DTYPES, check_device, default_device, default_dtype, fail, gpu_peak_flops
from data import CheckpointError, load_model
from generate import Sampling, compile_decode_step, decode_and_sample, prefill, sample_audio_token
from model import EOA, GPT, N_AUDIO, SOA, TEXT_OFFSET, GPTConfig
from optim import configure_optimizers


def decode_bytes(model, batch_size, context_len, dtype_bytes):
    """
    Bytes one decode step (sample_audio_token + decode_one_token) cannot avoid moving: every weight once, except the
    embedding tables (wte, coarse_embed, fine_embed), of which only the rows it looks up: per sequence, one row of
    each for the input token and a coarse_embed row for the fine head; and every layer's keys and values for
    context_len positions per sequence. Activations, RoPE rows and the new key/value writes (KBs) are left out.
    """
    cfg = model.config
    tables = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    weights = sum(p.numel() for p in model.parameters()) - sum(t.numel() for t in tables)
    rows = batch_size * (len(tables) + 1) * cfg.n_embd
    kv = 2 * cfg.n_layer * batch_size * context_len * cfg.n_kv_head * (cfg.n_embd // cfg.n_head)
    return (weights + rows + kv) * dtype_bytes


def timed(fn, sync, reps):
    """Seconds of each of reps calls, after one untimed call."""
    fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def bandwidth_probe(device, megabytes, sync, reps=3):
    """
    A function that, each time it is called, adds reps GB/s readings of three streaming kernels on a buffer far
    bigger than the caches to the dict it returns. Called between timed generations, its readings see the same load
    as the steps do (on a shared machine both move with it); the device's bandwidth is the best kernel's median.
    """
    x = torch.rand(megabytes * 2**20 // 4, device=device)  # fp32
    y = torch.empty_like(x)
    mat = x.view(-1, 4096)
    vec = torch.rand(1, mat.shape[0], device=device)
    kernels = {"sum": (lambda: x.sum(), x.nbytes), "copy": (lambda: y.copy_(x), 2 * x.nbytes),  # read + write
               "matvec": (lambda: vec @ mat, mat.nbytes)}
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


def device_name(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    name = "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


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


def bench_sample(model, decode_step, sampling, batch, prompt_len, new_tokens, runs, warmup, probe, device, sync,
                 seed):
    """Medians of runs generations at one batch size (after warmup ones), bandwidth probed before each."""
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    total = prompt_len + new_tokens
    text = torch.randint(TEXT_OFFSET, TEXT_OFFSET + 256, (batch, prompt_len - 1), device=device)
    prompt = torch.cat([text, torch.full((batch, 1), SOA, device=device)], dim=1)
    pos = torch.arange(total, device=device).repeat(batch, 1)  # [B, total], contiguous as in generate
    valid = torch.ones(batch, total, dtype=torch.bool, device=device)  # no padding: every row is prompt_len long
    model.setup_cache(batch, total)  # once, as gpt-fast: a compiled step keeps seeing the same buffers
    try:
        for _ in range(warmup):
            sample_run(model, decode_step, sampling, prompt, pos, valid, new_tokens, generator, sync)
        results = []
        for _ in range(runs):
            probe()
            results.append(sample_run(model, decode_step, sampling, prompt, pos, valid, new_tokens, generator, sync))
    finally:
        model.clear_cache()
    prefill_s, _, step_s = (statistics.median(r[i] for r in results) for i in range(3))
    return {
        "batch_size": batch,
        "prefill_ms": 1e3 * prefill_s,
        "prefill_tokens_per_s": batch * prompt_len / prefill_s,
        "ttfa_ms": 1e3 * statistics.median(r[0] + r[1] for r in results),
        "step_ms": 1e3 * step_s,
        "tokens_per_s": batch / step_s,
        "rtf": batch / step_s / TOKENS_PER_SECOND,
        "decode_gflops": 2 * model.get_num_params() * batch / step_s / 1e9,  # 2 per weight and row, attention aside
    }


def roofline(row, model, prompt_len, new_tokens, bandwidth, dtype_bytes):
    """Add the memory-bandwidth roofline of a bench_sample row: the fastest its decode step could be."""
    context = prompt_len + (new_tokens + 1) / 2  # step t attends to prompt_len + t + 1 positions: the mean
    nbytes = decode_bytes(model, row["batch_size"], context, dtype_bytes)
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


def bench_train(model, batch, seq_len, prompt_len, steps, warmup, compile_, ptdtype, device, sync, peak_flops):
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    model.train()
    optimizers = configure_optimizers(model, 0.1, 1e-4, (0.9, 0.95), device_type)
    step_model = torch.compile(model) if compile_ else model
    autocast = torch.autocast(device_type, dtype=ptdtype, enabled=ptdtype != torch.float32)
    x, y = train_batch(batch, seq_len, prompt_len, device)

    def step():
        with autocast:
            loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(warmup - 1):  # compiles, allocates the optimizer state (timed() makes one more untimed call)
        step()
    dt = statistics.median(timed(step, sync, steps))
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
    }


# -----------------------------------------------------------------------------


if __name__ == "__main__":
    # -----------------------------------------------------------------------------
    mode = "sample"  # 'sample' or 'train'
    ckpt = ""  # a checkpoint to take the shape and weights from; default: random weights of the shape below
    # the model: every field of model.GPTConfig; a config file (a training recipe) sets these and nothing else
    globals().update({f.name: f.default for f in fields(GPTConfig)})
    _file_keys = [f.name for f in fields(GPTConfig)]
    # how to sample (generate.Sampling, as sample.py); the decode step is timed with these
    globals().update(Sampling.defaults())
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
    threads = 0  # CPU threads for torch; 0 = torch's default (one per core)
    peak_flops = 0.0  # train mode: the device's peak FLOP/s; 0 = by GPU name, or measured on a CPU
    seed = 1337
    # -----------------------------------------------------------------------------
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
    # -----------------------------------------------------------------------------
    if mode not in ("sample", "train"):
        fail(f"mode must be 'sample' or 'train', not {mode!r}")
    try:
        check_device(device, dtype)
        sampling = Sampling.from_settings(globals())
        shape = GPTConfig(**{f.name: globals()[f.name] for f in fields(GPTConfig)})
    except ValueError as e:
        fail(str(e))
    if threads:
        torch.set_num_threads(threads)
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
    if prompt_len < 2 or new_tokens < 2 or runs < 1 or warmup < 0 or batch_size < 1:
        fail("need prompt_len >= 2, new_tokens >= 2, runs >= 1, warmup >= 0, batch_size >= 1")
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
        decode_step = decode_and_sample
        if compile:
            print("compiling the decode step... (the warmup run)")
            decode_step = compile_decode_step(device)  # one graph per batch size; on CUDA, a CUDA graph
        with torch.no_grad():
            rows = [bench_sample(model, decode_step, sampling, b, prompt_len, new_tokens, runs, warmup, probe, device,
                                 sync, seed) for b in sorted({1, batch_size})]
        kernels = {k: statistics.median(gbps) for k, gbps in probe().items()}  # one more reading, after the last run
        bandwidth = max(kernels.values())
        rows = [roofline(r, model, prompt_len, new_tokens, bandwidth, ptdtype.itemsize) for r in rows]
        print(f"memory bandwidth {bandwidth:.1f} GB/s (medians, probed between runs: " +
              ", ".join(f"{k} {v:.1f}" for k, v in kernels.items()) + ")")
        print(f"prompt {prompt_len} tokens, {new_tokens} new tokens per run, medians of {runs} runs")
        print("batch  prefill ms  ttfa ms  step ms  tokens/s     rtf  MB/step  roofline ms  of roofline")
        for r in rows:
            print(f"{r['batch_size']:5d}  {r['prefill_ms']:10.1f}  {r['ttfa_ms']:7.1f}  {r['step_ms']:7.2f}  "
                  f"{r['tokens_per_s']:8.1f}  {r['rtf']:6.2f}  {r['bytes_per_step'] / 1e6:7.1f}  "
                  f"{r['roofline_ms']:11.2f}  {100 * r['roofline_fraction']:10.0f}%")
        report.update(prompt_len=prompt_len, new_tokens=new_tokens, runs=runs, bandwidth_GBps=bandwidth,
                      bandwidth_by_kernel_GBps=kernels, batch_sizes=[r["batch_size"] for r in rows], **rows[0],
                      batch_n=rows[-1])
    else:
        peak_source = "given"
        if not peak_flops and cuda:
            peak_flops = gpu_peak_flops(device)
            peak_source = "table (dense bf16)" if peak_flops else "unknown GPU: pass --peak_flops"
        elif not peak_flops:
            peak_flops = matmul_flops(device, ptdtype, sync)
            peak_source = f"measured: the best 1024^3 {dtype} matmul on this CPU"
        r = bench_train(model, batch_size, cfg.block_size, min(prompt_len, cfg.block_size // 4), runs, warmup,
                        compile, ptdtype, device, sync, peak_flops)
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"batch {batch_size} x {cfg.block_size} tokens, medians of {runs} steps")
        print(f"step {r['step_ms']:.0f} ms, {r['tokens_per_s']:,.0f} tokens/s, MFU {mfu} "
              f"(peak {peak_flops / 1e12:.3f} TFLOP/s, {peak_source}), peak memory {r['peak_memory_MB']:,.0f} MB")
        report.update(runs=runs, peak_flops_source=peak_source, **r)
    print(json.dumps(report))
