"""Motion Attention (MA): the later version's adapter between ControlNet and the UNet.

Paper (Edit-Your-Motion, later version, Sec. III-B, Eq. 7-8): MA "consists of self attention,
cross attention and temporal attention"; the self-attention models the skeleton (ControlNet)
features globally, the cross-attention matches them to the UNet's spatial features with
``Q = W_Q f_c`` from the ControlNet feature and ``K = W_K f_u``, ``V = W_V f_u`` from the UNet
feature, and the temporal attention keeps the frames consistent.

One :class:`MotionAttention` sits on every ControlNet residual: one per down residual (12 for
SD1.5) and one for the mid residual. For a ControlNet residual ``r`` and the UNet feature ``u`` it is
added to, with tokens ``x = r`` flattened to ``(frames, h*w, c)``::

    h = x + SelfAttn(LN(x))
    h = h + CrossAttn(LN(h), LN(u))              # Q from ControlNet, K/V from the UNet
    h = h + TemporalAttn(LN(h)) across frames    # at each spatial position
    r' = r + W_out h                             # W_out (weight and bias) starts at zero

and the UNet receives ``u + r'`` instead of ``u + r``. A fresh module is therefore exactly the
first version (``r + 0 == r``).

**Where the UNet feature comes from** (the paper does not say): ``u`` is the UNet's own feature
that the ControlNet residual is added to, i.e. the skip connection ``down_block_res_samples[i]``
inside diffusers' ``UNet2DConditionModel.forward`` (the conv_in output, each ResNet/transformer
output and each downsampler output of the down blocks) and, for the mid residual, the mid block's
output. It has the residual's resolution and channel count by construction, and it is the feature
whose "conflict" with the skeleton features MA is meant to resolve. diffusers adds the residuals
to copies of the skip features after the whole down pass, so the down pass does not depend on
them; :class:`AdaptedResidual` hooks into exactly that addition: it is passed to the UNet in place
of the residual tensor and its ``__radd__(u)`` returns ``u + MA(r, u)``. :func:`check_consumed`
makes sure every adapted residual was added (a diffusers version that stopped using ``+`` would
otherwise silently skip MA).

Rows whose ControlNet residual is all zero (ControlNet strength 0 for that branch, e.g. a
reconstruction branch without ControlNet) pass through unchanged: MA adapts skeleton features,
and such a row has none.

Every tensor op is batched over frames (einops rearranges + scaled-dot-product attention); the
temporal attention reads the frame count from the model's :class:`FrameContext`.

Initialisation is deterministic and independent of the global RNG: every weight is drawn from a
generator seeded with its parameter name (:func:`seeded_init_`), so two models built from the same
base are identical whatever the caller's random state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ModelError
from ..seeding import name_generator
from .attention import FrameContext, fused_qkv

MA_KEY = "motion_attention"


@torch.no_grad()
def seeded_init_(module: nn.Module, prefix: str) -> None:
    """Re-initialise ``module``'s Linear and LayerNorm layers deterministically.

    Linear weights and biases get PyTorch's default distributions (kaiming-uniform with
    ``a = sqrt(5)``, bias uniform in ``±1/sqrt(fan_in)``) drawn on the CPU from a generator seeded
    with the parameter's full name ``prefix.<name>``; LayerNorms get ones and zeros.
    """
    for name, sub in module.named_modules():
        full = f"{prefix}.{name}" if name else prefix
        if isinstance(sub, nn.Linear):
            gen = name_generator(full + ".weight")
            w = torch.empty(sub.weight.shape, dtype=torch.float32)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
            sub.weight.copy_(w)
            if sub.bias is not None:
                gen = name_generator(full + ".bias")
                bound = 1 / math.sqrt(sub.in_features)
                sub.bias.copy_(torch.empty(sub.bias.shape).uniform_(-bound, bound, generator=gen))
        elif isinstance(sub, nn.LayerNorm):
            sub.reset_parameters()


class _Attention(nn.Module):
    """Multi-head attention projections (``to_q``, ``to_k``, ``to_v`` without bias, ``to_out``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, tokens, c)`` queries from ``x``; keys/values from ``context`` (default ``x``)."""
        if context is None:
            q, kv = fused_qkv(self, x)
            k, v = kv.chunk(2, dim=-1)
        else:
            q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        split = lambda t: rearrange(t, "n t (h d) -> n h t d", h=self.heads)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(rearrange(out, "n h t d -> n t (h d)"))


class MotionAttention(nn.Module):
    """MA for one ControlNet residual of ``channels`` channels (see the module docstring)."""

    def __init__(self, channels: int, heads: int, context: FrameContext):
        super().__init__()
        if channels % heads:
            raise ModelError(f"Motion Attention: {channels} channels do not split into {heads} heads")
        self.norm_self = nn.LayerNorm(channels)
        self.self_attn = _Attention(channels, heads)
        self.norm_cross = nn.LayerNorm(channels)
        self.norm_unet = nn.LayerNorm(channels)
        self.cross_attn = _Attention(channels, heads)
        self.norm_temporal = nn.LayerNorm(channels)
        self.temporal_attn = _Attention(channels, heads)
        self.proj_out = nn.Linear(channels, channels)
        self.zero_output()  # starts as identity
        object.__setattr__(self, "context", context)  # shared state, not a submodule

    def zero_output(self) -> None:
        with torch.no_grad():
            self.proj_out.weight.zero_()
            self.proj_out.bias.zero_()

    def forward(self, residual: torch.Tensor, unet_feature: torch.Tensor) -> torch.Tensor:
        """The adapted residual ``r'`` for ``residual`` and ``unet_feature`` (both ``(B, C, H, W)``,
        ``B = groups * frames``)."""
        f = self.context.num_frames
        height = residual.shape[-2]
        x = rearrange(residual, "b c h w -> b (h w) c")
        u = rearrange(unet_feature, "b c h w -> b (h w) c")
        h = x + self.self_attn(self.norm_self(x))
        h = h + self.cross_attn(self.norm_cross(h), self.norm_unet(u))
        t = rearrange(h, "(b f) d c -> (b d) f c", f=f)
        t = t + self.temporal_attn(self.norm_temporal(t))
        h = rearrange(t, "(b d) f c -> (b f) d c", d=x.shape[1])
        delta = rearrange(self.proj_out(h), "b (h w) c -> b c h w", h=height)
        # rows without ControlNet (an all-zero residual) stay as they are
        active = (residual.flatten(1).abs().amax(dim=1) > 0).to(delta.dtype)
        return residual + delta * active.view(-1, 1, 1, 1)


def residual_channels(unet) -> tuple[list[int], int]:
    """Channels of the ControlNet residuals of an SD1.5-shaped diffusers UNet: one per skip
    feature of the down pass (``down_block_res_samples``) and the mid block's output."""
    down = [unet.conv_in.out_channels]
    for block in unet.down_blocks:
        down += [r.out_channels for r in block.resnets]
        down += [d.out_channels for d in (block.downsamplers or [])]
    return down, unet.mid_block.resnets[-1].out_channels


class MotionAttentionAdapter(nn.Module):
    """All MA modules of a UNet: ``down[i]`` for down residual ``i`` and ``mid``."""

    def __init__(self, down_channels: list[int], mid_channels: int, heads: int, context: FrameContext):
        super().__init__()
        self.down = nn.ModuleList(MotionAttention(c, heads, context) for c in down_channels)
        self.mid = MotionAttention(mid_channels, heads, context)

    def reset_parameters(self, prefix: str = MA_KEY) -> None:
        """Deterministic init (see :func:`seeded_init_`) with zero output projections."""
        seeded_init_(self, prefix)
        for m in list(self.down) + [self.mid]:
            m.zero_output()

    def fresh(self, prefix: str = MA_KEY) -> "MotionAttentionAdapter":
        """A new adapter of this one's shape holding the initial values (float32, on the host), built
        without touching this one or torch's global random state."""
        with torch.device("meta"):
            new = MotionAttentionAdapter([m.proj_out.in_features for m in self.down], self.mid.proj_out.in_features,
                                         self.mid.self_attn.heads, self.mid.context)
        new.to_empty(device="cpu")
        new.reset_parameters(prefix)
        return new


def _attention_heads(unet) -> int:
    for name, module in unet.named_modules():
        if name.endswith(".attn1"):
            return module.heads
    raise ModelError("the UNet has no transformer blocks to take the attention head count from")


def attach_motion_attention(unet, context: FrameContext) -> MotionAttentionAdapter:
    """Add a fresh adapter to ``unet`` as ``unet.motion_attention`` (so its tensors are named
    ``motion_attention.down.<i>.…`` / ``motion_attention.mid.…`` among the UNet's parameters), on the
    UNet's device and dtype, frozen."""
    if getattr(unet, MA_KEY, None) is not None:
        raise ModelError("this video model has Motion Attention already")
    down, mid = residual_channels(unet)
    ref = next(unet.parameters())
    adapter = MotionAttentionAdapter(down, mid, _attention_heads(unet), context)
    adapter.reset_parameters()
    adapter.to(device=ref.device, dtype=ref.dtype).requires_grad_(False)
    setattr(unet, MA_KEY, adapter)
    return adapter


class AdaptedResidual:
    """A ControlNet residual that passes through its MA module when the UNet adds it to its own
    feature: ``unet_feature + AdaptedResidual(ma, r)`` is ``unet_feature + ma(r, unet_feature)``.

    torch's ``Tensor.__add__`` returns NotImplemented for an operand type it does not know, so
    Python calls ``__radd__``; ``__add__`` covers the other operand order.
    """

    __slots__ = ("module", "residual", "use_checkpoint", "used")

    def __init__(self, module: MotionAttention, residual: torch.Tensor, use_checkpoint: bool = False):
        self.module = module
        self.residual = residual
        self.use_checkpoint = use_checkpoint
        self.used = False

    def __radd__(self, unet_feature):
        if not isinstance(unet_feature, torch.Tensor):
            return NotImplemented
        if unet_feature.shape != self.residual.shape:
            raise ModelError(
                f"Motion Attention: a ControlNet residual of shape {tuple(self.residual.shape)} met a UNet feature of "
                f"shape {tuple(unet_feature.shape)}; the ControlNet does not match the UNet"
            )
        if self.use_checkpoint:
            adapted = checkpoint(self.module, self.residual, unet_feature, use_reentrant=False)
        else:
            adapted = self.module(self.residual, unet_feature)
        self.used = True
        return unet_feature + adapted

    __add__ = __radd__

    @property
    def shape(self):
        return self.residual.shape

    @property
    def dtype(self):
        return self.residual.dtype

    @property
    def device(self):
        return self.residual.device


def apply_motion_attention_at_skip_joins(adapter: MotionAttentionAdapter, down: list, mid, use_checkpoint: bool = False):
    """Where Motion Attention enters the UNet: each ControlNet residual is wrapped so that, at the very
    point where diffusers' UNet adds it to its skip feature ``u`` (``u + r``, which Python turns into
    ``r.__radd__(u)``), the sum becomes ``u + MA(r, u)``. diffusers offers no other hook between the
    ControlNet residual and the UNet feature it joins. Returns ``(down, mid, wrapped)``; pass
    ``wrapped`` to :func:`check_consumed` after the UNet call."""
    if len(down) != len(adapter.down):
        raise ModelError(
            f"the ControlNet gives {len(down)} down residuals but Motion Attention has {len(adapter.down)} modules; "
            "the ControlNet does not match the UNet"
        )
    down = [AdaptedResidual(m, r, use_checkpoint) for m, r in zip(adapter.down, down)]
    mid = AdaptedResidual(adapter.mid, mid, use_checkpoint)
    return down, mid, down + [mid]


def check_consumed(wrapped: list[AdaptedResidual]) -> None:
    """Raise unless the UNet added every adapted residual (host-side flags only: no GPU sync)."""
    missing = [i for i, r in enumerate(wrapped) if not r.used]
    if missing:
        raise ModelError(
            f"Motion Attention was not applied to ControlNet residual(s) {missing}: this diffusers version adds "
            "ControlNet residuals in a way the adapter does not hook into; use diffusers 0.3x-0.4x"
        )
