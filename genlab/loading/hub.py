"""Where checkpoints come from: local folders and Hugging Face Hub repos (revision, subfolder), downloaded safely.

`resolve_source` turns a folder or a Hub repo id (+ revision, subfolder) into a local folder, downloading only
JSON, tokenizer text and safetensors files (`huggingface_hub.snapshot_download` with allow-patterns).

Safetensors conversions: many classic Hub checkpoints keep pickle weights on `main` and safetensors
on a pull request opened by the Hub's conversion bot (`SFconvertbot`), e.g. CompVis/ldm-celebahq-256
at refs/pr/7. When `main` has only pickle weights, GenLab uses such a pull request and says so, as
transformers does; a pull request by anyone else is never used (anyone can open one).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import PICKLE_SUFFIXES, ModelLoadError, pickle_refusal

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
REVISION = re.compile(r"^[\w.\-/]+$")
CONVERSION_BOT = "SFconvertbot"  # the Hub's safetensors conversion bot: the only pull-request author trusted
log = logging.getLogger("genlab")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: a local folder or Hub repo id, an optional Hub revision and subfolder."""

    source: str
    subfolder: str | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """'SOURCE[@REVISION][#SUBFOLDER]' (the command-line and GENLAB_MODELS form)."""
        source, _, subfolder = text.strip().partition("#")
        source = source.strip()
        revision = None
        if "@" in source and not Path(source).expanduser().exists():
            source, _, revision = source.rpartition("@")
            if not revision:
                raise ValueError(f"empty revision after '@' in {text!r}")
            check_revision(revision)
        if not source:
            raise ValueError(f"empty model source in {text!r}")
        return cls(source, subfolder.strip() or None, revision)

    @property
    def label(self) -> str:
        text = f"{self.source}@{self.revision}" if self.revision else self.source
        return f"{text}#{self.subfolder}" if self.subfolder else text


def check_revision(revision: str | None) -> str | None:
    """A branch, tag, commit hash or refs/pr/N; anything else raises ValueError."""
    if revision is None:
        return None
    if not isinstance(revision, str) or not REVISION.match(revision) or ".." in revision:
        raise ValueError(f"{revision!r} is not a Hub revision (a branch, tag, commit hash or refs/pr/N)")
    return revision


DISTILLED = "transformer_distilled"  # a token prior's guidance-distilled transformer (optional)
# pipeline parts that hold weights
WEIGHT_COMPONENTS = ("unet", "vae", "vqvae", "text_encoder", "transformer", DISTILLED)


def resolve_source(source: str | os.PathLike, subfolder: str | None = None, revision: str | None = None) -> Path:
    """A local folder holding the checkpoint: `source` itself, or a Hub download of JSON + safetensors."""
    check_revision(revision)
    path = Path(source).expanduser()
    if path.exists():
        if revision:
            raise ModelLoadError(f"{str(path)!r} is a local folder: a revision ({revision!r}) applies to Hub repos only")
        folder = path / subfolder if subfolder else path
        if not folder.is_dir():
            raise ModelLoadError(f"{str(folder)!r} is not a folder")
        return folder
    name = str(source)
    if not REPO_ID.match(name):
        raise ModelLoadError(f"{name!r} is neither a local folder nor a Hugging Face Hub repo id (owner/name)")
    try:
        return _download(name, subfolder, revision)
    except ModelLoadError as error:
        raise ModelLoadError(f"there is no local folder {name!r}, and as a Hub repo id: {error}") from None


def _snapshot(repo_id: str, prefix: str, revision: str | None) -> Path:
    """Download JSON, tokenizer text and the plain safetensors weights under `prefix` (or of every
    pipeline component), skipping variants such as *.fp16.safetensors; returns the snapshot root."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hub_errors

    patterns = [f"{prefix}{pattern}" for pattern in (
        "*.json", "*.txt", "diffusion_pytorch_model*.safetensors", "model*.safetensors",
        "*/diffusion_pytorch_model*.safetensors", "*/model*.safetensors")]
    if prefix:
        patterns.append("model_index.json")  # the pipeline a component belongs to (aMUSEd's VQ reads [0, 1] pixels)
    variants = ["*.fp16.safetensors", "*.fp16-*.safetensors", "*non_ema*", "*.ema.safetensors"]
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, ignore_patterns=variants))
    except hub_errors.RevisionNotFoundError:
        raise ModelLoadError(f"the Hub repo {repo_id!r} has no revision {revision!r}") from None
    except (hub_errors.RepositoryNotFoundError, hub_errors.GatedRepoError) as error:
        raise ModelLoadError(f"the Hub repo {repo_id!r} does not exist or is not public ({type(error).__name__})") from None
    except (hub_errors.OfflineModeIsEnabled, hub_errors.LocalEntryNotFoundError, OSError, hub_errors.HfHubHTTPError) as error:
        why = "HF_HUB_OFFLINE=1 is set" if offline else f"the Hub could not be reached ({type(error).__name__})"
        raise ModelLoadError(
            f"cannot download {repo_id!r}: {why}, and it is not in the local cache. "
            "The embedded models under weights/ keep working offline."
        ) from None


def is_pipeline(folder: Path) -> bool:
    """A diffusers pipeline folder: model_index.json beside component subfolders (a root that holds
    its own config.json, like google/ddpm-cifar10-32, is a single model)."""
    return (folder / "model_index.json").is_file() and not (folder / "config.json").is_file()


def missing_weights(folder: Path) -> list[Path]:
    """The folders of a snapshot that should hold weights but hold no safetensors."""
    if is_pipeline(folder):
        index = json.loads((folder / "model_index.json").read_text())
        parts = [folder / part for part in WEIGHT_COMPONENTS
                 if isinstance(index.get(part), list) and index[part][0] is not None]
        return [part for part in parts if not any(part.glob("*.safetensors"))]
    return [] if any(folder.glob("*.safetensors")) else [folder]


def find_conversion_pr(repo_id: str) -> str | None:
    """`refs/pr/N` of an open pull request by the Hub's safetensors conversion bot, else None."""
    from huggingface_hub import get_repo_discussions

    try:
        for discussion in get_repo_discussions(repo_id, repo_type="model"):
            if discussion.is_pull_request and discussion.status == "open" and discussion.author == CONVERSION_BOT:
                return f"refs/pr/{discussion.num}"
    except Exception as error:  # the Hub's discussion API is a best effort: refusing stays the answer
        log.warning("could not list the pull requests of %s: %s", repo_id, error)
    return None


def _download(repo_id: str, subfolder: str | None, revision: str | None = None) -> Path:
    from huggingface_hub import list_repo_files

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    root = _snapshot(repo_id, prefix, revision)
    folder = root / prefix if prefix else root
    missing = missing_weights(folder)
    if missing:
        try:
            remote = [f for f in list_repo_files(repo_id, revision=revision) if f.startswith(prefix)]
        except Exception:
            remote = []
        pickles = [f for f in remote if f.endswith(PICKLE_SUFFIXES)]
        if pickles:
            conversion = find_conversion_pr(repo_id) if revision in (None, "main") else None
            if conversion is None:
                raise ModelLoadError(pickle_refusal(f"{repo_id}/{prefix}", pickles))
            log.warning("%s has only pickle weights on main; using the safetensors of %s, a pull request opened "
                        "by %s", repo_id, conversion, CONVERSION_BOT)
            CONVERSIONS[(repo_id, subfolder)] = conversion
            return _download(repo_id, subfolder, conversion)
        if not (folder / "config.json").exists() and not (folder / "model_index.json").exists():
            raise ModelLoadError(f"{repo_id!r} has no diffusers checkpoint (config.json) under {prefix or 'its root'!r}")
    return folder


CONVERSIONS: dict[tuple[str, str | None], str] = {}  # (repo, subfolder) -> the conversion PR used instead of main
