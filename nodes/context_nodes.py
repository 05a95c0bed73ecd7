"""Long clips: the context (window) options that the tuning, inversion and sampler nodes take."""

from __future__ import annotations

from ..motion_core.errors import InputError
from ..motion_core.method.windows import FUSE_MODES, ContextOptions, calls_per_step
from .handle import CATEGORY, CONTEXT_TYPE

CONTEXT_INPUT_TOOLTIP = (
    "Optional: EYM Context Options, to edit a clip longer than the window (long clips, beyond the paper). Tuning then "
    "sees a window of the clip per step (time and memory of a step stay those of the window), inversion and sampling "
    "run window by window and fuse the overlaps (time grows with the clip, memory stays that of one window). "
    "Disconnected, or a window at least the clip's length: the whole clip at once, exactly as without it."
)


def context_input() -> dict:
    """The optional ``context`` input of the tuning, inversion and sampler nodes."""
    return {"context": (CONTEXT_TYPE, {"tooltip": CONTEXT_INPUT_TOOLTIP})}


def context_in(context, name: str = "context") -> ContextOptions | None:
    if context is None:
        return None
    if not isinstance(context, ContextOptions):
        raise InputError(f"{name} must come from EYM Context Options; got {type(context).__name__}")
    return context


class ContextOptionsNode:
    DESCRIPTION = (
        "Window options for long clips (beyond the paper): connect to the 'context' input of the tuning, inversion and "
        "sampler nodes of either method. Each tuning step trains on 'window_length' frames of the clip (the first "
        "version's stage 1: frames drawn from the whole clip, shuffled; the other stages: a run of consecutive frames); "
        "inversion and sampling go over the clip in windows of that length overlapping by 'overlap' frames, and every "
        "frame's noise prediction is the weighted mean of the windows covering it. RC-Attn keeps the clip's frame "
        "links across window borders."
    )
    CATEGORY = f"{CATEGORY}/long clips"
    FUNCTION = "run"
    RETURN_TYPES = (CONTEXT_TYPE,)
    RETURN_NAMES = ("context",)
    OUTPUT_TOOLTIPS = ("Window options: connect to the 'context' input of the tuning, inversion and sampler nodes.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "window_length": ("INT", {
                    "default": 8, "min": 2, "max": 1024,
                    "tooltip": "Frames per window (paper: 8 frames in all). A tuning step and one model call of inversion "
                               "or sampling cost what a clip of this many frames costs (SD1.5 at 512x512: about 0.23 GB "
                               "of activations per frame). At least the clip's length: the whole clip at once.",
                }),
                "overlap": ("INT", {
                    "default": 2, "min": 0, "max": 1023,
                    "tooltip": "Frames shared by neighbouring inversion/sampling windows; must be smaller than the window. "
                               "More overlap: smoother borders, more model calls per step (about n / (window - overlap)).",
                }),
                "fuse": (list(FUSE_MODES), {
                    "default": "pyramid",
                    "tooltip": "How a frame's predictions from overlapping windows are weighted. pyramid: highest at a "
                               "window's centre (AnimateDiff-Evolved's); linear: full weight inside, ramping across the overlap. "
                               "With an overlap of at most half the window the two give the same weights (except where "
                               "the last window overlaps more).",
                }),
            }
        }

    def run(self, window_length, overlap, fuse="pyramid"):
        options = ContextOptions(int(window_length), int(overlap), fuse)
        options.validate()
        return (options,)


NODE_CLASS_MAPPINGS = {"EYM_ContextOptions": ContextOptionsNode}
NODE_DISPLAY_NAME_MAPPINGS = {"EYM_ContextOptions": "EYM Context Options (long clips)"}

__all__ = ["context_input", "context_in", "calls_per_step"]
