"""The PLONK evaluation table of a checkpoint on embedding shards.

    python training/evaluate.py CHECKPOINT SHARDS [--steps 250 --guidance 2 --samples-per-image 1]
    torchrun --nproc_per_node=8 training/evaluate.py CHECKPOINT SHARDS ...   # rank r takes shards r, r + 8, ...

Protocol (PLONK's defaults): one sample per image at guidance w = 2 with 250 sampler steps gives the point
predictions (GeoScore, mean/median km, accuracy within 1/25/200/750/2500 km, PRDC with k = 3 against the
true locations); NLL = -mean log p(true location | image) at w = 0; localizability = mean over images of the
mean log p of the model's own samples (a negative-entropy estimate). Densities are in nats per steradian
of the unit sphere (geodemo's convention; see geodemo/likelihood.py). Writes the same numbers as JSON.
Each image's noise comes from (seed, image key), as in `geodemo predict-shards`, so the table is the same on any
number of ranks (NCCL on GPUs, gloo on CPUs); rank 0 gathers the per-image terms and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist

import geodemo
from geodemo.checkpoint import read_info
from geodemo.metrics import distance_metrics, negative_log_likelihood, prdc
from geodemo.pipeline import GeoPipeline
from geodemo.batch_predict import join_world, key_noise
from geodemo.sampling import make_generator, sample
from geodemo.sphere import xyz_to_latlon
from training.calibration import region_coverage
from training.shards import list_shards, read_shards, shard_sizes

TABLE_ROWS = (("geoscore", "GeoScore", "{:.0f}"), ("mean_km", "mean distance (km)", "{:.0f}"),
              ("median_km", "median distance (km)", "{:.0f}"), ("acc@1km", "acc @ 1 km (%)", "{:.1%}"),
              ("acc@25km", "acc @ 25 km (%)", "{:.1%}"), ("acc@200km", "acc @ 200 km (%)", "{:.1%}"),
              ("acc@750km", "acc @ 750 km (%)", "{:.1%}"), ("acc@2500km", "acc @ 2500 km (%)", "{:.1%}"),
              ("nll", "NLL (nats/sr, w = 0)", "{:.3f}"), ("precision", "precision (k = 3)", "{:.3f}"),
              ("recall", "recall (k = 3)", "{:.3f}"), ("density", "density (k = 3)", "{:.3f}"),
              ("coverage", "coverage (k = 3)", "{:.3f}"), ("localizability", "mean localizability (nats/sr)", "{:.3f}"),
              *((f"region{m}_coverage_{w}", f"truth in the {m}% region ({label})", "{:.1%}")
                for w, label in (("w0", "w = 0"), ("guided", "guided")) for m in (50, 90)),
              *((f"region{m}_median_area_km2_w0", f"median area of the {m}% region (km², w = 0)", "{:,.0f}")
                for m in (50, 90)))


def evaluate(pipeline: GeoPipeline, embeddings: torch.Tensor, latlon: torch.Tensor, steps: int = 250,
             guidance: float = 2.0, samples_per_image: int = 1, seed: int = 0, batch_size: int = 1024,
             likelihood_images: int | None = None, localizability_samples: int = 64, prdc_images: int = 5000,
             prdc_k: int = 3, ode_options: dict | None = None, keys: Sequence[str] | None = None) -> dict:
    """The table as a dict. embeddings (N, C), latlon (N, 2) true degrees.

    Distance metrics use every sample (with one per image: the paper's point estimate); PRDC uses the first
    sample of up to prdc_images images; NLL and localizability use the first likelihood_images images (all: None).
    keys: the images' keys; with them each image's noise comes from (seed, key) (geodemo.batch_predict), so the
    table does not depend on how the images are split over ranks or batches; without, from one seeded stream.
    """
    n_like = len(latlon) if likelihood_images is None else min(likelihood_images, len(latlon))
    terms = image_terms(pipeline, embeddings, latlon, torch.arange(len(latlon)) < n_like, steps=steps,
                        guidance=guidance, samples_per_image=samples_per_image, seed=seed, batch_size=batch_size,
                        localizability_samples=localizability_samples, ode_options=ode_options, keys=keys)
    result = table(terms, latlon, steps=steps, guidance=guidance, seed=seed, prdc_images=prdc_images, prdc_k=prdc_k)
    if localizability_samples > 0:
        result["localizability_samples"] = localizability_samples
    return result


def image_terms(pipeline: GeoPipeline, embeddings: torch.Tensor, latlon: torch.Tensor, scored: torch.Tensor,
                steps: int = 250, guidance: float = 2.0, samples_per_image: int = 1, seed: int = 0,
                batch_size: int = 1024, localizability_samples: int = 64, ode_options: dict | None = None,
                keys: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Per image: samples (N, S, 2) at `guidance`; for the images where scored (N,) is true, log p(truth) at
    w = 0 (log_p_true) and the mean log p of localizability_samples own samples at w = 0 (localizability)."""
    ode_options = ode_options or {}
    generator = make_generator(seed)

    def draw(emb: torch.Tensor, rows: Sequence[int], count: int, w: float, stream: str) -> torch.Tensor:
        if keys is None:
            return pipeline.predict(embeddings=emb, num_samples=count, steps=steps, guidance=w, seed=generator).latlon
        noise = key_noise(pipeline, [f"{keys[i]}{stream}" for i in rows], count, seed)
        return xyz_to_latlon(sample(pipeline.network, pipeline.process, pipeline.schedule, emb.to(pipeline.device),
                                    num_samples=count, steps=steps, guidance=w, initial_noise=noise).xyz).cpu()

    samples = torch.cat([draw(embeddings[i:i + batch_size], range(i, min(i + batch_size, len(embeddings))),
                              samples_per_image, guidance, "")
                         for i in range(0, len(embeddings), batch_size)] or [torch.zeros(0, samples_per_image, 2)])
    like = torch.nonzero(scored).flatten()
    truth = latlon.double()
    log_p_true = [pipeline.log_density(truth[idx].unsqueeze(1), embeddings=embeddings[idx], guidance=0.0,
                                       **ode_options)[:, 0] for idx in _split(like, batch_size)]
    terms = {"samples": samples, "log_p_true": torch.cat(log_p_true or [torch.zeros(0, dtype=torch.float64)])}
    if localizability_samples > 0:
        local = []
        for idx in _split(like, max(1, batch_size // localizability_samples)):
            own = draw(embeddings[idx], idx.tolist(), localizability_samples, 0.0, "/localizability")
            local.append(pipeline.log_density(own, embeddings=embeddings[idx], guidance=0.0, **ode_options).mean(dim=1))
        terms["localizability"] = torch.cat(local or [torch.zeros(0, dtype=torch.float64)])
    return terms


def _split(index: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Consecutive parts of at most size entries; none for an empty index (torch's split gives one empty part)."""
    return list(index.split(size)) if len(index) else []


def table(terms: dict[str, torch.Tensor], latlon: torch.Tensor, steps: int, guidance: float, seed: int = 0,
          prdc_images: int = 5000, prdc_k: int = 3) -> dict:
    """The metrics of image_terms over all images (the scored ones for NLL and localizability)."""
    samples, truth = terms["samples"], latlon.double()
    samples_per_image = samples.shape[1]
    result = {"images": int(samples.shape[0]), "samples_per_image": samples_per_image, "steps": steps,
              "guidance": guidance}
    result.update(distance_metrics(samples.reshape(-1, 2), truth.repeat_interleave(samples_per_image, dim=0)))
    subset = torch.randperm(len(truth), generator=torch.Generator().manual_seed(seed))[:prdc_images]
    result.update(prdc(truth[subset], samples[subset, 0].double(), k=prdc_k))
    result["nll"] = negative_log_likelihood(terms["log_p_true"])
    result["likelihood_images"] = len(terms["log_p_true"])
    if "localizability" in terms:
        result["localizability"] = float(terms["localizability"].mean())
    return result


def format_table(result: dict, title: str = "") -> str:
    """The metrics as an aligned two-column text table, in the paper's order."""
    rows = [(label, fmt.format(result[key])) for key, label, fmt in TABLE_ROWS if key in result]
    width = max(len(label) for label, _ in rows)
    lines = [title] if title else []
    lines += [f"{label:<{width}}  {value:>10}" for label, value in rows]
    return "\n".join(lines)


def _embedding_key(pipeline_folder: Path) -> str | None:
    info = read_info(pipeline_folder)
    return (info.metadata.get("training") or {}).get("embedding_key") or info.encoder


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="PLONK evaluation table of a checkpoint on embedding shards.")
    parser.add_argument("checkpoint", help="model folder (config.json + model.safetensors)")
    parser.add_argument("shards", help="folder of .tar shards, a brace pattern or a comma-separated list")
    parser.add_argument("--embedding-key", help="embedding member name (default: the checkpoint's)")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--samples-per-image", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--max-images", type=int, help="evaluate the first N images only")
    parser.add_argument("--likelihood-images", type=int, help="NLL/localizability on the first N images (default all)")
    parser.add_argument("--localizability-samples", type=int, default=64, help="samples per image; 0 skips it")
    parser.add_argument("--prdc-images", type=int, default=5000, help="PRDC on a seeded subset of N images")
    parser.add_argument("--ode-method", default="dopri5", help="torchdiffeq method for the likelihood")
    parser.add_argument("--ode-tol", type=float, default=1e-5, help="atol = rtol of adaptive solvers")
    parser.add_argument("--ode-steps", type=int, help="steps of fixed-step solvers (euler, midpoint, rk4)")
    parser.add_argument("--ode-precision", default="native", choices=("native", "bf16x3"),
                        help="bf16x3: the network's matmuls as three bfloat16 products (fast on GPU, ~float32 accuracy)")
    parser.add_argument("--ode-compile", action="store_true", help="torch.compile the likelihood's network pass")
    parser.add_argument("--coverage-images", type=int, default=0,
                        help="how often the truth lies in the 50%% / 90%% regions, at w = 0 and at --guidance, on "
                             "the first N images of rank 0 (training/calibration.py; the app's ODE options); 0 skips it")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--output", help="JSON file (default: CHECKPOINT/evaluation.json)")
    args = parser.parse_args(argv)
    world = join_world(args.device)
    try:
        pipeline = geodemo.load(args.checkpoint, device=world.device)
        key = args.embedding_key or _embedding_key(Path(args.checkpoint))
        if not key:
            raise ValueError("the checkpoint names no embedding key: pass --embedding-key")
        paths = list_shards(args.shards)
        sizes = shard_sizes(paths)
        mine = list(range(world.rank, len(paths), world.size))
        data = read_shards([paths[i] for i in mine], key) if mine else None
        if data is not None and len(data.keys) != sum(sizes[i] for i in mine):
            raise ValueError("the shards hold other sample counts than sizes.json lists: fix or delete it")
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    offsets = torch.cumsum(torch.tensor([0, *sizes]), 0)
    n_images = min(args.max_images or int(offsets[-1]), int(offsets[-1]))
    n_like = n_images if args.likelihood_images is None else min(args.likelihood_images, n_images)
    ode = {"method": args.ode_method, "atol": args.ode_tol, "rtol": args.ode_tol, "steps": args.ode_steps,
           "precision": args.ode_precision, "compile": args.ode_compile}
    part = {"index": torch.zeros(0, dtype=torch.long)}
    if data is not None:  # this rank's images among the first n_images, by their index in the whole set
        index = torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in mine])
        keep = index < n_images
        part = image_terms(pipeline, data.embeddings[keep], data.latlon[keep], index[keep] < n_like,
                           steps=args.steps, guidance=args.guidance, samples_per_image=args.samples_per_image,
                           seed=args.seed, batch_size=args.batch_size,
                           localizability_samples=args.localizability_samples, ode_options=ode,
                           keys=[k for k, kept in zip(data.keys, keep.tolist()) if kept])
        part.update(index=index[keep], latlon=data.latlon[keep])
    parts = [part]
    if world.size > 1:
        parts = [None] * world.size
        dist.all_gather_object(parts, part)
        dist.barrier()  # gloo aborts a rank whose peer destroys the group while it still receives
        dist.destroy_process_group()
    if world.rank != 0:
        return {}
    parts = [p for p in parts if len(p["index"])]
    index = torch.cat([p["index"] for p in parts])
    order = index.argsort()
    like_order = index[index < n_like].argsort()  # log_p_true and localizability cover the images below n_like
    terms = {name: torch.cat([p[name] for p in parts])[like_order if name != "samples" else order]
             for name in parts[0] if name not in ("index", "latlon")}
    latlon = torch.cat([p["latlon"] for p in parts])[order]
    result = table(terms, latlon, steps=args.steps, guidance=args.guidance, seed=args.seed,
                   prdc_images=args.prdc_images)
    if args.coverage_images > 0 and data is not None:
        n = min(args.coverage_images, len(data.latlon))
        result.update(region_coverage(pipeline, data.embeddings[:n].to(pipeline.device), data.latlon[:n],
                                      guided=args.guidance))
    if args.localizability_samples > 0:
        result["localizability_samples"] = args.localizability_samples
    result.update({"checkpoint": str(args.checkpoint), "shards": args.shards, "embedding_key": key,
                   "ranks": world.size})
    output = Path(args.output) if args.output else Path(args.checkpoint) / "evaluation.json"
    output.write_text(json.dumps(result, indent=2))
    print(format_table(result, title=f"{args.checkpoint} on {args.shards} ({result['images']} images, "
                                     f"{world.size} rank{'s' if world.size > 1 else ''})"))
    print(f"written to {output}")
    return result

if __name__ == "__main__":
    main()
