"""The app's command line and Space settings, as checked data.

    python app.py [--model vq=SOURCE[@REVISION][#SUBFOLDER]]... [--model diffusion=SOURCE[@REVISION][#SUBFOLDER]]...
                  [--model prior=SOURCE[@REVISION][#SUBFOLDER]]...
                  [--host H] [--port P] [--share] [--device cpu|cuda] [--max-file-mb N]

A Space cannot pass arguments, so the same model list can come from the environment:
GENLAB_MODELS="vq=amused/amused-256#vqvae,diffusion=google/ddpm-cifar10-32". `vq=` takes any
autoencoder (VQModel or AutoencoderKL) for the reconstruction tab; `prior=` a token-prior pipeline
(vqvae/ + transformer/ + scheduler/, e.g. amused/amused-256), whose vqvae/ is listed among the
autoencoders too. Host and port default to GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, then
127.0.0.1:7860; GENLAB_SHARE=1 shares. The embedded models under weights/ are always listed first.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from .loading.loaders import ModelSpec
from .loading.registry import EMBEDDED, EMBEDDED_AUTOENCODERS, WEIGHTS_DIR

KINDS = ("vq", "diffusion", "prior")


@dataclass
class AppConfig:
    vq_models: dict[str, ModelSpec] = field(default_factory=dict)  # label -> spec
    diffusion_models: dict[str, ModelSpec] = field(default_factory=dict)
    prior_models: dict[str, ModelSpec] = field(default_factory=dict)  # token priors
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    device: str | None = None
    max_file_mb: int = 10
    queue_size: int = 32

    def table(self, kind: str) -> dict[str, ModelSpec]:
        """The models of one kind (KINDS): label -> spec."""
        if kind not in KINDS:
            raise ValueError(f"unknown model kind {kind!r}; choose one of {KINDS}")
        return {"vq": self.vq_models, "diffusion": self.diffusion_models, "prior": self.prior_models}[kind]


def parse_model_option(text: str) -> tuple[str, ModelSpec]:
    kind, sep, rest = text.partition("=")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS:
        raise ValueError(f"--model takes KIND=SOURCE[@REVISION][#SUBFOLDER] with KIND one of {KINDS}, got {text!r}")
    return kind, ModelSpec.parse(rest)


def prior_autoencoder(spec: ModelSpec) -> ModelSpec:
    """Where a token prior's VQ model lives: its pipeline's vqvae/."""
    return ModelSpec(spec.source, f"{spec.subfolder.rstrip('/')}/vqvae" if spec.subfolder else "vqvae", spec.revision)


def add_prior_autoencoders(config: AppConfig, priors: dict[str, ModelSpec], embedded: bool) -> None:
    """List each prior's vqvae/ among the autoencoders (unless it already is): an embedded prior's as
    NAME-vq, another's by its spec (SOURCE#vqvae)."""
    for label, spec in priors.items():
        autoencoder = prior_autoencoder(spec)
        if autoencoder not in config.vq_models.values():
            config.vq_models[f"{label}-vq" if embedded else autoencoder.label] = autoencoder


def parse_args(argv=None, environ=None) -> AppConfig:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="python app.py", description="GenLab: VQ-VAE, VQGAN and diffusion, step by step.")
    parser.add_argument("--model", action="append", default=[], metavar="KIND=SOURCE[@REVISION][#SUBFOLDER]",
                        help="an extra model: vq=... (any autoencoder), diffusion=... (pixel or latent) or prior=... "
                        "(a token prior), a local folder or a Hub repo id, optionally at a Hub revision; repeatable")
    parser.add_argument("--host", default=environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", default=environ.get("GENLAB_SHARE", "") in ("1", "true"))
    parser.add_argument("--device", choices=["cpu", "cuda"], default=environ.get("GENLAB_DEVICE") or None)
    parser.add_argument("--max-file-mb", type=int, default=int(environ.get("GENLAB_MAX_FILE_MB", 10)),
                        help="uploads over this size are refused before they reach GenLab")
    args = parser.parse_args(argv)
    config = AppConfig(host=args.host, port=args.port, share=args.share, device=args.device, max_file_mb=args.max_file_mb)
    for name, kind in EMBEDDED.items():
        config.table(kind)[name] = ModelSpec(str(WEIGHTS_DIR / name))
    for label, (folder, subfolder) in EMBEDDED_AUTOENCODERS.items():
        config.vq_models[label] = ModelSpec(str(WEIGHTS_DIR / folder), subfolder)
    add_prior_autoencoders(config, dict(config.prior_models), embedded=True)
    extra = [m for m in environ.get("GENLAB_MODELS", "").split(",") if m.strip()] + args.model
    extra_priors = {}
    for option in extra:
        try:
            kind, spec = parse_model_option(option)
        except ValueError as error:
            parser.error(str(error))
        config.table(kind)[spec.label] = spec
        if kind == "prior":
            extra_priors[spec.label] = spec
    add_prior_autoencoders(config, extra_priors, embedded=False)
    return config
