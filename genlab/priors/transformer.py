"""A bidirectional masked-token transformer over a VQ model's code grid (the second stage of a VQGAN).

MaskGIT: Chang et al., "MaskGIT: Masked Generative Image Transformer" (arXiv:2202.04200): a BERT-like
transformer sees the code grid with some tokens replaced by [MASK] and predicts every masked token,
p(x_i | x_visible, c). Class conditioning is a token prepended to the sequence (their class-conditional
ImageNet model); the null class (index `num_classes`) is the unconditional model that
classifier-free guidance needs (Ho & Salimans, arXiv:2207.12598), learnt by label dropout.

Guidance-distilled (optional, `guidance_embedding=True`): Meng et al., "On Distillation of Guided Diffusion
Models" (arXiv:2210.03142, stage 1): the scale w of classifier-free guidance is an input (sinusoidal
features of 100 w, as diffusers' UNets embed timesteps 0..1000, through an MLP added to the class token),
and the network is trained to give the teacher's guided logits uncond + w (cond - uncond) in one call,
so guided sampling costs one forward pass instead of two. w = 1 (the default) is the plain conditional.

Local mixing (optional, `conv_kernel=k`): after each block, a residual depthwise k x k convolution over the
token grid (the class token passes by), the locality prior that PVTv2 (Wang et al., arXiv:2106.13797) and
aMUSEd's UVit2D get from convolutions. Zero-initialised, so a transformer grown from one without it starts
as that transformer.

nanoGPT-sized and saved with diffusers' `ModelMixin`/`ConfigMixin`, so `save_pretrained` /
`from_pretrained` round-trip it in safetensors; the blocks are diffusers' `BasicTransformerBlock`
(pre-LayerNorm self-attention + GELU MLP, no causal mask).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..sampling import is_integer
from .network import MaskedTokenNetwork


def check_conv_kernel(conv_kernel) -> int:
    """`conv_kernel` when it is 0 (no convolution) or an odd number of tokens; else ValueError."""
    if not is_integer(conv_kernel) or conv_kernel < 0 or conv_kernel % 2 == 0 and conv_kernel:
        raise ValueError(f"conv_kernel must be 0 or an odd number of tokens, got {conv_kernel!r}")
    return conv_kernel


class MaskedTokenTransformer(MaskedTokenNetwork, ModelMixin, ConfigMixin):
    """tokens (B, h, w) in [0, K] (K = [MASK]) and class labels (B,) -> logits (B, K, h, w) over the K codes.

    The output layout is `UVit2DModel`'s (aMUSEd), so one sampling loop serves both.
    """

    @register_to_config
    def __init__(
        self,
        codebook_size: int = 1024,  # K; the [MASK] token is index K (AmusedScheduler's mask_token_id)
        height: int = 16,  # token grid (h, w) the positions are learnt for
        width: int = 16,
        num_classes: int = 0,  # 0: unconditional; else class index num_classes is "no class"
        hidden_size: int = 256,
        num_layers: int = 6,
        num_heads: int = 4,
        dropout: float = 0.0,
        guidance_embedding: bool = False,  # guidance-distilled: forward takes the guidance scale w
        guidance_max: float = 8.0,  # w in [1, guidance_max] was distilled; outside it, two calls (plain CFG)
        conv_kernel: int = 0,  # 0: none; odd k: a residual depthwise k x k convolution after each block
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})")
        self.token_embedding = nn.Embedding(codebook_size + 1, hidden_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, height * width, hidden_size))
        self.class_embedding = nn.Embedding(num_classes + 1, hidden_size)  # + 1: the null class
        if guidance_embedding:
            self.add_guidance_embedding(hidden_size)
        self.blocks = nn.ModuleList(
            BasicTransformerBlock(hidden_size, num_heads, hidden_size // num_heads, dropout=dropout,
                                  activation_fn="gelu", attention_bias=True)
            for _ in range(num_layers)
        )
        if check_conv_kernel(conv_kernel):
            self.convs = nn.ModuleList(
                nn.Conv2d(hidden_size, hidden_size, conv_kernel, padding=conv_kernel // 2, groups=hidden_size)
                for _ in range(num_layers)
            )
            for conv in self.convs:  # starts as the identity: see the module docstring
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        self.norm_out = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, codebook_size)
        nn.init.normal_(self.position_embedding, std=0.02)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.class_embedding.weight, std=0.02)

    def forward(self, input_ids: torch.LongTensor, class_labels: torch.LongTensor | None = None,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        """guidance: (B,) scales w for a guidance-distilled transformer (default 1: the plain conditional)."""
        self.check_grid(input_ids)
        batch, height, width = input_ids.shape
        if class_labels is None:
            class_labels = torch.full((batch,), self.null_class, dtype=torch.long, device=input_ids.device)
        hidden = self.token_embedding(input_ids.reshape(batch, -1)) + self.position_embedding  # (B, N, D)
        label = self.class_embedding(class_labels)  # (B, D)
        scale = self.embed_guidance(guidance, batch, label)  # (B, D) or None
        label = label if scale is None else label + scale
        hidden = torch.cat([label[:, None], hidden], dim=1)  # (B, 1 + N, D)
        for index, block in enumerate(self.blocks):
            hidden = block(hidden)
            if self.config.conv_kernel:
                grid = hidden[:, 1:].transpose(1, 2).reshape(batch, -1, height, width)  # (B, D, h, w)
                mixed = grid + self.convs[index](grid)
                hidden = torch.cat([hidden[:, :1], mixed.flatten(2).transpose(1, 2)], dim=1)  # (B, 1 + N, D)
        logits = self.head(self.norm_out(hidden[:, 1:]))  # (B, N, K)
        return logits.transpose(1, 2).reshape(batch, -1, height, width)  # (B, K, h, w)
