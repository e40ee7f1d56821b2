"""Sampling orders of token priors: which masked tokens each step fixes, how codes are drawn, and refinement.

Taming Transformers: Esser et al. (arXiv:2012.09841): p(x) = prod_i p(x_i | x_<i) in raster order, sampled one
  token at a time with top-k and temperature ("raster" order).
MaskGIT: Chang et al. (arXiv:2202.04200). Sampling starts fully masked; step s of S samples all masked tokens,
  keeps the most confident ones and re-masks the rest so that N cos(pi/2 (s+1)/S) stay masked (the cosine
  schedule, their eq. 3); confidence is the sampled token's log-probability plus Gumbel noise whose temperature
  anneals linearly to 0 ("confidence" order). diffusers' `AmusedScheduler.step` is this step; GenLab runs it with
  the scheduler's timesteps, temperatures and masking, but draws codes for the masked cells only
  (`confidence_step`, `draw_codes`): the same distribution at a fraction of the cost on a CPU.
  "random" keeps the same number of tokens per step but picks them in a seeded random order.
Refinement: Token-Critic (Lezama et al., arXiv:2209.04439) re-masks the sampled tokens a critic finds implausible
  and samples them again. Here the prior is its own critic: the sampled cells are split at random into SCORE_MASKS
  groups, each cell is scored by its log-probability with its group hidden (so given about three quarters of the
  others), the least likely REFINE_SHARE are masked and resampled in REFINE_STEPS confidence steps
  (`refine_rounds`); stray, speckle-like tokens are the ones it replaces.

Tokens are (B, h, w) int64 tensors holding the mask id where unknown; `predict(tokens)` gives (B, K, h, w) logits.
The knobs of a run (order, steps, temperature, top_k, choice temperature) come as one `genlab.sampling.SamplingSettings`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from diffusers import AmusedScheduler
from diffusers.schedulers.scheduling_amused import gumbel_noise

from ..sampling import SamplingSettings

MASKGIT_CHOICE_TEMPERATURE = 4.5  # MaskGIT's sample_choice_temperature: GenLab's priors (genlab.json) default to it
REFINE_SHARE = 0.1  # of the sampled cells, re-masked in each round
REFINE_STEPS = 4  # confidence steps that resample them
SCORE_MASKS = 4  # random groups of the sampled cells, each hidden once to score its cells


@dataclass
class TokenStep:
    """One unmasking step (CPU tensors): the grid after it, the model's full prediction, what it fixed."""

    tokens: torch.Tensor  # (B, h, w) after the step; mask id where still masked
    pred: torch.Tensor  # (B, h, w) a sampled token for every position (known ones kept)
    new: torch.Tensor  # (B, h, w) bool: fixed in this step


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
    CPU generator: K draws per cell, millions a step for a batch at K = 1024, where only the masked cells need one.
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


def iterate_unmask(predict, tokens: torch.Tensor, mask_id: int, settings: SamplingSettings,
                   generator: torch.Generator):
    """Generator over unmasking steps from `tokens` (mask_id where unknown; the same cells in every
    sample) until none is masked: yields a TokenStep after each. `predict(tokens)` -> (B, K, h, w) logits,
    filtered by settings.temperature and settings.top_k before each draw.

    settings.order confidence: settings.steps AmusedScheduler steps (`confidence_step`, Gumbel noise from
    settings.choice_temperature); random: the same counts, cells in a seeded random order; raster: one step per
    masked cell, in raster order. Closing the generator stops the loop.
    """
    order, steps = settings.order, settings.steps
    masked_cells = (tokens[0] == mask_id).flatten().nonzero()[:, 0]  # (M,) positions in raster order
    if order == "confidence":
        scheduler = AmusedScheduler(mask_token_id=mask_id)
        scheduler.set_timesteps(steps, temperature=(settings.choice_temperature, 0.0))
        for index in range(len(scheduler.timesteps)):
            logits = filter_logits(predict(tokens), settings.temperature, settings.top_k)
            after, pred = confidence_step(scheduler, index, logits, tokens, len(masked_cells), generator)
            new = (tokens == mask_id) & (after != mask_id)
            tokens = after
            yield TokenStep(tokens.cpu(), pred.cpu(), new.cpu())
        return
    if order == "raster":
        schedule = [cell[None] for cell in masked_cells]
    else:  # random
        shuffled = masked_cells[torch.randperm(len(masked_cells), generator=generator)]
        schedule, left = [], len(shuffled)
        for step in range(steps):
            remaining = still_masked(len(shuffled), step, steps, left)
            schedule.append(shuffled[len(shuffled) - left: len(shuffled) - remaining])
            left = remaining
    batch = tokens.shape[0]
    for cells in schedule:
        logits = filter_logits(predict(tokens), settings.temperature, settings.top_k)
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
                  generator: torch.Generator, settings: SamplingSettings | None = None):
    """Generator of TokenSteps: `rounds` times, score every `free` cell of the complete (B, h, w) `tokens` by
    log p(token | every cell outside its group), the free cells split at random into SCORE_MASKS groups, mask the
    REFINE_SHARE least likely of each sample (a TokenStep showing them masked, the old tokens as its
    prediction) and resample them in REFINE_STEPS confidence steps. `free`: (h, w) bool, the cells the run
    sampled (all for `sample`, the token mask for `inpaint`); the others are never touched. A round re-masks at
    least one cell; with fewer re-masked cells than REFINE_STEPS, the confidence schedule keeps one masked until
    its last step, so some of those steps fix nothing. `settings`: the run's temperature, top_k and choice
    temperature (default: `SamplingSettings`' own)."""
    resample = dataclasses.replace(settings or SamplingSettings(), scheduler=None, order="confidence",
                                   steps=REFINE_STEPS, refine=0)
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
        for step in iterate_unmask(predict, remasked.to(tokens.device), mask_id, resample, generator):
            yield step
        tokens = step.tokens.to(tokens.device)
