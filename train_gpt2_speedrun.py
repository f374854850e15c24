"""The speedrun recipe: GPT-2 small-class model trained with the public speedrun's techniques.

Model (kit/modeling/modern.py): 12 layers, width 768, 6 heads of 128; rotary positions on half of each
head's dimensions, QK-norm, ReLU^2 MLP, value embeddings, U-net skips, no attention in layer 7,
a sigmoid output gate per head read from 12 dimensions of the block input, untied head with
logit soft-capping (its matmul in FP8 while training on GPUs that have FP8: sm89 4090, sm90
H100/H200; bf16 on sm86 3090 and in evaluation), a soft-capped cross-entropy whose backward keeps
only the bf16 logits (kit/modeling/losses.py, kit/modeling/fp8.py; as two Triton kernels where Triton runs,
kit/modeling/triton_loss.py), a hashed bigram embedding added to every block's input (the public record
of 2026-01-19), attention within documents and long/short sliding windows (FlexAttention,
block-sparse) whose length grows during training; the residual stream in bf16; the whole model
compiled. Optimizers: Muon for the hidden matrices (Q, K and V orthogonalised separately, every
matrix stepping lr), Adam for embeddings, head and scalars. Muon momentum 0.85 -> 0.95 over 300
steps; the long window from 1 to 14 blocks of 128 tokens (1792) over the run.

V2 (on by default; --v2 0 is the recipe of the public record of 2025-08-23 plus the bigram
embedding): the later records' changes ported so far, each its own switch (--help):
  - batch size in three equal stages of 1/3, 2/3 and all of the 393,216 tokens, LR x 0.578, 0.879, 1
    (the public 1, 1.52, 1.73 relative to the last), then the cooldown over the last 60% to 10%
    (on webmix smaller: 65,536 -> 131,072 -> 196,608 tokens, see below);
  - Muon: Polar Express coefficients, NorMuon (per neuron: rows, or columns of wide matrices),
    cautious weight decay tied to the LR (1.2 x lr^2), momentum back to 0.85 over the last 20 steps;
  - multi-token prediction from the same logits (tokens 2 and 3 ahead at 0.5 and 0.25, falling to 0
    over the first and second thirds), the logit cap 23 sigmoid((z + 5) / 7.5);
  - smear (a gated share of the previous token's embedding), backout (a learned share of layer 8's
    output taken back before the head), key offset (the long-window layers' position-free key
    dimensions from the previous token). Smear and key offset stop at document starts;
  - the bigram sign trick: each bigram row read times one of 8192 fixed random +-1 vectors, picked
    by (previous token XOR token) (the public record of 2026-05-20);
  - cautious weight decay on Adam's head and embeddings, falling with the LR squared, only where Adam's
    update moves a weight toward zero (the public record of 2025-12-18).

Later parts of the public line, switches off by default (records/2026-12-02_h200_speedrun_later_parts: at
equal steps they gain, at equal time they do not): --paired-head-layers (heads attend in pairs over one
interleaved sequence), --xsa-layers (gated XSA), --value-embed-layers with --value-embed-gate (a value
embedding per listed layer, entering each head through a gate), --attn-out-init uniform, --sublayer-scales.
Together at 420 steps: 3.6451 against V2's 3.6613, at 514.6k against 548.6k tokens/s. Also off:
--yarn (YaRN at each change of the window: slow rotary pairs slowed, the attention scale raised; alone on the
default's windows it trained 0.003-0.006 higher), --window-stages (the long window by stages, e.g. 3,7,11 blocks
over thirds of the run) and --val-window-blocks (validation with a longer window than training's): with YaRN,
3,7,11 and 13 crossed at the default's step; --loss-one-pass (the FP8 head's loss and gradient in one kernel: 0.7%
cheaper steps in one reading), --fp8-mlp up (1.7% cheaper steps; its loss at the full schedule alone not yet
measured), and the others records/public_line_ports.md lists.

webmix takes smaller steps than the public stages (sized for 8 GPUs): 65,536 -> 131,072 -> 196,608 tokens over
830 steps. Measured on one H200 over three seeds and data orders: 3.64 at step 824, 828 and 824 in 197.2 to
199.2 s of training, 107.5M to 108.3M tokens (records/2026-12-02_h200_speedrun_record_200s), before the bigram
signs and Adam's cautious weight decay joined V2: with the signs, paired at seeds 1 and 2, 3.64 at step 820
instead of 824, and with the decay too at 816, each at the same step cost (records/2026-12-03_h200_speedrun_combo_second_seeds,
records/2026-12-03_h200_speedrun_cwd_second_seed_fp8_fixed; the time alone not yet measured). With the public
stages (--batch-tokens 393216 --batch-stage-lrs 0.578,0.879,1 --max-steps 460) it took 118.9M tokens
(records/2026-12-01_h200_speedrun_v2, three seeds); the --v2 0 recipe 159.3M tokens
(records/2026-11-29_h200_speedrun_steps410). Under torchrun on 8 GPUs
196,608 tokens are not whole 16,384-token sequences per rank: take the public stages there (the flags above).

FineWeb (--data fineweb, target 3.3821): the public record of 2025-08-23 (the --v2 0 recipe's source;
its log: 3.3926 at step 1250 and 3.3538 at 1375 of 1695, 393,216 tokens per step) crosses 3.3821 near
step 1284, ~505M tokens. Scaled by the webmix ratio of V2 to --v2 0 (118.9M / 159.3M), V2 needs
~377M tokens: 1440 steps of its stages (262,144 tokens per step on average). A projection, not a
measurement; the run stops at the first validation <= 3.3821 in its last 30%. --v2 0: 1770 steps.
The public record also starts every sequence at a document; here that is --align-bos 1, off
by default: it skips the rest of the document a sequence cuts, which at this kit's 16,384-token
sequences (sized for 24 GB cards; the record uses 48K) is 12% of webmix's tokens and 8% of
FineWeb's (measured on the shards), so a one-pass run would repeat data.
Late checks are screened on the first 2M validation tokens (--val-screen-tokens) and validated in
full only within --val-screen-margin of the target; while a screen is far above it, the next checks
are skipped (--val-screen-skip). Both can only make the measured crossing come later.

    python train_gpt2_speedrun.py                          # FineWeb, target 3.3821
    python train_gpt2_speedrun.py --data webmix            # webmix: 830 steps, target 3.64
    python train_gpt2_speedrun.py --data webmix --v2 0     # the 2025-08 recipe: 410 steps
    python train_gpt2_speedrun.py --model-size tiny --data synthetic --device cpu --max-steps 20
"""

import functools
import math
import sys
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from kit.core.config import TrainConfig
from kit.core.errors import UserError
from kit.modeling.fp8 import gpu_has_fp8
from kit.modeling.modern import MAX_WINDOW_BLOCKS, MODERN_SIZES, ModernConfig, ModernGPT
from kit.modeling.muon import Muon
from kit.modeling.optim import CautiousDecayAdam, linear_to_zero
from kit.loop.checks import late_check_due
from kit.loop.train import Recipe, Trainer, main


@dataclass
class Hyperparameters(TrainConfig):
    # the baseline's optimizer and schedule flags, which this recipe replaces with its own
    NOT_READ: ClassVar[tuple] = ("lr", "beta1", "beta2", "eps", "weight_decay", "warmup_steps", "reference_steps", "min_lr_frac")
    NOT_READ_WHY: ClassVar[str] = ("its learning rates are --muon-lr, --embed-lr, --head-lr and --scalar-lr, its schedule "
                                   "--cooldown-frac, --lr-floor and --batch-stage-lrs, Adam's betas --adam-beta1 and --adam-beta2 "
                                   "and epsilon --adam-eps")
    max_steps: int = 1770
    batch_tokens: int = 393_216
    seq_len: int = 16_384
    val_every: int = 125
    attn: str = field(default="auto", metadata={"choices": ["auto", "flex", "dense"], "help": "auto: flex on CUDA, the dense reference on CPU"})
    compile: bool = True
    muon_lr: float = 0.05
    muon_momentum: float = 0.95
    muon_momentum_start: float = 0.85
    muon_momentum_warmup: int = field(default=300, metadata={"help": "steps over which Muon's momentum rises to --muon-momentum (not scaled with --max-steps, as in the public recipe's 440-step webmix reference run)"})
    embed_lr: float = 0.6
    head_lr: float = 0.008
    scalar_lr: float = 0.04
    adam_beta1: float = 0.8
    adam_beta2: float = 0.95
    fused_adamw: bool = field(default=True, metadata={"help": "PyTorch's fused Adam (one kernel per step) for embeddings, head and scalars, on a GPU"})
    adam_every: int = field(default=1, metadata={"help": "Adam (embeddings, head, scalars) steps once every this many steps, on the sum of their "
                                                     "gradients, and at the last step; Muon every step (the public record of 2025-09-30, with 2); with 2 the step is 0.8% cheaper on an H200, the loss unmeasured"})
    adam_eps: float = field(default=1e-10, metadata={"help": "Adam's epsilon for a loss summed over the step's tokens (the public record's convention); "
                                                        "divided by --batch-tokens here, where the loss is a mean, so rare tokens' rows still take full steps"})
    cooldown_frac: float = field(default=0.45, metadata={"help": "share of the steps over which the LR falls linearly to 10%"})
    align_bos: bool = field(default=False, metadata={"help": "start every training sequence at a document start (token 50256); "
                                                        "skips the cut document's tail: 12% of webmix's tokens at 16,384-token sequences"})
    rope: str = field(default="half", metadata={"choices": ["half", "full"], "help": "half: rotary on half the head dimensions, frequencies 1..1/1024 (the public record's); full: every dimension, base 10000"})
    skip_attn_layers: str = field(default="auto", metadata={"help": "comma-separated layers without attention (MLP only); auto: layer 7 of the 12-layer model, as in the public record; none: every layer attends. "
                                                                  "With --skip-mlp-layers 0, 0,7 leaves layer 0 only its input mix (the public record of 2025-09-21)"})
    skip_mlp_layers: str = field(default="none", metadata={"help": "comma-separated layers without MLP (attention only; the public record of 2025-09-05 drops "
                                                                 "layer 0's); none: every layer has one"})
    muon_coefficients: str = field(default="quintic", metadata={"choices": ["quintic", "polar"], "help": "Newton-Schulz: the fixed quintic, or Polar Express's per-iteration ones (tighter orthogonalisation)"})
    normuon: bool = field(default=False, metadata={"help": "NorMuon (arXiv 2510.05491): each output neuron's orthogonalised update divided by its running RMS (beta 0.95), "
                                                     "the matrix's update norm kept; unmeasured"})
    muon_split_qkv: bool = field(default=True, metadata={"help": "orthogonalise Q, K and V's weights separately (0: the fused QKV matrix as one)"})
    muon_qk_head_pairs: bool = field(default=False, metadata={"help": "orthogonalise Q and K by pairs of heads, V whole (the public record of 2026-04-08); 0: each of Q, K, V whole"})
    muon_tall_scale: bool = field(default=False, metadata={"help": "1: tall matrices (the MLP's 3072x768 input projection) step sqrt(rows/cols) = 2x further; "
                                                                "0: every matrix steps lr (the public recipe since 2025-08, which stores that matrix transposed)"})
    bigram_buckets: int = field(default=251_520, metadata={"help": "bigram hash embedding with this many rows (5 x 50,304, as the public record; 0: off), "
                                                               "added to every block's input; Adam at the embeddings' lr"})
    bigram_sign_rows: int = field(default=0, metadata={"help": "each bigram embedding row read times a fixed random +-1 vector, one of this many "
                                                                 "picked by (previous token XOR token): pairs that share a row read it with different signs "
                                                                 "(the public record of 2026-05-20: 8192); 0: off"})
    attn_gate: int = field(default=12, metadata={"help": "attention output gate: a sigmoid per head read from this many leading dimensions of the block input (0: off)"})
    compile_mode: str = field(default="whole", metadata={"choices": ["regional", "whole"], "help": "whole: the full model (1.06x the tokens/s of regional on an H200, cold compile ~76 s); regional: each block compiled once and reused"})
    fused_loss: bool = field(default=True, metadata={"help": "soft-capped cross-entropy whose backward keeps only the bf16 logits (FP8 head: gradient quantised with a known scale); 0: soft-cap + F.cross_entropy"})
    loss_kernel: str = field(default="auto", metadata={"choices": ["auto", "torch", "triton"], "help": "the fused loss's kernels: torch (its PyTorch code, compiled with the model), "
                                                            "triton (kit/modeling/triton_loss.py: one pass each way; 700 vs 757 ms/step on an H200), auto: triton where it can run (CUDA with Triton)"})
    loss_one_pass: bool = field(default=False, metadata={"help": "with the FP8 head: the loss's statistics and its e5m2 gradient in one kernel in the forward, "
                                                               "the gradient kept instead of the logits (the public record of 2026-04-04); the bf16 head "
                                                               "ignores it and the log says so; unmeasured"})
    fp8_head: str = field(default="auto", metadata={"choices": ["auto", "0", "1"], "help": "FP8 output head; auto: on GPUs with FP8 (sm89+)"})
    flex_options: str = field(default="", metadata={"help": "FlexAttention kernel options as JSON, laid over the GPU's own, e.g. '{\"USE_TMA\": true}' "
                                                         "or '{\"bwd_num_stages\": 4}' (scripts/bench_flex_attention.py times candidates); empty: FlexAttention's choice"})
    mlp_kernel: str = field(default="torch", metadata={"choices": ["auto", "torch", "triton"], "help": "the MLP while training: torch (two Linears around relu^2, "
                                                       "compiled with the model), triton (kit/modeling/triton_mlp.py: relu^2 inside the up projection's product and "
                                                       "its gradient's, only relu(h)^2 kept; the public records of 2026-01-10 and -06-11); auto: triton where it can run; on an H200 no faster than torch in the whole step, 4.5 GiB less memory at micro-batch 4"})
    fp8_mlp: str = field(default="off", metadata={"choices": ["off", "up", "both"], "help": "the MLPs' forward products in FP8 while training (backward in bf16): "
                                                  "up: the up projections (the public record of 2026-05-21), both: also the down projections (2026-07-17); "
                                                  "on a GPU without FP8 (sm86) the MLPs stay bf16, as the log's kernel paths say"})
    mtp_offsets: int = field(default=0, metadata={"help": "multi-token prediction: extra future tokens predicted while training (0: off); the logged training loss then includes their weighted terms, validation does not"})
    mtp_weight: float = field(default=0.3, metadata={"help": "weight of each extra offset's loss at the start; it falls linearly to 0"})
    mtp_frac: float = field(default=0.5, metadata={"help": "share of the run after which the MTP weight is 0"})
    # the public record line after 2025-08, each a switch whose own default is off; --v2 1 (the default) turns on the set
    v2: bool = field(default=True, metadata={"help": "1: every switch below not given explicitly takes its V2 value (the record line of 2025-09 to 2026-07 as ported here); "
                                                        "0: the switches' own defaults (the 2025-08 recipe)"})
    batch_stages: str = field(default="", metadata={"help": "batch-size schedule: relative batch sizes of equal-length stages, the last the full --batch-tokens "
                                                              "(e.g. 1,2,3: a third, two thirds, all; the public record of 2025-11-29); empty: off"})
    batch_stage_lrs: str = field(default="", metadata={"help": "LR multiplier of each batch stage (e.g. 0.578,0.879,1: the public record's 1, 1.52, 1.73 relative to the last); empty: 1 each"})
    lr_floor: float = field(default=0.1, metadata={"help": "the cooldown ends at this share of the full-batch LR"})
    muon_momentum_cooldown: int = field(default=0, metadata={"help": "steps at the end over which Muon's momentum falls back to --muon-momentum-start (public record: 50 of ~1300)"})
    muon_cwd: float = field(default=0.0, metadata={"help": "Muon's cautious weight decay, tied to the LR schedule (decay per step lr^2 x this where the update agrees in sign; 0: off)"})
    logit_mtp: str = field(default="", metadata={"help": "multi-token prediction from the same logits: starting weights of the tokens 2, 3, ... ahead (e.g. 0.5,0.25), "
                                                           "each falling to 0 in turn over the run's thirds (the public record of 2025-12-22); empty: off"})
    softcap_form: str = field(default="tanh", metadata={"choices": ["tanh", "sigmoid"], "help": "logit cap: 15 tanh(z/15), or 23 sigmoid((z+5)/7.5) (the public record of 2025-12-26)"})
    smear: bool = field(default=False, metadata={"help": "each token's embedding takes a gated share of the previous token's (the public record of 2025-09-18)"})
    backout_layer: int = field(default=-1, metadata={"help": "subtract a learned share (from 0.5) of this layer's output before the head (the public record of 2025-10-04 used 8 of 12); -1: off"})
    key_offset: bool = field(default=False, metadata={"help": "long-window layers take their keys' position-free dimensions from the previous token (the public record of 2025-12-14)"})
    value_embed_layers: str = field(default="", metadata={"help": "layers that each get their own value embedding (e.g. 1,2,9,10,11; auto: layers 1, 2 and the last three, "
                                                                     "the public record's layout of 2026-01-26); empty: --value-embeds tied pairs on the first and last layers"})
    value_embed_gate: bool = field(default=False, metadata={"help": "a value embedding enters each head through 2 sigmoid(W [x[:6], ve[:6]]), W from 0 (the public record of 2025-12-29)"})
    attn_out_init: str = field(default="zero", metadata={"choices": ["zero", "uniform"], "help": "the attention output projection's start: zeros, or uniform like the other matrices (the public record of 2026-01-30)"})
    xsa_layers: str = field(default="", metadata={"help": "layers with gated XSA: each head removes tanh(a) of its output along its own value, a from 0 "
                                                             "(the public record of 2026-04-29; auto: every attention layer without paired heads); empty: none"})
    paired_head_layers: str = field(default="", metadata={"help": "layers whose heads attend in pairs over one interleaved sequence (the public record of 2026-01-07; "
                                                                     "auto: 1,3,5,9 of the 12-layer model, short-window layers); empty: none"})
    sublayer_scales: bool = field(default=False, metadata={"help": "learned weights on the stream before each branch (from sqrt(1.1)) and on each branch's output (from 1)"})
    adam_cwd: float = field(default=0.0, metadata={"help": "cautious weight decay on Adam's embeddings and head (the public record of 2025-12-18): "
                                                       "1 decays as the public line's code (per step at the peak LR 4.8e-5 of the head and token "
                                                       "embedding, 0.009 of the value and bigram embeddings, falling with the LR squared), where "
                                                       "Adam's update moves a weight toward zero; 0: off; 1 (V2's) crossed 3.64 at step 816 against 820 at two seeds, no step cost"})
    head_betas: str = field(default="", metadata={"help": "Adam's betas for the head and the token embedding, e.g. 0.5,0.95: a short memory for rows that "
                                                          "rare tokens touch (the public record of 2026-01-04); empty: --adam-beta1/2; unmeasured"})
    embed_betas: str = field(default="", metadata={"help": "Adam's betas for the value and bigram embeddings, e.g. 0.75,0.95 (the public record "
                                                           "of 2026-01-04; the public line's bigram table since); empty: --adam-beta1/2; unmeasured"})
    scalar_betas: str = field(default="", metadata={"help": "Adam's betas for the scalar weights alone, e.g. 0.9,0.99: their noisy paths smoothed (the public record of "
                                                              "2025-12-21); empty: --adam-beta1/2 as every Adam group"})
    mudd: bool = field(default=False, metadata={"help": "dynamic dense connections into the last two layers: per-position weights over a few earlier states, "
                                                      "into the stream and the last layer's values (MUDD, the public record of 2026-04-22, 65 fewer steps there); 0: off"})
    mlp_out_lr: float = field(default=1.0, metadata={"help": "Muon's steps on the MLPs' output matrices are this many times as long, their weight decay unchanged "
                                                           "(the public record line's 2 since 2026-01-18); 1: as the other matrices"})
    prefix_target: float = field(default=0.0, metadata={"help": "the logits also score the next token's prefix token (its bytes' longest proper prefix that is a token) at this weight "
                                                               "over the first third of the run, falling to 0 over the second (the public record of 2026-07-13: 0.25); 0: off"})
    tie_embed_until: float = field(default=0.0, metadata={"help": "the token embedding shares the output head's weight until this share of --max-steps, then starts from a "
                                                                   "copy of it (weight and Adam state) and trains apart at the head's LR (the public records of 2025-12-19 and -22: 2/3); 0: apart from the start"})
    batch_ramp_start: float = field(default=1.0, metadata={"help": "share of --batch-tokens at step 0, growing linearly to 1 (1: no ramp)"})
    batch_ramp_frac: float = field(default=0.3, metadata={"help": "share of the run the batch ramp lasts"})
    window_stages: str = field(default="", metadata={"help": "the long window (blocks of 128 tokens) of each equal part of the run, e.g. 3,7,11 (the public "
                                                             "record of 2025-09-03; short windows half, as always); empty: one more block every ~1/14 of the run"})
    yarn: bool = field(default=False, metadata={"help": "YaRN at each change of the long window (the public record of 2025-09-10): slow rotary pairs slowed "
                                                      "by old/new, the attention scale times 0.2 ln(new/old) + 1, starting from --attn-scale"})
    val_window_blocks: int = field(default=0, metadata={"help": "validate with this long window (blocks of 128 tokens; short windows half), longer than "
                                                                "training's (the public records of 2025-09-15 and -21; with --yarn, one YaRN step more); 0: training's"})
    attn_scale: float = field(default=0.0, metadata={"help": "attention scale (QK-normed logits' factor); 0: 0.12, or 0.1 with --yarn (the public record's "
                                                             "start, which YaRN raises as the window grows)"})
    # ablation switches: each turns one component of the recipe off
    muon: bool = field(default=True, metadata={"help": "0: Adam (lr --adam-hidden-lr) for the hidden matrices too"})
    adam_hidden_lr: float = 0.003
    value_embeds: int = field(default=3, metadata={"help": "value embeddings (0: none)"})
    unet: bool = field(default=True, metadata={"help": "U-net skip connections"})
    skip_pairs: str = field(default="", metadata={"help": "only these skips, SOURCE:TARGET layers separated by commas (the output of SOURCE added, weighted, "
                                                          "to the input of TARGET), e.g. 4:7 (the public record of 2025-11-18); empty: the U-net's (--unet)"})
    attn_from_backout: bool = field(default=False, metadata={"help": "the attention of every layer after the backout layer reads that layer's output, not the stream, "
                                                                   "so the later MLPs' predictions stay out of it (the public record of 2026-03-06)"})
    residual_start: float = field(default=1.0, metadata={"help": "each block's weight on the stream in x = a x + b x0 starts here (the public record of 2025-11-18: 1.1)"})
    window_schedule: bool = field(default=True, metadata={"help": "0: the longest window from the first step"})
    late_val_every: int = field(default=25, metadata={"help": "validate this often in the last --late-val-frac of the run, where the target is crossed"})
    late_val_frac: float = field(default=0.3, metadata={"help": "FineWeb: the public record's log crosses 3.3821 near 75% of its schedule"})

    # --v2 0 on webmix: 410 steps, 93% of one pass (the 440-step pass crossed 3.64 at step 410-415 with the bigram
    # embedding; the 410-step schedule anneals sooner and crosses at step 405: records/2026-11-29_h200_speedrun_steps410);
    # validation every 3 steps over the last 8%, where the target is crossed. --v2 1 replaces these (V2_WEBMIX).
    DATA_PRESETS: ClassVar[dict] = {"webmix": {"max_steps": 410, "val_every": 100, "late_val_every": 3, "late_val_frac": 0.08}}

    def configure(self, fixed: set) -> None:
        apply_v2(self, fixed)


# --v2 1: the ported changes of the public record line, for the switches not given explicitly. Schedule lengths
# scaled to this recipe's ~450 steps where the public one's are in steps (its Muon momentum cooldown: 50 of ~1300).
# Measured together (records/2026-12-01_h200_speedrun_v2); each switched off alone on a 208-step screen
# (records/2026-12-02_h200_speedrun_ablations_quarter): the batch stages, key offset and NorMuon pay (0.086, 0.069,
# 0.017); logit_mtp and the sigmoid cap were 0.011 and 0.015 worse there, but at the full schedule switching either off
# costs 0.004-0.010 and 0.006-0.007 over two seeds (records/2026-12-02_h200_speedrun_v2_second_seed).
V2 = {"batch_stages": "1,2,3", "batch_stage_lrs": "0.578,0.879,1", "cooldown_frac": 0.6, "muon_momentum_cooldown": 20,
      "normuon": True, "muon_coefficients": "polar", "muon_cwd": 1.2, "logit_mtp": "0.5,0.25", "softcap_form": "sigmoid",
      "smear": True, "key_offset": True,  # and backout from 2/3 of the layers (layer 8 of 12, as the public record's)
      "bigram_sign_rows": 8192,  # paired with the default at seeds 1 and 2: 0.003-0.006 lower, 3.64 at step 820 against 824, the
# same step cost alone (records/2026-12-03_h200_speedrun_ports_skip_fp8_sign, records/2026-12-03_h200_speedrun_combo_second_seeds)
      "adam_cwd": 1.0}  # paired at seeds 1 and 2: 3.64 at step 816 against 820 both times, 0.002-0.004 lower over the last 60
# steps, the same step cost alone (records/2026-12-03_h200_speedrun_cwd_stages_mlp_kernel, records/2026-12-03_h200_speedrun_cwd_second_seed_fp8_fixed)
# webmix: smaller steps. On one GPU a step of 65,536 tokens costs little more per token than one of 393,216, so the
# public line's stages (sized for 8 GPUs) are halved: 65,536 -> 131,072 -> 196,608 tokens, LR x (tokens / 393,216)^0.5
# (the public 0.578 kept for 131,072). 820 steps crossed 3.64 at step 820 with 107.4M tokens, where the public stages
# need 118.9M (460 steps, step 456; records/2026-12-02_h200_speedrun_batch_schedule, one seed;
# records/2026-12-01_h200_speedrun_v2, three); 830 steps leave a check or two before the end (three seeds crossed at
# steps 824 to 828: records/2026-12-02_h200_speedrun_record_200s). Late checks every 4 steps over the last 7%, no
# regular ones, each screened on 2M tokens and validated in full only within 0.003 of the target: over 53 full
# validations after a screen in 19 runs of the records to 2026-12-03 the screen read 0.0006 to 0.0025 above the full
# loss, so 0.003 would have skipped 30 of them, each a miss, and no crossing (0.004 skipped 21; `python
# scripts/compare.py --screen-margins --target 3.64 records/*/*/`). While a screen is far above, the checks of 3/4
# of the steps its fall rate needs to reach the margin are skipped: replayed over the 30 screened runs of the records
# (`... --margins 0.003 --skips 0.5,0.75,0.85,1`), 0.75 runs 140 screens where 0.5 ran 184, and, like 0.85, measures no
# crossing later; 1 measures 6 later.
V2_WEBMIX = {"max_steps": 830, "batch_tokens": 196_608, "batch_stages": "1,2,3", "batch_stage_lrs": "0.408,0.578,0.707",
             "val_every": 0, "late_val_frac": 0.07, "late_val_every": 4, "val_screen_tokens": 2_097_152, "val_screen_margin": 0.003,
             "val_screen_skip": 0.75}
# a projection from the public log and the webmix ratio (the docstring)
V2_FINEWEB = {"max_steps": 1440, "val_screen_tokens": 2_097_152, "val_screen_skip": 0.5}


def apply_v2(cfg: Hyperparameters, fixed: set) -> None:
    """Give every V2 switch not in `fixed` (given, or set by the model size) its V2 value (with --v2 1)."""
    if not cfg.v2:
        return
    presets = {"webmix": V2_WEBMIX, "fineweb": V2_FINEWEB}
    values = dict(V2, **(presets.get(cfg.data, {}) if not cfg.train_files else {}))
    values["backout_layer"] = 2 * MODERN_SIZES[cfg.model_size].get("n_layer", ModernConfig.n_layer) // 3
    if values.get("val_screen_tokens", 0) >= cfg.val_tokens:  # a screen needs a validation set larger than itself
        values.pop("val_screen_tokens")
    if not cfg.bigram_buckets:  # the sign trick reads the bigram table
        values.pop("bigram_sign_rows")
    for name, value in values.items():
        if name not in fixed:
            setattr(cfg, name, value)


def on_gpu(cfg: Hyperparameters) -> bool:
    return torch.cuda.is_available() and cfg.device != "cpu"


def build_model(cfg: Hyperparameters):
    attn = cfg.attn if cfg.attn != "auto" else ("flex" if on_gpu(cfg) else "dense")
    has_fp8 = on_gpu(cfg) and gpu_has_fp8(torch.device("cuda", torch.cuda.current_device()))
    fp8 = has_fp8 if cfg.fp8_head == "auto" and on_gpu(cfg) else cfg.fp8_head == "1"
    if cfg.seq_len % 128:
        raise UserError(f"--seq-len {cfg.seq_len}: the speedrun's attention works in blocks of 128 tokens; use a multiple of 128")
    if cfg.window_stages:
        window_stages(cfg.window_stages)  # a wrong one stops the run here, not at its first step
    size = MODERN_SIZES[cfg.model_size]
    try:
        return ModernGPT(ModernConfig(**size, max_seq_len=cfg.seq_len, attn=attn, value_embeds=cfg.value_embeds, unet=cfg.unet,
                                      fp8_head=fp8, fp8_mlp=cfg.fp8_mlp if has_fp8 or not on_gpu(cfg) else "off", compile_mode=cfg.compile_mode, mtp_offsets=cfg.mtp_offsets, rope=cfg.rope,
                                      no_attn_layers=layers_without_attention(cfg, size.get("n_layer", ModernConfig.n_layer)),
                                      no_mlp_layers=layer_list("" if cfg.skip_mlp_layers == "none" else cfg.skip_mlp_layers, "--skip-mlp-layers",
                                                               size.get("n_layer", ModernConfig.n_layer)),
                                      attn_gate_dims=min(cfg.attn_gate, size.get("n_embd", ModernConfig.n_embd)), fused_loss=cfg.fused_loss,
                                      bigram_buckets=cfg.bigram_buckets, bigram_sign_rows=cfg.bigram_sign_rows, loss_kernel=loss_kernel(cfg), loss_one_pass=cfg.loss_one_pass, mlp_kernel=mlp_kernel(cfg), flex_options=cfg.flex_options, softcap_form=cfg.softcap_form,
                                      softcap=23.0 if cfg.softcap_form == "sigmoid" else 15.0, logit_mtp_weights=float_list(cfg.logit_mtp, "--logit-mtp"),
                                      smear=cfg.smear, backout_layer=cfg.backout_layer, key_offset=cfg.key_offset,
                                      **layer_parts(cfg, size.get("n_layer", ModernConfig.n_layer)),
                                      value_embed_gate=cfg.value_embed_gate, attn_out_init=cfg.attn_out_init, sublayer_scales=cfg.sublayer_scales,
                                      tie_embed=cfg.tie_embed_until > 0, prefix_target_weight=cfg.prefix_target, mudd=cfg.mudd,
                                      attn_scale=cfg.attn_scale or (0.1 if cfg.yarn else 0.12), yarn_windows=yarn_windows(cfg),
                                      skip_pairs=skip_pairs(cfg.skip_pairs, size.get("n_layer", ModernConfig.n_layer)), residual_start=cfg.residual_start,
                                      attn_from_backout=cfg.attn_from_backout))
    except ValueError as e:  # a combination of flags the model cannot take
        raise UserError(str(e)) from None


def float_list(text: str, flag: str) -> tuple:
    try:
        values = tuple(float(x) for x in text.split(",")) if text else ()
    except ValueError:
        raise UserError(f"{flag} {text!r}: give numbers separated by commas") from None
    if any(v < 0 for v in values):
        raise UserError(f"{flag} {text!r}: the numbers must not be negative")
    return values


def batch_stages(cfg: Hyperparameters) -> list:
    """[(share of the full batch, LR multiplier)] per stage; [(1, 1)] without a batch-size schedule."""
    sizes = float_list(cfg.batch_stages, "--batch-stages") or (1.0,)
    lrs = float_list(cfg.batch_stage_lrs, "--batch-stage-lrs") or (1.0,) * len(sizes)
    if len(lrs) != len(sizes) or not all(sizes):
        raise UserError(f"--batch-stages {cfg.batch_stages!r} and --batch-stage-lrs {cfg.batch_stage_lrs!r}: one positive size and one LR per stage")
    return [(size / sizes[-1], lr) for size, lr in zip(sizes, lrs)]


def stage_at(step: int, cfg: Hyperparameters) -> tuple:
    stages = batch_stages(cfg)
    return stages[min(len(stages) - 1, step * len(stages) // cfg.max_steps)]


def mlp_kernel(cfg: Hyperparameters) -> str:
    """The MLP's kernels while training: Triton where asked (auto: where it can run and the up projection is not FP8)."""
    from kit.modeling import triton_mlp

    device = "cuda" if on_gpu(cfg) else "cpu"
    if cfg.mlp_kernel == "auto":
        return "triton" if triton_mlp.available(device) and cfg.fp8_mlp == "off" else "torch"
    return cfg.mlp_kernel  # triton beside --fp8-mlp: the model refuses it (build_model's UserError)


def loss_kernel(cfg: Hyperparameters) -> str:
    """The fused loss's kernels: Triton where asked (auto: where it can run), else PyTorch's."""
    from kit.modeling import triton_loss

    device = "cuda" if on_gpu(cfg) else "cpu"
    if cfg.loss_kernel == "auto":
        return "triton" if cfg.fused_loss and triton_loss.available(device) else "torch"
    if cfg.loss_kernel == "triton":
        if not cfg.fused_loss:
            raise UserError("--loss-kernel triton is the fused loss's kernel: it needs --fused-loss 1")
        if not triton_loss.available(device):
            raise UserError("--loss-kernel triton needs Triton and a CUDA GPU (this run has "
                            f"{'no Triton' if triton_loss.triton is None else 'no GPU'}); use --loss-kernel torch or auto")
    return cfg.loss_kernel


def layer_list(text: str, flag: str, n_layer: int) -> tuple:
    try:
        layers = tuple(int(x) for x in text.split(",")) if text else ()
    except ValueError:
        raise UserError(f"{flag} {text!r}: give layer numbers separated by commas (e.g. 5,7), or auto") from None
    if any(not 0 <= i < n_layer for i in layers):
        raise UserError(f"{flag} {text}: the model has layers 0..{n_layer - 1}")
    return layers


def layer_parts(cfg: Hyperparameters, n_layer: int) -> dict:
    """The layers of the per-layer parts (value embeddings, paired heads, XSA), "auto" resolved for this depth."""
    value_embeds = sorted({i for i in (1, 2, n_layer - 3, n_layer - 2, n_layer - 1) if 0 <= i < n_layer})
    paired = (1, 3, 5, 9) if n_layer == 12 else ()
    paired = paired if cfg.paired_head_layers == "auto" else layer_list(cfg.paired_head_layers, "--paired-head-layers", n_layer)
    attending = [i for i in range(n_layer) if i not in layers_without_attention(cfg, n_layer)]
    xsa = tuple(i for i in attending if i not in paired)
    return {"value_embed_layers": tuple(value_embeds) if cfg.value_embed_layers == "auto" else layer_list(cfg.value_embed_layers, "--value-embed-layers", n_layer),
            "paired_head_layers": paired,
            "xsa_layers": xsa if cfg.xsa_layers == "auto" else layer_list(cfg.xsa_layers, "--xsa-layers", n_layer)}


def skip_pairs(text: str, n_layer: int) -> tuple:
    """--skip-pairs 4:7,2:9 -> ((4, 7), (2, 9))."""
    try:
        pairs = tuple(tuple(int(layer) for layer in pair.split(":")) for pair in text.split(",")) if text else ()
    except ValueError:
        pairs = ((-1, -1),)
    if any(len(pair) != 2 or not 0 <= pair[0] < pair[1] < n_layer for pair in pairs):
        raise UserError(f"--skip-pairs {text}: SOURCE:TARGET layers separated by commas, source before target, layers 0..{n_layer - 1} (e.g. 4:7)")
    return pairs


def layers_without_attention(cfg: Hyperparameters, n_layer: int) -> tuple:
    if cfg.skip_attn_layers == "auto":
        return (7,) if n_layer == 12 else ()
    return layer_list("" if cfg.skip_attn_layers == "none" else cfg.skip_attn_layers, "--skip-attn-layers", n_layer)


def build_optimizers(model: ModernGPT, cfg: Hyperparameters):
    hidden = [p for p in [*model.blocks.parameters(), *model.mtp_adapters.parameters()] if p.dim() == 2]
    qkv = [block.attn.qkv.weight for block in model.blocks if block.attn is not None]
    # a tied embedding trains with the head (its own group after untying would only change its LR; the public record keeps the head's)
    tied, own_embed = ([model.embed.weight], []) if model.config.tie_embed else ([], [model.embed.weight])
    other_embeds = [e.weight for e in model.value_embeds] + ([model.bigram_embed.weight] if model.bigram_embed is not None else [])
    scalars = [p for p in model.parameters() if p.dim() < 2]
    smear = [model.smear_gate.weight] if model.smear_gate is not None else []
    head_betas, embed_betas = group_betas(cfg.head_betas, "--head-betas"), group_betas(cfg.embed_betas, "--embed-betas")
    head_decay, embed_decay = adam_cautious_decays(cfg)
    if head_betas or embed_betas or cfg.adam_cwd:  # the token embedding takes the head's betas and decay, the others theirs
        embed_groups = [{"params": own_embed, **head_betas, **head_decay}, {"params": other_embeds, **embed_betas, **embed_decay}]
    else:  # one group, as runs (and their checkpoints) had before these flags
        embed_groups = [{"params": own_embed + other_embeds}]
    adam_groups = [
        {"params": [model.lm_head.weight, *tied], "lr": cfg.head_lr, "base_lr": cfg.head_lr, **head_betas, **head_decay},
        *({**group, "lr": cfg.embed_lr, "base_lr": cfg.embed_lr} for group in embed_groups),
        {"params": scalars, "lr": cfg.scalar_lr, "base_lr": cfg.scalar_lr, **group_betas(cfg.scalar_betas, "--scalar-betas")},
    ]
    if smear:  # the public record's smear gate steps at 1% of its Adam base lr (0.008): a gate of 12 weights that every token uses
        adam_groups.append({"params": smear, "lr": cfg.head_lr * 0.01, "base_lr": cfg.head_lr * 0.01})
    if model.config.mudd:  # the public record's: a quarter of its Adam base lr (0.008), betas (0.9, 0.99)
        mudd = [model.mudd_w1, model.mudd_w2, model.mudd_bias]
        adam_groups.append({"params": mudd, "lr": cfg.head_lr * 0.25, "base_lr": cfg.head_lr * 0.25, "betas": (0.9, 0.99)})
    if not cfg.muon:  # ablation: everything on Adam
        adam_groups.append({"params": hidden, "lr": cfg.adam_hidden_lr, "base_lr": cfg.adam_hidden_lr})
    if cfg.adam_every < 1:
        raise UserError(f"--adam-every {cfg.adam_every}: Adam steps once every N >= 1 steps")
    adam = (CautiousDecayAdam if cfg.adam_cwd else torch.optim.Adam)(adam_groups, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                                                      eps=cfg.adam_eps / cfg.batch_tokens, fused=(cfg.fused_adamw and on_gpu(cfg)) or None)
    if not cfg.muon:
        return [adam]
    split_qkv = qkv if cfg.muon_split_qkv else []  # Q, K and V each orthogonalised as their own matrix
    mlp_out = [block.mlp.down.weight for block in model.blocks if block.mlp is not None] if cfg.mlp_out_lr != 1 else []
    apart = {id(p) for p in split_qkv + mlp_out}
    groups = [{"params": split_qkv, "split": qkv_split(model, cfg)}, {"params": mlp_out, "update_scale": cfg.mlp_out_lr},
              {"params": [p for p in hidden if id(p) not in apart]}]
    groups = [g for g in groups if g["params"]]
    muon = Muon(groups, lr=cfg.muon_lr, momentum=cfg.muon_momentum, coefficients=cfg.muon_coefficients, tall_scale=cfg.muon_tall_scale,
                row_beta=0.95 if cfg.normuon else 0.0, cautious_wd=cfg.muon_cwd)
    for group in muon.param_groups:
        group["base_lr"] = cfg.muon_lr
    return [adam, muon]


def qkv_split(model: ModernGPT, cfg: Hyperparameters):
    """Muon's split of the fused QKV weights: 3 (Q, K, V), or with --muon-qk-head-pairs the rows of each pair of
    heads of Q and of K, then V whole."""
    if not cfg.muon_qk_head_pairs:
        return 3
    heads, head_dim = model.config.n_head, model.config.head_dim
    if heads % 2 or not cfg.muon_split_qkv:
        raise UserError(f"--muon-qk-head-pairs needs an even number of heads (the model has {heads}) and --muon-split-qkv 1")
    return (2 * head_dim,) * heads + (heads * head_dim,)  # heads / 2 pairs in Q, as many in K


# The public record line's cautious weight decay on Adam (2025-12-18, as its code of 2026-07 has it): per step lr^2 * 0.005 *
# a multiplier, at its LRs: 150 for the head and the token embedding (LR 0.008 there), 5 for the value and bigram embeddings
# (LR 0.6), none for scalars. Given here as the share decayed per step at the peak LR, since this recipe's token embedding
# steps at 0.6, not 0.008.
ADAM_CWD_HEAD = 0.008 ** 2 * 0.005 * 150
ADAM_CWD_EMBEDS = 0.6 ** 2 * 0.005 * 5


def adam_cautious_decays(cfg: Hyperparameters) -> tuple[dict, dict]:
    """({"cautious_wd": ...} for the head and token embedding, the same for the value and bigram embeddings), or ({}, {})."""
    if cfg.adam_cwd < 0:
        raise UserError(f"--adam-cwd {cfg.adam_cwd}: a multiplier >= 0 of the public record's decays (1: theirs, 0: none)")
    if not cfg.adam_cwd:
        return {}, {}
    return {"cautious_wd": cfg.adam_cwd * ADAM_CWD_HEAD}, {"cautious_wd": cfg.adam_cwd * ADAM_CWD_EMBEDS}


def group_betas(text: str, flag: str) -> dict:
    """{"betas": (b1, b2)} from one of the --*-betas flags for its Adam group, or {} (the optimizer's own: --adam-beta1/2)."""
    if not text:
        return {}
    betas = float_list(text, flag)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise UserError(f"{flag} {text}: two numbers in [0, 1), e.g. 0.9,0.99")
    return {"betas": betas}


def micro_batch_for_memory(cfg: Hyperparameters, usable_bytes: int) -> int:
    """Sequences per micro-batch: 16,384 tokens per 20 GiB of GPU memory (1 on a 24 GB card, 6 on an
    H200), a first guess to check with --memory-cap-gib 24 (the trainer lowers it where a batch-size
    schedule needs every stage to be whole micro-batches: 4 on an H200 for stages of 1/3, 2/3 and 1).
    Probing is no use here: the probe runs the model uncompiled, where FlexAttention recompiles per
    shape and then falls back to a kernel that materialises every score (seen on an H200: see
    records/2026-11-28_h200_speedrun_first_contact)."""
    return max(1, int(usable_bytes / 2**30 / 20 * 16_384 / cfg.seq_len))


def batch_stage_shares(cfg: Hyperparameters) -> list:
    return [share for share, _ in batch_stages(cfg)]


def compile_model(model: ModernGPT):
    return model.compile_regions() if model.config.compile_mode == "regional" else torch.compile(model)


def constant_then_cooldown(step: int, cfg: Hyperparameters) -> float:
    """The batch stage's LR multiplier (1 without stages) until the last cooldown_frac of the run, then
    linearly down to --lr-floor at max_steps."""
    stage_lr = stage_at(step, cfg)[1]
    progress = step / cfg.max_steps
    if progress < 1 - cfg.cooldown_frac:
        return stage_lr
    remaining = (1 - progress) / cfg.cooldown_frac
    return remaining * stage_lr + (1 - remaining) * cfg.lr_floor


def long_window_blocks(step: int, cfg: Hyperparameters) -> int:
    """1728 * progress tokens rounded up to whole blocks of 128: 1 block at the start, MAX_WINDOW_BLOCKS
    (1792 tokens) over the last ~4% of the run (the public record's rule of 2025-08); with --window-stages,
    each stage's window over its equal part of the run (the public rule from 2025-09-03)."""
    if not cfg.window_schedule:
        return MAX_WINDOW_BLOCKS
    if cfg.window_stages:
        stages = window_stages(cfg.window_stages)
        return stages[min(len(stages) - 1, len(stages) * step // (cfg.max_steps + 1))]
    return min(MAX_WINDOW_BLOCKS, max(1, math.ceil((MAX_WINDOW_BLOCKS - 0.5) * step / cfg.max_steps)))


def evaluation_window_blocks(step: int, cfg: Hyperparameters) -> int:
    """The long window a validation (or a model loaded after its run) attends with."""
    return cfg.val_window_blocks or long_window_blocks(step, cfg)


@functools.lru_cache(maxsize=8)
def window_stages(text: str) -> tuple:
    """--window-stages 3,7,11 -> (3, 7, 11), parsed once (the schedule reads it before every step)."""
    try:
        stages = tuple(int(x) for x in text.split(","))
    except ValueError:
        stages = ()
    if not stages or stages[0] < 1 or list(stages) != sorted(stages):
        raise UserError(f"--window-stages {text}: long windows in blocks of 128 tokens, at least 1 and growing (e.g. 3,7,11)")
    return stages


def yarn_windows(cfg: Hyperparameters) -> tuple:
    """The long windows the schedule moves through, in order (YaRN steps through each); () without --yarn."""
    if not cfg.yarn:
        return ()
    return tuple(sorted({long_window_blocks(step, cfg) for step in range(cfg.max_steps + 1)}))


def muon_momentum(step: int, cfg: Hyperparameters) -> float:
    """Rising from --muon-momentum-start over the warm-up, and falling back to it over the last
    --muon-momentum-cooldown steps."""
    frac = min(1.0, step / max(1, cfg.muon_momentum_warmup))
    if cfg.muon_momentum_cooldown:
        frac = min(frac, max(0.0, (cfg.max_steps - step) / cfg.muon_momentum_cooldown))
    return (1 - frac) * cfg.muon_momentum_start + frac * cfg.muon_momentum


def batch_share(step: int, cfg: Hyperparameters) -> float:
    """Share of the full batch at this step: the batch stage's share, times the linear ramp from batch_ramp_start
    to 1 over batch_ramp_frac of the run (both 1 by default)."""
    progress = min(1.0, step / max(1.0, cfg.batch_ramp_frac * cfg.max_steps))
    return stage_at(step, cfg)[0] * (cfg.batch_ramp_start + (1 - cfg.batch_ramp_start) * progress)


def logit_mtp_weights(step: int, cfg: Hyperparameters) -> list:
    """The extra targets' weights at this step: with K of them, the one j tokens further ahead (j = 1..K) keeps
    its starting weight until it falls linearly to 0 over the (K-j+1)-th of K+1 equal parts of the run
    (K = 2, the public record's: t+3 over the first third, t+2 over the second)."""
    starts = float_list(cfg.logit_mtp, "--logit-mtp")
    part, progress = 1 / (len(starts) + 1), step / cfg.max_steps
    return [w * min(1.0, max(0.0, ((len(starts) - j + 1) * part - progress) / part)) for j, w in enumerate(starts, start=1)]


def prefix_target_weight(step: int, cfg: Hyperparameters) -> float:
    """--prefix-target over the first third of the run, then falling linearly to 0 at two thirds (the public record's stages)."""
    progress = step / cfg.max_steps
    return cfg.prefix_target * min(1.0, max(0.0, (2 / 3 - progress) * 3))


def mtp_weight(step: int, cfg: Hyperparameters) -> float:
    """cfg.mtp_weight at step 0, falling linearly to 0 at mtp_frac of the run (MTP helps early, if at all)."""
    return linear_to_zero(step, cfg.max_steps, cfg.mtp_weight, cfg.mtp_frac)


def untie_step(cfg: Hyperparameters) -> int:
    """Steps done when the embedding leaves the head's weight (--tie-embed-until of the run; 0 without tying)."""
    return math.ceil(cfg.tie_embed_until * cfg.max_steps) if cfg.tie_embed_until > 0 else 0


def tie_states(model: ModernGPT, cfg: Hyperparameters) -> list:
    """The warm-up compiles the tied and the untied graph where the run will meet both, the model's own state
    (a resumed run's, from its checkpoint) last, so that the warm-up leaves it as it found it."""
    if not model.config.tie_embed:
        return [lambda: None]
    own = model.embed_tied
    return [lambda: setattr(model, "embed_tied", not own), lambda: setattr(model, "embed_tied", own)]


def before_step(step: int, model: ModernGPT, optimizers, cfg: Hyperparameters) -> None:
    # the host's copy of the tie, not the saved flag on the device: reading that would wait for the GPU every step
    if model.config.tie_embed and model.embed_tied and step >= untie_step(cfg):
        model.untie_embed(optimizers)
    model.set_window(long_window_blocks(step, cfg))
    model.mtp_weight.fill_(mtp_weight(step, cfg))
    if cfg.logit_mtp:
        model.set_logit_mtp_weights(logit_mtp_weights(step, cfg))
    if cfg.prefix_target:
        model.set_prefix_target_weight(prefix_target_weight(step, cfg))
    for opt in optimizers:
        if isinstance(opt, Muon):
            for group in opt.param_groups:
                group["momentum"] = muon_momentum(step, cfg)


def validate_at(step: int, cfg: Hyperparameters) -> bool:
    """Every val_every steps, and every late_val_every steps near the end, where the target is crossed."""
    return late_check_due(step, cfg.max_steps, cfg.val_every, cfg.late_val_frac, cfg.late_val_every)


class SpeedrunTrainer(Trainer):
    """The loop with the recipe's late checks, micro-batch rule and batch stages."""

    def own_kernel_builds(self) -> list:
        """The fused loss's and the MLP's Triton kernels where this run takes them, every configuration their autotuning may pick."""
        from kit.core import gpus
        from kit.modeling import triton_loss, triton_mlp

        builds, cap = [], gpus.capability(self.device)
        if loss_kernel(self.cfg) == "triton":
            targets = 1 + len(float_list(self.cfg.logit_mtp, "--logit-mtp")) + (1 if self.cfg.prefix_target else 0)  # the loss's columns
            builds += triton_loss.kernel_builds(gpus.fp8_capable(cap), targets, self.cfg.loss_one_pass)
        if mlp_kernel(self.cfg) == "triton":
            builds += triton_mlp.kernel_builds(gpus.small_shared_memory(cap))
        return builds

    def validate_at(self, step: int) -> bool:
        return validate_at(step, self.cfg)

    def optimizers_due(self) -> list:
        """Muon every step; Adam (the first optimizer) every --adam-every steps and at the last, its parameters'
        gradients adding up until then (Adam's step hardly changes with their scale)."""
        adam, *others = self.optimizers
        steps_done = self.step + 1
        adam_due = steps_done % self.cfg.adam_every == 0 or steps_done == self.cfg.max_steps
        return self.optimizers if adam_due else others

    def loss_sums(self, *args, **kwargs):
        """Validation (screens, full, further sets) at --val-window-blocks where given, then back to training's window."""
        if not self.cfg.val_window_blocks:
            return super().loss_sums(*args, **kwargs)
        training_window = self.model.window_blocks_on_host
        self.model.set_window(self.cfg.val_window_blocks)
        try:
            return super().loss_sums(*args, **kwargs)
        finally:
            self.model.set_window(training_window)

    def micro_batch_rule(self, usable_bytes: int) -> int:
        return micro_batch_for_memory(self.cfg, usable_bytes)

    def batch_share(self, step: int, cfg: Hyperparameters) -> float:
        return batch_share(step, cfg)

    def batch_shares(self) -> list:
        return batch_stage_shares(self.cfg)


RECIPE = Recipe(Hyperparameters, build_model, build_optimizers, script=__file__, lr_schedule=constant_then_cooldown,
                description=__doc__.splitlines()[0], before_step=before_step, compile_model=compile_model, trainer=SpeedrunTrainer,
                warm_up_states=tie_states, ddp_find_unused=lambda cfg: cfg.tie_embed_until > 0)  # a tied embedding has no gradient of its own

if __name__ == "__main__":
    sys.exit(main(RECIPE))
