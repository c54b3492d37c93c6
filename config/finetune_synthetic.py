# Fine-tune a main-job model (config/train_synthetic.py) on a speaker it has never heard, on a CPU in about two
# minutes: the recipe of docs/results.md, "Fine-tuning on an unseen speaker". The parent hears speakers
# 0-2 only; the new corpus is 2,000 utterances (1 h) of speaker 3, whose every audio id is one the parent never read.
#   python prepare.py --dataset=synthetic --speakers=0,1,2 --out_dir=data/syn012
#   python train.py config/train_synthetic.py --data_dir=data/syn012 --out_dir=out-pre012      # the parent
#   python prepare.py --dataset=synthetic --speakers=3 --n_train=2000 --n_val=200 --seed=7 --out_dir=data/syn3
#   python train.py config/finetune_synthetic.py                                               # the fine-tune
#   python eval.py --out_dir=out-ft3 --data_dir=data/syn3      # the new speaker: CER, speaker_match
#   python eval.py --out_dir=out-ft3 --data_dir=data/syn012    # what it forgot of the old ones
# The scratch baseline of the results entry is this file with --init_from=scratch --out_dir=out-scratch3.
out_dir = "out-ft3"
init_from = "out-pre012"  # the parent: a checkpoint file, an out_dir or an exported folder; weights only (a fresh
# optimizer and iteration 0: this file's schedule)
dataset = "synthetic"
data_dir = "data/syn3"
device = "cpu"
dtype = "float32"
compile = False

# The model: every shape setting must be the parent's (train_synthetic.py's): the weights only fit their own shape.
# block_size too: positions past the parent's were never trained, and the new corpus's utterances are as long.
block_size = 256
n_layer = 4
n_head = 8
n_embd = 128
qk_norm = True
align_audio_pos = True
audio_pos_rate = 0.57
dropout = 0.0  # the parent's; 2,000 utterances seen ~5 times each, and val loss still falls at the last step
text_dropout = 0.0  # as the parent (no guidance)
freeze_layers = 0  # train everything: speaker 3's audio ids are new input rows of the embedding table, which a frozen
# table leaves as they were initialised (freeze_layers=2: val loss 0.698 vs 0.616, CER 0.028 vs 0.015, and the old
# voices are lost all the same)

batch_size = 32  # the parent's batch: Muon's updates are tuned to it
gradient_accumulation_steps = 1
optimizer = "muon"  # the parent's optimizer, so its learning rate scale carries over
learning_rate = 1e-2  # pretraining's rate, not the usual lower one: speaker 3's 2,048 audio ids are rows of the
# embedding table the parent never trained, and they need large steps (3e-3: val loss 0.645, CER 0.024; 1e-3: 1.33,
# 0.46). A lower rate forgets less of the old voices' loss but learns the new one worse. A new voice in real speech
# reuses ids the parent has read: there the rate is lower (finetune_speaker.py)
max_iters = 300  # ~5 passes over the 2,000 utterances (300 x 32 = 9,600): val loss gains less each 100 steps (0.75,
# 0.65, 0.62) and train loss is already far below it (0.38): more passes would learn these utterances, not the voice
warmup_iters = 10  # the optimizer starts empty (momentum at zero): a few steps of ramp, not the parent's 30
lr_decay_iters = 300  # cosine to min_lr over the whole run, as in pretraining
min_lr = 1e-3  # learning_rate / 10, as in pretraining
weight_decay = 0.1
eval_interval = 100  # 3 evaluations in 300 steps: enough to see whether val loss turns up (overfitting), and 300 is
# a multiple, so a resumed --eval_only=True run evaluates
eval_iters = 10  # 320 val utterances drawn from the 200: the same fixed batches every evaluation
log_interval = 20
