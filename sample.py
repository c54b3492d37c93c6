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
import sys
import time

import numpy as np
import torch

from data import CheckpointError, SyntheticSpeech, load_checkpoint
from model import GPT, GPTConfig, make_prompt, text_to_tokens

TOKENS_PER_SECOND = 25


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


@torch.no_grad()
def synthesize(model, texts, max_seconds=30.0, temperature=0.8, top_k=0, top_p=0.0, seed=1337, batch_size=16):
    """
    Speak each text (UTF-8 bytes). Returns a list of int64 arrays of Stable Codec ids, one per text, in order.
    Texts are sampled batch_size at a time; each row stops at its own end-of-audio.
    """
    block = model.config.block_size
    device = model.wte.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    prompts = [make_prompt(text_to_tokens(t)) for t in texts]
    for t, p in zip(texts, prompts):
        if len(p) >= block:
            raise ValueError(f"text of {len(t)} bytes does not fit this model's block_size {block}; shorten it")
    outputs = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(prompts[i]))  # similar lengths batch with less padding
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        longest = max(len(prompts[i]) for i in rows)
        max_new = min(int(max_seconds * TOKENS_PER_SECOND), block - longest)
        audio = model.generate([prompts[i] for i in rows], max_new, temperature=temperature,
                               top_k=top_k or None, top_p=top_p or None, generator=generator)
        for i, a in zip(rows, audio):
            outputs[i] = a.cpu().numpy()
    return outputs


if __name__ == "__main__":
    # -----------------------------------------------------------------------------
    out_dir = "out"  # the training run to sample from
    ckpt = ""  # default: <out_dir>/ckpt.pt
    text = ""
    text_file = ""
    output_dir = "samples"
    max_seconds = 30.0
    temperature = 0.8
    top_k = 0  # 0 = off
    top_p = 0.0  # 0 = off
    seed = 1337
    batch_size = 16
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # -----------------------------------------------------------------------------
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
    # -----------------------------------------------------------------------------
    if temperature < 0 or top_k < 0 or not 0 <= top_p <= 1 or max_seconds <= 0 or batch_size < 1:
        fail("need temperature >= 0, top_k >= 0, 0 <= top_p <= 1, max_seconds > 0, batch_size >= 1")
    try:
        texts = read_texts(text, text_file)
        model, checkpoint = load_model(ckpt or os.path.join(out_dir, "ckpt.pt"), device)
        t0 = time.time()
        outputs = synthesize(model, texts, max_seconds, temperature, top_k, top_p, seed, batch_size)
    except (ValueError, CheckpointError) as e:
        fail(str(e))
    dt = time.time() - t0
    n_tokens = sum(len(o) for o in outputs)
    os.makedirs(output_dir, exist_ok=True)
    synthetic = checkpoint.get("config", {}).get("dataset") == "synthetic"
    recogniser = SyntheticSpeech() if synthetic else None
    for i, (t, tokens) in enumerate(zip(texts, outputs)):
        path = os.path.join(output_dir, f"{i:03d}.npy")
        np.save(path, tokens.astype(np.int64))
        line = f"{path}: {len(tokens)} tokens ({len(tokens) / TOKENS_PER_SECOND:.2f} s)"
        if recogniser:
            heard, speakers = recogniser.recognise(tokens)
            voices = sorted(set(speakers.tolist()) - {-1})
            line += f", synthetic recogniser hears {heard!r} from speaker {voices}"
        print(line)
    print(f"{n_tokens} tokens in {dt:.2f}s: {n_tokens / dt:.1f} tokens/s, "
          f"{n_tokens / TOKENS_PER_SECOND / dt:.2f}x real time")
