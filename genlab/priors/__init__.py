"""Token priors over a VQ model's codes (MaskGIT, Chang et al. 2022, arXiv:2202.04200; aMUSEd, arXiv:2401.01808).

- `network.py`: `MaskedTokenNetwork`, what GenLab's networks share ([MASK] id, null class, guidance embedding);
- `transformer.py`: `MaskedTokenTransformer`, a bidirectional transformer over the token grid;
- `unet.py`: `MaskedTokenUNet`, a diffusers `UNet2DModel` over the token grid;
- `sampling.py`: the sampling orders (confidence, raster, random), code draws and refinement rounds;
- `pipeline.py`: `TokenPrior` (sample, inpaint, and the code length of an image under the prior), its
  `TokenFrame`s and `TokenRun`s.
"""

from .network import MaskedTokenNetwork
from .pipeline import PROBE_MASKS, CodeLength, TokenFrame, TokenPrior, TokenRun
from .sampling import MASKGIT_CHOICE_TEMPERATURE, TokenStep, refinement_steps
from .transformer import MaskedTokenTransformer
from .unet import MaskedTokenUNet

__all__ = ["MASKGIT_CHOICE_TEMPERATURE", "PROBE_MASKS", "CodeLength", "MaskedTokenNetwork", "MaskedTokenTransformer",
           "MaskedTokenUNet", "TokenFrame", "TokenPrior", "TokenRun", "TokenStep", "refinement_steps"]
