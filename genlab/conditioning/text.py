"""Text conditioning for Stable Diffusion layouts: a CLIP tokenizer and text encoder (through transformers).

Stable Diffusion 1.x/2.x condition their `UNet2DConditionModel` on the CLIP text encoder's last hidden
states, (B, 77, D), by cross-attention (Rombach et al., arXiv:2112.10752, sec. 3.3); classifier-free
guidance runs the negative prompt's (by default the empty prompt's) hidden states as the unconditional
branch. Prompts longer than the tokenizer's `model_max_length` are cut there, as diffusers' pipelines do.

`words` maps a prompt's whitespace-separated words to their token positions (for word-level attention maps,
`genlab.diffusion.attention`) by the tokenizer's character offsets: CLIP's byte-level BPE splits a word into
pieces (the last one ending in `</w>`) and splits punctuation off it, and the offsets say which word each
piece came from.
"""

from __future__ import annotations

import re
import unicodedata

import torch


def is_punctuation(text: str) -> bool:
    """Every character a Unicode punctuation mark (category P*): ",", "!", "-", "«"; not emoji or letters."""
    return all(unicodedata.category(character).startswith("P") for character in text)


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

    def is_cut(self, prompt: str) -> bool:
        """Whether the prompt has more tokens (with the start and end tokens) than the encoder's `max_tokens`."""
        return len(self.tokenizer(prompt, padding=False, truncation=False)["input_ids"]) > self.max_tokens

    def words(self, prompt: str) -> list[tuple[str, list[int]]]:
        """The prompt's words in order, each with the positions of its tokens in the encoder's input (position 0 is
        the start token): [("red", [1]), ("heart", [2])].

        A word is a whitespace-separated piece with its leading and trailing punctuation stripped ("face," ->
        "face"); tokens made only of punctuation are left out, and a word made only of punctuation has no entry.
        A repeated word is one entry holding the tokens of all its occurrences. Words cut off by `max_tokens`
        have no entry."""
        encoding = self.tokenizer(prompt, truncation=True, max_length=self.max_tokens, return_offsets_mapping=True,
                                  return_special_tokens_mask=True)
        spans = [match.span() for match in re.finditer(r"\S+", prompt)]  # [(start, end)] of each word
        positions: dict[str, list[int]] = {}
        for position, ((start, end), special) in enumerate(zip(encoding["offset_mapping"],
                                                               encoding["special_tokens_mask"])):
            if special or end <= start or is_punctuation(prompt[start:end]):
                continue
            word_start, word_end = next(span for span in spans if span[0] <= start < span[1])
            word = prompt[word_start:word_end]
            stripped = word.strip("".join(c for c in word if is_punctuation(c)))  # keeps the token's own text
            positions.setdefault(stripped, []).append(position)
        return list(positions.items())

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> tuple[dict, bool]:
        """The denoiser's text keyword arguments (fp32, CPU), and whether any prompt was cut to `max_tokens`.

        Stable Diffusion: {"encoder_hidden_states": (B, L, D)}, the last hidden states. aMUSEd (a
        `CLIPTextModelWithProjection`): the penultimate hidden states and the projected pooled
        embedding {"pooled_text_emb": (B, P)}, as its pipeline feeds `UVit2DModel`. Each distinct prompt runs
        through the encoder once (a batch of one prompt, or the negative prompt of every row, is one row)."""
        distinct = list(dict.fromkeys(prompts))
        rows = torch.tensor([distinct.index(prompt) for prompt in prompts])  # (B,) each prompt's encoded row
        tokens = self.tokenizer(distinct, padding="max_length", max_length=self.max_tokens, truncation=True,
                                return_overflowing_tokens=False, return_length=False, return_tensors="pt")
        truncated = any(self.is_cut(prompt) for prompt in distinct)
        if hasattr(self.model, "text_projection"):  # aMUSEd
            output = self.model(tokens.input_ids.to(self.device), output_hidden_states=True)
            kwargs = {"encoder_hidden_states": output.hidden_states[-2], "pooled_text_emb": output.text_embeds}
        else:
            kwargs = {"encoder_hidden_states": self.model(tokens.input_ids.to(self.device))[0]}  # (B, L, D)
        return {k: v.float().cpu()[rows] for k, v in kwargs.items()}, truncated
