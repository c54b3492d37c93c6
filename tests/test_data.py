"""data.py: the shard format, training batches (bucketed and packed), the synthetic corpus and its exact recogniser."""

import os
import shutil

import numpy as np
import pytest

from conftest import ROOT, one_line_error, run, run_many
from data import (CorpusError, Shards, get_batch, get_packed_batch, length_sorted_rows, utterance_stream, write_meta,
                  write_split)
from synthetic import SyntheticSpeech, synthetic_corpus
from model import EOA, N_AUDIO, PAD, SOA, TEXT_OFFSET

pytestmark = pytest.mark.slow  # the whole file: see pytest.ini


def test_shard_round_trip(tmp_path):
    utts = [("héllo".encode(), np.array([0, 46655, 7]), 1), (b"", np.array([], dtype=np.int64), -1),
            ("বাংলা".encode(), np.arange(30), 0)]
    stats = write_split(tmp_path, "train", utts)
    write_split(tmp_path, "val", utts[:1])
    write_meta(tmp_path, {"dataset": "test", "speakers": ["a", "b"], "splits": {"train": stats}})
    shards = Shards(tmp_path, "train")
    assert len(shards) == 3 and shards.verified
    assert {k: stats[k] for k in ("utterances", "text_bytes", "audio_tokens")} == {"utterances": 3,
                                                                                   "text_bytes": 6 + 15,
                                                                                   "audio_tokens": 33}
    assert sorted(stats["sha256"]) == ["train.audio.bin", "train.index.npy", "train.text.bin"]
    for (text, audio, spk), got in zip(utts, (shards[i] for i in range(3))):
        assert got[0] == text and np.array_equal(got[1], audio) and got[2] == spk
    assert shards.audio.dtype == np.uint16 and shards.text.dtype == np.uint8
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # written atomically


def test_batch_targets_are_audio_and_eoa_only(tmp_path):
    train, val, speakers = synthetic_corpus(0, 50, 5)
    write_meta(tmp_path, {"dataset": "synthetic", "speakers": speakers,
                          "splits": {"train": write_split(tmp_path, "train", train)}})
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
    write_meta(tmp_path, {"dataset": "synthetic", "speakers": speakers,
                          "splits": {"train": write_split(tmp_path, "train", train)}})
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


def test_speakers_held_out_keep_their_ids_and_the_default_draws_as_before():
    # all four named is the default corpus, draw for draw (its bytes are pinned by test_same_outputs.py)
    a, av, names = synthetic_corpus(3, 300, 20)
    b, bv, _ = synthetic_corpus(3, 300, 20, speakers=[0, 1, 2, 3])
    assert all(x[0] == y[0] and np.array_equal(x[1], y[1]) and x[2] == y[2] for x, y in zip(a + av, b + bv))
    # a subset: only those speak, with their own ids (a model of 0-2 has never heard 3), and the names list all four
    held, held_val, held_names = synthetic_corpus(3, 300, 20, speakers=[0, 1, 2])
    assert {u[2] for u in held + held_val} == {0, 1, 2} and held_names == names == [f"synthetic-{s}" for s in range(4)]
    new, _, _ = synthetic_corpus(7, 50, 1, speakers=[3])
    corpus = SyntheticSpeech()
    for text, audio, speaker, _ in new:
        heard, frames = corpus.recognise(audio)
        assert speaker == 3 and heard == text.decode() and (frames == 3).all()
    assert new[0][0] == synthetic_corpus(7, 50, 1, speakers=[3])[0][0][0]  # deterministic from the seed
    for bad in ([], [4], [1, 1], [-1]):
        with pytest.raises(ValueError):
            synthetic_corpus(0, 1, 1, speakers=bad)


def test_prepare_speakers_option(tmp_path):
    run("prepare.py", "--dataset=synthetic", "--n_train=60", "--n_val=6", "--speakers=1,3", "--out_dir=held",
        cwd=tmp_path)
    shards = Shards(tmp_path / "held", "train")
    assert set(shards.column("speaker").tolist()) == {1, 3} and shards.meta["speaking"] == [1, 3]
    assert shards.meta["speakers"] == [f"synthetic-{s}" for s in range(4)]


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
    write_meta(tmp_path, {"dataset": "synthetic", "speakers": speakers,
                          "splits": {"train": write_split(tmp_path, "train", train)}})
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
    stats = write_split(tmp_path, "train", train)
    del stats["sha256"]  # v1 had no checksums
    write_meta(tmp_path, {"dataset": "synthetic", "speakers": speakers, "format": "dirt-shards-v1",
                          "splits": {"train": stats}})
    np.save(tmp_path / "train.index.npy", np.load(tmp_path / "train.index.npy")[:, :5])
    shards = Shards(tmp_path, "train")
    assert shards.index.shape == (20, 7) and (shards.index[:, 5:] == 0).all()
    assert shards[3][0] == train[3][0] and shards.anchor(3) is None


# --------------------------------------------------------------------------------------------------------------
# a corrupt corpus stops with one line naming the file, never trains in silence


def small_corpus(folder, checksums=True):
    """A train and a val split of the synthetic corpus, written as prepare.py writes them (or as before checksums)."""
    train, val, speakers = synthetic_corpus(0, 30, 10)
    splits = {"train": write_split(folder, "train", train), "val": write_split(folder, "val", val)}
    for stats in splits.values():
        if not checksums:
            del stats["sha256"]
    write_meta(folder, {"dataset": "synthetic", "speakers": speakers, "splits": splits})
    return folder


def cut(path, n):
    path.write_bytes(path.read_bytes()[:-n])


def flip_middle(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4] = bytes(b ^ 0xFF for b in data[middle:middle + 4])
    path.write_bytes(data)


def edit_index(path, edit):
    index = np.load(path)
    np.save(path, edit(index))


def offset_out_of_range(index):
    index[3, 2] += 10 ** 6  # audio_start
    return index


# cause -> (how it corrupts a corpus folder, what the one line says). The val split, which eval.py reads too
CORRUPTIONS = {
    "truncated text.bin": (lambda d: cut(d / "val.text.bin", 5), "val.text.bin is truncated"),
    "truncated audio.bin": (lambda d: cut(d / "val.audio.bin", 10), "val.audio.bin is truncated"),
    "flipped audio bytes": (lambda d: flip_middle(d / "val.audio.bin"), "val.audio.bin does not match its sha256"),
    "offset out of range": (lambda d: edit_index(d / "val.index.npy", offset_out_of_range),
                            "val.index.npy: utterance 3's audio ends at"),
    "index of the wrong shape": (lambda d: edit_index(d / "val.index.npy", lambda i: i[:, :6]),
                                 "val.index.npy holds an array of shape ("),
    "corrupt meta.json": (lambda d: (d / "meta.json").write_text('{"format": "dirt-shards-v2", "spl'),
                          "meta.json is not valid JSON"),
    "missing file": (lambda d: (d / "val.audio.bin").unlink(), "val.audio.bin is missing"),
}


def assert_corpus_error(folder, split, *needles):
    with pytest.raises(CorpusError) as e:
        Shards(folder, split)
    message = str(e.value)
    assert isinstance(e.value, ValueError) and "\n" not in message and "re-run prepare.py" in message, message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("cause", CORRUPTIONS)
def test_each_corruption_is_one_line_naming_the_file(tmp_path, cause):
    corrupt, needle = CORRUPTIONS[cause]
    corrupt(small_corpus(tmp_path))
    assert_corpus_error(tmp_path, "val", os.path.join(tmp_path, needle))  # the file, by its whole path


@pytest.mark.parametrize("meta,needle", [
    (b"\xff\xfe\x00 not text", "meta.json is not valid JSON"),
    (b"[1, 2]", "meta.json is not a Dirt meta.json (a JSON list, not an object)"),
    (b'{"format": "dirt-shards-v2"}', 'meta.json has no "splits" object'),
    (b'{"format": "dirt-shards-v9", "splits": {}}', "meta.json has format 'dirt-shards-v9'"),
    (b'{"format": "dirt-shards-v2", "splits": {"train": {}}}', "meta.json lists no 'val' split"),
    (b'{"format": "dirt-shards-v2", "splits": {"val": 5}}', "meta.json: its 'val' split is a JSON int, not an object"),
    (b'{"format": "dirt-shards-v2", "splits": {"val": {"utterances": "10"}}}',
     "meta.json: its 'val' split has utterances '10', not a count"),
    (b'{"format": "dirt-shards-v2", "splits": {"val": {"sha256": []}}}', 'its \'val\' split has a "sha256" that is not'),
    (b'{"format": "dirt-shards-v2", "splits": {}, "speakers": "abc"}', 'meta.json has "speakers" that are not a list'),
    (b'{"format": "dirt-shards-v2", "splits": {}, "tokens_per_second": 0}', "meta.json has tokens_per_second 0"),
    (b"[" * 100_000, "meta.json is not valid JSON (maximum recursion depth"),
])
def test_meta_json_errors_name_it(tmp_path, meta, needle):
    (small_corpus(tmp_path) / "meta.json").write_bytes(meta)
    assert_corpus_error(tmp_path, "val", needle)


@pytest.mark.parametrize("corrupt,needle", [
    (lambda d: (d / "train.audio.bin").write_bytes((d / "train.audio.bin").read_bytes() + b"\0\0"),
     "train.audio.bin is longer than it should be"),
    (lambda d: cut(d / "train.audio.bin", 1), "not a whole number of 2-byte ids"),
    (lambda d: (d / "train.index.npy").write_bytes(b"\x93NUMPY garbage"), "train.index.npy is not a readable .npy"),
    (lambda d: edit_index(d / "train.index.npy", lambda i: i.astype(np.float32)), "shape (30, 7) and type float32"),
    (lambda d: edit_index(d / "train.index.npy", lambda i: i[:-1]), "has 29 utterances, "),
    (lambda d: edit_index(d / "train.index.npy", lambda i: i * np.array([1, -1, 1, 1, 1, 1, 1])),
     "utterance 0 has text_len -"),
    (lambda d: edit_index(d / "train.index.npy", lambda i: i * np.array([1, 1, 1, 1, 9, 1, 1]) + [0, 0, 0, 0, 9, 0, 0]),
     "has a border or speaker out of range"),
    (lambda d: (d / "train.index.npy").unlink(), "train.index.npy is missing"),
])
def test_index_and_sizes_are_checked_against_each_other(tmp_path, corrupt, needle):
    corrupt(small_corpus(tmp_path))
    assert_corpus_error(tmp_path, "train", needle)


def test_corpus_without_checksums_reads_with_one_note(tmp_path, capsys):
    """Written before the checksums: read, noted once (not once per split), and still checked but for its bytes."""
    small_corpus(tmp_path, checksums=False)
    train, val = Shards(tmp_path, "train"), Shards(tmp_path, "val")
    assert len(train) == 30 and len(val) == 10 and not train.verified and not val.verified
    notes = capsys.readouterr().out.splitlines()
    assert len(notes) == 1 and notes[0].startswith(f"note: {tmp_path} has no checksums"), notes
    flip_middle(tmp_path / "val.audio.bin")
    Shards(tmp_path, "val")  # its bytes are not hashed: flipped ones pass
    cut(tmp_path / "val.audio.bin", 2)
    assert_corpus_error(tmp_path, "val", "val.audio.bin is truncated")  # but its size is checked
    assert not capsys.readouterr().out


def test_corrupt_corpus_stops_train_and_eval_in_one_line(trained, tmp_path):
    """Each cause through the command line: train.py and eval.py print one line, exit non-zero, and write nothing."""
    work, out_dir = trained
    before = {f: os.path.getmtime(os.path.join(out_dir, f)) for f in os.listdir(out_dir)}
    commands = []
    for n, (cause, (corrupt, needle)) in enumerate(CORRUPTIONS.items()):
        data = tmp_path / f"data{n}"
        shutil.copytree(os.path.join(work, "data", "synthetic"), data)  # a copy: the shared corpus stays whole
        corrupt(data)
        commands += [(("train.py", os.path.join(ROOT, "config", "train_synthetic.py"), f"--data_dir={data}",
                       "--max_iters=1", f"--out_dir={tmp_path}/out{n}"), needle),
                     (("eval.py", f"--out_dir={out_dir}", f"--data_dir={data}", "--n=2"), needle)]
    for (args, needle), proc in zip(commands, run_many([args for args, _ in commands], work)):
        one_line_error(proc, needle, "re-run prepare.py")
    assert not [f for f in os.listdir(tmp_path) if f.startswith("out")]  # train.py made no out_dir
    assert {f: os.path.getmtime(os.path.join(out_dir, f)) for f in os.listdir(out_dir)} == before


@pytest.mark.parametrize("args,needle", [
    (["--out_dir=taken"], "--out_dir=taken: "),
    (["--out_dir=taken/sub"], "--out_dir=taken/sub: "),
    (["--out_dir=new", "--n_train=0"], "--n_train=0 and --n_val=500: both must be at least 1"),
    (["--out_dir=new", "--max_sentences=0"], "--max_sentences=0: use 1 or more"),
    (["--out_dir=new", "--max_sentences=2", "--multi_share=1.5"], "--multi_share=1.5 is a share"),
    (["--out_dir=new", "--speakers=4"], "--speakers=4: give distinct speaker ids from 0 to 3"),
    (["--out_dir=new", "--speakers=0,0"], "--speakers=0,0: give distinct speaker ids"),
    (["--out_dir=new", "--speakers=one"], "--speakers=one: give distinct speaker ids"),
])
def test_prepare_fails_its_checks_before_writing_anything(tmp_path, args, needle):
    (tmp_path / "taken").write_text("a file, not a folder")
    one_line_error(run("prepare.py", *args, cwd=tmp_path, check=False), needle)
    assert sorted(os.listdir(tmp_path)) == ["taken"] and (tmp_path / "taken").read_text() == "a file, not a folder"
