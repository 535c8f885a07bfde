"""The PyTorch references of `cargo bench -p lpl-trainer --bench train_step`: the same
training step (diffusers' DiTTransformer2DModel with the DiT preset's config, epsilon
prediction with MSE on the DiT linear schedule, torch.optim.AdamW, lr 1e-4), the same batch,
warm-up then the median of N steps, in the torch install that provides our libtorch.

Usage: python pytorch_step.py '<config json>' BATCH STEPS DEVICE [f32|bf16] [MODE]. f32 on
CUDA uses TF32 matmuls and convolutions (as ours); bf16 is torch.autocast around the forward
pass and the loss. MODE: `fused` (eager, AdamW(fused=True): the fastest eager optimiser, the
default), `foreach` (eager, torch's default AdamW) or `compile` (the model under
torch.compile, default mode, with the fused AdamW; two warm-up steps, the first compiles). Prints one JSON line: {"ms": median step ms, "images_per_s": ..., "peak_mb": the
CUDA allocator's peak of a steady-state step, or the process's peak RSS on CPU}, or
{"error": ...} when diffusers cannot be imported.
"""

import contextlib
import json
import os
import resource
import sys
import time

import torch

try:
    from diffusers import DiTTransformer2DModel
except Exception as e:  # ImportError, or diffusers' RuntimeError about its dependencies
    print(json.dumps({"error": f"cannot import diffusers: {e}"}))
    sys.exit(0)

config = json.loads(sys.argv[1])
batch, steps, device = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
precision = sys.argv[5] if len(sys.argv) > 5 else "f32"
mode = sys.argv[6] if len(sys.argv) > 6 else "fused"
if device.startswith("cuda"):
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
keep = {
    "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers",
    "dropout", "norm_num_groups", "attention_bias", "sample_size", "patch_size",
    "activation_fn", "num_embeds_ada_norm", "upcast_attention", "norm_type",
    "norm_elementwise_affine", "norm_eps",
}
torch.manual_seed(0)
model = DiTTransformer2DModel(**{k: v for k, v in config.items() if k in keep and v is not None}).to(device)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=(mode != "foreach"))
if mode == "compile":
    model = torch.compile(model)
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
    region = (
        torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    with region:
        out = model(zt, timestep=t, class_labels=labels).sample[:, :c]
    loss = torch.nn.functional.mse_loss(out.float(), eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return float(loss)


compile_start = time.perf_counter()
step()
if mode == "compile":
    step()  # a recompilation, if any, happens here
warmup_s = time.perf_counter() - compile_start
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
times = []
# LPL_BENCH_PROFILE=DIR (the bench's --profile): the measured steps under torch.profiler,
# their Chrome trace written to DIR/pytorch-<mode>-<preset>.json
profile_dir = os.environ.get("LPL_BENCH_PROFILE")
profiler = (
    torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                           + ([torch.profiler.ProfilerActivity.CUDA] if device.startswith("cuda") else []))
    if profile_dir
    else contextlib.nullcontext()
)
with profiler:
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000)
if profile_dir:
    profiler.export_chrome_trace(os.path.join(profile_dir, f"pytorch-{mode}-{config['_preset']}.json"))
times.sort()
ms = times[len(times) // 2]
if device.startswith("cuda"):
    peak = torch.cuda.max_memory_allocated() / 2**20
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"ms": ms, "images_per_s": batch * 1000 / ms, "peak_mb": peak,
                  "threads": torch.get_num_threads(), "mode": mode, "warmup_s": warmup_s}))
