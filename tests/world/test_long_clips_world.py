"""Long clips in the world: ``quality --frames N`` with windows, and the ``seam_flicker`` metric."""

from __future__ import annotations

import json
import math

import pytest
import torch

from edit_your_motion.motion_core.__main__ import main
from edit_your_motion.motion_core.world import metrics as M


def test_seam_flicker_known_answers():
    pred = torch.zeros(6, 4, 4, 3)
    pred[3:] += 0.1  # one jump, between frames 2 and 3
    static = torch.ones(4, 4, dtype=torch.bool)
    assert M.seam_flicker(pred, static, [3]) == pytest.approx(0.1 * 255)
    assert M.seam_flicker(pred, static, [2]) == 0.0
    assert M.seam_flicker(pred, static, [2, 3]) == pytest.approx(0.1 * 255 / 2)
    assert math.isnan(M.seam_flicker(pred, static, []))
    assert math.isnan(M.seam_flicker(pred, static, None))
    # same units as flicker: the mean over all 5 pairs holds the one jump
    assert M.flicker(pred, static) == pytest.approx(0.1 * 255 / 5)
    with pytest.raises(ValueError, match="borders"):
        M.seam_flicker(pred, static, [0])


def test_quality_command_runs_long_clips_with_seam_flicker(tmp_path, capsys):
    code = main(["quality", "--cases", "1", "--methods", "no_tuning", "--ddim-steps", "2", "--frames", "10",
                 "--window", "4", "--overlap", "1", "--output", "", "--json", str(tmp_path / "r.json")])
    assert code == 0
    assert "seam_flicker" in capsys.readouterr().out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["frames"] == 10
    assert data["settings"]["context"] == {"length": 4, "overlap": 1, "fuse": "pyramid"}
    row = data["per_case"]["no_tuning"][0]
    assert set(row) == set(M.METRICS) and math.isfinite(row["seam_flicker"]) and math.isfinite(row["psnr"])


def test_quality_command_refuses_a_bad_window():
    with pytest.raises(SystemExit, match="overlap"):
        main(["quality", "--cases", "1", "--frames", "10", "--window", "4", "--overlap", "4"])
