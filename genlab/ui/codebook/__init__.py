"""VQGAN codebook tab: generate and inpaint in token space with a token prior (`generation`), and explore the
codebook (`explorer`: atlas, usage statistics, PCA map, image <-> codes, token editing, interpolation)."""

from __future__ import annotations

import gradio as gr

from ..common import Registry
from . import explorer, generation


def build(registry: Registry, demo: gr.Blocks) -> tuple[generation.GenerationSection, explorer.ExplorerSection]:
    return generation.build(registry, demo), explorer.build(registry, demo)
