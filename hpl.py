"""hpl.py: Hierarchical Preference Learning (HPL) for long-horizon LLM agents, in one readable file.

Gao, Sun, Min, Cai, Wang, Yin, Chen. "Solving the Granularity Mismatch: Hierarchical Preference Learning for
Long-Horizon LLM Agents". arXiv 2510.03253, ICLR 2026. The file follows the paper top to bottom:

  §3.2    behaviour cloning of the expert, Eq. (1)                   -> sft()                      section 3
  §3.3.1  trajectory- and step-level preference pairs, Eqs. (3)-(4)  -> trajectory_pairs(), step_pairs()   5
  §3.3.2  action-group segmentation, four strategies                 -> segment()                  section 6
  §3.3.3  group-level pairs, Monte-Carlo group rewards, Eqs. (2), (5) -> group_pairs(), mc_estimate()      7
  §3.4    dual-layer curriculum, Eq. (9), Table 4                     -> curriculum()               section 8
  Eq. (8) L = L_BC + L_traj + L_step + L_group^(s), phase by phase    -> hpl_loss(), train()        section 9
  §4      evaluation; the SFT, RFT, ETO and IPR baselines             -> evaluate(), run()          10-11
  §4      Tables 1-2, Figures 4-5: comparisons over seeds             -> compare()                  section 12

Usage:
  python hpl.py --env alfworld                   # the whole pipeline on an embedded tiny Qwen2 (CPU only)
  python hpl.py --env webshop --method eto       # a baseline: sft | rft | eto | ipr | hpl
  python hpl.py --env alfworld --segmentation fixed_k --curriculum static --no-step     # ablations
  python hpl.py --env alfworld --compare methods --seeds 3   # Table 1's rows, mean +- std, paper beside
  python hpl.py --env alfworld --model Qwen/Qwen2.5-1.5B-Instruct --preset paper --device cuda
Every hyperparameter is a field of `Config` below (`--help` lists them). What differs from the paper, and why,
is listed in README.md.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import inspect
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import sys
import time
import weakref
from dataclasses import dataclass

try:
    import fcntl                                          # file locks for run folders (POSIX only)
except ImportError:
    fcntl = None

import numpy as np
import torch
import torch.nn.functional as F

import envs

# ---------------------------------------------------------------------------------------------------------
# 0. Configuration: every hyperparameter, one line each (the default preset fits a 2-core CPU)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Config:
    # run
    env: str = "alfworld"            # alfworld | webshop | intercode_sql
    method: str = "hpl"              # sft | rft | eto | ipr | hpl (the trained methods of Table 1)
    segmentation: str = "semantic"   # fixed_n | fixed_k | uncertainty | semantic (§3.3.2)
    curriculum: str = "dual"         # dual | static | length | difficulty (§3.4, Table 2)
    no_traj: bool = False            # drop L_traj-DPO from Eq. (8) (Fig. 5 ablation)
    no_step: bool = False            # drop L_step-DPO from Eq. (8)
    no_group: bool = False           # drop L_group-DPO from Eq. (8)
    model: str = "tiny"              # "tiny" (embedded Qwen2, random init) or a hub id / local model dir
    segmenter_model: str = ""        # local chat model that gets App. I's prompt for `semantic` segmentation
    preset: str = "cpu"              # cpu | paper | smoke (see PRESETS)
    seed: int = 0                    # one seed for everything (torch, numpy, random, env tasks, sampling)
    device: str = "auto"             # auto | cpu | cuda | mps
    precision: str = "auto"          # auto | fp32 | bf16 (autocast over fp32 weights); auto: bf16 for --model on CUDA
    out: str = ""                    # run folder; default runs/<env>/<model>-<preset>-seed<seed>
    # environment
    scene: str = "small"             # ALFWorld room size: small (6-10 receptacles) | full (real sizes)
    max_steps: int = 0               # agent steps per episode; 0 = env default (ALFWorld 30, WebShop/SQL 10)
    instruction: str = "short"       # short: one-line system prompt | full: ETO/IPR instruction + "OK" turn
    sql_eval: str = "seen"           # InterCode-SQL split evaluated: seen (new questions, train databases) |
                                     # test (6 held-out databases, the benchmark's)
    # the embedded tiny Qwen2 (ignored for --model <path>)
    vocab_size: int = 1024           # byte-level BPE vocabulary trained on the env's text
    hidden_size: int = 192           # Qwen2Config.hidden_size
    num_layers: int = 3              # Qwen2Config.num_hidden_layers
    num_heads: int = 6               # attention heads
    num_kv_heads: int = 1            # key/value heads (1 = multi-query attention: the fastest KV-cached decoding)
    intermediate_size: int = 512     # MLP width
    max_len: int = 2048              # context limit in tokens; a longer episode ends there (WebShop: 4096)
    # behaviour cloning, Eq. (1) -> pi_ref
    sft_tasks: int = 3553            # train tasks whose expert trajectories form D_expert
    sft_epochs: float = 2.5          # passes over D_expert (WebShop, InterCode-SQL: 8, see ENV_PRESETS; paper: 3)
    sft_batch: int = 4               # trajectories per optimizer step (paper: 32)
    sft_lr: float = 3e-3             # peak learning rate (paper: 1e-5 on a pre-trained model)
    sft_warmup: float = 0.03         # warmup fraction (paper: 0.1)
    sft_hold: float = 0.6            # hold the peak lr until this fraction, then cosine (paper: 0)
    sft_floor: float = 0.1           # final lr as a fraction of the peak (paper: 0)
    # stage 1: exploration with pi_ref (§3.3)
    explore_tasks: int = 256         # train tasks pi_ref explores for pairs (0 = all; paper: all)
    mc_rollouts: int = 3             # M, pi_ref rollouts per Monte-Carlo estimate, Eq. (2) (paper: 5)
    step_branches: int = 1           # expert steps per trajectory that get an alternative action (0 = all)
    group_branches: int = 1          # expert groups per trajectory that get losing groups (0 = all)
    n_neg: int = 2                   # losing groups wanted per expert group (paper code: 3)
    neg_tries: int = 2               # samples drawn per wanted losing group (paper code: up to 10)
    traj_threshold: float = 0.01     # trajectory pair iff |R_w - R_l| > this (ETO/HPL code)
    step_threshold: float = 0.3      # step pair iff MC value gap > this and final rewards agree (HPL code)
    group_threshold: float = 0.3     # group pair iff r(G_w) - r(G_l) > this (HPL code)
    group_min_win: float = 0.8       # ... and r(G_w) >= this (HPL code)
    temperature: float = 1.0         # sampling temperature of MC rollouts and losing groups (HPL code)
    rollout_batch: int = 64          # episodes decoded together in one forward pass
    max_new_tokens: int = 0          # tokens per agent turn; 0 = 1.25 x the longest expert turn
    stop_loops: int = 4              # end an episode after this many steps in a row that only repeat earlier
                                     # (action, observation) pairs (0 = never, as the paper)
    # preference optimization, Eqs. (3)-(5), (8)
    beta: float = 0.3                # DPO temperature beta (Table 4)
    lr: float = 3e-5                 # peak learning rate (paper: 3e-6 ALFWorld, 1e-6 WebShop/SQL); at 1e-5 the
                                     # group level hardly learns, 1e-4 hurt unless --bc-norm sum (README, Results)
    batch: int = 8                   # pairs per level per step, and expert trajectories for L_BC (paper: 32)
    epochs: float = 1.0              # passes over each phase's group pairs (Table 4: 1)
    phases: int = 3                  # training phases of every run; a schedule with fewer (static, or a run
                                     # without group pairs: ETO, IPR, --no-group) repeats its last: equal steps
                                     # (RFT is one more SFT pass over its data, whatever this says)
    warmup: float = 0.1              # warmup fraction of each phase's cosine schedule (Table 4)
    bc_norm: str = "token"           # L_BC normalisation: token (mean NLL per token) | sum (IPR: summed NLL)
    grad_clip: float = 1.0           # max gradient norm
    micro_batch: int = 0             # pairs (SFT: trajectories) per forward/backward pass, gradients accumulated
                                     # to the same update; 0 = a whole step at once. Lower it for a real model
    checkpointing: bool = False      # recompute activations in the backward pass: less memory, more compute
    length_thresholds: str = ""      # curriculum L thresholds (Table 4); "" = ALFWorld 0,3,6, WebShop/SQL 0,2,4
    gap_thresholds: str = "1.0,0.7,0.4"  # curriculum dR thresholds (Table 4)
    fixed_n: int = 3                 # N of the fixed_n segmenter (§4.1)
    fixed_k: int = 3                 # K of the fixed_k segmenter (§4.1)
    entropy_percentile: float = 80   # uncertainty segmenter threshold percentile (§4.1)
    # evaluation (§4)
    eval_tasks: int = 0              # tasks per evaluation split (0 = all: ALFWorld 140 + 134, others 200)
    eval_phases: bool = False        # also evaluate after each curriculum phase (Figure 4)
    # experiments (§4, Tables 1-2, Figures 4-5): several runs, mean +- std over seeds, the paper's numbers beside
    compare: str = ""                # methods | segmentation | curriculum | losses | phases ("" = one run)
    seeds: int = 1                   # seeds per --compare experiment: seed, seed+1, ...
    jobs: int = 1                    # --compare: runs trained side by side as processes, cores/jobs threads each


PRESETS = {
    "cpu": {},                                  # the defaults above: 15-40 min for ALFWorld on 2 CPU cores (README)
    "paper": dict(scene="full", instruction="full", sft_tasks=3553, sft_epochs=3, sft_batch=32, sft_lr=1e-5,
                  sft_warmup=0.1, sft_hold=0.0, sft_floor=0.0, explore_tasks=0, mc_rollouts=5, step_branches=0,
                  group_branches=0, n_neg=3, neg_tries=4, batch=32, lr=0.0, max_len=6000, rollout_batch=128,
                  stop_loops=0, sql_eval="test", micro_batch=2, checkpointing=True),  # last two: memory (README)
    "smoke": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  intermediate_size=128, max_len=1024, sft_tasks=96, sft_epochs=1.0, sft_batch=8,
                  explore_tasks=6, mc_rollouts=2, step_branches=1, group_branches=1, n_neg=1, neg_tries=1,
                  batch=4, eval_tasks=6, max_steps=8, max_new_tokens=40),
}
# Per-env values of the cpu preset (README, Results): at 2.5 epochs the tiny model solves 0.5% of SQL's seen tasks
# and of WebShop's; WebShop's result pages make half its episodes longer than context_room at max_len 2048.
ENV_PRESETS = {
    ("cpu", "intercode_sql"): dict(sft_epochs=8.0),
    ("cpu", "webshop"): dict(sft_epochs=8.0, max_len=4096),
}
PAPER_LR = {"alfworld": 3e-6, "webshop": 1e-6, "intercode_sql": 1e-6}      # Table 4
LENGTH_THRESHOLDS = {"alfworld": (0, 3, 6), "webshop": (0, 2, 4), "intercode_sql": (0, 2, 4)}   # Table 4
SHORT_INSTRUCTIONS = {   # the one-line system prompt of the tiny model (a documented difference)
    "alfworld": "Interact with a household to solve a task.",
    "webshop": "You are web shopping.",
    "intercode_sql": "Answer the question by querying a MySQL database, then submit.",
}
SYSTEM_MESSAGE = "You are a helpful assistant."   # fixed and explicit, so Qwen2.5 inserts no default one
METHODS = ("sft", "rft", "eto", "ipr", "hpl")


class UserError(Exception):
    """A mistake in how the script was called: reported in one line, without a traceback."""


def parse_config(argv=None) -> Config:
    """Config from the command line: preset values first, then the flags given explicitly."""
    parser = argparse.ArgumentParser(description="HPL: hierarchical preference learning (arXiv 2510.03253)")
    parser.error = lambda msg: (_ for _ in ()).throw(UserError(msg))   # one clear line instead of usage
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", default=None)
        else:
            parser.add_argument(flag, type={"int": int, "float": float}.get(f.type, str), default=None)
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    preset = given.get("preset", Config.preset)
    if preset not in PRESETS:
        raise UserError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = Config(**{**preset_values(preset, given.get("env", Config.env)), **given})
    checks = [("env", ("alfworld", "webshop", "intercode_sql")), ("method", METHODS),
              ("segmentation", ("fixed_n", "fixed_k", "uncertainty", "semantic")),
              ("curriculum", ("dual", "static", "length", "difficulty")), ("scene", ("small", "full")),
              ("instruction", ("short", "full")), ("sql_eval", ("seen", "test")), ("bc_norm", ("token", "sum")),
              ("precision", ("auto", "fp32", "bf16")),
              ("compare", ("",) + tuple(EXPERIMENTS))]
    for name, allowed in checks:
        if getattr(cfg, name) not in allowed:
            raise UserError(f"--{name.replace('_', '-')} must be one of {', '.join(a for a in allowed if a)}, "
                            f"not {getattr(cfg, name)!r}")
    if cfg.jobs < 1 or (cfg.jobs > 1 and not cfg.compare):
        raise UserError("--jobs runs an experiment's runs side by side: a number >= 1, and > 1 only with --compare")
    if cfg.micro_batch < 0:
        raise UserError("--micro-batch is pairs per forward/backward pass: a number >= 1, or 0 for a whole step")
    return cfg


def preset_values(preset: str, env: str) -> dict:
    """A preset's overrides of the Config defaults, with its per-env values (ENV_PRESETS)."""
    return {**PRESETS[preset], **ENV_PRESETS.get((preset, env), {})}


def seed_everything(seed: int) -> None:
    """The one place where the global generators are seeded (each stage re-seeds from cfg.seed + a stage id)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def log(msg: str) -> None:
    print(msg, flush=True)


def write_text(path: str, text: str) -> None:
    """Atomic write: a temp file renamed into place, so an interrupted run never leaves half a file (the temp
    name is the process's own, so runs side by side in one folder never rename each other's temp file)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=1))


def write_jsonl(path: str, rows) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


@contextlib.contextmanager
def exclusive(path: str, waiting=None):
    """Hold an exclusive lock on `path` + ".lock" for the `with` block, so that two processes never write `path`
    at once; `waiting()` is called first when another process holds it (POSIX; elsewhere nothing is locked)."""
    with open(path + ".lock", "w") as lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    waiting()
                fcntl.flock(lock, fcntl.LOCK_EX)          # blocks; released when the file closes
        yield


def merge_json(path: str, new: dict) -> dict:
    """Add `new`'s keys to the JSON object at `path` under an exclusive lock, so that two runs finishing in one
    folder at the same moment both land."""
    with exclusive(path):
        merged = {**read_json(path, {}), **new}
        write_json(path, merged)
    return merged


def read_json(path: str, missing=None):
    """The JSON value in `path`, or `missing` when there is no such file."""
    if not os.path.exists(path):
        return missing
    with open(path) as f:
        return json.load(f)


def read_jsonl(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------------------------------------
# 1. Model, tokenizer and chat format (§4.1, App. D.2): the embedded tiny Qwen2, or any causal LM
# ---------------------------------------------------------------------------------------------------------
# Qwen2's pre-tokenizer split pattern. Training the tiny BPE with it means every loader (AutoTokenizer rebuilds
# a qwen2 model's tokenizer with this pattern) yields the same ids.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML_TEMPLATE = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content']"
                   " + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}"
                   "{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def train_tiny_tokenizer(texts, vocab_size: int):
    """A byte-level BPE trained in-process on the env's text, wrapped with Qwen's ChatML special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_tiny_model(cfg: Config, vocab_size: int):
    """transformers' real Qwen2ForCausalLM architecture, small and randomly initialised."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    qcfg = Qwen2Config(vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                       num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                       intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_len,
                       tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return Qwen2ForCausalLM(qcfg)


def load_pretrained(path: str, device: str):
    """Any causal LM saved with save_pretrained (the tiny model too) or a hub id, in float32 on every device: the
    weights AdamW updates stay float32 (the arithmetic: mixed_precision)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load model {path!r}: {first}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise UserError(f"model {path!r} has no chat template; HPL renders ReAct conversations with one")
    return model.to(device), tok


def mixed_precision(cfg: Config, device: str):
    """The arithmetic of every forward and backward pass. Weights always stay float32 (load_pretrained): stored in
    bf16 they would lose AdamW's updates (at lr 3e-6 a weight of ~0.02 moves by ~1e-4 of itself, under bf16's
    half-step of 2e-3; measured at 1.5B size: 10 steps change 3.9% of bf16 weights, 100% of float32 ones).
    bf16 = matrix products in bf16 under autocast, as HF Trainer's --bf16 that ETO and IPR train with: the default
    for a real model on CUDA. The tiny model stays float32 everywhere: in bf16 its DPO margins grew ~10x slower
    (README, "Using a real model"), and in float32 CUDA gives the CPU's results to the last digit."""
    bf16 = compute_precision(cfg, device) == "bf16"
    return torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def compute_precision(cfg: Config, device: str) -> str:
    """--precision resolved: "auto" is bf16 for a real model (--model) on CUDA, fp32 otherwise."""
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if device == "cuda" and cfg.model != "tiny" else "fp32"


def end_of_turn_ids(tok) -> list[int]:
    """Token ids that end an assistant turn: the special token the chat template puts after the content."""
    probe = tok.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                     {"role": "assistant", "content": "\x00"}], tokenize=False)
    after = probe.split("\x00", 1)[1]
    ids = [tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens if after.startswith(t)]
    return sorted(set(ids + ([tok.eos_token_id] if tok.eos_token_id is not None else [])))


def prompt_messages(env, first_obs: str, cfg: Config) -> list[dict]:
    """The conversation before the agent's first turn, in ETO/IPR's format (App. I)."""
    if cfg.instruction == "short":
        return [{"role": "system", "content": SHORT_INSTRUCTIONS[cfg.env]},
                {"role": "user", "content": first_obs}]
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": env.instruction},
            {"role": "assistant", "content": "OK"}, {"role": "user", "content": first_obs}]


def render_chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Tokenize a conversation with the tokenizer's chat template -> (input_ids, assistant_mask).

    The mask is 1 on every assistant turn's content and the end-of-turn token that follows it (`<|im_end|>`),
    and 0 on system/user/observation text and role headers (ETO/IPR's masking; TRL would score everything
    after the prompt). Contents are located by rendering the template around placeholders, so the mask is
    exact for any template that inserts message contents verbatim (ChatML, Qwen2.5's own template).
    """
    marks = [f"\x00{k}\x00" for k in range(len(messages))]
    skeleton = tokenizer.apply_chat_template([{"role": m["role"], "content": mk} for m, mk in zip(messages, marks)],
                                             tokenize=False)
    text, spans, rest = "", [], skeleton
    specials = sorted(tokenizer.all_special_tokens, key=len, reverse=True)
    for m, mk in zip(messages, marks):
        before, rest = rest.split(mk, 1)
        text += before
        start = len(text)
        text += m["content"]
        if m["role"] == "assistant":
            eot = next((t for t in specials if rest.startswith(t)), "")
            spans.append((start, len(text) + len(eot)))
    text += rest
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask, k = [], 0
    for a, b in enc["offset_mapping"]:
        while k < len(spans) and a >= spans[k][1]:
            k += 1
        mask.append(int(k < len(spans) and spans[k][0] <= a < spans[k][1] and b > a))
    return enc["input_ids"], mask


def render_pair_side(tokenizer, prompt: list[dict], completion: list[dict]) -> tuple[list[int], list[int]]:
    """prompt + completion, with the mask kept only on the completion's assistant turns."""
    ids, mask = render_chat(tokenizer, prompt + completion)
    n_prompt = len(render_chat(tokenizer, prompt)[0])
    return ids, [0] * n_prompt + mask[n_prompt:]


def pad_batch(seqs: list[list[int]], pad: int = 0) -> torch.Tensor:
    """Right-pad integer lists into a [B, T] tensor."""
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [pad] * (width - len(s)) for s in seqs], dtype=torch.long)


def forward_logps(model, batch_ids: list[list[int]], batch_masks: list[list[int]], device,
                  max_tokens: int = 12000) -> torch.Tensor:
    """Summed log-prob of each sequence's masked tokens under `model` -> Tensor[B].

    Sequences run in length-sorted chunks of at most `max_tokens` padded tokens, so a short sequence is never
    padded to a long one. Right padding needs no attention mask under causal attention: a real token only sees
    earlier tokens, which are all real, and padded positions are never scored (the mask is 0 there). Without a
    mask, PyTorch's fused causal attention kernel runs instead of a materialised [B, H, T, T] mask. The LM head
    runs on the scored positions only (`lm_head_parts`): the same log-probs without the [B, T, V] logits."""
    decoder, head = lm_head_parts(model)
    order = sorted(range(len(batch_ids)), key=lambda i: len(batch_ids[i]))
    out, chunk = [None] * len(order), []
    for n, i in enumerate(order):
        chunk.append(i)
        last = n == len(order) - 1
        if last or (len(chunk) + 1) * len(batch_ids[order[n + 1]]) > max_tokens:
            ids = pad_batch([batch_ids[j] for j in chunk]).to(device)
            mask = pad_batch([batch_masks[j] for j in chunk]).to(device)
            if head is None:
                lps = sequence_logps(model(input_ids=ids, use_cache=False).logits, ids, mask)
            else:
                lps = sequence_logps(decoder(input_ids=ids, use_cache=False).last_hidden_state, ids, mask, head)
            for j, lp in zip(chunk, lps):
                out[j] = lp
            chunk = []
    return torch.stack(out)


PLAIN_HEAD = weakref.WeakKeyDictionary()            # model -> whether its logits are head(decoder(ids))


def lm_head_parts(model) -> tuple:
    """(decoder, LM head) when the model's logits are just head(decoder's last hidden state), as in Qwen2 and
    Llama; (None, None) when its forward does more to them (Gemma's soft-capping, Granite's or Cohere's logit
    scale). Decided once per model by comparing both ways on a short probe, in eval mode and float32."""
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if model not in PLAIN_HEAD:
        plain = decoder is not model and head is not None
        if plain:
            training, device = model.training, next(model.parameters()).device
            probe = torch.arange(8, device=device)[None] % head.weight.shape[0]
            model.eval()
            try:
                with torch.no_grad(), torch.autocast(device.type, enabled=False):
                    plain = torch.equal(model(input_ids=probe, use_cache=False).logits,
                                        head(decoder(input_ids=probe, use_cache=False).last_hidden_state))
            finally:
                model.train(training)                 # back to the caller's mode, even if the probe raised
        PLAIN_HEAD[model] = plain
    return (decoder, head) if PLAIN_HEAD[model] else (None, None)


# ---------------------------------------------------------------------------------------------------------
# 2. Log-probabilities and the DPO loss shared by the three levels (Eqs. 3, 4, 5)
# ---------------------------------------------------------------------------------------------------------
def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
                   head: torch.nn.Module | None = None) -> torch.Tensor:
    """Sum of log pi(y_t | y_<t) over the masked (assistant) tokens of each sequence.

    Args:
        logits: Tensor[B, T, V], the model's output for input_ids; or, with `head`, the last hidden states
            Tensor[B, T, H] that `head` maps to logits, applied to the scored positions only.
        input_ids: Tensor[B, T].
        mask: Tensor[B, T], 1 where the token at that position is scored (the agent's own tokens).
        head: the LM head (a Linear H -> V), or None when `logits` are logits already.
    Returns:
        Tensor[B]: per-sequence sum of log-probs (not length-normalised, as DPO, ETO and IPR).
    """
    labels, keep = input_ids[:, 1:], mask[:, 1:].bool()      # token t is predicted by the logits at t-1
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)[keep]
    scored = logits[:, :-1][keep]                             # only masked positions: no grad elsewhere
    scored = (scored if head is None else head(scored)).float()
    token_logps = scored.log_softmax(-1).gather(-1, labels[keep][:, None]).squeeze(-1)
    return torch.zeros(labels.shape[0], device=logits.device).index_add(0, rows, token_logps)


# Eqs. (3)-(5) share one form; only what is compared changes (whole trajectories, suffixes after a step,
# or action groups G_w vs G_l after the same context c):
#   L = -log sigma( beta * [ (log pi_theta(w) - log pi_ref(w)) - (log pi_theta(l) - log pi_ref(l)) ] )
def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss of Eqs. (3), (4) and (5) for a batch of pairs.

    Args:
        policy_chosen_logps: log pi_theta of the winning side (tau_w, tau^w_{t:n} or G_w). Shape: (B,)
        policy_rejected_logps: log pi_theta of the losing side. Shape: (B,)
        reference_chosen_logps: log pi_ref of the winning side. Shape: (B,)
        reference_rejected_logps: log pi_ref of the losing side. Shape: (B,)
        beta: the DPO temperature (0.3 in Table 4).
    Returns:
        losses (B,), chosen_rewards (B,), rejected_rewards (B,); the implicit rewards
        beta * (log pi_theta - log pi_ref) are detached, as in TRL and the DPO reference code.
    """
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = reference_chosen_logps - reference_rejected_logps
    losses = -F.logsigmoid(beta * (pi_logratios - ref_logratios))                   # Eqs. (3), (4), (5)
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


# Eq. (8): L_final^(s) = L_BC + L_traj-DPO + L_step-DPO + L_group-DPO^(s), an unweighted sum.
def hpl_loss(bc_loss: torch.Tensor, dpo_losses: dict) -> torch.Tensor:
    """Eq. (8). `dpo_losses` maps each level present ("traj", "step", "group") to its batch-mean DPO loss."""
    return bc_loss + sum(dpo_losses.values())                                         # Eq. (8)


# ---------------------------------------------------------------------------------------------------------
# 3. Behaviour cloning, Eq. (1) (§3.2): pi_ref = the SFT agent on D_expert
# ---------------------------------------------------------------------------------------------------------
def expert_episode(env, task: int, cfg: Config) -> dict:
    """Play the scripted expert on one task; returns the conversation (ending on the last agent turn)."""
    moves = env.expert(task)
    first = env.reset(task)
    messages = prompt_messages(env, first, cfg)
    n_prompt = len(messages)
    for k, (thought, action, _) in enumerate(moves):
        turn = env.assistant_turn(thought, action)
        obs, _, done, _ = env.act(turn)
        messages.append({"role": "assistant", "content": turn})
        if k < len(moves) - 1:
            messages.append({"role": "user", "content": obs})
    return {"task": task, "messages": messages, "n_prompt": n_prompt, "reward": env.reward, "won": env.won,
            "subgoals": [m[2] for m in moves], "actions": [m[1] for m in moves]}


def lr_factor(step: int, total: int, warmup: float, hold: float = 0.0, floor: float = 0.0) -> float:
    """Linear warmup, optional hold at the peak, then cosine decay to `floor` (x peak)."""
    w, h = max(1, int(warmup * total)), int(hold * total)
    if step < w:
        return (step + 1) / w
    if step < max(w, h):
        return 1.0
    progress = (step - max(w, h)) / max(1, total - max(w, h))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Cycler:
    """Endless batches from a list: each pass is shuffled, then cut into batches of similar length (less
    padding), and the batches are shuffled again."""

    def __init__(self, items: list, batch: int, seed: int, length=None):
        self.items, self.batch, self.rng, self.batches = items, batch, random.Random(seed), []
        self.lengths = [length(x) for x in items] if length else [0] * len(items)

    def next(self) -> list:
        if not self.batches:
            order = self.rng.sample(range(len(self.items)), len(self.items))
            window = self.batch * 32
            for w in range(0, len(order), window):
                chunk = sorted(order[w:w + window], key=lambda i: self.lengths[i])
                self.batches += [chunk[k:k + self.batch] for k in range(0, len(chunk), self.batch)]
            self.rng.shuffle(self.batches)
        return [self.items[i] for i in self.batches.pop()]


def bc_loss_fn(model, batch: list[tuple[list[int], list[int]]], device, norm: str,
               whole: list | None = None) -> tuple[torch.Tensor, int]:
    """Eq. (1): negative log-likelihood of the expert's turns given everything before them.

    norm="token": mean over the batch's agent tokens (the usual SFT normalisation, TRL's `sft` loss);
    norm="sum": summed per trajectory, averaged over trajectories (Eq. (1) literally; IPR's NLL term).
    `batch` may be a micro-batch of the optimizer step's `whole` batch: its share of the whole batch's loss is
    returned, so the micro-batches' losses (and gradients) add up to the whole batch's."""
    whole = batch if whole is None else whole
    logps = forward_logps(model, [b[0] for b in batch], [b[1] for b in batch], device)  # sum_t log pi(a*_t|...)
    if norm == "token":
        loss = -logps.sum() / max(1, sum(sum(b[1][1:]) for b in whole))                 # Eq. (1)
    else:
        loss = -logps.mean() * (len(batch) / len(whole))                                 # Eq. (1)
    return loss, sum(len(b[0]) for b in batch)


def micro_batches(items: list, size: int) -> list[list]:
    """`items` cut into consecutive slices of `size` (0: one slice): what one forward/backward pass holds."""
    size = size or len(items) or 1
    return [items[k:k + size] for k in range(0, len(items), size)]


def enable_checkpointing(model) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them (transformers' activation
    checkpointing; called `gradient_checkpointing_enable` before transformers 5.2x)."""
    on = getattr(model, "activation_checkpointing_enable", None)
    if on is not None:
        on(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def sft(model, tok, demos: list[dict], cfg: Config, device) -> dict:
    """Behaviour cloning (Eq. 1) on D_expert; returns throughput figures."""
    data = [render_chat(tok, d["messages"]) for d in demos]
    steps = max(1, int(cfg.sft_epochs * len(data) / cfg.sft_batch))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0, betas=(0.9, 0.95))
    batches = Cycler(data, cfg.sft_batch, cfg.seed, length=lambda d: len(d[0]))
    if cfg.checkpointing:
        enable_checkpointing(model)
    model.train()
    t0, n_tok, loss_ema = time.time(), 0, None
    for step in range(steps):
        batch = batches.next()
        for g in opt.param_groups:
            g["lr"] = cfg.sft_lr * lr_factor(step, steps, cfg.sft_warmup, cfg.sft_hold, cfg.sft_floor)
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for part in micro_batches(batch, cfg.micro_batch):            # gradients accumulate over the parts
            part_loss, n = bc_loss_fn(model, part, device, "token", whole=batch)
            part_loss.backward()
            loss, n_tok = loss + part_loss.item(), n_tok + n
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        loss_ema = loss if loss_ema is None else 0.95 * loss_ema + 0.05 * loss
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            log(f"step {step + 1}/{steps} | sft | loss {loss_ema:.4f} | lr {opt.param_groups[0]['lr']:.2e} | "
                f"{n_tok / (time.time() - t0):.0f} tok/s")
    model.eval()
    return {"sft_steps": steps, "sft_tokens": n_tok, "sft_tokens_per_s": n_tok / (time.time() - t0)}


# ---------------------------------------------------------------------------------------------------------
# 4. The rollout engine: many episodes in one forward pass, the KV cache reused across turns
# ---------------------------------------------------------------------------------------------------------
# Everything in stage 1 is a rollout of pi_ref from some prefix: trajectory exploration (greedy, from the
# start), step alternatives (greedy, after an expert prefix), losing groups (sampled, L turns after an expert
# prefix), the Monte-Carlo estimates of Eq. (2) (sampled, to the end) and evaluation (greedy).
def turn_token_budget(tok, demos: list[dict]) -> int:
    """Tokens allowed per generated agent turn: 1.25 x the longest expert turn, plus a margin."""
    turns = [m["content"] for d in demos[:500] for m in d["messages"][d["n_prompt"]::2]]
    return int(1.25 * max(len(ids) for ids in tok(turns, add_special_tokens=False)["input_ids"])) + 8


def context_room(cfg: Config, max_new: int) -> int:
    """Tokens an episode may hold before Rollouts ends it: max_len less two turn budgets (room for one more turn
    and its observation)."""
    return cfg.max_len - 2 * max_new


def grouped_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for the rollout engine: PyTorch's fused scaled_dot_product_attention with the query heads that
    share a key/value head (GQA) read against it directly. transformers' own CPU path copies every key/value
    head `n_rep` times (repeat_kv) when there is a padding mask, which dominates the cost of decoding long
    conversations. A decoding step (one new token per row) goes further: the H / KV query heads of a key/value
    head become that head's H / KV queries, one plain attention over the shared keys (2.5x faster on the CPU at
    batch 64 than enable_gqa; the same episodes, token for token, on ALFWorld and SQL). transformers passes no
    mask when nothing is padded and the block is the whole sequence (a prompt prefilled alone): attention is
    then causal, aligned to the block's end. A query that sees nothing (none does here) gets zeros, not NaN.

    query: [B, H, q, D]; key, value: [B, KV, T, D]; attention_mask: bool [B, 1, q, T] (True = visible) or None.
    Returns [B, q, H, D], as transformers' attention functions do."""
    (B, H, q, D), (KV, T) = query.shape, key.shape[1:3]
    if q == 1:                  # decoding: [B, H, 1, D] -> [B, KV, H / KV, D], query head h reads kv h // (H / KV)
        out = F.scaled_dot_product_attention(query.reshape(B, KV, H // KV, D), key, value,
                                             attn_mask=attention_mask, scale=scaling)
        return out.reshape(B, 1, H, D), None
    if attention_mask is None:
        attention_mask = torch.ones(q, T, dtype=torch.bool, device=query.device).tril(T - q)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                         enable_gqa=True)
    return out.transpose(1, 2), None


def kv_cache(spare: int = 64, dtype: torch.dtype | None = None):
    """A DynamicCache whose layers write into spare room instead of concatenating at every new token. A layer
    that runs out of room moves into one that holds its tokens plus `spare` more (the rollout engine: one agent
    turn, so a turn decodes without moving the cache); slots past the tokens are never read. `dtype`: what keys
    and values are kept in (None: as they come; the rollout engine under autocast: its dtype, below)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class RoomyLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, new = self.get_seq_length(), key_states.shape[-2]
            if getattr(self, "room", None) is None or n + new > self.room[0].shape[-2]:
                shape = (*key_states.shape[:2], n + new + spare, key_states.shape[-1])
                self.room = [torch.empty(shape, dtype=dtype or x.dtype, device=x.device)
                             for x in (key_states, value_states)]
                if n:
                    self.room[0][:, :, :n], self.room[1][:, :, :n] = self.keys, self.values
            self.room[0][:, :, n:n + new], self.room[1][:, :, n:n + new] = key_states, value_states
            self.keys, self.values = self.room[0][:, :, :n + new], self.room[1][:, :, :n + new]
            return self.keys, self.values

        def set(self, keys, values):
            """Replace the contents (after selecting, merging or compacting rows)."""
            self.room, self.keys, self.values = None, keys, values

    cache = DynamicCache()
    cache.layer_class_to_replicate = RoomyLayer          # layers are created on first use
    return cache


def cache_argument(model) -> str:
    """The forward() argument that takes the KV cache: `cache` from transformers 5.24 on, `past_key_values` before
    (5.24 still takes the old name, with a deprecation warning, until 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@contextlib.contextmanager
def grouped_attention_in(model):
    """The model attends with `grouped_attention` inside the block (the rollout engine), its own way after."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register("hpl_grouped", grouped_attention)
    AttentionMaskInterface.register("hpl_grouped", sdpa_mask)
    config = model.config
    saved, config._attn_implementation = config._attn_implementation, "hpl_grouped"
    try:
        yield
    finally:
        config._attn_implementation = saved


@dataclass(frozen=True)
class Job:
    task: int                      # env task index
    prefix: tuple = ()             # agent turns replayed before generating (e.g. an expert prefix)
    turns: int = 0                 # agent turns to generate; 0 = until the episode ends
    temperature: float = 0.0       # 0 = greedy


class Rollouts:
    """Batched, KV-cached decoding of agent turns interleaved with environment steps.

    Up to `rollout_batch` episodes decode together, one agent turn at a time, in one forward pass per token.
    Rows are right-padded and padding stays in the cache as masked slots, so every row keeps its own RoPE
    positions (counted over its real tokens). After each turn finished rows leave the cache and waiting jobs
    join it (continuous batching); jobs that share a prompt (the M rollouts of one Monte-Carlo estimate) share
    one prefill.
    """

    def __init__(self, model, tok, env, cfg: Config, device, max_new: int = 128):
        self.model, self.tok, self.env, self.cfg, self.device = model, tok, env, cfg, device
        self.cache_arg = cache_argument(model)
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.eot = torch.tensor(end_of_turn_ids(tok), device=device)
        self.pad = tok.pad_token_id
        self.max_new = cfg.max_new_tokens or max_new
        self.stats = self.counter().stats

    @staticmethod
    def counter():
        """An object with engine-like `stats`, to count the rollouts of several engines (evaluation)."""
        return argparse.Namespace(stats={"episodes": 0, "env_steps": 0, "gen_tokens": 0, "prefill_tokens": 0})

    def run(self, jobs: list[Job], seed: int) -> list[dict]:
        """Run every job; returns one result per job, in the jobs' order."""
        with grouped_attention_in(self.model):
            return self._run(jobs, seed)

    @torch.no_grad()
    def _run(self, jobs: list[Job], seed: int) -> list[dict]:
        pending = sorted(range(len(jobs)), key=lambda j: (-len(jobs[j].prefix), jobs[j].task), reverse=True)
        results, gen = [None] * len(jobs), torch.Generator().manual_seed(seed)
        t0, every, n_done, steps0 = time.time(), max(100, len(jobs) // 5), 0, self.stats["env_steps"]
        rows, state = [], None                              # state = (cache, attn, n_real, logits)
        while pending or rows:
            if pending and len(rows) < self.cfg.rollout_batch:      # admit waiting jobs
                new = []
                while pending and len(rows) + len(new) < self.cfg.rollout_batch:
                    j = pending.pop()
                    row = self._start(j, jobs[j])
                    if row["env"].done:
                        results[j] = self._finish(row)
                    else:
                        new.append(row)
                if new:
                    rows, state = rows + new, self._merge(state, self._prefill(new))
            if not rows:
                continue
            tokens, state = self._generate_turn(state, rows, gen)
            keep, block = [], []
            for b, row in enumerate(rows):
                if self._step(row, tokens[b], int(state[2][b])):
                    results[row["id"]] = self._finish(row)
                    n_done += 1
                    if n_done % every == 0:
                        steps = self.stats["env_steps"] - steps0
                        log(f"  rollouts {n_done}/{len(jobs)} | {steps} env steps | "
                            f"{steps / (time.time() - t0):.0f} steps/s")
                else:
                    keep.append(b)
                    block.append(self._next_prompt_tokens(row))
            rows = [rows[b] for b in keep]
            state = self._forward(*self._compact(self._select(state, keep))[:3], block) if rows else None
        return results

    def _start(self, j: int, job: Job) -> dict:
        """Reset a copy of the env on the job's task and replay its prefix turns."""
        env = self.env.clone()
        messages = prompt_messages(env, env.reset(job.task), self.cfg)
        for turn in job.prefix:
            obs, _, _, _ = env.act(turn)
            messages += [{"role": "assistant", "content": turn}, {"role": "user", "content": obs}]
        return {"id": j, "job": job, "env": env, "messages": messages, "n_start": len(messages), "turns": 0,
                "seen": set(), "repeats": 0}

    def _step(self, row: dict, tokens: list[int], n_tokens: int) -> bool:
        """Execute a generated turn in the row's env; True when the row is finished."""
        content = self.tok.decode(tokens, skip_special_tokens=False)
        obs, _, done, _ = row["env"].act(content)
        step = (row["env"].parse(content), obs)              # a hopeless loop only repeats earlier steps
        row["repeats"] = row["repeats"] + 1 if step in row["seen"] else 0
        row["seen"].add(step)
        looping = self.cfg.stop_loops and row["repeats"] >= self.cfg.stop_loops
        row["messages"] += [{"role": "assistant", "content": content}, {"role": "user", "content": obs}]
        row["turns"] += 1
        row["fed"] += content
        self.stats["env_steps"] += 1
        self.stats["gen_tokens"] += len(tokens)
        limit = row["job"].turns and row["turns"] >= row["job"].turns
        return done or bool(limit) or bool(looping) or n_tokens >= context_room(self.cfg, self.max_new)

    def _next_prompt_tokens(self, row: dict) -> list[int]:
        """Tokens that take the conversation from the generated turn to the next generation prompt."""
        text = self.tok.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
        if not text.startswith(row["fed"]):
            raise RuntimeError("the chat template renders earlier turns differently once a turn is added; "
                               "the rollout engine needs a prefix-stable template")
        delta, row["fed"] = text[len(row["fed"]):], text
        ids = self.tok(delta, add_special_tokens=False)["input_ids"]
        self.stats["prefill_tokens"] += len(ids)
        return ids

    def _finish(self, row: dict) -> dict:
        env, msgs = row["env"], row["messages"]
        if len(msgs) > row["n_start"]:
            msgs = msgs[:-1]                  # pairs end on an agent turn; the last observation is dropped
        self.stats["episodes"] += 1
        return {"task": row["job"].task, "messages": msgs, "n_start": row["n_start"], "done": env.done,
                "reward": env.reward if env.done else 0.0, "won": env.won, "turns": row["turns"]}

    def _prefill(self, rows: list[dict]):
        """One forward over the distinct prompts of new rows; each row then takes its prompt's cache."""
        texts = [self.tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True)
                 for r in rows]
        uniq = list(dict.fromkeys(texts))
        for r, t in zip(rows, texts):
            r["fed"] = t
        ids = self.tok(uniq, add_special_tokens=False)["input_ids"]
        self.stats["prefill_tokens"] += sum(map(len, ids))
        empty = (kv_cache(spare=self.max_new + 16, dtype=self.cache_dtype()),
                 torch.zeros(len(uniq), 0, dtype=torch.long, device=self.device),
                 torch.zeros(len(uniq), dtype=torch.long, device=self.device))
        state = self._forward(*empty, ids)
        return self._select(state, [uniq.index(t) for t in texts])

    def cache_dtype(self) -> torch.dtype | None:
        """Under autocast, attention reads keys and values in autocast's dtype, so the cache keeps them in it (the
        same attention to the bit). Qwen2's keys leave RoPE in float32, which would take 1.5x the memory."""
        kind = torch.device(self.device).type
        return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None

    def _forward(self, cache, attn, n_real, block: list[list[int]]):
        """Append a right-padded block of new tokens to every row; returns the new state with the logits at
        each row's last real token (rows with an empty block keep a placeholder)."""
        lens = torch.tensor([len(b) for b in block], device=self.device)
        ids = pad_batch(block, self.pad).to(self.device)
        new_mask = (torch.arange(ids.shape[1], device=self.device)[None] < lens[:, None]).long()
        pos = (n_real[:, None] + new_mask.cumsum(1) - 1).clamp(min=0)
        attn = torch.cat([attn, new_mask], 1)
        ends = (lens - 1).clamp(min=0)                         # each row's last real token
        keep, col = torch.unique(ends, return_inverse=True)   # the LM head runs only at those positions
        kw = {"logits_to_keep": keep} if self.keeps_logits else {}
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True,
                         **{self.cache_arg: cache}, **kw)     # the cache grows in place
        logits = out.logits if self.keeps_logits else out.logits[:, keep]
        last = logits[torch.arange(len(block), device=self.device), col].float()
        return cache, attn, n_real + lens, last

    @staticmethod
    def _select(state, keep: list[int]):
        """Keep (or repeat) rows of the batch state, in the given order."""
        cache, attn, n_real, logits = state
        idx = torch.tensor(keep, device=attn.device)
        for layer in cache.layers:
            layer.set(layer.keys[idx], layer.values[idx])
        return cache, attn[idx], n_real[idx], logits[idx]

    @staticmethod
    def _merge(a, b):
        """Stack two batch states; the shorter cache is right-padded with masked slots."""
        if a is None:
            return b
        T = max(a[1].shape[1], b[1].shape[1])
        pad = lambda x: F.pad(x, (0, 0, 0, T - x.shape[-2]))            # noqa: E731  (pad the time axis)
        for la, lb in zip(a[0].layers, b[0].layers):
            la.set(torch.cat([pad(la.keys), pad(lb.keys)]), torch.cat([pad(la.values), pad(lb.values)]))
        attn = torch.cat([F.pad(a[1], (0, T - a[1].shape[1])), F.pad(b[1], (0, T - b[1].shape[1]))])
        return a[0], attn, torch.cat([a[2], b[2]]), torch.cat([a[3], b[3]])

    @staticmethod
    def _compact(state):
        """Squeeze out the masked slots (padding) so every row's real tokens come first; positions are baked
        into the cached keys (RoPE), so moving them is exact."""
        cache, attn, n_real, logits = state
        T = int(n_real.max())
        if T >= 0.8 * attn.shape[1]:
            return state
        order = torch.sort(attn == 0, dim=1, stable=True).indices[:, :T]      # real slots first, in order
        for layer in cache.layers:
            idx = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.set(layer.keys.gather(2, idx), layer.values.gather(2, idx))
        return cache, attn.gather(1, order), n_real, logits

    def _generate_turn(self, state, rows: list[dict], gen: torch.Generator):
        """Decode one agent turn for every row, until each emits an end-of-turn token or max_new tokens."""
        cache, attn, n_real, logits = state
        temps = torch.tensor([r["job"].temperature for r in rows], device=self.device)
        B = len(rows)
        out = [[] for _ in range(B)]
        running = torch.ones(B, dtype=torch.bool, device=self.device)
        for _ in range(self.max_new):
            nxt = self._pick(logits, temps, gen)
            running = running & ~torch.isin(nxt, self.eot)
            if not running.any():
                break
            live = running.nonzero().flatten().tolist()
            for b in live:
                out[b].append(int(nxt[b]))
            block = [[out[b][-1]] if running[b] else [] for b in range(B)]
            cache, attn, n_real, new_logits = self._forward(cache, attn, n_real, block)
            logits = torch.where(running[:, None], new_logits, logits)
        return out, (cache, attn, n_real, logits)

    @staticmethod
    def _pick(logits: torch.Tensor, temps: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Greedy where the temperature is 0, else a sample from softmax(logits / T)."""
        greedy = logits.argmax(-1)
        if not (temps > 0).any():
            return greedy
        probs = torch.softmax(logits / temps.clamp(min=1e-4)[:, None], -1)
        sampled = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)
        return torch.where(temps > 0, sampled, greedy)


# ---------------------------------------------------------------------------------------------------------
# 5. Stage 1a: trajectory- and step-level preference data (§3.3.1), scored by Eqs. (3) and (4)
# ---------------------------------------------------------------------------------------------------------
def agent_turns(episode: dict, start: int = None) -> list[dict]:
    """The conversation from message `start` (default: the first generated turn) to the end."""
    return episode["messages"][episode["n_start"] if start is None else start:]


def agent_actions(env, episode: dict) -> tuple:
    """The actions (parsed as the env's wrapper parses them) of an episode's generated turns."""
    return tuple(env.parse(m["content"]) for m in agent_turns(episode)[::2])


def agent_actions_text(episode: dict) -> tuple:
    """The generated agent turns of an episode, as text (a prefix to replay)."""
    return tuple(m["content"] for m in agent_turns(episode)[::2])


def pair_record(level: str, task: int, prompt, chosen, rejected, **meta) -> dict:
    """One preference pair in TRL's conversational format, plus HPL's metadata."""
    return {"level": level, "task": task, "prompt": prompt, "chosen": chosen, "rejected": rejected, **meta}


def trajectory_pairs(demos: list[dict], explored: list[dict], cfg: Config) -> list[dict]:
    """§3.3.1 / ETO: pair each expert trajectory with pi_ref's greedy one when the final rewards differ."""
    pairs = []
    for demo, ep in zip(demos, explored):
        r_w, r_l = demo["reward"], ep["reward"]
        if abs(r_w - r_l) <= cfg.traj_threshold:
            continue
        prompt = demo["messages"][:demo["n_prompt"]]
        expert, agent = demo["messages"][demo["n_prompt"]:], agent_turns(ep)
        chosen, rejected = (expert, agent) if r_w > r_l else (agent, expert)
        pairs.append(pair_record("traj", demo["task"], prompt, chosen, rejected, dR=abs(r_w - r_l)))
    return pairs


# Eq. (2): r_hat(G_i) = (1/M) * sum_j R(tau_i^(j)), tau_i^(j) ~ pi_ref rolled out after G_i.
def mc_estimate(final_rewards: list[float]) -> float:
    """Eq. (2): the Monte-Carlo value of a state is the mean final reward of the rollouts from it."""
    return sum(final_rewards) / len(final_rewards)                                   # Eq. (2)


def mc_values(engine: Rollouts, states: list[tuple[int, tuple]], cfg: Config, seed: int) -> list[float]:
    """Eq. (2) for many states at once: M sampled pi_ref rollouts from each (task, agent-turn prefix)."""
    jobs = [Job(task, prefix, 0, cfg.temperature) for task, prefix in states for _ in range(cfg.mc_rollouts)]
    res = engine.run(jobs, seed)
    M = cfg.mc_rollouts
    return [mc_estimate([r["reward"] for r in res[k * M:(k + 1) * M]]) for k in range(len(states))]


def expert_prefix(demo: dict, t: int) -> tuple:
    """The expert's first t agent turns (the text the agent would have written)."""
    return tuple(m["content"] for m in demo["messages"][demo["n_prompt"]::2][:t])


def step_pairs(engine: Rollouts, demos: list[dict], cfg: Config, seed: int) -> list[dict]:
    """§3.3.1 / IPR: at expert step t, pi_ref proposes a_t (greedy) and completes the episode (greedy).
    MC values (Eq. 2) of the states after the expert's a*_t and after a_t decide the pair (Eq. 4 compares the
    whole continuations tau^w_{t:n} vs tau^l_{t:m})."""
    rng = random.Random(seed)
    branch = []
    for d, demo in enumerate(demos):
        steps = list(range(1, len(demo["actions"])))                 # step 0 is skipped, as in IPR/HPL code
        if cfg.step_branches:
            steps = sorted(rng.sample(steps, min(cfg.step_branches, len(steps))))
        branch += [(d, t) for t in steps]
    alt = engine.run([Job(demos[d]["task"], expert_prefix(demos[d], t), 0, 0.0) for d, t in branch], seed)
    # a pair needs different first actions (else both sides start from the same state) and final rewards that
    # differ (the filter below), so only those branch points get Monte-Carlo estimates
    keep = [k for k, ((d, t), ep) in enumerate(zip(branch, alt))
            if agent_actions(engine.env, ep)[:1] != (demos[d]["actions"][t],)
            and abs(demos[d]["reward"] - ep["reward"]) > cfg.traj_threshold]
    states = []
    for k in keep:                                               # value after a*_t and after a_t
        d, t = branch[k]
        states += [(demos[d]["task"], expert_prefix(demos[d], t + 1)),
                   (demos[d]["task"], expert_prefix(demos[d], t) + (agent_turns(alt[k])[0]["content"],))]
    values = mc_values(engine, states, cfg, seed + 1)
    pairs = []
    for n, k in enumerate(keep):
        d, t = branch[k]
        demo, ep = demos[d], alt[k]
        v_exp, v_agent = values[2 * n], values[2 * n + 1]
        cut = demo["n_prompt"] + 2 * t
        prompt, expert, agent = demo["messages"][:cut], demo["messages"][cut:], agent_turns(ep)
        if demo["reward"] > ep["reward"] + cfg.traj_threshold and v_exp > v_agent + cfg.step_threshold:
            pairs.append(pair_record("step", demo["task"], prompt, expert, agent, t=t, dR=v_exp - v_agent))
        elif ep["reward"] > demo["reward"] + cfg.traj_threshold and v_agent > v_exp + cfg.step_threshold:
            pairs.append(pair_record("step", demo["task"], prompt, agent, expert, t=t, dR=v_agent - v_exp))
    return pairs


# ---------------------------------------------------------------------------------------------------------
# 6. Action-group segmentation f(.) (§3.3.2): four strategies
# ---------------------------------------------------------------------------------------------------------
def groups_from_starts(starts: list[int], n: int) -> list[tuple[int, int]]:
    """Turn group start indices into contiguous (start, end) pairs covering range(n), end exclusive."""
    starts = sorted(set([0] + [s for s in starts if 0 < s < n]))
    return [(s, e) for s, e in zip(starts, starts[1:] + [n])]


def segment(trajectory: list[str], strategy: str, **kw) -> list[tuple[int, int]]:
    """Split a trajectory of n actions into contiguous, non-overlapping groups covering all of them.

    fixed_n:     N groups of ceil(n/N) actions (the paper's code; a short trajectory gets fewer groups).
    fixed_k:     groups of K consecutive actions, the last one possibly shorter.
    uncertainty: a step whose pi_ref entropy exceeds the threshold starts a new group (the paper's text:
                 "a boundary is inserted after a_{t-1} if the entropy at step t exceeds epsilon");
                 kw: entropies (one per action), threshold.
    semantic:    sub-task boundaries: from a segmenter model's answer to App. I's prompt (kw: groups), checked
                 to be contiguous and covering; else the rule-based segmenter (kw: env).
    """
    n = len(trajectory)
    if n == 0:
        return []
    if strategy == "fixed_n":
        size = math.ceil(n / kw.get("N", 3))
        return groups_from_starts(list(range(0, n, size)), n)
    if strategy == "fixed_k":
        return groups_from_starts(list(range(0, n, kw.get("K", 3))), n)
    if strategy == "uncertainty":
        ent, eps = kw["entropies"], kw["threshold"]
        return groups_from_starts([t for t in range(1, n) if ent[t] > eps], n)
    if strategy == "semantic":
        proposed = kw.get("groups")
        if proposed is not None and valid_groups(proposed, n):
            return [tuple(g) for g in proposed]
        return groups_from_starts(rule_based_starts(trajectory, kw.get("env", "alfworld")), n)
    raise ValueError(f"unknown segmentation strategy {strategy!r}")


def valid_groups(groups, n: int) -> bool:
    """Contiguous, non-overlapping, non-empty groups covering 0..n-1 (end exclusive)."""
    return bool(groups) and groups[0][0] == 0 and groups[-1][1] == n and all(
        s < e for s, e in groups) and all(a[1] == b[0] for a, b in zip(groups, groups[1:]))


# The rule-based stand-in for the GPT-4o segmenter: a group is a sub-task, which ends with the action that
# completes it (ALFWorld: take / heat / cool / clean / use / put; App. I's example groups "go, go, take" and
# "go, put"); WebShop and SQL change group when the kind of action changes (search / product / options / buy;
# schema exploration / query / submit), as in App. I's examples.
ALFWORLD_CLOSERS = ("take ", "put ", "heat ", "cool ", "clean ", "use ")


def action_kind(env_name: str, action: str) -> str:
    a = action.strip().lower()
    if env_name == "webshop":
        if a.startswith("search["):
            return "search"
        if a in ("click[buy now]",):
            return "buy"
        if a in ("click[description]", "click[features]", "click[reviews]", "click[< prev]"):
            return "inspect"
        if re.fullmatch(r"click\[b0[0-9a-z]{8}\]", a) or a in ("click[next >]", "click[back to search]"):
            return "product"
        return "options"
    if a.startswith("submit"):
        return "submit"
    return "explore" if re.match(r"(show |desc |describe |use )", a) else "query"


def rule_based_starts(actions: list[str], env_name: str) -> list[int]:
    if env_name == "alfworld":
        return [t + 1 for t, a in enumerate(actions) if a.startswith(ALFWORLD_CLOSERS)]
    kinds = [action_kind(env_name, a) for a in actions]
    return [t for t in range(1, len(kinds)) if kinds[t] != kinds[t - 1]]


SEMANTIC_PROMPT = (   # App. I, the ALFWorld prompt (WebShop and SQL use the same instructions with JSON output)
    "I need you to help me divide the trajectory of an agent's interaction with the environment into multiple "
    "action groups based on semantic relevance.\nBelow is an interaction trajectory, which contains the "
    "environment description received by the agent and the sequence of actions performed:\n{trajectory}\n"
    "Please divide the action sequence in this trajectory into multiple semantically related groups, each group "
    "represents a set of actions to complete a sub-goal or sub-task.\nPlease follow the following principles "
    "when dividing:\n1. Actions in the same group should be semantically closely related and complete a clear "
    "subtask together\n2. When the purpose of an action changes, it should be divided into a new group\n3. For "
    "each group, briefly describe the common goal of the group of actions\nPlease use the following format to "
    "return the results:\n<action_groups>\nGroup 1 (action index: 0-2): Find the target item\n- Action 0: go to "
    "toiletpaperhanger 1\n- Action 1: go to toilet 1\n- Action 2: take toiletpaper 1 from toilet 1\nGroup 2 "
    "(action index: 3-4): Complete the main task\n- Action 3: go to toiletpaperhanger 1\n- Action 4: put "
    "toiletpaper 1 in/on toiletpaperhanger 1\n</action_groups>")


def semantic_transcript(demo: dict) -> str:
    """App. I's transcript: `Task: ...`, then `Interaction Sequence:` with actions and observations."""
    msgs = demo["messages"][demo["n_prompt"]:]
    lines = [f"Task: {demo['messages'][demo['n_prompt'] - 1]['content']}", "Interaction Sequence:"]
    for k, a in enumerate(demo["actions"]):
        lines.append(f"Action {k}: {a}")
        if 2 * k + 1 < len(msgs):
            lines.append(msgs[2 * k + 1]["content"])
    return "\n".join(lines)


def parse_semantic_groups(text: str, n: int):
    """Read `Group k (action index: a-b)` lines, or a JSON list of [a, b] index pairs; None if unusable."""
    spans = [(int(a), int(b or a)) for a, b in re.findall(r"action index:\s*(\d+)\s*(?:-\s*(\d+))?", text)]
    if not spans:
        found = re.search(r"\[\s*\[.*\]\s*\]", text, re.DOTALL)
        try:
            spans = [(int(g[0]), int(g[-1])) for g in json.loads(found.group(0))] if found else []
        except (ValueError, TypeError, IndexError):
            spans = []
    groups = [(a, b + 1) for a, b in spans]
    return groups if valid_groups(groups, n) else None


def semantic_groups_from_model(path: str, demos: list[dict], device) -> list:
    """Ask a local chat model (--segmenter-model) for App. I's segmentation of each expert trajectory."""
    model, tok = load_pretrained(path, device)
    answers = []
    for demo in demos:
        msgs = [{"role": "user", "content": SEMANTIC_PROMPT.format(trajectory=semantic_transcript(demo))}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**{k: v.to(device) for k, v in ids.items()}, max_new_tokens=512, do_sample=False)
        text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        answers.append(parse_semantic_groups(text, len(demo["actions"])))   # None -> rule-based fallback
    return answers


@torch.no_grad()
def action_entropies(model, tok, demos: list[dict], device, batch: int = 16,
                     max_logits: int = 2 ** 28) -> list[list[float]]:
    """pi_ref's mean token entropy over each expert step's action tokens (the text after 'Action:').
    Up to `batch` trajectories per forward, fewer where their logits would pass `max_logits` numbers (1 GiB in
    float32; the tiny model's 16 fit, Qwen2.5's vocabulary of 151,936 gets one trajectory per forward)."""
    rendered_all = [render_chat(tok, d["messages"]) for d in demos]
    longest = max((len(r[0]) for r in rendered_all), default=1)
    batch = max(1, min(batch, max_logits // (model.config.vocab_size * longest)))
    result = []
    for k in range(0, len(demos), batch):
        chunk, rendered = demos[k:k + batch], rendered_all[k:k + batch]
        ids = pad_batch([r[0] for r in rendered]).to(device)
        attn = pad_batch([[1] * len(r[0]) for r in rendered]).to(device)
        logp = model(input_ids=ids, attention_mask=attn, use_cache=False).logits.float().log_softmax(-1)
        ent = -(logp.exp() * logp).sum(-1)                      # entropy of the prediction at each position
        for row, (d, (tokens, mask)) in enumerate(zip(chunk, rendered)):
            text_ids = tokens
            turns, cur = [], []
            for pos in range(1, len(text_ids)):                 # token pos is predicted at pos-1
                if mask[pos]:
                    cur.append(pos)
                elif cur:
                    turns.append(cur)
                    cur = []
            if cur:
                turns.append(cur)
            turns = turns[-len(d["actions"]):]                  # the agent turns (skips a leading "OK")
            values = []
            for positions in turns:
                decoded = [tok.decode(text_ids[p]) for p in positions]
                upto, start = "", len(positions)
                for j, piece in enumerate(decoded):             # first token after "Action:"
                    upto += piece
                    if "Action:" in upto:
                        start = j + 1
                        break
                act = positions[start:-1] or positions[-1:]     # action tokens, without the end-of-turn
                values.append(float(np.mean([float(ent[row, p - 1]) for p in act])))
            result.append(values)
    return result


def boundary_agreement(groups_list: list, subgoals_list: list) -> dict:
    """Precision/recall/F1 of a segmenter's group boundaries against the env's subgoal-label boundaries."""
    tp = fp = fn = 0
    for groups, subgoals in zip(groups_list, subgoals_list):
        pred = {s for s, _ in groups if s > 0}
        gold = {t for t in range(1, len(subgoals)) if subgoals[t] != subgoals[t - 1]}
        tp, fp, fn = tp + len(pred & gold), fp + len(pred - gold), fn + len(gold - pred)
    p, r = tp / max(1, tp + fp), tp / max(1, tp + fn)
    return {"precision": p, "recall": r, "f1": 2 * p * r / max(1e-9, p + r)}


# ---------------------------------------------------------------------------------------------------------
# 7. Stage 1b: group-level preference data (§3.3.3) with Monte-Carlo group rewards (Eq. 2), for Eq. (5)
# ---------------------------------------------------------------------------------------------------------
def group_pairs(engine: Rollouts, demos: list[dict], segmentations: list, cfg: Config, seed: int) -> tuple:
    """For each chosen expert group G_w = turns [s, e) after context c = the expert's first s turns: sample
    losing groups of the same length from pi_ref(.|c) (temperature 1, executed in the env, distinct from G_w and
    from each other), estimate r(G_w) and r(G_l) by Eq. (2), keep (c, G_w, G_l) if r(G_w) >= 0.8 and
    r(G_w) - r(G_l) > 0.3 (and the expert's final reward is not below the losing side's)."""
    rng = random.Random(seed)
    targets = []
    for d, groups in enumerate(segmentations):
        chosen = list(range(len(groups)))
        if cfg.group_branches:
            chosen = sorted(rng.sample(chosen, min(cfg.group_branches, len(chosen))))
        targets += [(d, groups[g]) for g in chosen]
    # Eq. (2) for every expert group first: a pair needs r(G_w) >= 0.8, so only those get losing samples
    r_win = mc_values(engine, [(demos[d]["task"], expert_prefix(demos[d], e)) for d, (s, e) in targets], cfg, seed)
    open_groups = [k for k, r in enumerate(r_win) if r >= cfg.group_min_win]
    # losing groups: same length L = e - s, sampled from pi_ref(.|c) at temperature 1 and executed in the env
    draws = cfg.n_neg * cfg.neg_tries
    samples = engine.run([Job(demos[targets[k][0]]["task"], expert_prefix(demos[targets[k][0]], targets[k][1][0]),
                              targets[k][1][1] - targets[k][1][0], cfg.temperature)
                          for k in open_groups for _ in range(draws)], seed + 1)
    losers = []                                                # (target index, losing episode)
    for n, k in enumerate(open_groups):
        d, (s, e) = targets[k]
        seen = {tuple(demos[d]["actions"][s:e])}                # kept only if its actions differ (paper's code)
        for ep in samples[n * draws:(n + 1) * draws]:
            acts = agent_actions(engine.env, ep)
            if acts not in seen and len(seen) <= cfg.n_neg:
                seen.add(acts)
                losers.append((k, ep))
    # Eq. (2) for the losing groups; one that ended the episode already has its final reward
    pending = [(ep["task"], expert_prefix(demos[targets[k][0]], targets[k][1][0]) + agent_actions_text(ep))
               for k, ep in losers if not ep["done"]]
    values = iter(mc_values(engine, pending, cfg, seed + 2))
    r_lose = [ep["reward"] if ep["done"] else next(values) for _, ep in losers]
    pairs, n_better = [], 0
    for (k, ep), r_l in zip(losers, r_lose):
        d, (s, e) = targets[k]
        demo, r_w = demos[d], r_win[k]
        if r_l > r_w:
            n_better += 1                                    # the agent's group was better: counted, discarded
        if r_w >= cfg.group_min_win and r_w - r_l > cfg.group_threshold and demo["reward"] >= r_l:
            cut = demo["n_prompt"] + 2 * s
            chosen = demo["messages"][cut:cut + 2 * (e - s) - 1]
            rejected = agent_turns(ep)
            pairs.append(pair_record("group", demo["task"], demo["messages"][:cut], chosen, rejected,
                                     start=s, end=e, L=(len(rejected) + 1) // 2, dR=r_w - r_l))
    stats = {"expert_groups": len(targets), "groups_with_r_win_ok": len(open_groups), "losing_groups": len(losers),
             "agent_better": n_better, "pairs": len(pairs)}
    return pairs, stats


# ---------------------------------------------------------------------------------------------------------
# 8. Dual-layer curriculum (§3.4, Eq. 9, Table 4)
# ---------------------------------------------------------------------------------------------------------
def bucket_of(L: int, dR: float, length_thresholds, gap_thresholds) -> tuple[int, int]:
    """Table 4: length level 1..3 (short..long) and difficulty level 1..3 (easy = large dR .. hard)."""
    _, l1, l2 = length_thresholds                  # e.g. (0, 3, 6): L <= 3 | 4..6 | > 6
    _, d1, d2 = gap_thresholds                     # (1.0, 0.7, 0.4): dR >= 0.7 | 0.4..0.7 | < 0.4
    length = 1 if L <= l1 else 2 if L <= l2 else 3
    difficulty = 1 if dR >= d1 - 1e-9 else 2 if dR >= d2 - 1e-9 else 3
    return length, difficulty


# Eq. (9): D^(1) = B_11;  D^(2) = B_11 u B_12 u B_21;  D^(3) = all nine buckets.
PHASES = {"dual": [{(1, 1)}, {(1, 1), (1, 2), (2, 1)}, None],
          "length": [{(1, 1), (1, 2), (1, 3)}, {(l, d) for l in (1, 2) for d in (1, 2, 3)}, None],
          "difficulty": [{(1, 1), (2, 1), (3, 1)}, {(l, d) for l in (1, 2, 3) for d in (1, 2)}, None],
          "static": [None]}


def curriculum(pairs: list[dict], length_thresholds, gap_thresholds, schedule: str = "dual") -> list[list[dict]]:
    """Assign each group pair its bucket B_{L,D} and return the cumulative phases of Eq. (9)."""
    for p in pairs:
        p["bucket"] = "B%d%d" % bucket_of(p["L"], p["dR"], length_thresholds, gap_thresholds)
    phases = []
    for allowed in PHASES[schedule]:
        phases.append([p for p in pairs if allowed is None or (int(p["bucket"][1]), int(p["bucket"][2])) in allowed])
    return phases                                                                          # Eq. (9)


def training_phases(phases: list[list[dict]], n: int) -> list[list[dict]]:
    """The schedule padded to `n` phases by repeating its last phase, so that every method and ablation trains
    as many optimizer steps as the 3-phase curriculum (a run without group pairs passes over its traj/step
    pairs once per phase, like HPL does)."""
    return phases + [phases[-1]] * max(0, n - len(phases))


def bucket_counts(pairs: list[dict]) -> dict:
    return {f"B{l}{d}": sum(p.get("bucket") == f"B{l}{d}" for p in pairs) for l in (1, 2, 3) for d in (1, 2, 3)}


# ---------------------------------------------------------------------------------------------------------
# 9. Preference optimization, Eq. (8): phase by phase, pi_ref fixed
# ---------------------------------------------------------------------------------------------------------
def tokenize_pairs(tok, pairs: list[dict]) -> list[dict]:
    """Token ids and completion masks of both sides of each pair (prompt tokens are never scored)."""
    out = []
    for p in pairs:
        cid, cm = render_pair_side(tok, p["prompt"], p["chosen"])
        rid, rm = render_pair_side(tok, p["prompt"], p["rejected"])
        out.append({**p, "chosen_ids": cid, "chosen_mask": cm, "rejected_ids": rid, "rejected_mask": rm})
    return out


@torch.no_grad()
def reference_logps(model, pairs: list[dict], device, batch: int = 8) -> None:
    """log pi_ref of every pair's two sides, computed once before training (pi_ref stays fixed)."""
    for k in range(0, len(pairs), batch):
        chunk = pairs[k:k + batch]
        ids = [p["chosen_ids"] for p in chunk] + [p["rejected_ids"] for p in chunk]
        masks = [p["chosen_mask"] for p in chunk] + [p["rejected_mask"] for p in chunk]
        logps = forward_logps(model, ids, masks, device)
        for p, c, r in zip(chunk, logps[:len(chunk)], logps[len(chunk):]):
            p["ref_chosen"], p["ref_rejected"] = float(c), float(r)


def level_loss(model, pairs: list[dict], cfg: Config, device) -> tuple[torch.Tensor, dict]:
    """Batch-mean DPO loss of one level (one concatenated forward over [chosen; rejected])."""
    ids = [p["chosen_ids"] for p in pairs] + [p["rejected_ids"] for p in pairs]
    masks = [p["chosen_mask"] for p in pairs] + [p["rejected_mask"] for p in pairs]
    logps = forward_logps(model, ids, masks, device)
    ref_c = torch.tensor([p["ref_chosen"] for p in pairs], device=device)
    ref_r = torch.tensor([p["ref_rejected"] for p in pairs], device=device)
    losses, rc, rr = dpo_loss(logps[:len(pairs)], logps[len(pairs):], ref_c, ref_r, cfg.beta)
    return losses.mean(), {"loss": losses.mean().item(), "chosen": rc.mean().item(), "rejected": rr.mean().item(),
                           "margin": (rc - rr).mean().item(), "acc": (rc > rr).float().mean().item(),
                           "tokens": sum(map(len, ids))}


def accumulate_gradients(model, batch: dict, bc_batch: list | None, cfg: Config,
                         device) -> tuple[float, float, dict, int]:
    """Back-propagate Eq. (8) for one optimizer step, --micro-batch pairs (and expert trajectories) per forward /
    backward pass; each micro-batch's loss is its share of the batch means, so the gradients add up to the whole
    batch's (one pass when --micro-batch is 0). Returns L, L_BC and each level's metrics over the whole batch, and
    the tokens it read."""
    parts = {name: micro_batches(pairs, cfg.micro_batch) for name, pairs in batch.items()}
    if bc_batch is not None:
        parts["bc"] = micro_batches(bc_batch, cfg.micro_batch)
    total, bc_total, metrics, n_tok = 0.0, 0.0, {}, 0
    for k in range(max(map(len, parts.values()))):
        losses = {}
        for name, pairs in batch.items():
            if k < len(parts[name]):
                share = len(parts[name][k]) / len(pairs)
                level, m = level_loss(model, parts[name][k], cfg, device)
                losses[name] = level * share
                whole = metrics.setdefault(name, dict.fromkeys(m, 0))
                for key, v in m.items():             # batch means: each part weighted by its share
                    whole[key] += v if key == "tokens" else v * share
                n_tok += m["tokens"]
        bc_loss = torch.zeros((), device=device)
        if k < len(parts.get("bc", ())):
            bc_loss, n = bc_loss_fn(model, parts["bc"][k], device, cfg.bc_norm, whole=bc_batch)
            n_tok += n
        loss = hpl_loss(bc_loss, losses)                                                  # Eq. (8)
        loss.backward()
        total, bc_total = total + loss.item(), bc_total + bc_loss.item()
    return total, bc_total, metrics, n_tok


def level_gradient_norms(model, batch: dict, cfg: Config, device) -> dict:
    """How hard each term of Eq. (8) pulls: the norm of d L_level / d theta, one level at a time, over the step's
    batch (a diagnostic, logged at the first step; the update itself uses the sum). Leaves no gradient behind."""
    norms = {}
    for name, pairs in batch.items():
        model.zero_grad(set_to_none=True)
        accumulate_gradients(model, {name: pairs}, None, cfg, device)       # this level alone, no L_BC
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        norms[name] = float(torch.linalg.vector_norm(torch.cat(grads)))
    model.zero_grad(set_to_none=True)
    return norms


FIXED_LEVELS = ("traj", "step")      # the levels trained on the same pairs in every phase (group pairs grow)


def level_batches(levels: dict, cfg: Config, length) -> dict:
    """An endless batch stream per fixed level, seeded by the level's name, not its place among the levels
    present: an ablation that drops one level (--no-traj) leaves the others' batches exactly as HPL draws them."""
    return {name: Cycler(p, cfg.batch, cfg.seed + FIXED_LEVELS.index(name), length) for name, p in levels.items() if p}


def train(model, levels: dict, phases: list, bc_data: list, cfg: Config, device, log_path: str,
          after_phase=None, min_pairs: int = 0) -> dict:
    """Optimise Eq. (8) phase by phase: each phase continues from the previous one's weights and has its own
    warmup + cosine schedule over `epochs` passes of its group pairs or of the largest level, whichever is larger
    (and at least `min_pairs`, so that a run without a level trains as many steps as the method it ablates);
    every step sums a batch of each level present and a batch of expert trajectories (L_BC)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr or PAPER_LR[cfg.env], weight_decay=0.0)
    peak = opt.param_groups[0]["lr"]
    pair_len = lambda p: len(p["chosen_ids"]) + len(p["rejected_ids"])     # noqa: E731
    fixed = level_batches(levels, cfg, pair_len)
    bc = Cycler(bc_data, cfg.batch, cfg.seed + 7, lambda d: len(d[0])) if bc_data is not None else None
    timings, rows, grad_norms = [], [], {}
    if cfg.checkpointing:
        enable_checkpointing(model)
    model.train()
    for ph, group in enumerate(phases):
        iters = dict(fixed)
        if group:
            iters["group"] = Cycler(group, cfg.batch, cfg.seed + 11 + ph, pair_len)
        size = max([len(group), min_pairs] + [len(p) for p in levels.values()]) or len(bc_data or [])
        steps = math.ceil(cfg.epochs * size / cfg.batch)
        t0, n_tok = time.time(), 0
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = peak * lr_factor(step, steps, cfg.warmup)
            batch = {name: it.next() for name, it in iters.items()}
            bc_batch = bc.next() if bc is not None else None
            if ph == 0 and step == 0 and len(batch) > 1:
                grad_norms = level_gradient_norms(model, batch, cfg, device)
                log("gradient norm of each level at pi_ref: " +
                    " | ".join(f"{k} {v:.2f}" for k, v in grad_norms.items()))
            opt.zero_grad(set_to_none=True)
            loss, bc_loss, metrics, n = accumulate_gradients(model, batch, bc_batch, cfg, device)  # Eq. (8)
            n_tok += n
            if not math.isfinite(loss):
                raise RuntimeError(f"non-finite loss at phase {ph + 1} step {step + 1}: {loss} "
                                   f"(levels: { {k: v['loss'] for k, v in metrics.items()} }); lower --lr")
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            row = {"phase": ph + 1, "step": step + 1, "loss": loss, "bc": bc_loss,
                   **{f"{k}/{m}": v[m] for k, v in metrics.items() for m in ("loss", "chosen", "rejected",
                                                                                 "margin", "acc")}}
            rows.append(row)
            if step % max(1, steps // 5) == 0 or step == steps - 1:
                parts = " | ".join(f"{k} {v['loss']:.3f} acc {v['acc']:.2f} margin {v['margin']:+.2f}"
                                   for k, v in metrics.items())
                log(f"step {step + 1}/{steps} | phase {ph + 1}/{len(phases)} | loss {loss:.4f} | "
                    f"bc {bc_loss:.4f} | {parts}")
        timings.append({"phase": ph + 1, "steps": steps, "seconds": time.time() - t0,
                        "tokens_per_s": n_tok / max(1e-9, time.time() - t0)})
        if after_phase is not None and ph < len(phases) - 1:
            model.eval()
            after_phase(ph + 1)
            model.train()
    write_jsonl(log_path, rows)
    model.eval()
    return {"phases": timings, "grad_norms_at_pi_ref": grad_norms}


# ---------------------------------------------------------------------------------------------------------
# 10. Evaluation (§4): greedy decoding on the held-out splits
# ---------------------------------------------------------------------------------------------------------
def eval_splits(cfg: Config) -> tuple:
    """ALFWorld: seen and unseen rooms (Tables 6-7); WebShop: test; InterCode-SQL: test or seen (--sql-eval)."""
    return {"alfworld": ("seen", "unseen"), "webshop": ("test",), "intercode_sql": (cfg.sql_eval,)}[cfg.env]


def evaluate(model, tok, cfg: Config, device, max_new: int, stats: dict = None, episodes: str = None) -> dict:
    """Greedy episodes on every evaluation split: success rate, average reward, per-task-type success.
    `stats` (optional) accumulates the rollout counters (env steps, generated tokens); `episodes` (optional) is a
    .jsonl path that gets every episode (split, task, type, reward, won, turns; messages from the task's first
    observation on, the shared instructions left out)."""
    model.eval()
    out, played = {}, []
    for split in eval_splits(cfg):
        env = make_env(cfg, split)
        n = len(env) if not cfg.eval_tasks else min(cfg.eval_tasks, len(env))
        engine = Rollouts(model, tok, env, cfg, device, max_new)
        res = engine.run([Job(i) for i in range(n)], cfg.seed)
        by_type = {}
        for i, r in enumerate(res):
            kind = env.task_type(i)
            by_type.setdefault(kind, []).append(r["won"])
            played.append({"split": split, "task": i, "type": kind, "reward": r["reward"],
                           "won": r["won"], "turns": r["turns"], "messages": r["messages"][r["n_start"] - 1:]})
        out[split] = {"success": 100 * float(np.mean([r["won"] for r in res])),
                      "reward": 100 * float(np.mean([r["reward"] for r in res])),
                      "n": n, "avg_turns": float(np.mean([r["turns"] for r in res])),
                      "by_type": {k: 100 * float(np.mean(v)) for k, v in sorted(by_type.items())},
                      "env_steps": engine.stats["env_steps"], "gen_tokens": engine.stats["gen_tokens"]}
        if stats is not None:
            for k, v in engine.stats.items():
                stats[k] = stats.get(k, 0) + v
    if episodes:
        write_jsonl(episodes, played)
    return out


def episodes_file(eval_path: str) -> str:
    """Where an evaluation's episodes go: beside its summary, eval-seen.json -> eval-seen.episodes.jsonl."""
    return eval_path[:-len(".json")] + ".episodes.jsonl"


def eval_file(cfg: Config, stem: str = "eval", phase: int = 0) -> str:
    """File name of an evaluation; a partial one (--eval-tasks N) is kept apart, and so are each phase's and
    one on SQL's seen split."""
    split = "-seen" if cfg.env == "intercode_sql" and cfg.sql_eval == "seen" else ""
    return (stem + split + (f"-n{cfg.eval_tasks}" if cfg.eval_tasks else "") + (f"-phase{phase}" if phase else "")
            + ".json")


def make_env(cfg: Config, split: str):
    kw = {"scene": cfg.scene} if cfg.env == "alfworld" else {}
    return envs.make(cfg.env, split=split, seed=cfg.seed, max_steps=cfg.max_steps or None, **kw)


def held_out(res: dict) -> dict:
    """The one evaluation split of WebShop or InterCode-SQL (test, or SQL's seen)."""
    (split,) = res.values()
    return split


def results_table(results: dict, env: str) -> str:
    """The Table-1-style summary: one row per policy."""
    head = ["policy"] + (["seen", "unseen"] if env == "alfworld" else ["reward", "success"])
    w = max([14] + [len(name) for name in results])
    lines = [" | ".join([f"{head[0]:>{w}}"] + [f"{h:>8}" for h in head[1:]])]
    for name, res in results.items():
        lines.append(" | ".join([f"{name:>{w}}"] + [f"{v:8.2f}" for v in split_scores(res, env)]))
    if env == "alfworld":
        types = sorted(next(iter(results.values()))["unseen"]["by_type"])
        lines.append("unseen by type: " + ", ".join(types))
        for name, res in results.items():
            lines.append(f"{name:>{w}}: " + " / ".join(f"{res['unseen']['by_type'].get(t, 0):.1f}" for t in types))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# 11. The pipeline: stages, caching, baselines (SFT, RFT, ETO, IPR) and HPL
# ---------------------------------------------------------------------------------------------------------
class Stages:
    """Times each stage (and the rollouts it runs), and reuses a finished stage's artifact when the same
    command runs again (artifacts are written atomically, so an interrupted run resumes at the stage it was in).
    Times are kept in the run folder, so the table also shows what reused stages took when they ran. `used`
    collects the name of every stage the run needed, timed or reused (an experiment sums their recorded times)."""

    def __init__(self, root: str, used: set | None = None):
        self.path = os.path.join(root, "stage_times.json")
        self.saved = read_json(self.path, {})
        self.times, self.notes, self.reused = {}, {}, []
        self.used = set() if used is None else used

    def run(self, name: str, path: str, compute, load, engine=None):
        """The stage's artifact at `path`: loaded when it exists, else computed. Both happen under a lock on
        `path`, so that two runs needing the same stage (a --compare beside a single run) compute it once."""
        self.used.add(name)
        with exclusive(path, waiting=lambda: log(f"[{name}] another run is computing it: waiting to reuse it")):
            if os.path.exists(path):
                log(f"[{name}] reusing {path}")
                self.reused.append(name)
                self.saved = read_json(self.path, {})     # with its time, if another run has just finished it
                return load(path)
            return self._compute(name, path, compute, engine)

    def _compute(self, name: str, path: str, compute, engine):
        log(f"[{name}] ...")
        before, t0 = dict(engine.stats) if engine else None, time.time()
        result = compute(path)
        self.times[name] = dt = time.time() - t0
        if engine:
            steps, toks = (engine.stats[k] - before[k] for k in ("env_steps", "gen_tokens"))
            self.notes[name] = f"{steps} env steps, {steps / dt:.0f} steps/s, {toks / dt:.0f} generated tok/s"
        self.saved = merge_json(self.path, {name: {"seconds": dt, "note": self.notes.get(name, "")}})  # runs share
        return result

    def table(self) -> str:
        rows = [f"{k:<40}{v:8.1f} s   {self.notes.get(k, '')}" for k, v in self.times.items()]
        rows.append(f"{'total (this invocation)':<40}{sum(self.times.values()):8.1f} s")
        earlier = [k for k in self.reused if k in self.saved]
        if earlier:
            rows.append("reused stages, as measured when they ran:")
            rows += [f"{k:<40}{self.saved[k]['seconds']:8.1f} s   {self.saved[k]['note']}" for k in earlier]
            total = sum(self.saved[k]["seconds"] for k in earlier) + sum(self.times.values())
            rows.append(f"{'total (all stages of this command)':<40}{total:8.1f} s")
        return "\n".join(rows)


def save_model(model, tok, path: str, perf: dict) -> None:
    """save_pretrained into a temp folder, renamed into place when complete."""
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    write_json(os.path.join(tmp, "perf.json"), perf)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


# Settings of stage 2 (training and evaluation); a policy trained with non-default ones gets its own folder.
TRAIN_FIELDS = ("beta", "lr", "batch", "epochs", "phases", "warmup", "bc_norm", "grad_clip", "length_thresholds",
                "gap_thresholds", "fixed_n", "fixed_k", "entropy_percentile", "segmenter_model")


def policy_settings(cfg: Config) -> dict:
    """Everything that shapes a trained policy beyond its run folder's stage settings."""
    hpl_only = ("segmentation", "curriculum", "no_traj", "no_step", "no_group") if cfg.method == "hpl" else ()
    return {k: getattr(cfg, k) for k in ("method",) + hpl_only + TRAIN_FIELDS}


PHASE_EVALS = ", with phase evaluations"


def phase_evals_suffix(cfg: Config) -> str:
    """A retrain with phase evaluations (Figure 4) is timed apart from the plain training of the same policy, and
    so is the evaluation of its final weights: both stage names end with this."""
    return PHASE_EVALS if cfg.eval_phases else ""


def train_stage_name(cfg: Config) -> str:
    return f"train ({method_tag(cfg)}{phase_evals_suffix(cfg)})"


def remove_outputs(folder: str, names: list) -> None:
    """Delete those of these files and folders (a policy, its evaluations) that exist, so they are made again."""
    for n in names:
        path = os.path.join(folder, n)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def forget_stale_policy(folder: str, settings: dict) -> None:
    """A policy folder whose policy was trained with other settings (say, after a default changed) loses that
    policy and its evaluations, so they are made again; the settings of what is (to be) trained are kept."""
    path = os.path.join(folder, "settings.json")
    old = read_json(path, {})
    if old == settings:
        return
    stale = [n for n in os.listdir(folder) if n == "policy" or n == "log.jsonl" or n.startswith("eval")]
    if stale:
        changed = ", ".join(k for k in settings if old.get(k) != settings[k]) if old else "not recorded"
        log(f"{folder}: trained with other settings ({changed}); training again")
        remove_outputs(folder, stale)
    write_json(path, settings)


def method_tag(cfg: Config) -> str:
    """The policy's folder name: method, HPL variant, and every training setting that is not the default. SFT is
    pi_ref itself, which no DPO setting shapes: its name is always "sft"."""
    if cfg.method == "sft":
        return "sft"
    tag = cfg.method
    if cfg.method == "hpl":
        tag = f"hpl-{cfg.segmentation}-{cfg.curriculum}{ablation_suffix(cfg)}"
    return tag + settings_suffix(cfg)


def ablated_levels(cfg: Config) -> list:
    """The levels of Eq. (8) switched off by --no-traj / --no-step / --no-group (Figure 5's ablations), in order."""
    return [k for k in ("traj", "step", "group") if getattr(cfg, f"no_{k}")]


def ablation_suffix(cfg: Config) -> str:
    """"-no_traj", "-no_step", "-no_group" for each level switched off."""
    return "".join(f"-no_{k}" for k in ablated_levels(cfg))


def settings_suffix(cfg: Config, fields: tuple = TRAIN_FIELDS) -> str:
    """The "-<field><value>" parts for every one of `fields` (the training settings unless told) that is not the
    preset's default ("-lr3e-05")."""
    base = Config(**preset_values(cfg.preset, cfg.env))
    return "".join(f"-{k}{re.sub(r'[^A-Za-z0-9.,_-]', '_', str(getattr(cfg, k)))}"
                   for k in fields if getattr(cfg, k) != getattr(base, k))


# Which levels of Eq. (8) each method trains (all start from the same pi_ref and use the same pairs).
METHOD_LEVELS = {"sft": (), "rft": (), "eto": ("traj",), "ipr": ("traj", "step"), "hpl": ("traj", "step", "group")}

STAGE_FIELDS = ("env", "model", "seed", "scene", "max_steps", "instruction", "vocab_size", "hidden_size",
                "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "max_len", "sft_tasks",
                "sft_epochs", "sft_batch", "sft_lr", "sft_warmup", "sft_hold", "sft_floor", "explore_tasks",
                "mc_rollouts", "step_branches", "group_branches", "n_neg", "neg_tries", "traj_threshold",
                "step_threshold", "group_threshold", "group_min_win", "temperature", "max_new_tokens")


def trained_levels(cfg: Config) -> set:
    """The DPO levels of Eq. (8) a run trains: its method's, less the ablated ones (--no-traj/step/group)."""
    return set(METHOD_LEVELS[cfg.method]) - set(ablated_levels(cfg))


def model_name(cfg: Config) -> str:
    """"tiny", or the last part of the model's path or hub name ("Qwen2.5-1.5B-Instruct")."""
    return "tiny" if cfg.model == "tiny" else re.sub(r"[^A-Za-z0-9._-]", "_", cfg.model.rstrip("/").split("/")[-1])


def stage_suffix(cfg: Config) -> str:
    """The "-<field><value>" parts for every stage setting (pi_ref, stage 1) that is not the preset's default
    ("-hidden_size384-sft_lr0.001"); env, seed and model are named apart."""
    return settings_suffix(cfg, tuple(k for k in STAGE_FIELDS if k not in ("env", "seed", "model")))


def run_dir(cfg: Config) -> str:
    """--out, or runs/<env>/<model>-<preset>-seed<seed>, plus the stage settings that are not the defaults (so a
    wider pi_ref, say, never lands in the default one's folder)."""
    if cfg.out:
        return cfg.out
    return os.path.join("runs", cfg.env, f"{model_name(cfg)}-{cfg.preset}-seed{cfg.seed}{stage_suffix(cfg)}")


def check_run_dir(cfg: Config, root: str) -> None:
    """A run folder holds one set of stage settings; another set gets another folder (or --out)."""
    path = os.path.join(root, "config.json")
    mine = {k: getattr(cfg, k) for k in STAGE_FIELDS}
    if os.path.exists(path):
        old = read_json(path).get("stages", {})
        diff = [k for k in STAGE_FIELDS if k in old and old[k] != mine[k]]
        if diff:
            raise UserError(f"{root} was made with other settings ({', '.join(diff)}); pass --out <folder>")
    write_json(path, {"stages": mine, "last_command": dataclasses.asdict(cfg)})


def pick_device(name: str) -> str:
    if name != "auto":
        if name == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but torch sees no CUDA device")
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu"


def thread_share(jobs: int = 1) -> int:
    """CPU threads for each of `jobs` runs at once (one run: all cores): the cores shared out, at most 8 each."""
    return max(1, min((os.cpu_count() or 1) // jobs, 8))


def cpu_threads(device: str) -> str:
    n = torch.get_num_threads()
    return f", {n} thread{'s' * (n > 1)}" if device == "cpu" else ""


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    return compare(cfg) if cfg.compare else run(cfg)


def run(cfg: Config, used: set | None = None) -> dict:
    """One pipeline run on the chosen device (see `pipeline`); `used` collects the names of the stages it needed."""
    device = pick_device(cfg.device)
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:      # the user's thread count wins
        torch.set_num_threads(thread_share())
    # Subnormal floats (below 1.2e-38) count as zero on the CPU. A level whose DPO loss has saturated (loss ~0,
    # margin +30) back-propagates gradients that small, and x86 cores compute on them many times slower; values
    # that small change no float32 sum (README, "Where the time goes").
    torch.set_flush_denormal(True)
    with mixed_precision(cfg, device):
        return pipeline(cfg, device, used)


def pipeline(cfg: Config, device: str, used: set | None = None) -> dict:
    """SFT -> pi_ref, stage 1 pairs, Eq. (8) training, evaluation (finished stages reused)."""
    root = run_dir(cfg)
    os.makedirs(root, exist_ok=True)
    check_run_dir(cfg, root)
    tag = method_tag(cfg)
    os.makedirs(os.path.join(root, tag), exist_ok=True)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    log(f"hpl | env {cfg.env} | method {tag} | model {cfg.model} | preset {cfg.preset} | seed {cfg.seed} | "
        f"device {device} ({compute_precision(cfg, device)}{cpu_threads(device)}) | run folder {root}")
    stages, perf = Stages(root, used), {}
    train_env = make_env(cfg, "train")
    n_sft = min(cfg.sft_tasks, len(train_env))

    # -- D_expert: the scripted expert's trajectories on the train split ---------------------------------
    seed_everything(cfg.seed)
    t0 = time.time()
    demos = [expert_episode(train_env, i, cfg) for i in range(n_sft)]
    stages.times["expert demos"] = time.time() - t0

    # -- §3.2, Eq. (1): behaviour cloning -> pi_ref --------------------------------------------------------
    def do_sft(path):
        seed_everything(cfg.seed + 1)
        if cfg.model == "tiny":
            texts = [json.dumps(d["messages"]) for d in demos[:1000]]
            tok = train_tiny_tokenizer(texts + list(SHORT_INSTRUCTIONS.values()) + [train_env.instruction],
                                       cfg.vocab_size)
            model = build_tiny_model(cfg, len(tok)).to(device)
            log(f"tiny Qwen2: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
                f"vocab {len(tok)}")
        else:
            model, tok = load_pretrained(cfg.model, device)
        perf.update(sft(model, tok, demos, cfg, device))
        save_model(model, tok, path, perf)
        return model, tok

    def load_sft(path):
        perf.update(read_json(os.path.join(path, "perf.json")))
        return load_pretrained(path, device)

    model, tok = stages.run("sft (pi_ref)", os.path.join(root, "pi_ref"), do_sft, load_sft)
    model.eval()
    max_new = turn_token_budget(tok, demos)
    engine = Rollouts(model, tok, train_env, cfg, device, max_new)

    results = {}                                       # this run's policies; finish() adds the folder's others
    eval_counter = Rollouts.counter()

    def do_eval(path):
        res = evaluate(model, tok, cfg, device, max_new, eval_counter.stats, episodes_file(path))
        write_json(path, res)
        return res

    results["pi_ref (SFT)"] = stages.run("evaluate pi_ref", os.path.join(root, eval_file(cfg, "eval-pi_ref")),
                                         do_eval, read_json, eval_counter)
    if cfg.method == "sft":
        return finish(cfg, root, results, stages, perf)

    # -- §3.3: stage 1, exploration with pi_ref (fixed; one shot, offline afterwards) -------------------
    n_exp = min(cfg.explore_tasks or len(demos), len(demos))
    explore = demos[:n_exp]
    levels_needed = trained_levels(cfg)
    pair_dir = os.path.join(root, "pairs")
    os.makedirs(pair_dir, exist_ok=True)

    def do_explore(path):
        seed_everything(cfg.seed + 2)
        eps = engine.run([Job(d["task"]) for d in explore], cfg.seed + 2)
        rows = [{"task": e["task"], "messages": e["messages"], "n_start": e["n_start"], "reward": e["reward"],
                 "won": e["won"]} for e in eps]
        write_jsonl(path, rows)
        return rows

    explored = stages.run("explore (pi_ref greedy)", os.path.join(pair_dir, "explored.jsonl"), do_explore,
                          read_jsonl, engine)
    levels, traj_pairs = {}, trajectory_pairs(explore, explored, cfg)
    if "traj" in levels_needed or cfg.method == "rft":
        levels["traj"] = traj_pairs
    # steps per phase count the trajectory pairs even under --no-traj: an ablation drops a loss, not steps
    n_traj_pairs = len(traj_pairs) if METHOD_LEVELS[cfg.method] else 0

    if "step" in levels_needed:
        def do_step(path):
            pairs = step_pairs(engine, explore, cfg, cfg.seed + 3)
            write_jsonl(path, pairs)
            return pairs
        levels["step"] = stages.run("step pairs", os.path.join(pair_dir, "step.jsonl"), do_step, read_jsonl, engine)

    phases = [[]]
    if "group" in levels_needed:
        segs = segmentations(cfg, model, tok, explore, root, device)

        def do_group(path):
            pairs, gstats = group_pairs(engine, explore, segs, cfg, cfg.seed + 4)
            write_json(path + ".stats.json", gstats)
            write_jsonl(path, pairs)
            return pairs
        gpath = os.path.join(pair_dir, f"group-{cfg.segmentation}.jsonl")
        gpairs = stages.run(f"group pairs ({cfg.segmentation})", gpath, do_group, read_jsonl, engine)
        Lth = tuple(int(x) for x in cfg.length_thresholds.split(",")) if cfg.length_thresholds \
            else LENGTH_THRESHOLDS[cfg.env]
        Dth = tuple(float(x) for x in cfg.gap_thresholds.split(","))
        phases = curriculum(gpairs, Lth, Dth, cfg.curriculum)
        grid = bucket_counts(gpairs)
        write_json(os.path.join(root, tag, "curriculum.json"), {"grid": grid, "phases": [len(p) for p in phases],
                                                                 "length_thresholds": Lth, "gap_thresholds": Dth})
        log("curriculum grid (rows: length L1..L3, columns: difficulty D1 easy .. D3 hard):")
        for l in (1, 2, 3):
            log("  " + "  ".join(f"B{l}{d} {grid[f'B{l}{d}']:4d}" for d in (1, 2, 3)))
        log("phases: " + " -> ".join(str(len(p)) for p in phases) + " group pairs (cumulative)")
    log("pairs: " + ", ".join(f"{k} {len(v)}" for k, v in levels.items()) +
        (f", group {len(phases[-1])}" if "group" in levels_needed else ""))

    # -- Eq. (8): train from pi_ref, phase by phase -----------------------------------------------------
    def do_train(path):
        seed_everything(cfg.seed + 5)
        bc_data = [render_chat(tok, d["messages"]) for d in demos]
        train_levels = {k: levels[k] for k in FIXED_LEVELS if k in levels_needed}
        train_phases = schedule
        if cfg.method == "rft":     # rejection-sampling fine-tuning: L_BC on D_expert + pi_ref's own successes
            bc_data += [render_chat(tok, e["messages"]) for e in explored if e["won"]]
        if cfg.method == "eto":     # ETO's DPO has no NLL term
            bc_data = None
        t0 = time.time()
        train_levels = {k: tokenize_pairs(tok, v) for k, v in train_levels.items()}
        tokenized = {id(p): q for p, q in zip(train_phases[-1], tokenize_pairs(tok, train_phases[-1]))}
        train_phases = [[tokenized[id(p)] for p in ph] for ph in train_phases]
        reference_logps(model, [p for v in train_levels.values() for p in v] + train_phases[-1], device)
        info = {"reference_logps_s": time.time() - t0}

        def eval_phase(k):                                     # Figure 4: the policy after phase k
            log(f"[evaluate {tag} after phase {k}] ...")
            do_eval(phase_path(k))                             # the model being trained, as do_eval sees it
        info.update(train(model, train_levels, train_phases, bc_data, cfg, device,
                          os.path.join(root, tag, "log.jsonl"), eval_phase if cfg.eval_phases else None,
                          min_pairs=n_traj_pairs))
        save_model(model, tok, path, info)
        return info

    schedule = training_phases(phases if "group" in levels_needed else [[]], cfg.phases if cfg.method != "rft" else 1)
    phase_path = lambda k: os.path.join(root, tag, eval_file(cfg, phase=k))       # noqa: E731
    policy = os.path.join(root, tag, "policy")
    forget_stale_policy(os.path.join(root, tag), policy_settings(cfg))
    if cfg.eval_phases and os.path.exists(policy) and not all(os.path.exists(phase_path(k))
                                                              for k in range(1, len(schedule))):
        # trained without the per-phase evaluations: train again, and score the new weights at the end too
        remove_outputs(os.path.join(root, tag), ["policy", eval_file(cfg), episodes_file(eval_file(cfg))])
    train_stage = train_stage_name(cfg)
    perf["train"] = stages.run(train_stage, policy, do_train, lambda p: read_json(os.path.join(p, "perf.json")))
    if train_stage not in stages.times:             # a finished policy: evaluate the saved weights
        model, tok = load_pretrained(policy, device)
    results[tag] = stages.run(f"evaluate {tag}{phase_evals_suffix(cfg)}",
                              os.path.join(root, tag, eval_file(cfg)), do_eval, read_json, eval_counter)
    return finish(cfg, root, results, stages, perf)


def segmentations(cfg: Config, model, tok, demos: list[dict], root: str, device) -> list:
    """Segment every explored expert trajectory with the chosen strategy; print how well each strategy's
    boundaries agree with the env's subgoal labels."""
    actions = [d["actions"] for d in demos]
    ent_path = os.path.join(root, "pairs", "entropies.json")
    if os.path.exists(ent_path):
        ents = read_json(ent_path)
    else:
        ents = action_entropies(model, tok, demos, device)
        write_json(ent_path, ents)
    flat = [x for e in ents for x in e]
    eps = float(np.percentile(flat, cfg.entropy_percentile)) if flat else 0.0
    model_groups = [None] * len(demos)
    if cfg.segmenter_model and cfg.segmentation == "semantic":
        model_groups = semantic_groups_from_model(cfg.segmenter_model, demos, device)
    by = {
        "fixed_n": [segment(a, "fixed_n", N=cfg.fixed_n) for a in actions],
        "fixed_k": [segment(a, "fixed_k", K=cfg.fixed_k) for a in actions],
        "uncertainty": [segment(a, "uncertainty", entropies=e, threshold=eps) for a, e in zip(actions, ents)],
        "semantic": [segment(a, "semantic", groups=g, env=cfg.env) for a, g in zip(actions, model_groups)],
    }
    log(f"segmentation vs the env's subgoal labels (boundary F1; uncertainty threshold {eps:.3f}):")
    for name, groups in by.items():
        agree = boundary_agreement(groups, [d["subgoals"] for d in demos])
        mean_len = np.mean([e - s for g in groups for s, e in g])
        log(f"  {name:<12} F1 {agree['f1']:.2f} (P {agree['precision']:.2f} R {agree['recall']:.2f}) | "
            f"mean group length {mean_len:.2f}")
    return by[cfg.segmentation]


def finish(cfg, root, results, stages, perf) -> dict:
    """Merge this run's evaluations into the folder's results.json, then print the results and the timings."""
    results = merge_json(os.path.join(root, "results.json"), results)   # another method may have finished meanwhile
    log("\nresults (success %; WebShop/SQL: average reward and success, x100):")
    log(results_table(results, cfg.env))
    log("\nstage times:")
    log(stages.table())
    if "sft_tokens_per_s" in perf:
        log(f"throughput: SFT {perf['sft_tokens_per_s']:.0f} train tok/s")
    if "reference_logps_s" in perf.get("train", {}):
        log(f"  reference log-probs: {perf['train']['reference_logps_s']:.1f} s")
    for ph in perf.get("train", {}).get("phases", []):
        log(f"  phase {ph['phase']}: {ph['steps']} steps, {ph['seconds']:.1f} s, {ph['tokens_per_s']:.0f} tok/s")
    return results


# ---------------------------------------------------------------------------------------------------------
# 12. Experiments (§4): the paper's comparisons and ablations, mean +- std over seeds, the paper's numbers beside
# ---------------------------------------------------------------------------------------------------------
# The paper's 1.5B numbers (Table 1: 3-seed means; Table 2, Figures 4-5, Tables 6-7: single runs; Figure 5 is 7B).
PAPER = {
    "methods": {"sft": (60.95, 57.96, 56.56, 26.00, 56.24, 54.33), "rft": (61.19, 60.95, 57.66, 28.17, 58.08, 56.67),
                "eto": (65.48, 66.42, 56.57, 28.00, 58.45, 57.67), "ipr": (65.24, 66.67, 57.76, 27.83, 58.26, 57.17),
                "hpl-semantic-dual": (72.86, 74.13, 60.74, 30.00, 60.39, 58.50)},
    "segmentation": {"hpl-fixed_n-dual": (69.52, 74.38, 60.21, 30.17, 58.75, 57.67),
                     "hpl-fixed_k-dual": (70.48, 66.42, 58.34, 28.33, 59.69, 57.17),
                     "hpl-uncertainty-dual": (74.53, 64.18, 58.75, 27.83, 59.11, 57.33),
                     "hpl-semantic-dual": (72.86, 74.13, 60.74, 30.00, 60.39, 58.50)},
    "curriculum": {"hpl-semantic-dual": (71.43, 72.39, 59.99, 30.00, 60.08, 58.50),
                   "hpl-semantic-static": (68.57, 71.64, 58.80, 29.00, 59.45, 58.00),
                   "hpl-semantic-length": (69.29, 72.39, 58.06, 28.50, 59.39, 57.50),
                   "hpl-semantic-difficulty": (71.43, 70.71, 58.83, 30.00, 60.50, 58.00)},
    "losses": {"hpl-semantic-dual": (83.57, 86.57, 62.56, None, 70.63, None),
               "hpl-semantic-dual-no_traj": (79.29, 82.09, 62.14, None, 68.70, None),
               "hpl-semantic-dual-no_step": (80.71, 83.58, 61.95, None, 69.39, None),
               "hpl-semantic-dual-no_group": (72.86, 77.61, 61.90, None, 69.19, None)},
    "phases": {"phase 1": (69.29, 63.43), "phase 2": (70.71, 64.18), "phase 3": (71.43, 72.39)},
}
PAPER_COLUMNS = {"alfworld": (0, 1), "webshop": (2, 3), "intercode_sql": (4, 5)}
# each experiment: the runs it needs, as Config overrides (all from the same pi_ref and the same stage 1 data)
EXPERIMENTS = {
    "methods": [dict(method=m) for m in ("sft", "rft", "eto", "ipr", "hpl")],
    "segmentation": [dict(segmentation=s) for s in ("fixed_n", "fixed_k", "uncertainty", "semantic")],
    "curriculum": [dict(curriculum=c) for c in ("dual", "static", "length", "difficulty")],
    "losses": [{}, dict(no_traj=True), dict(no_step=True), dict(no_group=True)],
    "phases": [dict(eval_phases=True)],
}


def same_training(cfg: Config) -> Config:
    """The run that trains exactly what `cfg` asks for. HPL without L_group trains IPR's objective (L_BC +
    trajectory + step DPO on the same pairs, the same steps; segmentation and curriculum only shape group pairs),
    so an experiment reads that row from the IPR run instead of training it twice (seed 0: both 41.43 / 47.76)."""
    if cfg.method == "hpl" and trained_levels(cfg) == set(METHOD_LEVELS["ipr"]):
        return dataclasses.replace(cfg, method="ipr", no_group=False)
    return cfg


def score_columns(env: str) -> tuple:
    return ("seen", "unseen") if env == "alfworld" else ("avg reward", "success")


def split_scores(res: dict, env: str) -> tuple:
    """The two numbers of Table 1 for one env: ALFWorld seen/unseen success; WebShop/SQL reward/success."""
    if env == "alfworld":
        return res["seen"]["success"], res["unseen"]["success"]
    split = held_out(res)
    return split["reward"], split["success"]


def num(x: float, sign: str = "") -> str:
    """Two decimals, and no '-0.00' for a difference that is zero up to float rounding."""
    return f"{round(float(x), 2) + 0.0:{sign}.2f}"


def task_types(by_type: dict) -> list[str]:
    """The task types of by_type[run] = [{type: success %} per seed], sorted; [] when the env has none."""
    return sorted(next(iter(by_type.values()))[0]) if by_type else []


def mean_std(values: list) -> str:
    return f"{num(np.mean(values))} +- {num(np.std(values))}" if len(values) > 1 else num(values[0])


def paired_differences(rows: dict, ref: str) -> dict:
    """Per seed, the reference run's score minus each other run's: {name: [(d_col1, d_col2) per seed]}. Runs of
    one seed share pi_ref and the stage 1 data, so these differences leave out the spread that seeds put into
    every run alike (the mean +- std columns keep it in)."""
    base = rows[ref]
    return {name: [tuple(b - v for b, v in zip(bs, vs)) for bs, vs in zip(base, vals)]
            for name, vals in rows.items() if name != ref and len(vals) == len(base)}


def paired_cell(diffs: list) -> str:
    """'+5.97 / +1.49 / +4.48 -> 3.98 +- 1.86 (3/3)': each seed, mean +- std, seeds where the reference is ahead."""
    seeds = " / ".join(num(d, "+") for d in diffs)
    return f"{seeds} -> {mean_std(diffs)} ({sum(round(d, 2) > 0 for d in diffs)}/{len(diffs)})"


def task_outcomes(eval_path: str) -> dict | None:
    """{(split, task): won} for every episode of an evaluation, read from its episode file; None if not kept."""
    path = episodes_file(eval_path)
    return {(e["split"], e["task"]): bool(e["won"]) for e in read_jsonl(path)} if os.path.exists(path) else None


def discordant_tasks(ref: list, other: list, split: str) -> tuple[int, int]:
    """Over the seeds both runs were evaluated on (outcome dicts per seed, as `task_outcomes`), the tasks of
    `split` that `ref` wins and `other` loses, and those `other` wins and `ref` loses."""
    b = c = 0
    for mine, theirs in zip(ref, other):
        if mine is None or theirs is None:
            continue
        for key, won in mine.items():
            if key[0] == split and key in theirs:
                b += won and not theirs[key]
                c += theirs[key] and not won
    return b, c


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test on b : c discordant tasks: if both policies were equally good, each such task
    would fall either way with chance 1/2, and p is the chance of a split at least this uneven."""
    n = b + c
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n)


def evaluation_paths(cfg: Config, tag: str) -> dict:
    """The evaluation files behind an experiment's rows for one run: row `tag` (the policy `cfg` trains) and row
    "sft" (pi_ref, which is also the whole of the SFT baseline)."""
    return {tag: os.path.join(run_dir(cfg), method_tag(cfg), eval_file(cfg)),
            "sft": os.path.join(run_dir(cfg), eval_file(cfg, "eval-pi_ref"))}


def compare(cfg: Config) -> dict:
    """Run (or reuse) every run an experiment needs for `seeds` seeds; print and write the paper-style tables."""
    rows, by_type, t0 = {}, {}, time.time()              # rows[name] = [(col1, col2) per seed]
    outcomes = {}                                         # outcomes[name] = [task_outcomes per seed]
    stages_used = {}                                      # run folder -> the stages its runs needed
    if cfg.jobs > 1:                                      # train them side by side first; the loop then reuses
        run_side_by_side(experiment_runs(cfg), cfg.jobs)
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        done = set()                                      # pi_ref is shared by all runs of a seed: one row
        for over in EXPERIMENTS[cfg.compare]:
            one = experiment_run(cfg, seed, over)
            tag = method_tag(one)
            same = same_training(one)
            results = run(same, stages_used.setdefault(run_dir(same), set()))
            named = {"sft" if k == "pi_ref (SFT)" else k: v for k, v in results.items()}
            named[tag] = named[method_tag(same)]
            evals = evaluation_paths(same, tag)
            if cfg.compare == "phases":
                folder = os.path.join(run_dir(same), method_tag(same))          # where the phases were trained
                trained = read_json(os.path.join(folder, "policy", "perf.json"))["phases"]
                paths = [os.path.join(folder, eval_file(same, phase=k))
                         for k in range(1, len(trained))]                   # the last phase is eval.json
                final = named[tag], evals[tag]
                evals = {f"phase {k}": p for k, p in enumerate(paths, 1) if os.path.exists(p)}
                named = {name: read_json(p) for name, p in evals.items()}
                last = f"phase {len(named) + 1}"
                named[last], evals[last] = final
            for name in (["sft", tag] if cfg.compare != "phases" else list(named)):
                if name in done:
                    continue
                done.add(name)
                rows.setdefault(name, []).append(split_scores(named[name], cfg.env))
                outcomes.setdefault(name, []).append(task_outcomes(evals[name]))
                if cfg.env == "alfworld":
                    by_type.setdefault(name, []).append(named[name]["unseen"]["by_type"])
    minutes = (time.time() - t0) / 60, recorded_minutes(stages_used)
    text = experiment_tables(cfg, rows, by_type, minutes, outcomes)
    log("\n" + text)
    stem = unclobbered_stem(results_stem(cfg), cfg.seeds)
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    name = stem + ".md"
    write_text(name, text + "\n")
    write_json(stem + ".json", {"rows": rows, "by_type": by_type, "minutes": minutes[0], "run_minutes": minutes[1],
                                "discordant_tasks": task_table_cells(cfg, outcomes)[1]})
    plot_experiment(cfg, rows, by_type, stem)
    log(f"wrote {name} ({minutes[0]:.1f} min)")
    return rows


def experiment_run(cfg: Config, seed: int, over: dict) -> Config:
    """One run of an experiment: its seed and Config overrides; with --out, seed s > the first in <out>-seed<s>."""
    out = cfg.out if seed == cfg.seed or not cfg.out else f"{cfg.out}-seed{seed}"
    return dataclasses.replace(cfg, compare="", seeds=1, seed=seed, out=out, **over)


def experiment_runs(cfg: Config) -> list[Config]:
    """Every run an experiment trains, once each, in the order runs side by side take them: each seed's first run
    (it computes the stages the seed's other runs share, so they seldom wait for one another), then the others in
    reverse, seeds interleaved; for `methods` that starts HPL, the longest, early and leaves short runs to the end."""
    runs, overs = {}, EXPERIMENTS[cfg.compare]
    for over in overs[:1] + overs[:0:-1]:
        for seed in range(cfg.seed, cfg.seed + cfg.seeds):
            one = same_training(experiment_run(cfg, seed, over))
            runs.setdefault(repr(one), one)
    return list(runs.values())


def run_side_by_side(runs: list[Config], jobs: int) -> None:
    """Run `runs` in `jobs` processes at once, each on its `thread_share`, each logging to its policy folder.
    A tiny model's rollouts and DPO keep two threads only partly busy, so two one-thread runs get more done on two
    cores than one two-thread run (~1.2x; README, Comparisons). Their numbers are those of single runs on as many
    threads (OMP_NUM_THREADS), which differ from the default's in the last float bits, as any thread count's do."""
    threads = thread_share(jobs)
    log(f"[side by side] {len(runs)} runs, {jobs} at a time, {threads} thread(s) each; "
        f"each logs to <run folder>/<policy>/run.log")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=use_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(run_logged, one): one for one in runs}
        try:
            for k, done in enumerate(concurrent.futures.as_completed(futures), 1):
                one = futures[done]
                log(f"[side by side] {k}/{len(runs)} done: seed {one.seed} {method_tag(one)} "
                    f"({done.result():.1f} min, {run_log(one)})")
        except BaseException:
            pool.shutdown(cancel_futures=True)                # runs not started yet never start
            raise


def use_threads(threads: int) -> None:
    """A side-by-side worker's share of the CPU (`run` keeps a thread count that OMP_NUM_THREADS sets)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def run_log(cfg: Config) -> str:
    return os.path.join(run_dir(cfg), method_tag(cfg), "run.log")


def run_logged(cfg: Config) -> float:
    """`run(cfg)` with everything it prints appended to its run.log; returns its minutes."""
    path, t0 = run_log(cfg), time.time()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        run(cfg)
    return (time.time() - t0) / 60


def recorded_minutes(stages_used: dict) -> float:
    """What the experiment's runs took when they ran, summed from each run folder's stage_times.json (a retrain
    with phase evaluations made before it had stage names of its own was timed under the plain train and
    evaluate names)."""
    total = 0.0
    for root, names in stages_used.items():
        times = read_json(os.path.join(root, "stage_times.json"), {})
        for name in names:
            entry = times.get(name) or times.get(name.replace(PHASE_EVALS, ""), {})
            total += entry.get("seconds", 0.0)
    return total / 60


def results_stem(cfg: Config) -> str:
    """results/<env>-<experiment>, plus the model, preset, stage and training settings when not the defaults, so
    that experiments made with other settings (e.g. --lr 1e-5, a wider model) do not overwrite each other. With --out
    the tables go into that folder, and the smoke preset's (numbers that mean nothing) into runs/results, not the
    repo's results/."""
    folder = cfg.out or (os.path.join("runs", "results") if cfg.preset == "smoke" else "results")
    preset = "" if cfg.preset == "cpu" else f"-{cfg.preset}"
    model = "" if cfg.model == "tiny" else f"-{model_name(cfg)}"
    return os.path.join(folder, f"{cfg.env}-{cfg.compare}{model}{preset}{variant_suffix(cfg)}{ablation_suffix(cfg)}"
                                f"{stage_suffix(cfg)}{settings_suffix(cfg)}")


def unclobbered_stem(stem: str, seeds: int) -> str:
    """`stem`, unless a table over more seeds is already there: then `stem`-<seeds>seed, so that a run with fewer
    seeds never overwrites one with more."""
    there = read_json(stem + ".json", {}).get("rows", {})
    return stem if max(map(len, there.values()), default=0) <= seeds else f"{stem}-{seeds}seed"


def variant_suffix(cfg: Config) -> str:
    """"-static", "-fixed_k": a segmentation or curriculum other than the default that the experiment itself does not
    vary; "-seed1": seeds counted from another first seed than 0."""
    base, varied = Config(**preset_values(cfg.preset, cfg.env)), {k for o in EXPERIMENTS[cfg.compare] for k in o}
    parts = [getattr(cfg, k) for k in ("segmentation", "curriculum") if k not in varied and getattr(cfg, k) !=
             getattr(base, k)]
    return "".join(f"-{p}" for p in parts) + (f"-seed{cfg.seed}" if cfg.seed != base.seed else "")


def reference_run(cfg: Config, rows: dict) -> str:
    """The run every other is paired with: HPL as configured (Figure 4: the last phase)."""
    return list(rows)[-1] if cfg.compare == "phases" else method_tag(dataclasses.replace(cfg, compare="", method="hpl"))


def task_table_cells(cfg: Config, outcomes: dict) -> tuple[list, dict]:
    """Task by task against the reference run, over all seeds: per run and evaluation split, [tasks the reference
    wins and the run loses, the reverse, exact McNemar p]. Returns the markdown lines and those numbers; runs whose
    episode files were not kept are left out."""
    ref, splits = reference_run(cfg, outcomes) if outcomes else None, eval_splits(cfg)
    if ref not in outcomes or all(o is None for o in outcomes[ref]):
        return [], {}
    cells = {}
    for name, per_seed in outcomes.items():
        if name == ref or all(o is None for o in per_seed):
            continue
        for split in splits:
            b, c = discordant_tasks(outcomes[ref], per_seed, split)
            cells.setdefault(name, {})[split] = [b, c, round(mcnemar_p(b, c), 4)]
    if not cells:
        return [], {}
    lines = ["", f"Task by task, over the seeds: tasks {ref} wins and the run loses / the run wins and {ref} loses, "
                 "and the exact McNemar p (two-sided; a small p is a gap the tasks of these seeds already show):", "",
             "| run | " + " | ".join(f"{s} success" for s in splits) + " |", "|---" * (1 + len(splits)) + "|"]
    for name, by_split in cells.items():
        lines.append(f"| {name} | " + " | ".join(f"{b} / {c} (p {p:.2f})" for b, c, p in by_split.values()) + " |")
    return lines, cells


def experiment_tables(cfg: Config, rows: dict, by_type: dict, minutes: tuple, outcomes: dict = None) -> str:
    """Markdown tables in the paper's layout: our mean +- std beside the paper's 1.5B numbers, then each run
    paired with HPL by seed, and (given the runs' task outcomes) task by task. minutes = (this command, its runs
    as recorded)."""
    cols = score_columns(cfg.env)
    paper, pc = PAPER[cfg.compare], PAPER_COLUMNS[cfg.env]
    source = {"methods": "Table 1", "segmentation": "Table 1", "curriculum": "Table 2 (1 run)",
              "losses": "Figure 5 (7B, 1 run)", "phases": "Figure 4 (1 run)"}[cfg.compare]
    took = (f"{cfg.seeds} seed(s); its runs took {minutes[1]:.0f} min as their stage times recorded them; this "
            f"command {minutes[0]:.1f} min, finished runs reused")
    lines = [f"## {cfg.env}: --compare {cfg.compare} ({took})", "",
             "| run | " + " | ".join(f"{c} (ours)" for c in cols) + " | " +
             " | ".join(f"{c} (paper, {source})" for c in cols) + " |", "|---" * (1 + 2 * len(cols)) + "|"]
    suffix = settings_suffix(cfg)                                          # "eto-lr1e-05" stands by the paper's ETO
    for name, vals in rows.items():
        ref = paper.get(name.removesuffix(suffix))
        theirs = [ref[i] if ref and i < len(ref) and ref[i] is not None else None for i in pc] \
            if cfg.compare != "phases" else list(ref) if ref and cfg.env == "alfworld" else [None, None]
        lines.append(f"| {name} | " + " | ".join(mean_std([v[c] for v in vals]) for c in range(len(cols))) + " | " +
                     " | ".join("-" if x is None else f"{x:.2f}" for x in theirs) + " |")
    if by_type:
        types = task_types(by_type)
        lines += ["", "ALFWorld unseen success by task type (ours; Tables 6-7 / Figure 4 layout):", "",
                  "| run | " + " | ".join(types) + " |", "|---" * (1 + len(types)) + "|"]
        for name, per_seed in by_type.items():
            lines.append(f"| {name} | " + " | ".join(mean_std([d.get(t, 0.0) for d in per_seed]) for t in types) + " |")
    ref = reference_run(cfg, rows)
    if ref in rows and len(rows[ref]) > 1:
        lines += ["", f"Paired by seed: {ref} minus each run (per seed -> mean +- std, and on how many seeds "
                      f"{ref} is ahead):", "", "| run | " + " | ".join(cols) + " |", "|---" * (1 + len(cols)) + "|"]
        for name, diffs in paired_differences(rows, ref).items():
            cells = [paired_cell([d[c] for d in diffs]) for c in range(len(cols))]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + task_table_cells(cfg, outcomes or {})[0])


def plot_experiment(cfg: Config, rows: dict, by_type: dict, stem: str) -> None:
    """Bars in the style of Figures 4-5, when matplotlib is installed (it is optional): (a) each run's score per
    split, mean and std over seeds; (b) with task types (ALFWorld), unseen success by type, one bar per run, as
    Figure 4(b) shows each type at the end of each phase."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no PNG figure (the markdown table has the numbers)")
        return
    cols, names = score_columns(cfg.env), list(rows)
    width = 1.4 + 1.1 * len(names)
    types = task_types(by_type)
    fig, axes = plt.subplots(1, 2 if types else 1, figsize=(width + (7.0 if types else 0), 3.2), squeeze=False,
                             gridspec_kw={"width_ratios": [width, 7.0] if types else [1]})
    ax = axes[0][0]
    for c, col in enumerate(cols):
        means = [np.mean([v[c] for v in rows[n]]) for n in names]
        stds = [np.std([v[c] for v in rows[n]]) for n in names]
        ax.bar(np.arange(len(names)) + (c - 0.5) * 0.4, means, 0.4, yerr=stds, label=col)
    ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("%")
    ax.set_title(("(a) " if types else "") + f"{cfg.env}: {cfg.compare}", fontsize=9)
    ax.legend(fontsize=7)
    if types:
        ax, w = axes[0][1], 0.8 / len(by_type)
        for i, (name, per_seed) in enumerate(by_type.items()):
            means = [np.mean([d.get(t, 0.0) for d in per_seed]) for t in types]
            ax.bar(np.arange(len(types)) + (i - (len(by_type) - 1) / 2) * w, means, w, label=name)
        ax.set_xticks(np.arange(len(types)), types, fontsize=7)
        ax.set_title("(b) unseen success by task type, mean over seeds", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"hpl.py: error: {e}")
