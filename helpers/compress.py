"""Smaller models (lab 12): the plumbing of structured pruning, layer dropping and distillation.

What a lab teaches stays in the notebook (``torch.nn.utils.prune``, the head scores, the SVD);
what would only distract from it lives here:

* :func:`split_pairs` - the Q&A set split by cluster into texts to train on and pairs to judge by,
  so no model is judged on a sentence it was trained on;
* :func:`saved_size_mib`, :func:`sparse_size_mib`, :func:`linear_sparsity` - bytes on disk, dense
  and stored sparse, and how many weights are zero;
* :func:`attention_blocks`, :func:`head_contexts`, :func:`prune_heads` - the attention heads of a
  BERT or MPNet encoder, what each head wrote on real tokens, and cutting heads out of the weight
  matrices (transformers 5 dropped ``prune_heads``; MPNet's shared position bias is sliced too);
* :func:`prune_ffn` - feed-forward neurons removed by a weight-magnitude score;
* :func:`replace_linears`, :func:`keep_layers` - swap every Linear of the encoder, keep some layers;
* :func:`distill` - train a student's sentence embeddings towards a teacher's, on the CPU.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .models import embed_module, mean_pool
from .quality import QAPair


def split_pairs(pairs: Sequence[QAPair], every: int = 3) -> tuple[list[str], list[QAPair]]:
    """Split the Q&A set by **cluster**: every ``every``-th cluster trains, the rest judge.

    Returns (the training clusters' questions and answers as plain texts, the other pairs).
    A cluster's five pairs share their vocabulary, so splitting by pair would leak it.
    """
    if int(every) < 2:
        raise ValueError(f"every must be 2 or more (one training cluster in `every`), got {every!r}")
    clusters = list(dict.fromkeys(p.cluster for p in pairs))
    training = set(clusters[:: int(every)])
    texts = [t for p in pairs if p.cluster in training for t in (p.question, p.answer)]
    judged = [p for p in pairs if p.cluster not in training]
    return texts, judged


def saved_size_mib(model: nn.Module) -> float:
    """The bytes ``torch.save(model.state_dict())`` writes, in MiB (2**20 bytes)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 2**20


def sparse_size_mib(model: nn.Module) -> float:
    """The same state dict with the encoder's Linear weights stored as CSR (values plus int64 indices), in MiB.

    CSR pays 4 bytes of value and 8 of column index per non-zero (plus a row pointer), so it is
    only smaller than dense (4 bytes each) when more than about two thirds of the weights are zero.
    """
    import warnings

    prunable = {f"{name}.weight" for name, _ in encoder_linears(model)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        state = {k: (v.to_sparse_csr() if k in prunable else v) for k, v in model.state_dict().items()}
        buffer = io.BytesIO()
        torch.save(state, buffer)
    return buffer.tell() / 2**20


def encoder_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The Linear layers inside the transformer layers (``encoder.layer``), by name."""
    stack = _layers(model)
    return [(f"encoder.layer.{i}.{name}", module) for i, layer in enumerate(stack)
            for name, module in layer.named_modules() if isinstance(module, nn.Linear)]


def linear_sparsity(model: nn.Module) -> float:
    """The fraction of the encoder's Linear weights that are exactly zero."""
    weights = [m.weight for _, m in encoder_linears(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(1, sum(w.numel() for w in weights))


def _layers(model: nn.Module) -> nn.ModuleList:
    stack = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(stack, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no encoder.layer list: expected a BERT- or MPNet-style encoder")
    return stack


@dataclass
class AttentionBlock:
    """One layer's attention: the module that holds the head count, its q/k/v projections and its output."""

    heads_module: nn.Module  # has num_attention_heads, attention_head_size, all_head_size
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    out: nn.Linear           # its input is the heads' outputs side by side: (..., heads * head_size)

    @property
    def heads(self) -> int:
        return int(self.heads_module.num_attention_heads)

    @property
    def head_size(self) -> int:
        return int(self.heads_module.attention_head_size)


def attention_blocks(model: nn.Module) -> list[AttentionBlock]:
    """Each transformer layer's attention, for BERT (``attention.self``) and MPNet (``attention.attn``)."""
    blocks = []
    for i, layer in enumerate(_layers(model)):
        attention = layer.attention
        if hasattr(attention, "self"):      # BERT, MiniLM
            s = attention.self
            blocks.append(AttentionBlock(s, s.query, s.key, s.value, attention.output.dense))
        elif hasattr(attention, "attn"):    # MPNet
            s = attention.attn
            blocks.append(AttentionBlock(s, s.q, s.k, s.v, s.o))
        else:
            raise ValueError(f"layer {i}: {type(attention).__name__} is neither BERT's nor MPNet's attention")
    return blocks


def head_contexts(model: nn.Module, tokenizer, texts: Sequence[str], *, max_length: int = 128,
                  batch_size: int = 32) -> list[torch.Tensor]:
    """What every layer's heads wrote, on the real (unpadded) tokens of ``texts``.

    One (tokens, heads * head_size) tensor per layer: the input of the layer's output projection,
    caught by a forward hook. A head's columns are its output; the projection mixes them.
    """
    blocks = attention_blocks(model)
    caught: list[list[torch.Tensor]] = [[] for _ in blocks]
    current: dict[str, torch.Tensor] = {}

    def hook(index):
        def record(module, args):
            x = args[0]
            caught[index].append(x[current["mask"]].detach().float())
        return record

    handles = [b.out.register_forward_pre_hook(hook(i)) for i, b in enumerate(blocks)]
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                  max_length=max_length, return_tensors="pt")
                current["mask"] = batch["attention_mask"].bool()
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(parts) for parts in caught]


def _keep_rows(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    new = nn.Linear(linear.in_features, len(index), bias=linear.bias is not None)
    with torch.no_grad():
        new.weight.copy_(linear.weight[index])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[index])
    return new


def _keep_columns(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(index), linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, index])
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new


def _slice_position_bias(kept: torch.Tensor):
    def pre_hook(module, args):  # MPNetAttention calls attn(hidden, mask, position_bias, ...)
        if len(args) > 2 and args[2] is not None:
            return (*args[:2], args[2][:, kept], *args[3:])
        return None
    return pre_hook


def prune_heads(model: nn.Module, plan: dict[int, Sequence[int]]) -> nn.Module:
    """Remove the attention heads ``plan`` names ({layer: [head, ...]}) from ``model``, in place.

    The heads' rows leave q, k and v, their columns leave the output projection, and the head
    count is updated, so the layer really does less work. A layer keeps at least one head.
    Returns the model.
    """
    blocks = attention_blocks(model)
    for layer, heads in plan.items():
        if not 0 <= int(layer) < len(blocks):
            raise ValueError(f"layer {layer!r} does not exist: the model has layers 0..{len(blocks) - 1}")
        block = blocks[int(layer)]
        drop = sorted({int(h) for h in heads})
        if not drop:
            continue
        if any(not 0 <= h < block.heads for h in drop):
            raise ValueError(f"layer {layer}: heads {drop} must lie in 0..{block.heads - 1}")
        kept_heads = [h for h in range(block.heads) if h not in drop]
        if not kept_heads:
            raise ValueError(f"layer {layer}: pruning all {block.heads} heads would cut the layer's attention off")
        size = block.head_size
        index = torch.tensor([h * size + j for h in kept_heads for j in range(size)])
        m = block.heads_module
        for name, linear in (("q", block.q), ("k", block.k), ("v", block.v)):
            _replace_child(m, linear, _keep_rows(linear, index))
        parent = m if any(c is block.out for c in m.children()) else _parent_of(model, block.out)
        _replace_child(parent, block.out, _keep_columns(block.out, index))
        original = getattr(m, "_course_kept_heads", torch.arange(m.num_attention_heads))
        m.num_attention_heads = len(kept_heads)
        m.all_head_size = len(kept_heads) * size
        if hasattr(model.encoder, "relative_attention_bias"):  # MPNet: one bias for all layers' heads
            kept = original[torch.tensor(kept_heads)]
            if hasattr(m, "_course_bias_hook"):
                m._course_bias_hook.remove()
            m._course_bias_hook = m.register_forward_pre_hook(_slice_position_bias(kept))
            m._course_kept_heads = kept
    return model


def _parent_of(root: nn.Module, child: nn.Module) -> nn.Module:
    for module in root.modules():
        if any(c is child for c in module.children()):
            return module
    raise ValueError("module not found in the model")


def _replace_child(parent: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for name, c in parent.named_children():
        if c is old:
            setattr(parent, name, new)
            return
    raise ValueError(f"{type(old).__name__} is not a child of {type(parent).__name__}")


def prune_ffn(model: nn.Module, keep: float) -> nn.Module:
    """Keep the ``keep`` fraction of each layer's feed-forward neurons, in place; returns the model.

    A neuron's score is |its input row| x |its output column| (L2 norms): an estimate of how much
    it can write into the residual stream. The lowest-scoring neurons leave both matrices.
    """
    if not 0 < float(keep) <= 1:
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    for layer in _layers(model):
        up, down = layer.intermediate.dense, layer.output.dense
        score = up.weight.norm(dim=1) * down.weight.norm(dim=0)
        n = max(1, round(float(keep) * up.out_features))
        index = torch.sort(torch.topk(score, n).indices).values
        layer.intermediate.dense = _keep_rows(up, index)
        layer.output.dense = _keep_columns(down, index)
    return model


def replace_linears(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module]) -> nn.Module:
    """Replace every Linear in ``encoder.layer`` by ``make(name, linear)``, in place; returns the model."""
    for name, linear in encoder_linears(model):
        parent = model.get_submodule(name.rsplit(".", 1)[0])
        setattr(parent, name.rsplit(".", 1)[1], make(name, linear))
    return model


def singular_energy(weight: torch.Tensor) -> torch.Tensor:
    """The share of a matrix's energy (squared Frobenius norm) that its best rank-r approximation
    keeps, for r = 1, 2, ...: entry ``r - 1`` is ``sum(s[:r]**2) / sum(s**2)`` of its singular values.

    By Eckart-Young, ``1 - energy`` is the squared relative error of that approximation, so an
    **energy threshold** ("keep 90 %") picks each layer's rank from its own spectrum instead of
    one fraction for all layers.
    """
    values = torch.linalg.svdvals(weight.detach().float())
    energy = (values ** 2).cumsum(0)
    return energy / energy[-1]


def energy_rank(weight: torch.Tensor, energy: float) -> int:
    """The smallest rank whose best approximation of ``weight`` keeps ``energy`` (0 < energy <= 1) of it."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    kept = singular_energy(weight)
    return min(int(torch.searchsorted(kept, torch.tensor(float(energy)) - 1e-6).item()) + 1, len(kept))


def keep_layers(model: nn.Module, indices: Sequence[int]) -> nn.Module:
    """A copy of ``model`` with only the transformer layers ``indices`` (in that order), config updated."""
    stack = _layers(model)
    chosen = [int(i) for i in indices]
    if not chosen or any(not 0 <= i < len(stack) for i in chosen):
        raise ValueError(f"layers {list(indices)} must be a non-empty choice from 0..{len(stack) - 1}")
    student = copy.deepcopy(model)
    student.encoder.layer = nn.ModuleList([copy.deepcopy(stack[i]) for i in chosen])
    student.config.num_hidden_layers = len(chosen)
    return student


def teacher_embeddings(model: nn.Module, tokenizer, texts: Sequence[str], *, max_length: int = 128) -> torch.Tensor:
    """The teacher's unit-length sentence embeddings of ``texts``: the targets :func:`distill` trains towards."""
    return embed_module(model, tokenizer, texts, max_length=max_length)


def distill(student: nn.Module, tokenizer, texts: Sequence[str], targets: torch.Tensor, *, steps: int,
            batch_size: int = 16, lr: float = 1e-4, max_length: int = 128, seed: int = 0,
            progress: bool = True) -> list[float]:
    """Train ``student`` so that its mean-pooled, unit-length embeddings of ``texts`` match ``targets``.

    The loss is 1 - cosine(student, teacher), averaged over a batch; batches are drawn in a
    seeded shuffled order (epochs repeat). AdamW, no schedule: a short CPU run. The student is
    left in eval mode. Returns the loss of every step.
    """
    if int(steps) < 0:
        raise ValueError(f"steps must be 0 or more, got {steps!r}")
    if len(texts) != len(targets):
        raise ValueError(f"{len(texts)} texts but {len(targets)} target embeddings")
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(int(seed))
    optimizer = torch.optim.AdamW(student.parameters(), lr=float(lr))
    order: list[int] = []
    losses = []
    student.train()
    try:
        for _ in tqdm(range(int(steps)), desc="distilling", disable=not progress, leave=False):
            if len(order) < batch_size:
                order += torch.randperm(len(texts), generator=generator).tolist()
            chosen, order = order[:batch_size], order[batch_size:]
            batch = tokenizer([texts[i] for i in chosen], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            hidden = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            pooled = nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)
            loss = 1 - (pooled * targets[chosen]).sum(dim=-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        student.eval()
    return losses


def method_verdicts(table, flops: dict[str, float], real_loss: dict[str, bool], *, baseline: str,
                    same_kernels: Sequence[str] = ()) -> list[str]:
    """One line per method, read from this run's table: faster or not (beyond the p25-p75 spread),
    its counted FLOPs against the baseline's (the measured reason a method does not pay), and
    whether its retrieval loss is larger than chance (the paired test).

    ``same_kernels`` names methods that run the baseline's dense kernels on the same shapes
    (unstructured pruning): a gap between those and the baseline is the run's drift, not a gain.
    A method whose FLOPs could not be counted (NaN: another runtime, int8 kernels) says so.
    """
    import math

    from .report import MEDIAN, P25, P75, SPEEDUP

    lines = []
    base = table.loc[baseline]
    for name, row in table.iterrows():
        if name == baseline:
            continue
        apart = row[P75] < base[P25] or base[P75] < row[P25]
        ratio = flops.get(name, math.nan) / flops.get(baseline, math.nan)
        work = "FLOPs not counted: another runtime or int8 kernels" if math.isnan(ratio) else f"{ratio:.2f}x the baseline's FLOPs"
        if name in same_kernels:
            speed = (f"{row[SPEEDUP]:.2f}x, " + ("outside" if apart else "within") + " the spread; it runs the same "
                     f"dense kernels on the same shapes ({work}), so it cannot be faster"
                     + (": read the gap as this run's drift" if apart else ""))
        elif apart and row[MEDIAN] < base[MEDIAN]:
            speed = f"{row[SPEEDUP]:.2f}x faster, beyond the spread ({work})"
        elif apart:
            speed = f"{row[SPEEDUP]:.2f}x, slower beyond the spread ({work})"
        elif math.isnan(ratio):
            speed = f"no faster ({row[SPEEDUP]:.2f}x, within the spread; {work})"
        elif ratio > 0.95:
            speed = f"no faster ({row[SPEEDUP]:.2f}x, within the spread): it does the same work ({work})"
        else:
            speed = f"no faster ({row[SPEEDUP]:.2f}x, within the spread) although it does {work}"
        loss = "a retrieval loss larger than chance" if real_loss.get(name) else "no measurable retrieval loss"
        lines.append(f"{name}: {speed}; {loss}.")
    return lines
