"""The ViewFusion model: the SR3 U-Net denoiser and the composable diffusion wrapper."""

from viewfusion.model.unet import UNet
from viewfusion.model.viewfusion import GenerationResult, ViewFusion, count_unet_evals, load_official

__all__ = ["GenerationResult", "UNet", "ViewFusion", "count_unet_evals", "load_official"]
