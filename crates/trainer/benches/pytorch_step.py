"""The PyTorch-eager reference of `cargo bench -p lpl-trainer --bench train_step`: the same
training step (diffusers' DiTTransformer2DModel with the DiT preset's config, epsilon
prediction with MSE on the DiT linear schedule, torch.optim.AdamW, lr 1e-4), the same batch,
warm-up then the median of N steps, in the torch install that provides our libtorch.

Usage: python pytorch_step.py '<config json>' BATCH STEPS DEVICE. Prints one JSON line:
{"ms": median step ms, "images_per_s": ..., "peak_mb": peak CUDA memory or null}.
"""

import json
import sys
import time

import torch
from diffusers import DiTTransformer2DModel

config = json.loads(sys.argv[1])
batch, steps, device = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
keep = {
    "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers",
    "dropout", "norm_num_groups", "attention_bias", "sample_size", "patch_size",
    "activation_fn", "num_embeds_ada_norm", "upcast_attention", "norm_type",
    "norm_elementwise_affine", "norm_eps",
}
torch.manual_seed(0)
model = DiTTransformer2DModel(**{k: v for k, v in config.items() if k in keep and v is not None}).to(device)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
c, s = config["in_channels"], config["sample_size"]
betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
alpha_bar = torch.cumprod(1 - betas, 0).float().to(device)
classes = config.get("num_embeds_ada_norm") or 1000


def step():
    z0 = torch.randn(batch, c, s, s, device=device)
    eps = torch.randn_like(z0)
    t = torch.randint(0, 1000, (batch,), device=device)
    labels = torch.randint(0, classes, (batch,), device=device)
    a = alpha_bar[t].view(-1, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
    out = model(zt, timestep=t, class_labels=labels).sample[:, :c]
    loss = torch.nn.functional.mse_loss(out, eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return float(loss)


step()
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
times = []
for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append((time.perf_counter() - t0) * 1000)
times.sort()
ms = times[len(times) // 2]
peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
print(json.dumps({"ms": ms, "images_per_s": batch * 1000 / ms, "peak_mb": peak, "threads": torch.get_num_threads()}))
