"""data.py: the shard format, training batches (bucketed and packed), the synthetic corpus and its exact recogniser."""

import os

import numpy as np

from data import Shards, get_batch, get_packed_batch, length_sorted_rows, utterance_stream, write_meta, write_split
from synthetic import SyntheticSpeech, synthetic_corpus
from model import EOA, N_AUDIO, PAD, SOA, TEXT_OFFSET


def test_shard_round_trip(tmp_path):
    utts = [("héllo".encode(), np.array([0, 46655, 7]), 1), (b"", np.array([], dtype=np.int64), -1),
            ("বাংলা".encode(), np.arange(30), 0)]
    stats = write_split(tmp_path, "train", utts)
    write_split(tmp_path, "val", utts[:1])
    write_meta(tmp_path, {"dataset": "test", "speakers": ["a", "b"], "splits": {"train": stats}})
    shards = Shards(tmp_path, "train")
    assert len(shards) == 3 and stats == {"utterances": 3, "text_bytes": 6 + 15, "audio_tokens": 33}
    for (text, audio, spk), got in zip(utts, (shards[i] for i in range(3))):
        assert got[0] == text and np.array_equal(got[1], audio) and got[2] == spk
    assert shards.audio.dtype == np.uint16 and shards.text.dtype == np.uint8
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # written atomically


def test_batch_targets_are_audio_and_eoa_only(tmp_path):
    train, val, speakers = synthetic_corpus(0, 50, 5)
    write_split(tmp_path, "train", train)
    write_meta(tmp_path, {"dataset": "synthetic", "speakers": speakers})
    shards = Shards(tmp_path, "train")
    x, y, anchor = get_batch(shards, np.arange(len(shards)), 8, np.random.default_rng(0))
    assert (anchor == -1).all()  # one sentence each: nothing to anchor
    for row_x, row_y in zip(x, y):
        n = int((row_x != PAD).sum())
        soa = int(np.flatnonzero(row_x == SOA)[0])
        assert (row_x[:soa] >= TEXT_OFFSET).all() and (row_y[:soa] == -1).all()
        assert (row_y[soa:n - 1] < N_AUDIO).all() and (row_y[soa:n - 1] == row_x[soa + 1:n]).all()
        assert row_y[n - 1] == EOA and (row_y[n:] == -1).all()
    x2, _, _ = get_batch(shards, np.arange(len(shards)), 8, np.random.default_rng(0))
    assert np.array_equal(x, x2)  # deterministic for a seed


def test_packed_batch_holds_whole_utterances_with_little_padding(tmp_path):
    train, _, speakers = synthetic_corpus(0, 300, 1)
    write_split(tmp_path, "train", train)
    write_meta(tmp_path, {"dataset": "synthetic", "speakers": speakers})
    shards = Shards(tmp_path, "train")
    rows = length_sorted_rows(shards, 256)
    streams = {tuple(utterance_stream(text, audio)) for text, audio, *_ in train}
    streams |= {tuple(utterance_stream(b"", audio)) for _, audio, *_ in train}  # text dropped
    padded = []
    for seed in range(10):
        x, y, doc, _ = get_packed_batch(shards, rows, 256, 16, np.random.default_rng(seed), text_dropout=0.2)
        assert x.shape == y.shape == doc.shape == (16, 256)
        padded.append(np.mean(x == PAD))
        for row_x, row_y, row_doc in zip(x, y, doc):
            for d in np.unique(row_doc):
                ux, uy = row_x[row_doc == d], row_y[row_doc == d]
                if (ux == PAD).all():  # the padding closes the row, and is never a target
                    assert d == row_doc.max() and (uy == -1).all() and row_doc[-1] == d
                    continue
                # a whole utterance: its inputs are the stream but its EOA, its targets the audio and the EOA
                assert tuple(ux) + (EOA,) in streams
                soa = int(np.flatnonzero(ux == SOA)[0])
                assert (uy[:soa] == -1).all() and (uy[soa:-1] == ux[soa + 1:]).all() and uy[-1] == EOA
    assert np.mean(padded) < 0.05, f"{100 * np.mean(padded):.1f}% padding"
    again = get_packed_batch(shards, rows, 256, 16, np.random.default_rng(9), text_dropout=0.2)
    assert all(np.array_equal(a, b) for a, b in zip(again[:3], (x, y, doc)))  # deterministic for a seed


def test_corpus_is_deterministic_and_speech_like():
    a, _, _ = synthetic_corpus(3, 400, 1)
    b, _, _ = synthetic_corpus(3, 400, 1)
    assert all(x[0] == y[0] and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    ids = np.concatenate([u[1] for u in a])
    assert ids.min() < 2000 and ids.max() > N_AUDIO - 2000  # spread over the whole codebook
    rate = sum(len(u[1]) for u in a) / sum(len(u[0]) for u in a)
    assert 1.5 <= rate <= 2.0
    assert len({u[2] for u in a}) == 4


def test_recogniser_inverts_exactly_and_speakers_differ():
    corpus = SyntheticSpeech()
    train, _, _ = synthetic_corpus(5, 300, 1)
    for text, audio, speaker, _ in train:
        heard, speakers = corpus.recognise(audio)
        assert heard == text.decode() and (speakers == speaker).all()
    rng = np.random.default_rng(0)
    text = b"tall tale"
    ids = [set(corpus.speak(text, s, rng).tolist()) for s in range(corpus.n_speakers)]
    assert all(not (ids[i] & ids[j]) for i in range(4) for j in range(i + 1, 4))  # every id changes per speaker
    # context: the same byte before a vowel and before a consonant gets different ids ("ta" vs "tl" in "tall tale")
    assert corpus.speak(b"ta", 0, rng)[0] != corpus.speak(b"tl", 0, rng)[0]


def test_recogniser_handles_any_sequence():
    corpus = SyntheticSpeech()
    heard, speakers = corpus.recognise(np.random.default_rng(0).integers(0, N_AUDIO, 500))
    assert isinstance(heard, str) and len(speakers) == 500 and (speakers >= -1).all()
    assert corpus.recognise([])[0] == ""


def test_sentences_of_an_utterance_are_each_spoken_to_their_end():
    """As a voice prompt (or a long text's previous chunk) is a finished utterance that new text then follows."""
    corpus = SyntheticSpeech()
    train, _, _ = synthetic_corpus(5, 200, 1, max_sentences=2)
    two = [(t, a, border) for t, a, _, border in train if any(p in t for p in (b". ", b"? ", b"! "))]
    assert len(two) > 40
    assert sum(border != (0, 0) for *_, border in train) == len(two)  # one sentence: no border
    for text, audio, border in two:
        assert corpus.recognise(audio)[0] == text.decode()
        first_len = max(text.find(p) for p in (b". ", b"? ", b"! ")) + 1
        assert border[0] == first_len and corpus.recognise(audio[:border[1]])[0] == text[:first_len].decode()
        _, phase, _ = corpus.decode_frames(audio)
        space_onset = np.flatnonzero(phase == 0)[first_len]  # the frame where the second sentence's space starts
        code = (audio[space_onset - 1] - corpus.shift) * corpus.unscale % N_AUDIO
        next_class = code // (corpus.n_speakers * corpus.n_phases) % corpus.n_classes
        assert next_class == corpus.byte_class[256]  # the first sentence's last frame: "end of text", not "space"


def test_multi_share_sets_how_many_utterances_continue():
    for share in (0.0, 0.4, 0.85):
        train, _, _ = synthetic_corpus(5, 2000, 1, max_sentences=2, multi_share=share)
        continued = np.mean([border != (0, 0) for *_, border in train])
        assert abs(continued - share) < 0.03, (share, continued)


def test_anchors_mark_where_the_last_sentence_starts(tmp_path):
    train, _, speakers = synthetic_corpus(5, 200, 1, max_sentences=2)
    write_split(tmp_path, "train", train)
    write_meta(tmp_path, {"dataset": "synthetic", "speakers": speakers})
    shards = Shards(tmp_path, "train")
    rows = np.arange(len(shards))
    x, _, anchor = get_batch(shards, rows, len(rows), np.random.default_rng(0))
    packed_x, _, doc, packed_anchor = get_packed_batch(shards, rows, 256, 64, np.random.default_rng(0))
    for batch_x, batch_doc, batch_anchor in ((x, np.zeros_like(x), anchor), (packed_x, doc, packed_anchor)):
        n = 0
        for r, at in zip(*np.nonzero(batch_anchor >= 0)):
            own = batch_doc[r] == batch_doc[r, at]  # the anchored utterance's positions in its row
            utterance, byte, at = batch_x[r][own], batch_anchor[r, at], at - int(np.argmax(own))
            soa = int(np.flatnonzero(utterance == SOA)[0])
            text = bytes((utterance[:soa] - TEXT_OFFSET).tolist())
            heard = SyntheticSpeech().recognise(utterance[soa + 1:at + 1])[0]  # the audio up to the anchor
            assert utterance[at] < N_AUDIO and heard == text[:byte].decode() and text[byte:byte + 1] == b" "
            n += 1
        assert n > 20
    dropped = get_batch(shards, rows, len(rows), np.random.default_rng(0), text_dropout=1.0)[2]
    assert (dropped == -1).all()  # no text, nothing to align with


def test_v1_shards_read_as_utterances_without_borders(tmp_path):
    train, _, speakers = synthetic_corpus(5, 20, 1, max_sentences=2)
    write_split(tmp_path, "train", train)
    write_meta(tmp_path, {"dataset": "synthetic", "speakers": speakers, "format": "dirt-shards-v1"})
    np.save(tmp_path / "train.index.npy", np.load(tmp_path / "train.index.npy")[:, :5])
    shards = Shards(tmp_path, "train")
    assert shards.index.shape == (20, 7) and (shards.index[:, 5:] == 0).all()
    assert shards[3][0] == train[3][0] and shards.anchor(3) is None
