import itertools

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, GPT2Config, GPT2Model, Mamba2Config, Mamba2Model

from recursive_latent import RecursiveLatentForCausalLM

from .conftest import TINY_GPT2, TINY_MAMBA2, make_config

GRID = list(itertools.product(["gpt2", "mamba2"], ["latent", "sequence"], ["transformer", "mamba2"]))


def build(backbone="gpt2", seed=0, **kwargs):
    torch.manual_seed(seed)
    return RecursiveLatentForCausalLM(make_config(backbone, **kwargs)).eval()


@pytest.mark.parametrize("backbone, design, block", GRID)
def test_forward_backward_reason_generate(backbone, design, block, batch):
    input_ids, attention_mask, loop_labels = batch
    model = build(backbone, core_design=design, core_block=block).train()
    out = model(input_ids, attention_mask, loop_labels=loop_labels)
    assert out.loop_logits.shape == (3, 4, 100) and out.logits.shape == (3, 1, 100)
    assert out.latents.shape == (3, 4, 32)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["model.blocks.0.mlp.up.weight"].abs().sum() > 0
    assert grads["model.gate"].abs().sum() > 0
    assert all(g is None for name, g in grads.items() if name.startswith("model.backbone."))  # frozen backbone

    model.eval()
    reasoned = model.reason(input_ids, attention_mask)
    assert reasoned.answer_ids.shape == reasoned.loops.shape == reasoned.halted.shape == (3,)
    assert reasoned.trace_ids.shape == (3, int(reasoned.loops.max()))
    generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=1, do_sample=False)
    assert generated.shape == (3, 11)


def test_full_mode_trains_the_backbone(batch):
    input_ids, attention_mask, loop_labels = batch
    model = build(backbone_mode="full").train()
    model(input_ids, attention_mask, loop_labels=loop_labels).loss.backward()
    assert model.model.backbone.h[0].attn.c_attn.weight.grad.abs().sum() > 0


def test_loss_ignores_padded_loops(batch):
    input_ids, attention_mask, loop_labels = batch
    model = build()
    out = model(input_ids, attention_mask, loop_labels=loop_labels)
    logits, labels = out.loop_logits.flatten(0, 1), loop_labels.flatten()
    kept = labels != -100
    expected = torch.nn.functional.cross_entropy(logits[kept], labels[kept])
    torch.testing.assert_close(out.loss, expected)




@pytest.mark.parametrize("backbone, design, block", GRID)
def test_reason_agrees_with_loop_logits_and_batching(backbone, design, block, batch):
    input_ids, attention_mask, _ = batch
    model = build(backbone, core_design=design, core_block=block, seed=3)
    # Make <HALT> (id 2) likely at some loops so halting really happens in this untrained model.
    with torch.no_grad():
        model.get_output_embeddings().weight[2] *= 40
    together = model.reason(input_ids, attention_mask, max_loops=6)
    loop_logits = model(input_ids, attention_mask, num_loops=6).loop_logits
    for row in range(3):
        loops = int(together.loops[row])
        torch.testing.assert_close(together.trace_ids[row, :loops], loop_logits[row, :loops].argmax(-1))
        alone = model.reason(input_ids[row : row + 1, attention_mask[row].bool()], max_loops=6)
        assert int(alone.loops[0]) == loops and bool(alone.halted[0]) == bool(together.halted[row])
        assert int(alone.answer_ids[0]) == int(together.answer_ids[row])
        torch.testing.assert_close(alone.trace_ids[0, :loops], together.trace_ids[row, :loops])
    assert together.halted.any(), "the test needs at least one halting example"


def test_halted_examples_leave_the_batch(batch, monkeypatch):
    input_ids, attention_mask, _ = batch
    model = build(seed=3)
    with torch.no_grad():
        model.get_output_embeddings().weight[2] *= 40
    rows_per_loop = []
    step = model.model.loop_step
    monkeypatch.setattr(model.model, "loop_step", lambda latent, context, loop: rows_per_loop.append(latent.shape[0]) or step(latent, context, loop))
    out = model.reason(input_ids, attention_mask, max_loops=6)
    assert sum(rows_per_loop) == int(out.loops.sum())  # the cost is the sum of each example's loops


def test_reason_stops_at_the_limit_without_halting(batch):
    input_ids, attention_mask, _ = batch
    model = build()
    with torch.no_grad():
        model.get_output_embeddings().weight[2] = -10 * model.model.memory_norm.weight.new_ones(32)  # never <HALT>
    out = model.reason(input_ids, attention_mask, max_loops=9)
    assert out.loops.tolist() == [9, 9, 9] and not out.halted.any()
    assert out.answer_ids.tolist() == out.trace_ids[:, -1].tolist()
    with pytest.raises(ValueError, match=r"`max_loops` must be a positive integer \(got 0\)"):
        model.reason(input_ids, attention_mask, max_loops=0)


def test_zeroed_lifeline_gate_changes_outputs(batch):
    input_ids, attention_mask, _ = batch
    model = build()
    before = model(input_ids, attention_mask, num_loops=4).loop_logits
    with torch.no_grad():
        model.model.gate.zero_()
    after = model(input_ids, attention_mask, num_loops=4).loop_logits
    assert (before - after).abs().max() > 1e-3


def test_latent_is_replaced_by_what_it_reads_unless_residual(batch):
    # One real token and no lifeline: attention can only read that token, so without the residual every loop
    # computes the same latent from it, whatever the latent was before. With the residual the loops differ.
    input_ids, attention_mask, _ = batch
    input_ids, attention_mask = input_ids[:, -1:], attention_mask[:, -1:]
    for residual in (False, True):
        model = build(lifeline=False, latent_residual=residual)
        latents = model(input_ids, attention_mask, num_loops=3).latents
        same = torch.allclose(latents[:, 0], latents[:, 2], atol=1e-5)
        assert same != residual


@pytest.mark.parametrize("binding_conv", ["none", "embeddings", "memory"])
def test_binding_conv_placement(binding_conv, batch):
    # The embeddings conv lets the last token's embedding see the token before it; it belongs to the backbone and
    # freezes with it. The memory conv sits on the core side and always trains.
    input_ids, attention_mask, _ = batch
    model = build(binding_conv=binding_conv, backbone_mode="frozen")
    changed = input_ids.clone()
    changed[:, -2] = (changed[:, -2] + 1) % 97 + 3
    embedding_layer = lambda ids: model.model.run_backbone(ids, attention_mask)[0][:, -1]
    sees_previous_token = (embedding_layer(input_ids) - embedding_layer(changed)).abs().max() > 1e-6
    assert sees_previous_token == (binding_conv == "embeddings")
    if binding_conv != "none":
        assert model.model.binding.conv.weight.requires_grad == (binding_conv == "memory")


@pytest.mark.parametrize("auto_class", [AutoModel, AutoModelForCausalLM])
def test_a_frozen_backbone_stays_frozen_after_loading(tmp_path, auto_class):
    build(backbone_mode="frozen").save_pretrained(tmp_path)
    loaded = auto_class.from_pretrained(tmp_path)
    trainable = {name for name, p in loaded.named_parameters() if p.requires_grad}
    assert trainable and not any(".backbone." in name or name.startswith("backbone.") for name in trainable)
    assert any("blocks.0.mlp.up" in name for name in trainable)


def test_left_and_right_padding_agree(batch):
    input_ids, attention_mask, _ = batch
    model = build()
    left = model(input_ids, attention_mask, num_loops=3).loop_logits
    lengths = attention_mask.sum(1)
    right_ids, right_mask = torch.zeros_like(input_ids), torch.zeros_like(attention_mask)
    for row in range(3):
        right_ids[row, : lengths[row]] = input_ids[row, attention_mask[row].bool()]
        right_mask[row, : lengths[row]] = 1
    right = model(right_ids, right_mask, num_loops=3).loop_logits
    torch.testing.assert_close(left, right, atol=1e-4, rtol=1e-4)


def test_truncated_backprop_and_checkpointing(batch):
    input_ids, attention_mask, loop_labels = batch
    model = build().train()
    full = model(input_ids, attention_mask, loop_labels=loop_labels)
    full.loss.backward()
    full_grad = model.model.gate.grad.clone()
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(input_ids, attention_mask, loop_labels=loop_labels).loss.backward()
    torch.testing.assert_close(model.model.gate.grad, full_grad)  # checkpointing changes memory, not gradients
    model.zero_grad()
    model(input_ids, attention_mask, loop_labels=loop_labels, grad_loops=1).loss.backward()
    assert not torch.allclose(model.model.gate.grad, full_grad)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, ids, mask: m(ids[:0], mask[:0]), r"non-empty"),
        (lambda m, ids, mask: m(ids + 200, mask), r"outside the model's vocabulary \[0, 100\)"),
        (lambda m, ids, mask: m(ids.repeat(1, 7), mask.repeat(1, 7)), r"70 tokens but the backbone reads at most 64"),
        (lambda m, ids, mask: m(ids, mask[:, :5]), r"does not match"),
        (lambda m, ids, mask: m(ids, mask, loop_labels=torch.zeros(3, 9, dtype=torch.long)), r"asks for 9 loops but `max_loops` is 4"),
        (lambda m, ids, mask: m(ids, mask * 0), r"at least one real token"),
    ],
)
def test_bad_input_raises_a_clear_error(call, message, batch):
    input_ids, attention_mask, _ = batch
    with pytest.raises(ValueError, match=message):
        call(build(), input_ids, attention_mask)


def test_position_free_gpt2_reads_prompts_past_its_position_table(batch):
    """With backbone_positions=False every token is position 0, so a prompt longer than n_positions (64) is read,
    and causally: the first 10 tokens' states are the same as when the prompt stops there."""
    input_ids, attention_mask, _ = batch
    model = build(backbone_positions=False).eval()
    long_ids, long_mask = input_ids.repeat(1, 7), attention_mask.repeat(1, 7)
    with torch.no_grad():
        short_states = model.model.run_backbone(input_ids, attention_mask)
        long_states = model.model.run_backbone(long_ids, long_mask)
        model(long_ids, long_mask)  # the model's own input check accepts 70 tokens
    for short, long in zip(short_states, long_states):
        torch.testing.assert_close(long[:, : input_ids.shape[1]], short)


@pytest.mark.parametrize("backbone", ["gpt2", "mamba2"])
def test_plain_transformers_backbone_loads_from_a_local_dir(backbone, tmp_path, batch):
    spec = dict(TINY_GPT2 if backbone == "gpt2" else TINY_MAMBA2)
    spec.pop("model_type")
    torch.manual_seed(0)
    plain = GPT2Model(GPT2Config(**spec)) if backbone == "gpt2" else Mamba2Model(Mamba2Config(**spec))
    plain.save_pretrained(tmp_path)
    model = RecursiveLatentForCausalLM.from_backbone(str(tmp_path), max_loops=4, pad_token_id=0, halt_token_id=2)
    assert model.config.backbone_name_or_path == str(tmp_path)
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(model.model.backbone.state_dict()[name], tensor)
    input_ids, attention_mask, _ = batch
    assert model.reason(input_ids, attention_mask).answer_ids.shape == (3,)


def test_automodel_is_the_base_model(tiny_config):
    from recursive_latent import RecursiveLatentModel

    assert isinstance(AutoModel.from_config(tiny_config), RecursiveLatentModel)


def test_fixed_and_velocity_halting_match_the_loop_outputs(batch, monkeypatch):
    input_ids, attention_mask, _ = batch
    model = build(seed=3, fixed_loops=5)
    with torch.no_grad():
        model.get_output_embeddings().weight[2] *= 40  # some <HALT> predictions, so the answer rule is exercised
        out = model(input_ids, attention_mask, num_loops=8)
    predictions = out.loop_logits.argmax(-1)

    def last_answer(loops):  # the last prediction among the first `loops` that is not <HALT>, else the pad id
        answers = [[t for t in row[:n] if t != 2] for row, n in zip(predictions.tolist(), loops)]
        return [a[-1] if a else model.config.pad_token_id for a in answers]

    fixed = model.reason(input_ids, attention_mask, halting="fixed")
    assert fixed.loops.tolist() == [5, 5, 5] and fixed.halted.all()
    assert fixed.answer_ids.tolist() == last_answer([5, 5, 5])

    latents = out.latents  # what the head reads after each loop
    speed = (latents[:, 1:] - latents[:, :-1]).norm(dim=-1) / latents[:, 1:].norm(dim=-1)  # (B, 7): loops 2..8
    threshold = speed[:, 2].median().item()  # stops some rows earlier than others
    model.config.halt_velocity = threshold
    rows_per_loop = []
    step = model.model.loop_step
    monkeypatch.setattr(model.model, "loop_step", lambda latent, context, loop: rows_per_loop.append(latent.shape[0]) or step(latent, context, loop))
    velocity = model.reason(input_ids, attention_mask, max_loops=8, halting="velocity")
    converged = speed < threshold
    expected = torch.where(converged.any(1), converged.int().argmax(1) + 2, torch.full((3,), 8))
    assert velocity.loops.tolist() == expected.tolist() and len(set(expected.tolist())) > 1
    assert velocity.halted.tolist() == converged.any(1).tolist()
    assert velocity.answer_ids.tolist() == last_answer(expected.tolist())
    assert sum(rows_per_loop) == int(velocity.loops.sum())  # converged examples stop costing compute
    with pytest.raises(ValueError, match="`halting` must be"):
        model.reason(input_ids, attention_mask, halting="never")


def test_head_halting_stops_each_example_when_p_halt_passes_the_threshold(batch, monkeypatch):
    input_ids, attention_mask, _ = batch
    model = build(seed=3, halt_head=True)
    with torch.no_grad():
        out = model(input_ids, attention_mask, num_loops=8)
    p_halt = torch.sigmoid(out.halt_logits)  # (B, 8)
    model.config.halt_threshold = p_halt[:, 3].median().item()  # stops some rows earlier than others
    stops = p_halt >= model.config.halt_threshold
    expected = torch.where(stops.any(1), stops.int().argmax(1) + 1, torch.full((3,), 8))
    rows_per_loop = []
    step = model.model.loop_step
    monkeypatch.setattr(model.model, "loop_step", lambda latent, context, loop: rows_per_loop.append(latent.shape[0]) or step(latent, context, loop))
    head = model.reason(input_ids, attention_mask, max_loops=8, halting="head")
    assert head.loops.tolist() == expected.tolist() and len(set(expected.tolist())) > 1
    assert head.halted.tolist() == stops.any(1).tolist()
    assert sum(rows_per_loop) == int(head.loops.sum())
    with pytest.raises(ValueError, match="needs a halting head"):
        build().reason(input_ids, attention_mask, halting="head")
    with pytest.raises(ValueError, match="needs `halt_head=True`"):
        make_config(halting="head")


def test_answer_ids_add_the_hold_and_halting_head_terms(batch):
    input_ids, attention_mask, _ = batch
    model = build(seed=1, halt_head=True).train()
    halt, answers = model.config.halt_token_id, torch.tensor([5, 6, 7])
    loop_labels = torch.tensor([[9, 5, halt, -100], [6, halt, halt, halt], [8, 9, 7, halt]])
    out = model(input_ids, attention_mask, loop_labels=loop_labels, answer_ids=answers, hold_answer=True)
    logits = out.loop_logits.float()
    base = torch.nn.functional.cross_entropy(logits.flatten(0, 1), loop_labels.flatten(), ignore_index=-100)
    others = logits.clone()
    others[..., halt] = float("-inf")
    at_halt = loop_labels == halt
    hold = torch.nn.functional.cross_entropy(others[at_halt], answers[:, None].expand(3, 4)[at_halt])
    right = (others.argmax(-1) == answers[:, None]).float()
    counted = loop_labels != -100
    halting = torch.nn.functional.binary_cross_entropy_with_logits(out.halt_logits[counted], right[counted])
    torch.testing.assert_close(out.loss, base + hold + halting)
    out.loss.backward()
    assert model.halt_head.weight.grad.abs().sum() > 0
    plain = model(input_ids, attention_mask, loop_labels=loop_labels)  # no answer ids: the loop cross-entropy only
    torch.testing.assert_close(plain.loss, base)


def test_backbone_positions_off_ignores_position_ids(batch):
    input_ids, attention_mask, _ = batch
    shifted = (attention_mask.cumsum(1) - 1).clamp(min=0) + 7
    for positions, same in ((True, False), (False, True)):
        model = build(backbone_positions=positions)
        with torch.no_grad():
            a = model(input_ids, attention_mask, num_loops=3).loop_logits
            b = model(input_ids, attention_mask, num_loops=3, position_ids=shifted).loop_logits
        assert torch.allclose(a, b) == same


def test_newton_schulz_latent_is_near_orthogonal(batch):
    from recursive_latent.modeling_recursive import newton_schulz

    x = torch.randn(5, 64)
    m = newton_schulz(x, 8).reshape(5, 8, 8) / 8**0.5
    singular_values = torch.linalg.svdvals(m)
    assert singular_values.min() > 0.6 and singular_values.max() < 1.3  # Muon's iteration: roughly orthogonal
    input_ids, attention_mask, _ = batch
    model = build(latent_newton_schulz=True, newton_schulz_rows=4)
    latents = model(input_ids, attention_mask, num_loops=2).latents  # (B, 2, 32): each a 4 x 8 near-orthogonal view
    assert torch.linalg.svdvals(latents.reshape(3, 2, 4, 8) / 8**0.5).sub(1).abs().max() < 0.4
    with pytest.raises(ValueError, match="newton_schulz_rows"):
        make_config(latent_newton_schulz=True, newton_schulz_rows=5)


def test_muon_steps_the_core_matrices_and_follows_the_scheduler(batch):
    from recursive_latent.optimization import muon_with_adamw

    input_ids, attention_mask, loop_labels = batch
    model = build().train()
    names = {name for name, p in model.named_parameters() if p.ndim == 2}
    optimizer = muon_with_adamw(model, lr=1e-2, weight_decay=0.01, decay_names=names)
    muon, adamw = optimizer.optimizers
    core = {id(p) for block in model.model.blocks for p in block.parameters() if p.ndim == 2}
    assert {id(p) for p in muon.param_groups[0]["params"]} == core
    assert len(optimizer.param_groups) == len(muon.param_groups) + len(adamw.param_groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model(input_ids, attention_mask, loop_labels=loop_labels).loss.backward()
    optimizer.step()
    scheduler.step()
    assert all(group["lr"] == 5e-3 for group in optimizer.param_groups)  # one scheduler drives both optimizers
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert "model.blocks.0.attn.query.weight" in changed and "head_norm.weight" in changed
    restored = muon_with_adamw(model, lr=1e-2, weight_decay=0.01, decay_names=names)
    restored.load_state_dict(optimizer.state_dict())
    assert restored.optimizers[0].state_dict()["state"].keys() == muon.state_dict()["state"].keys()


def test_muon_follows_the_scheduler_once_wrapped_by_accelerate():
    """accelerate reloads the state of every optimizer it wraps, which gives torch's optimizers new group dicts: the
    scheduler the Trainer builds must still reach the learning rates the optimizers read (it once did not, and every
    warm-up and decay of a Muon run was a constant learning rate)."""
    from accelerate import Accelerator

    from recursive_latent.optimization import muon_with_adamw

    model = build()
    wrapped = Accelerator(cpu=True).prepare(muon_with_adamw(model, lr=1e-2, weight_decay=0.0, decay_names=set()))
    scheduler = torch.optim.lr_scheduler.LambdaLR(wrapped, lambda step: 0.1 * (step + 1))
    for _ in range(2):
        wrapped.step()  # no gradients: nothing moves, only the order torch expects
        scheduler.step()
    for optimizer in wrapped.optimizer.optimizers:
        assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([3e-3] * len(optimizer.param_groups))


def script_loop_logits(model, monkeypatch, table):
    """Make loop l of row r give the logits `table[r, l]` in `forward` and in `reason()` (whose batch shrinks as
    examples stop): the latent carries the row, the loop's output the row and the loop."""
    monkeypatch.setattr(model.model, "init_latent", lambda context: torch.arange(len(table), dtype=torch.float)[:, None])
    monkeypatch.setattr(model.model, "loop_step",
                        lambda latent, context, loop: (latent, torch.cat([latent, torch.full_like(latent, loop)], -1)))
    monkeypatch.setattr(model, "head", lambda out: table[out[..., 0].long(), out[..., 1].long()])


def test_token_halting_waits_for_a_sure_halt(batch, monkeypatch):
    """With `halt_token_threshold`, a `<HALT>` that is the loop's best token but below the threshold neither stops
    the loop nor answers; `forward`'s answer (what `generate` writes) stays the one `reason()` gives."""
    input_ids, attention_mask, _ = batch
    model = build()
    table = torch.zeros(3, 6, model.config.backbone_config.vocab_size)
    sure, unsure = 20.0, 3.0  # <HALT> (id 2) the best token with p ~ 1, and with p < 0.5
    for row, loops in enumerate([[(10, 5.0), (2, unsure), (11, 5.0), (2, sure)],  # answers 10, or 11 past the unsure
                                 [(10, 5.0), (2, unsure), (2, unsure), (2, sure)],  # 10 either way, 4 loops at 0.5
                                 [(12, 5.0)] * 5 + [(2, unsure)]]):  # never a sure <HALT>: 6 loops, answer 12
        for loop, (token, logit) in enumerate(loops):
            table[row, loop, token] = logit
        table[row, len(loops):, 2] = sure
    assert 0.1 < table[0, 1].softmax(-1)[2] < 0.5
    script_loop_logits(model, monkeypatch, table)
    for threshold, loops, answers, halted in [(0.0, [2, 2, 6], [10, 10, 12], [True, True, True]),
                                              (0.5, [4, 4, 6], [11, 10, 12], [True, True, False])]:
        model.config.halt_token_threshold = threshold
        out = model.reason(input_ids, attention_mask, max_loops=6)
        assert (out.loops.tolist(), out.answer_ids.tolist(), out.halted.tolist()) == (loops, answers, halted)
        generated = model(input_ids, attention_mask, num_loops=6).logits[:, -1].argmax(-1)
        assert generated.tolist() == answers
    with pytest.raises(ValueError, match=r"`halt_token_threshold` must be a number in \[0, 1\) \(got 1\)"):
        make_config(halt_token_threshold=1)
