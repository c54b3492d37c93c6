# The synthetic corpus with up to two sentences per utterance (40% have two: prepare.py's --multi_share): the model
# hears speech continue mid-text, which voice prompts and long texts (each chunk prompted by the previous one) need,
# with continuation anchors at the sentence border (see model.py). 60,000 utterances, 32 x 6000 steps (~3 epochs):
# less data or fewer steps left long texts at a higher CER than short ones and now and then in a new voice; about an
# hour on a small CPU (figures and timings: docs/results.md).
#   python prepare.py --dataset=synthetic --max_sentences=2 --n_train=60000 --out_dir=data/synthetic2
#   python train.py config/train_synthetic_prompts.py
#   python eval.py --out_dir=out-synthetic2 --prompted=True      # speaker_acc: outputs in the prompt's voice
#   python eval.py --out_dir=out-synthetic2 --long_chars=2000    # long_cer: 2,000-character texts, chunked
out_dir = "out-synthetic2"
dataset = "synthetic"
data_dir = "data/synthetic2"
device = "cpu"
dtype = "float32"
compile = False

block_size = 320  # a sentence and the one before it (the chunk and its prompt) fit up to ~45 bytes each
batch_size = 32
gradient_accumulation_steps = 1
text_dropout = 0.0  # 0.1 (for guidance) leaves prompted CER ~5x higher; guidance wins back about half (docs/results.md)

n_layer = 4
n_head = 8
n_embd = 128
qk_norm = True
align_audio_pos = True
anchor_continuations = True
mark_borders = True  # a learned vector at each anchor: continuations said wrong 5% vs 8-9% without (docs/results.md)
audio_pos_rate = 0.57

optimizer = "muon"
learning_rate = 1e-2
max_iters = 6000  # 3000 on 20,000 utterances: val 0.594; 6000 on those overfits (docs/results.md)
warmup_iters = 30
lr_decay_iters = 6000
min_lr = 1e-3
weight_decay = 0.1
eval_interval = 1000
eval_iters = 10
log_interval = 20
