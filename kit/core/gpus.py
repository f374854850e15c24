"""What each GPU gets, and running as a smaller card on a larger one (--emulate-gpu).

Every path choice that depends on the GPU asks `capability(device)` rather than CUDA directly, so
that under --emulate-gpu rtx3090 or rtx4090 (on any larger NVIDIA GPU) the run takes the path the
desktop card would take: FP8 only from sm89, FlexAttention's smaller tiles where shared memory is
~100 KB per block (sm86/sm89), the micro-batch for 24 GB. The memory is capped to what a 24 GB card
leaves a process (22.5 GiB). The speed of an emulated run is the host GPU's, not the card's.
"""

from dataclasses import dataclass

import torch

from kit.core.errors import UserError


@dataclass(frozen=True)
class GPUProfile:
    key: str
    name: str  # as torch.cuda.get_device_name reports the card
    capability: tuple
    memory_gib: float  # what a process can use on a 24 GB card (--emulate-gpu caps the memory to it); None: the card's own, read at run time
    shared_memory_per_block: int  # bytes a kernel's block may use (opt-in maximum)

    def gets(self) -> str:
        """What the kit picks on this card (the README's table)."""
        return " | ".join([f"sm{self.capability[0]}{self.capability[1]}", f"{self.memory_gib:g} GiB cap" if self.memory_gib else "-",
                           "FP8 head (e4m3/e5m2)" if fp8_capable(self.capability) else "bf16 head (no FP8)",
                           "small FlexAttention tiles (64/64)" if small_shared_memory(self.capability) else "default FlexAttention tiles",
                           f"{self.shared_memory_per_block:,} B per block"])


def fp8_capable(cap) -> bool:
    """FP8 tensor cores (e4m3/e5m2 matmuls): Ada (sm89) and Hopper (sm90) on."""
    return cap is not None and tuple(cap) >= (8, 9)


def small_shared_memory(cap) -> bool:
    """~100 KB of shared memory per block (sm86, sm89), where FlexAttention's default tiles for 128-wide heads do not fit."""
    return cap is not None and tuple(cap) in ((8, 6), (8, 9))


PROFILES = {p.key: p for p in (
    GPUProfile("rtx3090", "NVIDIA GeForce RTX 3090", (8, 6), 22.5, 101_376),
    GPUProfile("rtx4090", "NVIDIA GeForce RTX 4090", (8, 9), 22.5, 101_376),
    GPUProfile("a100", "NVIDIA A100", (8, 0), None, 166_912),
    GPUProfile("h100", "NVIDIA H100", (9, 0), None, 232_448),
    GPUProfile("h200", "NVIDIA H200", (9, 0), None, 232_448),
)}
EMULABLE = ("rtx3090", "rtx4090")

_emulated = None  # the GPUProfile this process runs as, or None


def emulate(key: str, device: torch.device) -> GPUProfile:
    """Run as the card `key` from here on: path choices see its compute capability, and the process's
    GPU memory is capped to what the card leaves. Refused off CUDA and on a GPU no larger than the card."""
    global _emulated
    if key not in EMULABLE:
        raise UserError(f"--emulate-gpu {key}: one of {', '.join(EMULABLE)}")
    if device.type != "cuda":
        raise UserError(f"--emulate-gpu {key} runs as that card on a larger NVIDIA GPU, and this run is on the {device.type}")
    profile = PROFILES[key]
    total = torch.cuda.get_device_properties(device).total_memory
    if total < profile.memory_gib * 2**30:
        raise UserError(f"--emulate-gpu {key}: this GPU has {total / 2**30:.1f} GiB, no more than the card's {profile.memory_gib} GiB: run on it as it is")
    torch.cuda.set_per_process_memory_fraction(profile.memory_gib * 2**30 / total, device)
    _emulated = profile
    return profile


def stop_emulating() -> None:
    global _emulated
    _emulated = None


def emulated():
    return _emulated


def capability(device: torch.device):
    """(major, minor) that path choices use: the emulated card's, or the GPU's own; None off CUDA."""
    if device.type != "cuda":
        return None
    return _emulated.capability if _emulated else torch.cuda.get_device_capability(device)


def profile_of(device: torch.device):
    """The profile of the card this run is (emulated or real), or None for a GPU not in the table."""
    if _emulated:
        return _emulated
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((p for p in PROFILES.values() if p.name in name), None)


def describe_profile(device: torch.device) -> str:
    """One line: which row of the README's GPU table this run takes, and what that row gives it."""
    if device.type != "cuda":
        return "GPU profile: none (CPU)"
    profile, cap = profile_of(device), capability(device)
    if _emulated:
        return f"GPU profile: emulated {profile.key} on {torch.cuda.get_device_name(device)} (its speed is not the card's) | {profile.gets()}"
    if profile:
        return f"GPU profile: {profile.key} | {profile.gets()}"
    tiles = "small FlexAttention tiles (64/64)" if small_shared_memory(cap) else "default FlexAttention tiles"
    return f"GPU profile: unknown GPU, chosen by its sm{cap[0]}{cap[1]} | {'FP8 head' if fp8_capable(cap) else 'bf16 head (no FP8)'} | {tiles}"


def profile_table() -> str:
    """The README's table of what each GPU gets."""
    lines = ["| GPU | compute capability | memory under --emulate-gpu | output head (record script) | FlexAttention tiles | shared memory |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {p.name.replace('NVIDIA ', '')} (`{p.key}`) | {p.gets()} |" for p in PROFILES.values()]
    return "\n".join(lines)


def shared_memory_need(fn, signature: dict, constexprs: dict, num_warps: int, cap, num_stages: int = 3) -> int:
    """Bytes of shared memory one block of a @triton.jit kernel needs when compiled for compute
    capability `cap` (e.g. (8, 6)). Triton compiles for a target GPU that is not present (its own
    ptxas), so this runs on any machine with Triton, a CPU-only one included. Pointers and stride
    arguments are marked 16-aligned as a launch with aligned tensors specialises them: without
    that, Triton cannot pipeline the loads (cp.async) and the need comes out too low (the MLA
    decode kernel: 106,496 bytes unaligned, 221,184 aligned, at two stages on sm90)."""
    import triton
    from triton.backends.compiler import GPUTarget

    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
               if str(signature.get(name, "")).startswith("*") or name.startswith("stride")}
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned)
    compiled = triton.compile(source, target=GPUTarget("cuda", cap[0] * 10 + cap[1], 32), options={"num_warps": num_warps, "num_stages": num_stages})
    return compiled.metadata.shared


def kernel_needs(profile: GPUProfile, builds):
    """(name, bytes of shared memory per block) of each build compiled for the card."""
    for name, fn, signature, constexprs, warps, *stages in builds:
        yield name, shared_memory_need(fn, signature, constexprs, warps, profile.capability, *stages)


def audit_kernels(profile: GPUProfile, builds) -> str:
    """One line on the builds (name, kernel, signature, constexprs, num_warps[, num_stages]) compiled for the
    card: how many fit its shared memory per block and the largest need; a UserError naming the first that does
    not fit. What an emulated run checks before training, for the Triton kernels it launches itself."""
    needs = []
    for name, need in kernel_needs(profile, builds):
        if need > profile.shared_memory_per_block:
            raise UserError(f"--emulate-gpu {profile.key}: the kernel {name} needs {need:,} bytes of shared memory per block, "
                            f"over the {profile.shared_memory_per_block:,} the card allows")
        needs.append(need)
    if not needs:
        return f"shared-memory audit ({profile.key}): no Triton kernel of the kit's own in this run"
    return (f"shared-memory audit ({profile.key}, compiled for sm{profile.capability[0]}{profile.capability[1]}): {len(needs)} kernel builds fit, "
            f"the largest needs {max(needs):,} of {profile.shared_memory_per_block:,} bytes per block (Inductor's kernels are not audited)")
