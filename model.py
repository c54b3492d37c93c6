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
Generation follows gpt-fast: a preallocated KV cache, one `prefill` over the prompt, then a small `decode_and_sample`
step (feed a token, sample the next) that `torch.compile` turns into one CUDA graph. This file has no I/O and no
training logic.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

try:  # optional: only used for training-shaped attention (whole rows, or packed rows) on CUDA in bf16/fp16
    from flash_attn import flash_attn_func, flash_attn_varlen_func
except ImportError:
    flash_attn_func = flash_attn_varlen_func = None

# --------------------------------------------------------------------------------------------------------------
# token layout

N_AUDIO = 46656
TEXT_OFFSET = N_AUDIO
SOA = TEXT_OFFSET + 256
EOA = SOA + 1
PAD = EOA + 1
VOCAB_SIZE = (PAD + 1 + 63) // 64 * 64  # 46976
N_FINE = 216  # FSQ digits 0..2 of an audio id
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


# dense bf16 peak FLOP/s by GPU name, for MFU (train.py, bench.py); the first name found in the device's name wins
GPU_PEAK_FLOPS = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("4090", 165e12), ("L40", 181e12),
                  ("A10", 125e12), ("L4", 121e12), ("3090", 71e12), ("V100", 125e12))

# --------------------------------------------------------------------------------------------------------------
# model


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest stream (text + audio) the model is trained on
    vocab_size: int = VOCAB_SIZE
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = 0  # grouped-query attention; 0 = same as n_head. Fewer KV heads = a smaller cache to read
    n_embd: int = 768
    mlp_ratio: float = 8 / 3  # SwiGLU hidden = mlp_ratio * n_embd, rounded up to a multiple of 64
    rope_theta: float = 10000.0
    # RoPE position step per audio token after SOA. Near the bytes spoken per frame (~0.55 for English at 25 Hz), an
    # audio frame sits at about the position of the text it speaks: a monotonic-alignment prior for attention. An
    # experiment knob: on the synthetic corpus 0.55 learned no faster than 1.0 over 300 steps. 1.0 = plain positions.
    audio_pos_rate: float = 1.0
    # Audio positions restart at the text's origin: the first audio frame sits at position 0 (the first byte), frame
    # k at k * audio_pos_rate, so with the rate near bytes per frame a frame sits near the byte it speaks.
    align_audio_pos: bool = False
    # With align_audio_pos: where speech continues after a finished sentence (a voice prompt, the previous chunk of a
    # long text, the second sentence of a training utterance), the audio positions restart at the continuation's first
    # byte, as the first frame's do at byte 0. Without it the prompt's audio drifts from its text by the speaker's
    # own rate (a slow speaker falls behind the prior) and the continuation starts a word early or late.
    anchor_continuations: bool = False
    # With anchor_continuations: a learned vector added to the input at each anchor (a finished sentence's last audio
    # token). Positions alone mark a border only where the restart is a jump: where the anchor lands near the prompt's
    # natural next position, a model without the mark re-speaks the prompt's final "." and skips words.
    mark_borders: bool = False
    qk_norm: bool = False
    bias: bool = False
    dropout: float = 0.0
    tie_weights: bool = False  # an audio id's input vector = its coarse + fine output rows (no separate table)

    def __post_init__(self):
        if self.n_kv_head == 0:
            self.n_kv_head = self.n_head
        assert self.n_embd % self.n_head == 0, "n_embd must be divisible by n_head"
        assert self.n_head % self.n_kv_head == 0, "n_head must be a multiple of n_kv_head"
        assert self.vocab_size >= PAD + 1, f"vocab_size must cover the token layout ({PAD + 1})"
        assert self.align_audio_pos or not self.anchor_continuations, "anchor_continuations needs align_audio_pos"
        assert self.anchor_continuations or not self.mark_borders, "mark_borders needs anchor_continuations"


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


def apply_rope(x, cos, sin):
    """x [B, T, H, D]; cos/sin [B, T, D/2] (one position per row and step, so rows may sit at different offsets)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


class KVCache(nn.Module):
    """Preallocated keys and values for generation: [B, n_kv_head, max_len, head_dim], written in place."""

    def __init__(self, batch_size, max_len, n_kv_head, head_dim, dtype, device):
        super().__init__()
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos, k, v):
        self.k[:, :, input_pos] = k
        self.v[:, :, input_pos] = v
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.n_kv_head = cfg.n_head, cfg.n_kv_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * self.head_dim, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.q_norm = nn.RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()
        self.dropout = cfg.dropout
        self.kv_cache = None

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
            # batch), so flash-attn skips the blocks the mask would zero instead of computing them. Untested here
            # (no GPU in development): it is the documented varlen call on the same q, k, v as flash_attn_func
            cu_seqlens, max_len = varlen
            y = flash_attn_varlen_func(q.reshape(B * T, self.n_head, self.head_dim),
                                       k.reshape(B * T, self.n_kv_head, self.head_dim),
                                       v.reshape(B * T, self.n_kv_head, self.head_dim),
                                       cu_seqlens, cu_seqlens, max_len, max_len, dropout_p=dropout, causal=True)
            return self.proj(y.view(B, T, -1))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
            S = mask.shape[-1]  # the caller's mask may cover only the filled slots: then read no more of the cache
            k, v = k[:, :, :S], v[:, :, :S]
        if mask is None:  # training: plain causal attention over the whole row
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = int(math.ceil(cfg.mlp_ratio * cfg.n_embd / 64) * 64)
        self.gate_up = nn.Linear(cfg.n_embd, 2 * hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.dropout(self.down(F.silu(gate) * up))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.n_embd)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, mask=None, input_pos=None, varlen=None):
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, mask, input_pos, varlen))
        return x + self.mlp(self.mlp_norm(x))


def newton_schulz(g, steps=5, eps=1e-7):
    """
    ~U V^T for each g = U S V^T in a batch [..., m, n]: Muon's quintic Newton-Schulz iteration (Keller Jordan's
    coefficients, as in torch.optim.Muon). bf16 on CUDA, as there; float32 elsewhere, since a CPU without bf16 units
    emulates bf16 matmuls: torch.optim.Muon's fixed bf16 made a synthetic-corpus step on this project's 2-core CPU 4x
    slower.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(-2) > x.size(-1)
    x = x.mT if tall else x
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a) if x.dim() == 3 \
            else torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """
    Muon (https://kellerjordan.github.io/posts/muon/) for 2-D weight matrices: Nesterov momentum, orthogonalised,
    so every direction of the update moves by about the same amount. The step is scaled by 0.2 * sqrt(max(shape))
    to match AdamW's update size ("match_rms_adamw", Moonshot's recipe), so it shares AdamW's learning rate; weight
    decay is decoupled. The same update as torch.optim.Muon(adjust_lr_fn="match_rms_adamw"), but float32 on CPU,
    and matrices of one shape (a block's qkv in every layer, ...) are orthogonalised together in one batched
    iteration: a third less time than one by one for the synthetic model on CPU, where Newton-Schulz is a fifth of
    a step.
    """

    def __init__(self, params, lr, weight_decay=0.0, momentum=0.95):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            by_shape = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for shape, params in by_shape.items():
                grads = [p.grad for p in params]
                bufs = []
                for p in params:
                    if "momentum_buffer" not in self.state[p]:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                    bufs.append(self.state[p]["momentum_buffer"])
                torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
                nesterov = torch.stack(torch._foreach_lerp(grads, bufs, group["momentum"]))
                updates = newton_schulz(nesterov).unbind(0)
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
                torch._foreach_add_(params, updates, alpha=-group["lr"] * 0.2 * math.sqrt(max(shape)))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.n_embd)
        self.coarse_head = nn.Linear(cfg.n_embd, N_COARSE + 1, bias=False)  # + EOA
        # FSQ-structured embeddings of an id's high and low digits: added to an audio token's own input vector (rare
        # ids then share what their digits have in common), and the high digits tell the fine head which coarse
        # class was chosen
        self.coarse_embed = nn.Embedding(N_COARSE, cfg.n_embd)
        self.fine_embed = nn.Embedding(N_FINE, cfg.n_embd)
        self.fine_norm = nn.RMSNorm(cfg.n_embd)
        self.fine_head = nn.Linear(cfg.n_embd, N_FINE, bias=False)
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
        x = self.wte(idx)
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
        B, T = idx.shape
        varlen = None
        anchor = anchor if self.config.anchor_continuations else None
        if doc is not None:
            assert pos is None and mask is None, "doc is for training rows; generation gives its own pos and mask"
            assert T <= self.config.block_size, f"sequence of {T} exceeds block_size {self.config.block_size}"
            pos, mask, starts = packed_layout(idx, doc, self.config.audio_pos_rate, self.config.align_audio_pos,
                                              anchor)
            if flash_attn_varlen_func is not None and idx.is_cuda:  # where each utterance starts, flattened
                cu_seqlens = F.pad(starts.flatten().nonzero().flatten(), (0, 1), value=B * T).int()
                varlen = (cu_seqlens, int(cu_seqlens.diff().max()))
        elif pos is None:  # a batch of whole streams: each row's SOA is its first one
            assert T <= self.config.block_size, f"sequence of {T} exceeds block_size {self.config.block_size}"
            offset = torch.arange(T, device=idx.device).expand(B, T)
            soa_at = torch.where(idx == SOA, offset, T).min(dim=1, keepdim=True).values
            anchor_at = anchor_byte = None
            if anchor is not None:  # one utterance per row: one group
                anchor_at, anchor_byte = anchor_offsets(anchor, offset, torch.zeros_like(offset), 1, T)
            pos = stream_positions(offset, soa_at, self.config.audio_pos_rate, self.config.align_audio_pos,
                                   anchor_at, anchor_byte)
        angles = pos.float()[..., None] * self.rope_inv_freq
        cos, sin = angles.cos(), angles.sin()
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
        if targets is None:
            return x
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

    # ----------------------------------------------------------------------------------------------------------
    # training helpers

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, optimizer="adamw"):
        """
        -> a list of optimizers, stepped together. 'adamw': AdamW for everything; matrices (embeddings included)
        decay, norms and biases do not, as in nanoGPT. Fused on CUDA and CPU: on CPU the unfused update of the
        6M-entry embedding table was a fifth of a synthetic-corpus step (45 -> 9 ms).
        'muon': Muon (below) for the blocks' weight matrices, AdamW for the embeddings, heads and norms, as in the
        modded-nanoGPT speedruns; one learning_rate and schedule serve both.
        """
        if optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be 'adamw' or 'muon', not {optimizer!r}")
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        hidden = [p for n, p in named if optimizer == "muon" and n.startswith("blocks.") and p.dim() == 2]
        rest = [p for n, p in named if optimizer != "muon" or not (n.startswith("blocks.") and p.dim() == 2)]
        groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
        optimizers = [torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))]
        if hidden:
            optimizers.append(Muon(hidden, lr=learning_rate, weight_decay=weight_decay))
        return optimizers

    def flops_per_token(self, seq_len):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 * L * d * T."""
        cfg = self.config
        return 6 * self.get_num_params() + 12 * cfg.n_layer * cfg.n_embd * seq_len

    def estimate_mfu(self, tokens_per_iter, seq_len, dt, peak_flops):
        """Model FLOPs utilisation: achieved training FLOP/s over the device's peak (bf16 dense)."""
        return self.flops_per_token(seq_len) * tokens_per_iter / dt / peak_flops

    # ----------------------------------------------------------------------------------------------------------
    # generation (gpt-fast shape)

    def setup_cache(self, batch_size, max_len, dtype=None, device=None):
        """Allocate the KV cache once; generation then writes into it in place."""
        assert max_len <= self.config.block_size, f"max_len {max_len} exceeds block_size {self.config.block_size}"
        dtype = dtype or self.wte.weight.dtype
        device = device or self.wte.weight.device
        for block in self.blocks:
            a = block.attn
            a.kv_cache = KVCache(batch_size, max_len, a.n_kv_head, a.head_dim, dtype, device)

    def clear_cache(self):
        for block in self.blocks:
            block.attn.kv_cache = None

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None,
                 uncond_prompts=None, cfg_scale=1.0, decode_step=None, anchors=None):
        """
        Continue each prompt (a 1-D LongTensor from make_prompt) with audio tokens until it emits EOA or has
        written max_new_tokens. Returns a list of 1-D LongTensors of audio ids (EOA not included).
        See stream() for the arguments.
        """
        steps = list(self.stream(prompts, max_new_tokens, temperature, top_k, top_p, generator, uncond_prompts,
                                 cfg_scale, decode_step, anchors))
        out = torch.stack(steps, 1) if steps else torch.empty(len(prompts), 0, dtype=torch.long)
        results = []
        for row in out:
            stop = (row == EOA).nonzero()
            results.append(row[: int(stop[0])] if len(stop) else row)
        return results

    @torch.no_grad()
    def token_logprobs(self, prompts, continuations, anchors=None):
        """
        Teacher-forced scores: per row, the log-probability of each token of a continuation (1-D audio ids, and EOA
        if it ends) after its prompt (a make_prompt stream; anchors as in stream()), in one batch of right-padded
        rows. Returns a list of 1-D float tensors. sample.py --best_of ranks samples of one text by these.
        """
        device = self.wte.weight.device
        rows = [torch.cat([p.to(device), c.to(device)]) for p, c in zip(prompts, continuations)]
        idx = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long, device=device)
        anchor = torch.full_like(idx, -1)
        for j, row in enumerate(rows):
            idx[j, :len(row)] = row
            if anchors is not None and anchors[j] is not None:
                anchor[j, len(prompts[j]) - 1] = anchors[j]  # the prompt's last audio token, as data.get_batch marks
        h = self(idx, anchor=anchor)
        scores = []
        for j, (p, c) in enumerate(zip(prompts, continuations)):
            hj, c = h[j, len(p) - 1:len(p) - 1 + len(c)], c.to(device)  # the state before each token predicts it
            coarse = torch.where(c == EOA, N_COARSE, c // N_FINE)
            lp = self.coarse_logits(hj).log_softmax(-1).gather(1, coarse[:, None])[:, 0]
            fine = self.fine_logits(hj, coarse.clamp(max=N_COARSE - 1)).log_softmax(-1)
            scores.append(lp + torch.where(c == EOA, 0.0, fine.gather(1, (c % N_FINE)[:, None])[:, 0]))
        return scores

    @torch.no_grad()
    def stream(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None,
               uncond_prompts=None, cfg_scale=1.0, decode_step=None, anchors=None):
        """
        Yield the next token of every row ([B] LongTensor, EOA once a row is done) as soon as it is sampled.
        Prompts of different lengths are left-padded into one batch: pads are masked out and each row keeps its own
        RoPE positions, so a row's output is the same as when it is sampled alone.
        Classifier-free guidance: uncond_prompts (the same prompts without their text) run in the same batch, and
        logits = uncond + cfg_scale * (cond - uncond) at each stage of the head.
        decode_step: a compiled `decode_and_sample` (see sample.py), or None for the eager one; compiled, it samples
        from torch's global random state (a generator cannot go into the graph): seed it with torch.manual_seed.
        anchors: per prompt, None or (for one that ends in a voice prompt's audio) the byte of its text where the new
        speech starts; with GPTConfig.anchor_continuations the new audio's positions restart there.
        """
        device = self.wte.weight.device
        B = len(prompts)
        guided = cfg_scale != 1.0
        assert not guided or (uncond_prompts is not None and len(uncond_prompts) == B), "guidance needs uncond"
        rows = list(prompts) + (list(uncond_prompts) if guided else [])
        lengths = torch.tensor([len(p) for p in rows], device=device)
        P = int(lengths.max())
        total = P + max_new_tokens
        assert total <= self.config.block_size, (
            f"prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds block_size {self.config.block_size}"
        )
        compiled = decode_step not in (None, decode_and_sample)
        if compiled:  # a few cache lengths, not one per call: each new shape recompiles (and records a CUDA graph)
            total = min(self.config.block_size, -(-total // 256) * 256)
        pad = P - lengths  # left padding per row
        idx = torch.full((len(rows), P), PAD, dtype=torch.long, device=device)
        for i, p in enumerate(rows):
            idx[i, pad[i]:] = p.to(device)
        slots = torch.arange(total, device=device)
        valid = slots[None, :] >= pad[:, None]  # [rows, total]: which cache slots hold real tokens, per row
        soa_at = torch.tensor([int((p == SOA).nonzero()[0]) for p in rows], device=device)[:, None]
        anchor_at = anchor_byte = None
        if self.config.anchor_continuations and anchors is not None and any(a is not None for a in anchors):
            anchored = torch.tensor([a is not None for a in anchors] + [False] * (len(rows) - B), device=device)
            anchor_at = torch.where(anchored, lengths - 1, total)[:, None]  # the prompt's last audio token
            anchor_byte = torch.tensor([a or 0 for a in anchors] + [0] * (len(rows) - B), device=device)[:, None]
        pos_all = stream_positions(slots[None, :] - pad[:, None], soa_at, self.config.audio_pos_rate,
                                   self.config.align_audio_pos, anchor_at, anchor_byte)

        self.setup_cache(len(rows), total)
        decode_step = decode_step or decode_and_sample
        sampling = (temperature, top_k, top_p, cfg_scale, None if compiled else generator)
        try:
            anchor = None
            if anchor_at is not None:  # at each anchored prompt's last token, as data.get_batch marks it
                anchor = torch.full((len(rows), P), -1, dtype=torch.long, device=device)
                anchor[:, P - 1] = torch.where(anchored, anchor_byte[:, 0], -1)
            h = prefill(self, idx, pos_all[:, :P], valid[:, :P], P, anchor)  # the prompt sees the prompt's slots only
            token = sample_audio_token(self, h, temperature, top_k, top_p, generator, cfg_scale)
            done = torch.zeros(B, dtype=torch.bool, device=device)
            for t in range(max_new_tokens):
                token = torch.where(done, torch.full_like(token, EOA), token)  # a new tensor: a graph's output is not
                done |= token == EOA
                yield token
                if bool(done.all()) or t == max_new_tokens - 1:
                    break
                slot = P + t
                # eager: attend to (and read) the filled slots only; compiled: one static shape, one graph
                seen = valid if compiled else valid[:, :slot + 1]
                token = decode_step(self, token, pos_all[:, slot:slot + 1], seen, slots[slot:slot + 1], *sampling)
        finally:
            self.clear_cache()


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


def decode_and_sample(model, token, pos, valid, input_pos, temperature=1.0, top_k=None, top_p=None, cfg_scale=1.0,
                      generator=None):
    """
    One generation step, the unit sample.py --compile turns into a CUDA graph: feed each row's last token [B] (twice
    under guidance: the conditional rows, then the unconditional), then sample the next one [B]. Sampling in the
    graph too, not only the decode: on an H100 the eager sampling's ~25 small launches took longer than the whole
    compiled decode (README's speed table).
    """
    feed = token.repeat(2) if cfg_scale != 1.0 else token
    h = decode_one_token(model, feed[:, None], pos, valid, input_pos)
    return sample_audio_token(model, h, temperature, top_k, top_p, generator, cfg_scale)


def decode_compile_options(device):
    """
    torch.compile options for decode_and_sample on a device: None (inductor's defaults) on a CPU. On CUDA the step is
    replayed as a CUDA graph, and at batch 1 it is bound by its ~150 small kernels, not by memory bandwidth; so, as
    gpt-fast: coordinate-descent tuning (with it inductor also writes each batch-1 matrix-vector product as a Triton
    reduction fused with its neighbours, the RMSNorm before it say, instead of a cuBLAS call), combo kernels (small
    independent kernels launched as one) and, from Hopper on, programmatic dependent launch (a kernel's start
    overlaps the end of the one before). H200, config/train_small.py, batch 1: 0.54 -> 0.35 ms a step (README, Speed).
    """
    if not str(device).startswith("cuda"):
        return None
    options = {"triton.cudagraphs": True, "coordinate_descent_tuning": True, "combo_kernels": True}
    if torch.cuda.get_device_capability(device) >= (9, 0):
        options["triton.enable_pdl"] = True
    return options


def compile_decode_step(device):
    """decode_and_sample compiled for device (sample.py --compile, bench.py --compile=True): one static graph per
    shape (dynamic=False), so GPT.stream keeps its cache lengths few."""
    return torch.compile(decode_and_sample, dynamic=False, options=decode_compile_options(device))


def filter_logits(logits, temperature=1.0, top_k=None, top_p=None):
    """Temperature, then top-k, then nucleus (top-p) filtering of [B, V] logits. temperature must be > 0."""
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def pick(logits, temperature, top_k, top_p, generator):
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
    # the exponential race: argmax(p_i / E_i), E_i ~ Exp(1), is i with probability p_i, with no host sync and no
    # torch.multinomial, so that a compiled step samples inside its CUDA graph (gpt-fast does the same)
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / race).argmax(dim=-1)


def sample_audio_token(model, h, temperature=1.0, top_k=None, top_p=None, generator=None, cfg_scale=1.0):
    """
    One next token per row from hidden states h [B, n_embd]: a coarse class (or EOA), then the fine digits given
    it. Only audio ids 0..46655 or EOA can come out. temperature 0 = greedy; top-k / top-p apply to each stage.
    With cfg_scale != 1, h holds the conditional rows then the unconditional ones ([2B, n_embd]); both stages use
    the guided logits uncond + cfg_scale * (cond - uncond), and B tokens come out.
    """

    def guide(logits):
        if cfg_scale == 1.0:
            return logits
        cond, uncond = logits.chunk(2)
        return uncond + cfg_scale * (cond - uncond)

    coarse = pick(guide(model.coarse_logits(h)), temperature, top_k, top_p, generator)
    eoa = coarse == N_COARSE
    coarse = coarse.clamp(max=N_COARSE - 1)
    both = coarse.repeat(2) if cfg_scale != 1.0 else coarse
    fine = pick(guide(model.fine_logits(h, both)), temperature, top_k, top_p, generator)
    return torch.where(eoa, torch.full_like(coarse, EOA), coarse * N_FINE + fine)
