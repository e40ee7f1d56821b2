"""The models GenLab ships in `weights/` and the example images in `genlab/assets/examples/`."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
WEIGHTS_DIR = Path(os.environ.get("GENLAB_WEIGHTS", REPO_ROOT / "weights"))
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"
EXAMPLE_PHOTO = EXAMPLES_DIR / "rocket.png"  # held out of every training set
EXAMPLE_EMOJI = EXAMPLES_DIR / "emoji-grinning.png"

# name -> kind (the loader the app lists it under)
EMBEDDED = {
    "vqvae-photo": "vq", "vqgan-photo": "vq", "ddpm-emoji": "diffusion", "ddpm-photo": "diffusion",
    "ldm-emoji": "diffusion", "sd-emoji": "diffusion", "maskgit-emoji": "prior",
}
# autoencoders inside embedded pipelines, listed beside the VQ models: label -> (folder, subfolder)
EMBEDDED_AUTOENCODERS = {"ldm-emoji-vae": ("ldm-emoji", "vae")}


def example_images() -> list[str]:
    """The example images' paths, sorted."""
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.png"))


def embedded_status() -> dict[str, str]:
    """name -> 'trained' when weights/NAME (a pipeline: each of its parts) holds safetensors weights,
    else 'not trained yet'."""
    from .hub import missing_weights, is_pipeline

    def trained(folder: Path) -> bool:
        if is_pipeline(folder):
            return not missing_weights(folder)
        return bool(list(folder.glob("*.safetensors")))

    status = {name: trained(WEIGHTS_DIR / name) for name in EMBEDDED}
    status.update({label: trained(WEIGHTS_DIR / folder / sub) for label, (folder, sub) in EMBEDDED_AUTOENCODERS.items()})
    return {name: "trained" if ok else "not trained yet" for name, ok in status.items()}
