"""What the node tests share: a tiny SD1.5-shaped UNet and ControlNet, a source and a reference clip,
and the prompts as CONDITIONING."""

from __future__ import annotations

import pytest

from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.testing.synthetic import make_clip
from edit_your_motion.motion_core.testing.values import conditioning


@pytest.fixture(scope="module")
def tiny_job() -> dict:
    """A fresh job per test module: ``unet``, ``cn`` (ControlNet), ``src`` (waving) and ``ref`` (walking)
    3-frame 64² clips, and the prompts ``pc`` (content), ``ps`` (source), ``pt`` (target), ``empty``."""
    unet = tiny.build_unet("tiny", 0)
    return dict(unet=unet, cn=tiny.build_controlnet(unet, "tiny", 1),
                src=make_clip(3, 64, 64, "wave", seed=2), ref=make_clip(3, 64, 64, "walk", seed=2),
                pc=conditioning("a person in a green shirt"), ps=conditioning("a person in a green shirt is waving"),
                pt=conditioning("a person in a green shirt is walking"), empty=conditioning(""))
