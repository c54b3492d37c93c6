"""
The built-in synthetic speech corpus: a toy that checks the machinery end to end, not a model of speech. It is made
from a seed with no download (prepare.py --dataset=synthetic), and its exact recogniser turns any token sequence back
into text and speakers, so eval.py can score a model trained on it by character error rate and speaker consistency.
"""

import numpy as np

from model import N_AUDIO

WORDS = """
the a an and of to in is was he she it you we they that this for on with as at by from but not or have has had
be been are were one two three four five six seven eight nine ten all some any many more most other new old good
great small large long little big high low first last next early late young right left same different own
time year day week night morning evening people man woman child friend family world house home room door window
city town river sea water fire tree garden road street car train book letter story song voice word name question
answer idea money work school market table chair bread milk tea coffee light music picture paper color sound
see saw look find found give gave take took make made come came go went know knew think thought say said tell told
ask asked call called try tried leave left feel felt keep kept begin began walk walked run ran sing sang read write
open close bring brought carry hold speak spoke listen hear heard learn play wait stay watch follow show
quickly slowly softly always never often today tomorrow yesterday here there now then again very quite almost
""".split()


class SyntheticSpeech:
    """
    A toy text-to-speech corpus that checks the machinery, not a model of speech. Its token sequences behave like
    speech tokens where it matters for a TTS model:
    - monotonic in the text: each byte lasts 1 to 3 frames (random per frame, speaker-dependent rates averaging
      1.55 to 2.0 frames per byte, i.e. 12 to 16 characters per second at 25 Hz);
    - a frame's id depends on its byte, on the class of the NEXT byte (coarticulation) and on whether it is the
      byte's onset or a hold, so the model must read ahead in the text and keep time;
    - each speaker changes every id in its own way; ids are spread over the whole 0..46655 range by an affine
      bijection, so neighbouring ids share nothing (the hard case for a model: no structure to lean on);
    - one sentence per utterance, or up to max_sentences (a share multi_share of them), each spoken on its own and
      joined: a voice prompt or the previous chunk of a long text is a finished utterance (its last frame has the
      end-of-text context), so a model that hears finished sentences continue learns what prompts and chunks need;
    - `recognise` inverts it exactly: any token sequence -> (text, speaker per frame), which makes character error
      rate (CER) and speaker consistency the toy counterparts of ASR WER and speaker similarity.
    """

    n_speakers = 4
    n_classes = 4  # class of the next byte: vowel, other letter, space, anything else (incl. end of text)
    n_phases = 2  # onset frame, hold frame
    durations = (1, 2, 3)
    rates = ((0.50, 0.45, 0.05), (0.35, 0.55, 0.10), (0.30, 0.50, 0.20), (0.20, 0.60, 0.20))  # per speaker
    scale, shift = 7919, 12345  # id = (scale * code + shift) mod 46656; scale is coprime with 46656 = 2^6 3^6
    n_codes = 256 * n_classes * n_phases * n_speakers  # 8192 of the 46656 ids are ever said

    def __init__(self, max_sentences=1, multi_share=0.4, speakers=None):
        self.max_sentences, self.multi_share = max_sentences, multi_share
        # who speaks (speaker ids keep their meaning: a held-out speaker is one a model has never heard)
        self.speakers = list(range(self.n_speakers)) if speakers is None else [int(s) for s in speakers]
        if not self.speakers or len(set(self.speakers)) != len(self.speakers) or not all(
                0 <= s < self.n_speakers for s in self.speakers):
            raise ValueError(f"speakers {speakers!r}: give distinct ids from 0 to {self.n_speakers - 1}")
        self.unscale = pow(self.scale, -1, N_AUDIO)
        cls = np.full(257, 3, dtype=np.int64)  # index 256 = end of text
        cls[list(b"aeiouAEIOU")] = 0
        cls[[b for b in range(256) if chr(b).isalpha() and b not in b"aeiouAEIOU" and b < 128]] = 1
        cls[ord(" ")] = 2
        self.byte_class = cls

    def sentence(self, rng):
        words = [WORDS[i] for i in rng.integers(0, len(WORDS), size=int(rng.integers(2, 8)))]
        text = " ".join(words)
        return text[0].upper() + text[1:] + str(rng.choice([".", ".", ".", "?", "!"]))

    def sentences(self, rng):
        """One sentence, or (multi_share of the time) more: a model that has heard two in a row can continue a
        prompt or a chunk."""
        n = (1 if self.max_sentences == 1 or rng.random() < 1 - self.multi_share
             else int(rng.integers(2, self.max_sentences + 1)))
        return [self.sentence(rng) for _ in range(n)]

    def speak(self, text, speaker, rng):
        """text bytes -> codec-like ids, one per 40 ms frame."""
        b = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
        nxt = self.byte_class[np.append(b[1:], 256)]
        dur = rng.choice(self.durations, size=len(b), p=self.rates[speaker])
        byte = np.repeat(b, dur)
        klass = np.repeat(nxt, dur)
        phase = np.ones(len(byte), dtype=np.int64)
        phase[np.cumsum(dur) - dur] = 0
        code = ((byte * self.n_classes + klass) * self.n_phases + phase) * self.n_speakers + speaker
        return (self.scale * code + self.shift) % N_AUDIO

    def utterance(self, rng):
        """-> (text, audio, speaker, (border_text, border_audio): where its last sentence starts; 0, 0 if one)"""
        speaker = self.speakers[int(rng.integers(len(self.speakers)))]  # all four: the draw it always was
        parts = [s.encode() if i == 0 else b" " + s.encode() for i, s in enumerate(self.sentences(rng))]
        spoken = [self.speak(part, speaker, rng) for part in parts]  # each finished on its own
        border = (sum(map(len, parts[:-1])), sum(map(len, spoken[:-1])))
        return b"".join(parts), np.concatenate(spoken), speaker, border

    def decode_frames(self, ids):
        """ids -> (byte, phase, speaker) per frame; all -1 for an id no speaker ever says."""
        code = (np.asarray(ids, dtype=np.int64) - self.shift) * self.unscale % N_AUDIO
        valid = code < self.n_codes
        speaker = np.where(valid, code % self.n_speakers, -1)
        phase = np.where(valid, code // self.n_speakers % self.n_phases, -1)
        byte = np.where(valid, code // (self.n_speakers * self.n_phases * self.n_classes), -1)
        return byte, phase, speaker

    def recognise(self, ids):
        """
        Token ids -> (text, speakers per frame). A character starts at each onset frame, and at a hold frame whose
        byte differs from the character it would extend; ids no speaker says are dropped (and count as errors in
        speaker consistency).
        """
        byte, phase, speaker = self.decode_frames(ids)
        out, current = bytearray(), None
        for b, p in zip(byte.tolist(), phase.tolist()):
            if b < 0:
                current = None
                continue
            if p == 0 or b != current:
                out.append(b)
            current = b
        return out.decode("utf-8", errors="replace"), speaker


def synthetic_corpus(seed, n_train, n_val, max_sentences=1, multi_share=0.4, speakers=None):
    """
    Deterministic from seed: (train utterances, val utterances, speaker names). speakers: the ids that speak
    (None = all four); the names list every speaker (index = id) either way, so a model's speaker ids keep their
    meaning across corpora that hold some speakers out.
    """
    corpus = SyntheticSpeech(max_sentences, multi_share, speakers)
    rng = np.random.default_rng(seed)
    train = [corpus.utterance(rng) for _ in range(n_train)]
    val = [corpus.utterance(rng) for _ in range(n_val)]
    return train, val, [f"synthetic-{s}" for s in range(corpus.n_speakers)]
