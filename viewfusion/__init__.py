"""ViewFusion: composable diffusion for pose-free novel view synthesis (arXiv 2402.02906).

For people who only want the model:

    import viewfusion
    model = viewfusion.load_official("best_model_all.pt")
    images = model.generate(y_cond, view_count, angle, sampler="ddim", steps=50)

The pipeline stages (data, train, sample, metrics, tables) are reached through `viewfusion <cmd>`.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "UNet": "viewfusion.model.unet",
    "ViewFusion": "viewfusion.model.viewfusion",
    "load_official": "viewfusion.model.checkpoint",
}


def __getattr__(name: str):
    # Lazy so that `viewfusion data ...` never pays for importing torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'viewfusion' has no attribute {name!r}")


__all__ = ["UNet", "ViewFusion", "load_official", "__version__"]
