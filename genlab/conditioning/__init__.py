"""What a generative model is conditioned on: class labels, prompts, and classifier-free guidance.

- `guidance.py`: the conditional and unconditional branches and their mix (Ho & Salimans, arXiv:2207.12598),
  shared by diffusion UNets and token priors.
- `text.py`: a CLIP text encoder and tokenizer (Radford et al. 2021) turning prompts into hidden states.
"""

from .guidance import ConditionalModel, Conditioning, check_prompt
from .text import TextEncoder

__all__ = ["ConditionalModel", "Conditioning", "TextEncoder", "check_prompt"]
