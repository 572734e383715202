"""The PLONK evaluation table of a checkpoint on embedding shards.

    python training/evaluate.py CHECKPOINT SHARDS [--steps 250 --guidance 2 --samples-per-image 1]

Protocol (PLONK's defaults): one sample per image at guidance w = 2 with 250 sampler steps gives the point
predictions (GeoScore, mean/median km, accuracy within 1/25/200/750/2500 km, PRDC with k = 3 against the
true locations); NLL = -mean log p(true location | image) at w = 0; localizability = mean over images of the
mean log p of the model's own samples (a negative-entropy estimate). Densities are in nats per steradian
of the unit sphere (geodemo's convention; see geodemo/likelihood.py). Writes the same numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import geodemo
from geodemo.checkpoint import read_info
from geodemo.metrics import distance_metrics, negative_log_likelihood, prdc
from geodemo.pipeline import GeoPipeline
from geodemo.sampling import make_generator
from training.shards import list_shards, read_shards

TABLE_ROWS = (("geoscore", "GeoScore", "{:.0f}"), ("mean_km", "mean distance (km)", "{:.0f}"),
              ("median_km", "median distance (km)", "{:.0f}"), ("acc@1km", "acc @ 1 km (%)", "{:.1%}"),
              ("acc@25km", "acc @ 25 km (%)", "{:.1%}"), ("acc@200km", "acc @ 200 km (%)", "{:.1%}"),
              ("acc@750km", "acc @ 750 km (%)", "{:.1%}"), ("acc@2500km", "acc @ 2500 km (%)", "{:.1%}"),
              ("nll", "NLL (nats/sr, w = 0)", "{:.3f}"), ("precision", "precision (k = 3)", "{:.3f}"),
              ("recall", "recall (k = 3)", "{:.3f}"), ("density", "density (k = 3)", "{:.3f}"),
              ("coverage", "coverage (k = 3)", "{:.3f}"), ("localizability", "mean localizability (nats/sr)", "{:.3f}"))


def evaluate(pipeline: GeoPipeline, embeddings: torch.Tensor, latlon: torch.Tensor, steps: int = 250,
             guidance: float = 2.0, samples_per_image: int = 1, seed: int = 0, batch_size: int = 1024,
             likelihood_images: int | None = None, localizability_samples: int = 64, prdc_images: int = 5000,
             prdc_k: int = 3, ode_options: dict | None = None) -> dict:
    """The table as a dict. embeddings (N, C), latlon (N, 2) true degrees.

    Distance metrics use every sample (with one per image: the paper's point estimate); PRDC uses the first
    sample of up to prdc_images images; NLL and localizability use the first likelihood_images images (all: None).
    """
    ode_options = ode_options or {}
    generator = make_generator(seed)
    samples = torch.cat([pipeline.predict(embeddings=chunk, num_samples=samples_per_image, steps=steps,
                                          guidance=guidance, seed=generator).latlon
                         for chunk in embeddings.split(batch_size)])
    truth = latlon.double()
    result = {"images": int(embeddings.shape[0]), "samples_per_image": samples_per_image, "steps": steps,
              "guidance": guidance}
    result.update(distance_metrics(samples.reshape(-1, 2), truth.repeat_interleave(samples_per_image, dim=0)))
    subset = torch.randperm(len(truth), generator=torch.Generator().manual_seed(seed))[:prdc_images]
    result.update(prdc(truth[subset], samples[subset, 0].double(), k=prdc_k))
    n_like = len(truth) if likelihood_images is None else min(likelihood_images, len(truth))
    log_p_true = torch.cat([pipeline.log_density(truth[i:min(i + batch_size, n_like)].unsqueeze(1),
                                                 embeddings=embeddings[i:min(i + batch_size, n_like)], guidance=0.0,
                                                 **ode_options)
                            for i in range(0, n_like, batch_size)])
    result["nll"] = negative_log_likelihood(log_p_true)
    result["likelihood_images"] = n_like
    if localizability_samples > 0:
        per_chunk = max(1, batch_size // localizability_samples)
        local = []
        for i in range(0, n_like, per_chunk):
            chunk = embeddings[i:min(i + per_chunk, n_like)]
            own = pipeline.predict(embeddings=chunk, num_samples=localizability_samples, steps=steps, seed=generator)
            local.append(pipeline.log_density(own.latlon, embeddings=chunk, guidance=0.0, **ode_options).mean(dim=1))
        result["localizability"] = float(torch.cat(local).mean())
        result["localizability_samples"] = localizability_samples
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
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--output", help="JSON file (default: CHECKPOINT/evaluation.json)")
    args = parser.parse_args(argv)
    try:
        pipeline = geodemo.load(args.checkpoint, device=args.device)
        key = args.embedding_key or _embedding_key(Path(args.checkpoint))
        if not key:
            raise ValueError("the checkpoint names no embedding key: pass --embedding-key")
        data = read_shards(list_shards(args.shards), key)
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    embeddings, latlon = data.embeddings, data.latlon
    if args.max_images:
        embeddings, latlon = embeddings[:args.max_images], latlon[:args.max_images]
    ode = {"method": args.ode_method, "atol": args.ode_tol, "rtol": args.ode_tol, "steps": args.ode_steps,
           "precision": args.ode_precision, "compile": args.ode_compile}
    result = evaluate(pipeline, embeddings, latlon, steps=args.steps, guidance=args.guidance,
                      samples_per_image=args.samples_per_image, seed=args.seed, batch_size=args.batch_size,
                      likelihood_images=args.likelihood_images, localizability_samples=args.localizability_samples,
                      prdc_images=args.prdc_images, ode_options=ode)
    result.update({"checkpoint": str(args.checkpoint), "shards": args.shards, "embedding_key": key})
    output = Path(args.output) if args.output else Path(args.checkpoint) / "evaluation.json"
    output.write_text(json.dumps(result, indent=2))
    print(format_table(result, title=f"{args.checkpoint} on {args.shards} ({result['images']} images)"))
    print(f"written to {output}")
    return result


if __name__ == "__main__":
    main()
