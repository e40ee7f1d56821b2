"""GenLab's gradio app: four tabs over the ops in genlab.autoencoders, genlab.priors, genlab.diffusion and genlab.toy.

- `reconstruct_tab.py`: VQ-VAE / KL reconstruction against JPEG (`ReconstructTab`);
- `codebook/`: the VQGAN codebook tab, `generation.py` (token-prior generate / inpaint / scrub) and
  `explorer.py` (atlas, usage, image <-> codes, token editing, interpolation);
- `diffusion_tab.py`: diffusion step by step (`DiffusionTab`), `diffusion_views.py` turning runs into UI values,
  `diffusion_example.py` the example run each model shows first and the denoiser note;
- `foundations_tab.py`: the 2D toys' tab (`FoundationsTab`); their plots are genlab.toy.views;
- `text_to_image.py`: what the diffusion tab adds for text-to-image models (`TextToImage`): example prompts, word
  heat maps, compare prompts, image to image with a prompt (SDEdit), the nearest training image;
- `common.py`: the registry, the model threads, error translation, brush masks, event adapters, downloads;
  `compat.py`: the gradio shims, checked against the gradio version they were written for; `plots.py`;
  `display.py`: small images enlarged for their panels and word heat maps over an image (no gradio).

Each tab is a class holding the registry and its components; its handlers are methods a test can call
without a server: a handler with many inputs takes one request dataclass (the API's parameters, in order),
and every handler returns (or yields) a dict keyed by output component. `build_app` only assembles the tabs.
Every panel shows an example on page load (an `example` handler per section, each computed once per model
where it samples), so a visitor sees what each tab does before pressing anything.
Heavy events share one concurrency slot ("heavy"), so a CPU or GPU runs one model call at a time while light
events (previews, scrubbing) stay responsive.

Importing this package does not import gradio (`build_app` and `launch` do), so its gradio-free modules
(`display`) serve scripts and tests without it.
"""

from __future__ import annotations

from ..config import AppConfig

HEAVY_CONCURRENCY = 1


def status_markdown(registry) -> str:
    """The Models accordion: each embedded model's status, then the models given on the command line."""
    lines = [f"- **{name}**: {status}" for name, status in registry.status.items()]
    config = registry.config
    extra = [label for label in [*config.vq_models, *config.diffusion_models, *config.prior_models]
             if label not in registry.status]
    lines += [f"- **{label}**: from --model / GENLAB_MODELS (loaded on first use)" for label in extra]
    return "Models: " + "  \n".join([""] + lines)


def build_app(config: AppConfig):
    """The gradio Blocks of the four tabs over `config`'s models, queued (not launched)."""
    import gradio as gr

    from ..loading import checkpoints
    from ..loading import loaders as models
    from . import codebook, diffusion_tab, foundations_tab, reconstruct_tab
    from .common import Registry
    from .compat import install_atomic_image_cache

    checkpoints.DEFAULT_DEVICE = config.device  # pick_device's default
    models.import_model_classes()  # before any event thread runs
    install_atomic_image_cache()
    registry = Registry(config)
    with gr.Blocks(title="GenLab", delete_cache=(900, 3600)) as demo:
        gr.Markdown("# GenLab\nVQ-VAE, VQGAN, diffusion and latent diffusion, opened up: reconstruct, explore the "
                    "codebook, watch denoising step by step in pixels or latents, and train the four families on 2D data.")
        with gr.Accordion("Models", open=False):
            gr.Markdown(status_markdown(registry))
        with gr.Tab("VQ-VAE reconstruction"):
            reconstruct_tab.build(registry, demo)
        with gr.Tab("VQGAN codebook"):
            codebook.build(registry, demo)
        with gr.Tab("Diffusion, step by step"):
            diffusion_tab.build(registry, demo)
        with gr.Tab("Foundations (2D)"):
            foundations_tab.build(registry, demo)
    demo.queue(max_size=config.queue_size, default_concurrency_limit=HEAVY_CONCURRENCY)
    return demo


def launch(config: AppConfig, **kwargs):
    from .common import OUTPUT_DIR

    demo = build_app(config)
    return demo.launch(server_name=config.host, server_port=config.port, share=config.share,
                       max_file_size=f"{config.max_file_mb}mb", allowed_paths=[str(OUTPUT_DIR)], **kwargs)
