"""Clips for people: H.264 mp4 through PyAV and animated WebP/GIF through Pillow, written atomically."""

from __future__ import annotations

import av
import numpy as np
import os

import pytest
from PIL import Image

from edit_your_motion.motion_core.apps.media import write_animation, write_png, write_video
from edit_your_motion.motion_core.errors import InputError


def _clip(n=4, h=32, w=48):
    """Smooth colour ramps that move from frame to frame (lossy codecs keep them well)."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([(x * 5 + 20 * i) % 256, (y * 7) % 256, np.full_like(x, 60 * i % 256)], axis=-1) for i in range(n)]
    return np.asarray(frames, dtype=np.uint8)


def _decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = (stream.codec_context.name, stream.codec_context.pix_fmt, float(stream.average_rate))
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    return info, frames


def test_write_video_is_h264_yuv420p_and_decodes_to_the_frames(tmp_path):
    frames = _clip()
    path = write_video(tmp_path / "clip.mp4", frames, fps=12)
    (codec, pix_fmt, rate), back = _decode(path)
    assert (codec, pix_fmt, rate) == ("h264", "yuv420p", 12.0)
    assert back.shape == frames.shape
    # lossy, but close: chroma is subsampled 2x2 and crf 18 is near-transparent
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary file left


def test_write_video_pads_odd_sizes_to_even(tmp_path):
    frames = _clip(3, 33, 35)
    (codec, _, _), back = _decode(write_video(tmp_path / "odd.mp4", frames))
    assert codec == "h264" and back.shape == (3, 34, 36, 3)
    assert np.abs(back[:, :33, :35].astype(int) - frames.astype(int)).mean() < 6


@pytest.mark.parametrize("suffix", [".webp", ".gif"])
def test_write_animation_loops_every_frame(tmp_path, suffix):
    frames = _clip(3)
    path = write_animation(tmp_path / f"clip{suffix}", frames, fps=5)
    with Image.open(path) as im:
        assert im.is_animated and im.n_frames == 3 and im.info.get("loop") == 0
        im.seek(2)
        last = np.asarray(im.convert("RGB"))
        duration = im.info.get("duration")
    if suffix == ".webp":  # lossless; the frame durations are in the ANMF chunks (bytes 12..14 of each)
        data = path.read_bytes()
        starts = [i for i in range(len(data) - 4) if data[i:i + 4] == b"ANMF"]
        assert [int.from_bytes(data[i + 20:i + 23], "little") for i in starts] == [200] * 3  # ms at 5 fps
        assert np.array_equal(last, frames[2])
    else:  # GIF: a 256-colour palette
        assert duration == 200
        assert np.abs(last.astype(int) - frames[2].astype(int)).mean() < 12


def test_write_png_round_trips_exactly(tmp_path):
    picture = _clip(1, 9, 13)[0]
    path = write_png(tmp_path / "grid.png", picture)
    with Image.open(path) as im:
        assert im.format == "PNG" and np.array_equal(np.asarray(im.convert("RGB")), picture)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_bad_input_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(InputError, match="uint8"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(InputError, match=r"\.mp4"):
        write_video(tmp_path / "a.avi", _clip())
    with pytest.raises(InputError, match=r"\.webp or \.gif"):
        write_animation(tmp_path / "a.png", _clip())
    with pytest.raises(InputError, match="fps"):
        write_animation(tmp_path / "a.gif", _clip(), fps=0)
    with pytest.raises(InputError, match=r"\.png"):
        write_png(tmp_path / "a.jpg", _clip()[0])
    with pytest.raises(InputError, match="uint8"):
        write_png(tmp_path / "a.png", _clip()[0].astype(np.float32))
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    from edit_your_motion.motion_core.files import atomic_path

    dest = tmp_path / "sub" / "out.bin"
    with atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent and tmp != dest
        tmp.write_bytes(b"new")
    umask = os.umask(0)
    os.umask(umask)
    assert dest.read_bytes() == b"new" and dest.stat().st_mode & 0o777 == 0o666 & ~umask  # not left private
    with pytest.raises(KeyboardInterrupt):  # a cancel half-way
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert dest.read_bytes() == b"new" and sorted(p.name for p in dest.parent.iterdir()) == ["out.bin"]
