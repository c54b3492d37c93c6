# The CPU default: a small model on the built-in synthetic corpus (python prepare.py --dataset=synthetic).
# A toy task that checks the machinery end to end in a few minutes on 2 CPU cores; it is not speech.
out_dir = "out-synthetic"
dataset = "synthetic"
device = "cpu"
dtype = "float32"
compile = False

block_size = 256  # fits every one-sentence utterance (and all but a handful with --max_sentences=2)
batch_size = 32
gradient_accumulation_steps = 1
text_dropout = 0.0  # > 0 (e.g. 0.1) trains the unconditional model classifier-free guidance needs

n_layer = 4
n_head = 4
n_embd = 128
qk_norm = True

learning_rate = 3e-3
max_iters = 1200
warmup_iters = 30
lr_decay_iters = 1200
min_lr = 3e-4
weight_decay = 0.1
eval_interval = 300
eval_iters = 10
log_interval = 20
