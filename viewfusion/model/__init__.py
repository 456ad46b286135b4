"""The ViewFusion model: the SR3 U-Net denoiser and the composable diffusion wrapper.
(Loading checkpoints of any kind, `load_official` included, is viewfusion.model.checkpoint's job.)"""

_LAZY = {
    "UNet": "viewfusion.model.unet",
    "GenerationResult": "viewfusion.model.viewfusion",
    "ViewFusion": "viewfusion.model.viewfusion",
    "count_unet_evals": "viewfusion.model.viewfusion",
}


def __getattr__(name: str):
    # Lazy: the sampler names and other torch-free modules of this package must not load torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'viewfusion.model' has no attribute {name!r}")


__all__ = ["GenerationResult", "UNet", "ViewFusion", "count_unet_evals"]
