"""Conditioning shared by GenLab's generative models (diffusion UNets and token priors).

Classifier-free guidance: Ho & Salimans (arXiv:2207.12598). A model trained with label (or caption)
dropout predicts both p(x | c) and p(x); sampling mixes its two outputs as
    out = out_uncond + w (out_cond - out_uncond)
(noise predictions for diffusion, logits for token priors). Class labels use a null class for the
unconditional branch; text models use the negative prompt (by default the empty prompt).

Prompts (`check_prompt`): text of at most MAX_PROMPT_CHARS characters, without control characters (tab and
line breaks aside) or lone surrogates; any other Unicode (emoji, right-to-left scripts) is fine, since CLIP's
tokenizer is byte-level. A text model refuses an empty or blank prompt given as text (None runs the empty
prompt, the unconditional branch); a model without text refuses any prompt.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import torch

MAX_PROMPT_CHARS = 2000


@dataclass
class Conditioning:
    """Model keyword arguments of the conditional branch and of the unconditional one.

    Class labels: {"class_labels": (B,)} and the null class; text: the text encoder's keyword arguments
    ({"encoder_hidden_states": (B, L, D)}, plus a pooled embedding for aMUSEd) and the negative prompt's.
    With guidance_scale != 1 both run in one batch (classifier-free guidance).
    """

    cond: dict
    uncond: dict | None = None

    @classmethod
    def classes(cls, labels: torch.Tensor | None, null_class: int | None) -> "Conditioning | None":
        if labels is None:
            return None
        return cls({"class_labels": labels}, None if null_class is None else {"class_labels": torch.full_like(labels, null_class)})

    @classmethod
    def stack(cls, parts: list[Conditioning]) -> Conditioning:
        """One Conditioning whose rows are those of `parts`, in order (each with an unconditional branch)."""
        return cls({k: torch.cat([part.cond[k] for part in parts]) for k in parts[0].cond},
                   {k: torch.cat([part.uncond[k] for part in parts]) for k in parts[0].uncond})

    def batched(self, guided: bool, device) -> dict:
        if not guided:
            return {k: v.to(device) for k, v in self.cond.items()}
        return {k: torch.cat([v, self.uncond[k]]).to(device) for k, v in self.cond.items()}


ALLOWED_CONTROLS = "\t\n\r"  # a multi-line prompt box gives line breaks; the tokenizer reads them as spaces


def check_prompt(prompt, what: str = "prompt") -> str | None:
    """`prompt` unchanged when it is None or acceptable text (see the module docstring), else ValueError."""
    if prompt is None:
        return None
    if not isinstance(prompt, str):
        raise ValueError(f"the {what} must be text, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the {what} has {len(prompt)} characters; keep it under {MAX_PROMPT_CHARS}")
    for position, character in enumerate(prompt):
        if unicodedata.category(character) in ("Cc", "Cs") and character not in ALLOWED_CONTROLS:
            kind = "control character" if unicodedata.category(character) == "Cc" else "lone surrogate"
            raise ValueError(f"the {what} contains the {kind} U+{ord(character):04X} at position {position}; "
                             "remove it")
    return prompt


class ConditionalModel:
    """Mixin: class labels or a prompt -> `Conditioning`. The class sets `name`, `classes` (names),
    `null_class` (index of "no class", or None), `is_conditional` and `text` (a `genlab.conditioning.text.TextEncoder`
    or None)."""

    name: str
    classes: list[str]
    null_class: int | None
    text: object = None

    def class_index(self, label) -> int | None:
        if label is None or label == "":
            return self.null_class if self.is_conditional else None
        if not self.is_conditional:
            raise ValueError(f"{self.name} is not class-conditional; leave the class empty")
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if label not in self.classes:
                raise ValueError(f"unknown class {label!r}; choose one of {self.classes}")
            return self.classes.index(label)
        index = int(label)
        if not 0 <= index < len(self.classes):
            raise ValueError(f"class index must be in [0, {len(self.classes) - 1}], got {index}")
        return index

    def _conditioning(self, batch: int, class_label, prompt, negative_prompt, notes: list[str]):
        """(Conditioning or None, whether the run is unconditional) for the model's kind of conditioning."""
        prompt = check_prompt(prompt)
        negative_prompt = check_prompt(negative_prompt, "negative prompt")
        if self.text is None:
            if prompt or negative_prompt:
                raise ValueError(f"{self.name} is not text-conditioned; leave the prompt empty"
                                 + (" and choose a class" if self.is_conditional else ""))
            label = self.class_index(class_label)
            if label is None:
                return None, True
            labels = torch.full((batch,), label, dtype=torch.long)
            return Conditioning.classes(labels, self.null_class), label == self.null_class
        if class_label not in (None, ""):
            raise ValueError(f"{self.name} is conditioned on text, not on classes; give a prompt instead")
        return self._text_conditioning([prompt] * batch, negative_prompt, notes), False

    def _text_conditioning(self, prompts: list, negative_prompt, notes: list[str]) -> Conditioning:
        """A text model's Conditioning of one prompt per row (None: the empty prompt) against the negative prompt
        (None: the empty prompt); a note when a prompt is cut to the text encoder's length."""
        for prompt in prompts:
            if check_prompt(prompt) is not None and not prompt.strip():
                raise ValueError(f"the prompt is empty{' (only spaces)' if prompt else ''}; describe the image, "
                                 "or leave the prompt out (None) for an unconditional sample")
        negative_prompt = check_prompt(negative_prompt, "negative prompt")
        cond, truncated = self.text.encode([prompt or "" for prompt in prompts])
        uncond, negative_truncated = self.text.encode([negative_prompt or ""] * len(prompts))
        if truncated or negative_truncated:
            notes.append(f"the prompt was cut to the text encoder's {self.text.max_tokens} tokens")
        return Conditioning(cond, uncond)
