"""The ViewFusion model: the SR3 U-Net denoiser and the composable diffusion wrapper.
(Loading checkpoints of any kind, `load_official` included, is viewfusion.checkpoint's job.)"""

from viewfusion.model.unet import UNet
from viewfusion.model.viewfusion import GenerationResult, ViewFusion, count_unet_evals

__all__ = ["GenerationResult", "UNet", "ViewFusion", "count_unet_evals"]
