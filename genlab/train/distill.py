"""Guidance distillation of a trained token prior: `python -m genlab.train prior --distill-from PRIOR`.

Meng et al., "On Distillation of Guided Diffusion Models" (arXiv:2210.03142), stage 1, here for a token prior:
a student told the scale w ~ U(1, w_max) matches, at the masked tokens of the same masks, the distribution of
the frozen teacher's guided logits uncond + w (cond - uncond), by KL(teacher || student); rows whose label was
dropped match the teacher's unconditional logits, so the student still has an unconditional model of its own
(the exported prior keeps the teacher for the code length and for scales outside [1, w_max]). Guided sampling
then costs one call of the student instead of two of the teacher.

The student is the teacher's kind of network (a MaskedTokenTransformer or a MaskedTokenUNet) with a
zero-initialised guidance embedding; `genlab.train.prior.train_prior` runs the loop with this module's loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import PriorConfig
from .prior import mask_for_training


def guidance_distillation_loss(student, teacher, tokens: torch.Tensor, class_labels: torch.Tensor,
                               generator: torch.Generator, raster_share: float = 0.25,
                               guidance_max: float = 8.0) -> torch.Tensor:
    """Mean KL(teacher's guided || student) in nats over the masked tokens of (B, h, w) `tokens`; labels
    equal to the null class (dropped) take the teacher's unconditional logits as the target."""
    inputs, masked = mask_for_training(tokens, student.mask_token_id, generator, raster_share)
    batch, null = tokens.shape[0], student.null_class
    scale = 1 + (guidance_max - 1) * torch.rand(batch, generator=generator).to(tokens.device)  # (B,) w
    with torch.no_grad(), torch.autocast(tokens.device.type, enabled=False):  # fp32 targets: w up to 8 scales errors
        labels = torch.cat([class_labels, torch.full_like(class_labels, null)])  # (2B,) cond, then uncond
        both = teacher(torch.cat([inputs, inputs]), class_labels=labels)
        cond, uncond = both.float().chunk(2)  # (B, K, h, w) each
        weight = torch.where(class_labels == null, 0.0, scale)[:, None, None, None]
        target = (uncond + weight * (cond - uncond)).log_softmax(dim=1)  # (B, K, h, w) log-probabilities
    logits = student(inputs, class_labels=class_labels, guidance=scale).float().log_softmax(dim=1)
    kl = (target.exp() * (target - logits)).sum(dim=1)  # (B, h, w)
    return kl[masked].mean()


def distillation_student(teacher, guidance_max: float):
    """A CPU copy of the teacher (a MaskedTokenTransformer or MaskedTokenUNet) with a zero-initialised guidance
    embedding: at the start it is the teacher."""
    if getattr(teacher.config, "guidance_embedding", False):
        raise SystemExit(f"--distill-from: that {type(teacher).__name__} is already guidance-distilled")
    student = type(teacher).from_config(teacher.config, guidance_embedding=True, guidance_max=guidance_max)
    missing, unexpected = student.load_state_dict(teacher.teacher_state_dict(), strict=False)
    if unexpected or not all(key.startswith("guidance_") for key in missing):
        raise SystemExit(f"--distill-from: the teacher's weights do not fit its config "
                         f"(missing {missing}, unexpected {unexpected})")
    return student


def load_teacher(config: PriorConfig, network_class, classes: list[str], device: torch.device):
    """The frozen fp32 teacher of `config.distill_from` on `device`; it must know the data's classes."""
    teacher = network_class.from_pretrained(config.distill_from / "transformer").float()
    teacher = teacher.to(device).eval().requires_grad_(False)
    if teacher.config.num_classes != len(classes) or not classes:
        raise SystemExit(f"--distill-from: the teacher has {teacher.config.num_classes} classes, "
                         f"{config.data} has {len(classes)}; distillation needs the teacher's labelled data")
    return teacher


def teacher_record(checkpoint: Path) -> Path:
    """Where a distillation run's checkpoint names the teacher it started from."""
    return checkpoint / "teacher.json"


def record_teacher(config: PriorConfig, checkpoint: Path) -> None:
    teacher_record(checkpoint).write_text(json.dumps({"distill_from": str(config.distill_from)}))


def check_resumed_teacher(config: PriorConfig, checkpoint: Path, resuming: bool) -> None:
    """A resumed distillation goes on distilling the teacher it started from."""
    record = teacher_record(checkpoint)
    if resuming and record.is_file() and config.distill_from:
        started = json.loads(record.read_text())["distill_from"]
        if Path(started).resolve() != config.distill_from.resolve():
            raise SystemExit(f"this run distils {started}; resume it with --distill-from {started}")
