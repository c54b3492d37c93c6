"""
The Dirt model: one decoder-only Transformer that reads the UTF-8 bytes of a text and then writes the Stable Codec
tokens of its speech, in a single stream per utterance:

    [text bytes ...] <soa> [audio tokens ...] <eoa> [<pad> ...]

The token layout (defined here and nowhere else):
    0 .. 46655          audio: a Stable Codec `1x46656_400bps` id is its own token id, so sampled ids go straight
                        to the codec decoder with no offset arithmetic
    46656 .. 46911      text: byte b is token TEXT_OFFSET + b (any UTF-8 text; no tokenizer to train or ship)
    46912               SOA, start of audio
    46913               EOA, end of audio (the one non-audio token the model may emit)
    46914               PAD, fills batches; never attended to by real tokens, never a target
    46915 .. 46975      unused: the table is padded to a multiple of 64 for fast matmuls

The output head is factored along the codec's own structure. A Stable Codec id is six base-6 FSQ digits (one per
latent dimension), so id = coarse * 216 + fine, where coarse = digits 3..5 and fine = digits 0..2. The model predicts
P(id) = P(coarse) * P(fine | coarse) with two 216-way softmaxes (EOA is a 217th coarse class). By the chain rule this
is the exact joint distribution over all 46656 ids, at 1/100 of a 46656-way head's cost: on a small model that head
would be most of the FLOPs, of the decode-step bytes and of CPU training time.

The block is a modern one (RMSNorm, RoPE, SwiGLU, optional QK-norm, grouped-query attention, no biases by default).
The loss covers audio tokens and EOA only: predicting the text is not the task. A training row may also hold several
utterances back to back (`doc` ids, see data.get_packed_batch): each keeps the positions and attention it has alone.
The KV cache is preallocated here (setup_cache); generate.py fills it: one prefill over the prompt, then a small
decode step, as in gpt-fast. This file is the network only: no sampling, no optimizer, no I/O. Its order: the token
layout, the config, positions (RoPE), the KV cache, attention, MLP, block, GPT and its factored head. Linear and
RMSNorm are nn.Linear and nn.RMSNorm with CPU fast paths (layers.py); the audio vocabulary is the codec's (codec.py).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from codec import DIMS, LEVELS, VOCAB
from layers import Linear, RMSNorm

try:  # optional: only used for training-shaped attention (whole rows, or packed rows) on CUDA in bf16/fp16
    from flash_attn import flash_attn_func, flash_attn_varlen_func
except ImportError:
    flash_attn_func = flash_attn_varlen_func = None

# --------------------------------------------------------------------------------------------------------------
# token layout

N_AUDIO = VOCAB  # the codec's ids: 46656
TEXT_OFFSET = N_AUDIO
SOA = TEXT_OFFSET + 256
EOA = SOA + 1
PAD = EOA + 1
VOCAB_SIZE = (PAD + 1 + 63) // 64 * 64  # 46976
N_FINE = LEVELS ** (DIMS // 2)  # 216: FSQ digits 0..2 of an audio id
N_COARSE = N_AUDIO // N_FINE  # 216: FSQ digits 3..5; coarse class N_COARSE means EOA


def text_to_tokens(text):
    """str (or UTF-8 bytes) -> LongTensor of text token ids."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return torch.tensor(list(data), dtype=torch.long) + TEXT_OFFSET


def make_prompt(text_tokens, audio_prefix=None):
    """The conditioning stream: text, SOA, then (for a voice prompt) audio tokens to continue from."""
    parts = [text_tokens.long(), torch.tensor([SOA])]
    if audio_prefix is not None:
        parts.append(audio_prefix.long())
    return torch.cat(parts)


# --------------------------------------------------------------------------------------------------------------
# the config


@dataclass
class GPTConfig:
    """The model's shape and layout: the one list of model settings (train.py and bench.py take theirs from it)."""

    block_size: int = 1024  # longest stream (text + audio) the model is trained on
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = 0  # grouped-query attention; 0 = same as n_head. Fewer KV heads = a smaller cache to read
    n_embd: int = 768
    mlp_ratio: float = 8 / 3  # SwiGLU hidden = mlp_ratio * n_embd, rounded up to a multiple of 64
    rope_theta: float = 10000.0
    # Near the bytes spoken per frame (~0.55 for English at 25 Hz) an audio frame sits at about the position of the
    # text it speaks: a monotonic-alignment prior for attention. 1.0 = plain positions.
    audio_pos_rate: float = 1.0  # RoPE position step per audio token after SOA
    # Frame k then sits at k * audio_pos_rate, so with the rate near bytes per frame a frame sits near its byte.
    align_audio_pos: bool = False  # audio positions restart at the text's origin (the first frame at position 0)
    # Where speech continues after a finished sentence (a voice prompt, the previous chunk of a long text, the second
    # sentence of a training utterance), the audio positions restart at the continuation's first byte, as the first
    # frame's do at byte 0. Without it the prompt's audio drifts from its text by the speaker's own rate (a slow
    # speaker falls behind the prior) and the continuation starts a word early or late.
    anchor_continuations: bool = False  # with align_audio_pos: positions restart where speech continues
    # Positions alone mark a border only where the restart is a jump: where the anchor lands near the prompt's natural
    # next position, a model without the mark re-speaks the prompt's final "." and skips words.
    mark_borders: bool = False  # with anchor_continuations: a learned vector added at each anchor
    qk_norm: bool = True  # RMSNorm on each head's queries and keys
    bias: bool = False  # biases in the linear layers
    dropout: float = 0.0
    tie_weights: bool = False  # an audio id's input vector = its coarse + fine output rows (no separate table)

    def __post_init__(self):
        """Settings that cannot build a model are a ValueError naming the setting (scripts print it as one line)."""
        positive = {k: getattr(self, k) for k in ("block_size", "n_layer", "n_head", "n_embd", "mlp_ratio",
                                                  "rope_theta", "audio_pos_rate")}
        for k, v in positive.items():
            if not v > 0:
                raise ValueError(f"{k} must be > 0, not {v}")
        if not 0 <= self.n_kv_head <= self.n_head:
            raise ValueError(f"n_kv_head must be from 0 (= n_head) to n_head ({self.n_head}), not {self.n_kv_head}")
        if self.n_kv_head == 0:
            self.n_kv_head = self.n_head
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.n_embd // self.n_head % 2:
            raise ValueError(f"the head size n_embd / n_head ({self.n_embd // self.n_head}) must be even for RoPE")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.anchor_continuations and not self.align_audio_pos:
            raise ValueError("anchor_continuations=True needs align_audio_pos=True (anchors restart aligned positions)")
        if self.mark_borders and not self.anchor_continuations:
            raise ValueError("mark_borders=True needs anchor_continuations=True (it marks the anchors)")


# --------------------------------------------------------------------------------------------------------------
# positions: RoPE, each row at its own offsets, audio positions aligned with the text


def stream_positions(offset, soa_at, rate, aligned=False, anchor_at=None, anchor_byte=None):
    """
    RoPE positions: offset within the stream up to its SOA, then rate per audio token (offset, soa_at: tensors).
    aligned: the audio restarts at the text's origin (first audio frame at 0) instead of continuing after the SOA.
    anchor_at, anchor_byte (aligned only; tensors broadcasting with offset): the offset of the last audio token of a
    finished sentence and the byte where the speech continues. From that token on the positions restart as they do
    at the SOA: it sits one step before anchor_byte, so the continuation's first frame sits at that byte.
    """
    offset = offset.float()
    origin = torch.full_like(soa_at, -rate, dtype=torch.float) if aligned else soa_at.float()
    pos = torch.where(offset > soa_at, origin + (offset - soa_at) * rate, offset)
    if anchor_at is not None:
        pos = torch.where(offset >= anchor_at, anchor_byte + (offset - anchor_at - 1) * rate, pos)
    return pos.clamp(min=0)


def anchor_offsets(anchor, offset, group, n_groups, T):
    """
    anchor [B, T]: the continuation's byte at a finished sentence's last audio token, -1 elsewhere (data.py makes
    it). -> (anchor_at, anchor_byte) [B, T] for stream_positions: the anchor's offset and byte in each position's
    group (its utterance, for packed rows), T and 0 where the group has none.
    """
    at = torch.where(anchor >= 0, offset, T)
    anchor_at = torch.full((anchor.shape[0], n_groups), T, device=anchor.device).scatter_reduce(1, group, at, "amin")
    anchor_byte = torch.zeros_like(anchor_at).scatter_reduce(1, group, anchor.clamp(min=0), "amax")
    return anchor_at.gather(1, group), anchor_byte.gather(1, group)


def packed_layout(idx, doc, rate, aligned=False, anchor=None):
    """
    Rows holding several utterances back to back (idx, doc [B, T]; an utterance is a run of equal doc ids). Returns
    what makes each utterance compute exactly what it would alone: its RoPE positions, restarting at 0 with its SOA
    found in it (pos [B, T]); the attention mask, causal and within the utterance (mask [B, 1, T, T]); and where
    each utterance starts (starts [B, T] bool). anchor [B, T]: see anchor_offsets.
    """
    B, T = idx.shape
    t = torch.arange(T, device=idx.device)
    starts = torch.ones_like(doc, dtype=torch.bool)
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    offset = t - torch.where(starts, t, 0).cummax(dim=1).values  # position within its own utterance
    seg = starts.cumsum(dim=1) - 1  # which utterance of its row
    # each utterance's first SOA as an offset within it (T if it has none, as for a whole row), spread to its tokens
    soa = torch.where(idx == SOA, offset, T)
    soa_at = torch.full_like(soa, T).scatter_reduce(1, seg, soa, "amin").gather(1, seg)
    anchor_at, anchor_byte = anchor_offsets(anchor, offset, seg, T, T) if anchor is not None else (None, None)
    pos = stream_positions(offset, soa_at, rate, aligned, anchor_at, anchor_byte)
    mask = (t[:, None] >= t[None, :]) & (seg[:, :, None] == seg[:, None, :])
    return pos, mask[:, None], starts


def rope_tables(pos, inv_freq):
    """
    cos, sin [B, T, 1, D] for apply_rope, once per forward (not per layer): pos [B, T], inv_freq [D/2]. RoPE rotates
    the pairs (x[2i], x[2i+1]) by pos * inv_freq[i]; both tables repeat each angle for the two members of its pair,
    and sin carries the sign of each member's partner term, so the rotation is two full-width products and a sum.
    """
    angles = pos.float()[..., None] * inv_freq
    cos, sin = angles.cos().repeat_interleave(2, dim=-1), angles.sin()
    return cos[:, :, None], torch.stack((-sin, sin), dim=-1).flatten(-2)[:, :, None]


def apply_rope(x, cos, sin):
    """
    x [B, T, H, D]; cos, sin from rope_tables (one position per row and step, so rows may sit at different offsets).
    out[2i] = x[2i] cos - x[2i+1] sin, out[2i+1] = x[2i+1] cos + x[2i] sin: the same products and sums, bit for bit,
    as splitting the pairs and stacking them back, with one copy (the partners swapped) instead of four half-width
    products, two sums and a stack per call. Compiled, the partners are the neighbours on either side (the same
    values): inductor vectorizes those two shifted loads, where the swap's index makes the whole loop scalar.
    """
    xf = x.float()
    if torch.compiler.is_compiling():
        even = torch.arange(xf.shape[-1], device=x.device) % 2 == 0
        partner = torch.where(even, F.pad(xf[..., 1:], (0, 1)), F.pad(xf[..., :-1], (1, 0)))
    else:
        partner = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return (xf * cos + partner * sin).type_as(x)


# --------------------------------------------------------------------------------------------------------------
# the block: attention (with generation's KV cache), MLP


class KVCache(nn.Module):
    """
    Preallocated keys and values for generation: [B, n_kv_head, slots, head_dim], written in place at input_pos.
    generate.py also keeps some of its rows, cuts slots no row reads, pastes in rows prefilled elsewhere, and may set
    windows: runs of rows [(first, end, first slot)] that each read the cache from their own first slot on, so that a
    step reads no slots a row never attends to (rows of a running batch that joined late start far to the right).
    """

    def __init__(self, batch_size, max_len, n_kv_head, head_dim, dtype, device):
        super().__init__()
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.windows = None

    def update(self, input_pos, k, v):
        self.k[:, :, input_pos] = k
        self.v[:, :, input_pos] = v
        return self.k, self.v

    def attend(self, q, k, v, mask, input_pos):
        """Write k, v [B, kv heads, T, D] at slots input_pos, then attend q [B, heads, T, D] to the slots the mask
        [B, 1, T, S] covers (the first S: the caller's mask may cover only the filled ones; then no more is read)."""
        k, v = self.update(input_pos, k, v)
        S = mask.shape[-1]
        if self.windows is None:
            return F.scaled_dot_product_attention(q, k[:, :, :S], v[:, :, :S], attn_mask=mask, enable_gqa=True)
        return torch.cat([F.scaled_dot_product_attention(q[a:b], k[a:b, :, lo:S], v[a:b, :, lo:S],
                                                         attn_mask=mask[a:b, :, :, lo:], enable_gqa=True)
                          for a, b, lo in self.windows])

    def keep(self, rows=None, first_slot=0):
        """Keep only these rows (a LongTensor; None = all) and the slots from first_slot on."""
        for name in ("k", "v"):
            x = getattr(self, name)
            setattr(self, name, (x if rows is None else x[rows])[:, :, first_slot:])

    def paste(self, other, rows, first_slot):
        """Copy another cache's rows in, as rows `rows` (a LongTensor) of this one, from slot first_slot on."""
        for name in ("k", "v"):
            x, y = getattr(self, name), getattr(other, name)
            x[rows, :, first_slot:first_slot + y.shape[2]] = y


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.n_kv_head = cfg.n_head, cfg.n_kv_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.qkv = Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * self.head_dim, bias=cfg.bias)
        self.proj = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.q_norm = RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()
        self.dropout = cfg.dropout
        self.kv_cache = None  # generation's (GPT.setup_cache)

    def forward(self, x, cos, sin, mask=None, input_pos=None, varlen=None):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=-1
        )
        q = apply_rope(self.q_norm(q.view(B, T, self.n_head, self.head_dim)), cos, sin)
        k = apply_rope(self.k_norm(k.view(B, T, self.n_kv_head, self.head_dim)), cos, sin)
        v = v.view(B, T, self.n_kv_head, self.head_dim)
        dropout = self.dropout if self.training else 0.0
        # q's dtype, not x's: under autocast x (the normed fp32 residual stream) stays fp32 while q is bf16/fp16
        flash = self.kv_cache is None and flash_attn_func is not None and q.is_cuda and q.dtype in (
            torch.float16,
            torch.bfloat16,
        )
        if flash and mask is None:
            y = flash_attn_func(q, k, v, dropout_p=dropout, causal=True).view(B, T, -1)
            return self.proj(y)
        if flash and varlen is not None:
            # packed rows: every utterance is its own sequence (cu_seqlens: where each starts in the flattened
            # batch), so flash-attn skips the blocks the mask would zero instead of computing them; the documented
            # varlen call on the same q, k, v as flash_attn_func (no CPU test reaches it: flash-attn needs CUDA)
            cu_seqlens, max_len = varlen
            y = flash_attn_varlen_func(q.reshape(B * T, self.n_head, self.head_dim),
                                       k.reshape(B * T, self.n_kv_head, self.head_dim),
                                       v.reshape(B * T, self.n_kv_head, self.head_dim),
                                       cu_seqlens, cu_seqlens, max_len, max_len, dropout_p=dropout, causal=True)
            return self.proj(y.view(B, T, -1))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.kv_cache is not None:  # generation
            y = self.kv_cache.attend(q, k, v, mask, input_pos)
        elif mask is None:  # training: plain causal attention over the whole row
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = int(math.ceil(cfg.mlp_ratio * cfg.n_embd / 64) * 64)
        self.gate_up = Linear(cfg.n_embd, 2 * hidden, bias=cfg.bias)
        self.down = Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.dropout(self.down(F.silu(gate) * up))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.n_embd)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, mask=None, input_pos=None, varlen=None):
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, mask, input_pos, varlen))
        return x + self.mlp(self.mlp_norm(x))


# --------------------------------------------------------------------------------------------------------------
# the model and its factored head


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(VOCAB_SIZE, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd)
        self.coarse_head = Linear(cfg.n_embd, N_COARSE + 1, bias=False)  # + EOA
        # FSQ-structured embeddings of an id's high and low digits: added to an audio token's own input vector (rare
        # ids then share what their digits have in common), and the high digits tell the fine head which coarse
        # class was chosen
        self.coarse_embed = nn.Embedding(N_COARSE, cfg.n_embd)
        self.fine_embed = nn.Embedding(N_FINE, cfg.n_embd)
        self.fine_norm = RMSNorm(cfg.n_embd)
        self.fine_head = Linear(cfg.n_embd, N_FINE, bias=False)
        self.border = nn.Parameter(torch.zeros(cfg.n_embd)) if cfg.mark_borders else None
        head_dim = cfg.n_embd // cfg.n_head
        inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("rope_inv_freq", inv_freq, persistent=False)
        # set by train.py: in training, keep only each block's input and recompute the rest in the backward pass
        # (activation memory of one block instead of all of them, for one more forward pass)
        self.activation_checkpointing = False
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("proj.weight") or name.endswith("down.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameter count; by default without the token embedding (it costs no matmul FLOPs)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel() + self.coarse_embed.weight.numel() + self.fine_embed.weight.numel()
        return n

    def embed(self, idx):
        """Token vectors; an audio id's also gets its digit embeddings (and, tied, its output rows for its own)."""
        x = self.wte(idx)  # (with sparse gradients, outside a compiled graph: optim.reuse_table_grad)
        audio = (idx < N_AUDIO)[..., None]
        a = idx.clamp(max=N_AUDIO - 1)
        if self.config.tie_weights:
            tied = self.coarse_head.weight[a // N_FINE] + self.fine_head.weight[a % N_FINE]
            x = torch.where(audio, tied.to(x.dtype), x)
        digits = self.coarse_embed(a // N_FINE) + self.fine_embed(a % N_FINE)
        return x + digits * audio

    def forward(self, idx, targets=None, pos=None, mask=None, input_pos=None, doc=None, anchor=None):
        """
        idx [B, T] token ids. targets [B, T] next-token ids with -1 where there is no loss (text, padding).
        With targets: returns the mean negative log-likelihood of the target audio ids and EOAs (a scalar).
        Without: returns the final hidden states [B, T, n_embd]; coarse_logits / fine_logits turn them into
        distributions. Generation also passes pos [B, T] (each row's own positions), mask [B, 1, T, S] (which cache
        slots each query may see) and input_pos [T] (the cache slots written).
        doc [B, T]: packed training rows (data.get_packed_batch), an utterance per run of equal ids. Each utterance
        gets the positions it has alone and attends only to itself: the row computes what they would one by one.
        anchor [B, T]: continuation anchors (data.py; see GPTConfig.anchor_continuations), or None. They set the
        positions unless pos is given (generation), and GPTConfig.mark_borders marks them in both cases.
        """
        anchor = anchor if self.config.anchor_continuations else None
        varlen = None
        if pos is None:
            assert mask is None, "generation gives both its own pos and mask"
            pos, mask, varlen = self.layout(idx, doc, anchor)
        else:
            assert doc is None, "doc is for training rows; generation gives its own pos and mask"
        cos, sin = rope_tables(pos, self.rope_inv_freq)
        x = self.embed(idx)
        if self.border is not None and anchor is not None:
            x = x + (anchor >= 0)[..., None] * self.border.to(x.dtype)
        x = self.drop(x)
        for block in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, mask, input_pos, varlen, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, input_pos, varlen)
        x = self.norm(x)
        return x if targets is None else self.loss(x, targets)

    def layout(self, idx, doc=None, anchor=None):
        """
        Training rows' RoPE positions [B, T], attention mask (None: plain causal) and flash-attn's varlen spans:
        whole streams, each with its own first SOA; or, given doc, packed utterances, each as it is alone.
        """
        B, T = idx.shape
        cfg = self.config
        assert T <= cfg.block_size, f"sequence of {T} exceeds block_size {cfg.block_size}"
        if doc is not None:
            pos, mask, starts = packed_layout(idx, doc, cfg.audio_pos_rate, cfg.align_audio_pos, anchor)
            varlen = None
            if flash_attn_varlen_func is not None and idx.is_cuda:  # where each utterance starts, flattened
                cu_seqlens = F.pad(starts.flatten().nonzero().flatten(), (0, 1), value=B * T).int()
                varlen = (cu_seqlens, int(cu_seqlens.diff().max()))
            return pos, mask, varlen
        offset = torch.arange(T, device=idx.device).expand(B, T)
        soa_at = torch.where(idx == SOA, offset, T).min(dim=1, keepdim=True).values
        anchor_at = anchor_byte = None
        if anchor is not None:  # one utterance per row: one group
            anchor_at, anchor_byte = anchor_offsets(anchor, offset, torch.zeros_like(offset), 1, T)
        return stream_positions(offset, soa_at, cfg.audio_pos_rate, cfg.align_audio_pos, anchor_at, anchor_byte), \
            None, None

    # the factored head: P(id) = P(coarse) * P(fine | coarse)

    def loss(self, x, targets):
        """The mean negative log-likelihood of the target audio ids and EOAs (targets >= 0) after hidden states x."""
        keep = targets >= 0
        h, t = x[keep], targets[keep]
        coarse = torch.where(t == EOA, N_COARSE, t // N_FINE)
        loss = F.cross_entropy(self.coarse_logits(h), coarse, reduction="sum")
        audio = t < N_AUDIO
        loss = loss + F.cross_entropy(self.fine_logits(h[audio], coarse[audio]), t[audio] % N_FINE, reduction="sum")
        return loss / max(1, len(t))

    def coarse_logits(self, h):
        """[..., n_embd] -> [..., 217] logits over FSQ digits 3..5 of the next id, and EOA (the last class)."""
        return self.coarse_head(h).float()

    def fine_logits(self, h, coarse):
        """[..., n_embd] and the chosen coarse class [...] -> [..., 216] logits over FSQ digits 0..2."""
        return self.fine_head(self.fine_norm(h + self.coarse_embed(coarse))).float()

    def flops_per_token(self, seq_len):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 * L * d * T."""
        cfg = self.config
        return 6 * self.get_num_params() + 12 * cfg.n_layer * cfg.n_embd * seq_len

    def estimate_mfu(self, tokens_per_iter, seq_len, dt, peak_flops):
        """Model FLOPs utilisation: achieved training FLOP/s over the device's peak (bf16 dense)."""
        return self.flops_per_token(seq_len) * tokens_per_iter / dt / peak_flops

    # generation's KV cache (generate.py fills it)

    def setup_cache(self, batch_size, max_len, dtype=None, device=None):
        """
        Allocate a KV cache per block; generation then writes into it in place. max_len may exceed block_size: each
        row has its own positions, and rows of a batch may start at different slots. Returns the caches.
        """
        dtype = dtype or self.wte.weight.dtype
        device = device or self.wte.weight.device
        a = self.blocks[0].attn
        return self.use_caches([KVCache(batch_size, max_len, a.n_kv_head, a.head_dim, dtype, device)
                                for _ in self.blocks])

    def caches(self):
        """Each block's KVCache, in order."""
        return [block.attn.kv_cache for block in self.blocks]

    def use_caches(self, caches):
        """Give each block its KVCache (None: none, as in training). Returns them."""
        for block, cache in zip(self.blocks, caches or [None] * len(self.blocks)):
            block.attn.kv_cache = cache
        return caches

    def clear_cache(self):
        self.use_caches(None)
