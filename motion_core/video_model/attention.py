"""Frame-aware attention for the inflated UNet.

* :func:`kv_frame_indices` says which frames each frame's spatial self-attention reads its keys and
  values from (the RC-Attn modes of METHOD.md).
* :class:`AttentionPlan` turns those indices into row indices over the flattened ``(groups * frames)``
  batch, optionally with the two-branch K/V injection, once per UNet call.
* :class:`FrameAttnProcessor` is the diffusers attention processor installed on every ``attn1``: it
  projects Q/K/V once for all frames, gathers K/V rows by index and runs ONE batched
  scaled-dot-product attention per row group (one group normally, two while injecting).
* :class:`TemporalAttention` is the layer added after the feed-forward of every transformer block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from einops import rearrange
from torch import nn

from ..errors import InputError
from ..seeding import name_generator

ATTENTION_MODES = ("rc", "bidirectional", "sparse_causal", "self")
INJECTION_MODES = ("concat", "balanced")
UNET_PARTS = ("down", "mid", "up")
#: in a diffusers UNet parameter name: the spatial self-attention that RC-Attn reshapes and tuning trains
SPATIAL_SELF_ATTENTION_KEY = ".attn1."


def kv_frame_indices(num_frames: int, mode: str = "rc") -> torch.Tensor:
    """Frames whose keys/values frame ``i`` attends to, as a ``(n, m)`` long tensor.

    ``rc``: ``[p(i), i]`` with ``p(i) = i - 1`` and ``p(0) = n - 1`` (Edit-Your-Motion v1).
    ``bidirectional``: ``[i-1, i+1]``, first frame ``[0, 1]``, last ``[n-2, n-1]`` (later version).
    ``sparse_causal``: ``[0, i-1]``, frame 0 ``[0, 0]`` (Tune-A-Video).
    ``self``: ``[i]``. With ``n == 1`` every mode is ``self``.
    """
    if mode not in ATTENTION_MODES:
        raise InputError(f"attention mode must be one of {', '.join(ATTENTION_MODES)}; got {mode!r}")
    if num_frames < 1:
        raise InputError(f"num_frames must be >= 1; got {num_frames}")
    i = torch.arange(num_frames)
    if num_frames == 1 or mode == "self":
        return i[:, None]
    if mode == "rc":
        return torch.stack([(i - 1) % num_frames, i], dim=1)
    if mode == "sparse_causal":
        return torch.stack([torch.zeros_like(i), (i - 1).clamp(min=0)], dim=1)
    # bidirectional
    prev, nxt = i - 1, i + 1
    first, last = i == 0, i == num_frames - 1
    prev = torch.where(first, torch.zeros_like(i), torch.where(last, i - 1, prev))
    nxt = torch.where(first, torch.ones_like(i), torch.where(last, i, nxt))
    return torch.stack([prev, nxt], dim=1)


def window_kv_frames(frames, clip_length: int, mode: str = "rc") -> list[int]:
    """The clip frames a window must hold for its spatial attention to stay in clip coordinates:
    ``frames`` (clip indices) followed by the frames they read K/V from that lie outside the window
    (in clip order). In ``rc`` mode a contiguous window ``[s, s + W)`` needs frame ``s - 1`` (the
    clip's last frame when ``s == 0``); a window holding the whole clip needs nothing more."""
    frames = [int(f) for f in frames]
    inside = set(frames)
    needed = kv_frame_indices(clip_length, mode)[torch.as_tensor(frames)].flatten().tolist()
    return frames + sorted({f for f in needed if f not in inside})


def window_kv_indices(frames, clip_length: int, mode: str = "rc") -> torch.Tensor:
    """:func:`kv_frame_indices` for a batch holding the clip frames ``frames`` (clip indices, no
    repeats): row ``j`` reads the batch positions of the clip frames that clip frame ``frames[j]``
    reads. A neighbour missing from the batch is replaced by the frame itself (only frames added by
    :func:`window_kv_frames` lack neighbours; their outputs are not used)."""
    frames = torch.as_tensor(list(frames), dtype=torch.long)
    if frames.numel() != len(set(frames.tolist())) or (frames.numel() and not 0 <= int(frames.min()) <= int(frames.max()) < clip_length):
        raise InputError(f"window frames must be distinct clip frames in [0, {clip_length}); got {frames.tolist()}")
    clip_idx = kv_frame_indices(clip_length, mode)[frames]  # (b, m), clip coordinates
    position = torch.full((clip_length,), -1, dtype=torch.long)
    position[frames] = torch.arange(frames.numel())
    rows = position[clip_idx]
    own = torch.arange(frames.numel())[:, None].expand_as(rows)
    return torch.where(rows >= 0, rows, own)


@dataclass
class RowGroup:
    """Rows ``[start, stop)`` of the batch attend to the K/V rows ``kv_rows`` (``(rows, m)``).

    ``block_bias`` (``(rows, m)`` or None) is added to the attention logits of each K/V block.
    ``exclude_last`` (``(rows, h, w)`` bool at latent resolution, or None): tokens of the LAST K/V
    block (the injected reconstruction frame) that the row may not attend to (mask-split injection,
    beyond the paper); at each layer a token is excluded when at least half of its latent pixels are.
    """

    start: int
    stop: int
    kv_rows: torch.Tensor
    block_bias: torch.Tensor | None = None
    exclude_last: torch.Tensor | None = None


@dataclass
class AttentionPlan:
    """Which K/V rows every query row of a UNet call attends to.

    The batch is ``num_groups`` groups of ``num_frames`` frames each (frames on the batch axis).
    ``inject`` maps an editing group to the reconstruction group it reads extra K/V from; editing
    groups must come after all the others, so every row group is a contiguous slice.
    """

    num_frames: int
    mode: str = "rc"
    num_groups: int = 1
    inject: dict[int, int] = field(default_factory=dict)
    injection: str = "concat"
    frames: tuple | None = None
    clip_length: int | None = None
    base: list[RowGroup] = field(init=False)
    injected: list[RowGroup] = field(init=False)

    def __post_init__(self):
        if self.injection not in INJECTION_MODES:
            raise InputError(f"kv_injection must be one of {', '.join(INJECTION_MODES)}; got {self.injection!r}")
        n, g = self.num_frames, self.num_groups
        if self.frames is None:
            idx = kv_frame_indices(n, self.mode)  # (n, m)
        else:
            if len(self.frames) != n or self.clip_length is None:
                raise ValueError("a windowed plan needs one clip frame per batch frame and the clip length")
            idx = window_kv_indices(self.frames, self.clip_length, self.mode)
        offsets = (torch.arange(g) * n)[:, None, None]
        all_rows = (idx[None] + offsets).reshape(g * n, -1)
        self.base = [RowGroup(0, g * n, all_rows)]
        self.is_self = idx.shape[1] == 1 and bool((idx[:, 0] == torch.arange(n)).all())
        if not self.inject:
            self.injected = self.base
            return
        edit_groups = sorted(self.inject)
        first_edit = edit_groups[0]
        if edit_groups != list(range(first_edit, g)):
            raise ValueError("editing groups must be the last groups of the batch")
        plain = RowGroup(0, first_edit * n, all_rows[: first_edit * n]) if first_edit else None
        own = all_rows[first_edit * n :].view(len(edit_groups), n, -1)
        src = torch.stack([torch.arange(n) + self.inject[e] * n for e in edit_groups])  # (E, n)
        rows = torch.cat([own, src[..., None]], dim=2).reshape(len(edit_groups) * n, -1)
        bias = None
        if self.injection == "balanced":
            # The reconstruction's frame i shares the attention weight of the editing branch's own
            # frame i: with c copies of frame i among the own blocks, each of the c + 1 blocks gets
            # log(c / (c + 1)). Identical branches then give identical outputs, but only for frames
            # that read themselves (c > 0: every frame in rc and self mode; in bidirectional and
            # sparse_causal most frames do not, and the injected frame stays an extra key).
            own_is_i = (idx == torch.arange(n)[:, None]).float()  # (n, m)
            c = own_is_i.sum(dim=1, keepdim=True)
            share = torch.where(c > 0, torch.log(c.clamp(min=1) / (c + 1)), torch.zeros_like(c))
            frame_bias = torch.cat([own_is_i * share, share], dim=1)  # (n, m + 1)
            bias = frame_bias.repeat(len(edit_groups), 1)
        edit = RowGroup(first_edit * n, g * n, rows, bias)
        self.injected = [grp for grp in (plain, edit) if grp is not None]

    def to(self, device: torch.device) -> "AttentionPlan":
        for grp in {id(x): x for x in self.base + self.injected}.values():
            grp.kv_rows = grp.kv_rows.to(device)
            if grp.block_bias is not None:
                grp.block_bias = grp.block_bias.to(device)
            if grp.exclude_last is not None:
                grp.exclude_last = grp.exclude_last.to(device)
        return self

    def with_injection_excluded(self, exclude: torch.Tensor) -> "AttentionPlan":
        """A copy whose editing rows may not attend to the injected reconstruction tokens where
        ``exclude`` ``(num_frames, h, w)`` (bool, latent resolution) is set: frame ``i``'s mask applies
        to the reconstruction's frame ``i`` (mask-split injection; beyond the paper). Nothing excluded:
        this plan itself (the paper's injection, bit for bit)."""
        if not self.inject or not bool(exclude.any()):
            return self
        import copy

        new = copy.copy(self)
        edit = self.injected[-1]
        rows = edit.stop - edit.start
        ex = exclude.to(edit.kv_rows.device, torch.bool)
        new.injected = self.injected[:-1] + [RowGroup(edit.start, edit.stop, edit.kv_rows, edit.block_bias,
                                                      ex.repeat(rows // self.num_frames, 1, 1))]
        return new


def planned_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor | None, heads: int, groups: list[RowGroup], is_self: bool
) -> torch.Tensor:
    """Attention of ``query`` rows over gathered ``key``/``value`` rows, one SDPA call per group.

    All tensors are ``(rows, tokens, channels)``; returns ``(rows, tokens, channels)``. With
    ``value=None``, ``key`` holds keys and values side by side (``(rows, tokens, 2 * channels)``,
    from one fused projection), so each group needs one gather instead of two.
    """
    rows, tokens, channels = query.shape
    head_dim = channels // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1, heads, head_dim).transpose(1, 2)

    if is_self:
        k, v = key.split(channels, dim=-1) if value is None else (key, value)
        out = F.scaled_dot_product_attention(split(query), split(k), split(v))
        return out.transpose(1, 2).reshape(rows, tokens, channels)

    outs = []
    for grp in groups:
        n_rows, m = grp.kv_rows.shape
        flat = grp.kv_rows.reshape(-1)
        if value is None:
            kv = key.index_select(0, flat).view(n_rows, m * key.shape[1], 2 * channels)
            k, v = kv.split(channels, dim=-1)
        else:
            k = key.index_select(0, flat).view(n_rows, m * key.shape[1], channels)
            v = value.index_select(0, flat).view(n_rows, m * value.shape[1], channels)
        mask = None
        if grp.block_bias is not None:
            mask = grp.block_bias.to(query.dtype).repeat_interleave(key.shape[1], dim=1)[:, None, None, :]
        if grp.exclude_last is not None:
            tok = key.shape[1]
            h, w = grp.exclude_last.shape[-2:]
            f = int(round((h * w / tok) ** 0.5))
            if f < 1 or (h // f) * (w // f) != tok:
                raise RuntimeError(f"mask-split injection: {tok} tokens do not tile the {w}x{h} latent")
            out_ex = F.adaptive_avg_pool2d(grp.exclude_last.float()[:, None], (h // f, w // f)).flatten(1) >= 0.5
            last = torch.zeros(n_rows, tok, dtype=query.dtype, device=query.device).masked_fill(out_ex, float("-inf"))
            blocks = torch.zeros(n_rows, (m - 1) * tok, dtype=query.dtype, device=query.device)
            ex_bias = torch.cat([blocks, last], dim=1)[:, None, None, :]
            mask = ex_bias if mask is None else mask + ex_bias
        q = query[grp.start : grp.stop]
        o = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
        outs.append(o.transpose(1, 2).reshape(n_rows, tokens, channels))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def fused_qkv(attn: Attention, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_Q z`` and ``[W_K z | W_V z]`` (keys and values side by side) from ONE GEMM when the three
    projections are plain linear layers (else three calls, e.g. for adapter-wrapped layers)."""
    projections = (attn.to_q, attn.to_k, attn.to_v)
    if all(type(p) is nn.Linear for p in projections) and len({p.bias is None for p in projections}) == 1:
        bias = None if attn.to_q.bias is None else torch.cat([p.bias for p in projections])
        qkv = F.linear(hidden_states, torch.cat([p.weight for p in projections]), bias)
        inner = attn.to_q.out_features
        return qkv[..., :inner], qkv[..., inner:]
    return attn.to_q(hidden_states), torch.cat([attn.to_k(hidden_states), attn.to_v(hidden_states)], dim=-1)


@dataclass
class FrameContext:
    """Per-call state shared by every processor and temporal layer of one inflated UNet.

    It is set at the start of each UNet call and left in place afterwards, so that gradient
    checkpointing recomputes the forward pass with the same frame layout during backward.
    """

    num_frames: int = 1
    plan: AttentionPlan | None = None
    inject_parts: frozenset = frozenset()


class FrameAttnProcessor:
    """diffusers attention processor for ``attn1``: RC-Attn and its K/V-injected variant."""

    def __init__(self, context: FrameContext, part: str):
        self.context = context
        self.part = part

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise RuntimeError("FrameAttnProcessor is for spatial self-attention (attn1) of transformer blocks only")
        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query, kv = fused_qkv(attn, hidden_states)
        plan = self.context.plan
        if plan is None or plan.num_frames * plan.num_groups != hidden_states.shape[0]:
            raise RuntimeError(
                f"the UNet was called with {hidden_states.shape[0]} frames in the batch but its frame "
                "context does not match; call it through MotionModel.predict"
            )
        groups = plan.injected if self.part in self.context.inject_parts else plan.base
        out = planned_attention(query, kv, None, attn.heads, groups, plan.is_self and groups is plan.base)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out if attn.rescale_output_factor == 1 else out / attn.rescale_output_factor


class FrameAttention(Attention):
    """``attn1`` of an inflated transformer block: calls its processor directly. (diffusers'
    ``Attention.forward`` inspects the processor's signature on every call to filter keyword
    arguments, which costs more than the attention itself on small layers.) Installed by swapping
    the instance's class, so weights and their names are unchanged."""

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **cross_attention_kwargs):
        if not isinstance(self.processor, FrameAttnProcessor):
            return super().forward(hidden_states, encoder_hidden_states, attention_mask, **cross_attention_kwargs)
        return self.processor(self, hidden_states, encoder_hidden_states, attention_mask)


def seeded_linear_init_(weight: torch.Tensor, key: str) -> None:
    """``nn.Linear``'s default initialisation (uniform in +-1/sqrt(fan_in)) drawn on the host from a
    generator seeded with ``key``: the same values on every device, in every process, whatever
    torch's global random state is."""
    bound = weight.shape[1] ** -0.5
    values = torch.empty(weight.shape, dtype=torch.float32).uniform_(-bound, bound, generator=name_generator(key))
    with torch.no_grad():
        weight.copy_(values)


class TemporalAttention(nn.Module):
    """LayerNorm + self-attention across frames at each spatial position, residual.

    The output projection starts at zero, so a freshly inflated model equals the image model. The
    Q/K/V projections are initialised from a generator seeded with their parameter name (``name``
    is this layer's name in the UNet), so two loads of one checkpoint give the same model.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context: FrameContext, name: str = "temporal_attention"):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(query_dim=dim, heads=heads, dim_head=head_dim, bias=False, out_bias=True)
        self.reset_parameters(name)
        # Not a submodule: the context is shared state, not weights.
        object.__setattr__(self, "context", context)

    @torch.no_grad()
    def reset_parameters(self, name: str) -> None:
        """The initial values (``name``: this layer's name in the UNet): seeded Q/K/V, zero output
        projection, LayerNorm ones and zeros. Draws nothing from torch's global random state."""
        for proj in ("to_q", "to_k", "to_v"):
            seeded_linear_init_(getattr(self.attn, proj).weight, f"{name}.attn.{proj}.weight")
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)
        self.norm.reset_parameters()

    def fresh(self, name: str) -> "TemporalAttention":
        """A new layer of this one's shape holding the initial values (float32, on the host), built
        without touching this one or torch's global random state."""
        with torch.device("meta"):
            new = TemporalAttention(self.norm.normalized_shape[0], self.attn.heads, self.attn.inner_dim // self.attn.heads,
                                    self.context, name)
        new.to_empty(device="cpu")
        new.reset_parameters(name)
        return new

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        f = self.context.num_frames
        tokens = hidden_states.shape[1]
        h = self.norm(rearrange(hidden_states, "(b f) d c -> (b d) f c", f=f))
        q, kv = fused_qkv(self.attn, h)
        k, v = kv.chunk(2, dim=-1)
        heads = self.attn.heads
        split = lambda x: rearrange(x, "n f (h d) -> n h f d", h=heads)
        h = rearrange(F.scaled_dot_product_attention(split(q), split(k), split(v)), "n h f d -> n f (h d)")
        h = self.attn.to_out[0](h)
        return hidden_states + rearrange(h, "(b d) f c -> (b f) d c", d=tokens)

