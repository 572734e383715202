"""Training geodemo/PLONK denoisers from precomputed image embeddings stored as WebDataset shards.

Modules: `shards` (the data format), `loader` (per-rank, resumable batches), `config` (TrainConfig),
`train` (the training loop, CPU / 1 GPU / N GPUs via torchrun), `evaluate` (the paper's table),
`extract_embeddings` (images -> embedding shards).
"""
