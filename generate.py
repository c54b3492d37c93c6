"""
Generation, in gpt-fast's shape: a preallocated KV cache (model.setup_cache), one `prefill` over the prompt, then a
small step, `decode_and_sample` (feed a token, sample the next), that `torch.compile` turns into one CUDA graph.
On top of it: `stream` / `generate` (ragged batches, classifier-free guidance, continuation anchors, rows that join
a running batch at any step) and `token_logprobs` (teacher-forced scores); speak.py turns texts of any length into
speech with them. Read top to bottom: the settings (Sampling), the step (prefill, decode, sampling), then a running
batch: `Rows` (each row's random stream, its tokens left, its end) and `Batch` (where each row sits in the KV cache),
which `stream`'s loop drives.

Every sampling setting lives in one place, the Sampling dataclass below; scripts take their command-line settings
from its fields and hand one Sampling object down to the step that uses it.
"""

import math
from dataclasses import asdict, dataclass, fields

import torch

from model import EOA, N_COARSE, N_FINE, PAD, SOA, stream_positions


@dataclass(frozen=True)
class Sampling:
    """How to sample: every script that samples takes these settings (same names, same defaults) from here."""

    # lower: fewer slips and less variety; the synthetic corpus is said best near 0.6 (docs/results.md)
    temperature: float = 0.6  # 0 = greedy
    top_k: int = 0  # sample each stage from its k most likely classes; 0 = off
    # each stage (coarse class, fine digits) draws from its smallest set of classes holding this much probability;
    # the tail it cuts is where slips and new voices come from, and a long text draws from it thousands of times
    top_p: float = 0.8  # nucleus sampling; 0 or 1 = off
    cfg_scale: float = 1.0  # classifier-free guidance; 1 = off (needs a model trained with text_dropout > 0)
    best_of: int = 1  # sample each chunk this many times side by side and keep the most likely (fewer slips)
    max_seconds: float = 30.0  # the longest audio for one chunk of text

    def __post_init__(self):
        """An impossible setting is a ValueError naming it, the same in every script (they print it as one line)."""
        limits = {"temperature": (0, 10, "0 (greedy) to 10"), "top_k": (0, None, "0 (off) or more"),
                  "top_p": (0, 1, "0 to 1 (0 or 1 = off)"), "cfg_scale": (1e-9, 20, "above 0, at most 20"),
                  "best_of": (1, 64, "1 to 64"), "max_seconds": (1e-9, 3600, "above 0, at most 3600")}
        for name, (low, high, allowed) in limits.items():
            value = getattr(self, name)
            whole = self.__dataclass_fields__[name].type is int  # top_k, best_of: a count, never 2.5
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or not (
                    low <= value and (high is None or value <= high)):
                raise ValueError(f"--{name}={value!r} is out of range: use {allowed}")

    @classmethod
    def defaults(cls):
        """{setting: default}: what a script puts among its globals for the configurator to override."""
        return asdict(cls())

    @classmethod
    def from_settings(cls, settings):
        """The Sampling of a script's settings (its globals, after the configurator)."""
        return cls(**{f.name: settings[f.name] for f in fields(cls)})

# -----------------------------------------------------------------------------
# the step: prefill, decode one token, sample it


def prefill(model, idx, pos, valid, P, anchor=None):
    """Run the whole prompt once, filling the cache; returns the last position's hidden state [B, n_embd]."""
    T = idx.shape[1]
    causal = torch.ones(T, valid.shape[1], dtype=torch.bool, device=idx.device).tril()
    own = torch.eye(T, valid.shape[1], dtype=torch.bool, device=idx.device)
    # a pad query sees only itself: a query with no visible key would make NaNs that leak through the values
    mask = (causal[None] & (valid[:, None, :] | own[None]))[:, None]  # [B, 1, T, S]
    return model(idx, pos=pos, mask=mask, input_pos=torch.arange(T, device=idx.device), anchor=anchor)[:, -1]


def decode_one_token(model, token, pos, valid, input_pos):
    """One step: a single new token per row attends to every filled slot up to input_pos. Returns [B, n_embd]."""
    slots = torch.arange(valid.shape[1], device=token.device)
    mask = (valid & (slots[None, :] <= input_pos))[:, None, None, :]  # [B, 1, 1, S]
    return model(token, pos=pos, mask=mask, input_pos=input_pos)[:, -1]


# What one more call costs, per device type, measured where it runs (docs/results.md, "attention in runs of rows"):
# an attention call in cache slots of one row read, a prefill call in prompt tokens. A device type not listed (a GPU,
# where a call is a kernel launch and a slot or a token far cheaper, until measured there) makes one call for all rows.
WINDOW_CALL = {"cpu": 300}
PREFILL_CALL = {"cpu": 32}


def row_windows(starts, call):
    """
    The runs of adjacent rows whose attention reads the KV cache from their earliest row's first slot on: [(first
    row, end row, first slot)], for rows that start at starts (a list). A step's attention costs about what it reads:
    rows of a running batch that joined late read far fewer slots than the oldest (the span of the longest row
    still running) when they read their own run's; each run is one more attention call, costing call slots' reads.
    Cut where the slots read plus the calls cost least (every row reads up to the same slot, so which slot that is
    does not move the best cut): a dynamic programme over the cut points, O(rows^2), once per change of the batch.
    The same cut, over rows sorted by first slot, groups the prompts prefilled together (call: PREFILL_CALL). With
    call = inf, one run.
    """
    n = len(starts)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for end in range(1, n + 1):
        first = float("inf")
        for a in range(end - 1, -1, -1):  # the run a..end reads from its lowest start
            first = min(first, starts[a])
            cost = best[a] + call - (end - a) * first
            if cost < best[end]:
                best[end], cut[end] = cost, a
    runs, end = [], n
    while end:
        runs.append((cut[end], end, min(starts[cut[end]:end])))
        end = cut[end]
    return runs[::-1]


def decode_and_sample(model, token, pos, valid, input_pos, sampling, noise=None):
    """
    One generation step, the unit sample.py --compile turns into a CUDA graph: feed each row's last token [B] (twice
    under guidance: the conditional rows, then the unconditional), then sample the next one [B]. Sampling in the
    graph too, not only the decode: eager sampling is a few dozen small kernel launches, which on a GPU can take
    longer than the whole compiled decode. noise: as sample_audio_token's; the graph takes the draws of draw_noise as
    an input (a torch.Generator cannot go into it).
    """
    feed = token.repeat(2) if sampling.cfg_scale != 1.0 else token
    h = decode_one_token(model, feed[:, None], pos, valid, input_pos)
    return sample_audio_token(model, h, sampling, noise)


def decode_compile_options(device):
    """
    torch.compile options for decode_and_sample on a device. On a CPU a batch-1 step is bound by reading the weights
    once, in layers.matvec's product-and-sum loops, and inductor by default inlines whatever computed a loop's input
    vector (the RMSNorm before it, even the embedding lookups of the first layer) into the loop, recomputing it once
    per weight row: hidden behind memory in fp32, it is most of an int8 step. Realizing every elementwise result that
    reads more than one buffer (realize_acc_reads_threshold=1) computes each input once. On CUDA the step is replayed
    as a CUDA graph, and at batch 1 it is bound by its many small kernels, not by memory bandwidth; so, as gpt-fast:
    coordinate-descent tuning (with it inductor also writes each batch-1 matrix-vector product as a Triton reduction
    fused with its neighbours, the RMSNorm before it say, instead of a cuBLAS call), combo kernels (small independent
    kernels launched as one) and, from Hopper on, programmatic dependent launch (a kernel's start overlaps the end of
    the one before). What each gains: docs/results.md.
    """
    if not str(device).startswith("cuda"):
        return {"realize_acc_reads_threshold": 1}
    options = {"triton.cudagraphs": True, "coordinate_descent_tuning": True, "combo_kernels": True}
    if torch.cuda.get_device_capability(device) >= (9, 0):
        options["triton.enable_pdl"] = True
    return options


def compile_decode_step(device):
    """decode_and_sample compiled for device (sample.py --compile, bench.py --compile=True): one static graph per
    shape (dynamic=False), so stream() keeps its cache lengths few."""
    return torch.compile(decode_and_sample, dynamic=False, options=decode_compile_options(device))


def pick(logits, sampling, u):
    """
    One class per row of [B, V] logits: the most likely at temperature 0; otherwise a draw from the distribution at
    that temperature, cut to its top_k classes (renormalised) and then to its nucleus (the smallest set of most
    likely classes whose mass reaches top_p), by inverse CDF: u [B], uniform in [0, 1), picks the first class whose
    cumulative mass exceeds u times the mass kept. One draw a row, where an exponential race needs one per class; no
    host sync and no torch.multinomial, so that a compiled step samples inside its CUDA graph.
    """
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    V = logits.shape[-1]
    top_p = sampling.top_p if 0 < sampling.top_p < 1 else 1.0
    if 0 < sampling.top_k < V:
        logits, order = logits.topk(sampling.top_k, dim=-1)  # most likely first
        return inverse_cdf(logits.softmax(dim=-1).cumsum(dim=-1), order, top_p, u)
    probs = logits.softmax(dim=-1)
    if top_p == 1.0:
        return inverse_cdf(probs.cumsum(dim=-1), None, top_p, u)
    if torch.compiler.is_compiling():  # one static graph: every row sorted
        probs, order = probs.sort(dim=-1, descending=True)
        return inverse_cdf(probs.cumsum(dim=-1), order, top_p, u)
    # eager: a nucleus is most often a few classes, and sorting whole rows is most of a many-row step's sampling on a
    # CPU: the most likely NUCLEUS_HEAD of each row first, the whole row only where they hold < top_p
    head, order = probs.topk(min(V, NUCLEUS_HEAD), dim=-1)
    cdf = head.cumsum(dim=-1)
    out = inverse_cdf(cdf, order, top_p, u)
    wide = (cdf[:, -1] <= top_p).nonzero()[:, 0]
    if len(wide) and head.shape[-1] < V:
        probs, order = probs[wide].sort(dim=-1, descending=True)
        out[wide] = inverse_cdf(probs.cumsum(dim=-1), order, top_p, u[wide])
    return out


NUCLEUS_HEAD = 16


def inverse_cdf(cdf, order, top_p, u):
    """
    pick's draw: cdf [B, n], the cumulative mass of a row's classes (most likely first when top_p < 1; order [B, n]
    says which class each is, None: 0..n-1) -> per row, the class u [B] picks within the nucleus.
    """
    last, mass = cdf.shape[-1] - 1, cdf[:, -1:]  # the last class kept, and the mass kept
    if top_p < 1:  # a class stays while the mass before it is at most top_p
        last = (cdf[:, :-1] <= top_p).sum(dim=-1, keepdim=True)
        mass = cdf.gather(-1, last)
    i = (cdf <= u[:, None] * mass).sum(dim=-1, keepdim=True).clamp(max=last)
    return (i if order is None else order.gather(-1, i))[:, 0]


DRAWS = 2  # one row's uniforms per step: its coarse class (or EOA), then its fine digits


def generator_runs(generators):
    """[(generator, first row, end row)]: the runs of adjacent rows that share one generator (a text's best_of)."""
    runs = []
    for j, g in enumerate(generators):
        if runs and runs[-1][0] is g:
            runs[-1][2] = j + 1
        else:
            runs.append([g, j, j + 1])
    return runs


def draw_noise(noise, runs, ended):
    """
    One step's uniform draws for sample_audio_token, each text from its own stream: noise [B, DRAWS] is refilled in
    place, one call per run of rows that share a generator (generator_runs), and only while one of them is still
    speaking (ended: per row, a list). So a text's draws are a function of its seed and of its own tokens alone: not
    of its batch mates, nor of how long they run after it has ended, nor of when it joined. The cost is one call per
    text per step, not one per batch (on a GPU, one small kernel launch per text per step, outside the compiled
    step's graph). A counter-based stream (a Philox hash of seed and step in
    the graph) would be one kernel, but would change every sampled output, batch-1 ones too.
    """
    for g, first, end in runs:
        if not all(ended[first:end]):
            noise[first:end].uniform_(generator=g)
    return noise


def sample_audio_token(model, h, sampling, noise=None):
    """
    One next token per row from hidden states h [B, n_embd]: a coarse class (or EOA), then the fine digits given
    it. Only audio ids 0..46655 or EOA can come out. temperature 0 = greedy; top-k / top-p apply to each stage.
    With cfg_scale != 1, h holds the conditional rows then the unconditional ones ([2B, n_embd]); both stages use
    the guided logits uncond + cfg_scale * (cond - uncond), and B tokens come out (guidance draws nothing more).
    noise: where the random draws come from: None (torch's global random state) or a torch.Generator, one stream
    for the whole batch; or the draws themselves, [B, DRAWS] from draw_noise, one stream per text.
    """
    guided = sampling.cfg_scale != 1.0

    def guide(logits):
        if not guided:
            return logits
        cond, uncond = logits.chunk(2)
        return uncond + sampling.cfg_scale * (cond - uncond)

    B = h.shape[0] // (2 if guided else 1)
    u = noise if isinstance(noise, torch.Tensor) else (  # greedy draws nothing
        torch.rand(B, DRAWS, device=h.device, generator=noise) if sampling.temperature > 0 else None)
    coarse = pick(guide(model.coarse_logits(h)), sampling, None if u is None else u[:, 0])
    eoa = coarse == N_COARSE
    coarse = coarse.clamp(max=N_COARSE - 1)
    both = coarse.repeat(2) if guided else coarse
    fine = pick(guide(model.fine_logits(h, both)), sampling, None if u is None else u[:, 1])
    return torch.where(eoa, torch.full_like(coarse, EOA), coarse * N_FINE + fine)

# -----------------------------------------------------------------------------
# whole generations: the rows of a running batch, and where each sits in the KV cache


@dataclass
class Row:
    """One row of a running batch: a place in stream's yields, which a prompt holds until its end (nanochat's
    RowState)."""

    generator: object = None  # the torch.Generator its draws come from (None: torch's global random state)
    left: int = 0  # how many more tokens it may take
    done: bool = True  # its end has been yielded (or it was stopped, or it is free)


class Rows:
    """Every row of a running batch, and the random draws of a step: one stream per text (draw_noise)."""

    def __init__(self, capacity, caps, generators, per_text, device):
        B = len(caps)
        gens = list(generators) if per_text else [None] * B
        self.rows = [Row(g, cap, False) for g, cap in zip(gens, caps)] + [Row() for _ in range(capacity - B)]
        self.noise = torch.empty(capacity, DRAWS, device=device) if per_text else None
        self.draw([r.done for r in self.rows])

    def draw(self, ended):
        """Refill the draws of every run of rows (generator_runs) that is still speaking (ended: per row)."""
        if self.noise is not None:
            draw_noise(self.noise, generator_runs([r.generator for r in self.rows]), ended)

    def draws(self, which):
        """The draws of rows which (a list), for sample_audio_token; None under torch's global random state."""
        if self.noise is None:
            return None
        everyone = which == list(range(len(self.rows)))
        return self.noise if everyone else self.noise[torch.tensor(which, device=self.noise.device)]

    def emit(self, rows, token):
        """What a step yields: per row its token, or EOA once it has ended (past its max_new_tokens too)."""
        out = [EOA] * len(self.rows)
        for j, t in zip(rows, token.tolist()):
            row = self.rows[j]
            if not row.done and t != EOA and row.left > 0:
                out[j], row.left = t, row.left - 1
            else:
                row.done = True
        return out

    def stop(self, stopped):
        """The rows in stopped (a set, emptied) end at once, without an EOA: their callers have gone."""
        for j in stopped:
            self.rows[j].done = True
        stopped.clear()

    def add(self, free, ended, joining):
        """New rows (stream's join) take the first free rows: they start their own runs of draws. -> their rows."""
        taken = free[:len(joining)]
        for row, e in zip(self.rows, ended):  # an ended row draws no more: its generator may be a new row's
            row.generator = None if e else row.generator
        for j, (_, _, g, _, most) in zip(taken, joining):
            self.rows[j] = Row(g if self.noise is not None else None, most, False)
        self.draw([j not in taken for j in range(len(self.rows))])
        return taken


def interleave(a, b, n_a, n_b, guided):
    """The model rows of two batches as one: the conditional rows of a, of b, then (guided) the unconditional ones."""
    return torch.cat([a[:n_a], b[:n_b], a[n_a:], b[n_b:]]) if guided else torch.cat([a, b])


class Batch:
    """
    The rows a running batch holds in the model's KV cache and where each sits there: `at`, per model row (a row's
    conditional stream, then under guidance its unconditional one), its first slot ("start") and, as offsets in the
    row, its SOA and anchor; `slot`, where the next step writes. Rows are prefilled into it (start, join), leave it
    (drop), and every step reads it through pos, valid and each cache's windows (layout).
    """

    def __init__(self, model, guided, compiled):
        self.model, self.cfg, self.guided, self.compiled = model, model.config, guided, compiled
        self.device = model.wte.weight.device
        self.rows, self.at, self.slot = [], None, 0  # the stream's rows in the batch, in model-row order

    def model_rows(self, places, n):
        """The model rows of the rows at places (of a batch of n): conditional ones, then unconditional ones."""
        return places + [r + n for r in places] if self.guided else places

    def positions(self, offset, at):
        anchored = self.cfg.anchor_continuations  # (a row without an anchor has one at an offset it never reaches)
        return stream_positions(offset, at["soa"], self.cfg.audio_pos_rate, self.cfg.align_audio_pos,
                                at["anchor_at"] if anchored else None, at["anchor_byte"] if anchored else None)

    def prompts(self, specs, caps):
        """Left-pad the prompts of specs [(prompt, uncond, anchor)]. -> idx, at (see the class), anchors or None."""
        rows = [p for p, _, _ in specs] + ([u for _, u, _ in specs] if self.guided else [])
        for (p, _, _), cap in zip(specs, caps):  # (an unconditional prompt is its prompt without the text)
            if len(p) + cap > self.cfg.block_size:
                raise ValueError(f"prompt ({len(p)}) + max_new_tokens ({cap}) exceeds block_size "
                                 f"{self.cfg.block_size}")
        device = self.device
        lengths = torch.tensor([len(p) for p in rows], device=device)[:, None]
        P = int(lengths.max())
        idx = torch.full((len(rows), P), PAD, dtype=torch.long, device=device)
        for i, p in enumerate(rows):
            idx[i, P - len(p):] = p.to(device)
        marks = [a for _, _, a in specs] + [None] * (len(rows) - len(specs))
        anchored = torch.tensor([a is not None for a in marks], device=device)[:, None]
        at = {"start": P - lengths,
              "soa": torch.tensor([int((p == SOA).nonzero()[0]) for p in rows], device=device)[:, None],
              "anchor_at": torch.where(anchored, lengths - 1, self.cfg.block_size),  # the prompt's last audio token
              "anchor_byte": torch.tensor([a or 0 for a in marks], device=device)[:, None]}
        anchor = None
        if self.cfg.anchor_continuations and any(a is not None for a in marks):  # marked as data.get_batch marks it
            anchor = torch.full((len(rows), P), -1, dtype=torch.long, device=device)
            anchor[:, P - 1] = torch.where(anchored[:, 0], at["anchor_byte"][:, 0], -1)
        return idx, at, anchor

    def prefill(self, specs, caps, width):
        """
        Prefill the prompts of specs into fresh caches of width slots (the model's now): -> the last hidden state
        of each model row, at, and P, the longest prompt. Rows of similar lengths are prefilled together, each group
        from its longest prompt's first slot: a join of a voice prompt's rows and plain texts' would otherwise spend
        a third of its work on padding.
        """
        idx, at, anchor = self.prompts(specs, caps)
        R, P = idx.shape
        slots = torch.arange(P, device=self.device)
        pos, valid = self.positions(slots - at["start"], at), slots >= at["start"]  # a prompt sees its own slots
        full = self.model.setup_cache(R, width)
        starts = at["start"][:, 0].tolist()
        order = sorted(range(R), key=starts.__getitem__)
        groups = row_windows([starts[i] for i in order], PREFILL_CALL.get(self.device.type, math.inf))
        if len(groups) == 1:
            return prefill(self.model, idx, pos, valid, P, anchor), at, P
        h = None
        for a, b, lo in groups:
            g = torch.tensor(order[a:b], device=self.device)
            self.model.setup_cache(b - a, P - lo)
            hg = prefill(self.model, idx[g, lo:], pos[g, lo:], valid[g, lo:], P - lo,
                         None if anchor is None else anchor[g, lo:])
            h = hg.new_empty(R, hg.shape[-1]) if h is None else h
            h[g] = hg
            for cache, group in zip(full, self.model.caches()):
                cache.paste(group, g, lo)
        self.model.use_caches(full)
        return h, at, P

    def start(self, rows, specs, caps, width):
        """A batch anew: these rows, prefilled into caches of width slots. -> their last hidden states."""
        h, self.at, self.slot = self.prefill(specs, caps, width)  # the next step writes after the longest prompt
        self.rows = rows
        self.layout()
        return h

    def layout(self):
        """For the cache as it is: per model row its position at each slot and the slots it may read, and (eager
        steps) each cache's windows: the runs of rows that read it from one slot on (row_windows)."""
        width = self.model.caches()[0].k.shape[2]
        self.slots = torch.arange(width, device=self.device)
        self.pos, self.valid = self.positions(self.slots - self.at["start"], self.at), self.slots >= self.at["start"]
        windows = None if self.compiled else row_windows(self.at["start"][:, 0].tolist(),
                                                         WINDOW_CALL.get(self.device.type, math.inf))
        for cache in self.model.caches():
            cache.windows = windows

    def step(self, decode_step, token, sampling, noise):
        """One decode step at the next slot: eager steps attend to (and read) the filled slots only; compiled ones
        keep one static shape (one graph)."""
        s = self.slot
        valid = self.valid if self.compiled else self.valid[:, :s + 1]
        token = decode_step(self.model, token, self.pos[:, s:s + 1], valid, self.slots[s:s + 1], sampling, noise)
        self.slot += 1
        return token

    def drop(self, going, token):
        """Keep only the rows going (and their tokens), and cut the slots no row reads any more."""
        place = {j: n for n, j in enumerate(self.rows)}
        kept = [place[j] for j in going]
        picked = torch.tensor(self.model_rows(kept, len(self.rows)), dtype=torch.long, device=self.device)
        self.at = {k: v[picked] for k, v in self.at.items()}
        cut = int(self.at["start"].min()) if going else 0  # the cache starts at the first slot a row reads
        for cache in self.model.caches():
            cache.keep(picked, cut)
        self.at["start"], self.slot, self.rows = self.at["start"] - cut, self.slot - cut, going
        if going:
            self.layout()
        return token[torch.tensor(kept, dtype=torch.long, device=self.device)]

    def join(self, rows, specs, caps):
        """
        Rows joining the running batch: each prompt is prefilled on its own and laid into the cache so that it ends
        where the running rows are, so it samples what it would alone. The cache grows at the front where a prompt
        is longer than the slots passed, and at the end for the new rows' steps. -> their last hidden states.
        """
        running, n_rows, n_new = self.model.caches(), len(self.rows), len(rows)
        width = running[0].k.shape[2]
        h, new, P = self.prefill(specs, caps, max(len(p) for p, _, _ in specs))
        joined = self.model.caches()
        front = max(0, P - self.slot)  # slots before the running rows' first, so that the prompts fit
        end = max(width + front, self.slot + front + max(caps))  # and after, for the new rows' steps
        n = n_rows + n_new
        merged = self.model.setup_cache(len(self.model_rows(list(range(n)), n)), end)
        theirs = torch.tensor(self.model_rows(list(range(n_rows)), n), device=self.device)
        ours = torch.tensor(self.model_rows(list(range(n_rows, n)), n), device=self.device)
        for cache, old, fresh in zip(merged, running, joined):
            cache.paste(old, theirs, front)
            cache.paste(fresh, ours, self.slot + front - P)
        new["start"] = new["start"] + self.slot + front - P
        self.at = {k: interleave(v + (front if k == "start" else 0), new[k], n_rows, n_new, self.guided)
                   for k, v in self.at.items()}
        self.rows, self.slot = self.rows + rows, self.slot + front
        self.layout()
        return h


@torch.no_grad()
def stream(model, prompts, max_new_tokens, sampling=Sampling(), generators=None, uncond_prompts=None,
           decode_step=None, anchors=None, join=None, capacity=0, stop=None):
    """
    Continue each prompt (a 1-D LongTensor from model.make_prompt) with audio tokens, yielding the next token of every
    row ([rows] LongTensor, EOA once a row is done) as soon as it is sampled.
    Prompts of different lengths are left-padded into one batch: pads are masked out and each row keeps its own
    RoPE positions, so a row's output is the same as when it is sampled alone.
    max_new_tokens: the most tokens a row may take, one for all or one per prompt; then it yields EOA.
    Classifier-free guidance (sampling.cfg_scale != 1): uncond_prompts (the same prompts without their text) run in
    the same batch, and logits = uncond + cfg_scale * (cond - uncond) at each stage of the head.
    generators: per prompt, the torch.Generator its draws come from (draw_noise; adjacent prompts may share one: a
    text's best_of samples), so that each row samples the same whatever its batch mates; None: torch's global random
    state, one stream for the batch. decode_step: a compile_decode_step(), or None for the eager decode_and_sample.
    anchors: per prompt, None or (for one that ends in a voice prompt's audio) the byte of its text where the new
    speech starts; with GPTConfig.anchor_continuations the new audio's positions restart there.
    join (eager steps only): continuous batching. After each step, join(free) is called with the rows that are free
    (their end yielded, or never used: yields are max(len(prompts), capacity) wide) and returns up to len(free) new
    rows, each (prompt, unconditional prompt or None, generator or None, anchor, max_new_tokens); the n-th is row
    free[n] from the next yield on. Its prompt is prefilled on its own and laid into the KV cache to end where the
    running rows are, so it samples what it would alone. The stream ends once no row runs and join brings none.
    stop: None, or a set the caller may add rows to between two yields: they end at once (a client gone), without
    an EOA; the stream empties it.
    """
    cfg, device, B = model.config, model.wte.weight.device, len(prompts)
    guided = sampling.cfg_scale != 1.0
    if guided and (uncond_prompts is None or len(uncond_prompts) != B):
        raise ValueError("classifier-free guidance needs one unconditional prompt per prompt")
    caps = [max_new_tokens] * B if isinstance(max_new_tokens, int) else list(max_new_tokens)
    per_text = generators is not None and sampling.temperature > 0
    if per_text and len(generators) != B:
        raise ValueError(f"{len(generators)} generators for {B} prompts: give one per prompt")
    compiled = decode_step not in (None, decode_and_sample)
    if compiled and join is not None:
        raise ValueError("rows join eager steps only (decode_step=None)")
    decode_step, C = decode_step or decode_and_sample, max(B, capacity)
    rows, batch = Rows(C, caps, generators, per_text, device), Batch(model, guided, compiled)
    specs = list(zip(prompts, uncond_prompts if guided else [None] * B, anchors or [None] * B))
    total = max(len(p) for p in list(prompts) + list(uncond_prompts if guided else [])) + max(caps)
    if compiled:  # a few cache lengths, not one per call: each new shape recompiles (and records a CUDA graph)
        total = max(total, min(cfg.block_size, -(-total // 256) * 256))
    as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    try:
        token = sample_audio_token(model, batch.start(list(range(B)), specs, caps, total), sampling,
                                   rows.draws(list(range(B))))
        while True:
            out = as_tensor(rows.emit(batch.rows, token))
            yield out
            token = out[as_tensor(batch.rows)]  # a new tensor (a compiled step's output is overwritten next replay)
            rows.stop(stop or set())
            ended = [r.done for r in rows.rows]
            going = [j for j in batch.rows if not ended[j]]
            if not going and join is None:
                break
            # eager steps drop the rows that have ended from the batch (and the KV cache), a quarter of the batch at
            # a time: a step reads every row's cache, so it then costs what the rows still speaking do
            if not compiled and (len(batch.rows) - len(going) >= max(1, len(batch.rows) // 4) or not going):
                token = batch.drop(going, token)
            if any(rows.rows[j].left > 0 for j in going):  # else each row's next yield is its EOA
                rows.draw(ended)  # the rows that have ended draw no more
                token = batch.step(decode_step, token, sampling, rows.draws(batch.rows))
            free = [j for j in range(C) if ended[j] and j not in batch.rows] if join is not None else []
            joining = join(free) if free else []
            if not joining and not batch.rows:
                break
            if joining:  # (prompt, uncond, generator, anchor, max_new_tokens) each
                taken, specs, caps = rows.add(free, ended, joining), [(p, u, a) for p, u, _, a, _ in joining], \
                    [m for *_, m in joining]
                h = batch.join(taken, specs, caps) if batch.rows else \
                    batch.start(taken, specs, caps, max(len(p) for p, _, _ in specs) + max(caps))
                token = torch.cat([token, sample_audio_token(model, h, sampling, rows.draws(taken))])
    finally:
        model.clear_cache()


@torch.no_grad()
def generate(model, prompts, max_new_tokens, sampling=Sampling(), generators=None, uncond_prompts=None,
             decode_step=None, anchors=None):
    """stream() to the end: a list of 1-D LongTensors of audio ids per prompt (EOA not included)."""
    steps = list(stream(model, prompts, max_new_tokens, sampling, generators, uncond_prompts, decode_step, anchors))
    out = torch.stack(steps, 1) if steps else torch.empty(len(prompts), 0, dtype=torch.long)
    results = []
    for row in out:
        stop = (row == EOA).nonzero()
        results.append(row[: int(stop[0])] if len(stop) else row)
    return results


@torch.no_grad()
def token_logprobs(model, prompts, continuations, anchors=None):
    """
    Teacher-forced scores: per row, the log-probability of each token of a continuation (1-D audio ids, and EOA if
    it ends) after its prompt (a make_prompt stream; anchors as in stream()), in one batch of right-padded rows.
    Returns a list of 1-D float tensors. synthesize's best_of ranks samples of one text by these.
    """
    device = model.wte.weight.device
    rows = [torch.cat([p.to(device), c.to(device)]) for p, c in zip(prompts, continuations)]
    idx = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long, device=device)
    anchor = torch.full_like(idx, -1)
    for j, row in enumerate(rows):
        idx[j, :len(row)] = row
        if anchors is not None and anchors[j] is not None:
            anchor[j, len(prompts[j]) - 1] = anchors[j]  # the prompt's last audio token, as data.get_batch marks it
    h = model(idx, anchor=anchor)
    scores = []
    for j, (p, c) in enumerate(zip(prompts, continuations)):
        hj, c = h[j, len(p) - 1:len(p) - 1 + len(c)], c.to(device)  # the state before each token predicts it
        coarse = torch.where(c == EOA, N_COARSE, c // N_FINE)
        lp = model.coarse_logits(hj).log_softmax(-1).gather(1, coarse[:, None])[:, 0]
        fine = model.fine_logits(hj, coarse.clamp(max=N_COARSE - 1)).log_softmax(-1)
        scores.append(lp + torch.where(c == EOA, 0.0, fine.gather(1, (c % N_FINE)[:, None])[:, 0]))
    return scores
