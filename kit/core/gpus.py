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


# ----- Inductor's kernels: generated on the host GPU during a run, compiled again for the card -----

def inductor_kernels() -> list:
    """Inductor's Triton kernels loaded in this process so far (its CachingAutotuner objects: the
    compiled model's fused ops, FlexAttention's kernels, user Triton kernels inside a compiled graph)."""
    import gc

    try:
        from torch._inductor.runtime.triton_heuristics import CachingAutotuner
    except ImportError:  # no Inductor/Triton in this build
        return []
    return [obj for obj in gc.get_objects() if issubclass(type(obj), CachingAutotuner)]  # type(): no proxy object's __class__ is read


def kernel_name(autotuner) -> str:
    return (autotuner.inductor_meta or {}).get("kernel_name") or getattr(autotuner.fn, "__name__", "triton kernel")


def host_shared(autotuner):
    """Bytes of shared memory per block of the host's builds that ran (after autotuning: the chosen config), or None."""
    needs = [getattr(launcher, "shared", None) for launcher in autotuner.launchers]
    needs = [n for n in needs if n is not None]
    return max(needs) if needs else None


def compile_view(autotuner):
    """The attributes Inductor's compile-argument methods read, with the kernel's Python function present: a kernel
    compiled in one of Inductor's worker processes comes back without it (it does not pickle); Inductor's own
    reload, else its generated file. A plain namespace: a loaded autotuner refuses to be copied."""
    import importlib.util
    import types

    view = types.SimpleNamespace(**vars(autotuner))
    if getattr(autotuner.fn, "fn", None) is None:
        reload = getattr(autotuner, "_reload_kernel", None)
        if callable(reload):
            view.fn = reload().fn
        else:
            spec = importlib.util.spec_from_file_location(f"inductor_{kernel_name(autotuner)}", autotuner.filename)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            view.fn = getattr(module, kernel_name(autotuner)).fn
    return view


def inductor_need(autotuner, config, cap) -> int:
    """Shared memory per block of one of an Inductor kernel's configs compiled for compute capability `cap`:
    Inductor's own compile arguments for that config, with only the target changed."""
    import triton
    from triton.backends.compiler import GPUTarget

    cls, view = type(autotuner), compile_view(autotuner)
    meta = cls._create_compile_meta(view, config)
    source = triton.compiler.ASTSource(view.fn, meta["signature"], meta["constants"], meta["configs"][0])
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    if hasattr(cls, "_create_compile_options"):
        options = cls._create_compile_options(view, config, meta)
    return triton.compile(source, target=GPUTarget("cuda", cap[0] * 10 + cap[1], 32), options=options).metadata.shared


@dataclass
class KernelVerdict:
    name: str
    kind: str
    host_bytes: int  # the host build's need (the config that ran)
    card_bytes: int = None  # the same config compiled for the card; None where not compiled (see note)
    outcome: str = "fits"  # fits | no_shared_memory (not compiled again) | retuned | not_compilable | does_not_fit
    note: str = ""

    @property
    def fits(self) -> bool:
        return self.outcome != "does_not_fit"


def judge_inductor_kernel(autotuner, profile: GPUProfile) -> KernelVerdict:
    """Compile the config that ran for the card; where it does not fit, the kernel still runs if another of its
    candidate configs fits (Inductor drops the configs that do not compile and tunes among the rest).
    Kernels whose host build needs no shared memory are not compiled again (elementwise code has no reason to)."""
    from triton.runtime.errors import OutOfResources

    launched = [launcher.config for launcher in autotuner.launchers if hasattr(launcher, "config")] or list(autotuner.configs)
    verdict = KernelVerdict(kernel_name(autotuner), str(getattr(autotuner, "heuristic_type", "")).split(".")[-1].lower(), host_shared(autotuner))
    if verdict.host_bytes == 0:
        verdict.outcome, verdict.note = "no_shared_memory", "no shared memory on the host"
        return verdict
    limit = profile.shared_memory_per_block
    try:
        verdict.card_bytes = max(inductor_need(autotuner, config, profile.capability) for config in launched)
    except OutOfResources as e:  # Triton refused at compile time: over the card's shared memory
        verdict.card_bytes = getattr(e, "required", None) or limit + 1
    except Exception as e:  # e.g. code the host generated with features the card lacks
        verdict.outcome, verdict.note = "not_compilable", f"not compilable for sm{profile.capability[0]}{profile.capability[1]} as generated on the host: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        return verdict
    if verdict.card_bytes <= limit:
        return verdict
    for config in (c for c in autotuner.configs if c not in launched):
        try:
            need = inductor_need(autotuner, config, profile.capability)
        except Exception:
            continue
        if need <= limit:
            verdict.outcome, verdict.note = "retuned", f"the config that ran needs {verdict.card_bytes:,} B; the card would tune to {config} ({need:,} B)"
            return verdict
    verdict.outcome = "does_not_fit"
    return verdict


class InductorAudit:
    """Audits Inductor's kernels against the card's shared memory, the new ones at each check: compiled again for
    the card's compute capability (the host generated them; where it generated code only the host can compile,
    the verdict says so and the kernel is not counted as fitting or not)."""

    def __init__(self, profile: GPUProfile, workers: int = 8):
        self.profile, self.workers = profile, workers
        self.seen, self.verdicts = set(), []

    def check(self) -> list:
        """Judge the kernels loaded since the last check; raise UserError naming the first that cannot fit."""
        from concurrent.futures import ThreadPoolExecutor

        new = [a for a in inductor_kernels() if id(a) not in self.seen and getattr(a, "launchers", None)]
        self.seen.update(id(a) for a in new)
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            verdicts = list(pool.map(lambda a: judge_inductor_kernel(a, self.profile), new))
        self.verdicts += verdicts
        for v in verdicts:
            if not v.fits:
                raise UserError(f"--emulate-gpu {self.profile.key}: Inductor's kernel {v.name} ({v.kind}) needs {v.card_bytes:,} bytes of shared memory "
                                f"per block compiled for sm{self.profile.capability[0]}{self.profile.capability[1]} in every config it has, over the "
                                f"{self.profile.shared_memory_per_block:,} the card allows")
        return verdicts

    def summary(self) -> dict:
        compiled = [v for v in self.verdicts if v.card_bytes is not None]
        largest = max(compiled, key=lambda v: v.card_bytes, default=None)
        return {"card": self.profile.key, "kernels": len(self.verdicts), "compiled_for_card": len(compiled),
                "no_shared_memory_on_host": sum(v.outcome == "no_shared_memory" for v in self.verdicts),
                "largest": {"name": largest.name, "kind": largest.kind, "card_bytes": largest.card_bytes, "host_bytes": largest.host_bytes} if largest else None,
                "retuned": [f"{v.name}: {v.note}" for v in self.verdicts if v.outcome == "retuned"],
                "not_compilable": [f"{v.name}: {v.note}" for v in self.verdicts if v.outcome == "not_compilable"]}

    def line(self) -> str:
        s = self.summary()
        if not s["kernels"]:
            return f"Inductor kernel audit ({self.profile.key}): no Inductor Triton kernel in this run"
        largest = s["largest"]
        text = (f"Inductor kernel audit ({self.profile.key}, recompiled for sm{self.profile.capability[0]}{self.profile.capability[1]}): {s['kernels']} kernels, "
                f"{s['compiled_for_card']} using shared memory compiled for the card, all fit")
        if largest:
            text += f"; the largest needs {largest['card_bytes']:,} of {self.profile.shared_memory_per_block:,} bytes per block ({largest['name']}, {largest['kind']}; {largest['host_bytes']:,} on the host)"
        if s["retuned"]:
            text += f"; {len(s['retuned'])} would tune to a smaller config"
        if s["not_compilable"]:
            text += f"; {len(s['not_compilable'])} generated with host-only code, not audited (summary.json lists them)"
        return text
