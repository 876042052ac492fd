"""Tests for hpl.py and envs.py: the math against known answers, masks, segmentation, curriculum, the rollout
engine, the environments against the real benchmarks' strings, and a smoke run of the whole pipeline.

Run: python -m pytest -q
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import envs
import hpl

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


def test_rollout_engine_matches_full_recomputation(tiny):
    cfg, env, demos, tok, model = tiny
    cfg = hpl.Config(**{**cfg.__dict__, "max_new_tokens": 12, "rollout_batch": 3})
    engine = hpl.Rollouts(model, tok, env, cfg, "cpu")
    results = engine.run([hpl.Job(i) for i in range(5)], seed=0)
    for i, res in enumerate(results):
        assert res["messages"] == naive_greedy(model, tok, env.clone(), cfg, i, 12)
    assert engine.stats["episodes"] == 5


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
    hpl.train(policy, {"traj": pairs}, [[]], bc, cfg, "cpu", str(tmp_path / "log.jsonl"))
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert rows[0]["traj/loss"] == pytest.approx(math.log(2), abs=1e-4)        # policy == reference at step 1
    for p in pairs:
        p["ref_chosen"] = float("nan")
    with pytest.raises(RuntimeError, match="non-finite loss"):
        hpl.train(policy, {"traj": pairs}, [[]], None, cfg, "cpu", str(tmp_path / "log2.jsonl"))


# ---------------------------------------------------------------------------------------------------------
# The command line and the whole pipeline
# ---------------------------------------------------------------------------------------------------------
def run_cli(*args, cwd=ROOT, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "hpl.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


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
    # the same command again reuses every finished stage
    again = run_cli("--env", "alfworld", "--preset", "smoke", "--out", str(tmp_path / "a"))
    assert again.returncode == 0 and "reusing" in again.stdout
    assert json.loads((tmp_path / "a" / "results.json").read_text()) == outs[0]
