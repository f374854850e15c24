"""Devices, precision, distributed set-up, and what the hardware can do.

Under `torchrun` (WORLD_SIZE > 1) each process takes GPU LOCAL_RANK and joins a process group
(NCCL on GPUs, gloo on CPUs); otherwise the run is one process on one device.
"""

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from kit.core.errors import UserError


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_from_env() -> Dist:
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def pick_device(requested: str, ddp: Dist) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {requested} asked for, but this machine has no CUDA GPU: use --device cpu")
        index = ddp.local_rank if requested == "cuda" else int(requested.split(":")[1])
        if index >= torch.cuda.device_count():
            raise UserError(f"GPU {index} asked for, but only {torch.cuda.device_count()} are visible")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if requested != "cpu":
        raise UserError(f"--device {requested!r}: expected auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def init_distributed(ddp: Dist, device: torch.device) -> None:
    if ddp.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        requested = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--dtype bf16 asked for, but this GPU has no bf16 support (before sm80): use --dtype fp32")
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[requested]


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast for the forward pass, or nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(value: int, device: torch.device) -> int:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def describe_device(device: torch.device, dtype: torch.dtype, attn: str) -> str:
    """One line naming the GPU and the kernel paths this run takes."""
    if device.type != "cuda":
        return f"device: cpu ({torch.get_num_threads()} threads) | dtype: {dtype_name(dtype)} | attention: {attn}"
    major, minor = torch.cuda.get_device_capability(device)
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    path = {"flex": "flex (FlexAttention, compiled Triton kernel)", "dense": "dense reference (SDPA with a materialised mask)"}.get(attn, attn)
    if attn == "sdpa":
        flash = major >= 8 and dtype != torch.float32
        path = "sdpa (flash kernel eligible)" if flash else "sdpa (no flash kernel: needs sm80+ and bf16; memory-efficient or math kernel)"
    return f"device: {device_name(device)} (sm{major}{minor}, {total:.1f} GiB) | dtype: {dtype_name(dtype)} | attention: {path}"


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16 autocast", torch.float32: "fp32 (tf32 matmuls on CUDA)"}[dtype]


# Dense bf16 tensor-core peaks with fp32 accumulation, from the vendors' datasheets (FLOP/s).
# GeForce cards run fp32-accumulate at half their fp16-accumulate rate.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "RTX 4090": 165.2e12,
    "RTX 3090": 71e12,
}


def measured_matmul_flops(size: int = 8192, repeats: int = 10) -> float:
    """bf16 matrix-product FLOP/s on the current GPU (random data, median of timed products)."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * size**3 / sorted(times)[len(times) // 2]


# Dense FP8 tensor-core peaks from the same datasheets (GPUs with FP8: sm89 and newer).
PEAK_FP8_FLOPS = {
    "H200": 1979e12,
    "H100 PCIe": 1513e12,
    "H100": 1979e12,
    "RTX 4090": 330.3e12,
}


# Memory bandwidth from the same datasheets (bytes/s; the A100 row is the 80 GB SXM's).
PEAK_MEMORY_BANDWIDTH = {
    "H200": 4.8e12,
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,
    "A100": 2.039e12,
    "RTX 4090": 1.008e12,
    "RTX 3090": 0.936e12,
}


def peak_flops(name: str, table: dict = PEAK_BF16_FLOPS):
    """The datasheet peak for a GPU name (bf16, or the FP8 table), or None when the GPU is not in the table."""
    for key, value in table.items():
        if key in name:
            return value
    return None
