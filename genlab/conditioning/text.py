"""Text conditioning for Stable Diffusion layouts: a CLIP tokenizer and text encoder (through transformers).

Stable Diffusion 1.x/2.x condition their `UNet2DConditionModel` on the CLIP text encoder's last hidden
states, (B, 77, D), by cross-attention (Rombach et al., arXiv:2112.10752, sec. 3.3); classifier-free
guidance runs the negative prompt's (by default the empty prompt's) hidden states as the unconditional
branch. Prompts longer than the tokenizer's `model_max_length` are cut there, as diffusers' pipelines do.
"""

from __future__ import annotations

import torch


class TextEncoder:
    """A `CLIPTokenizer` and a `CLIPTextModel` or `CLIPTextModelWithProjection` (aMUSEd)."""

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer, self.model = tokenizer, text_encoder

    @property
    def max_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> tuple[dict, bool]:
        """The denoiser's text keyword arguments (fp32, CPU), and whether any prompt was cut to `max_tokens`.

        Stable Diffusion: {"encoder_hidden_states": (B, L, D)}, the last hidden states. aMUSEd (a
        `CLIPTextModelWithProjection`): the penultimate hidden states and the projected pooled
        embedding {"pooled_text_emb": (B, P)}, as its pipeline feeds `UVit2DModel`."""
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.max_tokens, truncation=True,
                                return_overflowing_tokens=False, return_length=False, return_tensors="pt")
        full = self.tokenizer(prompts, padding=False, truncation=False)["input_ids"]
        truncated = any(len(ids) > self.max_tokens for ids in full)
        if hasattr(self.model, "text_projection"):  # aMUSEd
            output = self.model(tokens.input_ids.to(self.device), output_hidden_states=True)
            kwargs = {"encoder_hidden_states": output.hidden_states[-2], "pooled_text_emb": output.text_embeds}
        else:
            kwargs = {"encoder_hidden_states": self.model(tokens.input_ids.to(self.device))[0]}  # (B, L, D)
        return {k: v.float().cpu() for k, v in kwargs.items()}, truncated
