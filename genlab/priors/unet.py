"""A convolutional masked-token prior: diffusers' `UNet2DModel` over a VQ model's code grid.

The same task as `genlab.priors.transformer.MaskedTokenTransformer` (MaskGIT, Chang et al.,
arXiv:2202.04200: predict every [MASK]ed token of the grid from the visible ones, p(x_i | x_visible, c)),
read as absorbing-state discrete diffusion (D3PM, Austin et al., arXiv:2107.03006, section 3: the
forward process replaces tokens by [MASK]; the network predicts x0 at every masked cell). So the
network is a diffusion UNet: a learnt embedding of the K + 1 ids (K = [MASK]) is its input image,
the share of masked cells (x 1000) is its timestep, class labels go through its class embedding
(index `num_classes` = no class, learnt by label dropout for classifier-free guidance, Ho & Salimans,
arXiv:2207.12598), and a 1 x 1 convolution maps its output to K logits per cell.

Against the transformer of the same budget it has the locality prior of convolutions (neighbouring codes
are drawn together, as in the pixel UNets of ddpm-emoji / ldm-emoji) and runs more steps a minute on
the CPU. Saved with diffusers' `ModelMixin`/`ConfigMixin`: `save_pretrained` / `from_pretrained` in
safetensors.

Guidance-distilled (optional, `guidance_embedding=True`, Meng et al., arXiv:2210.03142, as
`MaskedTokenTransformer`): the class embedding moves out of the UNet (`class_embed_type="identity"`) so the
guidance scale's embedding can join it; one call then gives the teacher's classifier-free guided logits.
Otherwise guided sampling calls it twice a step (conditional and not).
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..sampling import is_integer
from .network import MaskedTokenNetwork

TIMESTEPS = 1000  # the masked share in [0, 1] is the timestep in [0, 1000], the range of diffusers' UNets


def check_unet_layout(block_out_channels, attention, norm_num_groups: int, attention_head_dim: int = 32) -> None:
    """ValueError unless the layout is one UNet2DModel can build: positive widths that the group norm
    divides, one attention flag per level, and whole heads at every attended width (the levels flagged and
    the middle block, which attends at the last width)."""
    channels = list(block_out_channels)
    if not channels or any(not is_integer(c) or c <= 0 for c in channels):
        raise ValueError(f"block_out_channels must be positive integers, got {block_out_channels!r}")
    if len(attention) != len(channels):
        raise ValueError(f"attention needs one flag per level ({len(channels)}), got {list(attention)!r}")
    if any(c % norm_num_groups for c in channels):
        raise ValueError(f"every width in {channels} must be a multiple of norm_num_groups ({norm_num_groups})")
    attended = {c for c, a in zip(channels, attention) if a} | {channels[-1]}
    if any(c % attention_head_dim for c in attended):
        raise ValueError(f"every attended width in {sorted(attended)} must be a multiple of attention_head_dim "
                         f"({attention_head_dim})")


class MaskedTokenUNet(MaskedTokenNetwork, ModelMixin, ConfigMixin):
    """tokens (B, h, w) in [0, K] (K = [MASK]) and class labels (B,) -> logits (B, K, h, w) over the K codes.

    The call and output are `MaskedTokenTransformer`'s (and aMUSEd's `UVit2DModel` layout), so one sampling
    loop, one loss and one code length serve all three.
    """

    @register_to_config
    def __init__(
        self,
        codebook_size: int = 1024,  # K; the [MASK] token is index K (AmusedScheduler's mask_token_id)
        height: int = 16,  # token grid (h, w); the UNet halves it len(block_out_channels) - 1 times
        width: int = 16,
        num_classes: int = 0,  # 0: unconditional; else class index num_classes is "no class"
        embedding_size: int = 64,  # channels of the embedded token grid, the UNet's input and output
        block_out_channels: tuple = (64, 128, 128),
        attention: tuple = (False, False, True),  # self-attention at each level
        layers_per_block: int = 1,
        attention_head_dim: int = 32,
        norm_num_groups: int = 16,
        guidance_embedding: bool = False,  # guidance-distilled: forward takes the guidance scale w
        guidance_max: float = 8.0,  # w in [1, guidance_max] was distilled; outside it, two calls (plain CFG)
    ):
        super().__init__()
        check_unet_layout(block_out_channels, attention, norm_num_groups, attention_head_dim)
        levels = len(block_out_channels)
        if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
            raise ValueError(f"a {levels}-level UNet needs a token grid divisible by {2 ** (levels - 1)}, "
                             f"got {height}x{width}")
        if embedding_size % norm_num_groups:
            raise ValueError(f"embedding_size ({embedding_size}) must be a multiple of norm_num_groups "
                             f"({norm_num_groups})")
        self.token_embedding = nn.Embedding(codebook_size + 1, embedding_size)  # + 1: [MASK]
        classes = num_classes + 1 if num_classes else None  # + 1: the null class
        self.unet = UNet2DModel(
            sample_size=(height, width), in_channels=embedding_size, out_channels=embedding_size,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
            attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups,
            num_class_embeds=None if guidance_embedding else classes,
            class_embed_type="identity" if guidance_embedding else None,  # distilled: class + guidance, given
        )
        if guidance_embedding:
            width = block_out_channels[0] * 4  # the UNet's time (and class) embedding width
            self.add_guidance_embedding(width)  # ValueError for an unconditional UNet
            self.class_embedding = nn.Embedding(classes, width)  # `unet.class_embedding` of the teacher
        self.head = nn.Conv2d(embedding_size, codebook_size, 1)

    def teacher_state_dict(self) -> dict:
        """The weights named as the guidance-distilled student names them: its class embedding is outside the UNet."""
        state = self.state_dict()
        if "unet.class_embedding.weight" in state:
            state["class_embedding.weight"] = state.pop("unet.class_embedding.weight")
        return state

    def forward(self, input_ids: torch.LongTensor, class_labels: torch.LongTensor | None = None,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        self.check_grid(input_ids)
        batch = input_ids.shape[0]
        grid = self.token_embedding(input_ids).permute(0, 3, 1, 2)  # (B, E, h, w)
        scale = self.embed_guidance(guidance, batch, grid)  # (B, 4 C0) or None
        if not self.config.num_classes:
            class_labels = None  # an unconditional UNet has no class embedding
        elif class_labels is None:
            class_labels = torch.full((batch,), self.null_class, dtype=torch.long, device=input_ids.device)
        if scale is not None:  # distilled: the UNet takes the summed embedding (class_embed_type "identity")
            class_labels = self.class_embedding(class_labels) + scale  # (B, 4 C0)
        masked = (input_ids == self.mask_token_id).flatten(1).float().mean(1) * TIMESTEPS  # (B,)
        hidden = self.unet(grid, masked, class_labels=class_labels).sample  # (B, E, h, w)
        return self.head(hidden)  # (B, K, h, w)
