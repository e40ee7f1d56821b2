"""Train a small CLIP (Radford et al., arXiv:2103.00020) on a captioned image folder: the text encoder of sd-emoji.

1. The tokenizer: byte-level BPE learned from the folder's captions (`genlab.conditioning.tokenizer`).
2. The model: transformers' `CLIPModel`, a causal text transformer and a ViT image tower of one width, each
   projected to a shared space. Each step draws `batch_size` different images and one of each image's captions
   (`captions.json`, {file name: [caption, ...]}) and minimises CLIP's symmetric InfoNCE loss over the batch's
   B x B cosine similarities, scaled by the learned temperature (their fig. 3):

       L = (CE(logits, arange(B)) + CE(logits^T, arange(B))) / 2,   logits = exp(t) * norm(T) @ norm(I)^T

Stable Diffusion then freezes the text tower and conditions its UNet on the last hidden states
(`genlab.train.sd`). The run exports `out/`: the whole `CLIPModel` (config.json + model.safetensors),
`text_encoder/` (its `CLIPTextModel`, as a Stable Diffusion pipeline holds it), `tokenizer/`, run.json and a card
with the retrieval accuracy on the training captions.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import CLIPConfig as HFCLIPConfig
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from ..conditioning.tokenizer import train_clip_tokenizer
from . import common
from .config import ClipConfig


def read_captions(data: common.ImageFolder) -> list[list[str]]:
    """Each image's captions from the folder's captions.json, in the folder's image order."""
    path = data.root / "captions.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: text-to-image training needs {{file name: [caption, ...]}} there "
                         "(python -m genlab.data emoji writes one)")
    table = json.loads(path.read_text())
    missing = [name for name in data.names if not table.get(name)]
    if missing:
        raise SystemExit(f"{path} has no captions for {len(missing)} images, e.g. {missing[:3]}")
    return [list(table[name]) for name in data.names]


def build_clip(config: ClipConfig, tokenizer: CLIPTokenizer, image_size: int) -> CLIPModel:
    width, layers, heads = config.hidden_size, config.num_layers, config.num_heads
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    text = dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                num_attention_heads=heads, max_position_embeddings=config.max_tokens,
                projection_dim=config.projection_dim, **ids)
    vision = dict(image_size=image_size, patch_size=config.patch_size, hidden_size=width, intermediate_size=4 * width,
                  num_hidden_layers=layers, num_attention_heads=heads, projection_dim=config.projection_dim)
    return CLIPModel(HFCLIPConfig(text_config=text, vision_config=vision, projection_dim=config.projection_dim))


def pixels(data: common.ImageFolder, index: np.ndarray) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1]: the image tower's input (no resizing: the folder's images are one size)."""
    return torch.from_numpy(np.stack([data.images[i] for i in index])).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def retrieval_accuracy(model: CLIPModel, tokenizer: CLIPTokenizer, data: common.ImageFolder, captions: list[str],
                       batch: int = 256) -> dict:
    """Top-1 and top-5 image -> text accuracy of each image against every image's caption (`captions[i]` is
    image i's), counting a hit when the retrieved caption's text equals the image's own (skin-tone twins
    share some captions)."""
    model.eval()
    device = next(model.parameters()).device
    images, texts = [], []
    for start in range(0, len(data), batch):
        index = np.arange(start, min(start + batch, len(data)))
        images.append(model.get_image_features(pixel_values=pixels(data, index).to(device)).pooler_output.float().cpu())
        tokens = tokenizer(captions[start:start + batch], padding="max_length", truncation=True, return_tensors="pt")
        texts.append(model.get_text_features(input_ids=tokens.input_ids.to(device)).pooler_output.float().cpu())
    image, text = torch.cat(images), torch.cat(texts)  # (N, P)
    similarity = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    top5 = similarity.topk(min(5, len(captions)), dim=1).indices  # (N, 5)
    names = np.array(captions)
    hits = names[top5.numpy()] == names[:, None]
    model.train()
    return {"top1": float(hits[:, 0].mean()), "top5": float(hits.any(axis=1).mean()), "n": len(captions)}


def train_clip(config: ClipConfig, accelerator: Accelerator, data: common.ImageFolder, state: common.RunState) -> None:
    captions = read_captions(data)
    checkpoint = config.run_dir / "checkpoint"
    resuming = config.resume and (checkpoint / "model").exists()
    sizes = {image.shape for image in data.images}
    if len(sizes) != 1:
        raise SystemExit(f"clip training needs images of one size, found {sorted(sizes)[:4]}")
    if resuming:
        tokenizer = CLIPTokenizer.from_pretrained(checkpoint / "tokenizer")
        model = CLIPModel.from_pretrained(checkpoint / "model", dtype=torch.float32)
    elif config.init:
        tokenizer = CLIPTokenizer.from_pretrained(config.init / "tokenizer")
        model = CLIPModel.from_pretrained(config.init, dtype=torch.float32)  # fp32 training whatever the file holds
    else:
        tokenizer = train_clip_tokenizer((c for group in captions for c in group), config.vocab_size, config.max_tokens)
        model = build_clip(config, tokenizer, next(iter(sizes))[0])
    batch = min(config.batch_size, len(data))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if resuming:
        common.load_optimizer(optimizer, checkpoint)
    schedule = common.lr_scheduler(optimizer, config.lr_schedule, config.lr, config.warmup_steps, config.steps,
                                   state.step)
    model, optimizer = accelerator.prepare(model, optimizer)
    rng = np.random.default_rng(config.seed + state.step)
    timer = common.Timer(state.wall_seconds)
    progress = tqdm(total=config.steps, initial=state.step, disable=not accelerator.is_main_process, desc="clip")
    running = None

    def save():
        state.wall_seconds = timer.total
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            checkpoint.mkdir(parents=True, exist_ok=True)
            unwrapped.save_pretrained(checkpoint / "model")
            tokenizer.save_pretrained(checkpoint / "tokenizer")
            common.save_optimizer(optimizer, checkpoint)
            state.save(checkpoint)
            export_clip(config, unwrapped, tokenizer, state)

    model.train()
    while common.keep_training(state, timer, config):
        index = rng.choice(len(data), size=batch, replace=False)
        texts = [captions[i][rng.integers(len(captions[i]))] for i in index]
        tokens = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
        with accelerator.autocast():
            loss = model(input_ids=tokens.input_ids.to(accelerator.device),
                         pixel_values=pixels(data, index).to(accelerator.device), return_loss=True).loss
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():  # CLIP clips the learned temperature at 100 (their sec. 2.5)
            accelerator.unwrap_model(model).logit_scale.clamp_(0, math.log(100))
        state.step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        progress.update(1)
        if state.step % config.log_every == 0:
            progress.set_postfix(loss=round(running, 4), lr=f"{schedule.get_last_lr()[0]:.2e}")
        if state.step % config.save_every == 0:
            save()
    state.wall_seconds = timer.total
    if accelerator.is_main_process:
        scores = retrieval_accuracy(accelerator.unwrap_model(model), tokenizer, data, [c[0] for c in captions])
        accelerator.print(f"retrieval on the training images' first captions: {scores}")
        state_path = config.run_dir / "retrieval.json"
        state_path.parent.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps(scores))
    save()
    progress.close()


def export_clip(config: ClipConfig, model: CLIPModel, tokenizer: CLIPTokenizer, state: common.RunState) -> None:
    """out/: the CLIPModel, its text tower as text_encoder/ (a `CLIPTextModel`), tokenizer/, run.json, README.md."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    text = CLIPTextModel(model.config.text_config)
    text.load_state_dict(model.text_model.state_dict())
    text.save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    state.save(out)
    scores_path = config.run_dir / "retrieval.json"
    scores = json.loads(scores_path.read_text()) if scores_path.is_file() else None
    write_clip_card(config, model, tokenizer, state, scores)


def write_clip_card(config: ClipConfig, model: CLIPModel, tokenizer: CLIPTokenizer, state: common.RunState,
                    scores: dict | None) -> None:
    from .cards import millions, write_model_card

    text, vision = model.config.text_config, model.config.vision_config
    summary = (f"A CLIP (transformers `CLIPModel`, {millions(model)} parameters) trained contrastively here: a "
               f"{text.num_hidden_layers}-layer causal text transformer of width {text.hidden_size} over "
               f"{text.max_position_embeddings} tokens, and a {vision.num_hidden_layers}-layer ViT of width "
               f"{vision.hidden_size} on {vision.patch_size}x{vision.patch_size} patches of {vision.image_size} px "
               f"images, projected to {model.config.projection_dim} dimensions. The `CLIPTokenizer` "
               f"({len(tokenizer)} entries, byte-level BPE) was learned from the same captions. `text_encoder/` is "
               "the text tower alone, what a Stable Diffusion pipeline conditions its UNet on.")
    data = (f"`{config.data}` and its captions.json, one random caption per image, {config.batch_size} different "
            f"images a batch, {config.lr_text()}, AdamW weight decay {config.weight_decay:g}.")
    quality = ("" if scores is None else
               f"## Retrieval\n\nImage -> caption among the {scores['n']} training images' first captions (the emoji's "
               f"name): top-1 {scores['top1']:.1%}, top-5 {scores['top5']:.1%} (training data: a check that the "
               "towers agree, not a held-out measure).")
    write_model_card(config.out, f"GenLab {config.out.name}", summary, data, state, quality)
