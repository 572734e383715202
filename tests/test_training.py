"""training/: shard format, per-rank loader, config, training loop, exact resume, evaluation table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import geodemo
from geodemo.network import GeoDenoiser, NetworkConfig
from geodemo.pipeline import GeoPipeline
from geodemo.processes import process_from_name
from geodemo.schedules import schedule_from_config
from training.config import TrainConfig, parse_args
from training.evaluate import evaluate
from training.loader import ShardLoader
from training.shards import count_samples, list_shards, read_shard, shard_sizes, write_shards
from training.synthetic import make_synthetic_shards
from training.train import EMA, METRICS_FILE, Runtime, Trainer, state_hash, train

KEY = "synthetic"
COND_DIM = 16


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one BLAS thread avoids OpenMP barrier stalls on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    make_synthetic_shards(folder, num_samples=1200, cond_dim=COND_DIM, samples_per_shard=300, embedding_key=KEY,
                          clusters=6, seed=3)
    return folder


def tiny_config(shards: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(train_shards=str(shards), embedding_key=KEY, output_dir=str(out), dim=32, depth=2, batch_size=100,
                  total_steps=12, warmup_steps=3, lr=2e-3, optimizer="adamw", weight_decay=0.01, ema_decay=0.9,
                  num_workers=0, progress=False, log_every=4, checkpoint_every=5, seed=7)
    values.update(overrides)
    return TrainConfig(**values)


def test_shards_round_trip_and_sizes(tmp_path):
    emb = np.arange(5 * 4, dtype=np.float32).reshape(5, 4)
    latlon = np.array([[10.0, 20.0], [-33.9, 151.2], [0.0, -179.5], [89.0, 0.0], [48.85, 2.35]])
    paths = write_shards(tmp_path, emb, latlon, "street_clip", samples_per_shard=2)
    assert [p.name for p in paths] == ["000000.tar", "000001.tar", "000002.tar"]
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"000000.tar": 2, "000001.tar": 2, "000002.tar": 1}
    assert count_samples(str(paths[1])) == 2
    (tmp_path / "sizes.json").unlink()
    assert shard_sizes(list_shards(tmp_path)) == [2, 2, 1]
    data = read_shard(str(paths[1]), "street_clip")
    np.testing.assert_array_equal(data.embeddings.numpy(), emb[2:4])
    np.testing.assert_allclose(data.latlon.numpy(), latlon[2:4])
    np.testing.assert_allclose(data.xyz.norm(dim=-1).numpy(), 1.0, atol=1e-6)
    assert list_shards(f"{tmp_path}/{{000000..000001}}.tar") == [str(paths[0]), str(paths[1])]
    with pytest.raises(KeyError, match="lacks 'dino.npy'"):
        read_shard(str(paths[0]), "dino")
    with pytest.raises(FileNotFoundError):
        list_shards(tmp_path / "nothing_*.tar")


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_loader_each_sample_once_per_epoch_and_resumable(shards, mode):
    paths = list_shards(shards)
    sizes = shard_sizes(paths)
    loaders = [ShardLoader(paths, sizes, KEY, batch_size=50, rank=r, world_size=2, seed=1, mode=mode,
                           window_shards=1) for r in range(2)]
    assert loaders[0].steps_per_epoch(0) == 12
    for epoch in range(2):
        ids = torch.cat([b.ids for loader in loaders for b in loader.batches(epoch)])
        assert sorted(ids.tolist()) == list(range(1200))
    full = list(loaders[1].batches(1))
    resumed = list(loaders[1].batches(1, start=5))
    assert len(resumed) == len(full) - 5
    for a, b in zip(full[5:], resumed):
        assert torch.equal(a.ids, b.ids) and torch.equal(a.embeddings, b.embeddings) and torch.equal(a.xyz, b.xyz)
    epoch0 = torch.cat([b.ids for b in loaders[0].batches(0)])
    epoch1 = torch.cat([b.ids for b in loaders[0].batches(1)])
    assert not torch.equal(epoch0, epoch1)


def test_config_yaml_then_flags(tmp_path):
    (tmp_path / "run.yaml").write_text("dim: 64\nlr: 1e-3\nschedule: {kind: linear}\ntrain_shards: a\n")
    config = parse_args(["--config", str(tmp_path / "run.yaml"), "--dim", "128", "--betas", "[0.9, 0.95]"])
    assert (config.dim, config.lr, config.schedule, config.betas) == (128, 1e-3, {"kind": "linear"}, (0.9, 0.95))
    with pytest.raises(ValueError, match="depth must be an integer"):
        parse_args(["--train-shards", "a", "--depth", "1.5"])
    with pytest.raises(ValueError, match="unknown config fields"):
        (tmp_path / "bad.yaml").write_text("dimension: 3\n")
        parse_args(["--config", str(tmp_path / "bad.yaml")])


def test_ema_decay_semantics():
    net = GeoDenoiser(NetworkConfig(dim=8, depth=1, cond_dim=4))
    ema = EMA(net, decay=0.9, warmup=False)
    start = {k: v.clone() for k, v in ema.network.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    w = net.state_dict()
    for name, value in ema.network.state_dict().items():
        if name.endswith("freqs"):
            continue
        torch.testing.assert_close(value, 0.9 * start[name] + 0.1 * w[name])
    warm = EMA(net, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)


def test_nonfinite_gradient_leaves_weights_unchanged(shards, tmp_path):
    trainer = Trainer(tiny_config(shards, tmp_path, weight_decay=0.0), Runtime(0, 1, torch.device("cpu")))
    before = state_hash(trainer.network)
    batch = next(trainer.loader.batches(0))
    emb = batch.embeddings.clone()
    emb[0, 0] = float("nan")
    loss, norm = trainer.step(emb, batch.xyz)
    assert not torch.isfinite(norm)
    assert state_hash(trainer.network) == before
    loss, norm = trainer.step(batch.embeddings, batch.xyz)
    assert torch.isfinite(loss) and state_hash(trainer.network) != before


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_stop_and_resume_is_bit_identical(shards, tmp_path, mode):
    whole = train(tiny_config(shards, tmp_path / "whole", data_mode=mode, stream_window_shards=2))
    assert train(tiny_config(shards, tmp_path / "split", data_mode=mode, stream_window_shards=2, stop_at_step=7)) is None
    assert (tmp_path / "split" / "last.pt").is_file() and not (tmp_path / "split" / "model").exists()
    split = train(tiny_config(shards, tmp_path / "split", data_mode=mode, stream_window_shards=2))
    assert (whole / "model.safetensors").read_bytes() == (split / "model.safetensors").read_bytes()
    state_a = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)
    state_b = torch.load(tmp_path / "split" / "last.pt", weights_only=False)
    for name, value in state_a["network"].items():
        assert torch.equal(value, state_b["network"][name]), name
    assert state_a["position"] == state_b["position"] == {"step": 12, "epoch": 1, "batch": 0}
    rows = (tmp_path / "split" / METRICS_FILE).read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["4", "7", "8", "12"]  # a stop logs its partial window
    with pytest.raises(ValueError, match="different \\['dim'\\]"):
        train(tiny_config(shards, tmp_path / "split", data_mode=mode, stream_window_shards=2, dim=48))


def test_stop_request_checkpoints_at_the_next_step(shards, tmp_path):
    trainer = Trainer(tiny_config(shards, tmp_path), Runtime(0, 1, torch.device("cpu")))
    trainer.stop_request.requested = True  # what SIGINT / SIGTERM set
    assert trainer.run() is None
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["position"]["step"] == 1 and state["world_size"] == 1
    assert train(tiny_config(shards, tmp_path)) is not None


@pytest.mark.parametrize("process", ["flow_r3", "diffusion_r3"])
def test_r3_processes_train_and_export(shards, tmp_path, process):
    folder = train(tiny_config(shards, tmp_path, process=process, total_steps=4, schedule={"kind": "cosine"}))
    pipeline = geodemo.load(folder, device="cpu")
    assert pipeline.process.name == process and type(pipeline.schedule).__name__ == "CosineSchedule"
    assert torch.isfinite(pipeline.predict(embeddings=torch.ones(1, COND_DIM), num_samples=2, steps=4, seed=0).latlon).all()


def test_evaluate_likelihood_subset_is_exact(shards):
    torch.manual_seed(1)
    pipeline = GeoPipeline(GeoDenoiser(NetworkConfig(dim=16, depth=1, cond_dim=COND_DIM)),
                           process_from_name("rfm_s2"), schedule_from_config(None), device="cpu")
    data = read_shard(list_shards(shards)[0], KEY)
    emb, latlon = data.embeddings[:10], data.latlon[:10]
    ode = {"method": "rk4", "steps": 4}
    result = evaluate(pipeline, emb, latlon, steps=4, batch_size=4, likelihood_images=5, localizability_samples=0,
                      prdc_images=10, ode_options=ode)
    direct = pipeline.log_density(latlon[:5].unsqueeze(1), embeddings=emb[:5], **ode)
    assert result["likelihood_images"] == 5 and "localizability" not in result
    assert result["nll"] == pytest.approx(-float(direct.mean()), rel=1e-6)


def test_training_lowers_loss_and_improves_the_table(shards, tmp_path):
    config = tiny_config(shards, tmp_path / "run", total_steps=240, warmup_steps=20, lr=3e-3, log_every=40,
                         checkpoint_every=1000, ema_decay=0.95, batch_size=200, train_data="synthetic clusters")
    folder = train(config)
    rows = [line.split(",") for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()[1:]]
    losses = [float(r[2]) for r in rows]
    assert losses[-1] < 0.6 * losses[0]
    assert (tmp_path / "run" / "train_config.yaml").is_file()
    trained = geodemo.load(folder, device="cpu")
    info = geodemo.checkpoint.read_info(folder)
    assert info.process == "rfm_s2" and info.encoder == KEY and info.schedule["kind"] == "sigmoid"
    assert info.metadata["training"]["train_data"] == "synthetic clusters"
    torch.manual_seed(0)
    untrained = GeoPipeline(GeoDenoiser(trained.network.config), process_from_name("rfm_s2"),
                            schedule_from_config(None), device="cpu")
    data = read_shard(list_shards(shards)[0], KEY)
    emb, latlon = data.embeddings[:48], data.latlon[:48]
    options = dict(steps=12, guidance=2.0, localizability_samples=4, prdc_images=48,
                   ode_options={"method": "rk4", "steps": 6})
    before = evaluate(untrained, emb, latlon, **options)
    after = evaluate(trained, emb, latlon, **options)
    for key in ("geoscore", "mean_km", "median_km", "acc@2500km", "nll", "precision", "recall", "coverage",
                "localizability"):
        assert np.isfinite(after[key]), key
    assert after["geoscore"] > before["geoscore"] + 500
    assert after["median_km"] < 0.5 * before["median_km"]
    assert after["nll"] < before["nll"] - 1.0
    assert after["localizability"] > before["localizability"]
