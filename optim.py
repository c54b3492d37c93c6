"""
The optimizers train.py (and bench.py --mode=train) step: AdamW, or Muon for the blocks' weight matrices with AdamW
for the rest, as in the modded-nanoGPT speedruns. Kept out of model.py, which is the network only.
"""

import math

import torch
import torch.distributed as dist

OPTIMIZERS = ("adamw", "muon")


def configure_optimizers(model, weight_decay, learning_rate, betas, device_type, optimizer="adamw"):
    """
    -> a list of optimizers, stepped together. 'adamw': AdamW for everything; matrices (embeddings included) decay,
    norms and biases do not, as in nanoGPT. Fused on CUDA and CPU: unfused, the update of the large embedding table
    is a sizeable part of a small model's CPU step (docs/results.md). On a CPU in one process, the input table's
    gradient also goes to buffers kept across steps (reuse_table_grad).
    'muon': Muon (below) for the blocks' weight matrices, AdamW for the embeddings, heads and norms; one
    learning_rate and schedule serve both.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be 'adamw' or 'muon', not {optimizer!r}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in named if optimizer == "muon" and n.startswith("blocks.") and p.dim() == 2]
    rest = [p for n, p in named if optimizer != "muon" or not (n.startswith("blocks.") and p.dim() == 2)]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    optimizers = [adamw(groups, learning_rate, betas, device_type)]
    if hidden:
        optimizers.append(Muon(hidden, lr=learning_rate, weight_decay=weight_decay))
    if device_type == "cpu" and model.wte.weight.requires_grad and not (dist.is_available() and dist.is_initialized()):
        reuse_table_grad(model.wte)
    return optimizers


def adamw(groups, learning_rate, betas, device_type):
    """torch's AdamW as Dirt steps it (bench.py gives its nanoGPT row the same): the fused kernel on CUDA and CPU."""
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))


def reuse_table_grad(table):
    """
    The input table's gradient (a row per token of the vocabulary: 48 MB at 256 wide) in buffers kept from step to
    step, on a CPU. Freshly allocated each step, as autograd does, its page faults cost more than its zeroing and the
    AdamW update of every row together (docs/results.md). The lookup then gives its rows (sparse=True) and hooks add
    them into a zeroed buffer: the same values, bit for bit, as the dense backward, under gradient accumulation too
    (a later micro-step's rows are summed apart and then added, as autograd sums two dense gradients). The table
    must be looked up once per forward (two sparse gradients would be joined before the sum), and a DDP reducer
    expects the table's gradients as they come (so not under torch.distributed).
    """
    weight, buffers, held = table.weight, {}, []

    def dense(grad, name):  # grad's rows summed into the named buffer, zeroed first
        buf = buffers.get(name)
        buf = buffers.setdefault(name, torch.zeros_like(weight)) if buf is None else buf.zero_()
        return buf.index_add_(0, grad._indices()[0], grad._values())

    def before(grad):  # a later micro-step: hold the sum so far, so that autograd hands over this step's rows alone
        if weight.grad is not None:
            held.append(weight.grad)
            weight.grad = None
        return grad

    def after(p):  # this step's rows, densified, are .grad (the first micro-step) or added to the held sum
        rows = dense(p.grad, "step" if held else "grad")
        p.grad = held.pop().add_(rows) if held else rows

    table.sparse = True
    # inductor's passes do not all handle sparse tensors: a compiled forward looks the table up eagerly (one graph
    # break). Disabled here, where it is needed, not at import: torch.compiler.disable imports torch._dynamo, which
    # took a second of every script's start
    table.forward = torch.compiler.disable(table.forward)
    weight.register_hook(before)
    weight.register_post_accumulate_grad_hook(after)


def newton_schulz(g, steps=5, eps=1e-7):
    """
    ~U V^T for each g = U S V^T in a batch [..., m, n]: Muon's quintic Newton-Schulz iteration (Keller Jordan's
    coefficients, as in torch.optim.Muon). bf16 on CUDA, as there; float32 elsewhere, since a CPU without bf16 units
    emulates bf16 matmuls, several times slower.
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
    iteration, which saves the per-matrix overhead that dominates a small model's step on a CPU.
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
