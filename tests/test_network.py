import math

import torch

from geodemo.network import GeoDenoiser, NetworkConfig


def test_parameter_names_and_shapes_match_the_released_checkpoints():
    state = GeoDenoiser(NetworkConfig(dim=512, depth=12, cond_dim=1024)).state_dict()
    expected = {
        "time_embedder.encode_time.freqs": (64,),
        "time_embedder.map_time.0.weight": (512, 128), "time_embedder.map_time.0.bias": (512,),
        "time_embedder.map_time.2.weight": (512, 512), "time_embedder.map_time.2.bias": (512,),
        "cond_mapper.weight": (512, 1024), "cond_mapper.bias": (512,),
        "initial_mapper.weight": (512, 3), "initial_mapper.bias": (512,),
        "final_adaln.1.weight": (1024, 512), "final_adaln.1.bias": (1024,),
        "final_linear.weight": (3, 512), "final_linear.bias": (3,),
    }
    for i in range(12):
        expected |= {
            f"blocks.{i}.mlp.0.weight": (2048, 512), f"blocks.{i}.mlp.0.bias": (2048,),
            f"blocks.{i}.mlp.3.weight": (512, 2048), f"blocks.{i}.mlp.3.bias": (512,),
            f"blocks.{i}.ada_map.1.weight": (1536, 512), f"blocks.{i}.ada_map.1.bias": (1536,),
        }
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    n_params = sum(v.numel() for k, v in state.items() if k != "time_embedder.encode_time.freqs")
    assert abs(n_params / 1e6 - 36.0) < 0.1


def reference_forward(net: GeoDenoiser, y: torch.Tensor, gamma: float, emb: torch.Tensor) -> torch.Tensor:
    """Slow, obvious float64 evaluation of one point, written from the PLONK.md description."""
    p = {k: v.double() for k, v in net.state_dict().items()}
    lin = lambda x, name: p[name + ".weight"] @ x + p[name + ".bias"]  # noqa: E731
    silu = lambda x: x * torch.sigmoid(x)  # noqa: E731
    gelu = lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))  # noqa: E731
    ln = lambda x: (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5)  # noqa: E731
    width = net.config.dim // 4
    freqs = [(1 / 10000) ** (2 * k / width) for k in range(width // 2)]
    stored = p["time_embedder.encode_time.freqs"]  # a float32 buffer, as in the released files
    assert torch.allclose(stored, torch.tensor(freqs, dtype=torch.float64), rtol=1e-6)
    angles = 1000 * gamma * stored
    e = torch.cat((angles.cos(), angles.sin()))
    e = (e - e.mean()) / e.std()
    time = lin(silu(lin(e, "time_embedder.map_time.0")), "time_embedder.map_time.2")
    cond = lin(emb, "cond_mapper") + time
    x = lin(y, "initial_mapper")
    for i in range(net.config.depth):
        a, b, c = lin(silu(cond), f"blocks.{i}.ada_map.1").chunk(3)
        h = (1 + a) * ln(x) + b
        x = x + lin(gelu(lin(h, f"blocks.{i}.mlp.0")), f"blocks.{i}.mlp.3") * c
    scale, shift = lin(silu(cond), "final_adaln.1").chunk(2)
    return lin((1 + scale) * ln(x) + shift, "final_linear")


def randomised(config: NetworkConfig, seed: int = 0) -> GeoDenoiser:
    torch.manual_seed(seed)
    net = GeoDenoiser(config)
    for name, param in net.named_parameters():
        torch.nn.init.normal_(param, std=0.3 / math.sqrt(param.shape[-1]) if param.dim() > 1 else 0.1)
    return net.eval()


def test_forward_matches_slow_reference_in_float64():
    net = randomised(NetworkConfig(dim=64, depth=3, cond_dim=16))
    y, emb, gammas = torch.randn(2, 5, 3), torch.randn(2, 16), torch.tensor([0.3, 0.9])
    out = net.double()(y.double(), gammas.double(), emb.double())
    for b in range(2):
        for n in range(5):
            ref = reference_forward(net, y[b, n].double(), gammas[b].item(), emb[b].double())
            assert torch.allclose(out[b, n], ref, rtol=1e-10, atol=1e-12)


def test_shared_gamma_equals_per_point_gamma():
    net = randomised(NetworkConfig(dim=32, depth=2, cond_dim=8))
    y, emb, gamma = torch.randn(3, 7, 3), torch.randn(3, 8), torch.rand(3)
    shared = net(y, gamma, emb)
    per_point = net(y, gamma.unsqueeze(1).expand(3, 7), emb)
    assert torch.allclose(shared, per_point, atol=1e-6)


def test_last_mlp_layers_start_at_zero():
    net = GeoDenoiser(NetworkConfig(dim=32, depth=2, cond_dim=8))
    for block in net.blocks:
        assert block.mlp[3].weight.abs().sum() == 0 and block.mlp[3].bias.abs().sum() == 0
