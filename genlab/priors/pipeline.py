"""Token priors: generate, inpaint and measure code length in a VQ model's token space (a VQGAN's second stage).

Taming Transformers: Esser et al. (arXiv:2012.09841). A transformer models the VQGAN's code grid as
  p(x) = prod_i p(x_i | x_<i) in raster order and samples it one token at a time, with top-k and
  temperature ("raster" order below).
MaskGIT: Chang et al. (arXiv:2202.04200). A bidirectional transformer predicts every masked token at
  once. Sampling starts fully masked; step s of S samples all masked tokens, keeps the most confident
  ones and re-masks the rest so that N cos(pi/2 (s+1)/S) stay masked (the cosine schedule, their
  eq. 3); confidence is the sampled token's log-probability plus Gumbel noise whose temperature
  anneals linearly to 0 ("confidence" order). diffusers' `AmusedScheduler.step` is this step; GenLab
  runs it with the scheduler's timesteps, temperatures and masking, but draws codes for the masked
  cells only (`confidence_step`, `draw_codes`): the same distribution, several times faster on a CPU.
  "random" keeps the same number of tokens per step but picks them in a seeded random order.
aMUSEd: Patil et al. (arXiv:2401.01808): MaskGIT with diffusers' `UVit2DModel` over a VQGAN's tokens,
  conditioned on CLIP text; the same loop runs it, with its pipeline's conditioning.
Inpainting: tokens whose f x f patch touches the mask are masked and sampled by the same loop,
  conditioned on every other token, which stays the image's own.
Refinement: Token-Critic (Lezama et al., arXiv:2209.04439) re-masks the sampled tokens a critic finds
  implausible and samples them again. Here the prior is its own critic: the sampled cells are split at
  random into SCORE_MASKS groups, each cell is scored by its log-probability with its group hidden (so
  given about three quarters of the others), the least likely REFINE_SHARE are masked and resampled in
  REFINE_STEPS confidence steps (`refine_rounds`); stray, speckle-like tokens are the ones it replaces.
Code length (Shannon): an entropy coder driven by the prior spends -log2 p(x_i | x_<i) bits on
  token i; a bidirectional model gives p(x_i | x_<i) when every later token is masked. Summed over
  the grid and divided by the pixels, this is the image's bits per pixel under the prior, against the
  log2 K / f^2 of storing each index as it is. A class-conditional prior with no class given spends a
  two-part code (Rissanen's MDL; Grunwald, "The Minimum Description Length Principle", ch. 1): it names
  a label (one of its C classes, or none) in log2(C + 1) bits, then codes the tokens under that label
  (`TokenPrior.code_length`). Any label gives a code a decoder can undo; the encoder takes the one whose
  model finds the tokens likeliest at a few seeded half-masks.

Tokens are (B, h, w) int64 tensors inside, holding the mask id (K for GenLab's transformer,
`scheduler.config.mask_token_id` for aMUSEd) where unknown; at the public API they are (h, w) numpy
int arrays with -1 where still masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AmusedScheduler
from diffusers.schedulers.scheduling_amused import gumbel_noise
from PIL import Image, ImageOps

from ..conditioning.guidance import ConditionalModel, Conditioning
from ..imaging.io import image_grid, mask_of, open_image, pil_to_tensor, tensor_to_pil

ORDERS = ("confidence", "raster", "random")
MAX_STEPS = 64  # confidence and random orders; raster takes one step per token
MAX_BATCH = 16
CHOICE_TEMPERATURE = 2.0  # start of the annealed Gumbel temperature (AmusedScheduler's default): Hub priors
MASKGIT_CHOICE_TEMPERATURE = 4.5  # MaskGIT's sample_choice_temperature: GenLab's priors (genlab.json) default to it
UNKNOWN = -1  # masked cells at the public API
PROBE_MASKS = 4  # seeded half-masks that choose the label of a two-part code (`TokenPrior.coding_label`)
MAX_REFINE = 8  # refinement rounds after sampling (`refine_rounds`)
REFINE_SHARE = 0.1  # of the sampled cells, re-masked in each round
REFINE_STEPS = 4  # confidence steps that resample them
SCORE_MASKS = 4  # random groups of the sampled cells, each hidden once to score its cells


@dataclass
class TokenStep:
    """One unmasking step (CPU tensors): the grid after it, the model's full prediction, what it fixed."""

    tokens: torch.Tensor  # (B, h, w) after the step; mask id where still masked
    pred: torch.Tensor  # (B, h, w) a sampled token for every position (known ones kept)
    new: torch.Tensor  # (B, h, w) bool: fixed in this step


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


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """(B, K, h, w) logits / temperature, with all but the top_k codes of each position at -inf."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[1]:
        kth = logits.topk(top_k, dim=1).values[:, -1:]  # (B, 1, h, w)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def draw_codes(logits: torch.Tensor, where: torch.Tensor, generator: torch.Generator):
    """(B, K, h, w) logits, (B, h, w) bool -> codes (B, h, w) int64 drawn from softmax(logits) at the
    `where` cells, and probs (B, h, w) float32, the drawn code's probability there (0 and 1 elsewhere).

    Inverse CDF: one uniform per drawn cell, u * total located in the cumulative probabilities (float64),
    so a code of probability 0 (top-k) is never drawn. `torch.multinomial`, which diffusers'
    `AmusedScheduler.step` calls for every cell, draws one exponential per cell and code from torch's serial
    CPU generator: 4M draws a step for a batch of 16 at K = 1024 (a second of a 3.6 s batch on this CPU).
    """
    batch, codes, height, width = logits.shape
    where = where.to(logits.device)
    rows = logits.permute(0, 2, 3, 1)[where].float().softmax(dim=-1).cpu()  # (M, K) the cells to draw
    cdf = rows.double().cumsum(dim=-1)  # (M, K)
    u = torch.rand(len(rows), 1, generator=generator, dtype=torch.float64) * cdf[:, -1:]  # (M, 1)
    drawn = torch.searchsorted(cdf, u, right=True)  # (M, 1) the first code whose cumulative mass exceeds u
    drawn = torch.where(drawn < codes, drawn, rows.argmax(dim=-1, keepdim=True))  # u rounded up to the total
    out = torch.zeros(batch, height, width, dtype=torch.long)
    probs = torch.ones(batch, height, width)
    where = where.cpu()
    out[where], probs[where] = drawn[:, 0], rows.gather(1, drawn)[:, 0]
    return out.to(logits.device), probs.to(logits.device)


def confidence_step(scheduler: AmusedScheduler, index: int, logits: torch.Tensor, tokens: torch.Tensor,
                    count: int, generator: torch.Generator):
    """Step `index` of `scheduler.timesteps`: `AmusedScheduler.step` (MaskGIT's step), but the codes are drawn
    for the masked cells only (`draw_codes`). (B, K, h, w) logits, (B, h, w) tokens -> (tokens after the
    step, the full prediction), both (B, h, w).

    As the scheduler: every masked cell gets a code; then `still_masked` of the `count` cells masked at the start
    are masked again, those of lowest log-probability plus the annealed Gumbel noise (`remask_least_confident`:
    diffusers' `mask_by_random_topk`, known cells excluded). Every sample has as many masked cells, so one count
    serves the batch.
    """
    mask_id = scheduler.config.mask_token_id
    unknown = tokens == mask_id  # (B, h, w)
    codes, probs = draw_codes(logits, unknown, generator)
    pred = torch.where(unknown, codes, tokens)  # (B, h, w)
    if index == len(scheduler.timesteps) - 1:
        return pred, pred
    batch = tokens.shape[0]
    unknown, probs = unknown.reshape(batch, -1), probs.reshape(batch, -1)  # (B, N)
    left = still_masked(count, index, len(scheduler.timesteps), int(unknown[0].sum()))
    masking = remask_least_confident(left, probs, unknown, scheduler.temperatures[index], generator)
    return torch.where(masking, mask_id, pred.reshape(batch, -1)).view_as(tokens), pred


def remask_least_confident(left: int, probs: torch.Tensor, unknown: torch.Tensor, temperature,
                           generator: torch.Generator) -> torch.Tensor:
    """(B, N) bool: the `left` cells of each row with the lowest log p + temperature * Gumbel noise, among the
    `unknown` ones. diffusers' `mask_by_random_topk` with the same noise draws, except that a known cell can
    never be chosen: the scheduler gives known cells the confidence finfo.max, whose log (88.7) a high Gumbel
    temperature can undercut, which would re-mask (and change) a token inpainting or refinement must keep."""
    confidence = torch.log(probs.clamp(1e-20)) + temperature * gumbel_noise(probs, generator=generator)  # (B, N)
    confidence = confidence.masked_fill(~unknown, float("inf"))
    cut_off = confidence.sort(dim=-1).values[:, left:left + 1]  # (B, 1) the (left + 1)-th lowest
    return confidence < cut_off


def still_masked(count: int, step: int, steps: int, previous: int) -> int:
    """Masked tokens left after `step` (0-based) of `steps`: MaskGIT's cosine schedule with
    AmusedScheduler's rounding (at least one new token a step while it can, none left at the end)."""
    if step == steps - 1:
        return 0
    # float32, as the scheduler computes it (cos(pi/3) = 0.49999997 there: floor(64 * it) = 31, not 32)
    ratio = torch.cos(torch.tensor(step + 1) / steps * math.pi / 2)
    return max(1, min(previous - 1, int((count * ratio).floor())))


def check_choice_temperature(value, name: str = "choice temperature") -> float:
    """`value` as a float when it is a number in [0, 20], else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 20:
        raise ValueError(f"{name} must be a number in [0, 20], got {value!r}")
    return float(value)


def iterate_unmask(predict, tokens: torch.Tensor, mask_id: int, *, order: str, steps: int, generator: torch.Generator,
                   temperature: float = 1.0, top_k: int | None = None, choice_temperature: float = CHOICE_TEMPERATURE):
    """Generator over unmasking steps from `tokens` (mask_id where unknown; the same cells in every
    sample) until none is masked: yields a TokenStep after each. `predict(tokens)` -> (B, K, h, w) logits.

    confidence: `steps` AmusedScheduler steps (`confidence_step`); random: the same counts, cells in a seeded random
    order; raster: one step per masked cell, in raster order. Closing the generator stops the loop.
    """
    masked_cells = (tokens[0] == mask_id).flatten().nonzero()[:, 0]  # (M,) positions in raster order
    if order == "confidence":
        scheduler = AmusedScheduler(mask_token_id=mask_id)
        scheduler.set_timesteps(steps, temperature=(choice_temperature, 0.0))
        for index in range(len(scheduler.timesteps)):
            logits = filter_logits(predict(tokens), temperature, top_k)
            after, pred = confidence_step(scheduler, index, logits, tokens, len(masked_cells), generator)
            new = (tokens == mask_id) & (after != mask_id)
            tokens = after
            yield TokenStep(tokens.cpu(), pred.cpu(), new.cpu())
        return
    if order == "raster":
        schedule = [cell[None] for cell in masked_cells]
    elif order == "random":
        shuffled = masked_cells[torch.randperm(len(masked_cells), generator=generator)]
        schedule, left = [], len(shuffled)
        for step in range(steps):
            remaining = still_masked(len(shuffled), step, steps, left)
            schedule.append(shuffled[len(shuffled) - left: len(shuffled) - remaining])
            left = remaining
    else:
        raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")
    batch = tokens.shape[0]
    for cells in schedule:
        logits = filter_logits(predict(tokens), temperature, top_k)
        unknown = tokens == mask_id
        pred = torch.where(unknown, draw_codes(logits, unknown, generator)[0], tokens)  # (B, h, w)
        flat = tokens.reshape(batch, -1).clone()
        flat[:, cells.to(flat.device)] = pred.reshape(batch, -1)[:, cells.to(flat.device)]
        new = (tokens == mask_id) & (flat.view_as(tokens) != mask_id)
        tokens = flat.view_as(tokens)
        yield TokenStep(tokens.cpu(), pred.cpu(), new.cpu())


def refinement_steps(rounds: int) -> int:
    """TokenSteps that `refine_rounds` yields: per round, the re-masked grid and its REFINE_STEPS steps."""
    return rounds * (1 + REFINE_STEPS)


def refine_rounds(predict, tokens: torch.Tensor, free: torch.Tensor, mask_id: int, *, rounds: int,
                  generator: torch.Generator, temperature: float = 1.0, top_k: int | None = None,
                  choice_temperature: float = CHOICE_TEMPERATURE):
    """Generator of TokenSteps: `rounds` times, score every `free` cell of the complete (B, h, w) `tokens` by
    log p(token | every cell outside its group), the free cells split at random into SCORE_MASKS groups, mask the
    REFINE_SHARE least likely of each sample (a TokenStep showing them masked, the old tokens as its
    prediction) and resample them in REFINE_STEPS confidence steps. `free`: (h, w) bool, the cells the run
    sampled (all for `sample`, the token mask for `inpaint`); the others are never touched. A round re-masks at
    least one cell; with fewer re-masked cells than REFINE_STEPS, the confidence schedule keeps one masked until
    its last step, so some of those steps fix nothing."""
    batch = tokens.shape[0]
    free_flat = free.flatten().cpu()  # (N,)
    count = max(1, int(REFINE_SHARE * int(free_flat.sum())))
    for _ in range(rounds):
        flat = tokens.reshape(batch, -1).cpu()  # (B, N)
        group = torch.randint(0, SCORE_MASKS, free_flat.shape, generator=generator)  # (N,) each cell's group
        score = torch.full(flat.shape, float("inf"))  # (B, N) log p of each free cell; fixed cells never chosen
        for k in range(SCORE_MASKS):
            hidden = (group == k) & free_flat  # (N,)
            if not hidden.any():
                continue
            log_probs = predict(flat.masked_fill(hidden, mask_id).view_as(tokens)).flatten(2).log_softmax(1)
            picked = log_probs.gather(1, flat[:, None].to(log_probs.device))[:, 0].cpu()  # (B, N)
            score = torch.where(hidden, picked, score)
        worst = score.argsort(dim=1)[:, :count]  # (B, count) the least likely free cells of each sample
        remasked = flat.scatter(1, worst, mask_id).view_as(tokens)
        yield TokenStep(remasked, tokens.cpu(), torch.zeros_like(remasked, dtype=torch.bool))
        for step in iterate_unmask(predict, remasked.to(tokens.device), mask_id, order="confidence",
                                   steps=REFINE_STEPS, generator=generator, temperature=temperature, top_k=top_k,
                                   choice_temperature=choice_temperature):
            yield step
        tokens = step.tokens.to(tokens.device)


def _public(tokens: torch.Tensor, mask_id: int) -> np.ndarray:
    """(B, h, w) tensor -> (h, w) array for one sample, (B, h, w) for more; masked cells -1."""
    array = torch.where(tokens == mask_id, UNKNOWN, tokens).numpy()
    return array[0] if len(array) == 1 else array


def _as_image(pixels: torch.Tensor) -> Image.Image:
    """(B, 3, H, W) in [-1, 1] -> one image (a grid of 4 columns for B > 1)."""
    images = [tensor_to_pil(p) for p in pixels]
    return images[0] if len(images) == 1 else image_grid(images, columns=min(4, len(images)))


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
        return _as_image(pixels.masked_fill(grey, 0.0))

    @cached_property
    def x0(self) -> Image.Image:
        """The decoded full prediction of this step."""
        return _as_image(self.prior.vq.decode_tensor(self.step.pred).cpu())


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
        return _as_image(self.pixels)


class TokenPrior(ConditionalModel):
    """A token transformer over a `genlab.autoencoders.vq.VQ`'s codes, its conditioning, and GenLab's operations.

    `transformer`: GenLab's `MaskedTokenTransformer` or `MaskedTokenUNet` (class labels) or diffusers'
    `UVit2DModel` (aMUSEd, with `text`, a `genlab.conditioning.text.TextEncoder`). Each maps (B, h, w) tokens to
    (B, K, h, w) logits.
    `distilled` (optional): a guidance-distilled copy of a class-conditional `transformer`; guided
    sampling at the scales it was distilled for calls it once a step, while the code length, unguided
    sampling and other scales keep to `transformer`, the prior itself.
    """

    def __init__(self, vq, transformer, scheduler_config: dict, info: dict | None = None, name: str = "prior",
                 text=None, distilled=None):
        self.vq, self.transformer, self.text, self.name = vq, transformer, text, name
        self.distilled = distilled
        info = info or {}
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
            side = int(info.get("grid", config.sample_size))
            self.grid = (side, side)
        else:
            self.grid = (int(config.height), int(config.width))
        self.classes: list[str] = list(info.get("classes", []))
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
        self.default_guidance_scale = float(info.get("default_guidance_scale", 10.0 if text is not None else 1.0))
        # the confidence order's Gumbel noise: the model's own default (genlab.json), else aMUSEd's
        self.default_choice_temperature = check_choice_temperature(
            info.get("default_choice_temperature", CHOICE_TEMPERATURE), "default_choice_temperature in genlab.json")

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
        kwargs = conditioning.batched(guided, self.device) if conditioning is not None else {}
        if distilled:
            kwargs["guidance"] = torch.full((batch,), float(guidance_scale), device=self.device)
        kwargs.update({k: torch.cat([v] * (2 if guided else 1)).to(self.device) for k, v in self._extra_kwargs(batch).items()})
        dtype = network.dtype
        kwargs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in kwargs.items()}

        @torch.inference_mode()
        def predict(tokens: torch.Tensor) -> torch.Tensor:
            tokens = tokens.to(self.device)
            logits = network(torch.cat([tokens, tokens]) if guided else tokens, **kwargs).float()
            if guided:
                conditional, unconditional = logits.chunk(2)
                logits = unconditional + guidance_scale * (conditional - unconditional)
            return logits

        return predict

    # -------------------------------------------------------------------- checks
    @staticmethod
    def _check_int(value, name: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= int(value) <= high:
            raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        return int(value)

    def _settings(self, order, steps, temperature, top_k, guidance_scale, choice_temperature, seed, refine=0):
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")
        if order != "raster":
            self._check_int(steps, "steps", 1, MAX_STEPS)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature <= 10:
            raise ValueError(f"temperature must be a number in (0, 10], got {temperature!r}")
        if top_k is not None:
            top_k = self._check_int(top_k, "top_k", 1, self.num_codes)
        guidance = self.default_guidance_scale if guidance_scale is None else guidance_scale
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance <= 30:
            raise ValueError(f"guidance scale must be a number in [0, 30], got {guidance!r}")
        choice = self.default_choice_temperature if choice_temperature is None else choice_temperature
        check_choice_temperature(choice)
        self._check_int(seed, "seed", 0, 2**63 - 1)
        self._check_int(refine, "refine", 0, MAX_REFINE)
        return top_k, float(guidance), float(choice)

    def _stream(self, tokens: torch.Tensor, run: TokenRun, *, steps, class_label, prompt, negative_prompt,
                temperature, top_k, guidance_scale, choice_temperature, refine=0):
        """Check the settings now, and return the generator of TokenFrames that ends with the TokenRun
        (the unmasking steps, then `refine` rounds of `refine_rounds` over the cells masked at the start)."""
        top_k, guidance, choice_temperature = self._settings(run.order, steps, temperature, top_k, guidance_scale,
                                                             choice_temperature, run.seed, refine)
        batch = tokens.shape[0]
        conditioning, unconditional = self._conditioning(batch, class_label, prompt, negative_prompt, run.notes)
        predict = self._predictor(conditioning, 1.0 if unconditional else guidance, batch)
        generator = torch.Generator().manual_seed(int(run.seed))
        sampling = dict(generator=generator, temperature=float(temperature), top_k=top_k,
                        choice_temperature=float(choice_temperature))
        steps_run = iterate_unmask(predict, tokens.to(self.device), self.mask_id, order=run.order, steps=int(steps),
                                   **sampling)
        free = tokens[0] == self.mask_id  # (h, w) the cells this run samples; refinement touches only these

        def frames():
            final = tokens
            for step in steps_run:
                run.steps.append(step)
                final = step.tokens
                yield TokenFrame(step, self, len(run.steps) - 1)
            if refine:
                for step in refine_rounds(predict, final.to(self.device), free, self.mask_id, rounds=int(refine),
                                          **sampling):
                    run.steps.append(step)
                    final = step.tokens
                    yield TokenFrame(step, self, len(run.steps) - 1)
            run.final = final.cpu()
            yield run

        return frames()

    @staticmethod
    def _last(stream):
        for item in stream:
            pass
        return item

    # ------------------------------------------------------------------ operations
    def sample_stream(self, seed: int = 0, steps: int = 12, order: str = "confidence", batch: int = 1,
                      class_label=None, temperature: float = 1.0, top_k: int | None = None,
                      guidance_scale: float | None = None, prompt: str | None = None,
                      negative_prompt: str | None = None, choice_temperature: float | None = None,
                      refine: int = 0):
        """Like `sample`, as a generator: a TokenFrame per step, then the TokenRun."""
        batch = self._check_int(batch, "batch", 1, MAX_BATCH)
        run = TokenRun(self, order, seed)
        tokens = torch.full((batch, *self.grid), self.mask_id, dtype=torch.long)
        if order == "raster":
            steps = tokens[0].numel()
        return self._stream(tokens, run, steps=steps, class_label=class_label, prompt=prompt,
                            negative_prompt=negative_prompt, temperature=temperature, top_k=top_k,
                            guidance_scale=guidance_scale, choice_temperature=choice_temperature, refine=refine)

    def sample(self, *args, **kwargs) -> TokenRun:
        """Sample a token grid from nothing and decode it; the same seed and settings give the same image.

        order: "confidence" (MaskGIT), "raster" (one token per step; `steps` is then the number of
        tokens) or "random"; steps (1..64), batch (1..16), class_label (name or index; None =
        unconditional) or prompt / negative_prompt (aMUSEd), temperature (divides the logits),
        top_k, guidance_scale (classifier-free, on the logits), choice_temperature (confidence order:
        start of the annealed Gumbel noise on the confidences; None: the model's `default_choice_temperature`,
        MaskGIT's 4.5 for GenLab's priors, aMUSEd's 2.0 for others), refine (0..8 rounds of `refine_rounds` after the last step:
        the least likely tenth of the tokens re-masked and resampled; `refinement_steps(refine)` more frames).
        """
        return self._last(self.sample_stream(*args, **kwargs))

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
        self._settings(order, steps, temperature, top_k, guidance_scale, choice_temperature, seed,
                       refine)  # refused before the image is encoded
        cells = self.token_mask(image, mask)
        tokens = self.tokens_of(image)
        tokens[0][torch.from_numpy(cells)] = self.mask_id
        run = TokenRun(self, order, seed, input=self.fit(image), token_mask=cells)
        if order == "raster":
            steps = int(cells.sum())
        return self._stream(tokens, run, steps=steps, class_label=class_label, prompt=prompt,
                            negative_prompt=negative_prompt, temperature=temperature, top_k=top_k,
                            guidance_scale=guidance_scale, choice_temperature=choice_temperature, refine=refine)

    def inpaint(self, *args, **kwargs) -> TokenRun:
        """Resample the tokens under the mask (white / non-zero = resample), conditioned on all the
        others, which stay exactly the image's own (`vq.indices_of` of the fitted image). The image is
        centre-cropped and resized to the prior's grid first. Same settings as `sample`."""
        return self._last(self.inpaint_stream(*args, **kwargs))

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
        self._check_int(positions, "positions", 1, count)
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
