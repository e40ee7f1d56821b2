"""Token priors over a VQ model's codes (MaskGIT, Chang et al. 2022, arXiv:2202.04200; aMUSEd, arXiv:2401.01808).

- `transformer.py`: the masked-token network base (`MaskedTokenNetwork`) and `MaskedTokenTransformer`;
- `unet.py`: `MaskedTokenUNet`, a diffusers `UNet2DModel` over the token grid;
- `pipeline.py`: `TokenPrior`, the sampling orders (confidence, raster, random), inpainting, refinement and the
  code length of an image under the prior.
"""

from .pipeline import CodeLength, TokenFrame, TokenPrior, TokenRun
from .transformer import MaskedTokenNetwork, MaskedTokenTransformer
from .unet import MaskedTokenUNet

__all__ = ["CodeLength", "MaskedTokenNetwork", "MaskedTokenTransformer", "MaskedTokenUNet", "TokenFrame",
           "TokenPrior", "TokenRun"]
