"""The ViewFusion model: the SR3 U-Net denoiser and the composable diffusion wrapper, their
schedules, samplers and solvers, the torch-free sampler names and settings, building from a
config, and checkpoints of any kind (`load_official` included, in viewfusion.model.checkpoint)."""

from viewfusion import lazy_attributes

_LAZY = {
    "build_model": "viewfusion.model.build",
    "UNet": "viewfusion.model.unet",
    "GenerationResult": "viewfusion.model.viewfusion",
    "ViewFusion": "viewfusion.model.viewfusion",
    "count_unet_evals": "viewfusion.model.viewfusion",
}

# Lazy: the sampler names and other torch-free modules of this package must not load torch.
__getattr__ = lazy_attributes("viewfusion.model", _LAZY)


__all__ = ["GenerationResult", "UNet", "ViewFusion", "build_model", "count_unet_evals"]
