"""Tests for hpl.py and envs.py: the math against known answers, masks, segmentation, curriculum, the rollout
engine, the environments against the real benchmarks' strings, and a smoke run of the whole pipeline.

Run: python -m pytest -q
"""
import json
import math
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

import envs
import hpl
from envs import (ALFWORLD_SPLITS, CAN_HOLD, CLEANABLE, COOLABLE, ENVS, HEATABLE, INSTRUCTIONS, OPENABLE, PICKUPABLE,
                  PLACE_PRIOR, RECEPTACLE_OBJECTS, ROOMS, TOGGLEABLE, ALFWorld, ALFWorldReal, heldout_pair,
                  in_seen_bucket, parse_goal)

ROOT = Path(__file__).resolve().parent
REFERENCE = ROOT.parent / "shared" / "reference"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference is absent")


# ---------------------------------------------------------------------------------------------------------
# helpers: a small deterministic env and a tiny model/tokenizer
# ---------------------------------------------------------------------------------------------------------
class BoxEnv(envs.TextEnv):
    """Go to the right box, then open it. A toy with the envs.py contract, for engine tests."""
    name = "alfworld"            # borrows ALFWorld's instruction and wrapper strings
    default_max_steps = 5

    def __len__(self):
        return 50

    def task_type(self, i):
        return "even" if i % 2 == 0 else "odd"

    def _reset(self, i):
        self.target, self.at = 1 + envs.stable_rng(self.seed, i).randrange(4), 0
        return f"You see box 1, box 2, box 3 and box 4.\nYour task is to: open box {self.target}."

    def _step(self, action):
        if action == f"go to box {self.target}" and self.at != self.target:
            self.at = self.target
            return f"You arrive at box {self.target}.", 0.0, False, {"won": False}
        if action == f"open box {self.target}" and self.at == self.target:
            return "You open it.", 1.0, True, {"won": True}
        return "Nothing happens.", 0.0, False, {"won": False}

    def expert_step(self):
        if self.at != self.target:
            return f"I need box {self.target}.", f"go to box {self.target}", "find"
        return "I am at the box.", f"open box {self.target}", "open"


@pytest.fixture(scope="module")
def tiny():
    """A tiny tokenizer + random Qwen2 on BoxEnv's text (a few hundred ms)."""
    torch.manual_seed(0)
    cfg = hpl.Config(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=64, max_len=4096)
    env = BoxEnv()
    demos = [hpl.expert_episode(env, i, cfg) for i in range(40)]
    tok = hpl.train_tiny_tokenizer([json.dumps(d["messages"]) for d in demos], cfg.vocab_size)
    model = hpl.build_tiny_model(cfg, len(tok)).eval()
    return cfg, env, demos, tok, model


# ---------------------------------------------------------------------------------------------------------
# Eqs. (3)-(5): the DPO loss, against hand-computed values and TRL's semantics
# ---------------------------------------------------------------------------------------------------------
def test_dpo_loss_is_ln2_when_policy_equals_reference():
    logps = torch.tensor([-12.0, -3.5, -40.0])
    other = torch.tensor([-10.0, -7.0, -1.0])
    losses, rc, rr = hpl.dpo_loss(logps, other, logps, other, beta=0.3)
    assert torch.allclose(losses, torch.full((3,), math.log(2)))
    assert (rc > rr).float().mean().item() == 0.0          # ties are not ">" (TRL's accuracy)


def test_dpo_loss_known_value_and_rewards():
    # beta 0.1, margin (pi_w - ref_w) - (pi_l - ref_l) = 10 -> -log sigmoid(1) = softplus(-1) = 0.3133
    pc, pr = torch.tensor([-5.0], requires_grad=True), torch.tensor([-20.0], requires_grad=True)
    losses, rc, rr = hpl.dpo_loss(pc, pr, torch.tensor([-6.0]), torch.tensor([-11.0]), beta=0.1)
    assert losses.item() == pytest.approx(0.3133, abs=1e-4)
    assert rc.item() == pytest.approx(0.1) and rr.item() == pytest.approx(-0.9)
    assert not rc.requires_grad and not rr.requires_grad    # implicit rewards are detached
    losses.sum().backward()
    s = torch.sigmoid(torch.tensor(-1.0)).item()            # d/dpc of -log sigma(beta*m) = -beta*sigma(-beta*m)
    assert pc.grad.item() == pytest.approx(-0.1 * s, abs=1e-6)
    assert pr.grad.item() == pytest.approx(0.1 * s, abs=1e-6)


def test_hpl_loss_is_the_unweighted_sum_of_eq8():
    total = hpl.hpl_loss(torch.tensor(0.5), {"traj": torch.tensor(0.25), "step": torch.tensor(1.0),
                                             "group": torch.tensor(2.0)})
    assert total.item() == pytest.approx(3.75)


# ---------------------------------------------------------------------------------------------------------
# sequence_logps: shift, fp32 log-softmax, gather, mask, sum
# ---------------------------------------------------------------------------------------------------------
def naive_logps(logits, ids, mask):
    out = []
    for b in range(ids.shape[0]):
        total = 0.0
        for t in range(1, ids.shape[1]):
            if mask[b, t]:
                total += torch.log_softmax(logits[b, t - 1].double(), -1)[ids[b, t]].item()
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def test_sequence_logps_matches_naive_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    ids = torch.randint(0, 11, (3, 7), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1]])
    got = hpl.sequence_logps(logits, ids, mask)
    assert torch.allclose(got.double(), naive_logps(logits, ids, mask), atol=1e-5)
    # extra right padding (any ids, any logits, mask 0) changes nothing
    padded = hpl.sequence_logps(torch.cat([logits, torch.randn(3, 4, 11, generator=g)], 1),
                                torch.cat([ids, torch.randint(0, 11, (3, 4), generator=g)], 1),
                                torch.cat([mask, torch.zeros(3, 4, dtype=torch.long)], 1))
    assert torch.allclose(padded, got)


def test_sequence_logps_gradient_only_reaches_masked_positions():
    logits = torch.randn(2, 6, 5, requires_grad=True)
    ids = torch.randint(0, 5, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 1]])
    hpl.sequence_logps(logits, ids, mask).sum().backward()
    touched = logits.grad.abs().sum(-1) > 0                       # position t-1 predicts token t
    assert touched.tolist() == [[False, True, True, False, False, False], [True, False, False, False, True, False]]


def small_qwen2(vocab=40):
    torch.manual_seed(0)
    cfg = hpl.Config(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32)
    return hpl.build_tiny_model(cfg, vocab)


def full_logits_logps(model, ids, masks):
    """Each sequence alone through the whole model (logits at every position), then scored."""
    return torch.cat([hpl.sequence_logps(model(input_ids=torch.tensor([x])).logits, torch.tensor([x]),
                                         torch.tensor([m])) for x, m in zip(ids, masks)])


def test_forward_logps_equals_full_logits_with_the_head_on_scored_positions_only():
    model, g = small_qwen2(), torch.Generator().manual_seed(1)
    ids = [torch.randint(0, 40, (n,), generator=g).tolist() for n in (9, 5, 14, 7)]
    masks = [[int(k >= n // 2) for k in range(n)] for n in map(len, ids)]
    hpl.lm_head_parts(model)                                     # its one-off probe, before counting
    rows = []                                                    # the rows the LM head is given
    hook = model.lm_head.register_forward_hook(lambda m, inp, out: rows.append(inp[0].shape[0]))
    got = hpl.forward_logps(model, ids, masks, "cpu", max_tokens=20)        # several chunks, right padding
    hook.remove()
    assert sum(rows) == sum(sum(m[1:]) for m in masks)            # never the padded [B, T, V] logits
    grads = torch.autograd.grad(got.sum(), list(model.parameters()))
    full = full_logits_logps(model, ids, masks)
    assert torch.allclose(got, full, atol=1e-5)
    for a, b in zip(grads, torch.autograd.grad(full.sum(), list(model.parameters()))):
        assert torch.allclose(a, b, atol=1e-5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):     # a real model's arithmetic (bf16)
        got = hpl.forward_logps(model, ids, masks, "cpu", max_tokens=20)
        full = full_logits_logps(model, ids, masks)
    assert got.dtype == torch.float32 and torch.allclose(got, full, atol=1e-3)


def test_lm_head_parts_keeps_full_logits_when_the_forward_does_more_than_the_head():
    from transformers import Qwen2ForCausalLM

    class ScaledLogits(Qwen2ForCausalLM):                          # as Granite divides by logits_scaling
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits / 2.0
            return out

    plain = small_qwen2()
    assert hpl.lm_head_parts(plain) == (plain.model, plain.lm_head)
    scaled = ScaledLogits(plain.config)
    scaled.load_state_dict(plain.state_dict())
    assert hpl.lm_head_parts(scaled.train()) == (None, None) and scaled.training       # mode restored
    ids, masks = [[3, 7, 1, 9, 4, 2]], [[0, 0, 1, 1, 0, 1]]
    full = full_logits_logps(scaled, ids, masks)
    assert torch.equal(hpl.forward_logps(scaled, ids, masks, "cpu"), full)
    assert not torch.allclose(hpl.forward_logps(plain, ids, masks, "cpu"), full)


def test_lm_head_parts_restores_the_training_mode_when_its_probe_raises():
    from transformers import Qwen2ForCausalLM

    class Broken(Qwen2ForCausalLM):                               # a forward that fails on the probe
        def forward(self, *args, **kwargs):
            raise RuntimeError("probe failed")

    model = Broken(small_qwen2().config).train()
    with pytest.raises(RuntimeError, match="probe failed"):
        hpl.lm_head_parts(model)
    assert model.training and model not in hpl.PLAIN_HEAD          # left as found, and not decided


# ---------------------------------------------------------------------------------------------------------
# render_chat: the assistant-only mask (ETO/IPR), for the tiny tokenizer and Qwen2.5's own template
# ---------------------------------------------------------------------------------------------------------
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "You are in the middle of a room.\nYour task is to: put a mug in cabinet."},
    {"role": "assistant", "content": "Thought: I need a mug.\nAction: go to countertop 1"},
    {"role": "user", "content": "Observation: On the countertop 1, you see a mug 1."},
    {"role": "assistant", "content": "Thought: Now I find a mug 1.\nAction: take mug 1 from countertop 1"},
]


def assert_mask_is_assistant_only(tok, messages):
    ids, mask = hpl.render_chat(tok, messages)
    assert len(ids) == len(mask)
    scored = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False)
    expected = "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
    assert scored == expected
    # and it is the same tokenization as the whole conversation's
    assert ids == tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]


def test_render_chat_mask_tiny_tokenizer(tiny):
    _, _, demos, tok, _ = tiny
    assert_mask_is_assistant_only(tok, CONVERSATION)
    assert_mask_is_assistant_only(tok, demos[0]["messages"])


@needs_reference
def test_render_chat_mask_qwen25_template_roundtrip(tiny, tmp_path):
    from transformers import AutoTokenizer
    _, _, _, tok, _ = tiny
    tok.chat_template = (REFERENCE / "qwen2.5_chat_template.jinja").read_text()
    try:
        tok.save_pretrained(tmp_path)
    finally:
        tok.chat_template = hpl.CHATML_TEMPLATE
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert_mask_is_assistant_only(loaded, CONVERSATION)
    # without a system message Qwen2.5 inserts its default one, which is never scored
    ids, mask = hpl.render_chat(loaded, CONVERSATION[1:])
    assert "You are Qwen" in loaded.decode(ids) and "You are Qwen" not in loaded.decode(
        [t for t, m in zip(ids, mask) if m])


def test_prompt_is_token_prefix_and_only_completion_is_scored(tiny):
    _, _, _, tok, _ = tiny
    prompt, chosen = CONVERSATION[:4], CONVERSATION[4:]
    p_ids, _ = hpl.render_chat(tok, prompt)
    ids, mask = hpl.render_pair_side(tok, prompt, chosen)
    assert ids[:len(p_ids)] == p_ids
    assert sum(mask[:len(p_ids)]) == 0
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == chosen[0]["content"] + "<|im_end|>"


def test_tiny_model_and_tokenizer_reload_through_auto_classes(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    _, _, demos, tok, model = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    tok2, model2 = AutoTokenizer.from_pretrained(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)
    text = tok.apply_chat_template(demos[3]["messages"], tokenize=False)
    assert tok2(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert tok2.apply_chat_template(demos[3]["messages"], tokenize=False) == text
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, model2(ids).logits, atol=1e-6)
    loaded, _ = hpl.load_pretrained(str(tmp_path), "cpu")
    assert isinstance(loaded, type(model))
    # the weights AdamW updates are float32 on every device; bf16 (autocast) changes the arithmetic, not the weights
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    with hpl.mixed_precision(hpl.Config(precision="bf16"), "cpu"), torch.no_grad():
        assert loaded(ids).logits.dtype == torch.bfloat16
    with hpl.mixed_precision(hpl.Config(), "cpu"), torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_precision_is_bf16_only_for_a_real_model_on_cuda_unless_asked():
    def resolve(model, device, precision="auto"):
        return hpl.compute_precision(hpl.Config(model=model, precision=precision), device)
    assert resolve("Qwen/Qwen2.5-1.5B-Instruct", "cuda") == "bf16"
    assert resolve("tiny", "cuda") == "fp32"          # the tiny model's DPO learns ~10x slower in bf16 (README)
    assert resolve("Qwen/Qwen2.5-1.5B-Instruct", "cpu") == "fp32"
    assert resolve("tiny", "cuda", "bf16") == "bf16" and resolve("x", "cuda", "fp32") == "fp32"


# ---------------------------------------------------------------------------------------------------------
# The rollout engine: batched KV-cached decoding equals full recomputation
# ---------------------------------------------------------------------------------------------------------
def naive_greedy(model, tok, env, cfg, task, max_new):
    """One episode decoded the slow way: a full forward over every token so far, for every new token."""
    eot = hpl.end_of_turn_ids(tok)
    messages = hpl.prompt_messages(env, env.reset(task), cfg)
    fed = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(fed, add_special_tokens=False)["input_ids"]
    while True:
        out = []
        for _ in range(max_new):
            with torch.no_grad():
                nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt in eot:
                break
            out.append(nxt)
        ids += out
        content = tok.decode(out, skip_special_tokens=False)
        fed += content
        obs, _, done, _ = env.act(content)
        messages += [{"role": "assistant", "content": content}, {"role": "user", "content": obs}]
        if done:
            return messages[:-1]
        full = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids += tok(full[len(fed):], add_special_tokens=False)["input_ids"]
        fed = full


@pytest.mark.parametrize("rollout_batch", [1, 3])     # 1: every row is prefilled alone, with no padding mask
def test_rollout_engine_matches_full_recomputation(tiny, rollout_batch):
    cfg, env, demos, tok, model = tiny
    cfg = hpl.Config(**{**cfg.__dict__, "max_new_tokens": 12, "rollout_batch": rollout_batch})
    engine = hpl.Rollouts(model, tok, env, cfg, "cpu")
    results = engine.run([hpl.Job(i) for i in range(5)], seed=0)
    for i, res in enumerate(results):
        assert res["messages"] == naive_greedy(model, tok, env.clone(), cfg, i, 12)
    assert engine.stats["episodes"] == 5


@pytest.mark.parametrize("n_rows", [1, 2])       # 1: a lone prompt has no padding, so no mask reaches attention
@pytest.mark.parametrize("keeps_logits", [True, False])  # the LM head at each row's last token, or everywhere
def test_rollout_prefill_logits_equal_a_plain_forward(tiny, n_rows, keeps_logits):
    cfg, env, demos, tok, model = tiny
    engine = hpl.Rollouts(model, tok, env, cfg, "cpu")
    assert engine.keeps_logits                  # Qwen2 takes logits_to_keep; a model without it gets the fallback
    engine.keeps_logits = keeps_logits
    rows = [engine._start(j, hpl.Job(j, hpl.expert_prefix(demos[j], j))) for j in range(n_rows)]
    with hpl.grouped_attention_in(model):
        cache, attn, n_real, logits = engine._prefill(rows)
    for b, row in enumerate(rows):
        text = tok.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            full = model(input_ids=ids).logits[0, -1]
        assert int(n_real[b]) == ids.shape[1]
        assert torch.allclose(logits[b], full, atol=1e-4)


@pytest.mark.parametrize("q", [1, 3])            # 1: decoding (query heads folded per key/value head); 3: a block
def test_grouped_attention_equals_attention_over_repeated_key_value_heads(q):
    g = torch.Generator().manual_seed(0)
    B, H, KV, T, D = 3, 6, 2, 7, 4
    query, key, value = (torch.randn(B, n, t, D, generator=g) for n, t in ((H, q), (KV, T), (KV, T)))
    mask = torch.ones(B, 1, q, T, dtype=torch.bool).tril(T - q)
    mask[1, :, :, 2:4] = False                                       # a padded row: two masked slots
    out, _ = hpl.grouped_attention(None, query, key, value, mask)
    k, v = key.repeat_interleave(H // KV, 1), value.repeat_interleave(H // KV, 1)  # query head h reads kv h // 3
    scores = (query @ k.transpose(-1, -2) / D ** 0.5).masked_fill(~mask, float("-inf"))
    expected = (scores.softmax(-1) @ v).transpose(1, 2)              # [B, q, H, D]
    assert out.shape == (B, q, H, D)
    assert torch.allclose(out, expected, atol=1e-6)


def test_rollout_engine_prefix_turns_and_sampling_are_reproducible(tiny):
    cfg, env, demos, tok, model = tiny
    engine = hpl.Rollouts(model, tok, env, cfg, "cpu")
    prefix = hpl.expert_prefix(demos[2], 1)
    jobs = [hpl.Job(2, prefix, 1, 1.0) for _ in range(4)]
    a, b = engine.run(jobs, seed=5), engine.run(jobs, seed=5)
    assert [r["messages"] for r in a] == [r["messages"] for r in b]
    for r in a:                                   # the expert prefix was replayed, then exactly one turn
        assert r["messages"][r["n_start"] - 2]["content"] == prefix[0]
        assert r["turns"] == 1 and len(hpl.agent_turns(r)) == 1


def test_kv_cache_holds_its_tokens_plus_one_turn_and_moves_only_when_full():
    cache, g = hpl.kv_cache(spare=3), torch.Generator().manual_seed(0)
    blocks = [[torch.randn(2, 1, t, 4, generator=g) for _ in "kv"] for t in (5, 1, 1, 1, 1)]  # a prompt, 4 tokens
    rooms = []
    for k, v in blocks:
        keys, values = cache.update(k, v, 0)
        room = cache.layers[0].room[0]
        rooms.append((room.data_ptr(), room.shape[-2]))
    assert [size for _, size in rooms] == [8, 8, 8, 8, 12]     # 5 + 3 spare; the 4th token moves into 9 + 3
    assert len({ptr for ptr, _ in rooms[:4]}) == 1                # the first three tokens fit where they are
    assert torch.equal(keys, torch.cat([k for k, _ in blocks], 2))
    assert torch.equal(values, torch.cat([v for _, v in blocks], 2))


def test_rollout_cache_keeps_autocast_dtype_and_the_same_logits(tiny, monkeypatch):
    cfg, env, demos, tok, model = tiny
    engine = hpl.Rollouts(model, tok, env, cfg, "cpu")
    assert engine.cache_dtype() is None                              # float32 arithmetic: kept as it comes
    rows = [engine._start(j, hpl.Job(j, hpl.expert_prefix(demos[j], j))) for j in (1, 2)]   # unequal: padded
    runs = {}
    with torch.autocast("cpu", dtype=torch.bfloat16), hpl.grouped_attention_in(model):
        for kept in (torch.bfloat16, None):                          # None: keys float32, as RoPE leaves them
            monkeypatch.setattr(engine, "cache_dtype", lambda: kept)
            cache, attn, n_real, prefill = engine._prefill(rows)
            dtypes = (cache.layers[0].keys.dtype, cache.layers[0].values.dtype)
            _, _, _, decoded = engine._forward(cache, attn, n_real, [[5], [7]])   # one decoding step
            runs[kept] = dtypes, prefill, decoded
    assert runs[torch.bfloat16][0] == (torch.bfloat16, torch.bfloat16)
    assert runs[None][0] == (torch.float32, torch.bfloat16)
    assert torch.equal(runs[torch.bfloat16][1], runs[None][1])       # attention casts to bf16 either way
    assert torch.equal(runs[torch.bfloat16][2], runs[None][2])


def test_mc_estimate_is_the_mean_final_reward():
    assert hpl.mc_estimate([1.0, 0.0, 0.0, 1.0, 1.0]) == pytest.approx(0.6)      # Eq. (2), M = 5

    class FixedEngine:                              # returns known final rewards for each state's M rollouts
        def run(self, jobs, seed):
            return [{"reward": float(j.task == 1) * (k % 2)} for k, j in enumerate(jobs)]
    cfg = hpl.Config(mc_rollouts=4)
    assert hpl.mc_values(FixedEngine(), [(0, ()), (1, ())], cfg, seed=0) == [0.0, 0.5]


# ---------------------------------------------------------------------------------------------------------
# §3.3.2 segmentation and §3.4 curriculum
# ---------------------------------------------------------------------------------------------------------
def covers(groups, n):
    return groups[0][0] == 0 and groups[-1][1] == n and all(a[1] == b[0] for a, b in zip(groups, groups[1:])) \
        and all(s < e for s, e in groups)


ALF_ACTIONS = ["go to countertop 1", "go to cabinet 1", "open cabinet 1", "take mug 1 from cabinet 1",
               "go to microwave 1", "heat mug 1 with microwave 1", "go to coffeemachine 1",
               "put mug 1 in/on coffeemachine 1"]


@pytest.mark.parametrize("n", range(1, 12))
def test_every_strategy_covers_the_trajectory(n):
    acts = (ALF_ACTIONS * 2)[:n]
    ent = [((7 * t) % 5) / 4 for t in range(n)]
    for strategy, kw in [("fixed_n", {"N": 3}), ("fixed_k", {"K": 3}),
                         ("uncertainty", {"entropies": ent, "threshold": 0.5}), ("semantic", {"env": "alfworld"})]:
        assert covers(hpl.segment(acts, strategy, **kw), n), strategy


def test_fixed_sizes_follow_the_papers_code():
    acts = ["a"] * 7
    assert hpl.segment(acts, "fixed_n", N=3) == [(0, 3), (3, 6), (6, 7)]      # size ceil(7/3) = 3
    assert hpl.segment(acts[:4], "fixed_n", N=3) == [(0, 2), (2, 4)]          # 4 actions -> sizes 2, 2
    assert hpl.segment(acts, "fixed_k", K=3) == [(0, 3), (3, 6), (6, 7)]
    assert hpl.segment(acts[:5], "fixed_k", K=2) == [(0, 2), (2, 4), (4, 5)]


def test_uncertainty_boundary_where_entropy_exceeds_threshold():
    ent = [0.9, 0.1, 0.2, 0.8, 0.3, 0.95]
    # steps 3 and 5 exceed 0.5 and start new groups; step 0 always starts the first
    assert hpl.segment(["a"] * 6, "uncertainty", entropies=ent, threshold=0.5) == [(0, 3), (3, 5), (5, 6)]


def test_action_entropies_are_pi_refs_entropy_over_each_action_text(tiny):
    """The uncertainty segmenter's input, computed independently: the mean entropy of pi_ref's next-token
    distribution over the tokens of each agent turn's text after "Action:" (found by character offsets)."""
    cfg, env, demos, tok, model = tiny
    import copy
    model = copy.deepcopy(model)
    with torch.no_grad():                    # sharper than random init: entropies that differ token by token
        model.get_output_embeddings().weight.mul_(10)
    got = hpl.action_entropies(model, tok, demos[:3], "cpu")
    for d, values in zip(demos[:3], got):
        ids, _ = hpl.render_chat(tok, d["messages"])
        text = tok.decode(ids)
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        ent = -(logp.exp() * logp).sum(-1)
        offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        expected, at = [], 0
        for m in d["messages"][d["n_prompt"]:]:
            if m["role"] != "assistant":
                continue
            start = text.index(m["content"], at)
            at = start + len(m["content"])
            act = start + m["content"].index("Action:") + len("Action:")
            positions = [p for p, (a, b) in enumerate(offsets) if act <= a < at]
            expected.append(float(ent[[p - 1 for p in positions]].mean()))
        assert len(values) == len(d["actions"]) and values == pytest.approx(expected, rel=1e-5)
    assert max(max(v) - min(v) for v in got) > 0.1
    # fewer trajectories per forward (a large vocabulary's logits budget) give the same entropies
    one_by_one = hpl.action_entropies(model, tok, demos[:3], "cpu", max_logits=1)
    assert all(a == pytest.approx(b, rel=1e-5) for a, b in zip(one_by_one, got))


def test_semantic_rule_based_and_model_answers():
    assert hpl.segment(ALF_ACTIONS, "semantic", env="alfworld") == [(0, 4), (4, 6), (6, 8)]
    shop = ["search[red shoes]", "click[b01234abcd]", "click[red]", "click[9]", "click[buy now]"]
    assert hpl.segment(shop, "semantic", env="webshop") == [(0, 1), (1, 2), (2, 4), (4, 5)]  # App. I example
    sql = ["SHOW TABLES", "DESC university", "SELECT name FROM university", "submit"]
    assert hpl.segment(sql, "semantic", env="intercode_sql") == [(0, 2), (2, 3), (3, 4)]     # App. I example
    answer = "<action_groups>\nGroup 1 (action index: 0-2): Find\nGroup 2 (action index: 3-4): Put\n</action_groups>"
    assert hpl.parse_semantic_groups(answer, 5) == [(0, 3), (3, 5)]
    assert hpl.parse_semantic_groups("[[0, 1], [2, 2], [3, 3]]", 4) == [(0, 2), (2, 3), (3, 4)]
    assert hpl.parse_semantic_groups("Group 1 (action index: 0-1)", 4) is None               # not covering
    bad = hpl.parse_semantic_groups("nonsense", 4)
    assert hpl.segment(sql, "semantic", groups=bad, env="intercode_sql") == [(0, 2), (2, 3), (3, 4)]


def test_boundary_agreement_hand_example():
    groups = [[(0, 2), (2, 5)], [(0, 1), (1, 3)]]
    subgoals = [["f", "f", "t", "t", "p"], ["f", "t", "t"]]
    # gold boundaries {2, 4} and {1}; predicted {2} and {1}: tp 2, fp 0, fn 1
    agree = hpl.boundary_agreement(groups, subgoals)
    assert agree["precision"] == 1.0 and agree["recall"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("L,dR,bucket", [(1, 1.0, "B11"), (3, 0.7, "B11"), (4, 0.7, "B21"), (6, 0.69, "B22"),
                                          (7, 0.4, "B32"), (3, 0.39, "B13"), (2, 0.31, "B13"), (9, 0.35, "B33")])
def test_curriculum_buckets_follow_table4_alfworld(L, dR, bucket):
    pairs = [{"L": L, "dR": dR}]
    hpl.curriculum(pairs, (0, 3, 6), (1.0, 0.7, 0.4))
    assert pairs[0]["bucket"] == bucket


def test_curriculum_buckets_webshop_and_phases_are_cumulative():
    pairs = [{"L": L, "dR": d, "id": k} for k, (L, d) in enumerate(
        [(2, 0.9), (3, 0.9), (2, 0.5), (5, 0.9), (4, 0.35), (1, 0.75), (3, 0.6)])]
    phases = hpl.curriculum(pairs, (0, 2, 4), (1.0, 0.7, 0.4))
    assert [p["bucket"] for p in pairs] == ["B11", "B21", "B12", "B31", "B23", "B11", "B22"]
    ids = [[p["id"] for p in ph] for ph in phases]
    assert ids == [[0, 5], [0, 1, 2, 5], [0, 1, 2, 3, 4, 5, 6]]                   # B11 -> +B12,B21 -> all
    assert set(ids[0]) <= set(ids[1]) <= set(ids[2])
    assert [len(p) for p in hpl.curriculum(pairs, (0, 2, 4), (1.0, 0.7, 0.4), "static")] == [7]


# ---------------------------------------------------------------------------------------------------------
# Training: one step of Eq. (8) moves the policy; a non-finite loss stops with a clear error
# ---------------------------------------------------------------------------------------------------------
def test_train_step_changes_weights_and_stops_on_nonfinite(tiny, tmp_path):
    cfg, env, demos, tok, model = tiny
    import copy
    policy = copy.deepcopy(model)
    prompt = demos[0]["messages"][:demos[0]["n_prompt"]]
    pair = {"prompt": prompt, "chosen": demos[0]["messages"][demos[0]["n_prompt"]:],
            "rejected": [{"role": "assistant", "content": "Thought: hm.\nAction: go to box 9"}]}
    pairs = hpl.tokenize_pairs(tok, [pair] * 2)
    hpl.reference_logps(policy, pairs, "cpu")
    bc = [hpl.render_chat(tok, d["messages"]) for d in demos[:4]]
    cfg = hpl.Config(**{**cfg.__dict__, "batch": 2, "lr": 1e-2, "epochs": 1.0})
    before = [p.detach().clone() for p in policy.parameters()]
    info = hpl.train(policy, {"traj": pairs, "step": pairs}, [[]], bc, cfg, "cpu", str(tmp_path / "log.jsonl"))
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    norms = info["grad_norms_at_pi_ref"]            # the same pairs at two levels pull equally hard
    assert set(norms) == {"traj", "step"} and norms["traj"] > 0
    assert norms["traj"] == pytest.approx(norms["step"], rel=1e-5)
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert rows[0]["traj/loss"] == pytest.approx(math.log(2), abs=1e-4)        # policy == reference at step 1
    # an ablation (--no-traj) drops a loss, not optimizer steps: the dropped level's pairs still size each phase
    for min_pairs, steps in ((0, 1), (6, 3)):
        hpl.train(policy, {"step": pairs}, [[]], None, cfg, "cpu", str(tmp_path / "log3.jsonl"), min_pairs=min_pairs)
        assert len(open(tmp_path / "log3.jsonl").readlines()) == steps
    for p in pairs:
        p["ref_chosen"] = float("nan")
    with pytest.raises(RuntimeError, match="non-finite loss"):
        hpl.train(policy, {"traj": pairs}, [[]], None, cfg, "cpu", str(tmp_path / "log2.jsonl"))


def test_micro_batches_and_checkpointing_change_memory_not_the_update(tiny):
    """--micro-batch accumulates each level's batch mean over slices weighted by their share, and
    --checkpointing recomputes activations: both give the whole batch's loss, metrics and gradients."""
    cfg, env, demos, tok, model = tiny
    import copy
    prompt, chosen = demos[0]["messages"][:demos[0]["n_prompt"]], demos[0]["messages"][demos[0]["n_prompt"]:]
    wrong = [[{"role": "assistant", "content": f"Thought: hm.\nAction: go to box {k}"}] for k in range(5)]
    pairs = hpl.tokenize_pairs(tok, [{"prompt": prompt, "chosen": chosen, "rejected": r} for r in wrong])
    hpl.reference_logps(model, pairs, "cpu")
    for k, p in enumerate(pairs):            # a reference away from the policy: margins and accuracies vary
        p["ref_chosen"] += 0.7 * k - 1.0
        p["ref_rejected"] -= 0.4 * k
    bc = [hpl.render_chat(tok, d["messages"]) for d in demos[:3]]

    def step(**kw):
        c = hpl.Config(**{**cfg.__dict__, **kw})
        m = copy.deepcopy(model).train()
        if c.checkpointing:
            hpl.enable_checkpointing(m)
        loss, bc_loss, metrics, n_tok = hpl.accumulate_gradients(m, {"traj": pairs, "group": pairs[:2]}, bc, c, "cpu")
        assert n_tok == metrics["traj"]["tokens"] + metrics["group"]["tokens"] + sum(len(x[0]) for x in bc)
        return loss, bc_loss, metrics, [p.grad.clone() for p in m.parameters()]

    for norm in ("token", "sum"):
        loss, bc_loss, metrics, grads = step(bc_norm=norm)
        assert 0 < metrics["traj"]["acc"] < 1 and metrics["traj"]["tokens"] == sum(
            len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs)
        for kw in ({"micro_batch": 1}, {"micro_batch": 2}, {"micro_batch": 9}, {"checkpointing": True}):
            loss2, bc2, metrics2, grads2 = step(bc_norm=norm, **kw)
            assert (loss2, bc2) == pytest.approx((loss, bc_loss), rel=1e-5)
            for level in metrics:
                assert metrics2[level] == pytest.approx(metrics[level], rel=1e-5, abs=1e-6)
            assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads, grads2))
    # SFT's steps accumulate the same way
    sft_cfg = dict(cfg.__dict__, sft_epochs=1.0, sft_batch=4, sft_lr=1e-2)
    trained = []
    for micro in (0, 1):
        m = copy.deepcopy(model)
        hpl.sft(m, tok, demos[:8], hpl.Config(**{**sft_cfg, "micro_batch": micro}), "cpu")
        trained.append(list(m.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(*trained))
    assert not torch.equal(trained[0][0], model.get_input_embeddings().weight)


def test_an_ablation_leaves_the_other_levels_batches_as_hpl_draws_them():
    cfg = hpl.Config(batch=2, seed=3)
    traj, step = [f"t{i}" for i in range(7)], [f"s{i}" for i in range(9)]
    full = hpl.level_batches({"traj": traj, "step": step}, cfg, len)
    no_traj = hpl.level_batches({"step": step}, cfg, len)
    assert set(no_traj) == {"step"}
    assert [full["step"].next() for _ in range(12)] == [no_traj["step"].next() for _ in range(12)]
    no_step = hpl.level_batches({"traj": traj, "step": []}, cfg, len)
    assert [full["traj"].next() for _ in range(12)] == [no_step["traj"].next() for _ in range(12)]


# ---------------------------------------------------------------------------------------------------------
# The command line and the whole pipeline
# ---------------------------------------------------------------------------------------------------------
def run_cli(*args, cwd=ROOT, timeout=600, threads=None):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    return subprocess.run([sys.executable, str(ROOT / "hpl.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_bad_flags_end_with_one_clear_line(tmp_path):
    for args, needle in [(["--env", "chess"], "--env must be one of"), (["--bogus", "1"], "unrecognized"),
                         (["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r")], "cannot load model")]:
        res = run_cli(*args, "--preset", "smoke")
        assert res.returncode != 0
        assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr, res.stderr


def test_smoke_run_writes_results_and_is_reproducible(tmp_path):
    outs = []
    for name in ("a", "b"):
        res = run_cli("--env", "alfworld", "--preset", "smoke", "--out", str(tmp_path / name))
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        outs.append(json.loads((tmp_path / name / "results.json").read_text()))
    assert set(outs[0]) == {"pi_ref (SFT)", "hpl-semantic-dual"}
    assert outs[0] == outs[1]
    assert {"seen", "unseen"} <= set(outs[0]["hpl-semantic-dual"])
    for name in ("pi_ref", "log.jsonl"):
        assert any(p.name.startswith(name.split(".")[0]) for p in (tmp_path / "a").rglob("*"))
    # each evaluation keeps its episodes beside its summary, and they add up to it
    policy, name = tmp_path / "a" / "hpl-semantic-dual", hpl.eval_file(hpl.parse_config(["--preset", "smoke"]))
    played = [json.loads(line) for line in (policy / hpl.episodes_file(name)).read_text().splitlines()]
    for split, summary in json.loads((policy / name).read_text()).items():
        rows = [r for r in played if r["split"] == split]
        assert [r["task"] for r in rows] == list(range(summary["n"]))
        assert 100 * sum(r["reward"] for r in rows) / len(rows) == pytest.approx(summary["reward"])
        assert sum(r["turns"] for r in rows) / len(rows) == pytest.approx(summary["avg_turns"])
        first = rows[0]["messages"]
        assert first[0]["role"] == "user" and first[0]["content"].startswith("You are in the middle of a room")
        assert [m["role"] for m in first[1:3]] == ["assistant", "user"]
    # the same command again reuses every finished stage
    again = run_cli("--env", "alfworld", "--preset", "smoke", "--out", str(tmp_path / "a"))
    assert again.returncode == 0 and "reusing" in again.stdout
    assert json.loads((tmp_path / "a" / "results.json").read_text()) == outs[0]
    # --compare phases on the same folder: one row per curriculum phase, read from the run that trained them;
    # with --no-group that is the IPR run (same_training), not a folder of its own
    for extra, trained in (((), "hpl-semantic-dual"), (("--no-group",), "ipr")):
        res = run_cli("--env", "alfworld", "--preset", "smoke", "--out", str(tmp_path / "a"), "--compare", "phases",
                      *extra)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        table = (tmp_path / "a" / f"alfworld-phases-smoke{'-no_group' if extra else ''}.md").read_text()
        assert all(f"| phase {k} " in table for k in (1, 2, 3)), table
        phase2 = next((tmp_path / "a" / trained).glob("eval*-phase2.json"))
        # retrained for the phase evaluations: timed under its own name, and the final weights scored anew
        times = json.loads((tmp_path / "a" / "stage_times.json").read_text())
        assert f"train ({trained}, with phase evaluations)" in times
        assert f"evaluate {trained}, with phase evaluations" in times
        assert (f"train ({trained})" in times) == (not extra)          # the first run's times are kept
        assert (f"evaluate {trained}" in times) == (not extra)
        final = [p for p in (tmp_path / "a" / trained).glob("eval*.json") if "phase" not in p.name]
        assert final and all(p.stat().st_mtime >= phase2.stat().st_mtime for p in final)
        # the table's "its runs took" sums the recorded times of exactly the stages this experiment's run needed
        needed = ["sft (pi_ref)", "evaluate pi_ref", "explore (pi_ref greedy)", "step pairs",
                  f"train ({trained}, with phase evaluations)", f"evaluate {trained}, with phase evaluations"]
        needed += [] if extra else ["group pairs (semantic)"]
        summary = json.loads(next((tmp_path / "a").glob(f"alfworld-phases-smoke{'-no_group' if extra else ''}.json"))
                             .read_text())
        assert summary["run_minutes"] == pytest.approx(sum(times[n]["seconds"] for n in needed) / 60)
        # task by task: phase 1 against the last phase, recounted from the two evaluations' episode files
        won = lambda path: {(e["split"], e["task"]): e["won"]                                   # noqa: E731
                            for e in map(json.loads, path.read_text().splitlines())}
        first = won(phase2.with_name(phase2.name.replace("phase2.json", "phase1.episodes.jsonl")))
        last = won(tmp_path / "a" / trained / hpl.episodes_file(name))
        for split in ("seen", "unseen"):
            b = sum(w and not first[k] for k, w in last.items() if k[0] == split)
            c = sum(first[k] and not w for k, w in last.items() if k[0] == split)
            assert summary["discordant_tasks"]["phase 1"][split] == [b, c, round(hpl.mcnemar_p(b, c), 4)]
        assert f"| phase 1 | {summary['discordant_tasks']['phase 1']['seen'][0]} / " in table
    # --jobs 2: the runs still missing (RFT, ETO) train side by side, each process on half the cores, each logging
    # to its policy folder; the table then reads every row as before
    threads = max(1, min((os.cpu_count() or 1) // 2, 8))
    res = run_cli("--env", "alfworld", "--preset", "smoke", "--out", str(tmp_path / "a"), "--compare", "methods",
                  "--jobs", "2")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert f"[side by side] 5 runs, 2 at a time, {threads} thread(s) each" in res.stdout
    assert res.stdout.count("[side by side] ") == 6
    for tag in ("rft", "eto"):
        own = (tmp_path / "a" / tag / "run.log").read_text()
        assert f"| method {tag} |" in own and f"thread{'s' * (threads > 1)}) |" in own and f"[train ({tag})]" in own
    table = (tmp_path / "a" / "alfworld-methods-smoke.md").read_text()
    assert all(f"| {m} |" in table for m in ("sft", "rft", "eto", "ipr", "hpl-semantic-dual"))
    # a run side by side is the single run on as many threads: ETO again in folder b (same pi_ref and pairs)
    assert run_cli("--env", "alfworld", "--preset", "smoke", "--out", str(tmp_path / "b"), "--method", "eto",
                   threads=threads).returncode == 0
    name = hpl.eval_file(hpl.parse_config(["--preset", "smoke"]))
    assert (tmp_path / "a" / "eto" / name).read_text() == (tmp_path / "b" / "eto" / name).read_text()


def test_a_run_folder_refuses_a_second_set_of_stage_settings(tmp_path):
    hpl.check_run_dir(hpl.parse_config(["--out", str(tmp_path)]), str(tmp_path))
    hpl.check_run_dir(hpl.parse_config(["--out", str(tmp_path), "--lr", "1e-5"]), str(tmp_path))   # DPO: same folder
    with pytest.raises(hpl.UserError, match=r"other settings \(hidden_size, sft_lr\)"):
        hpl.check_run_dir(hpl.parse_config(["--out", str(tmp_path), "--hidden-size", "384", "--sft-lr", "1e-3"]),
                          str(tmp_path))


def test_side_by_side_runs_each_run_once_with_seeds_interleaved():
    runs = hpl.experiment_runs(hpl.parse_config(["--compare", "methods", "--seeds", "3", "--jobs", "2"]))
    order = ("sft", "hpl", "ipr", "eto", "rft")               # each seed's first run, then the others in reverse
    assert [(r.seed, r.method) for r in runs] == [(s, m) for m in order for s in (0, 1, 2)]
    assert all(r.compare == "" and r.seeds == 1 for r in runs)
    # without L_group HPL trains IPR's objective: the IPR run, not one of its own; --out folders as compare names them
    runs = hpl.experiment_runs(hpl.parse_config(["--compare", "losses", "--seeds", "2", "--out", "x", "--seed", "4"]))
    assert [(r.seed, hpl.method_tag(r), r.out) for r in runs] == [
        (4, "hpl-semantic-dual", "x"), (5, "hpl-semantic-dual", "x-seed5"), (4, "ipr", "x"), (5, "ipr", "x-seed5"),
        (4, "hpl-semantic-dual-no_step", "x"), (5, "hpl-semantic-dual-no_step", "x-seed5"),
        (4, "hpl-semantic-dual-no_traj", "x"), (5, "hpl-semantic-dual-no_traj", "x-seed5")]
    for bad in (["--jobs", "2"], ["--compare", "methods", "--jobs", "0"]):
        with pytest.raises(hpl.UserError, match="--jobs"):
            hpl.parse_config(bad)
    with pytest.raises(hpl.UserError, match="--micro-batch"):
        hpl.parse_config(["--micro-batch", "-1"])
    paper = hpl.parse_config(["--preset", "paper"])          # a real model's memory: see README, "Memory"
    assert (paper.micro_batch, paper.checkpointing, hpl.Config().micro_batch, hpl.Config().checkpointing) == \
        (2, True, 0, False)


def test_policy_folder_names_carry_non_default_training_settings():
    cfg = hpl.parse_config(["--env", "alfworld"])
    assert hpl.method_tag(cfg) == "hpl-semantic-dual"
    assert hpl.method_tag(hpl.parse_config(["--method", "eto"])) == "eto"
    assert hpl.method_tag(hpl.parse_config(["--no-group", "--segmentation", "fixed_k"])) == "hpl-fixed_k-dual-no_group"
    # a policy trained with another lr or beta never reuses the default one's folder
    assert hpl.method_tag(hpl.parse_config(["--lr", "1e-4", "--beta", "0.1"])) == "hpl-semantic-dual-beta0.1-lr0.0001"
    assert hpl.method_tag(hpl.parse_config(["--method", "rft", "--lr", "1e-5"])) == "rft-lr1e-05"   # RFT trains at lr
    # SFT is pi_ref itself, which no DPO setting shapes (`--compare methods --lr 1e-5` once failed on "sft-lr1e-05")
    assert hpl.method_tag(hpl.parse_config(["--method", "sft", "--lr", "1e-5"])) == "sft"
    # and an experiment made with other settings writes its tables beside the default one's, not over them
    assert hpl.results_stem(hpl.parse_config(["--compare", "losses"])) == "results/alfworld-losses"
    stem = hpl.results_stem(hpl.parse_config(["--compare", "losses", "--lr", "1e-5"]))
    assert stem == "results/alfworld-losses-lr1e-05"
    stem = hpl.results_stem(hpl.parse_config(["--compare", "methods", "--hidden-size", "384", "--sft-lr", "1e-3",
                                              "--lr", "1e-5"]))                 # another pi_ref: its own table too
    assert stem == "results/alfworld-methods-hidden_size384-sft_lr0.001-lr1e-05"
    # and its runs get a folder of their own; a real model's runs and tables are named after it
    assert hpl.run_dir(hpl.parse_config(["--hidden-size", "384", "--seed", "2"])) == \
        os.path.join("runs", "alfworld", "tiny-cpu-seed2-hidden_size384")
    assert hpl.run_dir(hpl.parse_config([])) == os.path.join("runs", "alfworld", "tiny-cpu-seed0")
    cfg = hpl.parse_config(["--model", "/models/Qwen2.5-1.5B/", "--preset", "paper", "--compare", "methods"])
    assert hpl.run_dir(cfg) == os.path.join("runs", "alfworld", "Qwen2.5-1.5B-paper-seed0")
    assert hpl.results_stem(cfg) == "results/alfworld-methods-Qwen2.5-1.5B-paper"
    # smoke numbers mean nothing: they stay out of the repo's results/; --out takes the tables too
    assert hpl.results_stem(hpl.parse_config(["--env", "webshop", "--compare", "methods", "--preset", "smoke"])) \
        == os.path.join("runs", "results", "webshop-methods-smoke")
    stem = hpl.results_stem(hpl.parse_config(["--compare", "phases", "--out", "some_run"]))
    assert stem == os.path.join("some_run", "alfworld-phases")
    # the phases of another curriculum, or seeds counted from 1, beside the default table, not over it
    stem = hpl.results_stem(hpl.parse_config(["--compare", "phases", "--curriculum", "static", "--seed", "1"]))
    assert stem == "results/alfworld-phases-static-seed1"
    assert hpl.results_stem(hpl.parse_config(["--compare", "curriculum", "--curriculum", "static"])) \
        == "results/alfworld-curriculum"                             # the experiment varies it itself
    assert hpl.results_stem(hpl.parse_config(["--compare", "methods", "--segmentation", "fixed_k"])) \
        == "results/alfworld-methods-fixed_k"
    stem = hpl.results_stem(hpl.parse_config(["--compare", "phases", "--no-group"]))
    assert stem == "results/alfworld-phases-no_group"


def test_a_table_over_fewer_seeds_never_overwrites_one_over_more(tmp_path):
    stem = str(tmp_path / "alfworld-methods")
    assert hpl.unclobbered_stem(stem, 1) == stem                          # nothing there yet
    hpl.write_json(stem + ".json", {"rows": {"sft": [[40.0, 41.0]] * 3, "hpl-semantic-dual": [[42.0, 44.0]] * 3}})
    assert hpl.unclobbered_stem(stem, 3) == stem                          # the same seeds: a refresh
    assert hpl.unclobbered_stem(stem, 5) == stem                          # more seeds replace it
    assert hpl.unclobbered_stem(stem, 1) == stem + "-1seed"               # fewer go beside it


@pytest.mark.parametrize("env_name", ["alfworld", "webshop", "intercode_sql"])
def test_the_default_context_holds_every_expert_episode(env_name):
    """Rollouts end an episode once its tokens reach max_len minus two turn budgets. At the default settings that
    must leave room for the expert's whole trajectory on every evaluated task, or success is capped whatever the
    policy learns (at max_len 2048, 97 of WebShop's 200 test episodes did not fit: result pages are long)."""
    cfg = hpl.parse_config(["--env", env_name])
    demos = [hpl.expert_episode(hpl.make_env(cfg, "train"), i, cfg) for i in range(300)]
    tok = hpl.train_tiny_tokenizer([json.dumps(d["messages"]) for d in demos], cfg.vocab_size)
    room = hpl.context_room(cfg, hpl.turn_token_budget(tok, demos))
    for split in hpl.eval_splits(cfg):
        env = hpl.make_env(cfg, split)
        longest = max(len(hpl.render_chat(tok, hpl.expert_episode(env, i, cfg)["messages"])[0])
                      for i in range(len(env)))
        assert longest <= room, (split, longest, room)


def test_sql_defaults_of_the_cpu_preset_and_the_split_they_evaluate():
    cfg = hpl.parse_config(["--env", "intercode_sql"])
    assert (cfg.sft_epochs, hpl.eval_splits(cfg)) == (8.0, ("seen",))              # ENV_PRESETS, --sql-eval
    assert hpl.eval_file(cfg, "eval-pi_ref") == "eval-pi_ref-seen.json"             # kept apart from test's
    assert hpl.parse_config(["--env", "intercode_sql", "--sft-epochs", "3"]).sft_epochs == 3.0   # a flag wins
    paper = hpl.parse_config(["--env", "intercode_sql", "--preset", "paper"])
    assert (paper.sft_epochs, hpl.eval_splits(paper), hpl.eval_file(paper)) == (3, ("test",), "eval.json")
    alf = hpl.parse_config(["--env", "alfworld"])
    assert (alf.sft_epochs, hpl.eval_splits(alf)) == (2.5, ("seen", "unseen"))
    shop = hpl.parse_config(["--env", "webshop"])
    assert (shop.sft_epochs, shop.max_len, alf.max_len) == (8.0, 4096, 2048)
    assert hpl.method_tag(cfg) == "hpl-semantic-dual"                               # per-env values are defaults
    with pytest.raises(hpl.UserError, match="sql-eval"):
        hpl.parse_config(["--env", "intercode_sql", "--sql-eval", "dev"])


def test_results_json_keeps_what_another_run_in_the_folder_wrote_meanwhile(tmp_path):
    split = {"test": {"success": 10.0, "reward": 20.0, "by_type": {}}}
    cfg, loaded = hpl.parse_config(["--env", "webshop"]), {"pi_ref (SFT)": split}     # both runs loaded this
    hpl.finish(cfg, str(tmp_path), {**loaded, "eto": split}, hpl.Stages(str(tmp_path)), {})
    hpl.finish(cfg, str(tmp_path), {**loaded, "ipr": split}, hpl.Stages(str(tmp_path)), {})
    assert list(json.loads((tmp_path / "results.json").read_text())) == ["pi_ref (SFT)", "eto", "ipr"]


def _merge_keys(path, prefix, n):
    for i in range(n):
        hpl.merge_json(path, {f"{prefix}{i}": i})


@pytest.mark.skipif(hpl.fcntl is None, reason="file locks are POSIX only")
def test_results_json_merges_from_two_processes_at_once_lose_nothing(tmp_path):
    import multiprocessing as mp
    path = str(tmp_path / "results.json")
    procs = [mp.get_context("fork").Process(target=_merge_keys, args=(path, p, 60)) for p in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert sorted(json.loads(open(path).read())) == sorted(f"{p}{i}" for p in "ab" for i in range(60))


def _write_config(path, n):
    for i in range(n):
        hpl.write_json(path, {"stages": {"seed": 0}, "i": i})


def test_two_processes_writing_one_file_at_once_never_fail(tmp_path):
    # runs started side by side in one folder all write its config.json: each must rename its own temp file
    import multiprocessing as mp
    path = str(tmp_path / "config.json")
    procs = [mp.get_context("fork").Process(target=_write_config, args=(path, 400)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert json.loads(open(path).read())["i"] == 399
    assert os.listdir(tmp_path) == ["config.json"]                     # no temp file left behind


def test_every_run_trains_as_many_phases_as_the_curriculum():
    a, b, c = [{"id": 1}], [{"id": 1}, {"id": 2}], [{"id": 1}, {"id": 2}, {"id": 3}]
    assert hpl.training_phases([a, b, c], 3) == [a, b, c]              # Eq. (9) unchanged
    assert hpl.training_phases([c], 3) == [c, c, c]                    # static: all pairs in each phase
    assert hpl.training_phases([[]], 3) == [[], [], []]                # ETO / IPR / --no-group: traj+step x3
    assert hpl.training_phases([a, b, c], 1) == [a, b, c]              # never shortened


def test_a_policy_trained_with_other_settings_is_trained_again(tmp_path):
    folder = tmp_path / "ipr"
    (folder / "policy").mkdir(parents=True)
    (folder / "eval.json").write_text("{}")
    (folder / "curriculum.json").write_text("{}")
    old = hpl.policy_settings(hpl.parse_config(["--method", "ipr", "--lr", "1e-4"]))
    (folder / "settings.json").write_text(json.dumps(old))
    hpl.forget_stale_policy(str(folder), old)                          # same settings: kept
    assert (folder / "policy").exists() and (folder / "eval.json").exists()
    new = hpl.policy_settings(hpl.parse_config(["--method", "ipr"]))
    hpl.forget_stale_policy(str(folder), new)                          # the default lr changed: made again
    assert not (folder / "policy").exists() and not (folder / "eval.json").exists()
    assert (folder / "curriculum.json").exists() and json.loads((folder / "settings.json").read_text()) == new
    # the segmentation does not shape an IPR policy, so it does not count
    assert hpl.policy_settings(hpl.parse_config(["--method", "ipr", "--segmentation", "fixed_k"])) == new


def test_no_group_ablation_is_read_from_the_ipr_run_because_it_trains_the_same_objective():
    one = hpl.parse_config(["--no-group"])
    same = hpl.same_training(one)
    assert hpl.method_tag(one) == "hpl-semantic-dual-no_group" and hpl.method_tag(same) == "ipr"
    assert hpl.trained_levels(one) == hpl.trained_levels(same) == {"traj", "step"}
    other = hpl.parse_config(["--no-group", "--lr", "1e-5", "--segmentation", "fixed_k"])   # any settings
    assert hpl.method_tag(hpl.same_training(other)) == "ipr-lr1e-05"
    for flags in (["--no-traj"], ["--no-group", "--no-step"], ["--method", "eto"], []):    # trained as asked
        cfg = hpl.parse_config(flags)
        assert hpl.same_training(cfg) is cfg
    assert hpl.trained_levels(hpl.parse_config(["--no-traj"])) == {"step", "group"}


def test_experiment_table_has_mean_std_and_the_papers_numbers():
    cfg = hpl.parse_config(["--env", "alfworld", "--compare", "methods", "--seeds", "2"])
    rows = {"sft": [(20.0, 30.0), (22.0, 34.0)], "eto": [(25.0, 35.0), (25.0, 37.0)]}
    by_type = {"sft": [{"pick": 50.0}, {"pick": 60.0}], "eto": [{"pick": 40.0}, {"pick": 40.0}]}
    text = hpl.experiment_tables(cfg, rows, by_type, (1.0, 2.0))
    assert "| sft | 21.00 +- 1.00 | 32.00 +- 2.00 | 60.95 | 57.96 |" in text        # Table 1, 1.5B SFT
    assert "| eto | 25.00 +- 0.00 | 36.00 +- 1.00 | 65.48 | 66.42 |" in text
    assert "| sft | 55.00 +- 5.00 |" in text and "| eto | 40.00 +- 0.00 |" in text
    ws = hpl.experiment_tables(hpl.parse_config(["--env", "webshop", "--compare", "methods"]),
                               {"ipr": [(50.0, 20.0)]}, {}, (1.0, 2.0))
    assert "| ipr | 50.00 | 20.00 | 57.76 | 27.83 |" in ws                                # WebShop columns
    # runs made with another DPO step still stand beside the paper's numbers for their method
    lr = hpl.experiment_tables(hpl.parse_config(["--compare", "methods", "--lr", "1e-5"]),
                               {"sft": [(20.0, 30.0)], "eto-lr1e-05": [(25.0, 35.0)]}, {}, (1.0, 2.0))
    assert "| eto-lr1e-05 | 25.00 | 35.00 | 65.48 | 66.42 |" in lr and "| sft | 20.00 | 30.00 | 60.95 | 57.96 |" in lr


def test_paired_table_subtracts_each_run_from_hpl_seed_by_seed():
    # ALFWorld seen / unseen success per seed (results/before-attention-fix/alfworld-methods.md): HPL and ETO
    hpl_row = [(40.71, 49.25), (40.71, 43.28), (40.00, 41.79)]
    eto_row = [(40.71, 43.28), (40.71, 41.79), (38.57, 37.31)]
    diffs = hpl.paired_differences({"eto": eto_row, "hpl-semantic-dual": hpl_row}, "hpl-semantic-dual")
    assert list(diffs) == ["eto"]
    assert [pytest.approx(d) for d in diffs["eto"]] == [(0.0, 5.97), (0.0, 1.49), (1.43, 4.48)]
    # unseen: mean 3.98, population std sqrt(((5.97-3.98)^2 + (1.49-3.98)^2 + (4.48-3.98)^2) / 3) = 1.86, 3 wins
    assert hpl.paired_cell([d[1] for d in diffs["eto"]]) == "+5.97 / +1.49 / +4.48 -> 3.98 +- 1.86 (3/3)"
    assert hpl.paired_cell([d[0] for d in diffs["eto"]]).endswith("(1/3)")                  # a tie is no win
    assert hpl.paired_cell([30.0 - 29.999999999, 0.5 - 0.5000000001]) == "+0.00 / +0.00 -> 0.00 +- 0.00 (0/2)"
    cfg = hpl.parse_config(["--env", "alfworld", "--compare", "methods", "--seeds", "3"])
    text = hpl.experiment_tables(cfg, {"eto": eto_row, "hpl-semantic-dual": hpl_row}, {}, (1.0, 2.0))
    assert "| eto | +0.00 / +0.00 / +1.43 -> 0.48 +- 0.67 (1/3) | +5.97 / +1.49 / +4.48 -> 3.98 +- 1.86 (3/3) |" \
        in text
    # Figure 4: each phase against the last one (= HPL)
    phases = hpl.experiment_tables(hpl.parse_config(["--compare", "phases", "--seeds", "2"]),
                                   {"phase 1": [(1.0, 2.0), (3.0, 4.0)], "phase 2": [(2.0, 5.0), (3.0, 6.0)]}, {},
                                   (1.0, 2.0))
    assert "| phase 1 | +1.00 / +0.00 -> 0.50 +- 0.50 (1/2) | +3.00 / +2.00 -> 2.50 +- 0.50 (2/2) |" in phases


def test_exact_mcnemar_p_is_the_doubled_binomial_tail_of_the_discordant_tasks():
    # 10 : 2 -> 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 * 79 / 4096 (scipy's binomtest(2, 12) gives 0.0386)
    assert hpl.mcnemar_p(10, 2) == pytest.approx(2 * 79 / 4096) and hpl.mcnemar_p(2, 10) == hpl.mcnemar_p(10, 2)
    assert hpl.mcnemar_p(5, 0) == pytest.approx(2 / 32)                 # five of five one way
    assert hpl.mcnemar_p(3, 3) == 1.0 and hpl.mcnemar_p(0, 0) == 1.0    # an even split, and no discordant task


def test_task_table_counts_tasks_won_by_one_run_only_over_the_seeds(tmp_path):
    ep = lambda split, task, won: {"split": split, "task": task, "type": "pick", "reward": float(won),   # noqa: E731
                                   "won": won, "turns": 3, "messages": []}
    hpl.write_jsonl(str(tmp_path / "eval.episodes.jsonl"), [ep("seen", 0, True), ep("unseen", 0, False)])
    assert hpl.task_outcomes(str(tmp_path / "eval.json")) == {("seen", 0): True, ("unseen", 0): False}
    assert hpl.task_outcomes(str(tmp_path / "eval-pi_ref.json")) is None                    # not kept
    W, L = True, False
    ref = [{("unseen", 0): W, ("unseen", 1): W, ("unseen", 2): L, ("seen", 0): W},        # seed 0
           {("unseen", 0): W, ("unseen", 1): L, ("unseen", 2): L, ("seen", 0): L},        # seed 1
           {("unseen", 0): W}]                                                            # seed 2
    other = [{("unseen", 0): L, ("unseen", 1): W, ("unseen", 2): W, ("seen", 0): W},
             {("unseen", 0): L, ("unseen", 1): L, ("unseen", 2): L, ("seen", 0): W},
             None]                                                                        # seed 2 not kept
    assert hpl.discordant_tasks(ref, other, "unseen") == (2, 1)       # seed 0: task 0 / task 2; seed 1: task 0
    assert hpl.discordant_tasks(ref, other, "seen") == (0, 1)
    cfg = hpl.parse_config(["--env", "alfworld", "--compare", "methods", "--seeds", "3"])
    rows = {"eto": [(1.0, 2.0)] * 3, "hpl-semantic-dual": [(1.0, 2.0)] * 3}
    text = hpl.experiment_tables(cfg, rows, {}, (1.0, 2.0), {"eto": other, "hpl-semantic-dual": ref})
    assert "| run | seen success | unseen success |" in text
    assert "| eto | 0 / 1 (p 1.00) | 2 / 1 (p 1.00) |" in text
    assert hpl.task_table_cells(cfg, {"eto": other, "hpl-semantic-dual": [None] * 3}) == ([], {})
    # the rows' evaluation files: the SFT baseline is pi_ref's evaluation, not a policy folder of its own
    sft = hpl.parse_config(["--method", "sft", "--out", "x"])
    pi_ref = os.path.join("x", "eval-pi_ref.json")
    assert hpl.evaluation_paths(sft, "sft") == {"sft": pi_ref}
    nog = hpl.parse_config(["--no-group", "--out", "x"])
    assert hpl.evaluation_paths(hpl.same_training(nog), "hpl-semantic-dual-no_group") == {
        "hpl-semantic-dual-no_group": os.path.join("x", "ipr", "eval.json"), "sft": pi_ref}
    assert "Task by task" not in hpl.experiment_tables(cfg, rows, {}, (1.0, 2.0))           # no outcomes given
    sql = hpl.parse_config(["--env", "intercode_sql", "--compare", "losses"])
    (split,) = hpl.eval_splits(sql)                                  # InterCode-SQL: one evaluation split
    out = hpl.task_table_cells(sql, {"ipr": [{(split, 0): L}], "hpl-semantic-dual": [{(split, 0): W}]})
    assert out[1] == {"ipr": {split: [1, 0, 1.0]}} and "| ipr | 1 / 0 (p 1.00) |" in out[0]


def test_an_experiment_reports_what_its_runs_took_from_the_stage_times(tmp_path):
    times = {"sft (pi_ref)": 600, "evaluate pi_ref": 60, "explore (pi_ref greedy)": 120, "step pairs": 180,
             "group pairs (semantic)": 300, "group pairs (fixed_k)": 1000, "train (eto)": 240, "evaluate eto": 60,
             "train (hpl-semantic-dual)": 480, "train (hpl-semantic-dual, with phase evaluations)": 900,
             "evaluate hpl-semantic-dual": 60, "evaluate hpl-semantic-dual, with phase evaluations": 70}
    (tmp_path / "stage_times.json").write_text(json.dumps({k: {"seconds": v, "note": ""} for k, v in times.items()}))
    stage1 = {"sft (pi_ref)", "evaluate pi_ref", "explore (pi_ref greedy)", "step pairs"}
    used = stage1 | {"train (eto)", "evaluate eto", "group pairs (semantic)", "train (hpl-semantic-dual)",
                     "evaluate hpl-semantic-dual"}          # what an ETO and an HPL run of one seed needed
    assert hpl.recorded_minutes({str(tmp_path): used}) == \
        pytest.approx((600 + 60 + 120 + 180 + 240 + 60 + 300 + 480 + 60) / 60)
    phases = stage1 | {"group pairs (semantic)", "train (hpl-semantic-dual, with phase evaluations)",
                       "evaluate hpl-semantic-dual, with phase evaluations"}   # the retrain, not both trainings
    assert hpl.recorded_minutes({str(tmp_path): phases}) == pytest.approx((600 + 60 + 120 + 180 + 300 + 900 + 70) / 60)
    assert hpl.recorded_minutes({str(tmp_path / "none"): {"sft (pi_ref)"}}) == 0.0
    for name in ("train (hpl-semantic-dual, with phase evaluations)",   # timed under the plain names before
                 "evaluate hpl-semantic-dual, with phase evaluations"):
        del times[name]
    (tmp_path / "stage_times.json").write_text(json.dumps({k: {"seconds": v, "note": ""} for k, v in times.items()}))
    assert hpl.recorded_minutes({str(tmp_path): phases}) == pytest.approx((600 + 60 + 120 + 180 + 300 + 480 + 60) / 60)


def test_stage_times_of_two_runs_sharing_a_folder_both_land(tmp_path):
    first, second = hpl.Stages(str(tmp_path)), hpl.Stages(str(tmp_path))     # both read the file at start
    first.run("train (eto)", str(tmp_path / "eto"), lambda p: 1, None)
    second.run("train (ipr)", str(tmp_path / "ipr"), lambda p: 2, None)
    assert set(json.loads((tmp_path / "stage_times.json").read_text())) == {"train (eto)", "train (ipr)"}


def _compute_stage_slowly(root, started):
    def compute(path):
        started.set()                                   # the lock on the stage is held from here
        time.sleep(1.0)
        hpl.write_text(path, "computed by the other run")
        return "computed"
    hpl.Stages(root).run("explore (pi_ref greedy)", os.path.join(root, "explored.txt"), compute, None)


@pytest.mark.skipif(hpl.fcntl is None, reason="file locks are POSIX only")
def test_a_stage_another_run_is_computing_is_waited_for_and_reused(tmp_path, capsys):
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    started = ctx.Event()
    other = ctx.Process(target=_compute_stage_slowly, args=(str(tmp_path), started))
    other.start()
    assert started.wait(30)
    calls = []
    stages = hpl.Stages(str(tmp_path))
    got = stages.run("explore (pi_ref greedy)", str(tmp_path / "explored.txt"),
                     lambda p: calls.append(p) or "computed twice", lambda p: open(p).read())
    other.join(30)
    assert (got, calls, stages.reused) == ("computed by the other run", [], ["explore (pi_ref greedy)"])
    assert "[explore (pi_ref greedy)] another run is computing it: waiting to reuse it" in capsys.readouterr().out
    assert "explore (pi_ref greedy)" in stages.saved            # the other run's time, read after it finished


def test_results_table_keeps_columns_aligned_for_long_policy_names():
    split = lambda s, t: {"success": s, "reward": s, "by_type": {"pick": t}}       # noqa: E731
    res = {"pi_ref (SFT)": {"seen": split(42.857, 50.0), "unseen": split(41.791, 50.0)},
           "hpl-semantic-dual-lr3e-05": {"seen": split(40.714, 62.5), "unseen": split(43.284, 62.5)}}
    lines = hpl.results_table(res, "alfworld").splitlines()
    assert [line.index("|") for line in lines[:3]] == [len("hpl-semantic-dual-lr3e-05") + 1] * 3
    assert lines[1].split("|")[1:] == ["    42.86 ", "    41.79"]
    assert lines[-1] == "hpl-semantic-dual-lr3e-05: 62.5"
    ws = hpl.results_table({"ipr": {"test": {"reward": 51.234, "success": 20.0}}}, "webshop").splitlines()
    assert ws == ["        policy |   reward |  success", "           ipr |    51.23 |    20.00"]


def test_the_readme_code_map_links_land_on_their_definitions():
    # "Code and paper, side by side" links each name to hpl.py#L<n>: line n must define that name
    lines = (ROOT / "hpl.py").read_text().splitlines()
    links = re.findall(r"\[`(\w+)`\]\(hpl\.py#L(\d+)\)", (ROOT / "README.md").read_text())
    assert len(links) > 20
    for name, n in links:
        assert re.match(rf"(def |class ){name}\b|{name}\s*[:=]", lines[int(n) - 1]), (name, n, lines[int(n) - 1])


def heading_anchors(text: str) -> set:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2, ... on repeats."""
    seen, anchors, fence = Counter(), set(), False
    for line in text.splitlines():
        fence ^= line.startswith("```")
        m = re.match(r"#{1,6} (.+)", line)
        if m and not fence:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
            seen[slug] += 1
    return anchors


def test_the_readmes_links_land_on_files_and_headings():
    # the README's Results link into the lab notebook (results/README.md) by heading; a renamed heading breaks them
    assert heading_anchors("## Correction: the rollout engine's prefill attention\n#### Seed 0 drawn again\n"
                           "```\n# not a heading\n```\n### Seed 0 drawn again") == {
        "correction-the-rollout-engines-prefill-attention", "seed-0-drawn-again", "seed-0-drawn-again-1"}
    docs = [ROOT / "README.md", *sorted((ROOT / "results").rglob("README.md"))]
    assert len(docs) >= 2
    for doc in docs:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path) if path else doc
            assert file.exists(), (doc.relative_to(ROOT), target)
            if anchor and file.suffix == ".md":
                assert anchor in heading_anchors(file.read_text()), (doc.relative_to(ROOT), target)


# ---------------------------------------------------------------------------------------------------------
# envs.py: ALFWorld
# ---------------------------------------------------------------------------------------------------------
KINDS = {"pick", "clean", "heat", "cool", "examine", "pick2"}


def play(env, i, actions):
    env.reset(i)
    return [env.step(a) for a in actions]


# --------------------------------------------------------------------------------------------------------------
# 1. The embedded tables agree with alfworld/gen/constants.py
# --------------------------------------------------------------------------------------------------------------
@needs_reference
def test_tables_match_alfworld_constants():
    ref = json.loads((REFERENCE / "alfworld_constants.json").read_text())

    def low(names):       # our tables leave out the sliced classes (ALFWorld skips sliced games)
        return {n.lower() for n in names if not n.endswith("Sliced")}

    assert {r.lower(): low(objs) for r, objs in ref["VAL_RECEPTACLE_OBJECTS"].items()} ==\
        {r: set(objs) for r, objs in CAN_HOLD.items()}
    actions = ref["VAL_ACTION_OBJECTS"]
    assert (low(actions["Heatable"]), low(actions["Coolable"]), low(actions["Cleanable"]), low(actions["Toggleable"]))\
        == (HEATABLE, COOLABLE, CLEANABLE, TOGGLEABLE)
    assert low(ref["OPENABLE_CLASS_LIST"]) == OPENABLE
    assert low(ref["PICKUPABLE"]) == PICKUPABLE
    assert low(ref["MOVABLE_RECEPTACLES"]) == RECEPTACLE_OBJECTS


def test_priors_and_rooms_respect_the_compatibility_table():
    for obj, receps in PLACE_PRIOR.items():
        for r in receps:
            assert obj == "desklamp" or obj in CAN_HOLD[r], (obj, r)
    for room in ROOMS.values():
        for obj in (room["objects"] + " " + room["small_objects"]).split():
            assert obj in PLACE_PRIOR and obj in PICKUPABLE
        assert set(room["small_objects"].split()) <= set(room["objects"].split())
        assert len(room["small_objects"].split()) == 8


# --------------------------------------------------------------------------------------------------------------
# 2. The 36 real episodes replay in scenes rebuilt from their observations
# --------------------------------------------------------------------------------------------------------------
NAME = r"(\w+ \d+)"
ON = re.compile(rf"On the {NAME}, you see (.*)\.")
OPEN = re.compile(rf"(?:You open the {NAME}\. )?The {NAME} is open\. In it, you see (.*)\.")
CLOSED = re.compile(rf"The {NAME} is closed\.")
FACING = re.compile(r"You are facing the (.*)\. Next to it, you see nothing\.")
PUT = re.compile(rf"You put the {NAME} in/on the {NAME}\.")


def _items(text):
    """`a cloth 1, a soapbar 1, and a soapbottle 1` -> names (also reads the hand-edited list without `and`)."""
    if text == "nothing":
        return []
    return [re.sub(r"^(and )?an? ", "", part) for part in text.split(", ")]


def parse_episode(text):
    """First observation (two lines), and the (action, observation) pairs of a ReAct/Act prompt."""
    lines = text.strip("\n").split("\n")
    steps, action = [], None
    for line in lines[2:]:
        if line.startswith("Action:"):
            action = line[len("Action:"):].strip()
        elif line.startswith("Observation:"):
            steps.append((action, line[len("Observation:"):].strip()))
    return lines[0], lines[1], steps


def rebuild_scene(first_line, task_line, steps):
    """The scene as the episode reveals it: receptacles of the first observation; each one's initial contents are
    what is first seen in it minus what the agent put there before; found closed -> openable; `look` -> one spot."""
    receptacles = _items(first_line.split("you see ", 1)[1].rstrip("."))
    first_seen, put_before, closed, same_place = {}, {r: set() for r in receptacles}, set(), []
    for _, obs in steps:
        if m := ON.fullmatch(obs):
            first_seen.setdefault(m.group(1), _items(m.group(2)))
        elif m := OPEN.fullmatch(obs):
            closed.add(m.group(2))
            first_seen.setdefault(m.group(2), _items(m.group(3)))
        elif m := CLOSED.fullmatch(obs):
            closed.add(m.group(1))
        elif m := FACING.fullmatch(obs):
            group = [n.removeprefix("and ") for n in m.group(1).split(", ")]
            if len(group) > 1:
                same_place.append(group)
        elif (m := PUT.fullmatch(obs)) and m.group(2) not in first_seen:
            put_before[m.group(2)].add(m.group(1))
    contents = {r: [o for o in first_seen.get(r, []) if o not in put_before[r]] for r in receptacles}
    task = task_line.split("Your task is to: ", 1)[1]
    return ALFWorld.from_layout(contents, task, closed=sorted(closed), same_place=same_place)


@needs_reference
def test_real_episodes_replay_exactly():
    episodes = json.loads((REFERENCE / "alfworld_react_trajectories.json").read_text())
    assert len(episodes) == 36
    mismatches, n_obs = [], 0
    for name, text in episodes.items():
        first_line, task_line, steps = parse_episode(text)
        env = rebuild_scene(first_line, task_line, steps)
        # act_examine_0's task line carries a trailing space in the prompt text; the engine writes none
        assert env.reset(0) == first_line + "\n" + task_line.rstrip(), name
        for k, (action, expected) in enumerate(steps):
            obs, reward, done, info = env.step(action)
            n_obs += 1
            if obs != expected:
                mismatches.append((name, k, obs))
        assert info["won"] and done and reward == 1.0, name
    assert n_obs == 396
    # the 4 hand edits of those prompts (../shared/reference/README.md): a list without `, and`, and an
    # `open fridge 1` sent from the middle of the room, which the engine answers `Nothing happens.`
    assert sorted(m[:2] for m in mismatches) == [("act_heat_0", 0), ("act_put_0", 0), ("react_heat_0", 0),
                                                 ("react_put_0", 0)]
    assert {m[2] for m in mismatches if "heat" in m[0]} == {"Nothing happens."}
    assert {m[2] for m in mismatches if "put" in m[0]} == {
        "On the cabinet 1, you see a cloth 1, a soapbar 1, and a soapbottle 1."}


@needs_reference
def test_expert_solves_the_rebuilt_real_scenes():
    episodes = json.loads((REFERENCE / "alfworld_react_trajectories.json").read_text())
    for name, text in episodes.items():
        env = rebuild_scene(*parse_episode(text))
        env.reset(0)
        while not env.done:
            env.step(env.expert_step()[1])
        assert env.won, name


# --------------------------------------------------------------------------------------------------------------
# 3. Exact answers to odd actions (ENVS.md 1.3, 1.4, 1.10) on a hand-built scene
# --------------------------------------------------------------------------------------------------------------
N = "Nothing happens."
PROBES = [
    ("look", "You are in the middle of a room. Looking quickly around you, you see nothing."),
    ("inventory", "You are not carrying anything."),
    ("open fridge 1", N),                         # not at the fridge
    ("help", N), ("jump", N), ("go to loc 3", N), ("Go to countertop 1", N), ("", N),
    ("  go to countertop 1  ", "On the countertop 1, you see a apple 1, and a egg 1."),
    ("go to countertop 1", N),                    # already there
    ("look", "You are facing the countertop 1. Next to it, you see nothing."),
    ("examine countertop 1", "On the countertop 1, you see a apple 1, and a egg 1."),
    ("examine apple 1", N), ("examine fridge 1", N), ("open countertop 1", N),
    ("take apple 1 from countertop 1", "You pick up the apple 1 from the countertop 1."),
    ("take egg 1 from countertop 1", N),          # one object in hand
    ("inventory", "You are carrying: a apple 1."),
    ("examine apple 1", "There's nothing special about apple 1."),
    ("put apple 1 in countertop 1", N), ("put apple 1 on countertop 1", N), ("Put apple 1 in/on countertop 1", N),
    ("heat apple 1 with microwave 1", N),         # not at the microwave
    ("go to cabinet 1", "The cabinet 1 is closed."),
    ("go to cabinet 2", N),                       # same spot as cabinet 1
    ("look", "You are facing the cabinet 2, and cabinet 1. Next to it, you see nothing."),
    ("close cabinet 1", N),
    ("open cabinet 1", "You open the cabinet 1. The cabinet 1 is open. In it, you see a mug 1."),
    ("open cabinet 1", N),
    ("put apple 1 in/on cabinet 1", N),           # a cabinet cannot hold an apple
    ("examine cabinet 2", "On the cabinet 2, you see nothing."),   # not openable: reads like a table
    ("open cabinet 2", N),
    ("close cabinet 1", "You close the cabinet 1."),
    ("go to microwave 1", "The microwave 1 is closed."),
    ("heat apple 1 with microwave 1", "You heat the apple 1 using the microwave 1."),   # closed is fine
    ("examine apple 1", "This is a hot apple 1."),
    ("cool apple 1 with microwave 1", N), ("use microwave 1", N),
    ("go to fridge 1", "The fridge 1 is closed."),
    ("cool apple 1 with fridge 1", "You cool the apple 1 using the fridge 1."),
    ("examine apple 1", "This is a cold apple 1."),
    ("go to sinkbasin 1", "On the sinkbasin 1, you see nothing."),
    ("clean apple 1 with sinkbasin 1", "You clean the apple 1 using the sinkbasin 1."),
    ("examine apple 1", "This is a cool and clean apple 1."),
    ("put apple 1 in/on sinkbasin 1", "You put the apple 1 in/on the sinkbasin 1."),
    ("go to desk 1", "On the desk 1, you see a desklamp 1."),
    ("take desklamp 1 from desk 1", N),           # lamps cannot be picked up
    ("use desklamp 1", "You turn on the desklamp 1."),
    ("use desklamp 1", "You turn on the desklamp 1."),
    ("go to drawer 1", "On the drawer 1, you see a cd 1."),   # a drawer that is not openable
    ("open drawer 1", N),
    ("use desklamp 1", N),                        # the lamp is elsewhere
    ("go to sidetable 1", "On the sidetable 1, you see a bowl 1."),
    ("take bowl 1 from sidetable 1", "You pick up the bowl 1 from the sidetable 1."),
    ("examine bowl 1", "This is a normal bowl 1. In it, you see nothing."),
    ("go to fridge 1", "The fridge 1 is closed."),
    ("cool bowl 1 with fridge 1", "You cool the bowl 1 using the fridge 1."),
    ("examine bowl 1", "This is a normal bowl 1. In it, you see nothing."),
    ("go to microwave 1", "The microwave 1 is closed."),
    ("heat bowl 1 with microwave 1", N),          # a bowl is not heatable
    ("put bowl 1 in/on microwave 1", N),          # closed
    ("open microwave 1", "You open the microwave 1. The microwave 1 is open. In it, you see nothing."),
    ("put bowl 1 in/on microwave 1", "You put the bowl 1 in/on the microwave 1."),
    ("go to fridge 1", "The fridge 1 is closed."),
    ("open fridge 1", "You open the fridge 1. The fridge 1 is open. In it, you see a potato 1."),
    ("take potato 1 from fridge 1", "You pick up the potato 1 from the fridge 1."),
    ("examine potato 1", "This is a cold potato 1."),   # the task's class starts cool in a fridge
    ("go to toilet 1", "On the toilet 1, you see nothing."),
    ("put potato 1 in/on toilet 1", N),
    ("go to microwave 1", "The microwave 1 is open. In it, you see a bowl 1."),
    ("heat potato 1 with microwave 1", "You heat the potato 1 using the microwave 1."),
    ("examine potato 1", "This is a hot potato 1."),
    ("go to countertop 1", "On the countertop 1, you see a egg 1."),
]


def probe_scene():
    return ALFWorld.from_layout(
        {"cabinet 1": ["mug 1"], "cabinet 2": [], "countertop 1": ["apple 1", "egg 1"], "fridge 1": ["potato 1"],
         "microwave 1": [], "sinkbasin 1": [], "desk 1": ["desklamp 1"], "drawer 1": ["cd 1"], "toilet 1": [],
         "sidetable 1": ["bowl 1"]},
        "put a hot potato in countertop.", closed=["cabinet 1", "fridge 1", "microwave 1"],
        same_place=[["cabinet 1", "cabinet 2"]], max_steps=200)


def test_odd_actions_give_the_real_engines_answers():
    env = probe_scene()
    assert env.reset(0) == (
        "You are in the middle of a room. Looking quickly around you, you see a cabinet 2, a cabinet 1, "
        "a countertop 1, a desk 1, a drawer 1, a fridge 1, a microwave 1, a sidetable 1, a sinkbasin 1, "
        "and a toilet 1.\n"
        "Your task is to: put a hot potato in countertop.")
    for k, (action, expected) in enumerate(PROBES):
        obs, reward, done, info = env.step(action)
        assert (k, obs, reward, done) == (k, expected, 0.0, False), action
        assert env.t == k + 1
    assert env.step("put potato 1 in/on countertop 1") == ("You put the potato 1 in/on the countertop 1.", 1.0, True,
                                                           {"won": True, "steps": len(PROBES) + 1, "done": True})
    assert env.step("look")[2] is True            # the episode is over after a win


def test_goal_conditions():
    # light task: a lamp toggled earlier wins on arrival while holding the object (sticky toggle)
    env = ALFWorld.from_layout({"desk 1": ["desklamp 1"], "bed 1": ["book 1"]}, "examine the book with the desklamp")
    assert [r[:3] for r in play(env, 0, ["go to desk 1", "use desklamp 1", "go to bed 1",
                                         "take book 1 from bed 1", "go to desk 1"])] == [
        ("On the desk 1, you see a desklamp 1.", 0.0, False), ("You turn on the desklamp 1.", 0.0, False),
        ("On the bed 1, you see a book 1.", 0.0, False), ("You pick up the book 1 from the bed 1.", 0.0, False),
        ("On the desk 1, you see a desklamp 1.", 1.0, True)]
    # two objects must share one receptacle of the target class
    env = ALFWorld.from_layout({"drawer 1": ["cd 2", "cd 1"], "shelf 1": [], "shelf 2": []},
                               "find two cd and put them in shelf")
    steps = play(env, 0, ["go to drawer 1", "take cd 1 from drawer 1", "go to shelf 1", "put cd 1 in/on shelf 1",
                          "go to drawer 1", "take cd 2 from drawer 1", "go to shelf 2", "put cd 2 in/on shelf 2"])
    assert not any(s[2] for s in steps)
    assert play(env, 0, ["go to drawer 1", "take cd 1 from drawer 1", "go to shelf 1", "put cd 1 in/on shelf 1",
                         "go to drawer 1", "take cd 2 from drawer 1", "go to shelf 1",
                         "put cd 2 in/on shelf 1"])[-1][:3] == ("You put the cd 2 in/on the shelf 1.", 1.0, True)
    # a plain put does not satisfy a `clean` goal
    env = ALFWorld.from_layout({"countertop 1": ["fork 1"], "drawer 1": [], "sinkbasin 1": []},
                               "clean some fork and put it in drawer")
    assert play(env, 0, ["go to countertop 1", "take fork 1 from countertop 1", "go to drawer 1",
                         "put fork 1 in/on drawer 1"])[-1][2] is False


def test_parse_task_reads_every_template():
    assert parse_goal("put a hot apple in fridge.") == ("heat", "apple", "fridge")
    assert parse_goal("cool some pan and put it in stoveburner") == ("cool", "pan", "stoveburner")
    assert parse_goal("find some apple and put it in sidetable.") == ("pick", "apple", "sidetable")
    assert parse_goal("put some spraybottle on toilet") == ("pick", "spraybottle", "toilet")
    assert parse_goal("find two cellphone and put them in sofa") == ("pick2", "cellphone", "sofa")
    assert parse_goal("look at bowl under the desklamp. ") == ("examine", "bowl", "desklamp")
    assert parse_goal("put a clean lettuce in diningtable") == ("clean", "lettuce", "diningtable")
    with pytest.raises(ValueError):
        parse_goal("make me a sandwich")


# --------------------------------------------------------------------------------------------------------------
# 4. The expert
# --------------------------------------------------------------------------------------------------------------
def sample_indices(env, n):
    return range(len(env)) if len(env) <= n else random.Random(0).sample(range(len(env)), n)


LABELS = {   # the subgoal structure of the handcoded expert (ENVS.md 1.6), one regex per task type
    "pick": "(find O )*take O (find T )*put T ",
    "clean": "(find O )*take O (clean O )+(find T )*put T ",
    "heat": "(find O )*take O (heat O )+(find T )*put T ",
    "cool": "(find O )*take O (cool O )+(find T )*put T ",
    "examine": "(find O )*take O (find L )*use L ",
    "pick2": "(find O )*take O (find T )*put T (find O )*take O (find T )*put T ",
}


@pytest.mark.parametrize("scene", ["small", "full"])
def test_expert_wins_every_task_cleanly(scene):
    for split, n in (("seen", 140), ("unseen", 134), ("train", 300)):
        env = ALFWorld(split, scene=scene)
        for i in sample_indices(env, n):
            trajectory = env.expert(i)
            task = env.get_task(i)
            obs = [env.reset(i)] + [env.step(a)[0] for _, a, _ in trajectory]
            assert env.won and len(trajectory) <= env.max_steps, (split, i)
            assert "Nothing happens." not in obs, (split, i)
            # labels follow the subgoal list; O = object, T = target class, L = the lamp
            names = {task.obj: "O", task.target: "T" if task.kind != "examine" else "L"}
            labels = "".join(f"{re.sub(r'[(].*', '', sg)} {names[sg[sg.index('(') + 1:-1]]} "
                             for _, _, sg in trajectory)
            assert re.fullmatch(LABELS[task.kind], labels), (split, i, labels)
            # the first thought states the plan with the actual appliance and target; the others restate the
            # latest observation first
            first = trajectory[0][0]
            assert first.startswith("To solve the task, I need to find and take "), first
            if task.kind in ("heat", "cool", "clean"):
                assert f"then {task.kind} it with {task.appliance}, then put it in/on {task.targets[0]}." in first
            for (thought, _, _), previous in zip(trajectory[1:], obs[1:]):
                assert thought.startswith(ALFWorld._restate(previous)), (thought, previous)


def test_expert_thoughts_on_a_known_scene():
    env = ALFWorld.from_layout({"countertop 1": ["fork 1"], "countertop 2": ["mug 1", "plate 1"], "cabinet 1": [],
                                "cabinet 2": [], "microwave 1": []}, "heat some mug and put it in cabinet",
                               closed=["cabinet 1", "cabinet 2", "microwave 1"])
    trajectory = env.expert(0)
    assert trajectory == [
        ("To solve the task, I need to find and take a mug, then heat it with microwave 1, then put it in/on "
         "cabinet 1. First I check countertop 1.", "go to countertop 1", "find(mug)"),
        ("On the countertop 1, I see a fork 1. No mug here. Next, I check countertop 2 to find a mug, then heat it "
         "with microwave 1, then put it in/on cabinet 1.", "go to countertop 2", "find(mug)"),
        ("On the countertop 2, I see a mug 1, and a plate 1. Now I find a mug 1. Next, I need to take it.",
         "take mug 1 from countertop 2", "take(mug)"),
        ("I picked up the mug 1. Next, I go to microwave 1 to heat it, then put it in/on cabinet 1.",
         "go to microwave 1", "heat(mug)"),
        ("The microwave 1 is closed. Next, I heat the mug 1 with microwave 1, then put it in/on cabinet 1.",
         "heat mug 1 with microwave 1", "heat(mug)"),
        ("The mug 1 is hot now. Next, I go to cabinet 1 to put it there.", "go to cabinet 1", "find(cabinet)"),
        ("The cabinet 1 is closed. I need to open it.", "open cabinet 1", "find(cabinet)"),
        ("In the cabinet 1, I see nothing. Next, I put the mug 1 in/on cabinet 1.", "put mug 1 in/on cabinet 1",
         "put(cabinet)"),
    ]


def test_expert_searches_opens_and_closes_and_remembers():
    env = ALFWorld.from_layout({"drawer 1": ["pen 1"], "drawer 2": ["cd 2", "cd 1"], "shelf 1": [], "desk 1": []},
                               "put two cd in shelf", closed=["drawer 1", "drawer 2"])
    actions = [a for _, a, _ in env.expert(0)]
    assert actions == ["go to drawer 1", "open drawer 1", "close drawer 1", "go to drawer 2", "open drawer 2",
                       "take cd 2 from drawer 2", "go to shelf 1", "put cd 2 in/on shelf 1",
                       "go to drawer 2", "take cd 1 from drawer 2", "go to shelf 1", "put cd 1 in/on shelf 1"]


def test_expert_checks_receptacles_sharing_a_spot():
    env = ALFWorld.from_layout({"cabinet 1": [], "cabinet 2": ["kettle 1"], "stoveburner 1": []},
                               "put a kettle in stoveburner", closed=["cabinet 1"],
                               same_place=[["cabinet 1", "cabinet 2"]])
    actions = [a for _, a, _ in env.expert(0)]
    assert actions[:4] == ["go to cabinet 1", "open cabinet 1", "examine cabinet 2", "take kettle 1 from cabinet 2"]
    assert "go to cabinet 2" not in actions


def test_expert_recovers_from_an_agents_mistakes():
    """DAgger-style: after random moves the expert still finishes from the current state."""
    for scene in ("small", "full"):
        env = ALFWorld("unseen", scene=scene, max_steps=120)
        rng = random.Random(1)
        for i in range(0, len(env), 3):
            env.reset(i)
            for _ in range(8):
                names = list(env.layout.names)
                here = [o for r in env.layout.at_spot.get(env.spot, ()) for o in env.contents[r]]
                action = rng.choice([f"go to {rng.choice(names)}", f"open {rng.choice(names)}",
                                     f"take {rng.choice(here or ['x 1'])} from {rng.choice(names)}",
                                     f"put {env.held} in/on {rng.choice(names)}", "look", "jump"])
                env.step(action)
            while not env.done:
                move = env.expert_step()
                assert move is not None, (scene, i)
                env.step(move[1])
            assert env.won, (scene, i)


# --------------------------------------------------------------------------------------------------------------
# 5. Splits, determinism, robustness, contract
# --------------------------------------------------------------------------------------------------------------
def test_split_sizes_and_task_types():
    for split, counts in ALFWORLD_SPLITS.items():
        env = ALFWorld(split)
        assert len(env) == sum(counts.values()) == {"train": 3553, "seen": 140, "unseen": 134}[split]
        assert {k: [env.task_type(i) for i in range(len(env))].count(k) for k in counts} == counts
    assert set(ALFWORLD_SPLITS["train"]) == KINDS
    with pytest.raises(ValueError, match="seen"):
        ALFWorld("test")
    with pytest.raises(ValueError, match="small"):
        ALFWorld("seen", scene="huge")
    assert ENVS["alfworld"] is ALFWorld and ALFWorld.default_max_steps == 30


@pytest.mark.parametrize("scene", ["small", "full"])
def test_scene_sizes(scene):
    lo, hi = (6, 10) if scene == "small" else (10, 30)
    env = ALFWorld("seen", scene=scene)
    for i in range(0, 140, 7):
        task = env.get_task(i)
        assert lo <= len(task.layout.names) <= hi
        objects = [o for objs in task.contents.values() for o in objs if o != "desklamp 1"]
        if scene == "small":
            assert len({o.rsplit(" ", 1)[0] for o in objects}) <= 8
            assert 3 <= sum(not o.startswith(task.obj + " ") for o in objects) <= 6


def signature(task):
    return task.layout.key, task.kind, task.obj, task.target, tuple(sorted(task.contents.items()))


@pytest.mark.parametrize("scene", ["small", "full"])
def test_splits_are_disjoint(scene):
    train, seen, unseen = (ALFWorld(s, scene=scene) for s in ("train", "seen", "unseen"))
    train_tasks = [train.get_task(i) for i in range(400)]
    seen_tasks = [seen.get_task(i) for i in range(len(seen))]
    unseen_tasks = [unseen.get_task(i) for i in range(len(unseen))]
    # by construction: seen tasks come from the 1-in-8 hash bucket that train never uses ...
    assert all(in_seen_bucket(t) for t in seen_tasks) and not any(in_seen_bucket(t) for t in train_tasks)
    # ... and unseen tasks from held-out layouts (0-2 of each room) that train and seen never use
    layout_no = lambda t: int(t.layout.key.rsplit("/", 1)[1])
    assert all(layout_no(t) < 3 for t in unseen_tasks) and all(layout_no(t) >= 3 for t in train_tasks + seen_tasks)
    # held-out object/target pairs appear only in unseen goals, and in about half of them
    assert not any(heldout_pair(t.obj, t.target) for t in train_tasks + seen_tasks)
    assert sum(heldout_pair(t.obj, t.target) for t in unseen_tasks) > 30
    keys = [set(map(signature, ts)) for ts in (train_tasks, seen_tasks, unseen_tasks)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])


def test_same_seed_same_tasks_other_seed_other_tasks():
    a, b, c = ALFWorld("unseen", seed=0), ALFWorld("unseen", seed=0), ALFWorld("unseen", seed=1)
    for i in range(0, 134, 5):
        assert a.reset(i) == b.reset(i) and a.expert(i) == b.expert(i)
        assert signature(a.get_task(i)) == signature(b.get_task(i))
    assert sum(signature(a.get_task(i)) != signature(c.get_task(i)) for i in range(0, 134, 5)) >= 25
    assert [a.task_type(i) for i in range(134)] != [c.task_type(i) for i in range(134)]
    small = ALFWorld("train", seed=3, scene="small")
    assert small.expert(1234) == ALFWorld("train", seed=3, scene="small").expert(1234)


def test_garbage_actions_never_raise():
    rng = random.Random(0)
    noise = "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(10_000))
    garbage = ["", " ", "\n", noise, "put apple 1 in cabinet 1", "GO TO FRIDGE 1", "go to", "take", "take  from ",
               "put None in/on fridge 1", "examine", "use", "heat with", "🍎 take apple 1 from fridge 1",
               "go to fridge 1; DROP TABLE", "open fridge 1\nclose fridge 1", "x" * 5000, "go to " + noise]
    for scene in ("small", "full"):
        env = ALFWorld("seen", scene=scene, max_steps=10_000)
        env.reset(3)
        for k, action in enumerate(garbage * 3, start=1):
            obs, reward, done, info = env.step(action)
            assert isinstance(obs, str) and env.t == k and reward == 0.0 and not done
        assert obs == "Nothing happens."
        env.reset(4)
        names = list(env.layout.names) + ["apple 1", "desklamp 1", "mug 2"]
        for k in range(1, 400):
            verb = rng.choice(["go to", "open", "close", "take", "put", "heat", "cool", "clean", "use", "examine"])
            action = f"{verb} {rng.choice(names)}" + rng.choice(["", f" from {rng.choice(names)}",
                                                                 f" in/on {rng.choice(names)}",
                                                                 f" with {rng.choice(names)}"])
            obs, reward, done, info = env.step(action)
            assert isinstance(obs, str) and isinstance(info["won"], bool)
            if done:
                break
            assert env.t == k


def test_alfworld_clone_is_independent():
    env = ALFWorld("seen", scene="small")
    env.reset(5)
    trajectory = env.expert(5)
    for _, action, _ in trajectory[:3]:
        env.step(action)
    twin = env.clone()
    snapshot = (env.obs, env.t, dict(env.contents), env.held, set(env.opened), dict(env.memory), env.spot)
    for _, action, _ in trajectory[3:]:
        twin.step(action)
    assert twin.won and not env.won
    assert snapshot == (env.obs, env.t, dict(env.contents), env.held, set(env.opened), dict(env.memory), env.spot)
    assert twin.task is env.task                 # static task data is shared, not copied
    for _, action, _ in trajectory[3:]:
        env.step(action)
    assert env.won


def test_assistant_turn_round_trips():
    env = ALFWorld("seen", scene="small")
    for i in range(0, 140, 10):
        for thought, action, _ in env.expert(i):
            assert env.parse(env.assistant_turn(thought, action)) == action
    assert env.instruction.startswith("Interact with a household to solve a task.")


def test_first_observation_format():
    env = ALFWorld("unseen")
    obs = env.reset(0)
    assert obs.startswith("You are in the middle of a room. Looking quickly around you, you see a ")
    assert obs.count("\n") == 1 and re.fullmatch(r".*\.\nYour task is to: [a-z ]+\.", obs, re.S)


def test_alfworld_real_adapter_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    with pytest.raises(RuntimeError) as err:
        ENVS["alfworld_real"]("seen")
    message = str(err.value)
    assert "\n" not in message and message.startswith("alfworld_real ")
    assert "pip install alfworld textworld[pddl]" in message or "json_2.1.1" in message
    with pytest.raises(ValueError):
        ALFWorldReal("dev")


# ---------------------------------------------------------------------------------------------------------
# envs.py: WebShop
# ---------------------------------------------------------------------------------------------------------
def _ref(name):
    return json.loads((REFERENCE / name).read_text())


@pytest.fixture(scope="module")
def ws_train():
    return envs.WebShop("train", seed=0)


@pytest.fixture(scope="module")
def ws_test():
    return envs.WebShop("test", seed=0)


# -- the reward: WebShop's own unit tests (tests/web-agent-site/engine/test_goal.py) ---------------------------

@needs_reference
def test_attribute_reward_cases():
    for case in _ref("webshop_reward_cases.json")["get_attribute_reward"]:
        goal = {"attributes": case["goal_attributes"]}
        assert envs.webshop_attribute_reward(case["purchased"], goal) == (case["r_attr"], case["num_attr_matches"])


@needs_reference
def test_option_reward_cases():
    for case in _ref("webshop_reward_cases.json")["get_option_reward"]:
        assert envs.webshop_option_reward(case["purchased"], case["goal"]) == (case["r_option"], case["matches"])


@needs_reference
def test_type_reward_cases():
    exact, pairs, *approximate = _ref("webshop_reward_cases.json")["get_type_reward"]
    result = envs.webshop_type_reward(exact["purchased"], exact["goal"])
    assert result == {k: exact[k] for k in ("r_type", "query_match", "category_match", "title_score")}
    goal = dict(exact["goal"])
    for category, expected in pairs["cases"]:
        purchased = dict(exact["purchased"], product_category=category)
        assert envs.webshop_type_reward(purchased, goal)["category_match"] is expected
    # spaCy's noun tagging is approximated: within 0.12 of spaCy's title scores (ours 0.294/0.154/0.0 below)
    for case in approximate:
        score = envs.webshop_type_reward({**exact["purchased"], "name": case["purchased_name"]},
                                       {**goal, "name": case["goal_name"]})["title_score"]
        if "title_score" in case:
            assert abs(score - case["title_score"]) <= 0.12, (case["goal_name"], score)
        else:
            assert score < case["title_score_below"]


@needs_reference
def test_total_reward_cases():
    spec = _ref("webshop_reward_cases.json")["get_reward"]
    first, *changes = spec["steps"]
    goal, purchased = dict(first["goal"]), dict(first["purchased"])
    total = lambda: envs.webshop_reward(purchased, goal, spec["price"], purchased["goal_options"])  # noqa: E731
    assert total() == first["total"]
    # step 2: the BulletPoints-as-a-string quirk: ' '.join spreads it into characters, so only 'natural
    # ingredients' (in Description) matches -> (1 + 2 + 1) / 6
    purchased.update(Attributes=[], Title="", BulletPoints="This shampoo has essential oils and smells like lemons",
                     Description="Best shampoo on the market, made with natural ingredients")
    assert total() == pytest.approx(4 / 6) and round(total(), 4) == changes[0]["total"]
    goal["goal_options"] = {"color": "grey", "size": "XL", "amount": "pack of 12"}
    assert total() == pytest.approx(4 / 7) and round(total(), 4) == changes[1]["total"]
    goal["name"] = "Saireed UL Listed 2 Prong Power Cord for JBL Bar 3.1 Bar 2.1 Channel 4K Ultra HD Soundbar"
    purchased.update(name="BRST AC Power Cord Outlet Socket Cable Plug Lead for Panasonic SC-HT830V DVD/VCR Combo "
                          "Home Theater System", query="Query 2", product_category="a › d › e")
    assert round(total(), 4) == changes[2]["total"]                 # r_type 0.5 (approximate title score 2/13)


def test_normalize_color_and_fuzz():
    # WebShop tests/web-agent-site/engine/test_normalize.py cases
    for text, expected in [("", ""), ("black forest", "black"), ("violet lavender", "lavender"),
                           ("steelivy fuchsia", "fuchsia"), ("123alabaster", "alabaster"), ("webshop", "webshop")]:
        assert envs.normalize_color(text) == expected
    # thefuzz README examples and hand-computed difflib ratios
    assert envs.token_set_ratio("fuzzy was a bear", "fuzzy fuzzy was a bear") == 100
    assert envs._fuzz_ratio("this is a test", "this is a test!") == 97
    assert envs.token_set_ratio("essential oil", "essential oils") == round(100 * 26 / 27)   # 96 > 85
    assert envs.token_set_ratio("long sleeve", "short sleeve") <= 85
    assert envs.token_set_ratio("", "anything") == 0 and envs.token_set_ratio("!!", "??") == 0


def test_price_upper_rule():
    rng = random.Random(0)
    for price in [0.5, 9.99, 10.0, 64.98, 123.4, 985.0]:
        above = [p for p in envs.WEBSHOP_PRICE_RANGE if p > price][:4]
        for _ in range(20):
            u = envs.webshop_price_upper(rng, price)
            assert u in above[1:] if len(above) >= 2 else u == 1000000


# -- exact pages on a hand-built shop ----------------------------------------------------------------------

BRANDS = ["Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India", "Juliet", "Kilo", "Lima"]
INSTR = ("i need sulfate free shampoo with tea tree in size 16 fl oz and lavender | mint scent, "
         "and price lower than 30.00 dollars")


def tiny_shop(max_steps=None):
    """12 shampoos with identical BM25 statistics (so results come in catalogue order) and one conditioner."""
    path = "Beauty & Personal Care › Hair Care › Shampoos"
    products = [envs.webshop_product(f"B0AAAA{k:04d}", f"{b} Shampoo", [10.0 + k], ["sulfate free", "long lasting"],
                                   bullets=["Gentle daily formula"], description="A shampoo.", category="beauty",
                                   query="shampoo", product_category=path)
                for k, b in enumerate(BRANDS[:11])]
    products.append(envs.webshop_product(
        "B0AAAA0011", "Lima Shampoo", [12.5, 20.0], ["sulfate free", "long lasting"],
        options={"Size": ["8 fl oz", "16 fl oz"], "Scent": ["Lavender/Mint", "unscented"]},
        bullets=["Gentle daily formula"], description="Made with tea tree oil.", category="beauty",
        query="shampoo", product_category=path, price=15.0))
    products.append(envs.webshop_product("B0AAAA0012", "Zulu Conditioner", [8.0], ["paraben free"],
                                       query="conditioner", product_category=path))
    goal = dict(asin="B0AAAA0011", category="beauty", query="shampoo", name="Lima Shampoo", product_category=path,
                instruction_text=INSTR, attributes=["sulfate free", "tea tree"], price_upper=30.0,
                goal_options={"size": "16 fl oz", "scent": "lavender | mint"}, type="shampoo",
                expert_queries=("shampoo",))
    return envs.WebShop.from_catalogue(products, [goal], max_steps=max_steps)


def test_exact_pages_of_a_tiny_shop():
    env = tiny_shop(max_steps=30)
    assert env.reset(0) == f"WebShop [SEP] Instruction: [SEP] {INSTR} [SEP] Search"
    head = f"Instruction: [SEP] {INSTR} [SEP] Back to Search"
    page1 = "".join(f" [SEP] B0AAAA{k:04d} [SEP] {b} Shampoo [SEP] ${10.0 + k}" for k, b in enumerate(BRANDS[:10]))
    obs, reward, done, info = env.step("search[Shampoo]")
    assert obs == f"{head} [SEP] Page 1 (Total results: 12) [SEP] Next >{page1}"
    assert (reward, done, info["won"]) == (0.0, False, False)
    obs, *_ = env.step("click[next >]")
    assert obs == (f"{head} [SEP] Page 2 (Total results: 12) [SEP] < Prev [SEP] Next > [SEP] B0AAAA0010 [SEP] Kilo "
                   f"Shampoo [SEP] $20.0 [SEP] B0AAAA0011 [SEP] Lima Shampoo [SEP] $12.5 to $20.0")
    assert env.step("click[< prev]")[0] == f"{head} [SEP] Page 1 (Total results: 12) [SEP] Next >{page1}"
    env.step("click[Next >]")
    item = (f"{head} [SEP] < Prev [SEP] size [SEP] 8 fl oz [SEP] 16 fl oz [SEP] scent [SEP] lavender | mint [SEP] "
            "unscented [SEP] Lima Shampoo [SEP] Price: $12.5 to $20.0 [SEP] Rating: N.A. [SEP] Description [SEP] "
            "Features [SEP] Reviews [SEP] Buy Now")
    assert env.step("click[b0aaaa0011]")[0] == item
    assert env.step("click[Description]")[0] == f"{head} [SEP] < Prev [SEP] Made with tea tree oil."
    assert env.step("click[< prev]")[0] == item
    assert env.step("click[features]")[0] == f"{head} [SEP] < Prev [SEP] Gentle daily formula"
    env.step("click[< prev]")
    assert env.step("click[reviews]")[0] == f"{head} [SEP] < Prev"
    env.step("click[< prev]")
    assert env.step("click[16 fl oz]")[0] == item                  # choosing an option does not change the text
    assert env.step("click[lavender | mint]")[0] == item
    obs, reward, done, info = env.step("click[Buy Now]")
    assert (reward, done, info["won"], env.t) == (1.0, True, True, 14)
    assert obs == ("Thank you for shopping with us! [SEP] Your code: [SEP] None [SEP] (Paste it in your MTurk "
                   "interface.) [SEP] Purchased [SEP] asin [SEP] B0AAAA0011 [SEP] options [SEP] {\"scent\": "
                   "\"lavender | mint\", \"size\": \"16 fl oz\"} [SEP] attrs [SEP] None [SEP] category [SEP] None "
                   "[SEP] query [SEP] None [SEP] product category [SEP] None [SEP] Target [SEP] asin [SEP] options "
                   "[SEP] attrs [SEP] price upper [SEP] instuction text [SEP] category [SEP] product category [SEP] "
                   "query [SEP] Goal [SEP] None [SEP] Reward [SEP] Your score (min 0.0, max 1.0) [SEP] 1.0 [SEP] "
                   "Reward Details [SEP] None")


def test_rewards_on_the_tiny_shop():
    env = tiny_shop()
    # 'tea tree' only in the description, one option of two, price ok: (2 + 1 + 1) / 5
    env.reset(0)
    for a in ["search[shampoo]", "click[next >]", "click[B0AAAA0011]", "click[16 fl oz]", "click[buy now]"]:
        obs, reward, done, info = env.step(a)
    assert (reward, done, info["won"]) == (0.8, True, False)
    assert obs.endswith("[SEP] 0.8 [SEP] Reward Details [SEP] None")
    # a shampoo without tea tree and without options: (1 + 0 + 1) / 5
    env.reset(0)
    for a in ["search[shampoo]", "click[B0AAAA0000]", "click[buy now]"]:
        obs, reward, done, info = env.step(a)
    assert reward == pytest.approx(0.4) and "options [SEP] {} [SEP]" in obs


def test_expert_on_the_tiny_shop():
    env = tiny_shop()
    assert env.expert(0) == [
        ("I think I should search for shampoo that is sulfate free and tea tree.", "search[shampoo]", "search"),
        ("I think none of the items on this page matches. I should check the next page.", "click[Next >]", "select"),
        ("I think the item B0AAAA0011 matches the shampoo that is sulfate free and tea tree. I should click on it.",
         "click[B0AAAA0011]", "select"),
        ("I think I should select the '16 fl oz' size.", "click[16 fl oz]", "options"),
        ("I think I should select the 'lavender | mint' scent.", "click[lavender | mint]", "options"),
        ("I think I should click on 'Buy Now'.", "click[Buy Now]", "buy")]


# -- action rules and robustness ----------------------------------------------------------------------------

def test_invalid_clicks_leave_the_page_and_cost_a_step():
    env = tiny_shop(max_steps=20)
    index = env.reset(0)
    for action in ["click[search]", "click[Search]", "click[back to search]", "click[b0aaaa0000]", "Search[shampoo]",
                   "search[]", "search shampoo", "click shampoo"]:
        t = env.t
        assert env.step(action) == (index, 0.0, False, {"won": False, "steps": t + 1, "done": False})
    results = env.step("search[shampoo]")[0]
    for action in ["click[< prev]", "click[buy now]", "click[B0AAAA0011]", "click[description]", "click[16 fl oz]"]:
        t = env.t
        assert env.step(action)[:3] == (results, 0.0, False) and env.t == t + 1
    item = env.step("click[B0AAAA0000]")[0]
    for action in ["click[next >]", "click[b0aaaa0001]", "click[16 fl oz]", "click[search]"]:
        assert env.step(action)[:3] == (item, 0.0, False)
    assert env.t == 19 and not env.done
    assert env.step("click[nothing]")[2] is True and env.t == 20   # max_steps ends the episode
    assert env.step("click[buy now]")[:3] == (item, 0.0, True) and env.t == 20    # nothing moves after the end


def test_search_and_back_to_search_work_from_any_page():
    env = tiny_shop()
    env.reset(0)
    env.step("search[shampoo]")
    env.step("click[B0AAAA0003]")
    assert env.step("search[conditioner]")[0].endswith("Page 1 (Total results: 1) [SEP] Next > [SEP] B0AAAA0012 "
                                                      "[SEP] Zulu Conditioner [SEP] $8.0")
    assert env.step("click[back to search]")[0] == env.reset(0)


GARBAGE = ["", " ", "\n", "x" * 10_000, "[" * 10_000, "[]" * 5_000, "]" * 10_000 + "[", "search[" + "a]" * 5000,
           "click[]", "search[]", "click[[buy now]]", "search[[shampoo]]", "click[click[buy now]]",
           "search[ünïcödé ☃ 商品]", "click[☃]", "search[\x00\x01]", "click[buy now", "click]buy now[",
           "'; DROP TABLE products; --", "search[shampoo]\nclick[buy now]", "CLICK[BUY NOW]", "search[   ]"]


def test_garbage_never_raises(ws_train):
    rng = random.Random(0)
    noise = "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(10_000))
    for page_actions in [[], ["search[shampoo]"], ["search[shampoo]", "click[next >]"]]:
        env = ws_train.clone()
        env.reset(3)
        for a in page_actions:
            env.step(a)
        for action in GARBAGE + [noise]:
            if env.done:
                env.reset(3)
            t = env.t
            obs, reward, done, info = env.step(action)
            assert isinstance(obs, str) and env.t == t + 1 and reward == 0.0
    env = ws_train.clone()
    env.reset(0)
    assert env.act("no action here")[0] == envs.WebShop.invalid_format and env.t == 1


def test_action_parser_matches_webshop_regex():
    pattern = re.compile(r"(.+)\[(.+)\]")
    rng = random.Random(1)
    for _ in range(20_000):
        s = "".join(rng.choice("ab[]\n \r") for _ in range(rng.randint(0, 9)))
        m = re.match(pattern, s)
        assert envs.parse_webshop_action(s) == ((s, None) if m is None else m.groups())


def test_webshop_clone_is_independent(ws_train):
    env = ws_train.clone()
    env.reset(7)
    expert = env.expert(7)
    for _, action, _ in expert[:2]:
        env.step(action)
    before = (env.obs, env.t, dict(env.options), env.page)
    copy = env.clone()
    for _, action, _ in expert[2:]:
        copy.step(action)
    copy.options["color"] = "mutated"
    assert copy.done and copy.won
    assert (env.obs, env.t, dict(env.options), env.page) == before and not env.done
    assert copy.data is env.data                                    # the shop is shared, not copied


def test_parse_round_trip(ws_train):
    env = ws_train.clone()
    for i in range(20):
        for thought, action, _ in env.expert(i):
            assert env.parse(env.assistant_turn(thought, action)) == action
    assert env.parse("Thought: hmm\nAction: click[Buy Now]\n") == "click[Buy Now]"
    assert env.parse("Thought: no action") is None
    assert env.instruction == INSTRUCTIONS["webshop"]


# -- the generated shop, the splits and the expert -----------------------------------------------------------

def test_catalogue_shape(ws_train):
    products = ws_train.data.products
    assert 950 <= len(products) <= 1050 and len({p["asin"] for p in products}) == len(products)
    cats = {p["category"] for p in products}
    assert len(cats) == 10
    for p in products:
        assert re.fullmatch(r"B0[A-Z0-9]{8}", p["asin"])
        assert 2 <= len(p["Attributes"]) <= 6 and len(p["options"]) <= 3
        assert all(2 <= len(v) <= 8 and v == [x.lower() for x in v] and all("/" not in x for x in v)
                   for v in p["options"].values())
        assert len(p["product_category"].split(" › ")) >= 3
        assert p["pricing"][0] <= p["price"] <= p["pricing"][-1]
        assert re.fullmatch(r"\$\d+\.\d+( to \$\d+\.\d+)?", p["Price"])
    assert sum(len(p["pricing"]) == 2 for p in products) > 100       # price ranges exist


def test_splits_sizes_types_and_disjointness(ws_train, ws_test):
    assert len(ws_train) >= 1500 and len(ws_test) == 200
    assert {ws_train.task_type(i) for i in range(len(ws_train))} == set(envs.WEBSHOP_CATEGORIES)
    train_texts = {g["instruction_text"] for g in ws_train.goals}
    assert len(train_texts) == len(ws_train)
    assert not train_texts & {g["instruction_text"] for g in ws_test.goals}
    assert not {g["asin"] for g in ws_train.goals} & {g["asin"] for g in ws_test.goals}
    for g in ws_test.goals:
        assert g["instruction_text"].endswith(f", and price lower than {g['price_upper']:.2f} dollars")
        p = ws_train.data.products[g["target"]]
        assert set(g["attributes"]) <= set(p["Attributes"]) and set(g["goal_options"]) == set(p["options"])
        assert all(g["goal_options"][k] in p["options"][k] for k in g["goal_options"])
    with pytest.raises(ValueError, match="train, test"):
        envs.WebShop("dev")


def test_bm25_finds_the_target_with_the_experts_query(ws_test):
    index, products = ws_test.data.index, ws_test.data.products
    for g in ws_test.goals:
        hits = index.search(g["expert_queries"][-1])
        assert len(hits) <= 50 and g["target"] in hits[:20]
    hits = index.search("sulfate free shampoo")
    assert len(hits) == 50 and "Shampoo" in products[hits[0]]["Title"]
    assert index.search("zzzz qqqq") == ()


def _check_expert(env, indices):
    labels = {"search", "select", "inspect", "options", "buy"}
    lengths = []
    for i in indices:
        trajectory = env.expert(i)
        play = env.clone()
        play.reset(i)
        for _, action, label in trajectory:
            obs, reward, done, info = play.step(action)
            assert label in labels
        assert done and info["won"] and reward == 1.0 and len(trajectory) <= env.max_steps, (i, trajectory)
        lengths.append(len(trajectory))
    return lengths


def test_expert_wins_every_test_goal(ws_test):
    lengths = _check_expert(ws_test, range(len(ws_test)))
    assert 4 <= sum(lengths) / len(lengths) <= 8


def test_expert_wins_a_train_sample(ws_train):
    lengths = _check_expert(ws_train, random.Random(0).sample(range(len(ws_train)), 300))
    assert 4 <= sum(lengths) / len(lengths) <= 8


def test_expert_refines_pages_and_inspects_sometimes(ws_test):
    actions = [[a for _, a, _ in ws_test.expert(i)] for i in range(len(ws_test))]
    assert sum("click[Next >]" in a for a in actions) >= 10
    assert sum("click[Back to Search]" in a for a in actions) >= 10
    assert sum("click[Description]" in a or "click[Features]" in a for a in actions) >= 30


def test_expert_picks_what_its_pages_show(ws_test):
    """Imitation can only learn a choice the observation explains: where the expert clicks a product, it is the first
    one on the page whose title (of the goal's type, lowest price within budget) shows the most goal attributes, and
    a page it passes over (Next >, Back to Search) shows nothing as good."""
    def looks(product, goal):
        title = product["Title"].lower()
        if goal["type"].lower() not in title or product["pricing"][0] > goal["price_upper"]:
            return -1
        return sum(a in title for a in goal["attributes"])
    passed = 0
    for i in range(len(ws_test)):
        env = ws_test.clone()
        env.reset(i)
        goal = env.goal
        while not env.done:
            action = env.expert_step()[1]
            if env.page == "results":
                page = [env.data.products[j] for j in env.results[(env.page_no - 1) * 10:env.page_no * 10]]
                seen = [looks(p, goal) for p in page]
                target = looks(env.data.products[goal["target"]], goal)
                if action.startswith("click[B0"):
                    assert target >= 1 and page[seen.index(max(seen))]["asin"] == action[6:-1], (i, seen)
                else:
                    assert max(seen, default=-1) < target, (i, seen)
                    passed += 1
            env.step(action)
    assert passed >= 50                                   # pages passed over do occur


def test_expert_recovers_after_wrong_moves(ws_train):
    env = ws_train.clone()
    env.reset(11)
    for action in ["search[something else entirely]", "click[next >]", "click[back to search]", "search[hat]"]:
        env.step(action)
    while not env.done:
        env.step(env.expert_step()[1])
    assert env.won


def test_same_seed_same_goals_and_trajectories():
    key = (1, 300, 60, 20)
    first = envs.WebShop("test", seed=1, n_products=300, n_train=60, n_test=20)
    envs.WebShopData._cache.pop(key)
    second = envs.WebShop("test", seed=1, n_products=300, n_train=60, n_test=20)
    assert first.data is not second.data
    assert [p["Title"] for p in first.data.products] == [p["Title"] for p in second.data.products]
    assert first.goals == second.goals
    assert [first.expert(i) for i in range(20)] == [second.expert(i) for i in range(20)]
    other = envs.WebShop("test", seed=2, n_products=300, n_train=60, n_test=20)
    assert [g["instruction_text"] for g in other.goals] != [g["instruction_text"] for g in first.goals]


# -- the real ETO/IPR example and the real adapter -----------------------------------------------------------

@needs_reference
def test_observations_have_the_shape_of_the_real_example(ws_test):
    (episode,) = _ref("webshop_eto_format_example.json")
    real = [m["content"] for m in episode]
    assert real[0].startswith(envs.WebShop.obs_prefix + "WebShop [SEP] Instruction: [SEP] ")
    assert "Page 1 (Total results: 50) [SEP] Next > [SEP] B0" in real[2]
    assert (REFERENCE / "webshop_instruction.txt").read_text().strip() == INSTRUCTIONS["webshop"].strip()
    # every real action parses the same way; the real ASIN click works lower-cased, as the env sees it
    for turn in real[1::2]:
        action = envs.WebShop.parse(ws_test, turn)
        name, arg = envs.parse_webshop_action(action)
        assert name in ("search", "click") and arg
    env = ws_test.clone()
    env.reset(0)
    obs = env.obs_prefix + env.obs
    assert re.fullmatch(r"Observation:\nWebShop \[SEP\] Instruction: \[SEP\] [^\[]+ \[SEP\] Search", obs)
    goal = env.goal                               # an ETO-like query: type, attributes and options
    results = env.step(f"search[{' '.join([goal['type'], *goal['attributes'], *goal['goal_options'].values()])}]")[0]
    shape = r"Instruction: \[SEP\] [^\[]+ \[SEP\] Back to Search \[SEP\] Page 1 \(Total results: \d+\) \[SEP\] Next >"
    shape += r"( \[SEP\] B0[A-Z0-9]{8} \[SEP\] [^\[]+ \[SEP\] \$[\d.]+( to \$[\d.]+)?){10}"
    assert re.fullmatch(shape, results) and "Page 1 (Total results: 50) [SEP] Next > [SEP] B0" in results
    item = env.step(f"click[{env.goal['asin'].lower()}]")[0] if env.goal["asin"] in results else None
    if item:
        assert re.search(r"\[SEP\] Back to Search \[SEP\] < Prev \[SEP\] .* \[SEP\] Price: \$[\d.]+( to \$[\d.]+)? "
                         r"\[SEP\] Rating: N\.A\. \[SEP\] Description \[SEP\] Features \[SEP\] Reviews "
                         r"\[SEP\] Buy Now$", item)


def test_webshop_real_adapter_says_what_is_missing():
    try:
        import web_agent_site  # noqa: F401
        pytest.skip("the real WebShop is installed here")
    except ImportError:
        pass
    with pytest.raises(RuntimeError) as err:
        envs.ENVS["webshop_real"]()
    message = str(err.value)
    assert "\n" not in message and "princeton-nlp/WebShop" in message and "web_agent_site" in message


# ---------------------------------------------------------------------------------------------------------
# envs.py: InterCode-SQL
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sql_train():
    return envs.InterCodeSQL("train")


@pytest.fixture(scope="module")
def sql_test():
    return envs.InterCodeSQL("test")


def episode_on(env, db_name):
    """A fresh env clone reset on the first task of a database."""
    i = next(k for k, task in enumerate(env.tasks) if task.db.name == db_name)
    env = env.clone()
    env.reset(i)
    return env


# --- the reward (intercode sql_env.py get_reward) ------------------------------------------------------------

def test_reward_known_answers():
    rows = [(1, "a"), (2, "b"), (3, "c")]
    assert envs.sql_reward(rows, list(rows)) == 1.0
    assert envs.sql_reward(rows[::-1], rows) == -1.0                  # reversed order: tau = -1
    assert envs.sql_reward([], []) == 1.0                              # both empty
    assert envs.sql_reward("Error executing query: Unknown column 'id' in 'field list'", rows) == 0.0
    assert envs.sql_reward(None, rows) == 0.0                          # a statement without a result set
    assert envs.sql_reward([], rows) == 0.0                            # IoU 0 / 3


def test_reward_partial_overlap_by_hand():
    # {1,2,3} vs {2,3,4}: 2 common of 4 distinct -> IoU 0.5; common rows in the same order -> tau 1
    assert envs.sql_reward([(1,), (2,), (3,)], [(2,), (3,), (4,)]) == 0.5
    # multisets: agent {1:2, 2:1}, gold {1:1, 2:2, 3:1}: min counts 2, max counts 5 -> 0.4
    assert envs.sql_reward([(1,), (1,), (2,)], [(1,), (2,), (2,), (3,)]) == 0.4
    # 3 common of 4, common rows in reverse order -> -0.75
    assert envs.sql_reward([(3,), (2,), (1,), (9,)], [(1,), (2,), (3,)]) == -0.75


def test_reward_ties_and_single_rows_give_the_iou_alone():
    assert envs.sql_reward([(1,), (1,)], [(1,), (1,), (1,)]) == 2 / 3    # all tied -> NaN tau, unrounded IoU
    assert envs.sql_reward([(1,), (5,)], [(1,), (7,)]) == 1 / 3          # one common row -> NaN tau
    assert math.isnan(envs._kendall_tau_b(["a"], ["a"]))
    assert math.isnan(envs._kendall_tau_b(["a", "a"], ["a", "a"]))


def test_kendall_tau_b_with_ties_by_hand():
    # pairs: 3 concordant, 1 discordant, 1 tied only in x, 1 tied only in y -> (3-1)/sqrt(5*5) = 0.4
    assert envs._kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 2]) == pytest.approx(0.4)
    assert envs._kendall_tau_b(list("abc"), list("cba")) == -1.0


def test_reward_rounds_like_numpy():
    # tau = 0.1 (as 0.0999...) times IoU 0.75 = 0.075: numpy's round gives 0.08 where Python's gives 0.07
    agent = [(1, "v2"), (1, "v0"), (1, "v2"), (1, "v0"), (1, "v2"), (1, "v0"), (1, "v0"), (1, "v0"), (1, "v2"),
             (1, "v2"), (1, "v2"), (1, "v0")]
    gold = [(1, "v2"), (1, "v2"), (1, "v0"), (1, "v0"), (1, "v2"), (1, "v2"), (1, "v0"), (1, "v0"), (1, "v0")]
    assert envs.sql_reward(agent, gold) == 0.08


def test_reward_matches_scipy_when_available():
    stats = pytest.importorskip("scipy.stats")
    import random
    rng = random.Random(0)
    for _ in range(500):
        pool = [(rng.randint(0, 3), f"v{rng.randint(0, 2)}") for _ in range(rng.randint(1, 6))]
        a = [str(rng.choice(pool)) for _ in range(rng.randint(2, 10))]
        b = list(a)
        rng.shuffle(b)
        expected = stats.kendalltau(a, b).statistic
        got = envs._kendall_tau_b(a, b)
        assert (math.isnan(expected) and math.isnan(got)) or expected == got


# --- the MySQL face -------------------------------------------------------------------------------------------

def test_show_tables_lowercase_sorted(sql_train):
    env = episode_on(sql_train, "orchestra")
    obs, reward, done, _ = env.step("SHOW TABLES")
    assert obs == "[('conductor',), ('orchestra',), ('performance',)]"
    assert (reward, done) == (0.0, False)
    assert env.step("show tables;")[0] == obs                          # keywords are case-insensitive


def test_desc_rows_are_mysql_six_tuples(sql_train):
    env = episode_on(sql_train, "orchestra")
    conductor = ("[('Conductor_ID', 'int', 'NO', 'PRI', None, 'auto_increment'), ('Name', 'text', 'YES', '', None, "
                 "''), ('Age', 'int', 'YES', '', None, ''), ('Nationality', 'text', 'YES', '', None, ''), "
                 "('Year_of_Work', 'int', 'YES', '', None, '')]")
    for statement in ("DESC conductor", "DESCRIBE conductor", "SHOW COLUMNS FROM conductor", "desc `Conductor`",
                      "DESC orchestra.conductor"):
        assert env.step(statement)[0] == conductor, statement
    assert "('Conductor_ID', 'int', 'YES', 'MUL', None, '')" in env.step("DESC orchestra")[0]   # a foreign key


def test_desc_matches_the_real_icl_episode(sql_train):
    if not REFERENCE.exists():
        pytest.skip("../shared/reference is absent")
    episodes = json.loads((REFERENCE / "intercode_sql_eto_format_example.json").read_text())
    turns = [turn["content"] for turn in episodes[1]]
    real = turns[turns.index(next(t for t in turns if "DESC conductor" in t)) + 1]
    env = episode_on(sql_train, "orchestra")
    env.max_steps = 100
    assert env.act("Thought: look\nAction: \n```sql\nDESC conductor\n```")[0] == real
    real_tables = next(t for t in turns if t.startswith("Observation: [('conductor',)"))
    shape = re.compile(r"Observation: \[\('[a-z_0-9]+',\)(, \('[a-z_0-9]+',\))*\]")
    assert shape.fullmatch(real_tables)
    assert shape.fullmatch(env.act("Thought: t\nAction: \n```sql\nSHOW TABLES\n```")[0])


def test_mysql_error_texts(sql_train):
    env = episode_on(sql_train, "orchestra")
    env.max_steps = 100
    # IPR appends a newline to errors without 'Unknown' (intercode_sql_env.py parse_conduct_action)
    assert env.step("SELECT AVG(GNP) FROM nations")[0] ==\
        "Error executing query: Table 'orchestra.nations' doesn't exist\n"
    assert env.step("DESC Nations")[0] == "Error executing query: Table 'orchestra.nations' doesn't exist\n"
    assert env.step("SELECT id, Name FROM conductor")[0] ==\
        "Error executing query: Unknown column 'id' in 'field list'"
    assert env.step("SELECT Name FROM conductor WHERE idx = 1")[0] ==\
        "Error executing query: Unknown column 'idx' in 'where clause'"
    assert env.step("SELECT Name FROM conductor ORDER BY foo")[0] ==\
        "Error executing query: Unknown column 'foo' in 'order clause'"
    syntax = env.step("SELECT * FORM conductor")[0]
    assert syntax == ("Error executing query: You have an error in your SQL syntax; check the manual that "
                      "corresponds to your MySQL server version for the right syntax to use near 'FORM conductor' "
                      "at line 1\n")
    assert env.step("USE world_1")[0] == "Error executing query: Unknown database 'world_1'"
    assert env.step("SELECT nope(1)")[0] == "Error executing query: FUNCTION orchestra.nope does not exist\n"
    assert env.step("SELECT Conductor_ID FROM conductor JOIN orchestra")[0] ==\
        "Error executing query: Column 'Conductor_ID' in field list is ambiguous\n"
    assert env.step("SELECT 1; SELECT 2")[0] ==\
        "Error executing query: Use multi=True when executing multiple statements\n"


def test_results_and_the_350_character_cap(sql_train):
    env = episode_on(sql_train, "orchestra")
    env.max_steps = 100
    assert env.step("SELECT Name FROM conductor WHERE Age > 1000")[0] == "[]"      # empty result set
    full = envs._MySQLSession(env.task.db).execute("SELECT * FROM performance")
    obs = env.step("SELECT * FROM performance")[0]
    assert len(str(full)) > 350 and obs == str(full)[:350] + "..."
    assert env.step("SELECT * FROM performance")[1:3] == (0.0, False)


def test_statements_without_result_set_get_ipr_long_message(sql_train):
    # IPR tests `"Error" in output` on None, which raises and lands in its "I don't understand" branch
    env = episode_on(sql_train, "orchestra")
    assert env.step("USE orchestra")[0] == envs.SQL_NOT_UNDERSTOOD
    assert env.act("Thought: x\nAction: \n```sql\nUSE orchestra\n```")[0] == env.invalid_format
    assert env.invalid_format.startswith("Observation: I don't understand your input.\n Your input shoud include")


def test_text_compares_case_insensitively_and_mysql_functions(sql_train):
    env = episode_on(sql_train, "orchestra")
    env.max_steps = 100
    nationality = env.task.db.tables["conductor"].values("Nationality")[0]
    same = [env.step(f"SELECT count(*) FROM conductor WHERE Nationality = '{v}'")[0]
            for v in (nationality, nationality.upper(), nationality.lower())]
    assert len(set(same)) == 1 and same[0] != "[(0,)]"
    assert env.step("SELECT CONCAT('a', 1, 'b'), IF(1 > 2, 'x', 'y'), YEAR('2015-03-04')")[0] ==\
        "[('a1b', 'y', 2015)]"


def test_submit_scores_the_last_query_and_shows_it_uncut(sql_train):
    env = sql_train.clone()
    i = next(k for k, t in enumerate(env.tasks) if len(str(t.gold_rows)) > 400)
    env.reset(i)
    env.step(env.tasks[i].question.gold)
    obs, reward, done, info = env.step("submit")
    assert (reward, done, info["won"]) == (1.0, True, True)
    assert obs == str(env.tasks[i].gold_rows)                        # uncut, as IPR returns it on submit
    env.reset(i)
    env.step(env.tasks[i].question.gold)
    env.step("SHOW TABLES")                                            # the last result is what counts
    assert env.step("submit")[1] < 1.0
    env.reset(i)
    obs, reward, done, info = env.step("submit")                       # nothing ran: InterCode's None
    assert (obs, reward, done, info["won"]) == ("None", 0.0, True, False)


# --- the sandbox (DESIGN.md 7) -------------------------------------------------------------------------------

@pytest.mark.parametrize("statement", [
    "ATTACH DATABASE '{dir}/attached.db' AS other",
    "PRAGMA temp_store_directory = '{dir}'",
    "PRAGMA journal_mode = WAL",
    "VACUUM INTO '{dir}/copy.db'",
    "SELECT load_extension('{dir}/evil.so')",
    "SELECT * FROM pragma_table_info('conductor')",
    "SELECT * FROM sqlite_master",
    "CREATE VIRTUAL TABLE v USING fts5(x)",
])
def test_file_and_engine_escapes_are_refused(sql_train, tmp_path, statement):
    env = episode_on(sql_train, "orchestra")
    obs = env.step(statement.format(dir=tmp_path))[0]
    assert obs.startswith("Error executing query: ")
    assert list(tmp_path.iterdir()) == []


def test_authorizer_refuses_even_without_the_statement_filter(sql_train, tmp_path):
    session = envs._MySQLSession(episode_on(sql_train, "orchestra").task.db)
    for statement in (f"ATTACH DATABASE '{tmp_path}/a.db' AS a", f"VACUUM INTO '{tmp_path}/b.db'",
                      f"PRAGMA temp_store_directory = '{tmp_path}'", "SELECT load_extension('x')",
                      "SELECT * FROM pragma_table_info('conductor')"):
        with pytest.raises(sqlite3.DatabaseError, match="authoriz|too many attached"):
            session._run(statement)                                      # straight to sqlite, no MySQL filter
    assert list(tmp_path.iterdir()) == []
    assert session._trusted_query("PRAGMA temp_store") == [(2,)]          # temp data stays in memory


@pytest.mark.parametrize("statement", [
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    "SELECT count(*) FROM performance a, performance b, performance c, performance d, performance e",
    "SELECT randomblob(100000000)",
])
def test_runaway_queries_become_errors_fast(sql_train, statement):
    env = episode_on(sql_train, "orchestra")
    start = time.perf_counter()
    obs = env.step(statement)[0]
    assert time.perf_counter() - start < 1.0
    assert obs.startswith("Error executing query: ")


def test_result_size_is_capped(sql_train):
    env = episode_on(sql_train, "orchestra")
    rows = env._session.execute("SELECT a.Performance_ID FROM performance a, performance b, performance c")
    assert len(rows) == envs.SQL_MAX_ROWS


def test_writes_do_not_survive_the_episode(sql_train):
    env = episode_on(sql_train, "orchestra")
    i = env.task_id
    probes = ("SHOW TABLES", "SELECT count(*) FROM performance", "SELECT Name FROM conductor")
    before = [env.step(q)[0] for q in probes]
    for statement in ("DROP TABLE conductor", "DELETE FROM performance", "UPDATE orchestra SET Orchestra = 'x'",
                      "CREATE TABLE junk (a int)", "INSERT INTO junk VALUES (1)"):
        env.step(statement)
    assert env.step("SHOW TABLES")[0] == "[('junk',), ('orchestra',), ('performance',)]"
    env.reset(i)
    assert [env.step(q)[0] for q in probes] == before
    other = sql_train.clone()
    other.reset(i)                                                        # and other envs never saw it
    assert other.step("SELECT count(*) FROM performance")[0] == before[1]


def test_clone_has_its_own_database_copy(sql_train):
    env = episode_on(sql_train, "orchestra")
    env.step("DELETE FROM performance")
    copy = env.clone()
    copy.step("DROP TABLE conductor")
    assert env.step("SELECT count(*) FROM conductor")[0] != copy.step("SELECT count(*) FROM conductor")[0]
    assert copy.step("SELECT count(*) FROM performance")[0] == "[(0,)]"    # the copy kept the earlier delete
    fresh = episode_on(sql_train, "orchestra")
    twin = fresh.clone()                                                   # before any statement (lazy copy)
    twin.step("DELETE FROM conductor")
    assert fresh.step("SELECT count(*) FROM conductor")[0] != "[(0,)]"
    assert (fresh.t, twin.t) == (1, 1)


@pytest.mark.parametrize("action", ["", "   ", "x" * 10_000, "ñandú ☃ 中文 🙂", "'; DROP TABLE x; --",
                                    "SELECT 1; DROP TABLE conductor", "\x00", "\ud800", "SELECT ((((((((1",
                                    "(" * 5000, "DESC", "SHOW", "Submit"])
def test_garbage_never_raises_and_costs_a_step(sql_train, action):
    env = episode_on(sql_train, "orchestra")
    obs, reward, done, info = env.step(action)
    assert isinstance(obs, str) and env.t == 1 and not done
    obs, reward, done, info = env.act(f"Thought: hmm\nAction: \n```sql\n{action}\n```")
    assert isinstance(obs, str) and obs.startswith("Observation: ") and env.t == 2
    assert env.act(action)[0].startswith("Observation: ") and env.t == 3
    assert env.step("SELECT count(*) FROM conductor")[0] != "[(0,)]"       # still intact


# --- the agent-facing wrapper (IPR intercode_sql_env.py) --------------------------------------------------------

def test_parse_rules_as_ipr(sql_train):
    parse = sql_train.parse
    assert parse("Thought: done\nAction: submit.") == "submit"
    assert parse("Thought: x\nAction: \n```sql\nSELECT submit_date FROM t\n```") == "submit"   # submit anywhere
    assert parse("Thought: x\nAction: \n```sql\nSELECT a\nFROM t\n```") == "SELECT a"          # first line only
    assert parse("Action: ```sql\nSELECT 1\n``` and ```sql\nSELECT 2\n```") == "SELECT 1"      # first block
    assert parse("Action: ```sql SELECT 1```") == "SELECT 1"
    assert parse("Thought: x\nAction: SELECT 1") is None                                      # no sql block
    assert parse("Action: \n```SQL\nSELECT 1\n```") is None                                  # the tag is `sql`
    assert parse("Action: \n```sql\n\n```") is None                                          # empty code
    assert parse("Thought: no action here") is None


def test_parse_reads_the_real_icl_turns_and_instruction(sql_train):
    if not REFERENCE.exists():
        pytest.skip("../shared/reference is absent")
    assert sql_train.instruction == (REFERENCE / "intercode_sql_instruction.txt").read_text()
    episodes = json.loads((REFERENCE / "intercode_sql_eto_format_example.json").read_text())
    actions = [sql_train.parse(turn["content"]) for episode in episodes for turn in episode
               if turn["role"] == "assistant"]
    assert actions == ["SELECT AVG(GNP), SUM(population) FROM nations WHERE government = 'US Territory'",
                       "SHOW TABLES",
                       "SELECT AVG(GNP), SUM(population) FROM country WHERE governmentform = 'US Territory'",
                       "submit", "SHOW TABLES", "DESC conductor",
                       "SELECT COUNT(DISTINCT Nationality) FROM conductor", "submit",
                       "SELECT id, version_number, type_code FROM templates", "DESCRIBE templates",
                       "SELECT Template_ID, Version_Number, Template_Type_Code FROM templates", "submit"]


def test_unparsable_turn_gets_the_long_message_and_costs_a_step(sql_train):
    env = episode_on(sql_train, "orchestra")
    obs, reward, done, info = env.act("I think the answer is 3")
    assert obs == env.invalid_format and env.t == 1 and info["invalid_format"]
    assert "Action: submit. Remember your output should contain only one \"Action:\" part." in obs


def test_render_action_as_in_ipr_expert_turns(sql_train):
    assert sql_train.assistant_turn("t", "SHOW TABLES") == "Thought: t\nAction: \n```sql\nSHOW TABLES\n```"
    assert sql_train.assistant_turn("t", "submit") == "Thought: t\nAction: submit"
    assert sql_train.parse(sql_train.assistant_turn("t", "submit")) == "submit"


# --- splits, tasks and the expert -----------------------------------------------------------------------------

def test_splits_sizes_types_and_held_out_databases(sql_train, sql_test):
    assert len(sql_train) >= 1000 and len(sql_test) == 200
    train_dbs = {t.db.name for t in sql_train.tasks}
    test_dbs = {t.db.name for t in sql_test.tasks}
    assert len(train_dbs | test_dbs) >= 20 and not train_dbs & test_dbs
    assert not {(t.db.name, t.question.text) for t in sql_train.tasks} &\
        {(t.db.name, t.question.text) for t in sql_test.tasks}
    for env in (sql_train, sql_test):
        assert set(Counter(env.task_type(i) for i in range(len(env)))) == {"easy", "medium", "hard", "extra"}
    with pytest.raises(ValueError, match="train, test, seen"):
        envs.InterCodeSQL("dev")
    assert ENVS["intercode_sql"] is envs.InterCodeSQL
    assert sql_train.reset(0) == sql_train.tasks[0].question.text               # the question is the first observation


def test_seen_split_asks_new_questions_of_the_train_databases(sql_train):
    seen = envs.InterCodeSQL("seen")
    assert len(seen) == 200 and {t.db.name for t in seen.tasks} == {t.db.name for t in sql_train.tasks}
    assert not {t.question.gold for t in seen.tasks} & {t.question.gold for t in sql_train.tasks}
    assert set(Counter(seen.task_type(i) for i in range(len(seen)))) == {"easy", "medium", "hard", "extra"}


def test_every_gold_returns_rows_and_beats_its_tempting_wrong_query(sql_train, sql_test):
    for env in (sql_train, sql_test):
        sessions = {}
        for task in env.tasks:
            q = task.question
            assert task.gold_rows and isinstance(task.gold_rows, list)
            session = sessions.setdefault(task.db.name, envs._MySQLSession(task.db))
            assert session.execute(q.gold) == task.gold_rows
            if q.wrong:
                assert envs.sql_reward(session.execute(q.wrong), task.gold_rows) < 1.0


def test_databases_look_like_spider(sql_train):
    for db in {t.db.name: t.db for t in sql_train.tasks}.values():
        assert 3 <= len(db.tables) <= 6
        for table in db.tables.values():
            assert table.pk.endswith("_ID") and table.rows and f"{table.pk} int PRIMARY KEY" in table.create_sql()
            for column in table.columns:                                   # text compares like MySQL's _ci
                text = column.mysql_type == "text" or column.mysql_type.startswith("varchar")
                assert (f"{column.name} {column.mysql_type} COLLATE NOCASE" in table.create_sql()) == text
            for column, parent in table.fks.items():
                assert f"FOREIGN KEY ({column}) REFERENCES {parent}({column})" in table.create_sql()


def test_expert_wins_every_task_of_both_splits(sql_train, sql_test):
    for env in (sql_train, sql_test):
        lengths, labels = Counter(), Counter()
        for i in range(len(env)):
            trajectory = env.expert(i)
            replay = env.clone()
            replay.reset(i)
            for thought, action, _ in trajectory:
                assert replay.parse(replay.assistant_turn(thought, action)) == action      # round trip
                obs, reward, done, info = replay.step(action)
            assert done and info["won"] and reward == 1.0 and len(trajectory) <= env.max_steps, i
            lengths[len(trajectory)] += 1
            labels.update(label for _, _, label in trajectory)
        assert set(labels) == {"explore", "query", "fix", "submit"}
        assert min(lengths) >= 4


def test_expert_mistakes_are_realistic_and_fixed(sql_train):
    kinds = Counter(t.mistake[0] for t in sql_train.tasks if t.mistake)
    assert 0.1 < sum(kinds.values()) / len(sql_train) < 0.3 and set(kinds) == {"column", "table"}
    i = next(k for k, t in enumerate(sql_train.tasks) if t.mistake and t.mistake[0] == "column")
    env = sql_train.clone()
    env.reset(i)
    steps = []
    while not env.done:
        thought, action, label = env.expert_step()
        steps.append((label, action, env.step(action)[0]))
    assert [label for label, _, _ in steps] == ["query", "fix", "fix", "submit"]
    assert re.fullmatch(r"Error executing query: Unknown column '[\w.]+' in '[a-z ]+'", steps[0][2])
    assert steps[1][1].startswith("DESC ")


def test_expert_continues_from_any_state(sql_train):
    env = sql_train.clone()
    env.reset(3)
    env.step("SELECT nonsense FROM nowhere")                          # an agent's wrong moves first
    env.step("SHOW TABLES")
    while not env.done:
        env.step(env.expert_step()[1])
    assert env.won


def test_same_seed_same_tasks_and_trajectories():
    first = envs.InterCodeSQL("test", seed=3)
    first_data = [(t.db.name, t.question, t.gold_rows, t.mistake) for t in first.tasks]
    first_runs = [first.expert(i) for i in range(0, 200, 9)]
    envs._SQL_SPLIT_CACHE.clear()                                       # rebuild from scratch
    again = envs.InterCodeSQL("test", seed=3)
    assert [(t.db.name, t.question, t.gold_rows, t.mistake) for t in again.tasks] == first_data
    assert [again.expert(i) for i in range(0, 200, 9)] == first_runs
    other = envs.InterCodeSQL("test", seed=4)
    assert [t.question.text for t in other.tasks] != [t.question.text for t in again.tasks]


def test_real_adapter_fails_with_one_clear_line():
    assert ENVS["intercode_sql_real"] is envs.InterCodeSQLReal
    with pytest.raises(RuntimeError) as err:
        envs.InterCodeSQLReal(data_path="missing.json")
    message = str(err.value)
    assert "\n" not in message and "intercode-bench" in message and "docker" in message.lower()
