"""
Evaluate a trained Dirt model by sampling held-out utterances and scoring what comes out.

    python eval.py --out_dir=out-synthetic
    python eval.py --out_dir=out-synthetic --n=200 --temperature=0.8

Synthetic corpus: the corpus's exact recogniser turns each output back into text and per-frame speakers, giving
    cer                   character error rate against the reference text (jiwer), the toy counterpart of ASR WER
    speaker_consistency   fraction of outputs whose frames all decode to one speaker
    frames_per_byte       output duration per text byte (the corpus speaks 1.55 to 2.0)
    tokens_per_s, rtf     sampling speed: generated tokens per second, seconds of audio per second of compute
The LAST line printed is one JSON object with these figures, for scripts and CI.
"""

import json
import os
import sys
import time

import jiwer
import numpy as np
import torch

from data import CheckpointError, Shards, SyntheticSpeech
from sample import TOKENS_PER_SECOND, fail, load_model, synthesize

# -----------------------------------------------------------------------------
out_dir = "out-synthetic"
ckpt = ""  # default: <out_dir>/ckpt.pt
data_dir = ""  # default: the dataset the model was trained on
n = 100  # held-out utterances to sample
batch_size = 32
max_seconds = 30.0
temperature = 0.8
top_k = 0
top_p = 0.0
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
# -----------------------------------------------------------------------------

try:
    model, checkpoint = load_model(ckpt or os.path.join(out_dir, "ckpt.pt"), device)
except CheckpointError as e:
    fail(str(e))
trained_on = checkpoint.get("config", {})
data_dir = data_dir or trained_on.get("data_dir") or os.path.join("data", trained_on.get("dataset", "synthetic"))
try:
    val = Shards(data_dir, "val")
except (FileNotFoundError, ValueError) as e:
    fail(str(e))
if val.meta.get("dataset") != "synthetic":
    fail(f"{data_dir} is not the synthetic corpus; real-speech evaluation needs the codec and an ASR model")
if n < 1:
    fail("--n must be at least 1")

rows = [i for i in range(len(val)) if val.stream_lengths()[i] < model.config.block_size][:n]
references = [val[i] for i in rows]
t0 = time.time()
outputs = synthesize(model, [text for text, _, _ in references], max_seconds, temperature, top_k, top_p, seed,
                     batch_size)
dt = time.time() - t0

recogniser = SyntheticSpeech()
heard, consistent, frames_per_byte = [], [], []
for (text, _, _), tokens in zip(references, outputs):
    words, speakers = recogniser.recognise(tokens)
    heard.append(words)
    consistent.append(len(speakers) > 0 and bool((speakers >= 0).all()) and len(set(speakers.tolist())) == 1)
    frames_per_byte.append(len(tokens) / len(text))
texts = [text.decode("utf-8") for text, _, _ in references]
n_tokens = sum(len(o) for o in outputs)
for ref, hyp in list(zip(texts, heard))[:5]:
    print(f"ref: {ref}\nhyp: {hyp}\n")
result = {
    "n": len(rows),
    "cer": round(jiwer.cer(texts, [h or " " for h in heard]), 4),  # jiwer rejects empty hypotheses
    "speaker_consistency": round(float(np.mean(consistent)), 4),
    "frames_per_byte": round(float(np.mean(frames_per_byte)), 3),
    "tokens_per_s": round(n_tokens / dt, 1),
    "rtf": round(n_tokens / TOKENS_PER_SECOND / dt, 2),
    "temperature": temperature,
    "iter_num": checkpoint["iter_num"],
}
print(json.dumps(result))
