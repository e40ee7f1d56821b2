"""The training CLI on tiny data: losses fall, checkpoints round-trip, resume continues, exports load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import genlab
from genlab.train import common, ddpm, vq
from genlab.train.__main__ import main as train_main

TINY_VQ = ["--channels", "8,16", "--codes", "16", "--code-dim", "3", "--crop", "16", "--batch-size", "4",
           "--threads", "1", "--cpu", "--log-every", "1", "--sample-every", "1000"]
TINY_DDPM = ["--channels", "8,16", "--attention", "0,0", "--sample-size", "16", "--crop", "16", "--batch-size", "4",
             "--threads", "1", "--cpu", "--log-every", "1", "--sample-every", "1000"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """12 small images in 3 classes: coloured discs on white, with labels.json."""
    folder = tmp_path_factory.mktemp("tiny-data")
    rng = np.random.default_rng(0)
    labels = {}
    for index in range(12):
        array = np.full((24, 24, 3), 255, np.uint8)
        yy, xx = np.mgrid[:24, :24]
        colour = [(230, 40, 40), (40, 200, 40), (40, 40, 230)][index % 3]
        radius = 5 + rng.integers(0, 5)
        array[(yy - 12) ** 2 + (xx - 12) ** 2 < radius ** 2] = colour
        Image.fromarray(array).save(folder / f"{index:02d}.png")
        labels[f"{index:02d}.png"] = ["red", "green", "blue"][index % 3]
    (folder / "labels.json").write_text(json.dumps(labels))
    return folder


def run_json(folder):
    return json.loads((folder / "run.json").read_text())


def test_vqvae_trains_exports_and_resumes(image_folder, tmp_path):
    out, run_dir = tmp_path / "vq", tmp_path / "run"
    base = ["vqvae", "--data", str(image_folder), "--out", str(out), "--run-dir", str(run_dir), *TINY_VQ]
    train_main(base + ["--steps", "4", "--save-every", "2"])
    assert run_json(run_dir / "checkpoint")["step"] == 4
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "README.md", "genlab.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) and not list(run_dir.rglob("*.bin")) and not list(run_dir.rglob("*.pt"))
    saved = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    train_main(base + ["--steps", "7", "--resume"])
    state = run_json(run_dir / "checkpoint")
    assert state["step"] == 7 and len(state["commands"]) == 2  # continued, not restarted
    resumed = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(saved[k], resumed[k]) for k in saved)  # the resumed steps changed the weights
    model = genlab.load_vq(out, device="cpu")
    assert model.num_codes == 16 and model.downsample_factor == 2
    card = (out / "README.md").read_text()
    assert "steps: 7" in card and "wall time" in card and "--resume" in card


def test_vq_loss_goes_down_and_codebook_stays_alive(image_folder):
    common.seed_everything(0)
    from genlab.train.cli import parse_args
    from genlab.train.vq import build_vq

    args = parse_args(["vqvae", "--data", str(image_folder), "--out", "unused", *TINY_VQ])
    trainer = vq.VQAutoencoderForTraining(build_vq(args), decay=0.9, dead_threshold=0.2)
    optimizer = torch.optim.Adam([p for p in trainer.parameters() if p.requires_grad], lr=3e-3)
    batches = iter(common.RandomCrops(common.ImageFolder(image_folder), 16, 8, seed=0))
    losses, used = [], set()
    for step in range(60):
        pixels, _ = next(batches)
        reconstruction, indices, commitment = trainer(pixels)
        loss = torch.nn.functional.mse_loss(reconstruction, pixels) + 0.25 * commitment
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step >= 50:
            used |= set(indices.flatten().tolist())
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    assert len(used) >= 6  # of 16 codes: restarts keep the codebook from collapsing to one or two


def test_ema_quantizer_matches_diffusers_quantizer():
    """Training-time quantization must equal the exported VQModel's own nearest-code rule."""
    from diffusers import VQModel

    model = VQModel(block_out_channels=(8,), norm_num_groups=8, latent_channels=3, num_vq_embeddings=16)
    quantizer = vq.EMAVectorQuantizer(model.quantize.embedding.weight).eval()
    latents = torch.randn(2, 3, 5, 5)
    quantized, indices, _ = quantizer(latents)
    expected, _, (_, _, expected_indices) = model.quantize(latents)
    assert torch.equal(indices.flatten(), expected_indices.flatten())
    assert torch.allclose(quantized, expected, atol=1e-6)


def test_dead_codes_restart_on_batch_latents():
    codebook = torch.nn.Parameter(torch.zeros(4, 2))
    quantizer = vq.EMAVectorQuantizer(codebook, decay=0.5, dead_threshold=0.5)
    quantizer.initialized.fill_(True)
    quantizer.cluster_size.zero_()  # every code looks dead
    latents = torch.randn(1, 2, 4, 4) + 10.0
    quantizer(latents)
    assert (codebook.detach().abs().sum(dim=1) > 5).all()  # all four moved onto the data


def test_ddpm_class_conditional_trains_and_resumes(image_folder, tmp_path):
    out, run_dir = tmp_path / "dm", tmp_path / "run"
    base = ["ddpm", "--data", str(image_folder), "--out", str(out), "--run-dir", str(run_dir), *TINY_DDPM,
            "--label-dropout", "0.2", "--beta-schedule", "squaredcos_cap_v2", "--min-snr-gamma", "5"]
    train_main(base + ["--steps", "3", "--save-every", "3"])
    train_main(base + ["--steps", "5", "--resume", "--guidance-scale", "1.5"])
    assert run_json(run_dir / "checkpoint")["step"] == 5
    info = json.loads((out / "genlab.json").read_text())
    assert info["classes"] == ["blue", "green", "red"] and info["null_class"] == 3
    assert info["default_guidance_scale"] == 1.5
    assert (out / "scheduler_config.json").is_file()
    dm = genlab.load_diffusion(out, device="cpu")
    assert dm.is_conditional and dm.unet.config.num_class_embeds == 4
    run = dm.sample(seed=0, steps=3, class_label="red", guidance_scale=2.0)
    assert run.image.size == (16, 16)


def test_ddpm_loss_goes_down(image_folder):
    from diffusers import DDPMScheduler

    from genlab.train.cli import parse_args
    from genlab.train.ddpm import build_unet

    common.seed_everything(0)
    args = parse_args(["ddpm", "--data", str(image_folder), "--out", "unused", *TINY_DDPM])
    unet = build_unet(args, 0)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=3e-3)
    batches = iter(common.RandomCrops(common.ImageFolder(image_folder), 16, 8, seed=0))
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        clean, _ = next(batches)
        timesteps = ddpm.sample_timesteps(len(clean), 1000, 0, 0.0, generator)
        loss = ddpm.diffusion_loss(unet, scheduler, clean, timesteps, None, 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])


def test_min_snr_weights_and_focus_sampling():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    timesteps = torch.tensor([0, 500, 999])
    weights = ddpm.min_snr_weights(scheduler.alphas_cumprod, timesteps, gamma=5.0)
    assert weights[0] < 0.01 and weights[2] == pytest.approx(1.0)  # low noise is down-weighted, high noise not
    drawn = ddpm.sample_timesteps(10_000, 1000, focus_max=100, focus_share=0.8, generator=torch.Generator().manual_seed(0))
    assert 0.8 < (drawn < 100).float().mean() < 0.85


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    common.save_optimizer(optimizer, tmp_path)
    restored = torch.optim.AdamW(model.parameters(), lr=5.0)
    common.load_optimizer(restored, tmp_path)
    assert restored.param_groups[0]["lr"] == 1e-3
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(restored.state[model.weight][key], optimizer.state[model.weight][key])
    common.lr_scheduler(restored, "constant", 2e-4, warmup=0, total=10, step=1)  # a resumed run with a new --lr
    assert restored.param_groups[0]["lr"] == 2e-4
    assert torch.equal(restored.state[model.weight]["exp_avg"], optimizer.state[model.weight]["exp_avg"])


def test_class_power_rebalances_the_classes_drawn(tmp_path):
    """8 images of one class, 2 of another: power 1 keeps 80/20, 0.5 gives sqrt(8):sqrt(2) = 2:1, 0 gives 50/50."""
    labels = {}
    for index in range(10):
        Image.fromarray(np.full((8, 8, 3), 20 * index, np.uint8)).save(tmp_path / f"{index}.png")
        labels[f"{index}.png"] = "common" if index < 8 else "rare"
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    folder = common.ImageFolder(tmp_path)
    rare = folder.classes.index("rare")
    for power, share in ((1.0, 0.2), (0.5, 1 / 3), (0.0, 0.5)):
        batches = iter(common.RandomCrops(folder, 8, 500, seed=0, class_power=power))
        drawn = torch.cat([next(batches)[1] for _ in range(8)])  # 4,000 labels
        assert (drawn == rare).float().mean().item() == pytest.approx(share, abs=0.03), power


def test_lr_schedule_continues_its_curve_on_resume(image_folder, tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = common.lr_scheduler(optimizer, "cosine", 1e-3, warmup=2, total=10, step=0)
    curve = []
    for _ in range(10):
        curve.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert curve[0] == 0.0 and curve[2] == pytest.approx(1e-3) and curve[6] < curve[4] < curve[2]
    restarted = torch.optim.AdamW(model.parameters(), lr=5.0)  # as after load_optimizer: the saved rate
    resumed = common.lr_scheduler(restarted, "cosine", 1e-3, warmup=2, total=10, step=6)
    assert resumed.get_last_lr()[0] == pytest.approx(curve[6]) == restarted.param_groups[0]["lr"]

    # through the CLI: the optimizer a checkpoint stores runs at the schedule's rate, which ends at 0
    run_dir = tmp_path / "run"
    base = ["ddpm", "--data", str(image_folder), "--out", str(tmp_path / "dm"), "--run-dir", str(run_dir), *TINY_DDPM,
            "--lr-schedule", "cosine", "--warmup-steps", "1", "--lr", "1e-3"]
    stored_lr = lambda: json.loads((run_dir / "checkpoint" / "optimizer.json").read_text())["param_groups"][0]["lr"]
    train_main(base + ["--steps", "4", "--save-every", "2"])
    assert stored_lr() == pytest.approx(0.0, abs=1e-12)  # the constant 1e-3 of --lr would be stored otherwise
    train_main(base + ["--steps", "8", "--save-every", "2", "--resume"])  # a longer curve, again ending at 0
    assert stored_lr() == pytest.approx(0.0, abs=1e-12)
    assert "cosine, 1 warmup steps over 8 steps" in (tmp_path / "dm" / "README.md").read_text()


def test_prior_trains_over_a_vq_model_exports_fp16_and_resumes(image_folder, tmp_path):
    """The token prior's one command: the aMUSEd-like folder loads with genlab.load_prior, the transformer
    is stored in fp16 when asked, and --resume continues the step count and the run's record."""
    vq_out = tmp_path / "vq"
    train_main(["vqvae", "--data", str(image_folder), "--out", str(vq_out), "--run-dir", str(tmp_path / "vq-run"),
                *TINY_VQ, "--steps", "2", "--save-every", "2"])
    out, run_dir = tmp_path / "prior", tmp_path / "run"
    base = ["prior", "--data", str(image_folder), "--vq", str(vq_out), "--out", str(out), "--run-dir", str(run_dir),
            "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2", "--batch-size", "4",
            "--threads", "1", "--cpu", "--log-every", "1", "--sample-every", "1000", "--guidance-scale", "2.0",
            "--export-fp16", "--shift-share", "0.5"]
    train_main(base + ["--steps", "3", "--save-every", "3"])
    train_main(base + ["--steps", "5", "--resume"])
    state = run_json(run_dir / "checkpoint")
    assert state["step"] == 5 and len(state["commands"]) == 2
    for name in ("model_index.json", "genlab.json", "README.md", "samples.png", "scheduler/scheduler_config.json",
                 "vqvae/config.json", "transformer/config.json"):
        assert (out / name).is_file(), name
    weights = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float16}
    info = json.loads((out / "genlab.json").read_text())
    assert info["classes"] == ["blue", "green", "red"] and info["default_guidance_scale"] == 2.0
    assert info["default_choice_temperature"] == 4.5
    prior = genlab.load_prior(out, device="cpu")
    assert prior.transformer.dtype == torch.float32  # upcast on CPU
    assert prior.grid == (12, 12) and prior.num_codes == 16  # the 24 px images' tokens
    assert prior.classes == ["blue", "green", "red"]
    run = prior.sample(seed=0, steps=3, class_label="red")
    assert run.image.size == (24, 24) and (run.tokens >= 0).all() and (run.tokens < 16).all()
    card = (out / "README.md").read_text()
    assert "steps: 5" in card and "--resume" in card and "width 16" in card
    assert "moved by one token in each of 8 directions, white fill, drawn instead of the image 50% of the time" in card


def test_prior_unet_backbone_trains_exports_loads_and_resumes(image_folder, tmp_path):
    """--backbone unet: a MaskedTokenUNet on the same tokens and loss; the export names it in model_index.json and
    the card, genlab.load_prior samples and measures with it, --resume keeps it, and the transformer's options or a
    resume as the other backbone are refused."""
    vq_out = tmp_path / "vq"
    train_main(["vqvae", "--data", str(image_folder), "--out", str(vq_out), "--run-dir", str(tmp_path / "vq-run"),
                *TINY_VQ, "--steps", "1", "--save-every", "1"])
    out, run_dir = tmp_path / "prior", tmp_path / "run"
    base = ["prior", "--data", str(image_folder), "--vq", str(vq_out), "--out", str(out), "--run-dir", str(run_dir),
            "--backbone", "unet", "--channels", "32,32", "--attention", "0,1", "--layers-per-block", "1",
            "--batch-size", "4", "--threads", "1", "--cpu", "--log-every", "1", "--sample-every", "1000",
            "--guidance-scale", "2.0", "--export-fp16"]
    train_main(base + ["--steps", "2", "--save-every", "2"])
    before = load_file(str(run_dir / "checkpoint" / "model" / "diffusion_pytorch_model.safetensors"))
    train_main(base + ["--steps", "3", "--resume"])
    assert run_json(run_dir / "checkpoint")["step"] == 3
    after = load_file(str(run_dir / "checkpoint" / "model" / "diffusion_pytorch_model.safetensors"))
    assert after.keys() == before.keys() and not all(torch.equal(after[k], before[k]) for k in after)
    assert json.loads((out / "model_index.json").read_text())["transformer"] == ["genlab", "MaskedTokenUNet"]
    config = json.loads((out / "transformer" / "config.json").read_text())
    assert config["block_out_channels"] == [32, 32] and config["attention"] == [False, True]
    assert config["num_classes"] == 3 and config["embedding_size"] == 32
    weights = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float16}
    prior = genlab.load_prior(out, device="cpu")
    assert type(prior.transformer).__name__ == "MaskedTokenUNet" and prior.transformer.dtype == torch.float32
    assert prior.default_choice_temperature == 4.5  # MaskGIT's, written into genlab.json by the export
    assert prior.grid == (12, 12) and prior.classes == ["blue", "green", "red"]
    run = prior.sample(seed=0, steps=3, class_label="red", guidance_scale=2.0)
    assert run.image.size == (24, 24) and (run.tokens >= 0).all() and (run.tokens < 16).all()
    assert 0 < prior.bits_per_pixel(run.image) < 2 * prior.index_bits_per_pixel
    card = (out / "README.md").read_text()
    assert "`MaskedTokenUNet`" in card and "32, 32 + attention" in card and "steps: 3" in card
    with pytest.raises(SystemExit, match="it trains as --backbone unet, not transformer"):
        train_main(base[:9] + base[17:] + ["--steps", "4", "--resume"])  # the transformer backbone (the default)


@pytest.mark.parametrize("layout, network", [
    (["--hidden-size", "16", "--num-layers", "1", "--num-heads", "2"], "MaskedTokenTransformer"),
    (["--backbone", "unet", "--channels", "32,32", "--attention", "0,1", "--layers-per-block", "1"], "MaskedTokenUNet"),
])
def test_prior_distill_from_writes_a_guidance_distilled_prior(image_folder, tmp_path, layout, network):
    """--distill-from (a transformer or a UNet teacher): the teacher's vqvae/ and network are the defaults; the
    export keeps the teacher as transformer/ and adds the student, the same kind of network taking the guidance
    scale, as transformer_distilled/; genlab.load_prior samples guided with the student in one call a step; the
    card says so; a resume must name the same teacher."""
    vq_out, teacher = tmp_path / "vq", tmp_path / "teacher"
    train_main(["vqvae", "--data", str(image_folder), "--out", str(vq_out), "--run-dir", str(tmp_path / "vq-run"),
                *TINY_VQ, "--steps", "1", "--save-every", "1"])
    tiny = ["--batch-size", "4", "--threads", "1", "--cpu", "--log-every", "1", "--sample-every", "1000",
            "--guidance-scale", "2.0"]
    train_main(["prior", "--data", str(image_folder), "--vq", str(vq_out), "--out", str(teacher), "--run-dir",
                str(tmp_path / "teacher-run"), *layout, "--steps", "2", "--save-every", "2", *tiny])
    out = tmp_path / "student"
    student = ["prior", "--data", str(image_folder), "--out", str(out), "--run-dir", str(tmp_path / "student-run"),
               "--guidance-max", "5", *tiny]
    train_main(student + ["--distill-from", str(teacher), "--steps", "2", "--save-every", "2"])
    train_main(student + ["--distill-from", str(teacher), "--steps", "3", "--resume"])
    assert run_json(tmp_path / "student-run" / "checkpoint")["step"] == 3
    with pytest.raises(SystemExit, match=r"train \(or resume\) it with --distill-from"):
        train_main(student + ["--steps", "4", "--resume"])
    other = shutil.copytree(teacher, tmp_path / "other-teacher")
    with pytest.raises(SystemExit, match="resume it with --distill-from"):
        train_main(student + ["--distill-from", str(other), "--steps", "4", "--resume"])
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(image_folder, unlabelled, ignore=shutil.ignore_patterns("labels.json"))
    with pytest.raises(SystemExit, match="distillation needs the teacher's labelled data"):
        train_main(["prior", "--data", str(unlabelled), "--distill-from", str(teacher), "--out", str(tmp_path / "x"),
                    "--steps", "1", *tiny])
    config = json.loads((out / "transformer_distilled" / "config.json").read_text())
    assert config["guidance_embedding"] is True and config["guidance_max"] == 5.0 and config["_class_name"] == network
    config.pop("_name_or_path", None)  # where the student was loaded from before its export
    assert config == {**json.loads((teacher / "transformer" / "config.json").read_text()),
                      "guidance_embedding": True, "guidance_max": 5.0}  # the teacher's layout
    assert json.loads((out / "model_index.json").read_text())["transformer_distilled"] == ["genlab", network]
    taught = load_file(str(teacher / "transformer" / "diffusion_pytorch_model.safetensors"))
    kept = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))  # the prior itself
    assert kept.keys() == taught.keys() and all(torch.equal(kept[k], taught[k]) for k in kept)
    prior = genlab.load_prior(out, device="cpu")
    assert type(prior.transformer).__name__ == type(prior.distilled).__name__ == network
    assert not prior.transformer.config.guidance_embedding
    assert prior.distilled.distills(2.0) and not prior.distilled.distills(6.0)
    assert prior.distilled_for(2.0) is prior.distilled and prior.distilled_for(6.0) is None
    assert prior.sample(seed=0, steps=2, class_label="red").image.size == (24, 24)
    card = (out / "README.md").read_text()
    assert "guidance-distilled copy" in card and str(teacher) in card
    assert "## The teacher (`transformer/`)\nTrained first, by GenLab's CLI (2 steps" in card
    assert f"--out {teacher} --run-dir" in card  # the teacher's own command


def test_prior_dropout_overrides_the_config_it_starts_from(image_folder, tmp_path):
    """--dropout builds a prior with dropout, and overrides the config of --init (a fine-tune with dropout of
    weights trained without it) and of --resume; the card names it; sampling (eval mode) stays deterministic."""
    vq_out = tmp_path / "vq"
    train_main(["vqvae", "--data", str(image_folder), "--out", str(vq_out), "--run-dir", str(tmp_path / "vq-run"),
                *TINY_VQ, "--steps", "1", "--save-every", "1"])
    base = ["prior", "--data", str(image_folder), "--vq", str(vq_out), "--batch-size", "4", "--threads", "1", "--cpu",
            "--log-every", "1", "--sample-every", "1000", "--save-every", "1000"]
    dropout = lambda folder: json.loads((folder / "transformer" / "config.json").read_text())["dropout"]
    plain = tmp_path / "plain"
    train_main(base + ["--out", str(plain), "--run-dir", str(tmp_path / "plain-run"), "--hidden-size", "16",
                       "--num-layers", "1", "--num-heads", "2", "--steps", "1"])
    assert dropout(plain) == 0.0 and "dropout" not in (plain / "README.md").read_text().split("heads")[0]
    tuned, run_dir = tmp_path / "tuned", tmp_path / "tuned-run"
    train_main(base + ["--out", str(tuned), "--run-dir", str(run_dir), "--init", str(plain), "--dropout", "0.2",
                       "--steps", "2", "--save-every", "2"])
    assert dropout(tuned) == 0.2 and "2 heads, dropout 0.2)" in (tuned / "README.md").read_text()
    train_main(base + ["--out", str(tuned), "--run-dir", str(run_dir), "--dropout", "0.3", "--steps", "3", "--resume"])
    assert dropout(tuned) == 0.3
    prior = genlab.load_prior(tuned, device="cpu")
    assert not prior.transformer.training
    first, second = (prior.sample(seed=0, steps=3, class_label="red").tokens for _ in range(2))
    assert np.array_equal(first, second)


def test_prior_conv_kernel_builds_or_grows_the_convolutions(image_folder, tmp_path):
    """--conv-kernel 3: a new prior has the convolutions, an --init without them grows them (and trains them), the
    export loads with genlab.load_prior and samples, the card names them, a resume keeps them."""
    vq_out = tmp_path / "vq"
    train_main(["vqvae", "--data", str(image_folder), "--out", str(vq_out), "--run-dir", str(tmp_path / "vq-run"),
                *TINY_VQ, "--steps", "1", "--save-every", "1"])
    base = ["prior", "--data", str(image_folder), "--vq", str(vq_out), "--batch-size", "4", "--threads", "1", "--cpu",
            "--log-every", "1", "--sample-every", "1000", "--save-every", "1000", "--hidden-size", "16",
            "--num-layers", "1", "--num-heads", "2"]
    kernel = lambda folder: json.loads((folder / "transformer" / "config.json").read_text())["conv_kernel"]
    plain, new = tmp_path / "plain", tmp_path / "new"
    train_main(base + ["--out", str(plain), "--run-dir", str(tmp_path / "plain-run"), "--steps", "1"])
    train_main(base + ["--out", str(new), "--run-dir", str(tmp_path / "new-run"), "--steps", "1", "--conv-kernel", "3"])
    assert kernel(plain) == 0 and kernel(new) == 3
    grown_out, run_dir = tmp_path / "grown", tmp_path / "grown-run"
    train_main(base + ["--out", str(grown_out), "--run-dir", str(run_dir), "--init", str(plain), "--conv-kernel", "3",
                       "--lr", "1e-2", "--steps", "2", "--save-every", "2"])
    train_main(base + ["--out", str(grown_out), "--run-dir", str(run_dir), "--steps", "3", "--resume"])
    assert kernel(grown_out) == 3
    weights = load_file(str(run_dir / "checkpoint" / "model" / "diffusion_pytorch_model.safetensors"))
    assert weights["convs.0.weight"].abs().sum() > 0  # trained from zero
    prior = genlab.load_prior(grown_out, device="cpu")
    assert prior.sample(seed=0, steps=3, class_label="red").image.size == (24, 24)
    assert "3x3 depthwise convolution" in (grown_out / "README.md").read_text()


def test_shift_images_moves_by_whole_pixels_with_white_fill():
    from genlab.train.prior import shift_images

    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    right_up = shift_images([image], 2, -1)[0]  # 2 px right, 1 px up
    assert np.array_equal(right_up[:3, 2:], image[1:, :3])
    assert (right_up[:, :2] == 255).all() and (right_up[3] == 255).all()
    assert np.array_equal(shift_images([image], 0, 0)[0], image)


def test_token_bank_shifts_draw_moved_grids_at_the_asked_share(image_folder):
    """--shift-share: the bank holds the tokens of each image and its mirror, moved by one token (f px) in the 8
    directions, each the VQ's own tokens of that moved image; draws take a moved grid with the asked probability;
    share 0 is the plain bank with the plain draws (no extra random numbers, so old runs reproduce)."""
    from diffusers import VQModel

    from genlab.train.latent import images_to_tensor
    from genlab.train.prior import SHIFTS, TokenBank, shift_images

    torch.manual_seed(0)
    vq_model = VQModel(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                       up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=3, num_vq_embeddings=16,
                       vq_embed_dim=3, norm_num_groups=4, sample_size=24)  # f = 2
    data = common.ImageFolder(image_folder)
    plain = TokenBank(vq_model, data, batch_size=64, seed=3)
    moved = TokenBank(vq_model, data, batch_size=64, seed=3, shift_share=0.25)
    assert plain.tokens.shape == (12, 2, 12, 12) and moved.tokens.shape == (12, 2 * len(SHIFTS), 12, 12)
    assert torch.equal(moved.tokens[:, :2], plain.tokens)
    dx, dy = SHIFTS[3]
    pixels = images_to_tensor(shift_images(data.images, 2 * dx, 2 * dy)).flip(-1)  # variant 2 * 3 + 1
    with torch.no_grad():
        _, _, (_, _, indices) = vq_model.quantize(vq_model.encode(pixels).latents)
    assert torch.equal(moved.tokens[:, 7], indices.view(12, 12, 12))

    reference = TokenBank(vq_model, data, batch_size=64, seed=3)
    tokens, _ = next(iter(plain))
    index, flip = reference.draw()
    assert torch.equal(tokens, reference.tokens[index, flip])
    draws = iter(moved)
    grids = torch.cat([next(draws)[0] for _ in range(20)])  # (1280, h, w)
    unmoved = (grids[:, None] == moved.tokens[:, :2].flatten(0, 1)[None]).flatten(2).all(2).any(1)
    assert 0.2 < 1 - unmoved.float().mean() < 0.3  # about a quarter unlike every unmoved grid: moved
    with pytest.raises(ValueError, match="shift_share must be in"):
        TokenBank(vq_model, data, batch_size=4, seed=0, shift_share=1.5)


@pytest.mark.parametrize("argv, message", [
    (["prior", "--shift-share", "1.5"], "--shift-share must be in [0, 1], got 1.5"),
    (["prior", "--shift-share", "-0.1"], "--shift-share must be in [0, 1], got -0.1"),
    (["ddpm", "--shift-share", "0.5"], "--shift-share is for prior"),
])
def test_bad_shift_share_is_refused(capsys, argv, message):
    from genlab.train.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv + ["--data", "d", "--out", "o", "--vq", "v"])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["prior", "--dropout", "1.0"], "--dropout must be in [0, 1), got 1.0"),
    (["prior", "--dropout", "-0.1"], "--dropout must be in [0, 1), got -0.1"),
    (["ddpm", "--dropout", "0.1"], "--dropout is for prior"),
    (["prior", "--dropout", "0.1", "--distill-from", "{teacher}"], "not with --distill-from"),
    (["prior", "--conv-kernel", "2"], "--conv-kernel must be 0 or an odd number of tokens, got 2"),
    (["prior", "--conv-kernel", "-3"], "--conv-kernel must be 0 or an odd number of tokens, got -3"),
    (["ddpm", "--conv-kernel", "3"], "--conv-kernel is for a new prior"),
    (["prior", "--conv-kernel", "3", "--distill-from", "{teacher}"], "not with --distill-from or --resume"),
    (["prior", "--conv-kernel", "3", "--resume"], "not with --distill-from or --resume"),
])
def test_bad_transformer_options_are_refused(tmp_path, capsys, argv, message):
    from genlab.train.cli import parse_args

    fake_teacher(tmp_path / "teacher")
    argv = [a.format(teacher=tmp_path / "teacher") for a in argv]
    with pytest.raises(SystemExit):
        parse_args(argv + ["--data", "d", "--out", "o", "--vq", "v"])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["prior", "--backbone", "unet", "--hidden-size", "64"], "--hidden-size: not an option of the prior's unet backbone"),
    (["prior", "--preset", "emoji-prior-unet", "--conv-kernel", "3", "--dropout", "0.1"],
     "--dropout, --conv-kernel: not an option of the prior's unet backbone"),
    (["prior", "--channels", "32,32"], "--channels: not an option of the prior's transformer backbone"),
    (["prior", "--preset", "emoji-prior-unet", "--backbone", "transformer", "--attention", "0,1"],
     "--attention: not an option of the prior's transformer backbone"),
    (["ddpm", "--backbone", "unet"], "--backbone is for prior"),
    (["prior", "--backbone", "cnn"], "invalid choice: 'cnn'"),
    (["prior", "--backbone", "unet", "--channels", "32,32", "--attention", "0,0", "--norm-groups", "5"],
     r"must be a multiple of norm_num_groups (5)"),
    (["prior", "--backbone", "unet", "--channels", "32,48", "--attention", "0,1"],
     "must be a multiple of attention_head_dim (32)"),
    (["prior", "--backbone", "unet", "--channels", "32,32", "--attention", "1"], "--attention has 1 entries"),
    (["prior", "--backbone", "unet", "--channels", "32,32"], "--attention has 3 entries but --channels has 2"),
    (["prior", "--backbone", "unet", "--distill-from", "{teacher}"],
     "--backbone unet: the prior in {teacher} has a transformer backbone, and its distilled copy has the same"),
])
def test_bad_unet_backbone_options_are_refused(tmp_path, capsys, argv, message):
    from genlab.train.cli import parse_args

    fake_teacher(tmp_path / "teacher")
    argv = [a.format(teacher=tmp_path / "teacher") for a in argv]
    with pytest.raises(SystemExit):
        parse_args(argv + ["--data", "d", "--out", "o", "--vq", "v"])
    assert message.format(teacher=tmp_path / "teacher") in capsys.readouterr().err


def test_the_unet_backbone_takes_its_architecture_from_its_preset():
    """--preset emoji-prior-unet is the whole recipe; --backbone unet under the transformer's preset keeps that
    preset's training settings and takes the UNet's layout from emoji-prior-unet; the transformer's layout
    options stay unset for the UNet, and the other way round."""
    from genlab.train.cli import parse_args

    common_args = ["--data", "d", "--out", "o", "--vq", "v"]
    args = parse_args(["prior", "--preset", "emoji-prior-unet", *common_args])
    assert args.backbone == "unet" and args.channels == (64, 128, 128) and args.attention == (False, False, True)
    assert args.shift_share == 0.5 and args.hidden_size is None and args.num_layers is None
    args = parse_args(["prior", "--backbone", "unet", "--channels", "32,32", "--attention", "0,1", *common_args])
    assert args.channels == (32, 32) and args.attention == (False, True)
    args = parse_args(["prior", "--backbone", "unet", *common_args])
    assert args.channels == (64, 128, 128) and args.shift_share == 0.0 and args.raster_share == 0.25
    args = parse_args(["prior", *common_args])
    assert args.backbone == "transformer" and args.hidden_size == 128 and args.channels is None
    args = parse_args(["prior", "--preset", "emoji-prior-unet", "--backbone", "transformer", *common_args])
    assert args.hidden_size == 128 and args.channels is None and args.shift_share == 0.5


def fake_teacher(folder, kind: str = "MaskedTokenTransformer"):
    """A prior folder as far as parse_args reads it: transformer/config.json naming the network's class."""
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text(json.dumps({"_class_name": kind}))
    return folder


def test_distill_from_takes_the_teachers_backbone(tmp_path, capsys):
    """The student is the teacher's kind of network whatever the preset says; --backbone may only repeat it."""
    from genlab.train.cli import parse_args

    unet = fake_teacher(tmp_path / "unet-teacher", "MaskedTokenUNet")
    common_args = ["--data", "d", "--out", "o"]
    assert parse_args(["prior", "--distill-from", str(unet), *common_args]).backbone == "unet"
    assert parse_args(["prior", "--distill-from", str(unet), "--backbone", "unet", *common_args]).backbone == "unet"
    transformer = fake_teacher(tmp_path / "transformer-teacher")
    args = parse_args(["prior", "--preset", "emoji-prior-unet", "--distill-from", str(transformer), *common_args])
    assert args.backbone == "transformer" and args.vq == transformer / "vqvae"
    with pytest.raises(SystemExit):
        parse_args(["prior", "--distill-from", str(unet), "--backbone", "transformer", *common_args])
    assert "has a unet backbone" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--distill-from", "{missing}"], "not a prior folder"),
    (["--distill-from", "{vq_teacher}"], "transformer/ holds no token prior network (MaskedTokenTransformer, MaskedTokenUNet)"),
    (["--distill-from", "{no_config}"], "config.json"),
    (["--distill-from", "{teacher}", "--guidance-max", "1"], "--guidance-max must be above 1"),
    (["--distill-from", "{teacher}", "--init", "{teacher}"], "leave out --init"),
])
def test_bad_distillation_options_are_refused(tmp_path, capsys, extra, message):
    from genlab.train.cli import parse_args

    fake_teacher(tmp_path / "teacher")
    fake_teacher(tmp_path / "vq-teacher", "VQModel")
    (tmp_path / "no-config" / "transformer").mkdir(parents=True)
    extra = [e.format(missing=tmp_path / "nothing", teacher=tmp_path / "teacher", vq_teacher=tmp_path / "vq-teacher",
                      no_config=tmp_path / "no-config") for e in extra]
    with pytest.raises(SystemExit):
        parse_args(["prior", "--data", "d", "--out", "o", *extra])
    assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["ddpm", "--data", "d", "--out", "o", "--distill-from", str(tmp_path / "teacher")])
    assert "--distill-from is for prior" in capsys.readouterr().err


def test_presets_fill_every_unset_option_and_flags_win():
    from genlab.train.cli import parse_args
    from genlab.train.config import PRESETS

    base = ["ddpm", "--data", "d", "--out", "o"]
    denoiser = parse_args(base + ["--preset", "photo-denoiser"])
    for key, value in PRESETS["photo-denoiser"].items():  # e.g. the denoiser's low-t focus
        expected = tuple(int(c) for c in value.split(",")) if key == "channels" else value
        expected = tuple(bool(int(a)) for a in value.split(",")) if key == "attention" else expected
        assert getattr(denoiser, key) == expected, key
    assert denoiser.t_focus_share > 0
    emoji = parse_args(base + ["--preset", "emoji"])
    assert emoji.t_focus_max == 0 and emoji.t_focus_share == 0.0  # not in the preset: off
    assert emoji.class_power == PRESETS["emoji"]["class_power"] and denoiser.class_power == 1.0
    assert (emoji.lr_schedule, emoji.warmup_steps) == ("cosine", 500) and denoiser.lr_schedule == "constant"
    flagged = parse_args(base + ["--preset", "photo-denoiser", "--t-focus-max", "50", "--lr", "1e-4"])
    assert flagged.t_focus_max == 50 and flagged.lr == 1e-4


def test_vq_background_code_is_reserved_in_training_exported_and_used_by_the_bank(image_folder, tmp_path):
    """--background-margin: the commonest nearest code on background tokens becomes the reserved code, training
    quantizes those tokens to it (as VQ.encode will), genlab.json carries it, a resumed run keeps it, and the
    prior's token bank writes it where VQ.encode does."""
    from genlab.train.prior import TokenBank

    out, run_dir = tmp_path / "vq", tmp_path / "run"
    base = ["vqvae", "--data", str(image_folder), "--out", str(out), "--run-dir", str(run_dir), *TINY_VQ]
    train_main(base + ["--steps", "2", "--save-every", "2", "--background-margin", "1"])
    entry = json.loads((out / "genlab.json").read_text())["background"]
    assert entry["margin"] == 1 and entry["tolerance"] == 8 and 0 <= entry["code"] < 16
    assert f"Code {entry['code']} is reserved for plain background" in (out / "README.md").read_text()
    model = genlab.load_vq(out, device="cpu")
    assert model.background == genlab.autoencoders.vq.Background(**entry)
    data = common.ImageFolder(image_folder)
    pixels = torch.from_numpy(np.stack(data.images)).permute(0, 3, 1, 2).float() / 127.5 - 1  # (12, 3, 24, 24)
    quiet = model.background.mask(pixels, model.downsample_factor)  # (12, 12, 12)
    assert 0.2 < quiet.float().mean() < 0.9  # white corners and edges, not the discs
    tokens = model.encode(pixels)
    assert (tokens[quiet] == entry["code"]).all()

    trainer = vq.VQAutoencoderForTraining(model.model, background=model.background)
    trainer.quantizer.initialized.fill_(True)
    trainer.eval()
    crops = pixels[:, :, 4:20, 4:20]  # the training crop (16 px), which VQ.encode takes as one window
    with torch.no_grad():
        _, indices, _ = trainer(crops)
    assert torch.equal(indices, model.encode(crops))  # training quantizes as VQ.encode does
    assert (indices[model.background.mask(crops, 2)] == entry["code"]).all()
    bank = TokenBank(model.model, data, batch_size=4, seed=0, background=model.background)
    whole = genlab.autoencoders.vq.VQ(model.model, background=model.background).encode(pixels)  # the bank does not tile
    assert torch.equal(bank.tokens[:, 0], whole) and (bank.tokens[:, 1][quiet.flip(-1)] == entry["code"]).all()

    train_main(base + ["--steps", "3", "--resume", "--background-margin", "1", "--background-code", "0"])
    assert json.loads((out / "genlab.json").read_text())["background"] == entry  # the run's code, not a new one
    train_main(["vqvae", "--data", str(image_folder), "--out", str(tmp_path / "vq0"), "--run-dir",
                str(tmp_path / "run0"), *TINY_VQ, "--steps", "1", "--background-margin", "0", "--background-code", "5"])
    assert json.loads((tmp_path / "vq0" / "genlab.json").read_text())["background"]["code"] == 5
    train_main(["vqvae", "--data", str(image_folder), "--out", str(tmp_path / "plain"), "--run-dir",
                str(tmp_path / "run-plain"), *TINY_VQ, "--steps", "1"])
    assert "background" not in json.loads((tmp_path / "plain" / "genlab.json").read_text())


def test_vq_background_needs_white_in_the_data(image_folder, tmp_path):
    with pytest.raises(SystemExit, match="no token of .* has a white neighbourhood that wide"):
        train_main(["vqvae", "--data", str(image_folder), "--out", str(tmp_path / "vq"), "--run-dir",
                    str(tmp_path / "run"), *TINY_VQ, "--steps", "1", "--background-margin", "20"])


@pytest.mark.parametrize("argv, message", [
    (["vqgan", "--background-margin", "-1"], "--background-margin must be >= 0 tokens, got -1"),
    (["vqgan", "--background-margin", "1", "--background-tolerance", "300"],
     "--background-tolerance must be in [0, 254] levels, got 300"),
    (["vqvae", "--background-margin", "1", "--codes", "16", "--background-code", "16"],
     "--background-code must be in [0, codes), got 16"),
    (["vqvae", "--background-code", "3"], "--background-code and --background-tolerance need --background-margin"),
    (["prior", "--background-margin", "1"], "--background-margin is for vqvae and vqgan"),
])
def test_bad_background_options_are_refused(capsys, argv, message):
    from genlab.train.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv + ["--data", "d", "--out", "o", "--vq", "v"])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("kind, values, message", [
    ("vqvae", dict(batch_size=0), "--batch-size must be an integer > 0, got 0"),
    ("vqgan", dict(codes=0), "--codes must be an integer > 0, got 0"),
    ("vqvae", dict(codebook_decay=1.0), "--codebook-decay must be in [0, 1), got 1.0"),
    ("vae", dict(kl_weight=-1.0), "--kl-weight must be a number >= 0, got -1.0"),
    ("ddpm", dict(lr_schedule="step"), "--lr-schedule must be one of ['constant', "),
    ("ddpm", dict(label_dropout=1.5), "--label-dropout must be in [0, 1], got 1.5"),
    ("ldm", dict(channels=(32, -8)), "--channels must be positive integers, one per block, got (32, -8)"),
    ("ddpm", dict(save_every=0), "--save-every must be an integer > 0, got 0"),
    ("prior", dict(raster_share=2.0), "--raster-share must be in [0, 1], got 2.0"),
    ("prior", dict(lr=float("nan")), "--lr must be a number > 0, got nan"),
])
def test_typed_configs_refuse_bad_values_by_option(kind, values, message):
    """Each kind's frozen config checks every value it is built with; the error names the CLI option and the
    value, whether the config is built in Python or from the command line."""
    import dataclasses
    from pathlib import Path

    from genlab.train.config import DEFAULT_PRESET, PRESETS, build_config

    config = build_config(kind, {"data": Path("d"), "out": Path("o"), "vq": Path("v"), "vae": Path("v"),
                                 **PRESETS[DEFAULT_PRESET[kind]]})
    with pytest.raises(ValueError) as error:
        dataclasses.replace(config, **values)
    assert message in str(error.value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0


@pytest.mark.parametrize("argv, message", [
    (["ddpm", "--label-dropout", "1.5"], "--label-dropout must be in [0, 1], got 1.5"),
    (["vae", "--batch-size", "-4"], "--batch-size must be an integer > 0, got -4"),
    (["ddpm", "--channels", "32,x"], "--channels must be comma-separated integers, got '32,x'"),
    (["ddpm", "--preset", "emoji-prior"], "ddpm needs --channels (no preset gave it)"),
    (["prior", "--backbone", "transformer", "--preset", "emoji-prior-unet", "--hidden-size", "0"],
     "--hidden-size must be an integer > 0, got 0"),
])
def test_bad_config_values_are_refused_by_the_cli(capsys, argv, message):
    from genlab.train.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv + ["--data", "d", "--out", "o", "--vq", "v"])
    assert message in capsys.readouterr().err


def test_presets_are_checked_frozen_configs_of_their_kinds():
    """Every preset builds a valid config of each kind it is for, and cannot be changed in place."""
    from pathlib import Path

    from genlab.train.config import PRESET_KINDS, PRESETS, PriorConfig, VQConfig, build_config

    assert set(PRESET_KINDS) == set(PRESETS)
    for name, kinds in PRESET_KINDS.items():
        for kind in kinds:
            build_config(kind, {"data": Path("d"), "out": Path("o"), "vq": Path("v"), "vae": Path("v"), "clip": Path("c"),
                                **PRESETS[name]})
    with pytest.raises(TypeError):
        PRESETS["emoji"]["lr"] = 1.0
    with pytest.raises(ValueError, match="VQConfig is for vqvae and vqgan, not kind 'ddpm'"):
        VQConfig(kind="ddpm", data=Path("d"), out=Path("o"))
    unet = build_config("prior", {"data": Path("d"), "out": Path("o"), "vq": Path("v"),
                                  **PRESETS["emoji-prior-unet"]})
    assert isinstance(unet, PriorConfig) and unet.norm_groups == 16 and unet.run_dir == Path("runs/o")
