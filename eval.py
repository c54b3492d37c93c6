"""
Evaluate a trained Dirt model, or the speech pipeline around it, by scoring what comes out.

    python eval.py --out_dir=out-synthetic                            # a model trained on the synthetic corpus
    python eval.py --out_dir=out-synthetic --n=200 --temperature=0.8
    python eval.py --out_dir=out-synthetic --n=20 --quantize=int8     # int8 weights (quantize.py): CER, logits' drift
    python eval.py --mode=reference                                   # Whisper on 40 real recordings: the ceiling
    python eval.py --mode=reference --test_list=test.jsonl --asr_model=small.en  # downloads: Whisper small.en
    python eval.py --mode=roundtrip --test_list=test.txt   # needs the codec weights: what the codec alone costs
    python eval.py --mode=model --out_dir=out-ljspeech --test_list=t.jsonl --audio_dir=heard  # needs the codec weights

Modes (--mode; the default is synthetic for a model trained on the synthetic corpus, else model):
    synthetic  sample held-out utterances of the synthetic corpus; its exact recogniser turns each output back into
               text and per-frame speakers, giving
                   cer                   character error rate against the reference text (jiwer), the toy ASR WER
                   speaker_consistency   fraction of outputs whose frames all decode to one speaker
                   speaker_match         fraction whose frames are mostly the reference utterance's speaker: the
                                         model has no speaker input, so ~1/k on a corpus of k speakers; on a
                                         one-speaker corpus (prepare.py --speakers=3) it says whether a fine-tuned
                                         model took that voice
                   frames_per_byte       output duration per text byte (the corpus speaks 1.55 to 2.0)
                   tokens_per_s, rtf     generated tokens per second, seconds of audio per second of compute
    reference  score the ground-truth recordings themselves: the best any model can do with these metrics
    roundtrip  encode + decode the recordings through Stable Codec and score that, next to the recordings
    model      speak each line's text with the checkpoint (speak.synthesize -> codec ids -> Stable Codec decoder),
               in the voice of the line's prompt audio when it has one (the model continues that recording)

Real speech is scored by speech_metrics.py (install: requirements-eval.txt), all at 16 kHz:
    wer, cer      Whisper's transcript against the text, both through speech_metrics.normalize_text first
    mos_p808      DNSMOS P.808, 1-5 (studio speech ~3.6, white noise ~2.1); --mos=full adds P.835 ovrl/sig/bak
    speaker_sim   cosine similarity of resemblyzer voice embeddings to the line's prompt audio (same voice ~0.75-0.92,
                  other voices ~0.4-0.7); roundtrip also gives speaker_sim_to_reference, decoded vs its original
A metric whose package or model is missing is reported as "not computed: <reason>" and the run goes on.

--test_list is a text file of `audio_path|transcript` lines, or JSONL with {"audio", "text", optional
"prompt_audio", "prompt_text"} per line (paths relative to the list). Without one, the Debian Asterisk prompts
(one professional speaker; apt-get install asterisk-core-sounds-en-g722 asterisk-core-sounds-en) are used, the
first of --n + 1 serving as every line's prompt audio. Model mode needs only the text; the audio is optional there.

Prints a summary table and the worst transcripts, writes one CSV row per utterance (--csv; default
<out_dir>/eval_<mode>.csv in model mode, ./eval_<mode>.csv in the other real-speech modes; the synthetic mode writes
one only when --csv is given) and, as the LAST line, one JSON object for
scripts and CI (also saved as <out_dir>/eval_<mode>.json beside a model, for export.py's model card): mode, n,
wer, cer, the other metrics that were computed, and not_computed: {metric: reason}.
(The synthetic mode's JSON has the keys listed above, plus n, the sampling settings, iter_num and data_dir.)
"""

import copy
import json
import os
import sys
import time
from csv import DictWriter
from dataclasses import asdict

import jiwer
import numpy as np
import torch

import speech_metrics as sm
from codec import CKPT_PATH, CONFIG_PATH, HOP, SAMPLE_RATE, TOKENS_PER_SECOND, Codec, CodecUnavailable, load_audio
from common import atomic_write, check_device, default_device, fail, skip_line, skip_summary
from data import CheckpointError, Shards, load_model
from generate import Sampling
from speak import SEED, SpeechMissing, check_seeds, synthesize
from model import make_prompt, text_to_tokens
from quantize import Quantization, logits_difference, quantize_model
from synthetic import SyntheticSpeech

# -----------------------------------------------------------------------------
mode = ""  # synthetic | reference | roundtrip | model; "" = synthetic for a synthetic-corpus model, else model
out_dir = "out-synthetic"
ckpt = ""  # a checkpoint file, in place of out_dir
data_dir = ""  # synthetic mode: default the dataset the model was trained on
# every held-out synthetic utterance (500; a sample of 100 leaves CER +-0.01 of noise), 40 Asterisk prompts, or
# every line of --test_list
n = 0  # utterances to score; 0 = the mode's default
batch_size = 32
globals().update(Sampling.defaults())  # temperature, top_k, top_p, cfg_scale, best_of, max_seconds: as sample.py
globals().update(Quantization.defaults())  # quantize: int8 / int4 weights, as sample.py
prompted = False  # synthetic: continue another utterance of the same speaker (a voice prompt); adds speaker_acc
long_chars = 0  # synthetic: also score texts of up to this many characters (chunked by sample.py); 0 = off
long_n = 8  # how many such texts
continued = False  # synthetic: second sentences after their true first one, and alone (see evaluate_synthetic)
seed = SEED  # text i draws from its own random stream, seeded seed + i
# real speech
test_list = ""  # audio_path|transcript lines or JSONL (see above); "" = the Asterisk prompts
asr_model = ""  # Whisper: a CTranslate2 model folder, or a faster-whisper name (downloads); "" = the offline tiny.en
lang = "en"  # language of the texts: the normaliser's number words and Whisper's language
mos = "p808"  # DNSMOS: p808, full (adds P.835, several times slower) or off
codec_config = CONFIG_PATH
codec_ckpt = CKPT_PATH  # '' = random weights (a test fixture: every step runs)
csv = ""  # per-utterance CSV; default <out_dir>/eval_<mode>.csv (model mode), ./eval_<mode>.csv, none (synthetic)
audio_dir = ""  # also write each scored clip here as a 16 kHz WAV, to listen to
device = default_device()
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configurator.py")).read())
# -----------------------------------------------------------------------------
MODES = ("synthetic", "reference", "roundtrip", "model")
LABELS = {"wer": "WER", "cer": "CER", "mos_p808": "DNSMOS P.808", "mos_ovrl": "DNSMOS P.835 overall",
          "mos_sig": "DNSMOS P.835 signal", "mos_bak": "DNSMOS P.835 background",
          "speaker_sim": "speaker sim to prompt", "speaker_sim_to_reference": "speaker sim to original"}


def evaluate_synthetic(model, checkpoint):
    """
    The synthetic corpus: sample held-out utterances and read them back with the corpus's exact recogniser.
    --prompted: each is spoken as the continuation of another held-out utterance of the same speaker (a voice
    prompt), and speaker_acc counts outputs in the prompt's voice. --long_chars=N: also long_n texts of whole held-out
    sentences, up to N characters each, which sample.py splits into chunks; long_cer, long_speaker_consistency and
    long_one_voice score them.
    --continued: the weak point of long texts, in isolation: the held-out two-sentence utterances' second sentences,
    each spoken after its true first sentence (text and audio, as a voice prompt) and again alone. continued_wrong
    and alone_wrong are the shares said wrong (the recogniser hears other words), continued_cer and alone_cer their
    CER: a model that continues as well as it starts has continued ~ alone.
    """
    global data_dir
    trained_on = checkpoint.get("config", {})
    data_dir = data_dir or trained_on.get("data_dir") or os.path.join("data", trained_on.get("dataset", "synthetic"))
    try:
        val = Shards(data_dir, "val")
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    if val.meta.get("dataset") != "synthetic":
        fail(f"{data_dir} is not the synthetic corpus; for real speech use --mode=model --test_list=... "
             "(needs the codec and an ASR model)")
    if continued and not val.column("border_audio").any():
        fail(f"{data_dir} has no two-sentence utterances; --continued needs prepare.py --max_sentences=2")
    lengths = val.stream_lengths()
    rows = [i for i in range(len(val)) if lengths[i] < model.config.block_size][:n or None]
    references = [val[i] for i in rows]
    voices = None
    if prompted:  # the next held-out utterance of the same speaker that is short enough to leave room
        by_speaker = {}
        for i in range(len(val)):
            if lengths[i] <= model.config.block_size // 3:
                by_speaker.setdefault(val[i][2], []).append(i)
        voices = []
        for i in rows:
            others = [j for j in by_speaker.get(val[i][2], []) if j != i]
            voices.append(val[others[i % len(others)]][:2] if others else None)
    t0 = time.time()
    # an output cut short is scored as what it is (strict=False); a long text that loses a chunk is an error below
    outputs = synthesize(model, [text for text, _, _ in references], sampling, seed, batch_size, voices, strict=False)
    dt = time.time() - t0
    texts = [text.decode("utf-8") for text, _, _ in references]
    scores = score_synthetic(texts, outputs)
    heard = scores.pop("heard")
    for ref, hyp in list(zip(texts, heard))[:5]:
        print(f"ref: {ref}\nhyp: {hyp}\n")
    n_tokens = sum(len(o) for o in outputs)
    match = [scores_speaker(o) == ref[2] for o, ref in zip(outputs, references)]
    if csv:  # one row per utterance, to find the ones said wrong
        write_csv(csv, [{"val_index": i, "text": t, "heard": h, "cer": jiwer.cer(t, h or " "), "speaker": ref[2],
                         "speaker_heard": scores_speaker(o), "frames": len(o)}
                        for i, t, h, o, ref in zip(rows, texts, heard, outputs, references)])
        print(f"per-utterance scores: {csv}")
    scores["speaker_match"] = round(float(np.mean(match)), 4)
    result = {"n": len(rows), **scores, "tokens_per_s": round(n_tokens / dt, 1),
              "rtf": round(n_tokens / TOKENS_PER_SECOND / dt, 2)}
    if prompted:
        wanted = [v is not None for v in voices]
        right = [w and scores_speaker(o) == ref[2] for w, o, ref in zip(wanted, outputs, references)]
        result["speaker_acc"] = round(sum(right) / max(1, sum(wanted)), 4)
    if long_chars:
        result.update(long_score(model, texts))
    if continued:
        result.update(continued_score(model, val))
    if quantize:  # how far the int8 / int4 weights move the logits: the scored texts' true audio, teacher-forced
        streams = [make_prompt(text_to_tokens(text), torch.from_numpy(audio)) for text, audio, _ in references]
        result.update(quantize=quantize, logits_mad=round(logits_difference(full_model, model, streams), 5))
    result.update(**asdict(sampling), iter_num=checkpoint["iter_num"], data_dir=data_dir)  # which corpus's val
    return result


def long_score(model, texts):
    """eval.py --long_chars (see evaluate_synthetic): long_n texts of the held-out sentences, spoken in chunks."""
    sentences = " ".join(texts).replace("? ", "?\n").replace(". ", ".\n").replace("! ", "!\n").split("\n")
    longs, current = [], ""  # whole sentences, as the short texts are: a cut one has no end to speak
    for sentence in sentences * (1 + long_n * long_chars // max(1, len(" ".join(texts)))):
        if current and len(current) + 1 + len(sentence) > long_chars:
            longs.append(current)
            current = ""
            if len(longs) == long_n:
                break
        current = f"{current} {sentence}".strip()
    try:
        outputs = synthesize(model, [t.encode() for t in longs], sampling, seed, batch_size)
    except SpeechMissing as e:  # a long text's chunk lost: no score can say that as clearly
        fail(f"--long_chars: {e}")
    scores = score_synthetic(longs, outputs)
    return dict(long_n=len(longs), long_chars=long_chars, long_cer=scores["cer"],
                long_speaker_consistency=scores["speaker_consistency"],
                long_one_voice=round(float(np.mean([one_voice(o) for o in outputs])), 4))


def continued_score(model, val):
    """eval.py --continued (see evaluate_synthetic): second sentences after their first, and alone."""
    firsts, seconds = [], []
    for i in range(len(val)):
        border_text, border_audio = (int(val.column(c)[i]) for c in ("border_text", "border_audio"))
        if border_audio:  # the corpus joins sentences with a space: the second starts after it
            text, audio, _ = val[i]
            firsts.append((text[:border_text], audio[:border_audio]))
            seconds.append(text[border_text + 1:])
    firsts, seconds = firsts[:n or None], seconds[:n or None]
    texts = [t.decode("utf-8") for t in seconds]
    result = {"continued_n": len(seconds)}
    for name, voices in (("continued", firsts), ("alone", None)):
        outputs = synthesize(model, seconds, sampling, seed, batch_size, voices, strict=False)
        heard = [h.strip() for h in score_synthetic(texts, outputs)["heard"]]  # a continuation speaks its space too
        result[f"{name}_wrong"] = round(float(np.mean([h != t for h, t in zip(heard, texts)])), 4)
        result[f"{name}_cer"] = round(jiwer.cer(texts, [h or " " for h in heard]), 4)
    return result


def one_voice(tokens, window=TOKENS_PER_SECOND):
    """
    Whether one speaker holds across a long output: every second of it (the last, partial one included) is mostly
    that speaker's frames. speaker_consistency's every-frame test fails a 2,000-character text on one stray frame in
    ~3,600; this one fails it when the voice changes, which is what chunking can break.
    """
    return len({scores_speaker(tokens[i:i + window]) for i in range(0, len(tokens), window)}) == 1


def scores_speaker(tokens):
    """The speaker most of an output's frames come from (-1 for none)."""
    speakers = SyntheticSpeech().decode_frames(tokens)[2]
    speakers = speakers[speakers >= 0]
    return int(np.bincount(speakers).argmax()) if len(speakers) else -1


def score_synthetic(texts, outputs):
    recogniser = SyntheticSpeech()
    heard, consistent, frames_per_byte = [], [], []
    for text, tokens in zip(texts, outputs):
        words, speakers = recogniser.recognise(tokens)
        heard.append(words)
        consistent.append(len(speakers) > 0 and bool((speakers >= 0).all()) and len(set(speakers.tolist())) == 1)
        frames_per_byte.append(len(tokens) / len(text.encode()))
    return {"cer": round(jiwer.cer(texts, [h or " " for h in heard]), 4),  # jiwer rejects empty hypotheses
            "speaker_consistency": round(float(np.mean(consistent)), 4),
            "frames_per_byte": round(float(np.mean(frames_per_byte)), 3), "heard": heard}

# -----------------------------------------------------------------------------
# real speech: loading


def read_audio(path):
    """A test list's audio file; a file that is missing or unreadable raises ValueError((reason, detail)): the list
    skips that line and says so, as prepare.py does."""
    if not os.path.exists(path):
        raise ValueError(("missing audio", path))
    try:
        return load_audio(path, format="g722" if path.endswith(".g722") else None)
    except ValueError as e:
        raise ValueError(("unreadable", str(e))) from None


def load_items():
    """The utterances to score: [{'name', 'text', 'wav' (or None), 'prompt_wav' (or None), 'prompt_text'}]."""
    if not test_list:
        try:
            prompts = sm.load_asterisk_prompts((n or 40) + 1)
        except sm.MetricUnavailable as e:
            fail(f"no --test_list given, and the default test set is missing: {e}")
        (voice_name, voice, voice_text), prompts = prompts[0], prompts[1:]
        print(f"{len(prompts)} Asterisk prompts; every line's prompt audio is {voice_name}.g722: {voice_text!r}")
        return [dict(name=name, text=text, wav=wav, prompt_wav=voice, prompt_text=voice_text)
                for name, wav, text in prompts]
    try:
        lines = sm.read_test_list(test_list, need_audio=mode != "model")
    except ValueError as e:
        fail(str(e))
    lines = lines[:n] if n else lines
    items, skipped, clips = [], [], {}  # clips: one array per file, however many lines share it (a prompt)
    for line in lines:
        try:
            for path in (line["audio"], line["prompt_audio"]):
                if path and path not in clips:
                    clips[path] = read_audio(path)
        except ValueError as e:
            reason, detail = e.args[0]
            print(skip_line(line["name"], reason, detail))
            skipped.append(reason)
            continue
        items.append(dict(name=line["name"], text=line["text"], wav=clips.get(line["audio"]),
                          prompt_wav=clips.get(line["prompt_audio"]), prompt_text=line["prompt_text"]))
    if skipped:
        print(f"skipped {len(skipped)} of {len(lines)} lines: {skip_summary(skipped)}")
    if not items:
        fail(f"no line of {test_list} has audio to read ({skip_summary(skipped)}); fix the paths in it")
    return items


def load_transcriber():
    """-> (Transcriber or None, why not). Whisper that was asked for by name or path must load; the default may
    be missing (WER/CER are then not computed)."""
    try:
        return sm.Transcriber(asr_model or None, language=lang or None), None
    except sm.MetricUnavailable as e:
        if asr_model:
            fail(f"--asr_model={asr_model}: {e}")
        return None, str(e)


def load_codec():
    try:
        return Codec(codec_config, codec_ckpt or None, device)
    except CodecUnavailable as e:
        fail(str(e))


def roundtrip(codec, wavs):
    """Encode + decode each clip. Clips of one token length are batched together, as prepare.py does, so no clip
    is padded by its neighbours and its tokens are the ones training would see."""
    out = [None] * len(wavs)
    by_length = {}
    for i, w in enumerate(wavs):
        by_length.setdefault(-(-len(w) // HOP), []).append(i)
    for rows in by_length.values():
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            tokens, lengths = codec.encode([wavs[i] for i in batch], SAMPLE_RATE)
            for i, audio in zip(batch, codec.decode(tokens, lengths)):
                out[i] = audio
    return out

# -----------------------------------------------------------------------------
# real speech: scoring and reporting


def score(items, wavs, transcriber, why_no_asr):
    """speech_metrics.reference_eval on these clips, with the items' texts and prompt audio."""
    summary, rows = sm.reference_eval([(it["name"], w, it["text"]) for it, w in zip(items, wavs)], transcriber,
                                      mos={"p808": True, "full": "full"}.get(mos, False), lang=lang,
                                      prompts=[it["prompt_wav"] for it in items])
    if why_no_asr:
        summary["not_computed"].update(wer=why_no_asr, cer=why_no_asr)
    if all(it["prompt_wav"] is None for it in items):
        summary["not_computed"].setdefault("speaker_sim", "no prompt_audio in the test list")
    return summary, rows


def similarity_to(wavs, others, summary, rows):
    """speaker_sim_to_reference: each clip's voice against another clip's (roundtrip: decoded vs original)."""
    try:
        for row, a, b in zip(rows, wavs, others):
            row["speaker_sim_to_reference"] = sm.speaker_similarity(a, b)
        values = [r["speaker_sim_to_reference"] for r in rows if not np.isnan(r["speaker_sim_to_reference"])]
        if values:
            summary["speaker_sim_to_reference"] = float(np.mean(values))
    except sm.MetricUnavailable as e:
        summary["not_computed"]["speaker_sim_to_reference"] = str(e)


def print_report(title, columns, rows):
    """A table of metrics, one column per summary (with a delta column for two), then the worst transcripts."""
    names = list(columns)
    keys = [k for k in LABELS if any(s.get(k) is not None for s in columns.values())]
    print(f"\n{title}\n{'metric':<26}" + "".join(f"{name:>12}" for name in names)
          + (f"{'delta':>12}" if len(names) == 2 else ""))
    for k in keys:
        values = [columns[name].get(k) for name in names]
        line = f"{LABELS[k]:<26}" + "".join(f"{'-' if v is None else f'{v:.3f}':>12}" for v in values)
        if len(values) == 2 and None not in values:
            line += f"{values[1] - values[0]:>+12.3f}"
        print(line)
    for k, why in columns[names[-1]]["not_computed"].items():
        print(f"{LABELS.get(k, k):<26}not computed: {why}")
    scored = sorted((r for r in rows if r.get("wer") is not None), key=lambda r: -r["wer"])[:5]
    if scored:
        print("\nworst transcripts (text / heard):")
    for r in scored:
        print(f"  {r['name']} WER {r['wer']:.2f}\n    {r['text']}\n    {r['hypothesis']}")


def clean(value):
    """JSON- and CSV-ready: floats rounded, NaN (a metric with nothing to measure) as None."""
    if isinstance(value, float):
        return None if np.isnan(value) else round(value, 4)
    return {k: clean(v) for k, v in value.items()} if isinstance(value, dict) else value


def write_csv(path, rows):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))  # every column any row has, in first-seen order
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(clean(r) for r in rows)


def result(summary, **extra):
    keys = ["n", "wer", "cer", *[k for k in LABELS if k not in ("wer", "cer") and k in summary], "audio_seconds"]
    return {"mode": mode, **{k: summary.get(k) for k in keys}, **extra, "not_computed": summary["not_computed"]}

# -----------------------------------------------------------------------------


if mode not in ("",) + MODES:
    fail(f"unknown --mode={mode}; use one of {', '.join(MODES)}")
if n < 0:
    fail("--n must be at least 1 (or 0 for the mode's default)")
if batch_size < 1:
    fail(f"--batch_size={batch_size}: use 1 or more")
if long_chars < 0 or long_n < 1:
    fail(f"--long_chars={long_chars} --long_n={long_n}: use long_chars 0 (off) or more, and long_n 1 or more")
if mos not in ("p808", "full", "off"):
    fail(f"--mos={mos}: use p808, full or off")
try:
    sampling = Sampling.from_settings(globals())
    quantize = Quantization.from_settings(globals()).quantize
    check_device(device)
    check_seeds([seed])  # (and seed + i, text i's, where synthesize is given the texts)
except ValueError as e:
    fail(str(e))

model = checkpoint = None
if mode in ("", "synthetic", "model"):
    try:
        model, checkpoint = load_model(ckpt or out_dir, device)
    except CheckpointError as e:
        fail(str(e))
    full_model, model = model, quantize_model(copy.deepcopy(model), quantize) if quantize else model
    mode = mode or ("synthetic" if checkpoint.get("config", {}).get("dataset", "synthetic") == "synthetic"
                    else "model")
if mode == "synthetic":
    try:
        scores = evaluate_synthetic(model, checkpoint)
    except ValueError as e:  # e.g. text i's seed, --seed + i, past speak.SEEDS
        fail(str(e))
    # beside the model, where export.py's model card finds it: its own val only, not another corpus it was asked
    # about, and its own weights, not a quantised copy of them
    if not ckpt and not quantize and "data_dir" not in _overridden and os.path.isdir(out_dir):  # noqa: F821
        atomic_write(os.path.join(out_dir, "eval_synthetic.json"), lambda f: f.write(json.dumps(scores).encode()))
    print(json.dumps(scores))
    sys.exit(0)

# everything that can fail in one line fails before the slow work starts
transcriber, why_no_asr = load_transcriber()
codec = load_codec() if mode in ("roundtrip", "model") else None
items = load_items()
csv = csv or os.path.join(out_dir if mode == "model" else ".", f"eval_{mode}.csv")
t0 = time.time()
extra = {}

if mode == "reference":
    wavs = [it["wav"] for it in items]
    summary, rows = score(items, wavs, transcriber, why_no_asr)
    print_report(f"reference: {len(rows)} recordings, {summary['audio_seconds']:.0f} s",
                 {"reference": summary}, rows)

elif mode == "roundtrip":
    references = [it["wav"] for it in items]
    wavs = roundtrip(codec, references)
    extra["codec_seconds"] = time.time() - t0
    before, before_rows = score(items, references, transcriber, why_no_asr)
    summary, rows = score(items, wavs, transcriber, why_no_asr)
    similarity_to(wavs, references, summary, rows)
    for row, ref_row in zip(rows, before_rows):  # one CSV row per utterance: the original's scores beside
        row.update({f"reference_{k}": v for k, v in ref_row.items() if k not in ("name", "text", "duration")})
    for k in LABELS:
        if before.get(k) is not None:
            extra[f"reference_{k}"] = before[k]
            if summary.get(k) is not None:
                extra[f"delta_{k}"] = summary[k] - before[k]
    print_report(f"roundtrip through Stable Codec ({codec_ckpt or 'random weights'}): {len(rows)} recordings, "
                 f"{summary['audio_seconds']:.0f} s, encode + decode in {extra['codec_seconds']:.1f} s",
                 {"reference": before, "roundtrip": summary}, rows)

else:  # model
    texts = [it["text"].encode("utf-8") for it in items]
    encoded = {}  # each line's voice prompt as (its transcript, its codec ids); one encode per prompt file
    for it in items:
        if it["prompt_wav"] is not None and id(it["prompt_wav"]) not in encoded:
            if not (it["prompt_text"] or "").strip():
                fail(f"{it['name']}: a voice prompt needs its transcript; add \"prompt_text\" to the test list")
            tokens, lengths = codec.encode([it["prompt_wav"]], SAMPLE_RATE)
            encoded[id(it["prompt_wav"])] = (it["prompt_text"].strip().encode("utf-8"), tokens[0, :lengths[0]].numpy())
    voices = [encoded.get(id(it["prompt_wav"])) for it in items]
    t_sample = time.time()
    try:
        outputs = synthesize(model, texts, sampling, seed, batch_size, voices, strict=False)
    except ValueError as e:
        fail(str(e))
    dt = time.time() - t_sample
    n_tokens = sum(len(o) for o in outputs)
    wavs = []
    for start in range(0, len(outputs), batch_size):
        wavs += codec.decode(list(outputs[start:start + batch_size]))
    summary, rows = score(items, wavs, transcriber, why_no_asr)
    extra.update(tokens_per_s=n_tokens / dt, rtf=n_tokens / TOKENS_PER_SECOND / dt, **asdict(sampling),
                 iter_num=checkpoint["iter_num"])
    print_report(f"model {ckpt or os.path.join(out_dir, 'ckpt.pt')} (iter {checkpoint['iter_num']}): {len(rows)} "
                 f"lines, {summary['audio_seconds']:.0f} s of speech sampled at {extra['rtf']:.2f}x real time",
                 {"model": summary}, rows)

if audio_dir:
    import soundfile
    os.makedirs(audio_dir, exist_ok=True)
    for i, (it, wav) in enumerate(zip(items, wavs)):
        soundfile.write(os.path.join(audio_dir, f"{i:03d}_{it['name']}.wav"), wav, SAMPLE_RATE)
write_csv(csv, rows)
print(f"\nper-utterance scores: {csv}" + (f"; audio: {audio_dir}/" if audio_dir else ""))
scores = clean(result(summary, **extra, eval_seconds=time.time() - t0))
if mode == "model" and not ckpt:  # beside the model, where export.py's model card finds it
    atomic_write(os.path.join(out_dir, "eval_model.json"), lambda f: f.write(json.dumps(scores).encode()))
print(json.dumps(scores))
