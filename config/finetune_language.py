# Fine-tune a pretrained config/train_small.py model (out-small: English, LibriTTS-R) on a new language. The input is
# UTF-8 bytes, so any script is already in the vocabulary: no new tokens, no resized embedding table, the parent's
# checkpoint loads as it is. Sized for a ~100 h multi-speaker corpus (~45,000 clips, 1 pass = ~350 steps of 128).
# Not run in this repo (it needs a GPU, the codec, a corpus and a pretrained parent).
#   python prepare.py --dataset=newlang --input=newlang/manifest.jsonl --max_seconds=20   # needs the codec weights
#   python train.py config/finetune_language.py                                          # on a GPU
#   python eval.py --mode=model --out_dir=out-newlang --test_list=t.jsonl --lang=bn --asr_model=small  # downloads
# (--lang: the language of the texts, for the normaliser and Whisper; a multilingual Whisper, not the default tiny.en.)
out_dir = "out-newlang"
init_from = "out-small"  # the parent's out_dir (or its ckpt.pt, or an exported folder): its weights, a fresh
# optimizer, iteration 0 of this file's schedule
dataset = "newlang"  # reads data/newlang/, as prepared above

# The model: every shape setting must be the parent's (config/train_small.py's), or its weights do not fit.
# block_size too (positions past it were never trained). A non-Latin script takes 2-3 bytes per character, so a
# clip's text is 2-3x longer than in English: prepare with --max_seconds=20, and read train.py's "skipping N of M
# utterances longer than block_size" line before a long run; the same goes for audio_pos_rate and align_audio_pos,
# which stay the parent's even where the new script's bytes per second differ from English's.
block_size = 1024
n_layer = 12
n_head = 12
n_kv_head = 4
n_embd = 768
qk_norm = True
dropout = 0.0  # ~100 h seen ~10 times: the parent's setting; 0.1 if val loss turns up before the end
text_dropout = 0.1  # the parent's (train.py's default): keeps the unconditional model classifier-free guidance needs
# 0: train everything. The embedding table must learn: the bytes of a new script (UTF-8 lead bytes 0xC2-0xF4 and
# continuation bytes 0x80-0xBF) were rare or absent in English text, so their rows are near where they started; and
# the first blocks, which read the text, are the part that has the most to relearn.
freeze_layers = 0

batch_size = 32
gradient_accumulation_steps = 4  # the parent's 128 clips per step: the corpus is big enough for its batch
learning_rate = 5e-4  # 0.5x pretraining's 1e-3 (AdamW, as the parent): a new text-to-sound map is more to learn than
# a new voice (finetune_speaker.py: 0.2x), but a full rate would wash out what transfers (the codec-token model)
max_iters = 4000  # ~10 passes over ~45,000 clips (4000 x 128 = 512k clips); scale it with the corpus, ~10 passes
warmup_iters = 200  # 5% of the run: the optimizer starts empty, and AdamW's first steps are its largest
lr_decay_iters = 4000  # cosine to min_lr over the whole run
min_lr = 5e-5  # learning_rate / 10, as in pretraining
weight_decay = 0.1
grad_clip = 1.0

eval_interval = 250  # 16 evaluations: the curve shows when val loss stops falling
eval_iters = 20  # 640 draws from the ~450 val clips (1% of the corpus)
log_interval = 20
compile = True
