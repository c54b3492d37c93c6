# A single-GPU recipe for real speech: ~115M parameters (85M in the blocks, 36M embedding table), bf16, compiled.
# Not run in this repo's CI (it needs a GPU and a prepared corpus). Steps, from nothing to a .wav: docs/real-speech.md.
#   python prepare.py --dataset=libritts_r --input=/path/to/LibriTTS_R/train-clean-360   (on the GPU: codec.py)
#   python train.py config/train_small.py
# Sizing: block_size 1024 holds ~25 s of audio (25 tokens/s) after ~300 text bytes; longer utterances are skipped.
# One step = 4 x 32 = 128 utterances (~110k tokens); 60k steps is ~6.6B tokens, a few epochs of LibriTTS-R.
# For more GPUs keep gradient_accumulation_steps a multiple of the GPU count: torchrun splits it, the global batch stays.
out_dir = "out-small"
dataset = "libritts_r"

block_size = 1024
batch_size = 32
gradient_accumulation_steps = 4

n_layer = 12
n_head = 12
n_kv_head = 4  # grouped-query attention: a 3x smaller KV cache to read per decode step
n_embd = 768
qk_norm = True
dropout = 0.0

learning_rate = 1e-3
max_iters = 60000
warmup_iters = 1000
lr_decay_iters = 60000
min_lr = 1e-4
weight_decay = 0.1
grad_clip = 1.0

eval_interval = 1000
eval_iters = 50
log_interval = 20
compile = True
