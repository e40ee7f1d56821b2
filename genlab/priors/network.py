"""What GenLab's masked-token networks share: the [MASK] id, the null class, the token grid, and the guidance
embedding of a guidance-distilled copy.

MaskGIT: Chang et al., "MaskGIT: Masked Generative Image Transformer" (arXiv:2202.04200): a network sees the code
grid with some tokens replaced by [MASK] (input id K) and predicts every masked token, p(x_i | x_visible, c); the
null class (index `num_classes`) is the unconditional model that classifier-free guidance needs (Ho & Salimans,
arXiv:2207.12598), learnt by label dropout.
Guidance distillation: Meng et al., "On Distillation of Guided Diffusion Models" (arXiv:2210.03142, stage 1): the
scale w is an input (sinusoidal features of 100 w, as diffusers' UNets embed timesteps 0..1000, through an MLP added
to the class embedding), and the network is trained to give its teacher's guided logits
uncond + w (cond - uncond) in one call. w = 1 is the plain conditional.

The networks themselves: `genlab.priors.transformer.MaskedTokenTransformer`, `genlab.priors.unet.MaskedTokenUNet`.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

GUIDANCE_FEATURES = 64  # sinusoidal features of the guidance scale
GUIDANCE_FEATURE_SCALE = 100.0  # w in [0, 10] -> [0, 1000], the timestep range of diffusers' sinusoids


class MaskedTokenNetwork:
    """What GenLab's token priors share (`MaskedTokenTransformer`, `genlab.priors.unet.MaskedTokenUNet`): config
    `codebook_size` K (the [MASK] input id), `num_classes` (the null class), `height` x `width` tokens, and
    the optional guidance embedding of a guidance-distilled copy (`guidance_embedding`, `guidance_max`)."""

    def add_guidance_embedding(self, width: int) -> None:
        """Sinusoidal features of 100 w through an MLP to `width` channels, added to the class embedding;
        zero-initialised, so a student copied from its teacher starts as the undistilled network."""
        if not self.config.num_classes:
            raise ValueError("guidance_embedding needs a class-conditional network (num_classes > 0)")
        if not self.config.guidance_max > 1:
            raise ValueError(f"guidance_max must be above 1, got {self.config.guidance_max}")
        self.guidance_proj = Timesteps(GUIDANCE_FEATURES, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.guidance_embedder = TimestepEmbedding(GUIDANCE_FEATURES, width)
        nn.init.zeros_(self.guidance_embedder.linear_2.weight)
        nn.init.zeros_(self.guidance_embedder.linear_2.bias)

    def embed_guidance(self, guidance: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor | None:
        """(B,) guidance scales w (default 1: the plain conditional) -> (B, width) embedding in `like`'s dtype;
        None for a network that is not guidance-distilled (ValueError when it is given a scale anyway)."""
        if not self.config.guidance_embedding:
            if guidance is not None:
                raise ValueError(f"this {type(self).__name__} is not guidance-distilled: it takes no guidance scale")
            return None
        guidance = torch.ones(batch, device=like.device) if guidance is None else guidance
        features = self.guidance_proj(GUIDANCE_FEATURE_SCALE * guidance.float().expand(batch))  # (B, F)
        return self.guidance_embedder(features.to(like.dtype))

    def distills(self, guidance_scale: float) -> bool:
        """Whether one call gives classifier-free guidance at this scale (a distilled w)."""
        return bool(self.config.guidance_embedding) and 1.0 <= guidance_scale <= self.config.guidance_max

    def teacher_state_dict(self) -> dict:
        """This network's weights named as its guidance-distilled student (same config plus
        `guidance_embedding`) names them; the student's own guidance embedding is the only key they lack."""
        return self.state_dict()

    @property
    def mask_token_id(self) -> int:
        return self.config.codebook_size

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def check_grid(self, input_ids: torch.Tensor) -> None:
        """ValueError unless (B, h, w) `input_ids` is the token grid this network models."""
        height, width = input_ids.shape[-2:]
        if (height, width) != (self.config.height, self.config.width):
            raise ValueError(f"this {type(self).__name__} models {self.config.height}x{self.config.width} token "
                             f"grids, got {height}x{width}")
