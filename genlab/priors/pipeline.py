"""`TokenPrior`: generate, inpaint and measure code length in a VQ model's token space (a VQGAN's second stage).

The pipeline glue over `genlab.priors.sampling` (the sampling orders) and the networks (`genlab.priors.network`),
as diffusers' `pipelines/` sit over its schedulers and models: it turns the public keyword arguments into one
checked `genlab.sampling.SamplingSettings`, conditions and guides the network (`_predictor`), runs the unmasking
loop and presents the steps as `TokenFrame`s and the result as a `TokenRun`.

aMUSEd: Patil et al. (arXiv:2401.01808): MaskGIT with diffusers' `UVit2DModel` over a VQGAN's tokens,
  conditioned on CLIP text; the same loop runs it, with its pipeline's conditioning.
Inpainting: tokens whose f x f patch touches the mask are masked and sampled by the same loop,
  conditioned on every other token, which stays the image's own.
Code length (Shannon): an entropy coder driven by the prior spends -log2 p(x_i | x_<i) bits on
  token i; a bidirectional model gives p(x_i | x_<i) when every later token is masked. Summed over
  the grid and divided by the pixels, this is the image's bits per pixel under the prior, against the
  log2 K / f^2 of storing each index as it is. A class-conditional prior with no class given spends a
  two-part code (Rissanen's MDL; Grunwald, "The Minimum Description Length Principle", ch. 1): it names
  a label (one of its C classes, or none) in log2(C + 1) bits, then codes the tokens under that label
  (`TokenPrior.code_length`). Any label gives a code a decoder can undo; the encoder takes the one whose
  model finds the tokens likeliest at a few seeded half-masks.

Tokens are (B, h, w) int64 tensors inside, holding the mask id (K for GenLab's networks,
`scheduler.config.mask_token_id` for aMUSEd) where unknown; at the public API they are (h, w) numpy
int arrays with -1 where still masked.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..conditioning.guidance import ConditionalModel, Conditioning
from ..imaging.io import as_image, mask_of, open_image, pil_to_tensor, tensor_to_pil
from ..loading.schema import ModelInfo
from ..sampling import CHOICE_TEMPERATURE, SamplingSettings, check_int, last
from .sampling import TokenStep, iterate_unmask, refine_rounds

UNKNOWN = -1  # masked cells at the public API
PROBE_MASKS = 4  # seeded half-masks that choose the label of a two-part code (`TokenPrior.coding_label`)


@dataclass
class CodeLength:
    """An image's code length under a prior: `label_bits` to name the label the tokens are coded under (two-part
    code; 0 when the class was given or the prior has no classes), then `token_bits` for the tokens."""

    token_bits: np.ndarray  # (h, w) -log2 p(x_i | x_<i, label) in raster order
    label: str | None  # the class coded under: a class name, "no class" (the null class: class_label=None), or
    #                    None (a prior without classes)
    label_bits: float  # log2(C + 1) when the encoder chose the label, else 0
    pixels: int  # H * W of the fitted image

    @property
    def bits(self) -> float:
        return float(self.token_bits.sum()) + self.label_bits

    @property
    def bits_per_pixel(self) -> float:
        return self.bits / self.pixels


def _public(tokens: torch.Tensor, mask_id: int) -> np.ndarray:
    """(B, h, w) tensor -> (h, w) array for one sample, (B, h, w) for more; masked cells -1."""
    array = torch.where(tokens == mask_id, UNKNOWN, tokens).numpy()
    return array[0] if len(array) == 1 else array


@dataclass
class TokenFrame:
    """One step as arrays and images; images are decoded on first access."""

    step: TokenStep
    prior: "TokenPrior"
    index: int  # 0-based step number

    @property
    def tokens(self) -> np.ndarray:
        """(h, w) ints ((B, h, w) for a batch), -1 where still masked."""
        return _public(self.step.tokens, self.prior.mask_id)

    @property
    def new(self) -> np.ndarray:
        """(h, w) bools ((B, h, w) for a batch): tokens fixed in this step."""
        new = self.step.new.numpy()
        return new[0] if len(new) == 1 else new

    @property
    def masked_share(self) -> float:
        return float((self.step.tokens == self.prior.mask_id).float().mean())

    @cached_property
    def image(self) -> Image.Image:
        """The tokens decoded so far; cells still masked are grey."""
        masked = self.step.tokens == self.prior.mask_id
        pixels = self.prior.vq.decode_tensor(torch.where(masked, self.step.pred, self.step.tokens)).cpu()
        f = self.prior.vq.downsample_factor
        grey = masked.repeat_interleave(f, 1).repeat_interleave(f, 2)[:, None]  # (B, 1, H, W)
        return as_image(pixels.masked_fill(grey, 0.0))

    @cached_property
    def x0(self) -> Image.Image:
        """The decoded full prediction of this step."""
        return as_image(self.prior.vq.decode_tensor(self.step.pred).cpu())


@dataclass
class TokenRun:
    """What `sample` / `inpaint` return: the final tokens and image, and one TokenFrame per step."""

    prior: "TokenPrior"
    order: str
    seed: int
    steps: list[TokenStep] = field(default_factory=list)
    final: torch.Tensor | None = None  # (B, h, w)
    input: Image.Image | None = None  # inpainting: the image as the prior sees it (fitted to its grid)
    token_mask: np.ndarray | None = None  # inpainting: (h, w) bool, the resampled tokens
    notes: list[str] = field(default_factory=list)

    @property
    def frames(self) -> list[TokenFrame]:
        return [TokenFrame(step, self.prior, index) for index, step in enumerate(self.steps)]

    @property
    def tokens(self) -> np.ndarray:
        """(h, w) ints, or (B, h, w) for a batch."""
        return _public(self.final, self.prior.mask_id)

    @cached_property
    def pixels(self) -> torch.Tensor:
        return self.prior.vq.decode_tensor(self.final).cpu()  # (B, 3, H, W)

    @property
    def images(self) -> list[Image.Image]:
        return [tensor_to_pil(p) for p in self.pixels]

    @property
    def image(self) -> Image.Image:
        return as_image(self.pixels)


class TokenPrior(ConditionalModel):
    """A token transformer over a `genlab.autoencoders.vq.VQ`'s codes, its conditioning, and GenLab's operations.

    `transformer`: GenLab's `MaskedTokenTransformer` or `MaskedTokenUNet` (class labels) or diffusers'
    `UVit2DModel` (aMUSEd, with `text`, a `genlab.conditioning.text.TextEncoder`). Each maps (B, h, w) tokens to
    (B, K, h, w) logits.
    `distilled` (optional): a guidance-distilled copy of a class-conditional `transformer`; guided
    sampling at the scales it was distilled for calls it once a step, while the code length, unguided
    sampling and other scales keep to `transformer`, the prior itself.
    """

    def __init__(self, vq, transformer, scheduler_config: dict, info: ModelInfo | dict | None = None, name: str = "prior",
                 text=None, distilled=None):
        self.vq, self.transformer, self.text, self.name = vq, transformer, text, name
        self.distilled = distilled
        info = ModelInfo.of(info)
        config = transformer.config
        self.is_amused = type(transformer).__name__ == "UVit2DModel"
        self.mask_id = int(scheduler_config.get("mask_token_id", getattr(config, "codebook_size", vq.num_codes)))
        self.num_codes = int(config.codebook_size)
        if self.num_codes != vq.num_codes:
            raise ValueError(f"the transformer predicts {self.num_codes} codes but the VQ model has {vq.num_codes}")
        # [MASK] must be an input id the transformer embeds and no real code: GenLab's embeds it as K,
        # UVit2DModel has vocab_size inputs (codes, then special ids)
        vocab = int(getattr(config, "vocab_size", self.num_codes + 1))
        usable = range(self.num_codes, vocab) if self.is_amused else range(self.num_codes, self.num_codes + 1)
        if self.mask_id not in usable:
            raise ValueError(f"the scheduler's mask_token_id {self.mask_id} is not an id this transformer can use "
                             f"for [MASK] (it must lie in [{usable.start}, {usable.stop - 1}]: not a real code, "
                             "inside the transformer's vocabulary)")
        if self.is_amused:
            side = int(info.grid or config.sample_size)
            self.grid = (side, side)
        else:
            self.grid = (int(config.height), int(config.width))
        self.classes: list[str] = list(info.classes)
        num_classes = int(getattr(config, "num_classes", 0) or 0)
        if num_classes and len(self.classes) != num_classes:
            self.classes = [f"class {i}" for i in range(num_classes)]
        self.null_class = num_classes if num_classes else None
        if distilled is not None:
            keys = ("codebook_size", "height", "width", "num_classes")
            mine = {key: getattr(distilled.config, key, None) for key in keys}
            theirs = {key: getattr(config, key, None) for key in mine}
            if self.is_amused or not getattr(distilled.config, "guidance_embedding", False) or mine != theirs:
                raise ValueError(f"the distilled transformer ({mine}, guidance-distilled: "
                                 f"{getattr(distilled.config, 'guidance_embedding', False)}) is no guidance-distilled "
                                 f"copy of the transformer ({theirs})")
        self.default_guidance_scale = (info.default_guidance_scale if info.default_guidance_scale is not None
                                       else 10.0 if text is not None else 1.0)
        # the confidence order's Gumbel noise: the model's own default (genlab.json), else aMUSEd's
        self.default_choice_temperature = (CHOICE_TEMPERATURE if info.default_choice_temperature is None
                                           else info.default_choice_temperature)

    @property
    def is_conditional(self) -> bool:
        return self.null_class is not None

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) in pixels of the images the prior writes."""
        f = self.vq.downsample_factor
        return self.grid[0] * f, self.grid[1] * f

    @property
    def index_bits_per_pixel(self) -> float:
        """log2 K / f^2: storing every index as it is."""
        return math.log2(self.num_codes) / self.vq.downsample_factor ** 2

    # ------------------------------------------------------------------- the network
    def distilled_for(self, guidance_scale: float):
        """The guidance-distilled transformer that gives classifier-free guidance at this scale in one call
        (`distilled`, or `transformer` itself when distilled), else None (also at 1: no guidance to give)."""
        if self.is_amused or guidance_scale == 1.0:
            return None
        for candidate in (self.distilled, self.transformer):
            if candidate is not None and candidate.distills(guidance_scale):
                return candidate
        return None

    def _extra_kwargs(self, batch: int) -> dict:
        """aMUSEd's micro-conditioning (width, height, crop top, crop left, aesthetic score 6), as its pipeline."""
        if not self.is_amused:
            return {}
        height, width = self.image_size
        return {"micro_conds": torch.tensor([[width, height, 0, 0, 6]] * batch, dtype=torch.float32)}

    def _predictor(self, conditioning, guidance_scale: float, batch: int):
        """tokens (B, h, w) -> (B, K, h, w) float logits, classifier-free guided when asked: one call of a
        guidance-distilled transformer at a scale it was distilled for, else two (cond and uncond)."""
        guided = conditioning is not None and conditioning.uncond is not None and guidance_scale != 1.0
        one_call = self.distilled_for(guidance_scale) if guided else None
        distilled = one_call is not None
        network = one_call if distilled else self.transformer
        guided = guided and not distilled  # two calls: cond and uncond
        device = self.device  # read once: diffusers walks every module to answer it, and predict runs every step
        kwargs = conditioning.batched(guided, device) if conditioning is not None else {}
        if distilled:
            kwargs["guidance"] = torch.full((batch,), float(guidance_scale), device=device)
        kwargs.update({k: torch.cat([v] * (2 if guided else 1)).to(device) for k, v in self._extra_kwargs(batch).items()})
        dtype = network.dtype
        kwargs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in kwargs.items()}

        @torch.inference_mode()
        def predict(tokens: torch.Tensor) -> torch.Tensor:
            tokens = tokens.to(device)
            logits = network(torch.cat([tokens, tokens]) if guided else tokens, **kwargs).float()
            if guided:
                conditional, unconditional = logits.chunk(2)
                logits = unconditional + guidance_scale * (conditional - unconditional)
            return logits

        return predict

    # -------------------------------------------------------------------- one run
    def _settings(self, seed, steps, order, batch=1, temperature=1.0, top_k=None, guidance_scale=None,
                  choice_temperature=None, refine=0) -> SamplingSettings:
        """The run's checked settings, the model's defaults where guidance scale or choice temperature are None."""
        return SamplingSettings(
            seed=seed, steps=steps, order=order, batch=batch, temperature=temperature, top_k=top_k,
            guidance_scale=self.default_guidance_scale if guidance_scale is None else guidance_scale,
            choice_temperature=self.default_choice_temperature if choice_temperature is None else choice_temperature,
            refine=refine, num_codes=self.num_codes)

    def _stream(self, tokens: torch.Tensor, run: TokenRun, settings: SamplingSettings, class_label=None,
                prompt: str | None = None, negative_prompt: str | None = None):
        """Condition the network now, and return the generator of TokenFrames that ends with the TokenRun
        (the unmasking steps over (B, h, w) `tokens`, then settings.refine rounds of `refine_rounds` over the
        cells masked at the start)."""
        batch = tokens.shape[0]
        conditioning, unconditional = self._conditioning(batch, class_label, prompt, negative_prompt, run.notes)
        predict = self._predictor(conditioning, 1.0 if unconditional else settings.guidance_scale, batch)
        generator = torch.Generator().manual_seed(settings.seed)
        steps_run = iterate_unmask(predict, tokens.to(self.device), self.mask_id, settings, generator)
        free = tokens[0] == self.mask_id  # (h, w) the cells this run samples; refinement touches only these

        def frames():
            final = tokens
            for step in steps_run:
                run.steps.append(step)
                final = step.tokens
                yield TokenFrame(step, self, len(run.steps) - 1)
            if settings.refine:
                for step in refine_rounds(predict, final.to(self.device), free, self.mask_id, rounds=settings.refine,
                                          generator=generator, settings=settings):
                    run.steps.append(step)
                    final = step.tokens
                    yield TokenFrame(step, self, len(run.steps) - 1)
            run.final = final.cpu()
            yield run

        return frames()

    # ------------------------------------------------------------------ operations
    def sample_stream(self, seed: int = 0, steps: int = 12, order: str = "confidence", batch: int = 1,
                      class_label=None, temperature: float = 1.0, top_k: int | None = None,
                      guidance_scale: float | None = None, prompt: str | None = None,
                      negative_prompt: str | None = None, choice_temperature: float | None = None,
                      refine: int = 0):
        """Like `sample`, as a generator: a TokenFrame per step, then the TokenRun. The settings and the
        conditioning are checked now, before the first step."""
        if order == "raster":  # one step per token
            steps = self.grid[0] * self.grid[1]
        settings = self._settings(seed, steps, order, batch, temperature, top_k, guidance_scale, choice_temperature,
                                  refine)
        run = TokenRun(self, order, settings.seed)
        tokens = torch.full((settings.batch, *self.grid), self.mask_id, dtype=torch.long)  # (B, h, w) all masked
        return self._stream(tokens, run, settings, class_label, prompt, negative_prompt)

    def sample(self, seed: int = 0, steps: int = 12, order: str = "confidence", batch: int = 1, class_label=None,
               temperature: float = 1.0, top_k: int | None = None, guidance_scale: float | None = None,
               prompt: str | None = None, negative_prompt: str | None = None,
               choice_temperature: float | None = None, refine: int = 0) -> TokenRun:
        """Sample a token grid from nothing and decode it; the same seed and settings give the same image.

        order: "confidence" (MaskGIT), "raster" (one token per step; `steps` is then the number of
        tokens) or "random"; steps (1..64), batch (1..16), class_label (name or index; None =
        unconditional) or prompt / negative_prompt (aMUSEd), temperature (divides the logits),
        top_k, guidance_scale (classifier-free, on the logits; None: the model's default), choice_temperature
        (confidence order: start of the annealed Gumbel noise on the confidences; None: the model's
        `default_choice_temperature`, MaskGIT's 4.5 for GenLab's priors, aMUSEd's 2.0 for others), refine (0..8
        rounds of `refine_rounds` after the last step: the least likely tenth of the tokens re-masked and
        resampled; `refinement_steps(refine)` more frames).
        """
        return last(self.sample_stream(seed, steps, order, batch, class_label, temperature, top_k, guidance_scale,
                                       prompt, negative_prompt, choice_temperature, refine))

    def fit(self, image) -> Image.Image:
        """An upload as the prior sees it: centre-cropped to the grid's aspect and resized to its pixels."""
        height, width = self.image_size
        return ImageOps.fit(open_image(image), (width, height), Image.Resampling.LANCZOS)

    def tokens_of(self, image) -> torch.Tensor:
        """(1, h, w) code indices of an image fitted to the prior's grid."""
        return self.vq.encode(pil_to_tensor(self.fit(image))).cpu().clone()  # a normal tensor, editable

    def token_mask(self, image, mask) -> np.ndarray:
        """(h, w) bool: the tokens whose f x f patch touches the mask (mask: non-zero = resample, the
        upload's size), after the same crop and resize as the image."""
        image = open_image(image)
        repaint = mask_of(mask, (image.height, image.width))[0, 0]  # (H0, W0)
        height, width = self.image_size
        fitted = ImageOps.fit(Image.fromarray(repaint.numpy().astype(np.uint8) * 255), (width, height),
                              Image.Resampling.NEAREST)
        pixels = torch.from_numpy(np.asarray(fitted) > 0).float()[None, None]
        cells = F.max_pool2d(pixels, self.vq.downsample_factor)[0, 0] > 0
        if not cells.any():
            raise ValueError(f"the mask lies outside the centre crop the prior sees ({width}x{height} pixels "
                             "after cropping to its aspect ratio); paint inside the image's centre")
        return cells.numpy()

    def inpaint_stream(self, image, mask, steps: int = 12, seed: int = 0, order: str = "confidence",
                       class_label=None, temperature: float = 1.0, top_k: int | None = None,
                       guidance_scale: float | None = None, prompt: str | None = None,
                       negative_prompt: str | None = None, choice_temperature: float | None = None,
                       refine: int = 0):
        """Like `inpaint`, as a generator: a TokenFrame per step, then the TokenRun."""
        settings = self._settings(seed, steps, order, 1, temperature, top_k, guidance_scale, choice_temperature,
                                  refine)  # refused before the image is encoded
        cells = self.token_mask(image, mask)  # (h, w) bool
        tokens = self.tokens_of(image)  # (1, h, w)
        tokens[0][torch.from_numpy(cells)] = self.mask_id
        if order == "raster":  # one step per resampled token
            settings = dataclasses.replace(settings, steps=int(cells.sum()))
        run = TokenRun(self, order, settings.seed, input=self.fit(image), token_mask=cells)
        return self._stream(tokens, run, settings, class_label, prompt, negative_prompt)

    def inpaint(self, image, mask, steps: int = 12, seed: int = 0, order: str = "confidence", class_label=None,
                temperature: float = 1.0, top_k: int | None = None, guidance_scale: float | None = None,
                prompt: str | None = None, negative_prompt: str | None = None,
                choice_temperature: float | None = None, refine: int = 0) -> TokenRun:
        """Resample the tokens under the mask (white / non-zero = resample), conditioned on all the
        others, which stay exactly the image's own (`vq.indices_of` of the fitted image). The image is
        centre-cropped and resized to the prior's grid first. Same settings as `sample`."""
        return last(self.inpaint_stream(image, mask, steps, seed, order, class_label, temperature, top_k,
                                        guidance_scale, prompt, negative_prompt, choice_temperature, refine))

    @torch.inference_mode()
    def _raster_bits(self, tokens: torch.Tensor, class_label, prompt: str | None, chunk: int = 32,
                     cells: torch.Tensor | None = None) -> np.ndarray:
        """(h, w) -log2 p(x_i | x_<i) of (h, w) tokens in raster order: row r of a chunk masks token r and every
        later one, so one call of the bidirectional transformer gives p(x_r | x_<r) for `chunk` positions.
        `cells`: (M,) raster positions to code instead of all of them; then (M,) bits, in that order."""
        count = tokens.numel()
        flat = tokens.flatten()
        order = torch.arange(count) if cells is None else cells
        bits = torch.empty(len(order))
        for start in range(0, len(order), chunk):
            rows = order[start:start + chunk]  # row j codes token rows[j]
            conditioning, _ = self._conditioning(len(rows), class_label, prompt, None, [])
            predict = self._predictor(conditioning, 1.0, len(rows))
            inputs = flat.repeat(len(rows), 1)  # (R, N)
            inputs[torch.arange(count)[None] >= rows[:, None]] = self.mask_id  # token r and every later one masked
            logits = predict(inputs.view(len(rows), *tokens.shape)).flatten(2)  # (R, K, N)
            log_probs = logits[torch.arange(len(rows)), :, rows].log_softmax(dim=1).cpu()  # (R, K) at token r
            bits[start:start + len(rows)] = -log_probs[torch.arange(len(rows)), flat[rows]] / math.log(2)
        return bits.view(tokens.shape).numpy() if cells is None else bits.numpy()

    def token_bits(self, image, class_label=None, prompt: str | None = None, chunk: int = 32) -> np.ndarray:
        """(h, w) code length in bits of each token of the fitted image, -log2 p(x_i | x_<i) in raster
        order (every later token masked), under the unconditional model unless a class or prompt is given."""
        return self._raster_bits(self.tokens_of(image)[0], class_label, prompt, chunk)

    def sampled_token_bits(self, image, positions: int, seed: int = 0, class_label=None,
                           prompt: str | None = None) -> np.ndarray:
        """(positions,) -log2 p(x_i | x_<i) at `positions` raster positions i drawn uniformly with replacement
        (seeded): their mean estimates the mean of `token_bits` without bias, at positions / (h * w) of its cost,
        so two models compare on the same positions of the same images in seconds."""
        count = self.grid[0] * self.grid[1]
        check_int(positions, "positions", 1, count)
        cells = torch.randint(0, count, (positions,), generator=torch.Generator().manual_seed(int(seed)))
        return self._raster_bits(self.tokens_of(image)[0], class_label, prompt, chunk=64, cells=cells)

    @torch.inference_mode()
    def coding_label(self, tokens: torch.Tensor, chunk: int = 64) -> int:
        """The label (class index, or the null class) a two-part code names for (h, w) tokens: the one under
        which the model finds them likeliest, -log p of the hidden tokens at PROBE_MASKS seeded random
        half-masks. (C + 1) * PROBE_MASKS transformer rows, in chunks, against the code's h * w rows."""
        if not self.is_conditional:
            raise ValueError(f"{self.name} has no classes to name; its code length is the unconditional chain rule")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be one (h, w) grid, got shape {tuple(tokens.shape)}")
        flat = tokens.cpu().flatten()  # (N,)
        candidates = self.null_class + 1  # the classes, then the null class
        hidden = torch.rand(PROBE_MASKS, flat.numel(), generator=torch.Generator().manual_seed(0)) < 0.5  # (M, N)
        inputs = flat.repeat(PROBE_MASKS, 1).masked_fill(hidden, self.mask_id).repeat(candidates, 1)  # (L*M, N)
        labels = torch.arange(candidates).repeat_interleave(PROBE_MASKS)  # (L*M,) label-major
        picked = torch.empty(len(labels), flat.numel())  # (L*M, N) log p of each token
        for start in range(0, len(labels), chunk):
            rows = slice(start, start + chunk)
            predict = self._predictor(Conditioning.classes(labels[rows], self.null_class), 1.0, len(labels[rows]))
            log_probs = predict(inputs[rows].view(-1, *tokens.shape)).flatten(2).log_softmax(dim=1)  # (R, K, N)
            picked[rows] = log_probs.gather(1, flat.to(log_probs.device).expand(len(log_probs), 1, -1))[:, 0].cpu()
        scores = picked.masked_fill(~hidden.repeat(candidates, 1), 0.0).view(candidates, -1).sum(1)  # (L,)
        return int(scores.argmax())

    def code_length(self, image, class_label=None, prompt: str | None = None) -> CodeLength:
        """The image's code length under the prior, what an entropy coder driven by it spends on the fitted
        image's tokens. With a class or prompt: the raster chain rule under it (the decoder is told it).
        A class-conditional prior without a class: a two-part code, a label (one of the C classes or none)
        in log2(C + 1) bits, then the tokens under it, the label chosen by `coding_label`. A prior
        without classes (or aMUSEd without a prompt): the unconditional chain rule."""
        tokens = self.tokens_of(image)[0]  # (h, w)
        height, width = self.image_size
        label, label_bits = class_label, 0.0
        if self.is_conditional and class_label in (None, ""):
            self._conditioning(1, None, prompt, None, [])  # a prompt to a class model is refused before the probe
            chosen = self.coding_label(tokens)
            label = None if chosen == self.null_class else chosen
            label_bits = math.log2(self.null_class + 1)
        bits = self._raster_bits(tokens, label, prompt)
        name = None
        if self.is_conditional:
            index = self.class_index(label)
            name = "no class" if index == self.null_class else self.classes[index]
        return CodeLength(bits, name, label_bits, height * width)

    def bits_per_pixel(self, image, class_label=None, prompt: str | None = None) -> float:
        """Code length of the image's tokens under the prior over its pixels (`code_length`); compare
        with `index_bits_per_pixel`, log2 K / f^2."""
        return self.code_length(image, class_label, prompt).bits_per_pixel
