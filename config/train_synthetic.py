# The CPU default: a small model on the built-in synthetic corpus (python prepare.py --dataset=synthetic).
# A toy task that checks the machinery end to end in a few minutes on 2 CPU cores; it is not speech.
out_dir = "out-synthetic"
dataset = "synthetic"
device = "cpu"
dtype = "float32"
compile = False

block_size = 256  # fits every one-sentence utterance (and all but a handful with --max_sentences=2)
batch_size = 32  # with Muon bigger batches pay: val loss 0.633 / 0.627 / 0.620 / 0.629 at 16 / 24 / 32 / 48 (docs/results.md)
gradient_accumulation_steps = 1
text_dropout = 0.0  # > 0 (e.g. 0.1) trains the unconditional model classifier-free guidance needs

n_layer = 4
n_head = 8
n_embd = 128
qk_norm = True
align_audio_pos = True  # audio frame k at RoPE position 0.57 k, near the byte it speaks (1.55-2.0 frames per byte)
audio_pos_rate = 0.57

optimizer = "muon"  # val loss 0.616 vs 0.646 for AdamW after 2400 steps (docs/results.md)
learning_rate = 1e-2
max_iters = 1400
warmup_iters = 30
lr_decay_iters = 1400
min_lr = 1e-3
weight_decay = 0.1
eval_interval = 350
eval_iters = 10
log_interval = 20
