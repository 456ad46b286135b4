"""The README's "Only the model" example runs as printed, on a file in the official layout, and
its "Where things are" table puts every command in the package that holds its module."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from viewfusion.cli import COMMANDS
from viewfusion.model.diffusion import Schedule
from viewfusion.model.unet import UNet
from viewfusion.model.viewfusion import PAPER_UNET_KWARGS, ViewFusion

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_model_example() -> str:
    section = README.read_text().split("### Only the model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_model_example_runs_on_an_official_file(tmp_path):
    torch.manual_seed(0)
    model = ViewFusion(UNet(**PAPER_UNET_KWARGS), Schedule.make("linear", 2000, linear_start=1e-6,
                                                                 linear_end=1e-2))
    official = tmp_path / "best_model_all.pt"
    # What the official trainer saves: numpy metric scalars and the DDP prefix included.
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": []}, "it": 710000, "t": 5.6e5,
                "run_id": "abc", "psnr": np.float64(23.5), "ssim": np.float32(0.88)}, official)
    code = readme_model_example()
    assert '"best_model_all.pt"' in code and "steps=50" in code
    code = code.replace('"best_model_all.pt"', repr(str(official))).replace("steps=50", "steps=2")
    scope: dict = {}
    with torch.no_grad():
        exec(compile(code, "README.md", "exec"), scope)
    images, weights = scope["images"], scope["weights"]
    assert images.shape == (2, 3, 64, 64) and 0 <= images.min() and images.max() <= 1
    assert torch.isfinite(scope["loss"]) and torch.isfinite(scope["mean"]).all()
    assert torch.broadcast_shapes(scope["log_var"].shape, images.shape) == images.shape
    # the second target has 2 views: its 4 padded views get no weight, its 2 sum to 1
    assert weights[1, 2:].abs().max() == 0
    torch.testing.assert_close(weights[1].sum(0), torch.ones(3, 64, 64))
    for name, value in model.state_dict().items():
        assert torch.equal(scope["model"].state_dict()[name], value)


def where_things_are() -> dict[str, list[str]]:
    """Package folder -> the commands its row lists."""
    section = README.read_text().split("## Where things are", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ")]
    return {cells[1].strip().strip("`"): re.findall(r"`([^`]+)`", cells[3]) for cells in rows[1:]}


def test_where_things_are_lists_every_command_in_its_package():
    table = where_things_are()
    assert "viewfusion/train/" in table and "viewfusion/report/" in table
    for words, (module, _) in COMMANDS.items():
        package = module.rsplit(".", 1)[0].replace(".", "/") + "/"
        folder = package if package in table else next(k for k in table if k.startswith("viewfusion/{"))
        assert " ".join(words) in table[folder], (words, module, folder)
