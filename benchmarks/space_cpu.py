"""A Space on CPU-basic (2 vCPU): the official models' shapes, with random weights, through the app's own request.

Shapes: `osv5m` = StreetCLIP ViT-L/14 at 336 px (open_clip's tower, the CLS token) + denoiser dim 512 / depth 12;
`yfcc` = DINOv2-reg ViT-L/14 at 336 px (timm) + denoiser dim 512 / depth 12. Both encoders are built offline with
random weights (no pretrained download); timings depend on the shapes, not on the weights.

Measured per shape: image encoding alone (warm), samples + globe (the app function's first yield: upload read,
encoding, sampling with trajectories, summary, globe figure) and the complete map (its last yield: the progressive
log-density map and its drawings). Targets: globe < 8 s, complete map < 30 s.
Usage: python -m benchmarks.space_cpu [--shapes osv5m yfcc] [--threads 2] [--levels 5 3] [--repeats 2]
       [--encoder-bf16]
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import tempfile
import time
from pathlib import Path

import gradio as gr
import torch
from PIL import Image

import app
from benchmarks.app_latency import machine, matmul_rate, record_latency
from geodemo.checkpoint import save_checkpoint
from geodemo.encoders import register_encoder
from geodemo.encoders.backbones import BackboneEncoder, clip_preprocess, square_crop_preprocess
from geodemo.network import GeoDenoiser, NetworkConfig
from geodemo.schedules import SigmoidSchedule, schedule_to_config
from geodemo.service import LATENCY_TABLE, MAP_OPTIONS, ModelCache, make_catalogue

ROOT = Path(__file__).resolve().parent.parent
STREET_CLIP_VISION = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                          image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
"""geolocal/StreetCLIP's vision config (that of openai/clip-vit-large-patch14-336)."""


def randomise(module: torch.nn.Module) -> torch.nn.Module:
    """Random weights for a module built on the meta device: allocated on the CPU, normal(0, 0.02), norms at 1."""
    module = module.to_empty(device="cpu")
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.02)
        for sub in module.modules():
            if isinstance(sub, torch.nn.LayerNorm) and sub.elementwise_affine:
                sub.weight.fill_(1.0)
                sub.bias.zero_()
        for buffer in module.buffers():
            buffer.zero_()
    return module.eval().requires_grad_(False)


def street_clip_tower() -> torch.nn.Module:
    from geodemo.encoders.street_clip import ClsTokenTower, build_vision_tower

    with torch.device("meta"):
        tower = build_vision_tower(STREET_CLIP_VISION)
    return ClsTokenTower(randomise(tower))


def dinov2_tower() -> torch.nn.Module:
    import timm

    from geodemo.encoders.dinov2 import IMAGE_SIZE, TIMM_MODEL

    with torch.device("meta"):
        model = timm.create_model(TIMM_MODEL, pretrained=False, img_size=IMAGE_SIZE, num_classes=0)
    return randomise(model)


SHAPES = {
    "osv5m": ("StreetCLIP ViT-L/14-336", lambda: (street_clip_tower(), clip_preprocess)),
    "yfcc": ("DINOv2-reg ViT-L/14 (336 px)", lambda: (dinov2_tower(), square_crop_preprocess)),
}
SHAPE_MODELS = {"osv5m": "nicolas-dufour/PLONK_OSV_5M", "yfcc": "nicolas-dufour/PLONK_YFCC"}
"""The official model each shape stands for in assets/app_latency.json (the app's map note reads it there)."""


class Bf16Tower(torch.nn.Module):
    """A tower run under CPU bfloat16 autocast (matmuls in bf16, float32 out)."""

    def __init__(self, tower: torch.nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.tower(pixels).float()


def build_shape(shape: str, folder: Path, encoder_bf16: bool) -> str:
    """Register the shape's random encoder and save a random dim-512 / depth-12 denoiser using it; returns the
    model folder's name as the catalogue offers it."""
    label, build = SHAPES[shape]
    name = f"bench-{shape}"

    def built():
        tower, preprocess = build()
        return (Bf16Tower(tower) if encoder_bf16 else tower), preprocess

    register_encoder(name, lambda: BackboneEncoder(name, 1024, built))
    torch.manual_seed(0)
    network = GeoDenoiser(NetworkConfig(dim=512, depth=12, cond_dim=1024))
    with torch.no_grad():
        for block in network.blocks:
            block.mlp[3].weight.normal_(0, 0.02)
        network.final_linear.weight.normal_(0, 0.02)
    save_checkpoint(folder / name, network, "rfm_s2", schedule_to_config(SigmoidSchedule()), name,
                    metadata={"description": f"benchmark: random weights in the shape of {label} + dim 512 / 12"})
    return name


def time_request(fn, payload, model: str, samples: int, steps: int, guidance: float,
                 density: bool = True) -> tuple[float, float, int]:
    """(seconds to the first yield, seconds to the last, yields) of one request through the app's function."""
    start = time.perf_counter()
    first, count = None, 0
    for _ in fn(payload, model, guidance, steps, samples, 0, density):
        count += 1
        first = first if first is not None else time.perf_counter() - start
        print(f"  yield {count} at {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return first, time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--image", default=str(ROOT / "tests/data/chelsea.jpg"))
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--guidance", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (CPU-basic has 2 vCPU)")
    parser.add_argument("--levels", type=int, nargs="+", default=[MAP_OPTIONS["levels"]],
                        help="refinement levels of the map to time (one app per value)")
    parser.add_argument("--coarse-deg", type=float, default=MAP_OPTIONS["coarse_deg"])
    parser.add_argument("--repeats", type=int, default=2, help="timed requests per row after one warm-up")
    parser.add_argument("--encoder-bf16", action="store_true", help="run the image encoder under bf16 autocast")
    parser.add_argument("--no-write", action="store_true",
                        help=f"print only; else the first --levels row of each shape goes to {LATENCY_TABLE.name}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    folder = Path(tempfile.mkdtemp(prefix="geodemo-space-bench-"))
    upload = Path(gr.utils.get_upload_folder())
    upload.mkdir(parents=True, exist_ok=True)
    image_path = shutil.copy(args.image, upload / f"space-bench-{Path(args.image).name}")
    payload = {"path": str(image_path), "meta": {"_type": "gradio.FileData"}}
    image = Image.open(image_path).convert("RGB")
    print(f"torch {torch.__version__}, {args.threads} thread(s), matmul {matmul_rate():.0f} GFLOP/s fp32 now; "
          f"{args.samples} samples x {args.steps} steps, w = {args.guidance}, image {Path(args.image).name}, "
          f"encoder {'bf16 autocast' if args.encoder_bf16 else 'fp32'}")
    latency: dict[str, dict] = {}
    print("| shape | map levels | encoder build s | encoding s | samples + globe s | complete map s | yields |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        name = build_shape(shape, folder, args.encoder_bf16)
        for levels in args.levels:
            map_options = {**MAP_OPTIONS, "levels": levels, "coarse_deg": args.coarse_deg}
            catalogue = make_catalogue(str(folder / name))
            models = ModelCache(catalogue, device="cpu")
            started = time.perf_counter()
            pipe = models.get(name)
            pipe.encoder.to("cpu")
            build_s = time.perf_counter() - started
            demo = app.build_demo(catalogue, device="cpu", map_options=map_options, models=models)
            fn = next(f.fn for f in demo.fns.values() if f.api_name == "locate")
            pipe.embed(image)
            started = time.perf_counter()
            for _ in range(args.repeats):
                pipe.embed(image)
            encode_s = (time.perf_counter() - started) / args.repeats
            print(f"  {shape}: encoder built and loaded in {build_s:.1f} s, encoding {encode_s:.2f} s", file=sys.stderr,
                  flush=True)
            # warm-up: a small request of the same shapes, without the map (on a CPU the map needs no warming, and
            # with random weights it costs as much as a timed one)
            time_request(fn, payload, name, 16, 2, args.guidance, density=False)
            runs = [time_request(fn, payload, name, args.samples, args.steps, args.guidance)
                    for _ in range(args.repeats)]
            first = sorted(r[0] for r in runs)[len(runs) // 2]
            last = sorted(r[1] for r in runs)[len(runs) // 2]
            print(f"| {SHAPES[shape][0]} + dim 512 / 12 | {levels} | {build_s:.1f} | {encode_s:.2f} | {first:.2f} | "
                  f"{last:.2f} | {runs[0][2]} |", flush=True)
            latency.setdefault(SHAPE_MODELS[shape], {
                "samples_globe_s": round(first, 1), "complete_map_s": round(last, 1),
                "machine": f"{machine().split(' (')[0]} ({args.threads} threads; random weights in this model's shape)",
                "measured": datetime.date.today().isoformat()})
    shutil.rmtree(folder, ignore_errors=True)
    if not args.no_write:
        record_latency(latency)


if __name__ == "__main__":
    main()
