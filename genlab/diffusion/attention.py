"""Word-level cross-attention maps of a text-to-image diffusion run (DAAM).

DAAM: Tang et al., "What the DAAM: Interpreting Stable Diffusion Using Cross Attention" (arXiv:2210.04885,
sec. 3; castorini/daam `trace.py`). Each cross-attention layer l of a `UNet2DConditionModel` (`attn2` of a
transformer block) computes at step t, for every position of its (h_l, w_l) grid, a distribution over the
T text tokens, A^{t,l} = softmax(Q K^T / sqrt(d)): (heads, h_l w_l, T). DAAM's map of token k is

    D_k = sum_t sum_l mean_heads up(A^{t,l}[..., k])          (eq. 3 to 5)

with up() the upsampling of a layer's (h_l, w_l) map to the image. GenLab's aggregation:
- only the conditional branch of classifier-free guidance: the loop batches [cond, uncond], so the first B
  rows of the UNet's batch (all of it in an unguided run);
- heads and layers averaged (a mean, so step maps and run maps have the same scale), bilinear upsampling to
  the image's pixel size (H, W) (DAAM: bicubic, clamped at 0; bilinear cannot undershoot). Upsampling is
  linear, so the layers that share a resolution are summed first and upsampled once, with the same result;
  all layers are kept (DAAM drops SD's coarsest 8x8 maps; GenLab's 64 px models have only 8x8 and 4x4);
- a run's map averages its steps' maps (DAAM sums them; the normalisation below makes that the same);
- a word is a whitespace-separated piece of the prompt; its map is the mean of its tokens' maps (DAAM's
  `compute_word_heat_map`), the tokens found by the tokenizer's character offsets
  (`genlab.conditioning.text.TextEncoder.words`); tokens made only of punctuation are left out, and so is a
  word made only of punctuation; a repeated word is one map over all its occurrences (DAAM merges them too);
- each word's map is min-max normalised to [0, 1] (DAAM's `expand_image`); a flat map is all zeros.

Recording: diffusers' fused processors (`AttnProcessor2_0`) never form the probabilities, so a run that asks
for maps swaps the `attn2` processors for `RecordingProcessor`s (`unet.set_attn_processor` with a dict, every
other layer keeping its own) and puts the originals back when the run ends, fails or is cancelled. A
recording processor computes the conditional rows' probabilities with the layer's own `to_q`, `to_k` and
`get_attention_scores`, adds their head mean to a running sum, and leaves the layer's output to the original
processor, so a run's images are the same with and without maps. Runs share a UNet: the processors are
installed once for all recording runs on it, and each records only the UNet calls it makes itself (the
recorder is active in the calling thread during its own steps).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_active = threading.local()  # .recorder: the AttentionRecorder whose step runs in this thread, if any
_installed_lock = threading.Lock()
_installed: dict = {}  # unet -> [its original processors by name, the recording runs using it]


def is_cross_attention(name: str) -> bool:
    """A processor name of `unet.attn_processors` that belongs to a cross-attention layer (`attn2`)."""
    return name.endswith("attn2.processor")


class RecordingProcessor:
    """Wraps a cross-attention layer's processor: records the conditional rows' attention probabilities for
    the recorder active in this thread, and returns the wrapped processor's output unchanged."""

    def __init__(self, original):
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        recorder = getattr(_active, "recorder", None)
        if recorder is not None and encoder_hidden_states is not None:
            recorder.record(attn, hidden_states, encoder_hidden_states)
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


@contextmanager
def recording_processors(unet):
    """Install `RecordingProcessor`s on the UNet's `attn2` layers while the block runs; the first recording run
    on a UNet installs them, the last one puts the original processor objects back (also on error or cancel)."""
    with _installed_lock:
        if unet not in _installed:
            originals = unet.attn_processors  # {name: processor}
            if not any(is_cross_attention(name) for name in originals):
                raise ValueError("the UNet has no cross-attention (attn2) layers to record")
            unet.set_attn_processor({name: RecordingProcessor(p) if is_cross_attention(name) else p
                                     for name, p in originals.items()})
            _installed[unet] = [originals, 0]
        _installed[unet][1] += 1
    try:
        yield
    finally:
        with _installed_lock:
            _installed[unet][1] -= 1
            if _installed[unet][1] == 0:
                originals, _ = _installed.pop(unet)
                unet.set_attn_processor(dict(originals))


def _normalise(heat: torch.Tensor) -> np.ndarray:
    """(H, W) -> float32 in [0, 1] by min-max; a flat map -> zeros."""
    low, high = heat.min(), heat.max()
    scaled = (heat - low) / (high - low) if high - low > 1e-12 else torch.zeros_like(heat)
    return scaled.numpy().astype(np.float32)


@dataclass
class AttentionMaps:
    """The cross-attention of one step or of a whole run, per image, before it is turned into word maps.

    `sums[(h_l, w_l)]`: (B, T', h_l, w_l), the head-mean probabilities of every layer call at that resolution,
    summed, for the token positions up to the last one a word uses (T' <= T: padding is never shown); `count`: the layer calls summed (so the maps are their mean); `words[i]`: image i's (word, token
    positions) (`TextEncoder.words`); `size`: the (padded) pixel size (H', W') of the sample; `crop`: the
    image's (H, W) within it.
    """

    sums: dict[tuple[int, int], torch.Tensor]
    count: int
    words: list[list[tuple[str, list[int]]]]
    size: tuple[int, int]
    crop: tuple[int, int] | None = None

    @property
    def batch(self) -> int:
        return len(self.words)

    def maps(self, index: int = 0) -> dict[str, np.ndarray]:
        """Image `index`'s word maps: {word: (H, W) float32 in [0, 1]}, the words in prompt order."""
        words = self.words[index]
        if not words or not self.count:
            return {}
        heat = 0
        for tokens in self.sums.values():  # (B, T', h_l, w_l)
            word_heat = torch.stack([tokens[index, positions].mean(0) for _, positions in words])  # (N, h_l, w_l)
            heat = heat + F.interpolate(word_heat[None], size=self.size, mode="bilinear", align_corners=False)[0]
        heat = heat / self.count  # (N, H', W')
        if self.crop is not None:
            heat = heat[:, : self.crop[0], : self.crop[1]]
        return {word: _normalise(word_map) for (word, _), word_map in zip(words, heat)}

    def select(self, index: int) -> AttentionMaps:
        """Image `index` alone (a batch of one)."""
        return AttentionMaps({res: s[index:index + 1] for res, s in self.sums.items()}, self.count,
                             [self.words[index]], self.size, self.crop)

    def __add__(self, other: AttentionMaps) -> AttentionMaps:
        sums = dict(self.sums)
        for res, s in other.sums.items():
            sums[res] = sums[res] + s if res in sums else s
        return AttentionMaps(sums, self.count + other.count, self.words, self.size, self.crop)


class AttentionRecorder:
    """Records one run's cross-attention (see the module docstring): `steps(iterator)` wraps the reverse loop's
    (Step, sample) iterator, sets each Step's `attention` to that step's AttentionMaps, and `total` is the run's.

    batch: B, the images of the run (the conditional rows of the UNet's batch); words: each image's
    (word, token positions); latent_size: (h, w) of the sample the UNet sees; factor: pixels per sample cell;
    crop: the image's (H, W) in pixels when it is smaller than the padded sample.
    """

    def __init__(self, unet, batch: int, words: list[list[tuple[str, list[int]]]], latent_size: tuple[int, int],
                 factor: int, crop: tuple[int, int] | None = None):
        self.unet, self.batch, self.words = unet, batch, words
        self.latent_size, self.factor, self.crop = tuple(latent_size), factor, crop
        self.tokens = 1 + max((p for image in words for _, positions in image for p in positions), default=0)  # T'
        self.total: AttentionMaps | None = None
        self._sums: dict[int, torch.Tensor] = {}  # h_l w_l -> (B, h_l w_l, T') summed over this step's layer calls
        self._count = 0

    @torch.inference_mode()
    def record(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> None:
        """Add the head-mean attention probabilities of the conditional rows of one `attn2` call; the same
        projections and scores as diffusers' `AttnProcessor2_0` (transformer blocks pass (B, L, C) states)."""
        hidden = hidden_states[: self.batch]  # (B, L, C)
        context = encoder_hidden_states[: self.batch]  # (B, T, D)
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden), out_dim=4)  # (B, heads, L, d)
        key = attn.head_to_batch_dim(attn.to_k(context), out_dim=4)  # (B, heads, T, d)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        probs = attn.get_attention_scores(query.flatten(0, 1), key.flatten(0, 1))  # (B heads, L, T)
        probs = probs.unflatten(0, (self.batch, -1))[..., : self.tokens].float().mean(1)  # (B, L, T')
        length = probs.shape[1]
        self._sums[length] = self._sums[length] + probs if length in self._sums else probs
        self._count += 1

    def _grid(self, length: int) -> tuple[int, int]:
        """The (h_l, w_l) of a layer that sees `length` positions: the latent halved (rounding up) until it fits."""
        height, width = self.latent_size
        while height * width > length:
            height, width = -(-height // 2), -(-width // 2)
        if height * width != length:
            raise ValueError(f"cannot place {length} attention positions on the {self.latent_size} latent's grids")
        return height, width

    def end_step(self) -> AttentionMaps:
        """The step just run as AttentionMaps (added to `total`), and a fresh sum for the next step."""
        sums = {}
        for length, probs in self._sums.items():  # (B, h_l w_l, T')
            grid = self._grid(length)
            sums[grid] = probs.transpose(1, 2).unflatten(2, grid).cpu()  # (B, T', h_l, w_l)
        size = (self.latent_size[0] * self.factor, self.latent_size[1] * self.factor)
        step = AttentionMaps(sums, self._count, self.words, size, self.crop)
        self.total = step if self.total is None else self.total + step
        self._sums, self._count = {}, 0
        return step

    @contextmanager
    def _active(self):
        _active.recorder = self
        try:
            yield
        finally:
            _active.recorder = None

    def steps(self, reverse_steps):
        """Wrap the loop's (Step, sample) iterator: the recording processors are installed while it runs (put back
        when it ends, fails or is closed), the recorder is active during each step, and each Step gets its maps."""
        with recording_processors(self.unet):
            while True:
                with self._active():
                    item = next(reverse_steps, None)
                if item is None:
                    return
                step, sample = item
                step.attention = self.end_step()
                yield step, sample
