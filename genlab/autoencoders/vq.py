"""VQ operations on a diffusers `VQModel`: encode to code indices, decode, measure, explore and edit the codebook.

VQ-VAE: van den Oord et al., "Neural Discrete Representation Learning" (arXiv:1711.00937):
  z_q(x) = e_k with k = argmin_j ||E(x) - e_j||_2, x_hat = D(z_q(x)).
VQGAN: Esser et al., "Taming Transformers" (arXiv:2012.09841) shares this interface.

A model with downsampling factor f and K codes turns an H x W image into an (H/f) x (W/f) grid of
indices, i.e. log2(K) / f^2 bits per pixel. Indices are (B, h, w) int64 tensors inside, and
(h, w) numpy int arrays at the public API.

A reserved background code (`Background`, genlab.json "background"): every token whose f x f patch and
whose neighbours within `margin` tokens are white (within `tolerance` levels of 255) takes one code,
whatever the encoder's nearest code there. A VQ trained with it (`python -m genlab.train vqgan
--background-margin M`) decodes that code as plain background, and a token prior pays for one code
instead of the hundreds a convolutional encoder spreads over a white background (the "skip" blocks of
video codecs, for a token grid).
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..imaging import metrics
from ..imaging.tiling import apply_tiled
from ..imaging.io import image_grid, prepare_input, tensor_to_pil, tensor_to_uint8
from ..sampling import is_integer

ATLAS_PAGE_SIZE = 256  # codes per atlas page; large codebooks (8192) are paged
ATLAS_COLUMNS = 16
# the VQModel config entries that shape the encoder side (VQ.encoder_key)
ENCODER_CONFIG = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "act_fn",
                  "latent_channels", "norm_num_groups", "mid_block_add_attention", "num_vq_embeddings", "vq_embed_dim")


@dataclass
class Reconstruction(metrics.ComparedToInput):
    """What `VQ.reconstruct` returns; `ssim` and `error_map` are computed on first access."""

    input: Image.Image  # the image that was encoded (after any downscaling)
    image: Image.Image  # the reconstruction, same size as `input`
    indices: np.ndarray  # (h, w) code indices
    num_codes: int
    latency_s: float
    resized_from: tuple[int, int] | None = None  # original (width, height) when downscaled
    psnr: float = field(init=False)

    def __post_init__(self):
        self.psnr = metrics.psnr(self.input, self.image)

    @property
    def bits_per_pixel(self) -> float:
        """log2(K) bits per token over the image's pixels (padding to a multiple of f included)."""
        return self.indices.size * math.log2(self.num_codes) / (self.input.width * self.input.height)

    @property
    def compression_ratio(self) -> float:
        return 24.0 / self.bits_per_pixel

    @property
    def distinct_codes(self) -> int:
        return int(np.unique(self.indices).size)


@dataclass(frozen=True)
class Background:
    """One code for plain white background: see the module docstring. Checked data (genlab.json)."""

    code: int  # the reserved code
    margin: int = 1  # tokens: a token takes the code when every patch within this many tokens is white
    tolerance: int = 8  # levels (of 255) below white that still count as white

    @classmethod
    def from_info(cls, info: dict | None, num_codes: int) -> Background | None:
        """genlab.json's "background" entry (or None) -> a checked Background (or None)."""
        if info is None:
            return None
        if not isinstance(info, dict) or set(info) - {"code", "margin", "tolerance"} or "code" not in info:
            raise ValueError(f"background must be {{'code': int, 'margin': int, 'tolerance': int}}, got {info!r}")
        background = cls(**info)
        background.check(num_codes)
        return background

    def check(self, num_codes: int) -> None:
        for name in ("code", "margin", "tolerance"):
            if not is_integer(getattr(self, name)):
                raise ValueError(f"background {name} must be an integer, got {getattr(self, name)!r}")
        if not 0 <= self.code < num_codes:
            raise ValueError(f"background code must be in [0, {num_codes - 1}], got {self.code}")
        if self.margin < 0:
            raise ValueError(f"background margin must be >= 0 tokens, got {self.margin}")
        if not 0 <= self.tolerance < 255:
            raise ValueError(f"background tolerance must be in [0, 254] levels, got {self.tolerance}")

    def as_info(self) -> dict:
        return {"code": self.code, "margin": self.margin, "tolerance": self.tolerance}

    def mask(self, pixels: torch.Tensor, factor: int) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1], H and W multiples of f -> (B, H/f, W/f) bool: the tokens that take the code.
        Outside the image counts as white, so a white border is background up to the edge."""
        white = (pixels.amin(dim=1, keepdim=True) >= 1 - 2 * self.tolerance / 255 - 1e-4).float()  # (B, 1, H, W)
        patches = -F.max_pool2d(-white, factor)  # (B, 1, h, w): 1 where the whole f x f patch is white
        m = self.margin
        quiet = -F.max_pool2d(-F.pad(patches, (m, m, m, m), value=1.0), 2 * m + 1, stride=1)  # (B, 1, h, w)
        return quiet[:, 0] > 0.5


@dataclass
class Encoding:
    """An image's tokens before decoding (`VQ.encode_image`). `VQ.reconstruct_from` decodes them, with this
    model's decoder or with any VQ of the same `encoder_key`: one encoder and codebook under other decoders,
    as a VQGAN fine-tuned from a VQ-VAE with its encoder frozen (vqgan-photo from vqvae-photo)."""

    input: Image.Image  # the image that was encoded (after any downscaling)
    indices: torch.Tensor  # (1, H'/f, W'/f): the padded grid the decoder takes
    encoder: VQ  # the model that encoded it
    seconds: float  # time the encoding took
    resized_from: tuple[int, int] | None = None  # original (width, height) when downscaled


class VQ:
    """A loaded VQ model plus the operations GenLab's tabs and notebooks use."""

    def __init__(self, model, name: str = "vq", tile: int | None = None, tile_margin: int = 0,
                 unit_pixels: bool = False, background: Background | None = None):
        """`tile`: the training crop in pixels (genlab.json); larger inputs are encoded and decoded
        in windows of that size plus `tile_margin` pixels of context (see genlab.imaging.tiling).
        `unit_pixels`: the model reads and writes pixels in [0, 1] (aMUSEd's VQ-GAN: its pipeline's
        VaeImageProcessor(do_normalize=False)), not diffusers' usual [-1, 1]; GenLab's tensors stay [-1, 1].
        `background`: the reserved background code this model was trained with (genlab.json), if any."""
        self.model, self.name, self.unit_pixels = model, name, unit_pixels
        config = model.config
        self.num_codes: int = config.num_vq_embeddings
        self.downsample_factor: int = 2 ** (len(config.block_out_channels) - 1)
        self.code_dim: int = config.vq_embed_dim or config.latent_channels
        f = self.downsample_factor
        if tile is not None and (tile % f or tile_margin % f):
            raise ValueError(f"tile ({tile}) and tile_margin ({tile_margin}) must be multiples of f = {f}")
        self.tile, self.tile_margin = tile, tile_margin
        if background is not None:
            background.check(self.num_codes)
        self.background = background
        self._patches: dict[int, torch.Tensor] = {}  # code -> (3, P, P) decoded atlas patch
        self._colors: np.ndarray | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def bits_per_token(self) -> float:
        return math.log2(self.num_codes)

    @property
    def codebook(self) -> torch.Tensor:
        """(K, D) fp32 code vectors."""
        return self.model.quantize.embedding.weight.detach().float()

    # ------------------------------------------------------------------------ core ops
    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1], H and W multiples of f -> (B, H/f, W/f) code indices."""
        if self.tile:
            indices = apply_tiled(self._encode_window, pixels, self.tile, self.tile_margin, 1 / self.downsample_factor)
        else:
            indices = self._encode_window(pixels)
        if self.background is not None:
            quiet = self.background.mask(pixels, self.downsample_factor).to(indices.device)
            indices = indices.masked_fill(quiet, self.background.code)
        return indices

    def _encode_window(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.unit_pixels:
            pixels = (pixels + 1) / 2
        latents = self.model.encode(pixels.to(self.device, self.model.dtype)).latents  # (B, D, h, w)
        batch, _, height, width = latents.shape
        _, _, (_, _, indices) = self.model.quantize(latents.float())  # diffusers' own nearest-code rule
        return indices.view(batch, height, width)

    def check_indices(self, indices) -> torch.Tensor:
        indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        if indices.ndim == 2:
            indices = indices[None]
        if indices.ndim != 3 or min(indices.shape[1:]) < 1:
            raise ValueError(f"indices must be an (h, w) grid, got shape {tuple(indices.shape)}")
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= self.num_codes:
            raise ValueError(f"code indices must be in [0, {self.num_codes - 1}], got values from {low} to {high}")
        return indices

    @torch.inference_mode()
    def decode_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) code-space vectors (snapped or not) -> (B, 3, h*f, w*f) in [-1, 1]."""
        if self.tile:
            f = self.downsample_factor
            return apply_tiled(self._decode_window, vectors, self.tile // f, self.tile_margin // f, f)
        return self._decode_window(vectors)

    def _decode_window(self, vectors: torch.Tensor) -> torch.Tensor:
        vectors = vectors.to(self.device, self.model.dtype)
        hidden = self.model.post_quant_conv(vectors)
        spatial = vectors if self.model.config.norm_type == "spatial" else None
        decoded = self.model.decoder(hidden, spatial).float()
        return decoded.clamp(0, 1) * 2 - 1 if self.unit_pixels else decoded.clamp(-1, 1)

    @torch.inference_mode()
    def vectors_of(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices -> (B, D, h, w) code vectors."""
        batch, height, width = indices.shape
        return self.model.quantize.get_codebook_entry(indices.reshape(-1).to(self.device), (batch, height, width, self.code_dim))

    def decode_tensor(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decode_vectors(self.vectors_of(indices))

    def decode_indices(self, indices) -> Image.Image:
        """(h, w) int array -> PIL image of size (w*f, h*f)."""
        return tensor_to_pil(self.decode_tensor(self.check_indices(indices))[0].cpu())

    def reconstruct(self, image, max_side: int | None = 512) -> Reconstruction:
        """Encode and decode an image; sides are reflect-padded to multiples of f and cropped back."""
        return self.reconstruct_from(self.encode_image(image, max_side))

    def encode_image(self, image, max_side: int | None = 512) -> Encoding:
        """The first half of `reconstruct`: an upload (downscaled to `max_side`) -> its padded token grid."""
        start = time.perf_counter()
        image, pixels, _, resized_from = prepare_input(image, max_side, self.downsample_factor)
        return Encoding(image, self.encode(pixels), self, time.perf_counter() - start, resized_from)

    def reconstruct_from(self, encoding: Encoding) -> Reconstruction:
        """The second half: decode an `Encoding` made by this model or by one with the same `encoder_key`.
        The latency counts the encoding too, so it reads as this model's whole reconstruction."""
        if encoding.encoder is not self and encoding.encoder.encoder_key != self.encoder_key:
            raise ValueError(f"these tokens come from another encoder or codebook than {self.name}'s; "
                             "encode the image with this model (encode_image)")
        start = time.perf_counter()
        width, height = encoding.input.size
        decoded = self.decode_tensor(encoding.indices)[..., :height, :width]
        reconstruction = Image.fromarray(tensor_to_uint8(decoded.cpu()), "RGB")
        return Reconstruction(encoding.input, reconstruction, self._visible(encoding.indices[0], height, width),
                              self.num_codes, encoding.seconds + time.perf_counter() - start, encoding.resized_from)

    @functools.cached_property
    def encoder_key(self) -> str:
        """A digest of everything that decides an image's tokens: the encoder, quant_conv and codebook weights,
        the encoder's config, and how pixels reach them (tiling, pixel range, dtype). Two VQs with one key give
        every image the same tokens, so one encoding serves both (`reconstruct_from`). Computed once, when
        another model's encoding is first decoded here (the weights of a loaded model do not change)."""
        config = {name: self.model.config.get(name) for name in ENCODER_CONFIG}
        digest = hashlib.sha256(repr((type(self.model).__name__, sorted(config.items()), self.tile, self.tile_margin,
                                      self.unit_pixels, str(self.model.dtype))).encode())
        for part in (self.model.encoder, self.model.quant_conv, self.model.quantize):
            for name, tensor in part.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def bits_per_pixel_for(self, width: int, height: int) -> float:
        """The bits per pixel a width x height image's `Reconstruction` will report, known before encoding:
        log2(K) per token over the pixels, its padded border tokens counted."""
        f = self.downsample_factor
        return -(-height // f) * -(-width // f) * self.bits_per_token / (width * height)

    def _visible(self, indices: torch.Tensor, height: int, width: int) -> np.ndarray:
        """The (ceil(H/f), ceil(W/f)) tokens covering the image (tiny images are padded further)."""
        f = self.downsample_factor
        return indices[: -(-height // f), : -(-width // f)].cpu().numpy()

    def indices_of(self, image, max_side: int | None = 512) -> np.ndarray:
        _, pixels, (height, width), _ = prepare_input(image, max_side, self.downsample_factor)
        return self._visible(self.encode(pixels)[0], height, width)

    # ------------------------------------------------------------------- statistics
    def code_usage(self, images, max_side: int | None = 512) -> np.ndarray:
        """(K,) int64: how often each code is used over the images (PIL, paths or index grids)."""
        usage = np.zeros(self.num_codes, dtype=np.int64)
        for item in images:
            indices = item if isinstance(item, np.ndarray) and item.ndim == 2 else self.indices_of(item, max_side)
            usage += np.bincount(np.asarray(indices).ravel(), minlength=self.num_codes)
        return usage

    def pca_2d(self) -> np.ndarray:
        """(K, 2): the code vectors projected on their first two principal components."""
        vectors = self.codebook.cpu().double()
        centred = vectors - vectors.mean(dim=0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        components = v[:2].T if v.shape[0] >= 2 else torch.cat([v.T, torch.zeros_like(v.T)], dim=1)
        return (centred @ components).numpy()

    def code_colors(self, chunk: int = 512) -> np.ndarray:
        """(K, 3) uint8 mean colour of each code decoded alone (one token); computed once."""
        if self._colors is None:
            colors = []
            for start in range(0, self.num_codes, chunk):
                codes = torch.arange(start, min(start + chunk, self.num_codes))
                decoded = self.decode_tensor(codes.view(-1, 1, 1))  # (n, 3, f, f)
                colors.append(((decoded.mean(dim=(2, 3)).cpu() + 1) * 127.5).round().clamp(0, 255).byte().numpy())
            self._colors = np.concatenate(colors)
        return self._colors

    # ------------------------------------------------------------------------ atlas
    @property
    def patch_tokens(self) -> int:
        """Side, in tokens, of the grid a code is tiled over for its atlas patch (>= 16 px)."""
        return max(2, math.ceil(16 / self.downsample_factor))

    def code_patches(self, codes) -> torch.Tensor:
        """(N, 3, P, P) patches: each code tiled over a small grid and decoded. Cached per code."""
        codes = [int(c) for c in codes]
        missing = [c for c in codes if c not in self._patches]
        side = self.patch_tokens
        for start in range(0, len(missing), 128):
            batch = torch.tensor(missing[start:start + 128]).view(-1, 1, 1).expand(-1, side, side)
            for code, patch in zip(missing[start:start + 128], self.decode_tensor(batch).cpu()):
                self._patches[code] = patch
        return torch.stack([self._patches[c] for c in codes]) if codes else torch.zeros(0, 3, 1, 1)

    def code_patch(self, code: int) -> Image.Image:
        self.check_indices(np.array([[code]]))
        return tensor_to_pil(self.code_patches([code])[0])

    def atlas_order(self, usage: np.ndarray | None = None) -> np.ndarray:
        """Codes sorted by usage (most used first); index order without usage."""
        if usage is None:
            return np.arange(self.num_codes)
        return np.argsort(-np.asarray(usage), kind="stable")

    def codebook_atlas(self, usage: np.ndarray | None = None, page: int = 0,
                       page_size: int = ATLAS_PAGE_SIZE, columns: int = ATLAS_COLUMNS) -> Image.Image:
        """One page of the atlas: code patches sorted by usage; unused codes dimmed and crossed out."""
        order = self.atlas_order(usage)
        pages = max(1, math.ceil(self.num_codes / page_size))
        if not 0 <= page < pages:
            raise ValueError(f"atlas page must be in [0, {pages - 1}], got {page}")
        codes = order[page * page_size:(page + 1) * page_size]
        tiles = []
        for code, patch in zip(codes, self.code_patches(codes)):
            tile = tensor_to_pil(patch)
            if usage is not None and usage[code] == 0:
                tile = Image.blend(tile, Image.new("RGB", tile.size, "white"), 0.6)
                draw = ImageDraw.Draw(tile)
                draw.line((0, 0, tile.width - 1, tile.height - 1), fill=(220, 0, 0))
                draw.line((0, tile.height - 1, tile.width - 1, 0), fill=(220, 0, 0))
            tiles.append(tile)
        return image_grid(tiles, columns=columns, gap=1)

    def atlas_pages(self, page_size: int = ATLAS_PAGE_SIZE) -> int:
        return max(1, math.ceil(self.num_codes / page_size))

    # ---------------------------------------------------------------------- editing
    def _region(self, indices: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        (r0, r1), (c0, c1) = sorted(map(int, rows)), sorted(map(int, cols))
        height, width = indices.shape
        if not (0 <= r0 < height and 0 <= c0 < width):
            raise ValueError(f"the region must start inside the {height}x{width} token grid")
        cells = np.zeros((height, width), bool)
        cells[r0: min(r1, height - 1) + 1, c0: min(c1, width - 1) + 1] = True
        return cells

    def cells_touched(self, mask) -> np.ndarray:
        """(ceil(H/f), ceil(W/f)) bool: the tokens whose f x f patch an (H, W) pixel mask (non-zero =
        chosen) touches; the grid `reconstruct` gives an H x W image."""
        mask = np.asarray(mask) != 0
        if mask.ndim != 2:
            raise ValueError(f"a pixel mask must be (H, W), got shape {mask.shape}")
        f = self.downsample_factor
        height, width = -(-mask.shape[0] // f), -(-mask.shape[1] // f)
        padded = np.zeros((height * f, width * f), bool)
        padded[: mask.shape[0], : mask.shape[1]] = mask
        return padded.reshape(height, f, width, f).any(axis=(1, 3))

    @staticmethod
    def _check_cells(indices: np.ndarray, cells) -> np.ndarray:
        cells = np.asarray(cells, dtype=bool)
        if cells.shape != indices.shape:
            raise ValueError(f"the region is a {cells.shape} mask but the token grid is {indices.shape}")
        if not cells.any():
            raise ValueError("the region is empty: choose at least one token")
        return cells

    def replace_region(self, indices, rows: tuple[int, int], cols: tuple[int, int], code: int) -> np.ndarray:
        """Set every cell with row in rows[0]..rows[1] and column in cols[0]..cols[1] (inclusive) to `code`."""
        return self.replace_cells(indices, self._region(np.asarray(indices), rows, cols), code)

    def replace_cells(self, indices, cells, code: int) -> np.ndarray:
        """Set every cell where the (h, w) bool mask `cells` is True to `code`."""
        edited = np.array(indices, dtype=np.int64, copy=True)
        self.check_indices(np.array([[code]]))
        edited[self._check_cells(edited, cells)] = code
        return edited

    def resample_region(self, indices, rows, cols, usage: np.ndarray, seed: int = 0) -> np.ndarray:
        """Refill the region with codes drawn from the usage distribution."""
        return self.resample_cells(indices, self._region(np.asarray(indices), rows, cols), usage, seed)

    def resample_cells(self, indices, cells, usage: np.ndarray, seed: int = 0) -> np.ndarray:
        """Refill the cells of the (h, w) bool mask `cells` with codes drawn from the usage distribution."""
        edited = np.array(indices, dtype=np.int64, copy=True)
        cells = self._check_cells(edited, cells)
        usage = np.asarray(usage, dtype=np.float64)
        probs = usage / usage.sum() if usage.sum() > 0 else np.full(self.num_codes, 1.0 / self.num_codes)
        rng = np.random.default_rng(seed)
        edited[cells] = rng.choice(self.num_codes, size=int(cells.sum()), p=probs)
        return edited

    def swap_codes(self, indices, first: int, second: int) -> np.ndarray:
        """Exchange two codes everywhere in the grid."""
        self.check_indices(np.array([[first, second]]))
        indices = np.asarray(indices, dtype=np.int64)
        edited = indices.copy()
        edited[indices == first], edited[indices == second] = second, first
        return edited

    def interpolate_codes(self, first: int, second: int, steps: int = 8) -> tuple[list[Image.Image], list[int]]:
        """Decoded blends (1 - a) e_first + a e_second tiled over a patch, and the code each blend snaps to."""
        self.check_indices(np.array([[first, second]]))
        if not 2 <= steps <= 64:
            raise ValueError(f"steps must be in [2, 64], got {steps}")
        alphas = torch.linspace(0, 1, steps, dtype=torch.float32)
        vectors = self.codebook[[first, second]].cpu()  # (2, D)
        blends = (1 - alphas[:, None]) * vectors[0] + alphas[:, None] * vectors[1]  # (steps, D)
        side = self.patch_tokens
        grid = blends[:, :, None, None].expand(-1, -1, side, side)  # (steps, D, side, side)
        images = [tensor_to_pil(t) for t in self.decode_vectors(grid).cpu()]
        snapped = torch.cdist(blends, self.codebook.cpu()).argmin(dim=1).tolist()
        return images, snapped


def perplexity(usage: np.ndarray) -> float:
    """exp(entropy) of the usage distribution; K when all K codes are equally used."""
    usage = np.asarray(usage, dtype=np.float64)
    if usage.sum() == 0:
        return 0.0
    probs = usage[usage > 0] / usage.sum()
    return float(np.exp(-(probs * np.log(probs)).sum()))


def index_colors(num_codes: int) -> np.ndarray:
    """(K, 3) uint8: a fixed, well-spread colour per code index (golden-ratio hues)."""
    import colorsys

    hues = (np.arange(num_codes) * 0.6180339887) % 1.0
    values = 0.65 + 0.35 * ((np.arange(num_codes) * 7) % 3) / 2
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, v)] for h, v in zip(hues, values)], np.uint8)


@functools.lru_cache(maxsize=8)
def _palette(num_codes: int) -> np.ndarray:
    """index_colors(num_codes), computed once per K (read-only): every token map reuses it instead of recomputing
    K colours."""
    colors = index_colors(num_codes)
    colors.flags.writeable = False
    return colors


def index_map_image(indices: np.ndarray, num_codes: int, cell: int = 4) -> Image.Image:
    """The token grid drawn with one colour per code, each cell `cell` pixels wide."""
    grid = Image.fromarray(_palette(num_codes)[np.asarray(indices)], "RGB")  # (h, w, 3): a pixel per token
    return grid.resize((grid.width * cell, grid.height * cell), Image.Resampling.NEAREST)  # exact cell x cell blocks


def heatmap_image(error: np.ndarray, vmax: float = 64.0) -> Image.Image:
    """(H, W) absolute error (0..255) -> a black-red-yellow-white heat map image."""
    level = 3 * np.clip(error / vmax, 0, 1)  # (H, W) in 0..3: red rises over 0..1, green over 1..2, blue over 2..3
    rgb = np.empty((*level.shape, 3), level.dtype)  # float64, or float32 for a float32 map (a KL std map)
    for channel in range(3):
        np.clip(level - channel, 0, 1, out=rgb[..., channel])
    rgb *= 255
    return Image.fromarray(np.rint(rgb, out=rgb).astype(np.uint8), "RGB")
