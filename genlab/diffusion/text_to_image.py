"""Text-to-image operations of a Stable Diffusion layout `DiffusionModel` (a mixin of
`genlab.diffusion.pipeline.DiffusionModel`): prompts compared side by side, and image to image with a prompt.

Compare prompts: 2 to 4 prompts from one x_T, stepping together in one batch (classifier-free guidance,
  Ho & Salimans, arXiv:2207.12598, each prompt with the negative prompt as its unconditional branch).
Image to image (SDEdit, Meng et al., arXiv:2108.01073): encode the image, noise it to t = strength * T with
  q(x_t | x_0), and run the remaining round(strength * steps) reverse steps with the prompt, as diffusers'
  `StableDiffusionImg2ImgPipeline` does; it is `denoise(image, t=...)` with a prompt.
Both record DAAM's word-level cross-attention maps when asked (`genlab.diffusion.attention`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..conditioning.guidance import Conditioning
from ..sampling import MAX_DIFFUSION_STEPS, check_int, check_number, last
from .loop import Step, Trajectory

if TYPE_CHECKING:
    from .pipeline import DiffusionRun

MAX_COMPARE_PROMPTS = 4  # prompts `compare_prompts` runs side by side


def _run_class():
    from .pipeline import DiffusionRun  # the pipeline module imports this one

    return DiffusionRun


class TextToImage:
    """`compare_prompts` and `img2img` (and their `_stream` forms) over the DiffusionModel's own sampling parts
    (`_settings`, `_text_conditioning`, `_attention_words`, `_noise`, `_stream`, `denoise_stream`, `_prepare`)."""

    def compare_prompts_stream(self, prompts, seed: int = 0, steps: int = 25, scheduler: str = "dpm++",
                               guidance_scale: float | None = None, negative_prompt: str | None = None,
                               eta: float = 0.0, size: int | None = None, record: bool = True,
                               attention_maps: bool = False):
        """Like `compare_prompts`, as a generator: at each reverse step a list of Steps (one per prompt, in order),
        then the list of DiffusionRuns. Everything is checked now, before the first step."""
        if not self.is_text_conditional:
            raise ValueError(f"{self.name} is not text-conditioned; comparing prompts needs a text model")
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise ValueError(f"prompts must be a list of 2 to {MAX_COMPARE_PROMPTS} prompts, got {prompts!r}")
        if not 2 <= len(prompts) <= MAX_COMPARE_PROMPTS:
            raise ValueError(f"compare 2 to {MAX_COMPARE_PROMPTS} prompts, got {len(prompts)}")
        if any(prompt is None for prompt in prompts):
            raise ValueError(f"prompt {[prompt is None for prompt in prompts].index(True) + 1} of the comparison "
                             "is missing; give each one as text")
        settings = self._settings(seed, steps, scheduler, len(prompts), guidance_scale, eta)
        size = self._check_size(size)
        notes = [[] for _ in prompts]  # each prompt's own notes (a cut prompt)
        conditioning = Conditioning.stack([self._text_conditioning([prompt], negative_prompt, prompt_notes)
                                           for prompt, prompt_notes in zip(prompts, notes)])
        words = self._attention_words(attention_maps, list(prompts))
        noise = self._noise(settings.seed, 1, size).expand(len(prompts), -1, -1, -1)  # (P, C, h, w): one x_T for all
        sampler = self.scheduler(scheduler)
        sampler.set_timesteps(settings.steps)
        batched = _run_class()(Trajectory(), scheduler, settings.seed, [int(t) for t in sampler.timesteps],
                               codec=self.codec)
        steps_run = self._stream(batched, sampler, noise * sampler.init_noise_sigma, settings, conditioning,
                                 record=False, words=words)
        return self._split_prompts(steps_run, batched, notes, record)

    def _split_prompts(self, steps_run, batched: DiffusionRun, notes: list[list[str]], record: bool):
        """The batched run of `compare_prompts_stream` as one Step per prompt at each step, then one run per prompt."""
        runs = [_run_class()(Trajectory(), batched.scheduler, batched.seed, batched.timesteps, codec=self.codec,
                             notes=prompt_notes) for prompt_notes in notes]
        try:
            for step in steps_run:
                if isinstance(step, _run_class()):
                    break
                split = [Step(step.timestep, step.x_t[i:i + 1], step.pred_x0[i:i + 1], step.pred_eps[i:i + 1],
                              None if step.attention is None else step.attention.select(i)) for i in range(len(runs))]
                if record:
                    for run, prompt_step in zip(runs, split):
                        run.trajectory.steps.append(prompt_step)
                yield split
        finally:
            steps_run.close()
        for i, run in enumerate(runs):
            run.trajectory.final = batched.trajectory.final[i:i + 1]
            run.attention = None if batched.attention is None else batched.attention.select(i)
        yield runs

    def compare_prompts(self, prompts, seed: int = 0, steps: int = 25, scheduler: str = "dpm++",
                        guidance_scale: float | None = None, negative_prompt: str | None = None, eta: float = 0.0,
                        size: int | None = None, record: bool = True,
                        attention_maps: bool = False) -> list[DiffusionRun]:
        """2 to 4 prompts from the same x_T (`initial_noise(seed)`), stepping together in one batch: one
        DiffusionRun per prompt, in order, each with its own frames, notes and (attention_maps=True) word maps.
        The same call gives the same images. Other settings as `sample` (batch is the number of prompts)."""
        return last(self.compare_prompts_stream(prompts, seed, steps, scheduler, guidance_scale, negative_prompt, eta,
                                                size, record, attention_maps))

    def img2img_stream(self, image, prompt: str, strength: float = 0.6, steps: int = 25, seed: int = 0,
                       scheduler: str = "dpm++", guidance_scale: float | None = None,
                       negative_prompt: str | None = None, eta: float = 0.0, max_side: int | None = None,
                       record: bool = True, attention_maps: bool = False):
        """Like `img2img`, as a generator: one Step per reverse step, then the DiffusionRun."""
        strength = check_number(strength, "strength", 0.0, 1.0)
        steps = check_int(steps, "steps", 1, MAX_DIFFUSION_STEPS)
        if prompt is None:
            raise ValueError("img2img takes a prompt; denoise(image, t=...) runs SDEdit without one")
        max_side = self.sample_size if max_side is None else max_side
        if strength > 0:
            start = min(round(strength * self.num_train_timesteps), self.num_train_timesteps - 1)
            return self.denoise_stream(image, t=start, steps=max(1, round(steps * strength)), seed=seed,
                                       scheduler=scheduler, guidance_scale=guidance_scale, eta=eta, max_side=max_side,
                                       record=record, prompt=prompt, negative_prompt=negative_prompt,
                                       attention_maps=attention_maps)
        settings = self._settings(seed, steps, scheduler, 1, guidance_scale, eta)  # checked though unused
        notes = ["strength 0: no noise added and no step run; the image is the input, unchanged"]
        self._condition(settings, None, prompt, negative_prompt, notes)
        self._attention_words(attention_maps, [prompt])
        image, pixels, (height, width) = self._prepare(image, max_side)
        f = self.codec.factor
        x0 = self.codec.encode(pixels)[..., : -(-height // f), : -(-width // f)]  # (1, C, h, w)
        run = _run_class()(Trajectory(final=x0), scheduler, settings.seed, [], codec=self.codec, crop=(height, width),
                           reference=image, known_pixels=pixels[..., :height, :width],
                           keep_pixels=torch.ones(1, 1, height, width), notes=notes)  # every pixel kept: the input
        return iter([run])

    def img2img(self, image, prompt: str, strength: float = 0.6, steps: int = 25, seed: int = 0,
                scheduler: str = "dpm++", guidance_scale: float | None = None, negative_prompt: str | None = None,
                eta: float = 0.0, max_side: int | None = None, record: bool = True,
                attention_maps: bool = False) -> DiffusionRun:
        """Image to image with a prompt (SDEdit, Meng et al., arXiv:2108.01073): the image (any size, downscaled
        so its longer side is at most `max_side`, by default the model's sample size, then padded as `denoise`
        does) is encoded, noised to t = strength * T and taken back through round(strength * steps) steps
        (at least 1) with the prompt, by `denoise(image, t=...)`.

        strength: a number in [0, 1]; 1 starts from (almost) pure noise, 0 returns the input unchanged (a note
        says so). Other settings as `sample`; run.reference is the input, run.noisy its noised start.
        """
        return last(self.img2img_stream(image, prompt, strength, steps, seed, scheduler, guidance_scale,
                                        negative_prompt, eta, max_side, record, attention_maps))
