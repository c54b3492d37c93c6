"""
prepare.py's output side: the part file each finished chunk is saved in (<out_dir>/.parts/NNNNN.npz), and the merge
of all parts into the shards (the format is in data.py).

The shards hold the utterances sorted by id, so that the same utterances give the same bytes whatever format, order
or number of processes they came in. The merge keeps metadata in memory, never the corpus's audio tokens: plan_merge
reads every part's ids, speakers, skips and lengths (not its tokens) and decides from them which utterances are kept
(the first of an id, in plan order), which go to val (a hash of the id), the speaker table and the id order;
write_merge then reads one part at a time, in plan order. When that is already id order (a corpus whose ids rise as
it is read) it streams the utterances straight to the train and val files; otherwise it copies them to one spill file
first and reads each back at its offset in id order (one more write and read of the tokens, on disk, not in memory).
"""

import hashlib
import io
import json
import os
from collections import namedtuple
from itertools import islice, repeat

import numpy as np

from common import atomic_write, fail, why_unreadable
from corpora import Skip, Utterance
from data import SplitWriter

MergePlan = namedtuple("MergePlan", "splits speakers skipped duplicates kept order")  # see plan_merge
DROP, TRAIN, VAL = -1, 0, 1


def save_part(path, items, results, seconds):
    """One finished chunk: every utterance's id, name, text and speaker, the tokens of those kept and the reasons
    for those skipped, and the seconds of audio it held (for the progress of other ranks)."""
    kept = [r for r in results if not isinstance(r, Skip)]
    info = {"items": [[u.id, u.name, u.text, u.speaker] for u in items], "seconds": seconds,
            "skipped": [[r.name, r.reason, r.detail] if isinstance(r, Skip) else None for r in results]}
    buf = io.BytesIO()
    np.savez(buf, info=np.frombuffer(json.dumps(info).encode(), dtype=np.uint8),
             lengths=np.array([len(r) for r in kept], dtype=np.int64),
             tokens=np.concatenate(kept).astype(np.uint16) if kept else np.zeros(0, np.uint16))
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_part(path, tokens=False):
    """A part's metadata (and, with tokens=True, its lengths and tokens; an .npz member is read only when asked
    for), checked against each other; a part that is not one save_part wrote is a one-line error naming it."""
    try:
        with np.load(path, allow_pickle=False) as part:
            info = json.loads(part["info"].tobytes())
            lengths, data = (part["lengths"], part["tokens"]) if tokens else (None, None)
        items, skipped = info["items"], info["skipped"]
        kept = [item for item, skip in zip(items, skipped) if skip is None]  # id, name and text of each: strings
        ok = (len(items) == len(skipped) and float(info["seconds"]) >= 0 and all(len(item) == 4 for item in items)
              and all(len(skip) == 3 for skip in skipped if skip is not None)
              and all(isinstance(x, str) for item in kept for x in item[:3]))
        if tokens:
            ok = ok and lengths.ndim == 1 and len(lengths) == skipped.count(None) and (lengths >= 0).all() \
                and lengths.sum() == len(data)
        if not ok:
            raise ValueError("its entries do not fit together")
    except Exception as e:  # a part a crash or a disk damaged: deleted, its chunk is encoded again
        fail(f"{path} is not a part prepare.py writes ({why_unreadable(path, e)}); delete it and run the same "
             "command again to redo its chunk")
    return (info, lengths, data) if tokens else info


def part_seconds(path):
    return load_part(path)["seconds"]


def read_part(path):
    """-> [(Utterance without audio, token array or Skip)]"""
    info, lengths, tokens = load_part(path, tokens=True)
    rows = iter(np.split(tokens, np.cumsum(lengths)[:-1]) if len(lengths) else [])
    return [(Utterance(uid, None, name, text, spk), Skip(*s) if s else next(rows))
            for (uid, name, text, spk), s in zip(info["items"], info["skipped"])]


def hash_fraction(uid):
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big") / 2 ** 64


def plan_merge(paths, val_fraction, planned=None):
    """The first pass, over the parts' metadata: -> MergePlan of splits (per part, an int8 array: DROP, TRAIN or VAL
    for each of its utterances), speakers (the sorted names of the kept utterances' speakers), skipped (the Skips
    the parts hold), duplicates (a Skip for each later utterance of an id already kept), kept (how many) and order
    (None when the kept utterances come in id order already, else their plan-order numbers sorted by id).
    planned: an iterable of, per part, the ids the plan put in it (file formats), checked against the part."""
    seen, splits, skipped, duplicates, speakers, kept_ids = set(), [], [], [], set(), []
    n_val, lowest, highest = 0, None, None  # (hash, part, position) of the kept ids with the lowest and highest hash
    for c, (path, ids) in enumerate(zip(paths, repeat(None) if planned is None else planned)):
        info = load_part(path)
        if ids is not None and [item[0] for item in info["items"]] != ids:
            fail(f"{path} belongs to another plan; delete {os.path.dirname(path)} and run again")
        split = np.full(len(info["items"]), DROP, dtype=np.int8)
        for i, ((uid, name, _, speaker), skip) in enumerate(zip(info["items"], info["skipped"])):
            if skip:
                skipped.append(Skip(*skip))
            elif uid in seen:
                duplicates.append(Skip(name, "duplicate id", uid))
            else:
                seen.add(uid)
                kept_ids.append(uid)
                h = (hash_fraction(uid), c, i)
                lowest, highest = min(lowest or h, h), max(highest or h, h)
                is_val = h[0] < val_fraction
                split[i] = VAL if is_val else TRAIN
                n_val += is_val
                if speaker is not None:
                    speakers.add(speaker)
        splits.append(split)
    if seen and n_val == 0:  # at least one utterance in val, and at least one in train
        splits[lowest[1]][lowest[2]], n_val = VAL, 1
    if seen and n_val == len(seen):
        splits[highest[1]][highest[2]] = TRAIN
    order = None
    if any(a > b for a, b in zip(kept_ids, islice(kept_ids, 1, None))):
        order = np.array(sorted(range(len(kept_ids)), key=kept_ids.__getitem__), dtype=np.int64)
    return MergePlan(splits, sorted(speakers), skipped, duplicates, len(seen), order)


def kept_in_plan_order(paths, plan):
    """(text, tokens, speaker number, TRAIN or VAL) of each kept utterance, part after part (one part in memory)."""
    speaker_index = {s: i for i, s in enumerate(plan.speakers)}
    for path, split in zip(paths, plan.splits):
        for (u, tokens), where in zip(read_part(path), split):
            if where != DROP:
                yield u.text.encode(), tokens, speaker_index.get(u.speaker, -1), where


def in_id_order(rows, plan, spill_path):
    """rows (plan order) in id order: each copied to one spill file as it comes, then read back at its offset in the
    order plan.order gives; memory holds 5 numbers per utterance."""
    at = np.zeros((plan.kept, 5), dtype=np.int64)  # offset, tokens, text bytes, speaker, split
    with open(spill_path, "w+b") as f:
        offset = 0
        for k, (text, tokens, speaker, where) in enumerate(rows):
            data = tokens.astype(np.uint16).tobytes() + text
            f.write(data)
            at[k] = offset, len(tokens), len(text), speaker, where
            offset += len(data)
        f.flush()
        for k in plan.order:
            offset, n_tokens, n_text, speaker, where = at[k].tolist()
            data = os.pread(f.fileno(), 2 * n_tokens + n_text, offset)
            yield data[2 * n_tokens:], np.frombuffer(data, dtype=np.uint16, count=n_tokens), speaker, where
    os.remove(spill_path)


def write_merge(out_dir, paths, plan):
    """The second pass: the kept utterances, in id order, to the train and val shards (one part's tokens in memory at
    a time; a spill file next to the parts when plan order is not id order). -> {"train": stats, "val": stats}."""
    rows = kept_in_plan_order(paths, plan)
    if plan.order is not None:
        rows = in_id_order(rows, plan, os.path.join(os.path.dirname(paths[0]), "merge.spill"))
    with SplitWriter(out_dir, "train") as train, SplitWriter(out_dir, "val") as val:
        for text, tokens, speaker, where in rows:
            (val if where == VAL else train).add(text, tokens, speaker)
    return {"train": train.stats, "val": val.stats}
