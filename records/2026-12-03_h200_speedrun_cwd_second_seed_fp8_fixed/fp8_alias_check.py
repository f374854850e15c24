"""Diagnostic (not part of the kit): does the FP8 function of commit d36b7f9 (its product cast to autocast's dtype
inside itself, a no-op on a GPU) lose the up projections' gradients under compile with this torch?"""
import sys

import torch

sys.path.insert(0, "tests")
sys.path.insert(0, ".")
from kit.modeling import fp8  # noqa: E402
from test_fp8 import check_compiled_fp8_up_model_trains_its_up_projections  # noqa: E402


def old_forward(ctx, x, w):
    y, _ = fp8.fp8_product(x, w)
    ctx.save_for_backward(x, w)
    return y.to(fp8.linear_output_dtype(x))


print("torch", torch.__version__)
for name in ("as committed", "d36b7f9's cast inside"):
    if name != "as committed":
        fp8.FP8ForwardMatmulWeightT.forward = staticmethod(old_forward)
        torch._dynamo.reset()
    try:
        check_compiled_fp8_up_model_trains_its_up_projections("cuda")
        print(name, ": compiled gradients equal eager")
    except AssertionError as error:
        print(name, ": FAILED", error)
