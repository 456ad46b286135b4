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


def lazy_attributes(package: str, table: dict[str, str]):
    """A module `__getattr__` (PEP 562) importing `table[name]`'s module on first use: a package
    can name torch-backed classes without loading torch for its torch-free modules."""

    def __getattr__(name: str):
        if name in table:
            import importlib

            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


# Lazy so that `viewfusion data ...` never pays for importing torch.
__getattr__ = lazy_attributes("viewfusion", _LAZY)


__all__ = ["UNet", "ViewFusion", "load_official", "__version__"]
