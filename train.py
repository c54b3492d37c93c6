"""
Train Dirt: text bytes -> Stable Codec tokens. nanoGPT's train.py, shaped for speech.

One process (CPU or one GPU):
    python prepare.py --dataset=synthetic
    python train.py config/train_synthetic.py
Override any setting below from the command line:
    python train.py config/train_synthetic.py --max_iters=100 --batch_size=16
Resume the run in out_dir exactly where it stopped (same data order, same loss curve):
    python train.py config/train_synthetic.py --init_from=resume
Fine-tune a trained model (a checkpoint, an out_dir or an exported folder: its weights and shape, a fresh optimizer
and schedule; the new checkpoint names its parent), optionally with its first blocks frozen:
    python train.py config/train_synthetic.py --init_from=out-synthetic --out_dir=out-ft --max_iters=50
Rows of exactly block_size tokens packed with whole utterances, each attending only to itself (batch_size then
counts rows), and activations recomputed in the backward pass (a bigger batch or model in the same memory):
    python train.py config/train_synthetic.py --packing=True --activation_checkpointing=True
DDP on 4 GPUs of one node (gradient_accumulation_steps is the GLOBAL count, split across processes, so the global
batch stays the same whatever the GPU count):
    torchrun --standalone --nproc_per_node=4 train.py config/train_small.py    # on a GPU
Two nodes (run on each, --node_rank=1 on the second; the master's address and port 29500 must be reachable):
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=node0 train.py config/train_small.py  # on a GPU
DDP on CPU (gloo), e.g. to test the machinery (gradient_accumulation_steps is rounded up to a multiple of the
process count, with a note):
    torchrun --standalone --nproc_per_node=2 train.py config/train_synthetic.py --device=cpu
Every setting below, with its default and comment: python train.py --help
"""

import json
import math
import os
import queue
import threading
import time
from contextlib import nullcontext
from dataclasses import fields

import numpy as np
import torch
from torch.distributed import destroy_process_group
from torch.nn.parallel import DistributedDataParallel as DDP

from codec import CKPT_PATH, CONFIG_PATH, SAMPLE_RATE
from common import (DTYPES, check_device, default_device, default_dtype, fail, gpu_peak_flops, init_distributed,
                    load_exactly)
from data import (CheckpointError, Shards, get_batch, get_packed_batch, length_sorted_rows, load_checkpoint,
                  model_config, read_model, save_checkpoint)
from model import GPT, PAD, GPTConfig
from optim import OPTIMIZERS, configure_optimizers

# -----------------------------------------------------------------------------
# default config values: a ~120M model for real speech on one GPU (see config/ for recipes)
# I/O
out_dir = "out"
eval_interval = 1000
log_interval = 10
eval_iters = 50
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # else only when val loss improves
init_from = "scratch"  # 'scratch', 'resume' (out_dir's run), or a model to fine-tune: checkpoint, out_dir or export
freeze_layers = 0  # fine-tuning: keep the embeddings and the first N blocks as the parent has them; 0 = train all
# wandb logging (optional; pip install wandb)
wandb_log = False
wandb_project = "dirt"
wandb_run_name = "run"
# a sample spoken at every evaluation: the first val utterance's text. Synthetic corpus: what its recogniser hears;
# real speech: a .wav and a spectrogram PNG in <out_dir>/samples/ (and to wandb), through the codec below if present
log_samples = True
codec_config = CONFIG_PATH
codec_ckpt = CKPT_PATH
# data
dataset = "synthetic"
data_dir = ""  # default: data/<dataset>
gradient_accumulation_steps = 8  # global micro-steps per optimizer step, split across DDP processes
batch_size = 16  # utterances per micro-step per process (with packing: rows of block_size tokens)
packing = False  # rows of block_size tokens filled with whole utterances, each on its own (see get_packed_batch)
text_dropout = 0.1  # fraction of training utterances without their text: the unconditional model for guidance
# model: every field of model.GPTConfig is a setting here, with its default (utterances longer than block_size are
# skipped); model.py says what each does
globals().update({f.name: f.default for f in fields(GPTConfig)})
# optimizer: 'adamw', or 'muon' (Muon for the blocks' matrices, AdamW for the rest; see optim.py)
optimizer = "adamw"
learning_rate = 6e-4
max_iters = 100000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0 disables
# learning rate schedule: linear warmup, then cosine decay to min_lr
decay_lr = True
warmup_iters = 2000
lr_decay_iters = 100000
min_lr = 6e-5
# system
device = default_device()
dtype = default_dtype()
compile = True  # torch.compile the model
activation_checkpointing = False  # recompute each block in backward: less activation memory, one more forward
backend = ""  # DDP backend; '' = nccl on CUDA, gloo on CPU
peak_flops = 0.0  # device peak FLOP/s for MFU; 0 = look up the GPU by name (unknown devices show no MFU)
seed = 1337
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
config = _settings()  # noqa: F821  what the run used (a setting as configurator.py defines it), for checkpoints, logs
# -----------------------------------------------------------------------------


# every setting is checked here, before any work: a mistake costs one line, not a run
model_args = {f.name: globals()[f.name] for f in fields(GPTConfig)}
checkpoint = None  # the model the run starts from: out_dir's own (resume) or a parent's (fine-tuning)
if init_from not in ("scratch", "resume") and not os.path.exists(init_from):
    fail(f"--init_from={init_from}: use 'scratch', 'resume', or a model to fine-tune (a checkpoint file, an out_dir or "
         "an exported folder); there is nothing at that path")
if init_from != "scratch":
    ckpt_from = os.path.join(out_dir, "ckpt.pt") if init_from == "resume" else init_from
    try:
        checkpoint = (load_checkpoint if init_from == "resume" else read_model)(ckpt_from)
        model_config(checkpoint["model_args"], ckpt_from)  # every setting known, of its type and in its range
    except CheckpointError as e:
        fail(str(e))
    if init_from == "resume" and "optimizer" not in checkpoint:
        fail(f"{ckpt_from} has no optimizer state to resume with; fine-tune from it instead "
             f"(--init_from={ckpt_from} and a new --out_dir)")
    # it keeps its shape: a model setting a config file or flag did not set is the checkpoint's (one older than a
    # setting was trained with its default); one that was set must agree. Dropout may change.
    saved = {f.name: checkpoint["model_args"].get(f.name, f.default) for f in fields(GPTConfig)}
    for k in saved:
        if k in _overridden and k != "dropout" and saved[k] != model_args[k]:  # noqa: F821 (configurator.py's)
            fail(f"--{k}={model_args[k]!r} differs from {saved[k]!r} in {ckpt_from}; a model keeps its shape when it "
                 f"{'resumes' if init_from == 'resume' else 'is fine-tuned'}: drop the setting, or train from scratch")
        if k != "dropout":
            model_args[k] = config[k] = globals()[k] = saved[k]
    if init_from == "resume" and "freeze_layers" not in _overridden:  # noqa: F821  frozen as they were
        freeze_layers = config["freeze_layers"] = checkpoint.get("config", {}).get("freeze_layers", 0)
        if type(freeze_layers) is not int:
            fail(f"{ckpt_from} has freeze_layers={freeze_layers!r} in its config, not a number of layers")
try:
    GPTConfig(**model_args)
    check_device(device, dtype)
except ValueError as e:
    fail(str(e))
limits = {  # setting: (within its range, what the range is)
    "batch_size": (batch_size >= 1, ">= 1"),
    "gradient_accumulation_steps": (gradient_accumulation_steps >= 1, ">= 1"),
    "max_iters": (max_iters >= 0, ">= 0"),
    "eval_interval": (eval_interval >= 1, ">= 1"),
    "eval_iters": (eval_iters >= 1, ">= 1"),
    "log_interval": (log_interval >= 1, ">= 1"),
    "learning_rate": (learning_rate > 0, "> 0"),
    "min_lr": (0 <= min_lr <= learning_rate, "from 0 to learning_rate"),
    "warmup_iters": (warmup_iters >= 0, ">= 0"),
    # below warmup_iters the cosine never runs: the rate would fall from learning_rate to min_lr once warm-up ends
    "lr_decay_iters": (lr_decay_iters >= warmup_iters or not decay_lr,
                       f">= warmup_iters ({warmup_iters}), usually max_iters; or --decay_lr=False for a constant rate"),
    "weight_decay": (weight_decay >= 0, ">= 0"),
    "beta1": (0 <= beta1 < 1, "in [0, 1)"),
    "beta2": (0 <= beta2 < 1, "in [0, 1)"),
    "grad_clip": (grad_clip >= 0, ">= 0 (0 = off)"),
    "text_dropout": (0 <= text_dropout < 1, "in [0, 1)"),
    "optimizer": (optimizer in OPTIMIZERS, " or ".join(OPTIMIZERS)),
    "freeze_layers": (0 <= freeze_layers <= n_layer and (not freeze_layers or init_from != "scratch"),
                      f"0 to n_layer ({n_layer}), with --init_from=<a model> (it keeps the parent's layers)"),
    "peak_flops": (peak_flops >= 0, ">= 0 (0 = look the GPU up)"),
}
for name, (ok, allowed) in limits.items():
    if not ok:
        fail(f"--{name}={globals()[name]!r} is out of range: use {allowed}")
if not out_dir.strip():
    fail("--out_dir is empty: give a folder for the checkpoint and log (e.g. out)")
if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    fail(f"--out_dir={out_dir} is a file; give a folder for the checkpoint and log")

# distributed setup: torchrun sets RANK / LOCAL_RANK / WORLD_SIZE
ddp, ddp_rank, ddp_local_rank, ddp_world_size, device = init_distributed(device, backend)
master_process = ddp_rank == 0
if ddp and gradient_accumulation_steps % ddp_world_size:  # each process runs an equal share of the micro-steps
    rounded = -(-gradient_accumulation_steps // ddp_world_size) * ddp_world_size
    if master_process:
        print(f"note: gradient_accumulation_steps {gradient_accumulation_steps} -> {rounded}, a multiple of the "
              f"{ddp_world_size} processes")
    gradient_accumulation_steps = rounded
gradient_accumulation_steps //= ddp_world_size
device_type = "cuda" if device.startswith("cuda") else "cpu"

torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
ptdtype = DTYPES[dtype]
autocast = nullcontext() if device_type == "cpu" else torch.autocast(device_type=device_type, dtype=ptdtype)

# data
data_dir = data_dir or os.path.join("data", dataset)
try:
    train_data, val_data = Shards(data_dir, "train"), Shards(data_dir, "val")
except (FileNotFoundError, ValueError) as e:
    fail(f"{e}")
splits = {}
for split, shards in (("train", train_data), ("val", val_data)):
    rows = length_sorted_rows(shards, block_size)
    if len(rows) == 0:
        fail(f"no {split} utterance of {data_dir} fits block_size={block_size}; raise block_size")
    if master_process and len(rows) < len(shards):
        print(f"{split}: skipping {len(shards) - len(rows)} of {len(shards)} utterances longer than block_size")
    splits[split] = (shards, rows)
if master_process:
    print(f"each iteration: {gradient_accumulation_steps * ddp_world_size * batch_size} "
          f"{f'rows of {block_size} tokens' if packing else 'utterances'} ({gradient_accumulation_steps} micro-steps "
          f"x {ddp_world_size} processes x {batch_size})")


def batch(split, step, micro_step, rank=ddp_rank):
    """
    The batch is a pure function of (seed, step, micro-step, rank): resuming replays the same data order.
    step=None gives the fixed evaluation batches, length-bucketed even when training packs: runs with and without
    packing are measured on the same batches. Returns CPU tensors x, y, doc (None unless packed) and anchor (see
    data.get_batch), pinned on CUDA.
    """
    shards, rows = splits[split]
    stream = ["train", "val"].index(split) + (2 if step is None else 0)
    rng = np.random.default_rng([seed, stream, step or 0, micro_step, rank])
    if packing and step is not None:
        x, y, doc, anchor = get_packed_batch(shards, rows, block_size, batch_size, rng, text_dropout)
    else:
        (x, y, anchor), doc = get_batch(shards, rows, batch_size, rng, text_dropout if step is not None else 0.0), None
    out = [None if a is None else torch.from_numpy(a) for a in (x, y, doc, anchor)]
    if device_type == "cuda":  # page-locked: the copy to the GPU can then run while the GPU works (to_device)
        out = [None if t is None else t.pin_memory() for t in out]
    return out


def to_device(tensors):
    return [None if t is None else t.to(device, non_blocking=True) for t in tensors]


def prefetch(first_iter, ahead=2):
    """
    The training batches of iterations first_iter.. in order, made by a background thread up to `ahead` batches
    before the loop asks, so that reading and packing run while the model trains. They are the same pure batch()
    calls the loop would make, so the data order (and exact resume) are unchanged. An error in the thread is raised
    in the loop; the thread is a daemon, so a run that ends or dies never waits for it.
    """
    ready = queue.Queue(maxsize=ahead)

    def produce():
        try:
            for it in range(first_iter, max_iters):
                for micro_step in range(gradient_accumulation_steps):
                    ready.put(batch("train", it, micro_step))
        except Exception as e:
            ready.put(e)

    def consume():
        while True:
            item = ready.get()
            if isinstance(item, Exception):
                raise item
            yield to_device(item)

    threading.Thread(target=produce, name="prefetch", daemon=True).start()  # now, not at the first next()
    return consume()


if master_process:  # how much of each row is padding
    sample = [batch("train", 10**6 + k, 0)[0] for k in range(20)]
    padded = sum(int((x == PAD).sum()) for x in sample) / sum(x.numel() for x in sample)
    print(f"padding: {100 * padded:.1f}% of the positions in a batch ({'packed' if packing else 'length-bucketed'})")

# model
iter_num, best_val_loss, lineage = 0, 1e9, None  # lineage: the model fine-tuned from, and its own, for checkpoints
ckpt_path = os.path.join(out_dir, "ckpt.pt")
if init_from == "resume":
    iter_num, lineage = checkpoint["iter_num"], checkpoint.get("parent")
    best_val_loss = 1e9 if checkpoint.get("best_val_loss") is None else checkpoint["best_val_loss"]
    if master_process:
        print(f"resuming from {ckpt_path} at iteration {iter_num}")
elif checkpoint is not None:  # fine-tuning: the parent's weights, a fresh optimizer, iteration 0 of this schedule
    lineage = {"path": os.path.abspath(init_from), "iter_num": checkpoint["iter_num"],
               "val_loss": checkpoint.get("best_val_loss"), "parent": checkpoint.get("parent")}
    if master_process:
        print(f"fine-tuning {init_from} (iteration {checkpoint['iter_num']}, val loss {lineage['val_loss']})"
              + (f", its embeddings and first {freeze_layers} blocks frozen" if freeze_layers else ""))
torch.manual_seed(seed)
gptconf = GPTConfig(**model_args)
model = GPT(gptconf)
model.activation_checkpointing = activation_checkpointing
if checkpoint is not None:
    problems = load_exactly(model, checkpoint["model"])
    if problems:
        fail(f"{ckpt_from} does not match its own model settings: {problems}")
if freeze_layers:  # no gradients, so no optimizer state either: the frozen part stays exactly the parent's
    for module in (model.wte, model.coarse_embed, model.fine_embed, *model.blocks[:freeze_layers]):
        module.requires_grad_(False)
model.to(device)
if master_process:
    print(f"model: {model.get_num_params() / 1e6:.2f}M parameters (without embedding)")
scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16")
optimizers = configure_optimizers(model, weight_decay, learning_rate, (beta1, beta2), device_type, optimizer)
if init_from == "resume":
    states = checkpoint["optimizer"]
    states = states if isinstance(states, list) else [states]  # a checkpoint from before optimizer lists
    if len(states) != len(optimizers):
        used = checkpoint.get("config", {}).get("optimizer", "adamw")
        fail(f"{ckpt_path} was trained with --optimizer={used}; resume with that (not {optimizer})")
    try:
        for opt, state in zip(optimizers, states):
            opt.load_state_dict(state)
    except Exception as e:  # torch's errors for a state of another shape or layout have no common type
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        fail(f"{ckpt_path}: its optimizer state does not fit this model ({reason}); train anew")
checkpoint = None  # free memory

raw_model = model
if compile:
    if master_process:
        print("compiling the model... (takes a minute)")
    model = torch.compile(model)
if ddp:
    # the only buffers are the RoPE tables, the same on every rank: nothing to broadcast
    model = DDP(model, device_ids=[ddp_local_rank] if device_type == "cuda" else None, broadcast_buffers=False)

if not peak_flops and device_type == "cuda":  # dense bf16 peaks, by GPU name
    peak_flops = gpu_peak_flops(device)


@torch.no_grad()
def estimate_loss():
    """Mean loss over eval_iters fixed batches per split (the same batches every time, so curves compare)."""
    out = {}
    net = model.module if ddp else model  # only rank 0 evaluates: no DDP collectives here
    net.eval()
    for split in ("train", "val"):
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            x, y, _, anchor = to_device(batch(split, None, k))
            with autocast:
                loss = net(x, y, anchor=anchor)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    net.train()
    return out


def get_lr(it):
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def save(it):
    save_checkpoint(ckpt_path, {"model": raw_model.state_dict(),
                                "optimizer": [opt.state_dict() for opt in optimizers],
                                "model_args": model_args, "iter_num": it, "best_val_loss": best_val_loss,
                                "config": config, "parent": lineage})


if wandb_log and master_process:
    try:
        import wandb
    except ImportError:
        fail("wandb_log=True needs wandb: pip install wandb")
    wandb.init(project=wandb_project, name=wandb_run_name, config=config)

codec = None  # real speech: the codec that makes the samples' audio, loaded (and checked) before training starts
if master_process and log_samples and val_data.meta.get("dataset") != "synthetic":
    from codec import Codec, CodecCheckpointError, CodecUnavailable

    try:
        codec = Codec(codec_config, codec_ckpt or None, device)
    except CodecCheckpointError as e:  # a file that is there and wrong is a mistake to fix, not to train past
        fail(str(e))
    except CodecUnavailable as e:
        print(f"samples: token ids only, no audio: {e}")


def log_sample(it):
    """Speak the first val text with the model as it is now, and keep what it says where a person can look."""
    from generate import Sampling
    from speak import synthesize

    text = val_data[0][0]
    raw_model.eval()
    # sample.py's default sampling, a 10 s chunk at most; its own RNG: training's is untouched
    tokens = synthesize(raw_model, [text], Sampling(max_seconds=10.0), seed=seed, strict=False)[0]
    raw_model.train()
    if val_data.meta.get("dataset") == "synthetic":
        from synthetic import SyntheticSpeech

        print(f"sample at {it}: {text.decode()!r} -> heard {SyntheticSpeech().recognise(tokens)[0]!r}")
        return
    os.makedirs(os.path.join(out_dir, "samples"), exist_ok=True)
    np.save(os.path.join(out_dir, "samples", f"{it:07d}.npy"), tokens)
    if codec is None:
        return
    import soundfile as sf

    wav = codec.decode([tokens])[0]
    path = os.path.join(out_dir, "samples", f"{it:07d}")
    sf.write(path + ".wav", wav, SAMPLE_RATE)
    try:
        from speech_metrics import plot_spectrogram

        figure = plot_spectrogram(wav, SAMPLE_RATE, path + ".png", f"step {it}: {text.decode()[:60]}")
    except Exception as e:  # matplotlib missing or the like: the .wav is the sample that matters
        print(f"samples: no spectrogram ({type(e).__name__}: {e})")
        figure = None
    if wandb_log:
        wandb.log({"iter": it, "sample/audio": wandb.Audio(wav, sample_rate=SAMPLE_RATE, caption=text.decode()[:100]),
                   **({"sample/spectrogram": wandb.Image(path + ".png")} if figure is not None else {})})


log_path = os.path.join(out_dir, "log.jsonl")  # one JSON line per logged iteration, for plots and tests
if master_process:  # only now, every check passed: a run that fails one writes nothing
    os.makedirs(out_dir, exist_ok=True)
    if init_from == "scratch" and os.path.exists(ckpt_path):  # as nanoGPT: a new run replaces it, said once
        print(f"note: {out_dir} holds an earlier run; this one starts from scratch and replaces its ckpt.pt and log "
              "(--init_from=resume continues it)")
    if init_from == "scratch" and os.path.exists(log_path):
        os.remove(log_path)

# training loop
train_batches = None if eval_only else prefetch(iter_num)
t0 = time.time()
local_iter_num = 0
while True:
    lr = get_lr(iter_num)
    for group in (group for opt in optimizers for group in opt.param_groups):
        group["lr"] = lr

    if master_process and (eval_only or (iter_num % eval_interval == 0 and iter_num > 0)):
        losses = estimate_loss()
        print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        with open(log_path, "a") as f:
            f.write(json.dumps({"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"]}) + "\n")
        if wandb_log:
            wandb.log({"iter": iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr})
        if log_samples and iter_num > 0:
            log_sample(iter_num)
        if losses["val"] < best_val_loss or always_save_checkpoint:
            best_val_loss = min(best_val_loss, losses["val"])
            if iter_num > 0:
                print(f"saving checkpoint to {out_dir}")
                save(iter_num)
    if eval_only or iter_num >= max_iters:
        break

    torch.manual_seed(seed + 100003 * iter_num + ddp_rank)  # dropout is replayed exactly on resume too
    tokens = torch.zeros((), dtype=torch.long)
    for micro_step in range(gradient_accumulation_steps):
        x, y, doc, anchor = next(train_batches)
        tokens += x.numel()
        if ddp:  # sync gradients only on the last micro-step
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        with autocast:
            loss = model(x, y, doc=doc, anchor=anchor)
            loss = loss / gradient_accumulation_steps
        scaler.scale(loss).backward()
    if grad_clip != 0.0:
        for opt in optimizers:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)

    iter_num += 1
    local_iter_num += 1
    t1 = time.time()
    dt, t0 = t1 - t0, t1
    if iter_num % log_interval == 0 and master_process:
        lossf = loss.item() * gradient_accumulation_steps  # the last micro-step's loss
        tok_s = tokens.item() * ddp_world_size / dt
        mfu = ""
        if peak_flops and local_iter_num > 2:
            mfu = f", mfu {100 * raw_model.estimate_mfu(tok_s * dt, x.shape[1], dt, peak_flops):.1f}%"
        print(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {dt * 1000:.0f}ms/iter, {tok_s:,.0f} tok/s{mfu}")
        with open(log_path, "a") as f:
            f.write(json.dumps({"iter": iter_num, "loss": lossf, "lr": lr, "ms": dt * 1000, "tok_s": tok_s}) + "\n")
        if wandb_log:
            wandb.log({"iter": iter_num, "train/loss_step": lossf, "lr": lr, "tok_s": tok_s})

if master_process and not eval_only:
    losses = estimate_loss() if iter_num % eval_interval else None
    if losses:
        print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        with open(log_path, "a") as f:
            f.write(json.dumps({"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"]}) + "\n")
        best_val_loss = min(best_val_loss, losses["val"])
    save(iter_num)
    print(f"saved {ckpt_path} at iteration {iter_num}")
if ddp:
    destroy_process_group()
