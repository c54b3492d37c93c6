# Fine-tune a pretrained config/train_small.py model (out-small, many LibriTTS-R speakers) on one new voice: a small
# single-speaker corpus of LJSpeech's size (13,100 clips, ~24 h, ~1 epoch = 400 steps of 32). One GPU, ~1 h.
# Not run in this repo (it needs a GPU, the codec and a pretrained parent); the synthetic counterpart that was run,
# and the measurements behind the choices below: config/finetune_synthetic.py, docs/results.md ("Fine-tuning").
#   python prepare.py --dataset=ljspeech --input=LJSpeech-1.1                # needs the codec weights
#   python train.py config/finetune_speaker.py                               # on a GPU
#   python eval.py --mode=model --out_dir=out-ljspeech --test_list=lj_test.jsonl   # needs the codec weights
# Forgetting: the same eval.py line with out-small's test list, before (--out_dir=out-small) and after.
out_dir = "out-ljspeech"
init_from = "out-small"  # the parent's out_dir (or its ckpt.pt, or an exported folder): its weights, a fresh
# optimizer, iteration 0 of this file's schedule
dataset = "ljspeech"

# The model: every shape setting must be the parent's (config/train_small.py's), or its weights do not fit.
# block_size too: the parent never trained positions past 1024 (~25 s of speech after ~300 text bytes, which holds
# every LJSpeech clip: they are at most 10 s).
block_size = 1024
n_layer = 12
n_head = 12
n_kv_head = 4
n_embd = 768
qk_norm = True
# 13,100 clips seen ~10 times by 85M block weights: dropout is the cheap guard against learning the clips by heart
# (the parent trained without: a few passes over ~100x more audio). Dropout may differ from the parent's.
dropout = 0.1
text_dropout = 0.1  # the parent's (train.py's default): keeps the unconditional model classifier-free guidance needs
# 0 trains every weight. The new voice speaks with the codec ids the parent has already read (one codebook for every
# speaker), so freezing is possible here, unlike on the synthetic corpus, where the new speaker's ids are all new:
# try 2-4 (the embedding table and the first blocks, which read the text) if val loss turns up before the end.
freeze_layers = 0

batch_size = 32  # a quarter of the parent's 128 utterances: a small corpus gets ~400 updates per pass, not ~100
gradient_accumulation_steps = 1
learning_rate = 2e-4  # 0.2x pretraining's 1e-3 (AdamW, as the parent), for a batch 4x smaller: the voice is new, the
# rest (reading text, the codec's ids) is the parent's to keep, and a pretraining-size rate moves the weights far
# enough to forget it. The synthetic recipe keeps pretraining's rate only because its new speaker's ids are new
# embedding rows (docs/results.md: 0.3x learnt them worse); this one is not measured here
max_iters = 4000  # ~10 passes over ~13,000 train clips (4000 x 32 = 128k clips): enough for one voice, little for
# its whole corpus to be learnt by heart; scale it with the corpus (about 10 passes), not with the parent's 60k
warmup_iters = 100  # 2.5% of the run: the optimizer starts empty, and AdamW's first steps are its largest
lr_decay_iters = 4000  # cosine to min_lr over the whole run
min_lr = 2e-5  # learning_rate / 10, as in pretraining
weight_decay = 0.1
grad_clip = 1.0

eval_interval = 200  # every half pass (20 evaluations): the curve shows when val loss stops falling
eval_iters = 10  # 320 draws from the ~130 val clips (1% of the corpus): all of them, the same batches every time
log_interval = 20
compile = True
