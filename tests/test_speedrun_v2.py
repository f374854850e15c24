"""The record script's switches from the public record line after 2025-08 (--v2 1 and each on its own):
losses against direct computations, causality of the model with every new part, the optimizer's
new rules by hand, the schedules at their boundaries, the data order, and the FLOP count."""

import json

import pytest
import torch
import torch.nn.functional as F

from kit.modeling.modern import BLOCK, EOT, MODERN_SIZES, ModernConfig, ModernGPT, idx_targets_with_future, offset_keys, position_free_dims

V2_PARTS = dict(smear=True, backout_layer=1, key_offset=True, softcap_form="sigmoid", softcap=23.0, logit_mtp_weights=(0.5, 0.25))
# the later parts on a 3-layer model: layer 1 attends with paired heads (a short-window layer: no key offset), 0 and 2 with XSA
LATER_PARTS = dict(V2_PARTS, n_layer=3, long_window_layers=(0, 2), paired_head_layers=(1,), xsa_layers=(0, 2), value_embed_layers=(0, 1, 2),
                   value_embed_gate=True, attn_out_init="uniform", sublayer_scales=True, bigram_buckets=61)


def parsed(*flags):
    import train_gpt2_speedrun as sr
    from kit.core.config import parse_config

    cfg, _ = parse_config(sr.Hyperparameters, ["--model-size", "tiny", "--device", "cpu", *flags])
    return cfg


# ----- the loss -----

@pytest.mark.parametrize("form, cap", [("tanh", 15.0), ("sigmoid", 23.0)])
def test_weighted_multi_target_loss_and_gradient_equal_a_direct_computation(form, cap):
    """sum_k w_k CE(softcap(z), target_k) over the rows, -1 ignored, divided by the rows; its gradient by autograd."""
    from kit.modeling.losses import softcapped_cross_entropy

    g = torch.Generator().manual_seed(0)
    z = (6 * torch.randn(40, 90, generator=g)).requires_grad_()
    targets = torch.randint(0, 90, (40, 3), generator=g)
    targets[::3, 2] = -1
    targets[::5, 1:] = -1
    weights = torch.tensor([1.0, 0.5, 0.25])
    capped = cap * (torch.tanh(z / cap) if form == "tanh" else torch.sigmoid((z + 5) / 7.5))
    direct = sum(w * F.cross_entropy(capped, targets[:, k], ignore_index=-1, reduction="sum") for k, w in enumerate(weights)) / 40
    direct.backward()
    expected_grad, z_grad = z.grad.clone(), z.detach().clone().requires_grad_()
    loss = softcapped_cross_entropy(z_grad, targets, cap, "torch", form, weights)
    loss.backward()
    torch.testing.assert_close(loss, direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z_grad.grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_future_targets_stop_at_the_row_and_the_document_end():
    targets = torch.tensor([[11, 12, EOT, 13, 14, 15]])
    got = idx_targets_with_future(targets, (0.5, 0.25))
    assert got[0, :, 0].tolist() == [11, 12, EOT, 13, 14, 15]
    # a further target counts while no 50256 comes before it: the 50256 itself (the document's end) is one
    assert got[0, :, 1].tolist() == [12, EOT, -1, 14, 15, -1]
    assert got[0, :, 2].tolist() == [EOT, -1, -1, 15, -1, -1]


def test_same_logits_prediction_loss_is_the_weighted_sum_in_either_loss_path():
    torch.manual_seed(0)
    model = ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], max_seq_len=BLOCK, attn="dense", logit_mtp_weights=(0.5, 0.25))).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, 1000, (2, BLOCK))
    targets = torch.randint(0, 1000, (2, BLOCK))
    model.set_logit_mtp_weights([0.5, 0.1])
    fused = model(idx, targets)
    model.config.fused_loss = False
    plain = model(idx, targets)
    model.eval()
    with torch.no_grad():
        logits = model(idx).view(-1, model.config.vocab_size)
    future = idx_targets_with_future(targets, (0.5, 0.25)).view(-1, 3)
    by_hand = sum(w * F.cross_entropy(logits, future[:, k], ignore_index=-1, reduction="sum") for k, w in enumerate((1.0, 0.5, 0.1))) / logits.size(0)
    torch.testing.assert_close(plain, by_hand, rtol=1e-5, atol=1e-5)
    model.config.fused_loss = True
    torch.testing.assert_close(fused, by_hand, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # evaluation is the plain next-token loss
        assert model(idx, targets).item() == pytest.approx(F.cross_entropy(logits, targets.view(-1)).item(), rel=1e-5)


# ----- the model's new parts -----

def v2_model(seed=0, **parts):
    torch.manual_seed(seed)
    model = ModernGPT(ModernConfig(**{**MODERN_SIZES["tiny"], "attn_gate_dims": 8, **(parts or V2_PARTS)}, max_seq_len=2 * BLOCK, attn="dense")).eval()
    with torch.no_grad():  # the zero-initialised projections, gates and head would hide every dependency
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.set_window(2)
    return model


MUDD_PARTS = dict(V2_PARTS, n_layer=4, mudd=True, backout_layer=1)
LATE_ATTN_PARTS = dict(V2_PARTS, n_layer=4, backout_layer=1, attn_from_backout=True)  # layers 2 and 3 attend over layer 1's output


@pytest.mark.parametrize("parts", [V2_PARTS, LATER_PARTS, MUDD_PARTS, LATE_ATTN_PARTS], ids=["v2", "later", "mudd", "attn-from-backout"])
def test_model_with_the_new_parts_is_causal_and_keeps_documents_apart(parts):
    model = v2_model(**parts)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 1000, (2, 2 * BLOCK), generator=g)
    x[:, 0] = EOT
    x[0, 90] = EOT
    t = 150
    later = x.clone()
    later[:, t + 1:] = torch.randint(0, 1000, (2, x.size(1) - t - 1), generator=g)
    earlier_document = x.clone()
    earlier_document[0, 1:90] = torch.randint(0, 1000, (89,), generator=g)
    with torch.no_grad():
        a, b, c = model(x), model(later), model(earlier_document)
    torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])
    torch.testing.assert_close(a[0, 90:], c[0, 90:], atol=1e-5, rtol=1e-5)  # smear and key offset stop at the 50256
    assert not torch.allclose(a[0, :90], c[0, :90])


def test_key_offset_moves_only_the_position_free_dimensions_one_step():
    free = position_free_dims(32, "half")  # 16 pairs: 8 rotate (dims 0-7, 16-23), 8 do not (dims 8-15, 24-31)
    assert free.tolist() == [False] * 8 + [True] * 8 + [False] * 8 + [True] * 8
    k = torch.randn(1, 2, 5, 32)
    moved = offset_keys(k, free)
    assert torch.equal(moved[..., ~free], k[..., ~free])
    assert torch.equal(moved[:, :, 1:, free], k[:, :, :-1, free]) and torch.equal(moved[:, :, 0], k[:, :, 0])
    starts = torch.tensor([[False, False, True, False, False]])
    restarted = offset_keys(k, free, starts)
    assert torch.equal(restarted[:, :, 2], k[:, :, 2]) and torch.equal(restarted[:, :, 3, free], k[:, :, 2, free])
    with pytest.raises(ValueError):
        position_free_dims(32, "full")
    model = ModernGPT(ModernConfig(n_layer=12, n_head=2, head_dim=32, n_embd=64, max_seq_len=BLOCK, attn="dense", key_offset=True))
    assert [i for i, b in enumerate(model.blocks) if b.attn.key_offset] == [0, 4, 8, 11]  # the long-window layers


def test_smear_and_backout_start_as_no_ops_and_act_once_trained():
    torch.manual_seed(0)
    plain = ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], max_seq_len=BLOCK, attn="dense")).eval()
    torch.manual_seed(0)
    smeared = ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], max_seq_len=BLOCK, attn="dense", smear=True)).eval()
    idx = torch.randint(0, 1000, (1, 16))
    x0, _, _ = smeared.embed_tokens(idx)
    torch.testing.assert_close(x0, plain.embed_tokens(idx)[0])  # smear lambda starts at 0
    with torch.no_grad():
        smeared.smear_lambda.fill_(1.0)
    e = smeared.embed(idx)
    expected = e.clone()
    expected[:, 1:] += 0.5 * e[:, :-1]  # gate weights 0: sigmoid(0) = 0.5
    torch.testing.assert_close(smeared.smeared(e, idx, smeared.token_table(), torch.tensor([-1])), expected)  # nothing before the row
    backed = ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], max_seq_len=BLOCK, attn="dense", backout_layer=0))
    layer0 = []
    out = backed.through_blocks(torch.randn(1, 4, 64), lambda i, block, x: layer0.append(x + 1) or x + 1 if i == 0 else 2 * x)
    # layer 1 takes layer 0's output L plus its U-net skip (L again) and doubles it: 4 L, less the backout's 0.5 L
    torch.testing.assert_close(out, 4 * layer0[0] - 0.5 * layer0[0])
    with pytest.raises(ValueError):
        ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], backout_layer=2))


@pytest.mark.parametrize("cache, parts", [("paged", V2_PARTS), ("contiguous", V2_PARTS), ("paged", dict(LATER_PARTS, paired_head_layers=())),
                                          ("paged", dict(MUDD_PARTS, skip_pairs=((0, 2),), residual_start=1.1)), ("paged", LATE_ATTN_PARTS)],
                         ids=["paged", "contiguous", "paged-later-parts", "paged-mudd-one-skip", "paged-attn-from-backout"])
def test_cached_decoding_with_the_new_parts_generates_what_recomputation_does(cache, parts):
    from kit.tools.inference import generate

    model = v2_model(**parts)
    prompts = [[EOT, *range(5, 40)], [EOT, 7, 8, EOT, 9]]  # a document starts inside the second prompt
    reference = generate(model, prompts, max_new_tokens=12, cache="none")
    assert generate(model, prompts, max_new_tokens=12, cache=cache, block_size=16) == reference
    assert len(set(reference[0])) > 3


def test_paired_heads_interleave_by_position_and_rotate_at_their_own_places():
    from kit.modeling.modern import interleave_pairs, split_pairs

    t = torch.randn(2, 6, 5, 4)
    paired = interleave_pairs(t)
    assert paired.shape == (2, 3, 10, 4)
    assert torch.equal(paired[:, :, 0::2], t[:, 0::2]) and torch.equal(paired[:, :, 1::2], t[:, 1::2])  # head 2j at 2s, 2j + 1 at 2s + 1
    assert torch.equal(split_pairs(paired), t)
    attn = v2_model(**LATER_PARTS).blocks[1].attn
    assert attn.rotary_positions(3, "cpu").tolist() == [[[0, 1], [2, 3], [4, 5]]]
    with pytest.raises(ValueError):  # a pair cannot take the key offset (its keys' order is the interleaved one)
        ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], attn="dense", key_offset=True, paired_head_layers=(0,)))


def test_paired_head_attention_equals_a_direct_computation():
    """Each query of a pair scores, in one softmax, the pair's keys at the interleaved positions up to its own."""
    model = v2_model(**LATER_PARTS)
    attn = model.blocks[1].attn
    x = torch.randn(1, BLOCK, 64)
    idx = torch.randint(0, 1000, (1, BLOCK))
    masks = model.masks(idx)  # no 50256: one document
    got = attn(x, None, masks[False, True])
    q, k, v = attn.project(x, None)
    y = torch.empty_like(q)
    for head in range(2):
        for t in range(BLOCK):
            own = 2 * t + head  # this query's place in the interleaved sequence of the pair
            keys = [(h, s) for s in range(t + 1) for h in range(2) if 2 * s + h <= own and (own // BLOCK - (2 * s + h) // BLOCK) < 1]
            scores = torch.stack([q[0, head, t] @ k[0, h, s] for h, s in keys]) * model.config.attn_scale
            y[0, head, t] = scores.softmax(0) @ torch.stack([v[0, h, s] for h, s in keys])
    torch.testing.assert_close(got, attn.output(y, x, v), atol=1e-5, rtol=1e-4)
    assert any(model.paired)
    from kit.tools.inference import check_supported

    with pytest.raises(ValueError, match="paired"):  # generation falls back to recomputation (scripts/generate.py says so)
        check_supported(model)


def test_xsa_value_gate_and_sublayer_scales_by_hand():
    model = v2_model(**LATER_PARTS)
    attn = model.blocks[0].attn
    B, T, H, D = 1, 7, 2, 32
    y, v, x = torch.randn(B, H, T, D), torch.randn(B, H, T, D), torch.randn(B, T, 64)
    with torch.no_grad():
        attn.proj.weight.copy_(torch.eye(64))
        attn.gate.weight.zero_()  # sigmoid(0) = 0.5 on every head
        attn.xsa_alpha.fill_(20.0)  # tanh = 1: the whole component along v goes
    out = attn.output(y, x, v).view(B, T, H, D).transpose(1, 2) / 0.5
    torch.testing.assert_close((out * v).sum(-1), torch.zeros(B, H, T), atol=1e-4, rtol=0)
    torch.testing.assert_close(out - y, -((y * v).sum(-1, keepdim=True) / v.square().sum(-1, keepdim=True)) * v, atol=1e-5, rtol=1e-4)
    ve = torch.randn(B, T, H * D)
    weight = attn.value_embed_weight(x, ve.view(B, T, H, D))
    direct = 2 * torch.sigmoid(torch.cat([x[..., :6], ve[..., :6]], -1) @ attn.value_gate.weight.T)
    torch.testing.assert_close(weight.squeeze(-1), direct)
    fresh = ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], attn="dense", value_embed_gate=True, sublayer_scales=True))
    assert torch.equal(fresh.blocks[0].attn.value_embed_weight(x, ve.view(B, T, H, D)), torch.ones(B, T, H, 1))  # the gate starts at 1
    block = fresh.blocks[1]
    stream, x0 = torch.randn(B, T, 64), torch.randn(B, T, 64)
    got = block.run(stream, x0, None, lambda h: 3 * h)
    mixed = 1.1 ** 0.5 * stream  # x0's share starts at 0
    mixed = mixed + 3 * F.rms_norm(mixed, (64,))
    torch.testing.assert_close(got, 1.1 ** 0.5 * mixed + block.mlp(F.rms_norm(mixed, (64,))))


def test_value_embeddings_per_listed_layer_and_the_script_layouts():
    import train_gpt2_speedrun as sr

    model = ModernGPT(ModernConfig(n_layer=12, n_head=2, head_dim=32, n_embd=64, max_seq_len=BLOCK, attn="dense", value_embed_layers=(1, 2, 9, 10, 11)))
    assert len(model.value_embeds) == 5 and model.value_embed_slots() == [None, 0, 1, None, None, None, None, None, None, 2, 3, 4]
    cfg = parsed("--model-size", "124m", "--value-embed-layers", "auto", "--paired-head-layers", "auto", "--xsa-layers", "auto")
    assert sr.layer_parts(cfg, 12) == {"value_embed_layers": (1, 2, 9, 10, 11), "paired_head_layers": (1, 3, 5, 9),
                                       "xsa_layers": (0, 2, 4, 6, 8, 10, 11)}  # every attending layer (7 has none) without pairs
    with pytest.raises(sr.UserError):
        sr.layer_parts(parsed("--xsa-layers", "1,x"), 12)
    with pytest.raises(sr.UserError):
        sr.layer_parts(parsed("--paired-head-layers", "12"), 12)


# ----- the optimizer -----

def test_muon_cautious_weight_decay_only_where_the_update_agrees_in_sign():
    from kit.modeling.muon import Muon, newton_schulz

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(8, 8))
    before = p.detach().clone()
    p.grad = torch.randn(8, 8)
    Muon([p], lr=0.1, momentum=0.0, nesterov=False, cautious_wd=2.0).step()
    update = newton_schulz(p.grad, dtype=torch.float32)
    agree = (update * before >= 0).float()
    torch.testing.assert_close(p.detach(), before - 0.1 * update - 0.1 * 0.1 * 2.0 * before * agree, rtol=1e-5, atol=1e-6)
    assert 0 < agree.mean() < 1
    # a group with update_scale 2 (the MLPs' output matrices of --mlp-out-lr 2): twice the step, the same decay
    q = torch.nn.Parameter(before.clone())
    q.grad = p.grad.clone()
    Muon([{"params": [q], "update_scale": 2.0}], lr=0.1, momentum=0.0, nesterov=False, cautious_wd=2.0).step()
    torch.testing.assert_close(q.detach(), before - 2 * 0.1 * update - 0.1 * 0.1 * 2.0 * before * agree, rtol=1e-5, atol=1e-6)


def test_mlp_output_matrices_get_their_own_muon_group_only_when_their_lr_differs():
    import train_gpt2_speedrun as sr

    for flags, scales in (([], [1.0, 1.0]), (["--mlp-out-lr", "2"], [1.0, 2.0, 1.0])):
        cfg = parsed(*flags)
        model = sr.build_model(cfg)
        muon = sr.build_optimizers(model, cfg)[1]
        assert [g["update_scale"] for g in muon.param_groups] == scales  # split Q/K/V, [the MLPs' outputs,] the rest
        scaled = [p for g in muon.param_groups if g["update_scale"] == 2.0 for p in g["params"]]
        assert {id(p) for p in scaled} == ({id(b.mlp.down.weight) for b in model.blocks} if flags else set())
        assert sum(len(g["params"]) for g in muon.param_groups) == len([p for p in model.blocks.parameters() if p.dim() == 2])


def test_normuon_normalises_the_columns_of_a_wide_matrix():
    from kit.modeling.muon import Muon

    muon = Muon([torch.nn.Parameter(torch.zeros(4, 16))], row_beta=0.5)
    p = muon.param_groups[0]["params"][0]
    update = torch.randn(1, 1, 4, 16) * torch.linspace(0.1, 3, 16)  # (matrices, split, rows, columns)
    out = muon.row_normalised([p], update, 0.5)
    assert muon.state[p]["row_second_moment"].shape == (1, 1, 16)  # one per column
    column_rms = out.square().mean(dim=-2).sqrt()
    assert column_rms.std() / column_rms.mean() < 1e-4  # every column's update now the same size
    torch.testing.assert_close(out.norm(), update.norm(), rtol=1e-5, atol=1e-6)


# ----- the schedules and the --v2 preset -----

def test_batch_stages_lr_multipliers_floor_and_micro_batch():
    import train_gpt2_speedrun as sr

    cfg = parsed("--batch-stages", "1,2,3", "--batch-stage-lrs", "0.5,0.8,1", "--max-steps", "300", "--cooldown-frac", "0.5", "--lr-floor", "0.2", "--v2", "0")
    assert [sr.batch_share(s, cfg) for s in (0, 99, 100, 199, 200, 299)] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert sr.constant_then_cooldown(0, cfg) == 0.5 and sr.constant_then_cooldown(120, cfg) == 0.8
    assert sr.constant_then_cooldown(150, cfg) == pytest.approx(0.8)  # cooldown starts: the stage's LR
    assert sr.constant_then_cooldown(225, cfg) == pytest.approx(0.5 * 1 + 0.5 * 0.2)
    assert sr.constant_then_cooldown(300, cfg) == pytest.approx(0.2)
    from kit.core.errors import UserError
    from kit.loop.train import Trainer

    def fitted(micro, given, seqs=24, stages="1,2,3"):  # the trainer's rule, on an H200's first guess (6) or a given --micro-batch
        trainer = sr.SpeedrunTrainer.__new__(sr.SpeedrunTrainer)
        trainer.recipe, trainer.cfg, trainer.seqs_per_rank = sr.RECIPE, parsed("--batch-stages", stages, "--v2", "0"), seqs
        return trainer.fit_batch_shares(micro, given)

    assert fitted(6, False) == 4 and fitted(1, False) == 1 and fitted(8, True) == 8  # 6 steps of 4: stages of 2, 4, 6
    assert fitted(6, False, stages="1") == 6
    assert fitted(6, True) == 6 and fitted(8, False, seqs=8) == 8  # none fits: kept, steps rounded (the log says so)

    with pytest.raises(UserError):
        sr.batch_stages(parsed("--batch-stages", "1,2", "--batch-stage-lrs", "1", "--v2", "0"))


def test_extra_target_weights_fall_in_turn_and_momentum_cools_down():
    import train_gpt2_speedrun as sr

    cfg = parsed("--logit-mtp", "0.5,0.25", "--max-steps", "300", "--muon-momentum-cooldown", "50", "--muon-momentum-warmup", "100", "--v2", "0")
    assert sr.logit_mtp_weights(0, cfg) == pytest.approx([0.5, 0.25])
    assert sr.logit_mtp_weights(50, cfg) == pytest.approx([0.5, 0.125])
    assert sr.logit_mtp_weights(100, cfg) == pytest.approx([0.5, 0.0])
    assert sr.logit_mtp_weights(150, cfg) == pytest.approx([0.25, 0.0])
    assert sr.logit_mtp_weights(250, cfg) == pytest.approx([0.0, 0.0])
    assert [sr.muon_momentum(s, cfg) for s in (0, 100, 250, 275, 300)] == pytest.approx([0.85, 0.95, 0.95, 0.9, 0.85])


def test_v2_preset_fills_only_what_was_not_given():
    cfg = parsed("--smear", "0", "--data", "webmix")  # --v2 1 is the default
    assert cfg.smear is False and cfg.key_offset and cfg.logit_mtp == "0.5,0.25" and cfg.batch_stages == "1,2,3"
    assert cfg.backout_layer == 1 and cfg.max_steps == 830  # 2/3 of the tiny model's 2 layers; webmix's V2 length
    assert cfg.batch_tokens == 1024 and cfg.batch_stage_lrs == "0.408,0.578,0.707"  # the tiny model keeps its own batch
    full = parsed("--data", "webmix", "--model-size", "124m")
    assert (full.batch_tokens, full.batch_stages, full.max_steps) == (196_608, "1,2,3", 830)  # webmix's smaller steps
    assert parsed("--model-size", "124m").batch_tokens == 393_216  # FineWeb keeps the public stages
    assert parsed("--data", "webmix", "--max-steps", "300").max_steps == 300 and parsed().max_steps == 1440  # FineWeb's projection
    assert parsed("--data", "webmix", "--v2", "0").max_steps == 410
    assert parsed("--data", "webmix", "--model-size", "124m").val_screen_tokens == 2_097_152  # tiny validates 4,096 tokens: no screen
    assert parsed("--data", "webmix", "--model-size", "124m", "--val-tokens", "1048576").val_screen_tokens == 0  # none as large as the set
    assert parsed("--v2", "1", "--model-size", "124m").backout_layer == 8
    off = parsed("--v2", "0")
    assert not off.smear and off.logit_mtp == "" and off.backout_layer == -1 and off.muon_cwd == 0 and off.bigram_sign_rows == 0
    assert parsed("--model-size", "124m").bigram_sign_rows == 8192 and parsed("--bigram-sign-rows", "16").bigram_sign_rows == 16
    assert parsed("--bigram-buckets", "0").bigram_sign_rows == 0  # no bigram table, nothing to sign


def test_v2_optimises_every_parameter_once_and_trains(tmp_path):
    import train_gpt2_speedrun as sr
    from kit.loop.train import main

    later = ["--value-embed-layers", "auto", "--value-embed-gate", "1", "--xsa-layers", "auto", "--sublayer-scales", "1", "--attn-out-init", "uniform"]
    for flags in ([], later):
        cfg = parsed("--v2", "1", *flags)
        model = sr.build_model(cfg)
        optimised = [id(p) for opt in sr.build_optimizers(model, cfg) for g in opt.param_groups for p in g["params"]]
        assert sorted(optimised) == sorted(id(p) for p in model.parameters())
    code = main(sr.RECIPE, ["--model-size", "tiny", "--data", "synthetic", "--device", "cpu", "--batch-tokens", "384", "--v2", "1",
                            "--bigram-buckets", "101", "--val-tokens", "512", "--max-steps", "6", "--export", "0", "--out-dir", str(tmp_path),
                            "--muon-qk-head-pairs", "1"])  # Q and K by pairs of heads: Muon's chunked step inside a run
    assert code == 0
    train = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in train if m["type"] == "train"]
    # stages of 1, 2 and 3 sequences of 128 tokens: the micro-batch is lowered to 1 so that each is whole micro-batches
    assert [m["tokens"] for m in steps] == [128, 256, 512, 768, 1152, 1536]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["micro_batch"] == 1 and summary["final_val_loss"] < train[0]["val_loss"]


# ----- the data order and the FLOP count -----

def test_data_order_seed_permutes_the_shards_and_shifts_the_start(tmp_path):
    import numpy as np

    from kit.data.loader import TrainStream, shuffled_order
    from kit.data.shards import write_shard

    files = []
    for i in range(4):
        path = tmp_path / f"train_{i}.bin"
        write_shard(path, np.arange(1000 * i, 1000 * i + 500, dtype=np.uint16) % 50000)
        files.append(path)
    assert shuffled_order(files, 0, 16) == (files, 0)
    order, offset = shuffled_order(files, 3, 16)
    assert sorted(order) == files and (order, offset) == shuffled_order(files, 3, 16) and 0 <= offset < 16
    assert any(shuffled_order(files, s, 16)[0] != files for s in (1, 2, 3))
    stream = TrainStream(files, seq_len=16, micro_batch=2, order_seed=3)
    x, _ = stream.next_batch()
    first = int(np.fromfile(order[0], dtype=np.uint16, offset=1024)[offset])
    assert int(x[0, 0]) == first
    state = stream.state_dict()
    following = stream.next_batch()[0]
    again = TrainStream(files, seq_len=16, micro_batch=2, order_seed=3)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch()[0], following)


def test_flops_follow_the_windows_and_the_fp8_head_is_counted_apart():
    from kit.modeling.flops import linear_weight_count, utilisation

    model = ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], max_seq_len=8 * BLOCK, attn="dense", fp8_head=True))  # layers 0 (long), 1 (long: the last)
    linear = 6 * linear_weight_count(model)
    per_layer = 12 * 2 * 32
    assert model.flops_per_token(8 * BLOCK, 4) == linear + per_layer * 2 * 4 * BLOCK
    assert model.flops_per_token(2 * BLOCK, 4) == linear + per_layer * 2 * 2 * BLOCK  # no span beyond the sequence
    model.set_window(3)
    total, fp8 = model.flops_now(8 * BLOCK)
    assert total == linear + per_layer * 2 * 3 * BLOCK and fp8 == 6 * 64 * model.config.vocab_size
    assert utilisation(10.0, 4.0, 2.0, peak_flops=1.0, fp8_peak_flops=2.0) == pytest.approx((6.0 + 2.0) / 2.0)
    mudd = ModernGPT(ModernConfig(**{**MODERN_SIZES["tiny"], "n_layer": 4}, max_seq_len=8 * BLOCK, attn="dense", mudd=True))
    attention = 12 * 2 * 32 * (4 + 2 + 2 + 4) * BLOCK  # layers 0 and 3 long (4 blocks), 1 and 2 short (2)
    assert mudd.flops_per_token(8 * BLOCK, 4) - 6 * linear_weight_count(mudd) - attention == 6 * 2 * 64 * 64  # MUDD's W1 counted
    assert utilisation(10.0, 4.0, 2.0, peak_flops=1.0, fp8_peak_flops=None) is None


# ----- the embedding tied to the head, then apart -----

def test_a_tied_embedding_reads_the_head_and_untying_copies_weight_and_adam_state():
    """While tied the embedding lookups read the head's weight (the embedding's own gets no gradient and changes
    nothing); untying copies the head's weight and Adam moments to it, so the model's output is unchanged at that
    moment and the two then train apart. The tie is saved with the weights."""
    from kit.tools.inference import generate

    model = v2_model(**dict(V2_PARTS, tie_embed=True))
    with torch.no_grad():  # a random tied model echoes its last token (its logits are its input's embedding); blocks that matter do not
        for p in model.blocks.parameters():
            p.add_(0.3 * torch.randn_like(p))
    prompts = [[EOT, *range(5, 40)], [EOT, 7, 8, EOT, 9]]
    reference = generate(model, prompts, max_new_tokens=12, cache="none")
    assert generate(model, prompts, max_new_tokens=12, cache="paged", block_size=16) == reference and len(set(reference[0])) > 3
    idx = torch.randint(0, 500, (2, 2 * BLOCK))
    before = model(idx)
    with torch.no_grad():
        model.embed.weight.mul_(-3)
    torch.testing.assert_close(model(idx), before)  # the embedding's own table is not read
    model.train()
    adam = torch.optim.Adam([{"params": [model.lm_head.weight, model.embed.weight]},
                             {"params": [p for n, p in model.named_parameters() if n not in ("lm_head.weight", "embed.weight")]}], lr=1e-3)
    model(idx, idx).backward()
    assert model.embed.weight.grad is None and model.lm_head.weight.grad is not None
    adam.step()
    assert model.embed.weight not in adam.state  # Adam skips a parameter without a gradient
    reference = model.eval()(idx)
    model.untie_embed([adam])
    torch.testing.assert_close(model(idx), reference)
    assert model.embed.weight.data_ptr() != model.lm_head.weight.data_ptr()
    head_state, embed_state = adam.state[model.lm_head.weight], adam.state[model.embed.weight]
    for key in ("step", "exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(embed_state[key], head_state[key])
    assert embed_state["exp_avg"].data_ptr() != head_state["exp_avg"].data_ptr()
    model.train()
    adam.zero_grad()
    model(idx, idx).backward()
    assert model.embed.weight.grad is not None  # now its own
    # a model built tied and loaded with the untied weights reads its own table
    loaded = ModernGPT(model.config)
    loaded.load_state_dict(model.state_dict())
    loaded.set_window(2)  # the window is the schedule's, not saved
    assert not loaded.embed_tied
    torch.testing.assert_close(loaded.eval()(idx), model.eval()(idx))


def train_losses(run_dir) -> dict:
    return {m["step"]: m["loss"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if m["type"] == "train"}


def assert_resumed_runs_follow_the_full_run(flags, tmp_path, at_steps, last_step=6):
    """Runs resumed from tmp_path/full's checkpoints at at_steps continue its losses to last_step."""
    import train_gpt2_speedrun as sr
    from kit.loop.train import main

    full = train_losses(tmp_path / "full")
    for at in at_steps:
        ckpt = tmp_path / "full" / "checkpoints" / f"ckpt_step{at:06d}.pt"
        assert main(sr.RECIPE, [*flags, "--resume", str(ckpt), "--out-dir", str(tmp_path / f"from{at}")]) == 0
        resumed = train_losses(tmp_path / f"from{at}")
        assert sorted(resumed) == list(range(at + 1, last_step + 1))
        for step, loss in resumed.items():
            assert abs(loss - full[step]) <= 1e-6, (at, step, loss, full[step])


def test_the_record_script_unties_at_its_step_and_a_resumed_run_follows_the_same_losses(tmp_path):
    """--tie-embed-until 0.5 on 6 steps: the embedding trains with the head for 3 steps, then apart at the head's LR;
    a run resumed from step 2 (tied) and one from step 4 (untied) continue the uninterrupted run's losses (with the
    prefix target on too, whose weight falls by step)."""
    import train_gpt2_speedrun as sr
    from kit.loop.train import main

    cfg = parsed("--tie-embed-until", "0.5", "--max-steps", "6")
    model = sr.build_model(cfg)
    groups = sr.build_optimizers(model, cfg)[0].param_groups
    assert any(p is model.embed.weight for p in groups[0]["params"]) and groups[0]["lr"] == cfg.head_lr and sr.untie_step(cfg) == 3
    assert sr.RECIPE.ddp_find_unused(cfg) and not sr.RECIPE.ddp_find_unused(parsed())
    flags = ["--model-size", "tiny", "--data", "synthetic", "--device", "cpu", "--batch-tokens", "256", "--val-tokens", "512",
             "--max-steps", "6", "--val-every", "0", "--export", "0", "--tie-embed-until", "0.5", "--prefix-target", "0.25"]
    assert main(sr.RECIPE, [*flags, "--save-every", "2", "--keep-checkpoints", "3", "--out-dir", str(tmp_path / "full")]) == 0
    for at, tied in ((2, True), (4, False)):
        saved = torch.load(tmp_path / "full" / "checkpoints" / f"ckpt_step{at:06d}.pt", map_location="cpu", weights_only=False)["model"]
        assert bool(saved["embed_is_tied"]) is tied and torch.equal(saved["embed.weight"], saved["lm_head.weight"]) is False
    assert_resumed_runs_follow_the_full_run(flags, tmp_path, (2, 4))


# ----- the prefix token as an extra target -----

def test_prefix_tokens_are_the_longest_proper_prefixes_that_are_tokens():
    from kit.data.tokenizer import gpt2_encoding, gpt2_ranks, prefix_tokens

    enc, table = gpt2_encoding(), prefix_tokens(50304)
    assert len(table) == 50304 and table[EOT] == -1 and table[50300] == -1  # the end of text and the padding have none
    assert enc.decode([table[enc.encode_ordinary(" prediction")[0]]]) == " predict" and table[enc.encode_ordinary("a")[0]] == -1
    by_id = {token: token_bytes for token_bytes, token in gpt2_ranks().items()}
    for token in range(0, 50256, 97):  # every 97th: the prefix is a proper prefix, and no longer one is a token
        if table[token] >= 0:
            whole, prefix = by_id[token], by_id[table[token]]
            assert whole.startswith(prefix) and len(prefix) < len(whole)
            assert not any(whole[:n] in gpt2_ranks() for n in range(len(prefix) + 1, len(whole)))
        else:
            assert not any(by_id[token][:n] in gpt2_ranks() for n in range(1, len(by_id[token])))


@pytest.mark.parametrize("fused", [True, False])
def test_prefix_target_adds_its_weighted_cross_entropy_in_either_loss_path(fused):
    """With extra targets ahead and the prefix target: the loss is the weighted sum of each column's cross-entropy over
    the same logits, the prefix column holding the next token's prefix token (-1, no term, where it has none)."""
    from kit.data.tokenizer import prefix_tokens

    torch.manual_seed(0)
    model = ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], max_seq_len=BLOCK, attn="dense", logit_mtp_weights=(0.5,),
                                   prefix_target_weight=0.25, fused_loss=fused)).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    idx, targets = torch.randint(0, 1000, (2, BLOCK)), torch.randint(0, 1000, (2, BLOCK))
    targets[0, 5] = EOT
    model.set_prefix_target_weight(0.1)
    loss = model(idx, targets)
    with torch.no_grad():
        logits = model.eval()(idx).view(-1, model.config.vocab_size)
    table = torch.tensor(prefix_tokens(model.config.vocab_size))
    columns = [targets.view(-1), idx_targets_with_future(targets, (0.5,))[..., 1].reshape(-1), table[targets.view(-1)]]
    assert (columns[2] == -1).any() and columns[2][5] == -1  # 50256 has no prefix
    by_hand = sum(w * F.cross_entropy(logits, c, ignore_index=-1, reduction="sum") for c, w in zip(columns, (1.0, 0.5, 0.1))) / logits.size(0)
    torch.testing.assert_close(loss, by_hand, rtol=1e-5, atol=1e-5)


def test_prefix_target_weight_holds_for_a_third_then_falls_to_zero():
    import train_gpt2_speedrun as sr

    cfg = parsed("--prefix-target", "0.25", "--max-steps", "300")
    assert [sr.prefix_target_weight(s, cfg) for s in (0, 100, 150, 200, 300)] == pytest.approx([0.25, 0.25, 0.125, 0.0, 0.0])
    assert sr.build_model(cfg).config.prefix_target_weight == 0.25 and not sr.build_model(parsed()).config.prefix_target_weight


# ----- MUDD: dynamic dense connections into the last two layers -----

def test_mudd_starts_as_a_no_op_and_its_mix_is_the_weighted_sum_of_its_sources():
    """At its start (W2 and biases zero) the model computes what it computes without MUDD; once trained, each
    position's weights come from its own state: 0.2/sqrt(L) (gelu(x W1) W2 + b), the value channel times 1.15."""
    torch.manual_seed(0)
    plain = v2_model(**dict(MUDD_PARTS, mudd=False))
    fresh = ModernGPT(plain.config.__class__(**{**plain.config.__dict__, "mudd": True})).eval()
    fresh.load_state_dict(plain.state_dict(), strict=False)
    fresh.set_window(2)
    idx = torch.randint(0, 500, (2, 2 * BLOCK))
    torch.testing.assert_close(fresh(idx), plain(idx))
    model = v2_model(**MUDD_PARTS)
    x, sources = torch.randn(2, 5, 64), [torch.randn(2, 5, 64) for _ in range(3)]
    values, residual = model.mudd_mix(0, x, sources)
    for b, t in ((0, 0), (1, 4)):
        hidden = F.gelu(model.mudd_w1[0] @ x[b, t])
        w = (torch.einsum("d,dcl->cl", hidden, model.mudd_w2[0]) + model.mudd_bias[0]) * 0.2 / 3 ** 0.5
        torch.testing.assert_close(residual[b, t], sum(w[1, l] * sources[l][b, t] for l in range(3)), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(values[b, t], 1.15 * sum(w[0, l] * sources[l][b, t] for l in range(3)), rtol=1e-5, atol=1e-6)
    assert model.mudd_layers == (2, 3) and model.mudd_ref_layer == 1
    import train_gpt2_speedrun as sr

    groups = [g for opt in sr.build_optimizers(model, parsed()) for g in opt.param_groups]
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in model.parameters())  # each once
    assert next(g for g in groups if any(p is model.mudd_w2 for p in g["params"]))["betas"] == (0.9, 0.99)
    with pytest.raises(ValueError, match="mudd needs"):
        ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], mudd=True))


def test_scalar_betas_apply_to_the_scalars_group_alone():
    import train_gpt2_speedrun as sr
    from kit.core.errors import UserError

    cfg = parsed("--scalar-betas", "0.9,0.99")
    model = sr.build_model(cfg)
    adam = sr.build_optimizers(model, cfg)[0]
    scalars = next(g for g in adam.param_groups if any(p is model.blocks[0].residual_mix for p in g["params"]))
    assert scalars["betas"] == (0.9, 0.99) and all(g["betas"] == (cfg.adam_beta1, cfg.adam_beta2) for g in adam.param_groups if g is not scalars)
    with pytest.raises(UserError, match="--scalar-betas 0.9"):
        sr.build_optimizers(model, parsed("--scalar-betas", "0.9"))


def test_head_and_embedding_betas_by_part_and_the_default_groups_unchanged():
    """--head-betas: the head and the token embedding; --embed-betas: the value and bigram embeddings (the public record
    of 2026-01-04's per-part betas); without them and Adam's cautious decay the Adam groups are the ones earlier
    checkpoints hold."""
    import train_gpt2_speedrun as sr
    from kit.core.errors import UserError

    cfg = parsed("--head-betas", "0.5,0.95", "--embed-betas", "0.75,0.95")
    model = sr.build_model(cfg)
    adam = sr.build_optimizers(model, cfg)[0]

    def betas_of(param):
        return next(g["betas"] for g in adam.param_groups if any(p is param for p in g["params"]))

    assert betas_of(model.lm_head.weight) == betas_of(model.embed.weight) == (0.5, 0.95)
    assert betas_of(model.bigram_embed.weight) == betas_of(model.value_embeds[0].weight) == (0.75, 0.95)
    assert betas_of(model.blocks[0].residual_mix) == (cfg.adam_beta1, cfg.adam_beta2)
    plain = sr.build_optimizers(model, parsed("--adam-cwd", "0"))[0]
    assert sorted(id(p) for g in adam.param_groups for p in g["params"]) == sorted(id(p) for g in plain.param_groups for p in g["params"])
    assert [len(g["params"]) for g in plain.param_groups][:2] == [1, len(adam.param_groups[1]["params"]) + len(adam.param_groups[2]["params"])]
    assert len(adam.param_groups) == len(plain.param_groups) + 1
    with pytest.raises(UserError, match="--head-betas 1,0.9"):
        sr.build_optimizers(model, parsed("--head-betas", "1,0.9"))


# ----- YaRN and the staged windows -----

def test_yarn_state_by_hand():
    """One change 1 -> 2 blocks (128 -> 256 tokens): a pair turning 20.37 times in the old window blends (weight
    (20.37 - 1) / 31 = 0.625 kept), one turning 0.02 times is halved, one that does not rotate stays 0; the scale
    grows by 0.2 ln 2 + 1."""
    import math

    from kit.modeling.modern import yarn_state

    frequencies = torch.tensor([1.0, 0.001, 0.0, 2.0])  # 2.0 turns 40.7 times: over beta (32), kept
    new, multiplier = yarn_state(frequencies, (1, 2), 2)
    turns = 128 / (2 * math.pi)
    kept = (turns - 1) / 31
    torch.testing.assert_close(new, torch.tensor([0.5 + kept * 0.5, 0.0005, 0.0, 2.0]))
    assert multiplier == pytest.approx(1 + 0.2 * math.log(2))
    assert torch.equal(frequencies, torch.tensor([1.0, 0.001, 0.0, 2.0]))  # the base is not touched


def test_yarn_state_follows_the_schedule_to_any_window():
    """Through 3 -> 7 -> 11: the scale is the product of the two steps; a slow pair is slowed by 3/11 in all; a window
    past the last (a longer validation) takes one step more; at or below the first, the base; a window between two listed
    ones is reached by one step from the one below."""
    import math

    from kit.modeling.modern import rotary_frequencies, yarn_state

    base = rotary_frequencies(128, "half")
    f11, m11 = yarn_state(base, (3, 7, 11), 11)
    assert m11 == pytest.approx((1 + 0.2 * math.log(7 / 3)) * (1 + 0.2 * math.log(11 / 7)))
    assert f11[31].item() == pytest.approx(base[31].item() * 3 / 11)  # 1/1024 rad per token: 0.06 turns in 384 tokens
    assert f11[0].item() == base[0].item()  # 1 rad per token: 61 turns in 384 tokens
    assert torch.equal(f11[32:], base[32:])  # the position-free half stays 0
    f13, m13 = yarn_state(base, (3, 7, 11), 13)
    assert m13 == pytest.approx(m11 * (1 + 0.2 * math.log(13 / 11)))
    assert f13[31].item() == pytest.approx(base[31].item() * 3 / 13)
    for window in (1, 3):
        f, m = yarn_state(base, (3, 7, 11), window)
        assert torch.equal(f, base) and m == 1.0
    f5, m5 = yarn_state(base, (3, 7, 11), 5)
    assert m5 == pytest.approx(1 + 0.2 * math.log(5 / 3))
    assert yarn_state(base, (), 11)[1] == 1.0


YARN_PARTS = dict(V2_PARTS, yarn_windows=(1, 2))


def test_yarn_model_sets_its_tables_and_scale_from_the_window_alone():
    """set_window gives every attention YaRN's tables and query scale for the window, whatever window came before
    (a resumed or loaded model is set straight to its window); the queries are the rotated, normed ones times the scale."""
    from kit.modeling.modern import Rotary, rms_norm, yarn_state

    model = v2_model(**YARN_PARTS)  # set to window 2: one YaRN step from 1
    attn = model.blocks[0].attn
    frequencies, multiplier = yarn_state(attn.rotary.base_frequencies, (1, 2), 2)
    reference = Rotary(attn.cfg.head_dim, attn.rotary.cos.size(0), style="half")
    reference.set_frequencies(frequencies)
    torch.testing.assert_close(attn.rotary.cos, reference.cos)
    assert attn.yarn_scale.item() == pytest.approx(multiplier)
    x = torch.randn(1, 16, 64)
    q = attn.project(x, None)[0].transpose(1, 2)
    raw = attn.qkv(x).view(1, 16, 3, attn.cfg.n_head, attn.cfg.head_dim)[:, :, 0]
    torch.testing.assert_close(q, reference(rms_norm(raw)) * multiplier)
    model.set_window(1)
    assert torch.equal(attn.rotary.cos, Rotary(attn.cfg.head_dim, attn.rotary.cos.size(0), style="half").cos) and attn.yarn_scale.item() == 1.0
    model.set_window(2)
    torch.testing.assert_close(attn.rotary.cos, reference.cos)
    plain = v2_model(**V2_PARTS)
    assert plain.blocks[0].attn.yarn_scale is None


def test_yarn_model_is_causal_and_decodes_from_its_cache_as_it_recomputes():
    from kit.tools.inference import generate

    model = v2_model(**YARN_PARTS)
    x = torch.randint(0, 1000, (1, 2 * BLOCK), generator=torch.Generator().manual_seed(0))
    later = x.clone()
    later[:, 151:] = 7
    with torch.no_grad():
        a, b = model(x), model(later)
    torch.testing.assert_close(a[:, :151], b[:, :151], atol=1e-5, rtol=1e-5)
    prompts = [[EOT, *range(5, 40)], [EOT, 7, 8, EOT, 9]]
    assert generate(model, prompts, max_new_tokens=12, cache="paged", block_size=16) == generate(model, prompts, max_new_tokens=12, cache="none")


def test_compiled_yarn_model_reads_the_tables_it_is_given():
    """A compiled model changes its rotary tables and scale in place: the window's change must reach the graph
    (not be baked in as a constant) without recompiling."""
    import torch._dynamo

    model = v2_model(**YARN_PARTS)
    x = torch.randint(0, 1000, (1, 2 * BLOCK), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = {}
        for window in (1, 2):
            model.set_window(window)
            eager[window] = model(x)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="aot_eager")
        try:
            for window in (1, 2):
                model.set_window(window)
                torch.testing.assert_close(compiled(x), eager[window], atol=1e-4, rtol=1e-4)
                torch._dynamo.config.error_on_recompile = True
        finally:
            torch._dynamo.config.error_on_recompile = False
            torch._dynamo.reset()
    assert not torch.allclose(eager[1], eager[2])


def test_window_stages_yarn_windows_and_the_attention_scale_of_the_script():
    import train_gpt2_speedrun as sr
    from kit.core.errors import UserError

    cfg = parsed("--window-stages", "3,7,11", "--max-steps", "830", "--yarn", "1")
    assert [sr.long_window_blocks(s, cfg) for s in (0, 276, 277, 553, 554, 830)] == [3, 3, 7, 7, 11, 11]
    assert sr.yarn_windows(cfg) == (3, 7, 11)
    model = sr.build_model(cfg)
    assert model.config.yarn_windows == (3, 7, 11) and model.config.attn_scale == 0.1  # the public start, raised by YaRN
    continuous = parsed("--max-steps", "830", "--yarn", "1")
    assert sr.yarn_windows(continuous) == tuple(range(1, 15))
    assert sr.yarn_windows(parsed("--max-steps", "830")) == ()
    assert sr.build_model(parsed()).config.attn_scale == 0.12
    assert sr.build_model(parsed("--yarn", "1", "--attn-scale", "0.12")).config.attn_scale == 0.12
    for bad in ("7,3", "0,3", "3;7"):
        with pytest.raises(UserError, match="--window-stages"):
            sr.long_window_blocks(0, parsed("--window-stages", bad))
    with pytest.raises(UserError, match="--window-stages"):
        sr.build_model(parsed("--window-stages", "7,3"))  # before any step


def test_yarn_run_validates_at_its_own_window_and_resumes_on_the_same_losses(tmp_path, monkeypatch):
    """--window-stages 1,2,3 --yarn 1 --val-window-blocks 4 on 6 steps: every validation attends with 4 blocks and
    YaRN's scale for one step past the last stage; runs resumed at steps 2 and 4 (windows 1 and 2 of the schedule)
    continue the uninterrupted run's losses, since YaRN's state follows from the window alone."""
    import train_gpt2_speedrun as sr
    from kit.loop.train import Trainer, main
    from kit.modeling.modern import rotary_frequencies, yarn_state

    seen = []
    real_loss_sums = Trainer.loss_sums

    def recording(self, *args, **kwargs):
        seen.append((self.model.window_blocks_on_host, self.model.blocks[0].attn.yarn_scale.item()))
        return real_loss_sums(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "loss_sums", recording)
    flags = ["--model-size", "tiny", "--data", "synthetic", "--device", "cpu", "--batch-tokens", "256", "--val-tokens", "512", "--max-steps", "6",
             "--val-every", "3", "--export", "0", "--window-stages", "1,2,3", "--yarn", "1", "--val-window-blocks", "4"]
    assert main(sr.RECIPE, [*flags, "--save-every", "2", "--keep-checkpoints", "3", "--out-dir", str(tmp_path / "full")]) == 0
    expected_scale = yarn_state(rotary_frequencies(MODERN_SIZES["tiny"].get("head_dim", ModernConfig.head_dim), "half"), (1, 2, 3), 4)[1]
    assert len(seen) >= 3 and all(window == 4 for window, _ in seen)
    assert all(scale == pytest.approx(expected_scale) for _, scale in seen) and expected_scale > 1.2
    assert_resumed_runs_follow_the_full_run(flags, tmp_path, (2, 4))


# ----- the refined skips and the stream weight's start -----

def test_skip_pairs_route_each_listed_output_and_the_default_is_the_u_net():
    """With blocks replaced by 'add i + 1', the input of each layer shows which outputs its skips brought: the U-net
    (layer 1 feeds 2, 0 feeds 3 on 4 layers, weights 0.5 and 2) or a single pair 0:2 (weight 3)."""
    def inputs_through(model):
        seen = []

        def apply_block(i, block, x):
            seen.append(x.item())
            return x + (i + 1)

        model.through_blocks(torch.tensor(0.0), apply_block)
        return seen

    u_net = ModernGPT(ModernConfig(**{**MODERN_SIZES["tiny"], "n_layer": 4}))
    assert u_net.skip_pairs == ((1, 2), (0, 3))
    with torch.no_grad():
        u_net.skip_weights.copy_(torch.tensor([0.5, 2.0]))
    # outputs: layer 0 -> 1; layer 1 -> 3; layer 2's input 3 + 0.5 * 3 = 4.5 -> 7.5; layer 3's input 7.5 + 2 * 1 = 9.5
    assert inputs_through(u_net) == [0.0, 1.0, 4.5, 9.5]
    single = ModernGPT(ModernConfig(**{**MODERN_SIZES["tiny"], "n_layer": 4}, skip_pairs=((0, 2),)))
    with torch.no_grad():
        single.skip_weights.fill_(3.0)
    assert inputs_through(single) == [0.0, 1.0, 3.0 + 3 * 1.0, 9.0]
    assert ModernGPT(ModernConfig(**{**MODERN_SIZES["tiny"], "n_layer": 4}, unet=False)).skip_weights is None
    with pytest.raises(ValueError, match="skip_pairs"):
        ModernGPT(ModernConfig(**{**MODERN_SIZES["tiny"], "n_layer": 4}, skip_pairs=((2, 1),)))


def test_the_script_parses_skip_pairs_and_starts_the_stream_weight():
    import train_gpt2_speedrun as sr
    from kit.core.errors import UserError

    model = sr.build_model(parsed("--model-size", "124m", "--seq-len", "256", "--bigram-buckets", "0", "--skip-pairs", "4:7", "--residual-start", "1.1"))
    assert model.skip_pairs == ((4, 7),) and model.skip_weights.shape == (1,)
    assert all(block.residual_mix[0].item() == pytest.approx(1.1) for block in model.blocks)
    assert sr.skip_pairs("4:7,2:9", 12) == ((4, 7), (2, 9)) and sr.skip_pairs("", 12) == ()
    for bad in ("7:4", "4-7", "4:12", "4:7:9"):
        with pytest.raises(UserError, match="--skip-pairs"):
            sr.skip_pairs(bad, 12)
    with pytest.raises(UserError, match="sublayer scales"):
        sr.build_model(parsed("--residual-start", "1.1", "--sublayer-scales", "1"))



def test_attention_after_the_backout_layer_reads_its_output():
    """attn_from_backout: the attentions of layers 2 and 3 take the normed output of layer 1 (the backout layer), those
    of layers 0 and 1 the normed mixed stream; without a backout layer it is refused."""
    from kit.modeling.modern import rms_norm

    model = v2_model(**LATE_ATTN_PARTS)
    seen, outputs = {}, {}
    for i, block in enumerate(model.blocks):
        block.attn.register_forward_pre_hook(lambda module, args, i=i: seen.__setitem__(i, args[0]))
        block.register_forward_hook(lambda module, args, out, i=i: outputs.__setitem__(i, out))
        block.register_forward_pre_hook(lambda module, args, i=i: seen.__setitem__(f"stream{i}", module.mix_in(args[0], args[1], args[4])))
    with torch.no_grad():
        model(torch.randint(0, 1000, (1, 2 * BLOCK), generator=torch.Generator().manual_seed(0)))
    for i in (2, 3):
        torch.testing.assert_close(seen[i], rms_norm(outputs[1]))
    for i in (0, 1):
        torch.testing.assert_close(seen[i], rms_norm(seen[f"stream{i}"]))
    with pytest.raises(ValueError, match="needs backout_layer"):
        ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], attn_from_backout=True))


# ----- Adam every other step -----

def test_adam_every_two_steps_on_summed_gradients_and_a_resumed_run_follows(tmp_path):
    """--adam-every 2 over 5 steps: Muon's matrices change at every step, Adam's parameters only after steps 2 and 4 and
    at the last step (5); a checkpoint after step 3 keeps the gradients Adam has not used yet, and the run resumed from
    it continues the uninterrupted run's losses."""
    import train_gpt2_speedrun as sr
    from kit.loop.train import main

    flags = ["--model-size", "tiny", "--data", "synthetic", "--device", "cpu", "--batch-tokens", "256", "--val-tokens", "512",
             "--max-steps", "5", "--val-every", "0", "--export", "0", "--adam-every", "2", "--compile", "0"]
    assert main(sr.RECIPE, [*flags, "--save-every", "1", "--keep-checkpoints", "6", "--out-dir", str(tmp_path / "full")]) == 0
    saved = [torch.load(tmp_path / "full" / "checkpoints" / f"ckpt_step{at:06d}.pt", map_location="cpu", weights_only=False) for at in range(1, 6)]
    model = sr.build_model(parsed())
    for step in range(1, 5):  # what step `step + 1` changed
        before, after = saved[step - 1]["model"], saved[step]["model"]
        assert not torch.equal(before["blocks.0.attn.qkv.weight"], after["blocks.0.attn.qkv.weight"])  # Muon: every step
        # Adam: the head (zero at the start, so the first gradients reach it alone) after steps 2, 4 and 5
        assert torch.equal(before["lm_head.weight"], after["lm_head.weight"]) is ((step + 1) % 2 == 1 and step + 1 < 5)
    adam_names = {name for name, p in model.named_parameters() for group in sr.build_optimizers(model, parsed())[0].param_groups
                  if any(p is q for q in group["params"])}
    assert "lm_head.weight" in saved[2]["pending_grads"] and set(saved[2]["pending_grads"]) <= adam_names  # after step 3 Adam waits
    assert not saved[3]["pending_grads"]  # after step 4 nothing does
    assert_resumed_runs_follow_the_full_run(flags, tmp_path, (3,), last_step=5)


def test_cautious_decay_adam_is_adam_then_decays_where_the_update_shrinks_the_weight():
    """CautiousDecayAdam: without a decay it is torch's Adam; with one, each weight Adam moved toward zero shrinks
    further by decay * (lr / base_lr)^2 of its value before the step, the others not at all. --adam-cwd gives the head,
    token embedding and the other embeddings the public record's decays."""
    import copy

    import train_gpt2_speedrun as sr
    from kit.modeling.optim import CautiousDecayAdam

    g = torch.Generator().manual_seed(0)
    start, grads = torch.randn(50, generator=g), [torch.randn(50, generator=g) for _ in range(2)]

    def run(cls, **group):
        p = torch.nn.Parameter(start.clone())
        opt = cls([{"params": [p], "lr": 0.05, "base_lr": 0.1, **group}], betas=(0.8, 0.95))
        for grad in grads:
            p.grad = grad.clone()
            opt.step()
        return p.detach(), opt

    plain, _ = run(torch.optim.Adam)
    torch.testing.assert_close(run(CautiousDecayAdam)[0], plain, rtol=0, atol=0)  # no decay: torch's Adam itself
    # by hand: Adam's own steps from the decayed run's weights, then the decay where that step shrank the weight
    p = torch.nn.Parameter(start.clone())
    adam = torch.optim.Adam([{"params": [p], "lr": 0.05}], betas=(0.8, 0.95))
    for grad in grads:
        old = p.detach().clone()
        p.grad = grad.clone()
        adam.step()
        with torch.no_grad():
            p -= 0.2 * 0.25 * old * ((old - p) * old > 0)
    decayed, _ = run(CautiousDecayAdam, cautious_wd=0.2)
    torch.testing.assert_close(decayed, p.detach(), rtol=0, atol=1e-6)  # its own update: the same formula, other rounding
    assert not torch.equal(decayed, plain)
    # the warm-up changes nothing; the state has Adam's keys, and a loaded state steps on as the original
    q = torch.nn.Parameter(start.clone())
    opt = CautiousDecayAdam([{"params": [q], "lr": 0.05, "base_lr": 0.1, "cautious_wd": 0.2}], betas=(0.8, 0.95))
    opt.warm_up()
    assert torch.equal(q.detach(), start) and not opt.state
    q.grad = grads[0].clone()
    opt.step()
    assert set(opt.state[q]) == {"step", "exp_avg", "exp_avg_sq"}
    twin = torch.nn.Parameter(q.detach().clone())
    loaded = CautiousDecayAdam([{"params": [twin], "lr": 0.05, "base_lr": 0.1, "cautious_wd": 0.2}], betas=(0.8, 0.95))
    loaded.load_state_dict(copy.deepcopy(opt.state_dict()))  # as from a checkpoint file: its own tensors
    for param, optimizer in ((q, opt), (twin, loaded)):
        param.grad = grads[1].clone()
        optimizer.step()
    assert torch.equal(twin.detach(), q.detach()) and torch.equal(q.detach(), decayed)
    cfg = parsed("--adam-cwd", "1")
    model = sr.build_model(cfg)
    adam = sr.build_optimizers(model, cfg)[0]
    assert isinstance(adam, CautiousDecayAdam) and not isinstance(sr.build_optimizers(model, parsed("--adam-cwd", "0"))[0], CautiousDecayAdam)
    assert parsed().adam_cwd == 1 and parsed("--v2", "0").adam_cwd == 0  # V2's default since it crossed 4 steps sooner at two seeds

    def decay_of(param):
        return next(g.get("cautious_wd", 0) for g in adam.param_groups if any(q is param for q in g["params"]))

    assert decay_of(model.lm_head.weight) == decay_of(model.embed.weight) == pytest.approx(4.8e-5)
    assert decay_of(model.bigram_embed.weight) == decay_of(model.value_embeds[0].weight) == pytest.approx(0.009)
    assert decay_of(model.blocks[0].residual_mix) == 0


def test_cautious_decay_adam_fills_its_scalars_once_a_group_and_each_group_steps_with_its_own():
    """The step's 0-d scalars are filled once per group (its parameters share the step count, LR and decay), and
    each of several groups with several parameters steps exactly as that group alone would."""
    from kit.modeling.optim import CautiousDecayAdam

    g = torch.Generator().manual_seed(1)
    starts = [torch.randn(6, 4, generator=g) for _ in range(4)]
    grads = [[torch.randn(6, 4, generator=g) for _ in starts] for _ in range(3)]
    specs = [{"lr": 0.05, "base_lr": 0.1, "cautious_wd": 0.2}, {"lr": 0.3, "base_lr": 0.3, "cautious_wd": 0.01, "betas": (0.5, 0.9)}]

    def run(groups_of):  # groups_of: lists of parameter indices, one list per optimizer group
        params = [torch.nn.Parameter(t.clone()) for t in starts]
        opts = [CautiousDecayAdam([{"params": [params[i] for i in ids], **specs[k]} for k, ids in group], betas=(0.8, 0.95))
                for group in groups_of]
        fills = []
        for opt in opts:
            real_fill = opt._fill
            opt._fill = lambda scalars, group, t, real_fill=real_fill: (fills.append(t), real_fill(scalars, group, t))
        for step_grads in grads:
            for p, grad in zip(params, step_grads):
                p.grad = grad.clone()
            for opt in opts:
                opt.step()
        return [p.detach() for p in params], fills

    together, fills = run([[(0, [0, 1]), (1, [2, 3])]])
    apart, _ = run([[(0, [0])], [(0, [1])], [(1, [2])], [(1, [3])]])
    for a, b in zip(together, apart):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert fills == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]  # two groups, three steps: one fill each


def test_cautious_decay_adams_warm_up_compiles_the_graph_its_steps_use():
    """The compiled update (here compiled on the CPU) is built in the warm-up for the parameters' shapes, dtype and
    type (nn.Parameter): the steps after it compile nothing, whatever a parameter's shape."""
    import torch._dynamo

    from kit.modeling.optim import CautiousDecayAdam

    torch._dynamo.reset()
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in ((30, 16), (7, 5))]
    opt = CautiousDecayAdam([{"params": params, "lr": 0.05, "base_lr": 0.1, "cautious_wd": 0.2}], betas=(0.8, 0.95))
    opt.compiled_on = ("cpu",)
    opt.warm_up()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
    assert all(opt.state[p]["step"] == 2 for p in params)
