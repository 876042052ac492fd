"""envs.py: offline ALFWorld, WebShop and InterCode-SQL for HPL, in pure Python.

HPL (Gao et al., arXiv 2510.03253) is evaluated on ALFWorld, WebShop and InterCode-SQL. None of them installs
on a laptop without large downloads (ALFWorld's games from GitHub releases, WebShop's catalogue from Google
Drive plus Java and a Lucene index, InterCode through a MySQL Docker container). This file holds three
procedurally generated stand-ins that speak exactly like the real benchmarks (the same observation strings,
action grammars and reward formulas), each with a scripted expert, behind one small contract:

    env = envs.make("alfworld", split="unseen", seed=0)   # alfworld | webshop | intercode_sql
    len(env)                                              # tasks in this split
    obs = env.reset(i)                                    # task i -> first observation (task text included)
    obs, reward, done, info = env.step(action)            # any string; never raises; info["won"]
    env.expert(i)                                         # [(thought, action, subgoal), ...]
    env.instruction                                       # the system instruction ETO/IPR give the agent
    env.parse(llm_output)                                 # "Thought: ...\\nAction: ..." -> action | None
    env.clone()                                           # independent copy of the current state

They are lightweight simulators, not the real benchmarks; see README.md for what differs.
Play one yourself:  python envs.py --env alfworld --play      (type `hint` for the expert's next move)
"""
from __future__ import annotations

import copy
import difflib
import functools
import json
import math
import os
import random
import re
import sqlite3
import string
import time
import zlib
from collections import Counter
from typing import Dict, NamedTuple

# ---------------------------------------------------------------------------------------------------------
# 0. The contract shared by the three environments and the agent-facing wrapper (ETO/IPR's eval_agent/envs)
# ---------------------------------------------------------------------------------------------------------

# The system instructions ETO/IPR (and HPL, App. I) give the agent, verbatim, typos included.
INSTRUCTIONS = {
    "alfworld": (
        "Interact with a household to solve a task. Imagine you are an intelligent agent in a household "
        "environment and your target is to perform actions to complete the task goal. At the beginning of your "
        "interactions, you will be given the detailed description of the current environment and your goal to "
        "accomplish. \nFor each of your turn, you will be given the observation of the last turn. You should "
        "first think about the current condition and plan for your future actions, and then output your action "
        "in this turn. Your output must strictly follow this format:\"Thought: your thoughts.\\nAction: your next "
        "action\".\n\nThe available actions are:\n1. go to {recep}\n2. task {obj} from {recep}\n3. put {obj} in/on "
        "{recep}\n4. open {recep}\n5. close {recep}\n6. toggle {obj} {recep}\n7. clean {obj} with {recep}\n8. heat "
        "{obj} with {recep}\n9. cool {obj} with {recep}\nwhere {obj} and {recep} correspond to objects and "
        "receptacles.\nAfter your each turn, the environment will give you immediate feedback based on which you "
        "plan your next few steps. if the envrionment output \"Nothing happened\", that means the previous action "
        "is invalid and you should try more options.\n\nYour response should use the following format:\n\n"
        "Thought: <your thoughts>\nAction: <your next action>"
    ),
    "webshop": (
        "You are web shopping.\nI will give you instructions about what to do.\nYou have to follow the "
        "instructions.\nEvery round I will give you an observation and a list of available actions, you have to "
        "respond an action based on the state and instruction.\nYou can use search action if search is "
        "available.\nYou can click one of the buttons in clickables.\nAn action should be of the following "
        "structure:\nsearch[keywords]\nclick[value]\nIf the action is not valid, perform nothing.\nKeywords in "
        "search are up to you, but the value in click must be a value in the list of available actions.\n"
        "Remember that your keywords in search should be carefully designed.\nYour response should use the "
        "following format:\n\nThought: I think ...\nAction: click[something]"
    ),
    "intercode_sql": (
        "You are a helpful assistant assigned with the task of problem-solving. To achieve this, you will "
        "interact with a MySQL Database system using SQL queries to answer a question.\nAt each turn, you should "
        "first provide your step-by-step thinking for solving the task. Your thought process should start with "
        "\"Thought: \", for example: Thought: I should write a SQL query that gets the average GNP and total "
        "population from nations whose government is US territory.\nAfter that, you have two options:\n1) "
        "Interact with a mysql programming environment and receive the corresponding output. Your code should "
        "start with \"Action: \" and should be surrounded with ```sql ``` tag, for example: Action: \\n```sql\\n"
        "SELECT AVG(GNP), SUM(population) FROM nations WHERE government = 'US Territory'\\n```\n2) Directly submit "
        "the result, for example: Action: submit.\nYou should use this format: \"Thought: your thought\\nAction: "
        "\\n```sql\\n<the mysql command>\\n```\". You will receive the corresponding output for your sql command."
        "\nYour output should contain only one \"Action\" part.\nThe \"Action\" part should be executed with a mysql "
        "interpreter or propose an answer. Any natural language in it should be commented out.\nThe SQL query and "
        "submit parts can not appear in your output simutaneously."
    ),
}


def stable_rng(*parts) -> random.Random:
    """A random.Random seeded from its parts; seeding from a string is stable across runs and machines."""
    return random.Random("/".join(str(p) for p in parts))


class TextEnv:
    """Base class: step counting, the step limit, the agent-facing wrapper and the expert loop.

    A subclass implements `__len__`, `_reset(i) -> obs`, `_step(action) -> (obs, reward, done, info)`,
    `expert_step() -> (thought, action, subgoal) | None` (the expert's next move from the *current* state),
    `task_type(i)` and, where a deep copy will not do, `clone()`.
    """
    name = "base"
    obs_prefix = "Observation: "                    # how ETO/IPR show an observation in the chat history
    invalid_format = "Observation: Error Input. Your input must contains 'Action: '"
    action_pattern = re.compile(r"Action:\s?(.*)", re.DOTALL)   # ETO/IPR's parse rule (first match)
    default_max_steps = 10

    def __init__(self, split: str = "train", seed: int = 0, max_steps: int | None = None):
        self.split, self.seed = split, seed
        self.max_steps = max_steps or self.default_max_steps
        self.instruction = INSTRUCTIONS.get(self.name, "")
        self.task_id, self.t, self.done, self.won, self.reward, self.obs = None, 0, True, False, 0.0, ""

    # -- the environment contract -------------------------------------------------------------------------
    def reset(self, i: int) -> str:
        """Start task i; returns the first observation (the task text is part of it)."""
        self.task_id, self.t, self.done, self.won, self.reward = i, 0, False, False, 0.0
        self.obs = self._reset(i)
        return self.obs

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        """One action (any string). Every call costs a step; the episode ends at a terminal action or max_steps."""
        if self.done:
            return self.obs, 0.0, True, self._info(terminal=True)
        self.t += 1
        obs, reward, done, info = self._step(str(action))
        if self.t >= self.max_steps and not done:
            done, info["truncated"] = True, True
        self.obs, self.done, self.reward = obs, done, float(reward)
        self.won = bool(info.get("won", False))
        info.update(self._info(terminal=done))
        return obs, float(reward), done, info

    def _info(self, terminal: bool) -> dict:
        return {"won": self.won, "steps": self.t, "done": terminal}

    def clone(self) -> "TextEnv":
        """An independent copy of the current state (for branching and Monte-Carlo rollouts)."""
        return copy.deepcopy(self)

    def expert(self, i: int) -> list[tuple[str, str, str]]:
        """The scripted expert's trajectory on task i: [(thought, action, subgoal), ...], played on a copy."""
        env, trajectory = self.clone(), []
        env.reset(i)
        while not env.done:
            move = env.expert_step()
            if move is None:
                break
            trajectory.append(move)
            env.step(move[1])
        return trajectory

    # -- the agent-facing wrapper (what ETO/IPR's eval_agent/envs do around the benchmark) ------------------
    def render_action(self, action: str) -> str:
        """The text after 'Action: ' that makes `parse` return `action`."""
        return action

    def assistant_turn(self, thought: str, action: str) -> str:
        """An agent turn in ReAct format, as in ETO/IPR's expert data."""
        return f"Thought: {thought}\nAction: {self.render_action(action)}"

    def parse(self, llm_output: str) -> str | None:
        """ETO/IPR's rule: the text after the first 'Action:' (stripped); None if there is none."""
        m = self.action_pattern.search(llm_output.strip())
        return m.group(1).strip() if m else None

    def act(self, llm_output: str) -> tuple[str, float, bool, dict]:
        """Parse an LLM turn and step: returns the next user turn (`Observation: ...`), reward, done, info.
        An output without an action gets the benchmark wrapper's invalid-format message and still costs a step."""
        action = self.parse(llm_output)
        if action is None and not self.done:
            self.t += 1
            self.done = self.t >= self.max_steps
            info = self._info(terminal=self.done)
            info["invalid_format"] = True
            return self.invalid_format, 0.0, self.done, info
        obs, reward, done, info = self.step(action or "")
        return self.obs_prefix + obs, reward, done, info


ENVS: dict[str, type] = {}     # name -> class; each section below registers its environment


def make(name: str, split: str = "train", seed: int = 0, **kw) -> TextEnv:
    """Build an environment split. Same (name, split, seed, kw) -> the same tasks."""
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r}; choose one of {', '.join(sorted(ENVS))}")
    return ENVS[name](split=split, seed=seed, **kw)


# ---------------------------------------------------------------------------------------------------------
# 1. ALFWorld (ENVS.md section 1): household rooms in the TextWorld text game, with the handcoded expert
# ---------------------------------------------------------------------------------------------------------

# 1a. The scene tables of alfworld/gen/constants.py, lowercased as the text game writes them. The sliced
#     classes (AppleSliced, ...) are left out because ALFWorld skips every sliced game (ENVS.md 1.1).
def _classes(text: str) -> frozenset:
    return frozenset(text.split())


# VAL_RECEPTACLE_OBJECTS: what each receptacle class can hold; `put` anywhere else is "Nothing happens." (1.10)
CAN_HOLD = {recep: _classes(objs) for recep, objs in {
    "armchair": "basketball book box cellphone cloth creditcard keychain laptop newspaper pillow remotecontrol",
    "bathtubbasin": "cloth dishsponge handtowel soapbar",
    "bed": "baseballbat basketball book cellphone laptop newspaper pillow tennisracket",
    "bowl": "apple butterknife candle cd cellphone cloth creditcard dishsponge egg fork keychain knife ladle lettuce "
            "mug papertowel pen pencil potato remotecontrol spatula spoon tomato watch",
    "box": "alarmclock book candle cd cellphone cloth creditcard dishsponge glassbottle keychain mug papertowel pen "
           "pencil remotecontrol statue tissuebox vase watch",
    "cabinet": "book bowl box candle cd cloth cup dishsponge glassbottle handtowel kettle ladle mug newspaper pan "
               "peppershaker plate plunger pot saltshaker soapbar soapbottle spraybottle tissuebox toiletpaper "
               "toiletpaperroll vase wateringcan winebottle",
    "cart": "candle cloth dishsponge handtowel mug papertowel plunger soapbar soapbottle spraybottle statue tissuebox "
            "toiletpaper toiletpaperroll vase",
    "coffeemachine": "mug",
    "coffeetable": "alarmclock apple baseballbat basketball book bowl box bread butterknife candle cd cellphone cloth "
                   "creditcard cup dishsponge egg fork glassbottle handtowel kettle keychain knife ladle laptop "
                   "lettuce mug newspaper pan papertowel pen pencil peppershaker plate pot potato remotecontrol "
                   "saltshaker soapbar soapbottle spatula spoon spraybottle statue tennisracket tissuebox toiletpaper "
                   "toiletpaperroll tomato vase watch wateringcan winebottle",
    "cup": "butterknife fork spoon",
    "desk": "alarmclock basketball book bowl box candle cd cellphone cloth creditcard cup glassbottle keychain laptop "
            "mug newspaper pen pencil plate remotecontrol soapbottle spraybottle statue tennisracket tissuebox "
            "toiletpaper toiletpaperroll vase watch wateringcan winebottle",
    "drawer": "book butterknife candle cd cellphone cloth creditcard dishsponge fork handtowel keychain knife ladle "
              "newspaper pen pencil peppershaker remotecontrol saltshaker soapbar soapbottle spatula spoon spraybottle "
              "tissuebox toiletpaper toiletpaperroll watch wateringcan",
    "dresser": "alarmclock basketball book bowl box candle cd cellphone cloth creditcard cup glassbottle keychain "
               "laptop mug newspaper pen pencil plate remotecontrol spraybottle statue tennisracket tissuebox "
               "toiletpaper toiletpaperroll vase watch wateringcan winebottle",
    "fridge": "apple bowl bread cup egg glassbottle lettuce mug pan plate pot potato tomato winebottle",
    "garbagecan": "apple bread cd cloth dishsponge egg handtowel lettuce newspaper papertowel pen pencil potato "
                  "soapbar soapbottle spraybottle tissuebox toiletpaper toiletpaperroll tomato winebottle",
    "handtowelholder": "handtowel",
    "laundryhamper": "cloth",
    "microwave": "apple bowl bread cup egg glassbottle mug plate potato tomato",
    "mug": "butterknife fork keychain knife pen pencil spoon watch",
    "ottoman": "basketball book box cellphone cloth creditcard keychain laptop newspaper pillow remotecontrol",
    "pan": "apple butterknife dishsponge egg fork knife ladle lettuce potato spatula spoon tomato",
    "plate": "alarmclock apple book butterknife candle cd cellphone cloth creditcard dishsponge egg fork glassbottle "
             "keychain knife ladle lettuce mug papertowel pen pencil potato spatula spoon tissuebox tomato watch",
    "pot": "apple butterknife dishsponge egg fork knife ladle lettuce potato spatula spoon tomato",
    "safe": "cd cellphone creditcard keychain statue vase watch",
    "shelf": "alarmclock book bowl box candle cd cellphone cloth creditcard cup dishsponge glassbottle handtowel "
             "kettle keychain mug newspaper papertowel pen pencil peppershaker plate pot remotecontrol saltshaker "
             "soapbar soapbottle spraybottle statue tissuebox toiletpaper toiletpaperroll vase watch wateringcan "
             "winebottle",
    "sinkbasin": "apple bowl butterknife cloth cup dishsponge egg fork glassbottle handtowel kettle knife ladle "
                 "lettuce mug pan plate pot potato soapbar spatula spoon tomato",
    "sofa": "basketball book box cellphone cloth creditcard keychain laptop newspaper pillow remotecontrol",
    "stoveburner": "kettle pan pot",
    "toaster": "",                                   # only BreadSliced, and sliced games are skipped
    "toilet": "candle cloth dishsponge handtowel newspaper papertowel soapbar soapbottle spraybottle tissuebox "
              "toiletpaper toiletpaperroll",
    "toiletpaperhanger": "toiletpaper toiletpaperroll",
    "towelholder": "towel",
    "tvstand": "tissuebox",
}.items()}
CAN_HOLD["diningtable"] = CAN_HOLD["sidetable"] = CAN_HOLD["countertop"] = CAN_HOLD["coffeetable"]  # equal rows
# VAL_ACTION_OBJECTS, OPENABLE_CLASS_LIST, MOVABLE_RECEPTACLES and AI2-THOR's pickupable classes
HEATABLE = _classes("apple bread cup egg mug plate potato tomato")
COOLABLE = _classes("apple bowl bread cup egg lettuce mug pan plate pot potato tomato winebottle")
CLEANABLE = _classes("apple bowl butterknife cloth cup dishsponge egg fork kettle knife ladle lettuce mug pan "
                     "plate pot potato soapbar spatula spoon tomato")
TOGGLEABLE = _classes("desklamp floorlamp")
OPENABLE = _classes("box cabinet drawer fridge microwave safe")
RECEPTACLE_OBJECTS = _classes("bowl box cup mug pan plate pot")   # `examine` on one: "This is a normal mug 1. ..."
PICKUPABLE = _classes("alarmclock apple baseballbat basketball book boots bowl box bread butterknife cd candle "
                      "cellphone cloth creditcard cup dishsponge egg fork glassbottle handtowel kettle keychain knife "
                      "ladle laptop lettuce mug newspaper pan papertowel papertowelroll pen pencil peppershaker pillow "
                      "plate plunger pot potato remotecontrol saltshaker scrubbrush soapbar soapbottle spatula spoon "
                      "spraybottle statue teddybear tennisracket tissuebox toiletpaper toiletpaperroll tomato towel "
                      "vase watch wateringcan winebottle")

# heat/cool/clean: the appliance class (alfred.pddl HeatObject/CoolObject/CleanObject), what it can treat, the state
APPLIANCE = {"heat": "microwave", "cool": "fridge", "clean": "sinkbasin"}
TREATABLE = {"heat": HEATABLE, "cool": COOLABLE, "clean": CLEANABLE}
STATE_WORD = {"heat": "hot", "cool": "cool", "clean": "clean"}

# 1b. Where things usually are (our prior, most likely first): objects are placed by it and the expert searches by
#     it, as the handcoded expert searches the receptacles the compatibility table allows (ENVS.md 1.6).
PLACE_PRIOR = {obj: tuple(receps.split()) for obj, receps in {
    "alarmclock": "desk sidetable dresser shelf",
    "apple": "countertop diningtable fridge sinkbasin garbagecan",
    "book": "bed desk sidetable shelf dresser drawer",
    "bowl": "countertop diningtable cabinet shelf fridge desk dresser",
    "bread": "countertop diningtable fridge",
    "butterknife": "countertop diningtable drawer",
    "candle": "countertop toilet cabinet shelf",
    "cd": "drawer desk sidetable shelf safe",
    "cellphone": "bed desk sidetable dresser drawer sofa",
    "cloth": "countertop bathtubbasin cabinet sinkbasin toilet",
    "creditcard": "desk dresser sidetable drawer coffeetable shelf",
    "cup": "countertop diningtable cabinet sinkbasin fridge",
    "desklamp": "desk sidetable dresser",
    "dishsponge": "sinkbasin countertop cabinet drawer",
    "egg": "fridge countertop diningtable sinkbasin",
    "fork": "countertop diningtable drawer sinkbasin",
    "glassbottle": "countertop diningtable cabinet fridge",
    "handtowel": "handtowelholder countertop cabinet",
    "kettle": "stoveburner countertop cabinet",
    "keychain": "dresser sidetable desk drawer coffeetable shelf",
    "knife": "countertop diningtable drawer sinkbasin",
    "ladle": "countertop diningtable drawer sinkbasin",
    "laptop": "bed desk sidetable sofa dresser",
    "lettuce": "fridge countertop diningtable sinkbasin",
    "mug": "countertop coffeemachine cabinet diningtable sinkbasin desk shelf",
    "newspaper": "coffeetable sofa sidetable armchair diningtable",
    "pan": "stoveburner countertop cabinet sinkbasin",
    "pen": "desk sidetable drawer shelf dresser",
    "pencil": "desk sidetable drawer shelf dresser",
    "peppershaker": "countertop cabinet diningtable drawer shelf",
    "pillow": "bed sofa armchair",
    "plate": "countertop diningtable cabinet sinkbasin fridge",
    "pot": "stoveburner countertop cabinet sinkbasin",
    "potato": "fridge countertop diningtable sinkbasin garbagecan",
    "remotecontrol": "coffeetable sofa armchair sidetable dresser",
    "saltshaker": "countertop cabinet diningtable drawer shelf",
    "soapbar": "toilet countertop sinkbasin bathtubbasin cabinet",
    "soapbottle": "countertop toilet cabinet shelf garbagecan",
    "spatula": "countertop diningtable drawer sinkbasin",
    "spoon": "countertop diningtable drawer sinkbasin",
    "spraybottle": "toilet cabinet countertop garbagecan",
    "statue": "shelf coffeetable sidetable dresser diningtable",
    "tissuebox": "toilet coffeetable countertop sidetable cabinet shelf",
    "toiletpaper": "toilet countertop cabinet toiletpaperhanger shelf",
    "tomato": "countertop diningtable fridge sinkbasin",
    "vase": "shelf coffeetable sidetable diningtable",
    "watch": "dresser sidetable desk shelf safe coffeetable",
    "winebottle": "countertop diningtable fridge cabinet",
}.items()}

# 1c. Rooms (ALFRED's kitchens, living rooms, bedrooms, bathrooms): receptacle counts "class lo-hi", per scene size,
#     and the object classes found there. "small" rooms (6-10 receptacles, 8 object classes) serve a tiny model.
ROOMS = {
    "kitchen": {
        "full": "cabinet 4-13, coffeemachine 1, countertop 1-3, diningtable 0-1, drawer 1-6, fridge 1, garbagecan 1, "
                "microwave 1, shelf 0-3, sinkbasin 1, stoveburner 4, toaster 1",
        "small": "cabinet 1-3, countertop 1-2, diningtable 0-1, drawer 0-1, fridge 1, garbagecan 1, microwave 1, "
                 "sinkbasin 1",
        "objects": "apple bowl bread butterknife cup dishsponge egg fork glassbottle kettle knife ladle lettuce mug "
                   "pan peppershaker plate pot potato saltshaker soapbottle spatula spoon tomato winebottle",
        "small_objects": "apple cup egg knife mug plate potato tomato"},
    "bathroom": {
        "full": "bathtubbasin 0-1, cabinet 1-4, countertop 1, drawer 0-4, dresser 0-1, garbagecan 1, "
                "handtowelholder 1-2, shelf 0-3, sinkbasin 1-2, toilet 1, toiletpaperhanger 1, towelholder 1-2",
        "small": "cabinet 1-2, countertop 1, drawer 0-1, garbagecan 1, shelf 0-1, sinkbasin 1, toilet 1, "
                 "toiletpaperhanger 1, towelholder 0-1",
        "objects": "candle cloth dishsponge handtowel soapbar soapbottle spraybottle tissuebox toiletpaper",
        "small_objects": "candle cloth dishsponge soapbar soapbottle spraybottle tissuebox toiletpaper"},
    "bedroom": {
        "full": "armchair 0-1, bed 1, desk 0-1, drawer 2-10, dresser 0-1, garbagecan 1, laundryhamper 0-1, safe 0-1, "
                "shelf 0-6, sidetable 1-2",
        "small": "bed 1, desk 1, drawer 1-2, dresser 0-1, garbagecan 1, safe 0-1, shelf 1-2, sidetable 1-2",
        "objects": "alarmclock book bowl cd cellphone creditcard keychain laptop mug pen pencil pillow watch",
        "small_objects": "alarmclock book cd cellphone creditcard keychain pen pencil"},
    "livingroom": {
        "full": "armchair 1-2, cabinet 0-4, coffeetable 1, diningtable 0-1, drawer 0-4, dresser 0-1, garbagecan 1, "
                "ottoman 0-1, safe 0-1, shelf 0-6, sidetable 1-2, sofa 1, tvstand 0-1",
        "small": "armchair 0-1, coffeetable 1, drawer 1-2, dresser 0-1, garbagecan 1, shelf 0-2, sidetable 1-2, sofa 1",
        "objects": "book cellphone creditcard keychain laptop newspaper pillow remotecontrol statue tissuebox vase "
                   "watch",
        "small_objects": "creditcard keychain newspaper remotecontrol statue tissuebox vase watch"},
}
SCENE_SIZES = {"full": (10, 30), "small": (6, 10)}           # receptacles per room
SCENE_DISTRACTORS = {"full": (10, 25), "small": (3, 6)}      # objects besides the task's own
LAYOUTS_PER_ROOM, HELD_OUT_LAYOUTS = 30, 3                   # layouts 0-2 of each room are unseen-only
TASK_ROOMS = {"pick": ("kitchen", "bathroom", "bedroom", "livingroom"), "clean": ("kitchen", "bathroom"),
              "heat": ("kitchen",), "cool": ("kitchen",), "examine": ("bedroom", "livingroom"),
              "pick2": ("kitchen", "bathroom", "bedroom", "livingroom")}

# 1d. Tasks: goal templates (alfworld/gen/goal_library.py, ENVS.md 1.1) and the real split sizes per type
ALFWORLD_GOALS = {
    "pick": ("put a {obj} in {recep}", "put some {obj} on {recep}"),
    "clean": ("put a clean {obj} in {recep}", "clean some {obj} and put it in {recep}"),
    "heat": ("put a hot {obj} in {recep}", "heat some {obj} and put it in {recep}"),
    "cool": ("put a cool {obj} in {recep}", "cool some {obj} and put it in {recep}"),
    "examine": ("look at {obj} under the {recep}", "examine the {obj} with the {recep}"),
    "pick2": ("put two {obj} in {recep}", "find two {obj} and put them in {recep}"),
}
# the real games also say "find some apple and put it in sidetable" (ReAct's put_1 prompt): parsed, not generated
_GOAL_PATTERNS = [(kind, re.compile(template.format(obj=r"(\w+)", recep=r"(\w+)")))
                  for kind, templates in {**ALFWORLD_GOALS, "pick": ALFWORLD_GOALS["pick"] + (
                      "find some {obj} and put it in {recep}",)}.items() for template in templates]
ALFWORLD_SPLITS = {   # tasks per type in ALFWorld json_2.1.1 train, valid_seen and valid_unseen
    "train": {"pick": 790, "clean": 650, "heat": 459, "cool": 533, "examine": 308, "pick2": 813},
    "seen": {"pick": 35, "clean": 27, "heat": 16, "cool": 25, "examine": 13, "pick2": 24},
    "unseen": {"pick": 24, "clean": 31, "heat": 23, "cool": 21, "examine": 18, "pick2": 17},
}
NOTHING_HAPPENS = "Nothing happens."


@functools.lru_cache(maxsize=None)
def _listing_key(name: str) -> tuple:
    """Listing order of the text game: by type name, numbers descending within a type (ENVS.md 1.3)."""
    kind, _, num = name.rpartition(" ")
    return kind, -int(num)


@functools.lru_cache(maxsize=None)
def _class_of(name: str) -> str:
    return name.rpartition(" ")[0]


def _see_list(items) -> str:
    """`a X 2, a X 1, and a Y 1`: article always "a", `, and ` even for two items, `nothing` when empty."""
    if not items:
        return "nothing"
    if len(items) == 1:
        return "a " + items[0]
    return "a " + ", a ".join(items[:-1]) + ", and a " + items[-1]


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def heldout_pair(obj: str, recep: str) -> bool:
    """About 1 in 6 (object class, target class) pairs appear only in `unseen` goals."""
    return zlib.crc32(f"{obj}|{recep}".encode()) % 6 == 0


class _RoomLayout:
    """A room's receptacles (static, shared by every task in it): names in listing order, spots, which can open."""

    def __init__(self, key, names, openable=(), same_place=(), lamp_at=None):
        self.key, self.lamp_at = key, lamp_at
        self.names = tuple(sorted(names, key=_listing_key))
        self.cls = {r: _class_of(r) for r in self.names}
        self.openable = frozenset(openable)
        self.spot = {r: i + 1 for i, r in enumerate(self.names)}       # spot 0 is the middle of the room
        for group in same_place:                                          # receptacles standing at one spot
            for r in group:
                self.spot[r] = self.spot[group[0]]
        self.at_spot = {}
        for r in self.names:
            self.at_spot.setdefault(self.spot[r], []).append(r)
        self.listing = _see_list(self.names)
        self._group = {}
        for r in reversed(self.names):
            self._group[self.cls[r]] = self._group.get(self.cls[r], ()) + (r,)
        self._order, self._holders = {}, {}

    def by_class(self, kind: str) -> tuple:
        """Receptacles of one class, number ascending (`cabinet 1` first)."""
        return self._group.get(kind, ())

    def holders(self, obj: str) -> tuple:
        """The receptacles that can hold an object class, and the prior's classes among them (for placing)."""
        if obj not in self._holders:
            options = [r for r in self.names if obj in CAN_HOLD.get(self.cls[r], ())]
            present = {self.cls[r] for r in options}
            self._holders[obj] = options, [c for c in PLACE_PRIOR.get(obj, ()) if c in present]
        return self._holders[obj]

    def search_order(self, obj: str) -> tuple:
        """Where to look for an object class: the prior's classes first, then the other classes that can hold it
        (the handcoded expert's compatibility list), then everything else; number ascending within a class."""
        order = self._order.get(obj)
        if order is None:
            prior = PLACE_PRIOR.get(obj, ())

            def rank(r):
                c = self.cls[r]
                first = prior.index(c) if c in prior else len(prior) + (obj not in CAN_HOLD.get(c, ()))
                return first, c, -_listing_key(r)[1]
            order = self._order[obj] = tuple(sorted(self.names, key=rank))
        return order


class _HouseholdTask:
    """One game: a layout, the initial contents of every receptacle and the goal. Static, shared by clones."""

    def __init__(self, layout, contents, kind, obj, target, text):
        self.layout, self.kind, self.obj, self.target, self.text = layout, kind, obj, target, text
        self.contents = {r: tuple(sorted(contents.get(r, ()), key=_listing_key)) for r in layout.names}
        self.targets = layout.by_class(target)          # the receptacles the goal names (none for a lamp)
        # search for the task's object; for pick tasks the target receptacles last (it cannot be there yet)
        order = layout.search_order(obj)
        last = self.targets if kind in ("pick", "pick2") else ()
        self.obj_order = tuple(r for r in order if r not in last) + tuple(last)
        self.obj_rank = {r: i for i, r in enumerate(self.obj_order)}
        self.lamp_order = layout.search_order(target) if kind == "examine" else ()
        self.lamp_rank = {r: i for i, r in enumerate(self.lamp_order)}
        appliances = layout.by_class(APPLIANCE.get(kind, ""))
        self.appliance = appliances[0] if appliances else None
        # "Objects of the task's object class that start in a fridge are already cool" (ENVS.md 1.10)
        self.cool = frozenset(o for r in layout.names if layout.cls[r] == "fridge"
                              for o in self.contents[r] if _class_of(o) == obj)
        self.first_obs = (f"You are in the middle of a room. Looking quickly around you, you see {layout.listing}.\n"
                          f"Your task is to: {text}.")


def parse_goal(text: str) -> tuple:
    """`put a hot apple in fridge` -> ("heat", "apple", "fridge"); the sentence after `Your task is to: `."""
    text = text.strip().rstrip(".").strip()
    for kind, pattern in _GOAL_PATTERNS:
        m = pattern.fullmatch(text)
        if m:
            return kind, m.group(1), m.group(2)
    raise ValueError(f"not an ALFWorld goal sentence: {text!r}")


# 1e. Procedural rooms and tasks
_ROOM_LAYOUTS = {}


def room_layout(scene: str, room: str, k: int) -> _RoomLayout:
    """Layout k of a room kind (fixed for all seeds, so the held-out ones stay held out): receptacle counts drawn
    from the room's ranges, most cabinets/drawers openable, some cabinets sharing a spot, a desk lamp in
    bedrooms and living rooms."""
    key = (scene, room, k)
    if key not in _ROOM_LAYOUTS:
        rng = stable_rng("alfworld-layout", scene, room, k)
        lo, hi = SCENE_SIZES[scene]
        spec = [(c, [int(x) for x in n.split("-")]) for c, n in map(str.split, ROOMS[room][scene].split(", "))]
        while True:
            counts = [(c, rng.randint(n[0], n[-1])) for c, n in spec]
            if lo <= sum(n for _, n in counts) <= hi:
                break
        names = [f"{c} {i}" for c, n in counts for i in range(1, n + 1)]
        openable = [r for r in names if _class_of(r) in OPENABLE            # ENVS.md 1.10: per receptacle
                    and (_class_of(r) not in ("cabinet", "drawer") or rng.random() < 0.8)]
        cabinets = [f"cabinet {i}" for i in range(1, dict(counts).get("cabinet", 0) + 1)]
        same_place = []
        if scene == "full" and len(cabinets) >= 2 and rng.random() < 0.3:     # ENVS.md 1.10: shared spots
            i = rng.randrange(len(cabinets) - 1)
            same_place.append((cabinets[i], cabinets[i + 1]))
        lamp_spots = [r for r in names if _class_of(r) in ("desk", "sidetable", "dresser")]
        lamp_at = rng.choice(lamp_spots) if room in ("bedroom", "livingroom") else None
        _ROOM_LAYOUTS[key] = _RoomLayout(f"{scene}/{room}/{k}", names, openable, same_place, lamp_at)
    return _ROOM_LAYOUTS[key]


_PLACE_WEIGHTS = [1 / (i + 1) for i in range(10)]


def _place_object(rng, layout, obj, forbidden=()):
    """A receptacle for one object: 80% by the prior (earlier classes likelier), else any that can hold it."""
    options, ranked = layout.holders(obj)
    if forbidden:
        options = [r for r in options if layout.cls[r] not in forbidden]
        ranked = [c for c in ranked if c not in forbidden]
    if not options:
        return None
    if ranked and rng.random() < 0.8:
        kind = rng.choices(ranked, weights=_PLACE_WEIGHTS[:len(ranked)])[0]
        return rng.choice(layout.by_class(kind))
    return rng.choice(options)


def household_task(rng, kind: str, scene: str, unseen: bool):
    """A random task of one type, or None when the drawn room cannot host it."""
    room = rng.choice(TASK_ROOMS[kind])
    k = rng.randrange(HELD_OUT_LAYOUTS) if unseen else rng.randrange(HELD_OUT_LAYOUTS, LAYOUTS_PER_ROOM)
    layout = room_layout(scene, room, k)
    vocab = ROOMS[room]["small_objects" if scene == "small" else "objects"].split()
    obj = rng.choice([o for o in vocab if kind not in TREATABLE or o in TREATABLE[kind]])
    if kind == "examine":
        targets = ["desklamp"]
    else:
        targets = sorted({c for c in layout.cls.values() if obj in CAN_HOLD.get(c, ())} - {APPLIANCE.get(kind)})
    held_out = [t for t in targets if heldout_pair(obj, t)]
    if not unseen:
        targets = [t for t in targets if t not in held_out]
    elif held_out and rng.random() < 0.5:
        targets = held_out
    if not targets:
        return None
    target = rng.choice(targets)
    # the task's objects: for pick tasks never already in a target receptacle; for `cool` never in the fridge
    forbidden = {"pick": {target}, "pick2": {target}, "cool": {"fridge"}}.get(kind, ())
    lo = 2 if kind == "pick2" else 1
    n_obj = rng.randint(lo, lo + (2 if scene == "full" else 1))
    contents = {r: [] for r in layout.names}
    if layout.lamp_at:
        contents[layout.lamp_at].append("desklamp 1")
    for i in range(1, n_obj + 1):
        r = _place_object(rng, layout, obj, forbidden)
        if r is None:
            return None
        contents[r].append(f"{obj} {i}")
    others, counts = [o for o in vocab if o != obj], {}
    for _ in range(rng.randint(*SCENE_DISTRACTORS[scene])):
        other = rng.choice(others)
        r = _place_object(rng, layout, other)
        if r is not None:
            counts[other] = counts.get(other, 0) + 1
            contents[r].append(f"{other} {counts[other]}")
    text = rng.choice(ALFWORLD_GOALS[kind]).format(obj=obj, recep=target)
    return _HouseholdTask(layout, contents, kind, obj, target, text)


def in_seen_bucket(task: _HouseholdTask) -> bool:
    """1 task in 8 (by a hash of scene + goal) may only be a `seen` task, the other 7 only `train` tasks."""
    scene = ";".join(f"{r}:{','.join(objs)}" for r, objs in task.contents.items() if objs)
    return zlib.crc32(f"{task.layout.key}|{task.kind}|{task.obj}|{task.target}|{scene}".encode()) % 8 == 0


# 1f. The environment
class ALFWorld(TextEnv):
    """ALFWorld's text game (json_2.1.1 grammar, observations after ETO's process_ob) on generated rooms.

    Sample episode (reset: "You are in the middle of a room. Looking quickly around you, you see a cabinet 1,
    a countertop 2, a countertop 1, and a microwave 1.\\nYour task is to: heat some mug and put it in cabinet."):
        go to countertop 2             -> On the countertop 2, you see a mug 1, and a plate 1.        reward 0
        take mug 1 from countertop 2   -> You pick up the mug 1 from the countertop 2.                reward 0
        go to microwave 1              -> The microwave 1 is closed.                                  reward 0
        heat mug 1 with microwave 1    -> You heat the mug 1 using the microwave 1.                   reward 0
        go to cabinet 1, open cabinet 1, put mug 1 in/on cabinet 1 -> You put the mug 1 in/on the cabinet 1.  reward 1

    The expert labels its steps (consecutive equal labels form one action group):
        find(mug)        every go to / open / close / examine while looking for a mug (or going where one was seen)
        take(mug)        the take
        heat(mug)        going to the microwave and the heat (likewise cool(..): fridge, clean(..): sinkbasin)
        find(cabinet)    going to the target receptacle and opening it
        put(cabinet)     the put
        find(desklamp)   looking for the lamp (examine tasks);  use(desklamp): the use
    Holding something useless (an agent's mistake), it puts it back where it came from: find(<recep>), put(<recep>).
    """
    name = "alfworld"
    default_max_steps = 30          # HPL's ALFWorld step limit (ETO uses 40, IPR 20)

    def __init__(self, split="train", seed=0, max_steps=None, scene="full"):
        if split not in ALFWORLD_SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(ALFWORLD_SPLITS)}")
        if scene not in SCENE_SIZES:
            raise ValueError(f"unknown scene {scene!r}; choose one of {', '.join(SCENE_SIZES)}")
        super().__init__(split, seed, max_steps)
        self.scene = scene
        self.types = [kind for kind, n in ALFWORLD_SPLITS[split].items() for _ in range(n)]
        stable_rng(seed, split, "types").shuffle(self.types)
        self._tasks = {}            # task cache, filled lazily and shared by clones
        self.task = None

    @classmethod
    def from_layout(cls, receptacles: dict, task: str, closed=(), same_place=(), max_steps=None) -> "ALFWorld":
        """A hand-built scene with its single task at index 0: `receptacles` maps "cabinet 1" to its objects,
        `task` is the sentence after `Your task is to: `, `closed` names the openable receptacles (they start
        closed; every other receptacle reads like a table), `same_place` lists groups standing at one spot."""
        kind, obj, target = parse_goal(task)
        for name in [*receptacles, *(o for objs in receptacles.values() for o in objs)]:
            if not re.fullmatch(r"[a-z]+ \d+", name):
                raise ValueError(f"{name!r} is not a name like 'cabinet 1'")
        for r in [*closed, *(r for group in same_place for r in group)]:
            if r not in receptacles:
                raise ValueError(f"{r!r} is not one of the receptacles")
        layout = _RoomLayout("custom", receptacles, closed, [tuple(g) for g in same_place])
        env = cls.__new__(cls)
        TextEnv.__init__(env, "layout", 0, max_steps)
        env.scene, env.types, env.task = "custom", [kind], None
        env._tasks = {0: _HouseholdTask(layout, receptacles, kind, obj, target, task.strip().rstrip(".").strip())}
        return env

    def __len__(self):
        return len(self.types)

    def task_type(self, i):
        return self.types[i]

    # -- tasks ----------------------------------------------------------------------------------------------
    def get_task(self, i: int) -> _HouseholdTask:
        """Task i, generated on first use: the same (seed, split, scene, i) always gives the same task."""
        task = self._tasks.get(i)
        if task is None:
            task = self._tasks[i] = self._generate(i)
        return task

    def _generate(self, i):
        kind = self.types[i]
        for attempt in range(10_000):
            task = household_task(stable_rng(self.seed, self.split, self.scene, i, attempt), kind, self.scene,
                                 unseen=self.split == "unseen")
            if task is None or (self.split != "unseen" and in_seen_bucket(task) != (self.split == "seen")):
                continue
            if self._expert_solves(task):
                return task
        raise RuntimeError(f"no solvable {kind} task found for index {i}")

    def _expert_solves(self, task) -> bool:
        """Regenerate tasks the expert cannot win within the default step limit (30)."""
        sim = self.clone()
        sim._load(task)
        sim.obs, sim.t = task.first_obs, 0
        for _ in range(self.default_max_steps):
            move = sim._expert_move()
            if move is None:
                return False
            sim.obs, _, won, _ = sim._step(move[0])
            sim.t += 1
            if won:
                return True
        return False

    # -- state ------------------------------------------------------------------------------------------------
    def _load(self, task):
        self.task, self.layout = task, task.layout
        self.contents = dict(task.contents)       # receptacle -> objects in it (tuples, listing order)
        self.held, self.held_from, self.spot = None, None, 0
        self.opened, self.hot, self.cool, self.clean, self.toggled = set(), set(), set(task.cool), set(), set()
        self.memory = {}                          # the expert's memory: receptacle -> contents last seen there

    def clone(self):
        """A copy sharing the static task data; only positions, contents, flags and memory are copied."""
        twin = object.__new__(type(self))
        twin.__dict__ = self.__dict__.copy()
        if self.task is not None:
            twin.contents, twin.memory = dict(self.contents), dict(self.memory)
            twin.opened, twin.hot, twin.cool = set(self.opened), set(self.hot), set(self.cool)
            twin.clean, twin.toggled = set(self.clean), set(self.toggled)
        return twin

    def _reset(self, i):
        task = self.get_task(i)
        self._load(task)
        return task.first_obs

    # -- dynamics (alfred.pddl, ENVS.md 1.3, 1.4, 1.10) ---------------------------------------------------------
    def _step(self, action):
        obs = self._act(action.strip())           # commands are matched exactly after strip (textworld pddl.py)
        if obs is None:
            return NOTHING_HAPPENS, 0.0, False, {"won": False}
        won = self._won()
        return obs, float(won), won, {"won": won}

    def _here(self, r) -> bool:
        return self.spot != 0 and self.layout.spot.get(r) == self.spot

    def _act(self, a):
        """The observation for a valid command, None for anything not applicable."""
        if a == "look":
            if self.spot == 0:
                return "You are in the middle of a room. Looking quickly around you, you see nothing."
            names = self.layout.at_spot[self.spot]
            facing = names[0] if len(names) == 1 else ", ".join(names[:-1]) + ", and " + names[-1]
            return f"You are facing the {facing}. Next to it, you see nothing."
        if a == "inventory":
            return f"You are carrying: a {self.held}." if self.held else "You are not carrying anything."
        verb, _, rest = a.partition(" ")
        if verb == "go":
            r = rest[3:] if rest.startswith("to ") else None
            if r not in self.layout.spot or self._here(r):
                return None
            self.spot = self.layout.spot[r]
            return self._describe(r)
        if verb in ("open", "close"):
            if rest not in self.layout.openable or not self._here(rest) or (rest in self.opened) == (verb == "open"):
                return None
            if verb == "close":
                self.opened.discard(rest)
                return f"You close the {rest}."
            self.opened.add(rest)
            return f"You open the {rest}. " + self._describe(rest)
        if verb == "take":
            o, sep, r = rest.partition(" from ")
            if (not sep or self.held or not self._here(r) or o not in self.contents[r] or not self._visible(r)
                    or _class_of(o) not in PICKUPABLE):
                return None
            self.contents[r] = tuple(x for x in self.contents[r] if x != o)
            self.memory[r], self.held, self.held_from = self.contents[r], o, r
            return f"You pick up the {o} from the {r}."
        if verb == "put":
            o, sep, r = rest.partition(" in/on ")
            if (not sep or o != self.held or not self._here(r) or not self._visible(r)
                    or _class_of(o) not in CAN_HOLD.get(self.layout.cls[r], ())):
                return None
            self.contents[r] = self.memory[r] = tuple(sorted(self.contents[r] + (o,), key=_listing_key))
            self.held = self.held_from = None
            return f"You put the {o} in/on the {r}."
        if verb in APPLIANCE:                     # heat/cool/clean: no need to open the appliance
            o, sep, r = rest.partition(" with ")
            if (not sep or o != self.held or not self._here(r) or self.layout.cls[r] != APPLIANCE[verb]
                    or _class_of(o) not in TREATABLE[verb]):
                return None
            if verb == "heat":
                self.hot.add(o)
                self.cool.discard(o)
            elif verb == "cool":
                self.cool.add(o)
                self.hot.discard(o)
            else:
                self.clean.add(o)
            return f"You {verb} the {o} using the {r}."
        if verb == "use":                         # the lamp must stand in a receptacle at this spot; it stays on
            here = self.layout.at_spot.get(self.spot, ())
            if any(rest in self.contents[r] for r in here) and _class_of(rest) in TOGGLEABLE:
                self.toggled.add(rest)
                return f"You turn on the {rest}."
            return None
        if verb == "examine":                     # only the object held or a receptacle at this spot
            if rest and rest == self.held:
                return self._describe_object(rest)
            return self._describe(rest) if self._here(rest) else None
        return None

    def _visible(self, r) -> bool:
        return r not in self.layout.openable or r in self.opened

    def _describe(self, r) -> str:
        """What arriving at (or examining) a receptacle shows; the expert remembers what it saw."""
        if r in self.layout.openable:
            if r not in self.opened:
                return f"The {r} is closed."
            self.memory[r] = self.contents[r]
            return f"The {r} is open. In it, you see {_see_list(self.contents[r])}."
        self.memory[r] = self.contents[r]
        return f"On the {r}, you see {_see_list(self.contents[r])}."

    def _describe_object(self, o) -> str:
        if _class_of(o) in RECEPTACLE_OBJECTS:
            return f"This is a normal {o}. In it, you see nothing."
        hot, cool, clean = o in self.hot, o in self.cool, o in self.clean
        if clean and (hot or cool):
            return f"This is a {'hot' if hot else 'cool'} and clean {o}."
        if hot or clean:
            return f"This is a {'hot' if hot else 'clean'} {o}."
        if cool:
            return f"This is a cold {o}."
        return f"There's nothing special about {o}."

    def _won(self) -> bool:
        """The PDDL goal of the task type (ENVS.md 1.1)."""
        task = self.task
        if task.kind == "examine":   # holding the object, a toggled lamp in a receptacle at the agent's spot
            return (self.held is not None and _class_of(self.held) == task.obj
                    and any(_class_of(o) == task.target and o in self.toggled
                            for r in self.layout.at_spot.get(self.spot, ()) for o in self.contents[r]))
        done = self._treated(task.kind) if task.kind in APPLIANCE else None
        need = 2 if task.kind == "pick2" else 1
        return any(sum(_class_of(o) == task.obj and (done is None or o in done) for o in self.contents[r]) >= need
                   for r in task.targets)

    def _treated(self, verb) -> set:
        """The objects made hot / cool / clean so far."""
        return {"heat": self.hot, "cool": self.cool, "clean": self.clean}[verb]

    # -- the expert (alfworld/agents/expert/handcoded_expert.py logic, ENVS.md 1.6) --------------------------
    def expert_step(self):
        """(thought, action, subgoal) from the current state and what the expert has seen so far."""
        if self.done or self.task is None:
            return None
        move = self._expert_move()
        if move is None:
            return None
        action, subgoal, says = move
        if self.t == 0:
            thought = f"{self._plan()} First I check {action[6:]}." if action.startswith("go to ") else says
        else:
            thought = f"{self._restate(self.obs)} {says}"
        return thought, action, subgoal

    def _expert_move(self):
        """(action, subgoal, what the thought says about it), or None when nothing is left to try."""
        task, held = self.task, self.held
        if held is not None and _class_of(held) != task.obj:
            return self._put_back(held)
        if held is None:
            return self._fetch()
        if task.kind == "examine":
            return self._use_lamp()
        verb = task.kind if task.kind in APPLIANCE else None
        if verb and held not in self._treated(verb):
            a, then = task.appliance, f"then put it in/on {self._target()}"
            if a is None:
                return None
            if self._here(a):
                return f"{verb} {held} with {a}", f"{verb}({task.obj})", f"Next, I {verb} the {held} with {a}, {then}."
            return f"go to {a}", f"{verb}({task.obj})", f"Next, I go to {a} to {verb} it, {then}."
        target = self._target()
        if target is None:
            return None
        if not self._here(target):
            return f"go to {target}", f"find({task.target})", f"Next, I go to {target} to put it there."
        if not self._visible(target):
            return f"open {target}", f"find({task.target})", self._say_open(target)
        return f"put {held} in/on {target}", f"put({task.target})", f"Next, I put the {held} in/on {target}."

    def _target(self):
        """The target receptacle: the lowest-numbered one (pick2: the one already holding most of the objects)."""
        targets = self.task.targets
        if self.task.kind == "pick2" and targets:
            return max(targets, key=lambda r: sum(_class_of(o) == self.task.obj for o in self.memory.get(r, ())))
        return targets[0] if targets else None

    def _after_take(self) -> str:
        task = self.task
        if task.kind == "examine":
            return f"find and use a {task.target}"
        if task.kind in APPLIANCE:
            return f"{task.kind} it with {task.appliance}, then put it in/on {self._target()}"
        return f"put it in/on {self._target()}"

    def _plan(self) -> str:
        """The first thought states the whole plan with the actual appliance and target (DESIGN.md 3b)."""
        task, target = self.task, self._target()
        if task.kind == "pick2":
            return (f"To solve the task, I need to find and take the first {task.obj}, then put it in/on {target}, "
                    f"then find and take the second {task.obj}, then put it in/on {target}.")
        return f"To solve the task, I need to find and take {_article(task.obj)}, then {self._after_take()}."

    def _say_open(self, r) -> str:
        return "I need to open it." if self.obs == f"The {r} is closed." else f"Next, I open {r}."

    def _fetch(self):
        """find -> take the task's object: go where one was seen, else search in prior order."""
        kind, then = self.task.obj, self._after_take()
        skip = self._target() if self.task.kind == "pick2" else None
        known = self._seen(kind, self.task.obj_rank, skip)
        for r, o in known:
            if self._here(r):
                if not self._visible(r):
                    return f"open {r}", f"find({kind})", self._say_open(r)
                return f"take {o} from {r}", f"take({kind})", f"Now I find {_article(o)}. Next, I need to take it."
        if known:
            r, o = known[0]
            return f"go to {r}", f"find({kind})", f"Next, I go to {r} to take the {o}, then {then}."
        return self._search(self.task.obj_order, kind, f"to find {_article(kind)}, then {then}")

    def _use_lamp(self):
        """Holding the object (examine task): find a lamp and use it."""
        lamp = self.task.target
        known = self._seen(lamp, self.task.lamp_rank)
        for r, o in known:
            if self._here(r):
                return f"use {o}", f"use({lamp})", f"Now I find {_article(o)}. Next, I need to use it."
        if known:
            r, o = known[0]
            return f"go to {r}", f"find({lamp})", f"Next, I go to {r} to use the {o}."
        return self._search(self.task.lamp_order, lamp, f"to find {_article(lamp)}, then use it")

    def _seen(self, kind, rank, skip=None) -> list:
        """[(receptacle, object)] where the expert saw objects of a class: in search order, then in listing order
        (the first one a reader meets: the highest number)."""
        found = sorted((rank[r], _listing_key(o)[1], r, o) for r, objs in self.memory.items() if r != skip
                       for o in objs if _class_of(o) == kind)
        return [(r, o) for _, _, r, o in found]

    def _search(self, order, kind, purpose):
        """One search step: look inside what stands here, close what we opened, then go to the next receptacle."""
        here = self.layout.at_spot.get(self.spot, ())[::-1]     # number ascending
        for r in here:
            if r not in self.memory:
                if not self._visible(r):
                    return f"open {r}", f"find({kind})", self._say_open(r)
                return f"examine {r}", f"find({kind})", f"Next, I check {r}."
        no = f"No {kind} here. " if "you see" in self.obs and not self.obs.startswith("You are") else ""
        for r in here:
            if r in self.opened and r not in self.task.targets:
                return f"close {r}", f"find({kind})", f"{no}Next, I close {r}."
        for r in order:
            if r not in self.memory and not self._here(r):
                return f"go to {r}", f"find({kind})", f"{no}Next, I check {r} {purpose}."
        return None

    def _put_back(self, held):
        """Holding something the task does not need: put it back where it came from."""
        r = self.held_from
        if r is None or _class_of(held) not in CAN_HOLD.get(self.layout.cls[r], ()):
            kind = _class_of(held)
            spots = [x for x in self.layout.search_order(kind) if kind in CAN_HOLD.get(self.layout.cls[x], ())]
            if not spots:
                return None
            r = spots[0]
        kind = self.layout.cls[r]
        if not self._here(r):
            return f"go to {r}", f"find({kind})", f"I do not need the {held}. Next, I go to {r} to put it back."
        if not self._visible(r):
            return f"open {r}", f"find({kind})", self._say_open(r)
        return f"put {held} in/on {r}", f"put({kind})", f"Next, I put the {held} in/on {r}."

    @staticmethod
    def _restate(obs: str) -> str:
        """The thought's first sentence: what the latest observation shows, in the agent's words."""
        if obs.startswith("On the "):
            return obs.replace(", you see ", ", I see ", 1)
        if " is open. In it, you see " in obs:
            head, _, items = obs.partition(" is open. In it, you see ")
            return f"In the {head.rpartition('The ')[2]}, I see {items}"
        for prefix, says in (("You close the ", "I closed the "), ("You put the ", "I put the "),
                             ("You are carrying: ", "I am carrying "), ("You are facing the ", "I am facing the ")):
            if obs.startswith(prefix):
                return says + obs[len(prefix):].partition(". Next to it")[0].rstrip(".") + "."
        if obs.startswith("You pick up the "):
            return f"I picked up the {obs[16:].partition(' from the ')[0]}."
        if obs.startswith("You turn on the "):
            return f"The {obs[16:-1]} is on."
        for verb, state in STATE_WORD.items():
            if obs.startswith(f"You {verb} the "):
                return f"The {obs[len(verb) + 9:].partition(' using the ')[0]} is {state} now."
        return {"Nothing happens.": "Nothing happened.", "You are not carrying anything.": "I am carrying nothing.",
                "You are in the middle of a room. Looking quickly around you, you see nothing.":
                    "I am in the middle of the room."}.get(obs, obs)


ENVS["alfworld"] = ALFWorld


class ALFWorldReal(TextEnv):
    """The real engine (pip install alfworld textworld[pddl]; games in $ALFWORLD_DATA/json_2.1.1) behind the same
    contract; observations as ETO/IPR show them. The handcoded expert's next command is the expert step."""
    name = "alfworld_real"
    default_max_steps = 30
    FOLDERS = {"train": "train", "seen": "valid_seen", "unseen": "valid_unseen"}   # AlfredTWEnv: train /
    KINDS = {"pick_and_place": "pick", "pick_clean": "clean", "pick_heat": "heat",   # eval_in_distribution /
             "pick_cool": "cool", "look_at_obj": "examine", "pick_two_obj": "pick2"}  # eval_out_of_distribution

    def __init__(self, split="train", seed=0, max_steps=None):
        if split not in self.FOLDERS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(self.FOLDERS)}")
        super().__init__(split, seed, max_steps)
        self.instruction = INSTRUCTIONS["alfworld"]
        try:
            import textworld
            from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
        except ImportError:
            raise RuntimeError("alfworld_real needs the real engine: pip install alfworld textworld[pddl]") from None
        root = os.path.join(os.environ.get("ALFWORLD_DATA", os.path.expanduser("~/.cache/alfworld")),
                            "json_2.1.1", self.FOLDERS[split])
        self.games = sorted(os.path.join(d, "game.tw-pddl") for d, _, files in os.walk(root)
                            if "game.tw-pddl" in files and "movable" not in d and "Sliced" not in d)
        if not self.games:
            raise RuntimeError(f"alfworld_real found no json_2.1.1 games under {root}: run alfworld-download "
                               "and set ALFWORLD_DATA")
        self._start = lambda game: textworld.start(game, request_infos=textworld.EnvInfos(
            won=True, admissible_commands=True, expert_type="handcoded", expert_plan=True),
            wrappers=[AlfredDemangler(), AlfredInfos])
        self.history = []

    def __len__(self):
        return len(self.games)

    def task_type(self, i):
        folder = os.path.basename(os.path.dirname(os.path.dirname(self.games[i])))
        return next(kind for prefix, kind in self.KINDS.items() if folder.startswith(prefix))

    def _reset(self, i):
        self.env, self.history = self._start(self.games[i]), []
        self.state = self.env.reset()
        return "\n".join(self.state.feedback.split("\n\n")[1:]).strip()     # ETO/IPR drop the banner

    def _step(self, action):
        self.history.append(action)
        self.state, _, _ = self.env.step(action)
        obs, won = self.state.feedback.strip(), bool(self.state.get("won"))
        if obs.startswith("You arrive at loc "):                            # ETO/IPR process_ob
            obs = obs[obs.find(". ") + 2:]
        return obs, float(won), won, {"won": won}

    def expert_step(self):
        plan = [] if self.done else (self.state.get("expert_plan") or [])
        return ("", plan[0], "expert") if plan else None

    def clone(self):
        """Replays the actions so far on a fresh copy of the game (the engine itself cannot be copied)."""
        twin = object.__new__(type(self))
        twin.__dict__ = self.__dict__.copy()
        if self.task_id is not None:
            twin._reset(self.task_id)
            for action in self.history:
                twin._step(action)
        return twin


ENVS["alfworld_real"] = ALFWorldReal


# ---------------------------------------------------------------------------------------------------------
# 2. WebShop (princeton-nlp/WebShop, text mode, as ETO/IPR wrap it; ENVS.md section 2)
# ---------------------------------------------------------------------------------------------------------
# A generated shop (about 1000 products in 10 categories) behind WebShop's exact page texts, action rules and
# reward. What differs from the real one: the products are synthetic, search is an in-file BM25 instead of
# pyserini's Lucene index, the fuzzy matcher is difflib-based, and spaCy's noun tagging is approximated.

# -- 2.1 The reward (web_agent_site/engine/goal.py), with thefuzz and spaCy replaced by small stand-ins ------

# normalize.py's COLOR_SET idea: an option value is replaced by the first colour word it contains (substring
# test, so "black forest" -> "black", "violet lavender" -> "lavender"). The list is ours, kept alphabetical.
COLOR_SET = [
    "alabaster", "apricot", "aqua", "beige", "black", "blue", "blush", "bronze", "brown", "burgundy", "camel",
    "charcoal", "copper", "coral", "cream", "emerald", "fuchsia", "gold", "gray", "green", "grey", "ivory",
    "khaki", "lavender", "lilac", "maroon", "mauve", "mustard", "navy", "nude", "olive", "orange", "peach",
    "pink", "plum", "purple", "red", "rose", "silver", "tan", "taupe", "teal", "turquoise", "violet", "white",
    "wine", "yellow",
]
# Function words dropped when approximating spaCy's nouns in a title (see _title_nouns).
_TITLE_STOPWORDS = {"a", "an", "and", "or", "the", "of", "for", "with", "in", "on", "to", "by", "at", "from",
                    "as", "is", "it", "its", "this", "that", "your", "our", "per"}


def normalize_color(color_string: str) -> str:
    """WebShop normalize.py normalize_color: the first COLOR_SET word found inside the string, else the string."""
    for color in COLOR_SET:
        if color in color_string:
            return color
    return color_string


def _fuzz_process(s) -> str:
    """thefuzz utils.full_process(force_ascii=True): ASCII only, non-alphanumerics -> spaces, lower-case."""
    s = "".join(ch for ch in str(s) if ord(ch) < 128)
    return re.sub(r"\W", " ", s).lower().strip()


def _fuzz_ratio(a: str, b: str) -> int:
    """thefuzz fuzz.ratio: 100 * similarity, rounded (difflib's matching-blocks ratio)."""
    return round(100 * difflib.SequenceMatcher(None, a, b).ratio())


@functools.lru_cache(maxsize=65536)
def token_set_ratio(s1, s2) -> int:
    """thefuzz fuzz.token_set_ratio: compare the sorted shared tokens with each side's full token string."""
    p1, p2 = _fuzz_process(s1), _fuzz_process(s2)
    if not p1 or not p2:
        return 0
    t1, t2 = set(p1.split()), set(p2.split())
    if t1 <= t2 or t2 <= t1:                # the shared tokens are one whole side: ratio 100 (a shortcut)
        return 100
    shared = " ".join(sorted(t1 & t2))
    side1 = (shared + " " + " ".join(sorted(t1 - t2))).strip()
    side2 = (shared + " " + " ".join(sorted(t2 - t1))).strip()
    return max(_fuzz_ratio(shared, side1), _fuzz_ratio(shared, side2), _fuzz_ratio(side1, side2))


@functools.lru_cache(maxsize=16384)
def _title_nouns(name: str) -> tuple[str, ...]:
    """APPROXIMATION of goal.py's spaCy step (tokens tagged NOUN/PROPN by en_core_web_sm, lower-cased).
    spaCy is not available, so we keep every whitespace token that, stripped of edge punctuation, contains a
    letter and no digit and is not a function word. Like the real list it keeps duplicates. On WebShop's own
    test titles this gives 0.29 / 0.15 / 0.40 / 0.0 where spaCy gives 0.31 / 0.17 / 0.33 / < 0.05."""
    words = (w.strip(string.punctuation).lower() for w in name.split())
    return tuple(w for w in words if w and w not in _TITLE_STOPWORDS
                 and any(c.isalpha() for c in w) and not any(c.isdigit() for c in w))


def webshop_type_reward(purchased: dict, goal: dict) -> dict:
    """goal.py get_type_reward: 1.0, cut to 0.5 when neither query, category (>= 2 shared ' › ' parts) nor
    title (> 0.2 of the goal name's nouns) matches, to 0.1 when title_score < 0.1 and to 0.0 when it is 0."""
    query_match = purchased["query"] == goal["query"]
    purchased_parts = {x.strip() for x in purchased["product_category"].split("›")}
    goal_parts = {x.strip() for x in goal["product_category"].split("›")}
    category_match = len(purchased_parts & goal_parts) >= 2
    purchased_nouns, goal_nouns = _title_nouns(purchased["name"]), _title_nouns(goal["name"])
    title_score = len(set(purchased_nouns) & set(goal_nouns)) / len(goal_nouns) if goal_nouns else 0.2
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return dict(r_type=r_type, query_match=query_match, category_match=category_match, title_score=title_score)


def webshop_attribute_reward(purchased: dict, goal: dict) -> tuple[float, int]:
    """goal.py get_attribute_reward: a goal attribute matches a product attribute with token_set_ratio > 85,
    or else appears in the lower-cased Title, ' '.join(BulletPoints) (character by character when BulletPoints
    is a plain string, as in the real code) or Description. Returns (fraction, count)."""
    matches = 0
    for g_attr in goal["attributes"]:
        if any(token_set_ratio(p_attr, g_attr) > 85 for p_attr in purchased["Attributes"]):
            matches += 1
        elif (g_attr in purchased["Title"].lower() or g_attr in " ".join(purchased["BulletPoints"]).lower()
              or g_attr in purchased["Description"].lower()):
            matches += 1
    return matches / len(goal["attributes"]), matches


def webshop_option_reward(purchased_options: list[str], goal_options: list[str]) -> tuple[float | None, int]:
    """goal.py get_option_reward (the version WebShop's tests call): both sides go through normalize_color, and a
    goal option matches when some purchased option has token_set_ratio > 85. (fraction or None, count)."""
    purchased = [normalize_color(o) for o in purchased_options]
    goal = [normalize_color(o) for o in goal_options]
    matches = sum(1 for g in goal if any(token_set_ratio(p, g) > 85 for p in purchased))
    return (matches / len(goal) if goal else None), matches


def webshop_reward(purchased: dict, goal: dict, price: float, options: dict) -> float:
    """goal.py get_reward: r_type * (attributes + options + [price <= price_upper]) / (n_attr + n_opt + 1)."""
    r_type = webshop_type_reward(purchased, goal)["r_type"]
    r_price = price <= goal["price_upper"]
    _, n_attr = webshop_attribute_reward(purchased, goal)
    goal_options = goal["goal_options"]
    goal_values = list(goal_options.values()) if isinstance(goal_options, dict) else list(goal_options)
    _, n_opt = webshop_option_reward(list(options.values()), goal_values)
    total = (n_attr + n_opt + r_price) / (len(goal["attributes"]) + len(goal_options) + 1)
    return total * r_type


# -- 2.2 Search: Okapi BM25 over title + attributes + bullets (pyserini/Lucene stand-in) -----------------------

_BM25_STOPWORDS = {"a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
                   "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
                   "they", "this", "to", "was", "will", "with"}


def _bm25_terms(text: str) -> list[str]:
    """Lower-case alphanumeric tokens without English stop words, with a plural 's' stripped (a tiny stemmer)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
            for w in words if w not in _BM25_STOPWORDS]


class BM25:
    """Okapi BM25 with Lucene's defaults (k1=0.9, b=0.4, as pyserini uses). search() returns the top-n document
    indices, best first (ties by index), and caches answers, so repeated queries in rollouts cost nothing."""

    def __init__(self, docs: list[str], k1: float = 0.9, b: float = 0.4):
        counts = [Counter(_bm25_terms(d)) for d in docs]
        n_docs = max(len(docs), 1)
        avg_len = sum(sum(c.values()) for c in counts) / n_docs or 1.0
        df = Counter(t for c in counts for t in c)
        self.postings: dict[str, list[tuple[int, float]]] = {}
        for i, c in enumerate(counts):
            norm = k1 * (1 - b + b * sum(c.values()) / avg_len)
            for t, tf in c.items():
                idf = math.log(1 + (n_docs - df[t] + 0.5) / (df[t] + 0.5))
                self.postings.setdefault(t, []).append((i, idf * tf * (k1 + 1) / (tf + norm)))
        self.cache: dict[str, tuple[int, ...]] = {}

    def search(self, query: str, n: int = 50) -> tuple[int, ...]:
        # Only indexed terms score; as a multiset they fix the answer, so they are the cache key.
        key = tuple(sorted(t for t in _bm25_terms(query) if t in self.postings))
        hits = self.cache.get(key)
        if hits is None:
            lists = sorted((self.postings[t] for t in key), key=len, reverse=True)
            scores = dict(lists[0]) if lists else {}
            get = scores.get
            for postings in lists[1:]:
                for i, w in postings:
                    scores[i] = get(i, 0.0) + w
            ranked = sorted(zip([-s for s in scores.values()], scores))     # best first, ties by index
            hits = tuple(i for _, i in ranked[:n])
            if len(self.cache) > 50_000:
                self.cache.clear()
            self.cache[key] = hits
        return hits


# -- 2.3 The generated catalogue ------------------------------------------------------------------------------

# Option kinds: (option name shown on the item page, values). Real option names are lower-cased; values are
# lower-cased with '/' shown as ' | ' (engine.py load_products).
WEBSHOP_OPTION_KINDS = {
    "color": ("color", ["black", "white", "navy blue", "grey", "red", "beige", "olive green", "pink", "brown",
                        "light blue", "burgundy", "black/white"]),
    "shade": ("color", ["classic red", "nude", "berry", "coral", "plum", "mauve", "pink", "wine"]),
    "shoe size": ("size", ["6", "6.5", "7", "7.5", "8", "8.5", "9", "9.5", "10", "10.5", "11", "12"]),
    "apparel size": ("size", ["x-small", "small", "medium", "large", "x-large", "xx-large", "3x-large"]),
    "volume": ("size", ["1.7 fl oz", "3.4 fl oz", "6.76 fl oz (pack of 1)", "8 fl oz", "12 fl oz", "16 fl oz",
                        "33.8 fl oz", "8 fl oz (pack of 2)"]),
    "weight": ("size", ["4 ounce", "8 ounce (pack of 1)", "12 ounce", "16 ounce (pack of 2)", "1 pound",
                        "2 pound", "5 pound", "2.2 pound (pack of 1)"]),
    "count": ("size", ["12 count", "24 count (pack of 1)", "30 count", "60 count", "90 count", "120 count",
                       "6 count (pack of 4)", "48 count"]),
    "flavor": ("flavor name", ["original", "vanilla", "chocolate", "strawberry", "sea salt", "honey roasted",
                               "peanut butter", "caramel", "mixed berry", "spicy"]),
    "coffee flavor": ("flavor name", ["original", "french roast", "hazelnut", "vanilla", "caramel", "mocha"]),
    "tea flavor": ("flavor name", ["original", "jasmine", "mint", "lemon", "honey ginger", "peach"]),
    "pet flavor": ("flavor name", ["chicken", "beef", "salmon", "lamb & rice", "turkey", "duck"]),
    "scent": ("scent", ["lavender", "unscented", "coconut", "citrus", "eucalyptus mint", "vanilla",
                        "fresh linen", "sandalwood"]),
    "quantity": ("item package quantity", ["1", "2", "3", "4", "6", "10"]),
    "style": ("style", ["standard", "pro", "with charging case", "sport", "bluetooth 5.3", "wired"]),
    "phone": ("style", ["iphone 13", "iphone 14", "iphone 14 pro", "iphone 15", "galaxy s23", "pixel 8"]),
    "length": ("size", ["3 ft", "6 ft", "10 ft", "3 ft (pack of 2)", "6 ft (pack of 3)", "15 ft"]),
    "capacity": ("capacity", ["32gb", "64gb", "128gb", "256gb", "512gb"]),
    "battery": ("capacity", ["5000mah", "10000mah", "20000mah", "26800mah"]),
    "tv size": ("size", ["26-55 inch", "32-65 inch", "37-70 inch", "42-85 inch"]),
    "material": ("material type", ["oak", "walnut", "metal", "glass", "bamboo", "marble"]),
    "pattern": ("pattern name", ["solid", "striped", "floral", "plaid", "geometric", "polka dot"]),
    "bed size": ("size", ["twin", "full", "queen", "king", "california king"]),
    "tiers": ("size", ["3-tier", "4-tier", "5-tier", "7-tier", "10-tier"]),
    "pillow size": ("size", ["16 x 16 inch", "18 x 18 inch", "20 x 20 inch", "24 x 24 inch", "12 x 20 inch"]),
    "rug size": ("size", ["17 x 24 inch", "20 x 32 inch", "24 x 40 inch", "2 x 3 ft", "3 x 5 ft"]),
    "curtain size": ("size", ["52 x 63 inch", "52 x 84 inch", "52 x 96 inch", "42 x 63 inch"]),
    "tank": ("size", ["10 gallon", "20 gallon", "30 gallon", "55 gallon", "75 gallon"]),
    "thickness": ("size", ["1/4 inch", "1/3 inch", "1/2 inch", "2/5 inch"]),
    "bottle size": ("size", ["12 oz", "18 oz", "24 oz", "32 oz", "40 oz", "64 oz"]),
    "tent size": ("size", ["1 person", "2 person", "4 person", "6 person", "8 person"]),
    "dumbbell": ("size", ["5 pound", "10 pound", "15 pound", "20 pound", "25 pound", "30 pound"]),
    "pieces": ("size", ["300 pieces", "500 pieces", "1000 pieces", "1500 pieces", "2000 pieces"]),
    "plush size": ("size", ["8 inch", "12 inch", "16 inch", "20 inch"]),
    "paper size": ("size", ["a5", "b5", "8.5 x 11 inch", "5 x 8 inch", "6 x 9 inch"]),
}

# category -> (top of the category path, brands, price range, product types). A type is (type noun phrase = the
# products' query, the rest of the category path, option kinds, its attribute vocabulary). Types share words
# across categories on purpose ("shampoo" / "dog shampoo", "desk lamp" / "table lamp", "phone case" / "pencil
# case"): near misses for search and for the type reward.
WEBSHOP_CATEGORIES = {
    "beauty": ("Beauty & Personal Care",
               ["Velora", "Aurelle", "Pure Bloom", "Maison Lune", "Herbique", "Glowday", "Serenity Lab", "Olivane"],
               (6, 60), [
        ("shampoo", "Hair Care › Shampoo & Conditioner › Shampoos", ("volume", "scent"),
         "sulfate free, paraben free, tea tree, argan oil, dry hair, natural ingredients, color safe, travel size"),
        ("conditioner", "Hair Care › Shampoo & Conditioner › Conditioners", ("volume",),
         "sulfate free, paraben free, argan oil, dry hair, natural ingredients, color safe, cruelty free"),
        ("hair oil", "Hair Care › Styling Products › Hair Oils", ("volume",),
         "argan oil, natural ingredients, dry hair, cruelty free, lightweight formula, paraben free"),
        ("face moisturizer", "Skin Care › Face › Moisturizers", ("volume",),
         "hyaluronic acid, sensitive skin, dry skin, fragrance free, vitamin c, cruelty free, long lasting"),
        ("eye cream", "Skin Care › Eyes › Creams", (),
         "hyaluronic acid, dark circles, fine lines, sensitive skin, fragrance free, vitamin c"),
        ("lipstick", "Makeup › Lips › Lipstick", ("shade",),
         "long lasting, cruelty free, matte finish, paraben free, easy to use, natural ingredients"),
        ("nail polish", "Foot, Hand & Nail Care › Nail Art & Polish › Nail Polish", ("shade", "quantity"),
         "long lasting, quick drying, cruelty free, easy to use, high gloss, non toxic"),
        ("body wash", "Skin Care › Body › Body Washes", ("scent", "volume"),
         "sulfate free, dry skin, sensitive skin, natural ingredients, tea tree, paraben free"),
        ("eau de toilette", "Fragrance › Women's › Eau de Toilette", ("volume",),
         "long lasting, travel size, natural spray, cruelty free, easy to carry")]),
    "grocery": ("Grocery & Gourmet Food",
                ["Harvest Lane", "Golden Acre", "Nutrio", "Wild Pantry", "Mesa Verde", "Kettle & Co", "Sunmill",
                 "Bramble Farms"],
                (4, 45), [
        ("coffee beans", "Beverages › Coffee, Tea & Cocoa › Coffee › Whole Coffee Beans",
         ("coffee flavor", "weight"),
         "usda organic, non gmo, fair trade, medium roast, dark roast, kosher certified, resealable bag"),
        ("green tea", "Beverages › Coffee, Tea & Cocoa › Tea › Green Tea", ("tea flavor", "count"),
         "usda organic, non gmo, caffeine free, gluten free, individually wrapped, kosher certified, sugar free"),
        ("protein bar", "Snack Foods › Bars › Protein Bars", ("flavor", "count"),
         "high protein, gluten free, low carb, keto friendly, individually wrapped, low sugar, plant based"),
        ("dark chocolate", "Candy & Chocolate › Chocolate › Chocolate Bars", ("flavor", "weight"),
         "sugar free, keto friendly, non gmo, dairy free, usda organic, individually wrapped, gluten free"),
        ("trail mix", "Snack Foods › Trail Mix", ("flavor", "weight"),
         "non gmo, gluten free, resealable bag, high protein, plant based, individually wrapped, low sodium"),
        ("olive oil", "Pantry Staples › Cooking & Baking › Oils › Olive Oil", ("volume",),
         "usda organic, non gmo, cold pressed, kosher certified, gluten free, extra virgin"),
        ("beef jerky", "Meat & Seafood › Jerky & Dried Meats", ("flavor", "weight", "quantity"),
         "high protein, low carb, keto friendly, gluten free, low sodium, resealable bag, individually wrapped"),
        ("pasta sauce", "Pantry Staples › Sauces, Gravies & Marinades › Pasta Sauces", ("flavor", "quantity"),
         "non gmo, gluten free, low sodium, usda organic, plant based, sugar free, kosher certified")]),
    "fashion": ("Clothing, Shoes & Jewelry",
                ["Northpeak", "Urban Loom", "Stride Co", "Altamira", "Bellweather", "Cove & Pine", "Rivet", "Marlowe"],
                (12, 120), [
        ("running shoes", "Men › Shoes › Athletic › Running", ("color", "shoe size"),
         "rubber sole, lace up, arch support, breathable mesh, lightweight, machine wash"),
        ("hiking boots", "Women › Shoes › Outdoor › Hiking Boots", ("color", "shoe size"),
         "rubber sole, lace up, water resistant, arch support, faux fur lining, ankle support"),
        ("t-shirt", "Men › Clothing › Shirts › T-Shirts", ("color", "apparel size"),
         "short sleeve, cotton spandex, machine wash, relaxed fit, slim fit, crew neck"),
        ("denim jacket", "Women › Clothing › Coats, Jackets & Vests › Denim Jackets", ("color", "apparel size"),
         "long sleeve, button closure, machine wash, relaxed fit, slim fit, cotton spandex"),
        ("sandals", "Women › Shoes › Sandals", ("color", "shoe size"),
         "rubber sole, arch support, open toe, ankle strap, water resistant, lightweight"),
        ("hoodie", "Men › Clothing › Fashion Hoodies & Sweatshirts", ("color", "apparel size"),
         "long sleeve, drawstring closure, machine wash, relaxed fit, polyester spandex, fleece lined"),
        ("maxi dress", "Women › Clothing › Dresses › Casual", ("color", "apparel size", "pattern"),
         "short sleeve, long sleeve, elastic waist, polyester spandex, machine wash, v neck"),
        ("beanie hat", "Accessories › Hats & Caps › Skullies & Beanies", ("color",),
         "faux fur, fleece lined, machine wash, one size, warm knit")]),
    "electronics": ("Electronics",
                    ["Voltix", "Sonara", "Kinetiq", "Arcwave", "Nexon", "Lumetra", "Brightcore", "Tandem"],
                    (8, 150), [
        ("wireless earbuds", "Headphones, Earbuds & Accessories › Headphones & Earbuds › Earbud Headphones",
         ("color", "style"), "noise cancelling, long battery life, water resistant, touch control, wireless "
                             "charging, hands free, fast charging"),
        ("phone case", "Cell Phones & Accessories › Cases, Holsters & Sleeves › Basic Cases", ("color", "phone"),
         "shockproof, wireless charging, easy to install, heavy duty, raised edges, slim design"),
        ("usb c cable", "Computers & Accessories › Computer Cables › USB Cables", ("color", "length"),
         "fast charging, high speed, heavy duty, braided nylon, data transfer, easy to carry"),
        ("bluetooth speaker", "Portable Audio & Video › Portable Speakers & Docks", ("color",),
         "water resistant, long battery life, easy to carry, hands free, stereo sound, usb port"),
        ("power bank", "Cell Phones & Accessories › Chargers & Power Adapters › Portable Power Banks",
         ("color", "battery"), "fast charging, easy to carry, usb port, wireless charging, long battery life, "
                               "led display"),
        ("hdmi cable", "Television & Video › Accessories › Cables › HDMI Cables", ("length",),
         "high speed, high definition, plug and play, braided nylon, gold plated, heavy duty"),
        ("wireless mouse", "Computers & Accessories › Computer Accessories › Mice", ("color",),
         "plug and play, ergonomic design, long battery life, silent click, usb receiver, rechargeable battery"),
        ("memory card", "Computers & Accessories › Memory Cards › Micro SD Cards", ("capacity",),
         "high speed, water resistant, shockproof, high definition, with adapter"),
        ("tv wall mount", "Television & Video › Accessories › TV Mounts", ("tv size",),
         "heavy duty, easy to install, full motion, tilt swivel, space saving")]),
    "home": ("Home & Kitchen",
             ["Hearthly", "Oakhaven", "Nestwell", "Linden Home", "Casa Vela", "Brightwood", "Homely", "Arbor & Co"],
             (15, 400), [
        ("coffee table", "Furniture › Living Room Furniture › Tables › Coffee Tables", ("color", "material"),
         "living room, easy assemble, solid wood, mid century, storage space, metal frame"),
        ("bed frame", "Furniture › Bedroom Furniture › Beds, Frames & Bases › Beds", ("color", "bed size"),
         "easy assemble, metal frame, solid wood, storage space, heavy duty, noise free"),
        ("shoe rack", "Storage & Organization › Clothing & Closet Storage › Shoe Organizers", ("color", "tiers"),
         "easy assemble, space saving, heavy duty, metal frame, stackable, living room"),
        ("throw pillow covers", "Home Décor Products › Decorative Pillows, Inserts & Covers › Throw Pillow Covers",
         ("color", "pillow size", "pattern"), "double sided, machine washable, living room, hidden zipper, "
                                              "soft velvet"),
        ("bath mat", "Bath › Bath Rugs", ("color", "rug size"),
         "non slip, machine washable, quick drying, easy clean, super absorbent, soft microfiber"),
        ("table lamp", "Lighting & Ceiling Fans › Lamps & Shades › Table Lamps", ("color",),
         "living room, bedside, dimmable, usb port, mid century, easy assemble"),
        ("blackout curtains", "Home Décor Products › Window Treatments › Curtains & Drapes › Panels",
         ("color", "curtain size"), "thermal insulated, living room, machine washable, noise reducing, grommet top"),
        ("dining chairs", "Furniture › Kitchen & Dining Room Furniture › Chairs", ("color", "quantity"),
         "dining room, easy assemble, solid wood, mid century, heavy duty, easy clean")]),
    "pet": ("Pet Supplies",
            ["Pawsome", "Tailwind", "Furbloom", "Kibble & Co", "Whisker Lane", "Barkley", "Petalux", "Scout"],
            (6, 90), [
        ("dog shampoo", "Dogs › Grooming › Shampoos & Conditioners", ("scent", "volume"),
         "tear free, natural ingredients, odor control, sensitive skin, oatmeal formula, paraben free"),
        ("cat litter", "Cats › Litter & Housebreaking › Litter", ("scent", "weight"),
         "odor control, dust free, clumping, low tracking, natural ingredients"),
        ("dog bed", "Dogs › Beds & Furniture › Beds", ("color", "apparel size"),
         "orthopedic, machine washable, waterproof, non slip, large breed, small breed"),
        ("dry dog food", "Dogs › Food › Dry", ("pet flavor", "weight"),
         "grain free, high protein, natural ingredients, small breed, large breed, real meat"),
        ("cat toy", "Cats › Toys › Balls & Chasers", ("color", "quantity"),
         "non toxic, interactive, catnip filled, durable, easy clean"),
        ("dog leash", "Dogs › Collars, Harnesses & Leashes › Leashes", ("color", "apparel size"),
         "reflective, heavy duty, padded handle, large breed, small breed, waterproof"),
        ("aquarium filter", "Fish & Aquatic Pets › Aquarium Pumps & Filters › Filters", ("tank",),
         "easy clean, quiet operation, energy saving, adjustable flow, easy install"),
        ("cat scratching post", "Cats › Cat Furniture & Scratchers › Scratching Posts", ("color",),
         "easy assemble, natural sisal, durable, space saving, heavy duty")]),
    "sports": ("Sports & Outdoors",
               ["Trailforge", "Apex Motion", "Summit Ridge", "Kinetic One", "Bluefin", "Ironpeak", "Zephyr",
                "Evergreen Gear"],
               (8, 200), [
        ("yoga mat", "Exercise & Fitness › Yoga › Yoga Mats", ("color", "thickness"),
         "non slip, extra thick, eco friendly, easy clean, carrying strap, lightweight"),
        ("running shorts", "Sports & Fitness › Clothing › Men › Shorts", ("color", "apparel size"),
         "quick drying, moisture wicking, elastic waist, breathable, zipper pocket, lightweight"),
        ("water bottle", "Outdoor Recreation › Accessories › Water Bottles", ("color", "bottle size"),
         "bpa free, leak proof, double wall, wide mouth, dishwasher safe, lightweight"),
        ("resistance bands", "Exercise & Fitness › Accessories › Resistance Bands", ("quantity",),
         "non slip, latex free, carrying bag, heavy duty, durable"),
        ("camping tent", "Outdoor Recreation › Camping & Hiking › Tents & Shelters › Tents",
         ("color", "tent size"),
         "easy setup, waterproof, lightweight, double layer, carrying bag, breathable"),
        ("dumbbells", "Exercise & Fitness › Strength Training Equipment › Dumbbells", ("dumbbell",),
         "non slip, adjustable weight, rubber coated, space saving, heavy duty"),
        ("cycling gloves", "Cycling › Clothing › Gloves", ("color", "apparel size"),
         "breathable, shock absorbing, non slip, touch screen, lightweight, quick drying"),
        ("jump rope", "Exercise & Fitness › Cardio Training › Jump Ropes", ("color",),
         "adjustable length, non slip, lightweight, ball bearing, tangle free")]),
    "toys": ("Toys & Games",
             ["Playnest", "Brickly", "Wonderkin", "Tumble Town", "Jolly Fox", "Puzzlewood", "Kidora", "Zoomi"],
             (6, 80), [
        ("building blocks", "Building Toys › Building Sets", ("pieces",),
         "stem toy, educational, ages 3 and up, birthday gift, non toxic, storage box"),
        ("jigsaw puzzle", "Puzzles › Jigsaw Puzzles", ("pieces",),
         "family game, for adults, birthday gift, educational, thick pieces, poster included"),
        ("plush toy", "Stuffed Animals & Plush Toys › Plush Figures", ("color", "plush size"),
         "soft plush, birthday gift, for kids, machine washable, ages 3 and up"),
        ("remote control car", "Remote & App Controlled Vehicles & Parts › Cars & Trucks", ("color",),
         "rechargeable battery, for kids, birthday gift, high speed, all terrain, ages 8 and up"),
        ("board game", "Games & Accessories › Board Games", (),
         "family game, for kids, ages 8 and up, party favors, educational, travel friendly"),
        ("play dough", "Arts & Crafts › Clay & Dough", ("quantity",),
         "non toxic, for kids, educational, party favors, ages 3 and up"),
        ("kids tent", "Kids' Furniture › Play Tents", ("color",),
         "easy assemble, for kids, birthday gift, foldable, carrying bag"),
        ("card game", "Games & Accessories › Card Games", (),
         "family game, party game, travel friendly, ages 8 and up, for adults")]),
    "office": ("Office Products",
               ["Inkwell", "Deskwise", "Paperloft", "Scriba", "Officio", "Notable", "Clarion", "Workwell"],
               (4, 250), [
        ("gel pens", "Office & School Supplies › Writing & Correction Supplies › Pens & Refills › Gel Ink "
                     "Rollerball Pens", ("color", "count"),
         "quick drying, smooth writing, fine point, refillable, comfort grip"),
        ("spiral notebook", "Office & School Supplies › Paper › Notebooks & Writing Pads", ("color", "paper size"),
         "college ruled, acid free, recycled paper, durable cover, perforated pages"),
        ("desk organizer", "Office & School Supplies › Desk Accessories & Workspace Organizers", ("color",),
         "large capacity, space saving, easy assemble, heavy duty, multi compartment"),
        ("sticky notes", "Office & School Supplies › Paper › Sticky Notes", ("color", "count"),
         "strong adhesive, recycled paper, easy to use, acid free"),
        ("desk lamp", "Office Furniture & Lighting › Lamps", ("color",),
         "eye caring, dimmable, usb port, adjustable height, touch control, energy saving"),
        ("office chair", "Office Furniture & Lighting › Chairs & Sofas › Desk Chairs", ("color",),
         "ergonomic design, lumbar support, adjustable height, heavy duty, breathable mesh, easy assemble"),
        ("pencil case", "Office & School Supplies › Pencil Cases", ("color",),
         "large capacity, durable, water resistant, zipper closure, easy to carry"),
        ("label maker", "Office Electronics › Label Makers", (),
         "easy to use, rechargeable battery, portable, bluetooth connection, heavy duty")]),
    "health": ("Health & Household",
               ["Vitalis", "Purecare", "Wellspring", "Nordic Leaf", "Healthway", "Clearday", "Medora", "Solace"],
               (5, 70), [
        ("vitamin d3", "Vitamins, Minerals & Supplements › Vitamins › Vitamin D", ("count",),
         "dietary supplement, immune support, non gmo, gluten free, third party tested, easy to swallow"),
        ("fish oil", "Vitamins, Minerals & Supplements › Supplements › Fish Oil", ("count",),
         "dietary supplement, third party tested, non gmo, extra strength, easy to swallow, burp free"),
        ("electric toothbrush", "Oral Care › Toothbrushes & Accessories › Electric Toothbrushes", ("color",),
         "rechargeable battery, travel case, pressure sensor, sensitive teeth, long battery life"),
        ("hand sanitizer", "Health Care › First Aid › Antiseptics", ("scent", "volume"),
         "kills germs, travel size, moisturizing, alcohol free, easy to use"),
        ("face masks", "Health Care › Medical Supplies & Equipment › Masks", ("color", "count"),
         "latex free, disposable, breathable, adjustable nose clip, individually wrapped"),
        ("probiotic", "Vitamins, Minerals & Supplements › Supplements › Probiotics", ("count",),
         "dietary supplement, shelf stable, vegan friendly, gluten free, non gmo, digestive health"),
        ("heating pad", "Health Care › Pain Relief › Hot & Cold Therapies › Heating Pads", ("color",),
         "auto shut off, fast heating, machine washable, extra large, easy to use"),
        ("melatonin gummies", "Vitamins, Minerals & Supplements › Supplements › Melatonin", ("flavor", "count"),
         "sugar free, vegan friendly, non gmo, gluten free, fast acting, extra strength")]),
}

_TITLE_TEMPLATES = ["{b} {a1} {t}, {a2}", "{b} {t} with {a1} and {a2}", "{b} {a1} {a2} {t}",
                    "{t} by {b} - {a1}, {a2}", "{b} {t} - {a1}"]
_BULLET_TEMPLATES = ["{A}: {b} {t}, {a} and made to last", "Why {b}? {A}, checked on every order",
                     "{A} design you can trust, tested by our team before it ships",
                     "Made for everyday use: {a}, simple and reliable"]


def _join_with_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _title_case(text: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in text.split(" "))


def webshop_product(asin, title, pricing, attributes, options=None, bullets=(), description="", category="",
                    query="", product_category="", price=None, **extra) -> dict:
    """A product record with the fields WebShop's engine and reward read (engine.py load_products): Title, Price
    tag (`$X` or `$X to $Y`, from the float list `pricing`), Attributes, BulletPoints, Description, options
    (names and values lower-cased, '/' -> ' | '), query, category, product_category, name (= Title). `price` is
    the one price the reward uses (engine.py generate_product_prices: uniform in a range); default pricing[0]."""
    tag = f"${pricing[0]}" if len(pricing) == 1 else f"${pricing[0]} to ${pricing[1]}"
    opts = {name.lower(): [v.strip().replace("/", " | ").lower() for v in values]
            for name, values in (options or {}).items()}
    return dict(asin=asin, Title=title, name=title, Price=tag, pricing=list(pricing),
                price=pricing[0] if price is None else price, Attributes=list(attributes), options=opts,
                BulletPoints=list(bullets), Description=description, category=category,
                query=query.lower().strip(), product_category=product_category, **extra)


def _new_asin(rng, taken: set) -> str:
    while True:
        asin = "B0" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(8))
        if asin not in taken:
            taken.add(asin)
            return asin


def _generated_product(rng, taken, product_type, brand=None, attributes=None, options=None, base_price=None) -> dict:
    """One product of a type: brand + attributes + options -> title, bullets, description, price (range)."""
    category, ptype, path, option_kinds, vocab = product_type
    root, brands, (lo, hi), _ = WEBSHOP_CATEGORIES[category]
    brand = brand or rng.choice(brands)
    attributes = attributes or rng.sample(vocab, rng.randint(2, min(6, len(vocab))))
    if options is None:
        options = {}
        for option_kind in option_kinds:
            name, values = WEBSHOP_OPTION_KINDS[option_kind]
            picked = sorted(rng.sample(range(len(values)), rng.randint(2, min(8, len(values)))))
            options[name] = [values[j] for j in picked]
    first = round(base_price or rng.uniform(lo, hi), 2)
    pricing = [first, round(first * rng.uniform(1.1, 1.6), 2)] if options and rng.random() < 0.3 else [first]
    price = rng.uniform(*pricing) if len(pricing) == 2 else first        # engine.py generate_product_prices
    a1, a2 = attributes[0], attributes[1]
    title = rng.choice(_TITLE_TEMPLATES).format(b=brand, t=_title_case(ptype), a1=_title_case(a1),
                                                a2=_title_case(a2))
    bullets = [rng.choice(_BULLET_TEMPLATES).format(A=a.upper(), a=a, t=ptype, b=brand) for a in attributes]
    bullets += [f"Choose your {name}: {', '.join(values)}" for name, values in options.items()]
    bullets.append("Satisfaction guarantee: contact us with any question and we will answer within 24 hours")
    description = (f"{brand} {ptype}: {_join_with_and(attributes)}. "
                   f"Every order is checked by hand before it leaves our warehouse.")
    return webshop_product(_new_asin(rng, taken), title, pricing, attributes, options, bullets, description,
                           category, ptype, f"{root} › {path}", price=round(price, 2), type=ptype, brand=brand)


def _near_misses(rng, taken, base, product_type) -> list[dict]:
    """Deliberate distractors for a base product (ENVS.md 2.6): same type missing one attribute, the same
    product far over any budget the base's goals can have, and the same family (brand) with other options."""
    made = []
    if rng.random() < 0.5:
        attrs = list(base["Attributes"])
        attrs.pop(rng.randrange(len(attrs)))
        if len(attrs) < 2:
            attrs.append(rng.choice([a for a in product_type[4] if a not in base["Attributes"]]))
        made.append(_generated_product(rng, taken, product_type, attributes=attrs))
    if rng.random() < 0.35:       # goal caps are at most 40 dollars above the base's price (ENVS.md 2.5)
        over = base["price"] * rng.uniform(2.0, 3.0) + 45
        made.append(_generated_product(rng, taken, product_type, attributes=base["Attributes"], options=base["options"],
                                       base_price=over))
    if base["options"] and rng.random() < 0.35:
        options = {}
        for option_kind in product_type[3]:
            name, values = WEBSHOP_OPTION_KINDS[option_kind]
            others = [v for v in values if v.replace("/", " | ") not in base["options"][name]]
            picked = rng.sample(others, min(len(others), rng.randint(2, 4)))
            picked += rng.sample([v for v in values if v not in picked], max(0, 2 - len(picked)))
            options[name] = sorted(picked, key=values.index)
        made.append(_generated_product(rng, taken, product_type, brand=base["brand"], attributes=base["Attributes"],
                                       options=options))
    return made


def generate_webshop_catalogue(seed: int = 0, n_products: int = 1000) -> list[dict]:
    """About n_products products spread evenly over the types of WEBSHOP_CATEGORIES, in families (a base
    product and its near misses). Deterministic from seed."""
    rng, taken = stable_rng(seed, "webshop", "catalogue"), set()
    product_types = [(category, ptype, path, option_kinds, attributes.split(", "))
             for category, spec in WEBSHOP_CATEGORIES.items() for ptype, path, option_kinds, attributes in spec[3]]
    products = []
    for k, product_type in enumerate(product_types):
        quota = n_products // len(product_types) + (k < n_products % len(product_types))
        made = []
        while len(made) < quota:
            base = _generated_product(rng, taken, product_type)
            made += [base] + _near_misses(rng, taken, base, product_type)
        products += made[:quota]
    return products


# -- 2.4 Goals in the human instruction style, with the real price cap -----------------------------------------

WEBSHOP_PRICE_RANGE = [10.0 * i for i in range(1, 100)]       # goal.py
_OPTION_PHRASES = {"color": "{v} color", "size": "size {v}", "flavor name": "{v} flavor", "scent": "{v} scent",
                   "item package quantity": "pack of {v}", "pattern name": "{v} pattern",
                   "material type": "{v} material"}


def webshop_price_upper(rng, price: float) -> float:
    """goal.py: U = the larger of 2 values sampled from the first 4 multiples of 10 above the price."""
    above = [p for p in WEBSHOP_PRICE_RANGE if p > price][:4]
    return max(rng.sample(above, 2)) if len(above) >= 2 else 1000000


def _goal_instruction(rng, ptype: str, attributes: list[str], options: dict, price_upper: float) -> str:
    """A human-style instruction (a few paraphrases, one in the synthetic `with name: value` style) + price text."""
    a = _join_with_and(attributes)
    phrases = [_OPTION_PHRASES.get(n, "{v} " + n).format(v=v) for n, v in options.items()]
    o = _join_with_and(phrases) if phrases else ""
    synthetic = ", and ".join(f"{n}: {v}" for n, v in options.items())
    text = rng.choice([
        f"i am looking for {ptype} that is {a}" + (f" with {synthetic}" if options else ""),
        f"i need {a} {ptype}" + (f" in {o}" if o else ""),
        f"find me {a} {ptype}" + (f" with {o}" if o else ""),
        f"i want to buy {ptype} which is {a}" + (f", and it should come in {o}" if o else ""),
        f"i'm looking for {a} {ptype}" + (f", {o}" if o else ""),
    ])
    price_text = f", and price lower than {price_upper:.2f} dollars" if price_upper < 1000000 else ""
    return text.strip(".") + price_text                                   # goal.py get_human_goals


def _visible_match(product: dict, ptype: str, attributes: list[str], price_upper: float) -> int:
    """What a shopper reads of a product on a results page, its title and price: -1 if the title does not name
    the wanted type or the lowest price shown is over the budget, else how many of the goal's attributes it shows."""
    title = product["Title"].lower()
    if ptype.lower() not in title or product["pricing"][0] > price_upper:
        return -1
    return sum(a.lower() in title for a in attributes)


def _webshop_expert_queries(rng, index, products, target, ptype, attributes, options, price_upper,
                            wanted: str) -> tuple[str, ...] | None:
    """The expert's searches for a goal, chosen so that it finds the target: a first query (type + key
    attributes, or a broad one: the type's head noun, the attributes alone) that shows the target on page 1
    ("direct") or page 2 ("page": the expert clicks Next >), or a first query that does not show it on page 1
    followed by a refined one (all attributes + options) that does ("refine"); None if no query gives the
    `wanted` kind (drawn per goal, 40/25/35 %: the goal then takes another target).

    The expert knows its target, but its choices must be readable from the pages, or imitation learns to guess
    an ID: on the page where it clicks, the target is the first product whose title shows the most goal
    attributes (of the wanted type, within budget), and on each page it passes over, no product looks as good."""
    refined = " ".join([*attributes, ptype, *options.values()])
    head = ptype.split()[-1]                        # "puzzle", "lamp", "case": broad, shared between types
    first = [f"{ptype} {attributes[0]}", f"{' '.join(attributes)} {ptype}", ptype, head, " ".join(attributes),
             f"{attributes[0]} {ptype} price < {price_upper:.2f}"]
    rng.shuffle(first)
    size, want = WebShop.PAGE_SIZE, _visible_match(products[target], ptype, attributes, price_upper)
    if want < 1:                                    # its title shows none of the goal's attributes
        return None

    def page(query, k):                             # results page k: its products' visible matches, the target's place
        hits = index.search(query)[(k - 1) * size:k * size]
        return [_visible_match(products[h], ptype, attributes, price_upper) for h in hits], \
            (hits.index(target) if target in hits else None)

    def picks_target(query, k):
        seen, at = page(query, k)
        return at is not None and seen.index(max(seen)) == at

    def passes_over(query, k):
        return max(page(query, k)[0], default=-1) < want

    if wanted == "refine" and not picks_target(refined, 1):
        return None
    for q in dict.fromkeys(first):
        if wanted == "direct" and picks_target(q, 1):
            return (q,)
        if wanted == "page" and passes_over(q, 1) and picks_target(q, 2):
            return (q,)
        if wanted == "refine" and q != refined and passes_over(q, 1):   # nothing on page 1 looks right
            return q, refined
    return None


def _make_webshop_goal(rng, products, index, target, wanted: str) -> dict | None:
    """A goal for one target product: its type, 1-3 of its attributes, one value per option, the price cap."""
    p = products[target]
    attributes = rng.sample(p["Attributes"], rng.randint(1, min(3, len(p["Attributes"]))))
    options = {name: rng.choice(values) for name, values in p["options"].items()}
    price_upper = webshop_price_upper(rng, p["price"])
    if price_upper >= 1000000:                      # no price cap above 990 dollars: not a target here
        return None
    queries = _webshop_expert_queries(rng, index, products, target, p["type"], attributes, options, price_upper,
                                      wanted)
    if queries is None:
        return None
    return dict(asin=p["asin"], category=p["category"], query=p["query"], name=p["name"],
                product_category=p["product_category"], attributes=attributes, goal_options=options,
                price_upper=price_upper, instruction_text=_goal_instruction(rng, p["type"], attributes, options,
                                                                       price_upper),
                type=p["type"], target=target, expert_queries=queries,
                inspect=rng.choice(["description", "features"]) if rng.random() < 0.35 else None)


def generate_webshop_goals(products, index, seed, sizes: dict[str, int]) -> dict[str, list[dict]]:
    """Goals per split. Test targets come from a fifth of the products that train never targets; no instruction
    text occurs twice (test is drawn first, so it does not depend on the train size)."""
    order = list(range(len(products)))
    stable_rng(seed, "webshop", "pools").shuffle(order)
    cut = len(order) // 5
    pools = {"test": order[:cut], "train": order[cut:]}
    seen, goals = set(), {}
    for split in ("test", "train"):
        goals[split] = []
        for i in range(sizes[split]):
            attempt = 0
            wanted = stable_rng(seed, "webshop", split, i).choices(["direct", "page", "refine"], [0.4, 0.25, 0.35])[0]
            while True:
                rng = stable_rng(seed, "webshop", split, i, attempt)
                goal = _make_webshop_goal(rng, products, index, rng.choice(pools[split]), wanted)
                if goal is not None and goal["instruction_text"] not in seen:
                    seen.add(goal["instruction_text"])
                    goals[split].append(goal)
                    break
                attempt += 1
    return goals


class WebShopData:
    """The immutable shop shared by every env copy and both splits: products, the BM25 index, the goals."""

    _cache: dict = {}                               # (seed, sizes) -> the generated shop, built once per process

    def __init__(self, products: list[dict], goals: dict[str, list[dict]] | None = None, seed: int = 0,
                 sizes: dict[str, int] | None = None):
        self.products = products
        self.index = BM25([" ".join([p["Title"], *p["Attributes"], *p["BulletPoints"]]) for p in products])
        self.goals = goals if goals is not None else generate_webshop_goals(products, self.index, seed, sizes)

    @classmethod
    def generated(cls, seed: int, n_products: int, n_train: int, n_test: int) -> "WebShopData":
        key = (seed, n_products, n_train, n_test)
        if key not in cls._cache:
            cls._cache[key] = cls(generate_webshop_catalogue(seed, n_products), seed=seed,
                                  sizes={"train": n_train, "test": n_test})
        return cls._cache[key]


# -- 2.5 The environment ----------------------------------------------------------------------------------------

def parse_webshop_action(action: str) -> tuple[str, str | None]:
    """engine.py parse_action: re.match(r'(.+)\\[(.+)\\]', action) -> (name, argument) or (action, None).
    Computed without the regex's quadratic backtracking, with the same result: '.' stops at the first newline;
    the name ends at the last '[' that still has a ']' after it with at least one character in between, and the
    argument runs to the last ']' of that line."""
    line = action.split("\n", 1)[0]
    close = line.rfind("]")
    open_ = line.rfind("[", 1, close - 1) if close > 2 else -1
    if open_ < 1:
        return action, None
    return line[:open_], line[open_ + 1:close]


class WebShop(TextEnv):
    """WebShop's text environment on a generated shop: search[...] and click[...] over the real pages.

    Sample episode (train task 822, seed 0; pages are visible strings joined by ' [SEP] ', ENVS.md 2.3):
        WebShop [SEP] Instruction: [SEP] find me for kids play dough with pack of 3, and price lower than
            250.00 dollars [SEP] Search
        search[for kids play dough] -> Instruction: [SEP] ... [SEP] Back to Search [SEP] Page 1 (Total results: 50)
            [SEP] Next > [SEP] B0QREXJ30N [SEP] Playnest Play Dough - Party Favors [SEP] $8.03 to $8.9 [SEP] ...
        click[B0QBYGSZ70]           -> ... [SEP] < Prev [SEP] item package quantity [SEP] 3 [SEP] 6 [SEP] 10 [SEP]
            Play Dough by Playnest - Ages 3 And Up, Party Favors [SEP] Price: ... [SEP] Buy Now
        click[3]                    -> the same page (the choice is recorded)
        click[Buy Now]              -> Thank you for shopping with us! [SEP] ... [SEP] Your score (min 0.0, max 1.0)
            [SEP] 1.0 [SEP] Reward Details [SEP] None                         reward 1.0, done, info["won"]

    Expert subgoal labels: `search` (search[...] and click[back to search] to refine), `select` (paging the
    results, opening the product, leaving a wrong product), `inspect` (opening description/features and
    click[< prev] back), `options` (one click per goal option), `buy` (click[buy now]).
    """
    name = "webshop"
    default_max_steps = 10                                              # ETO/IPR configs
    obs_prefix = "Observation:\n"                                       # IPR webshop_env.py
    invalid_format = "Observation: Invalid format. The input must contains 'Action: '"
    action_pattern = re.compile(r"Action: (.*)", re.DOTALL)
    SPLITS = ("train", "test")
    SUB_PAGES = ("description", "features", "reviews")
    PAGE_SIZE = 10                                                      # engine.py PRODUCT_WINDOW

    def __init__(self, split: str = "train", seed: int = 0, max_steps: int | None = None,
                 n_products: int = 1000, n_train: int = 1800, n_test: int = 200, data: WebShopData | None = None):
        if split not in self.SPLITS and data is None:
            raise ValueError(f"unknown WebShop split {split!r}; choose one of {', '.join(self.SPLITS)}")
        super().__init__(split, seed, max_steps)
        self.data = data or WebShopData.generated(seed, n_products, n_train, n_test)
        self.goals = self.data.goals[split]
        self._start(None)

    @classmethod
    def from_catalogue(cls, products: list[dict], goals: list[dict], max_steps: int | None = None) -> "WebShop":
        """An env over hand-made products (see webshop_product) and goals (goal.py's fields: asin, query, name,
        product_category, instruction_text, attributes, goal_options, price_upper; optional expert_queries)."""
        return cls(split="custom", max_steps=max_steps, data=WebShopData(products, {"custom": goals}))

    def __len__(self) -> int:
        return len(self.goals)

    def task_type(self, i: int) -> str:
        return self.goals[i].get("category", "")

    # -- state ----------------------------------------------------------------------------------------------
    def _start(self, goal):
        self.goal = goal
        self.page, self.keywords, self.results, self.page_no = "index", "", (), 1
        self.item, self.options, self.done_text = None, {}, ""
        self.searched, self.inspected = frozenset(), False              # the expert's memory

    def clone(self) -> "WebShop":
        other = copy.copy(self)                 # the shop, goals and result tuples are shared, never mutated
        other.options = dict(self.options)
        return other

    def _reset(self, i: int) -> str:
        self._start(self.goals[i])
        return self._render()

    # -- pages (ENVS.md 2.3) ----------------------------------------------------------------------------------
    def _render(self) -> str:
        instruction = self.goal["instruction_text"]
        if self.page == "index":
            return f"WebShop [SEP] Instruction: [SEP] {instruction} [SEP] Search"
        if self.page == "done":
            return self.done_text
        head = f"Instruction: [SEP] {instruction} [SEP] Back to Search"
        if self.page == "results":
            nav = f"Page {self.page_no} (Total results: {len(self.results)}) [SEP] "
            nav += "< Prev [SEP] Next >" if self.page_no > 1 else "Next >"
            items = "".join(f" [SEP] {p['asin']} [SEP] {p['Title']} [SEP] {p['Price']}" for p in self._page_items())
            return f"{head} [SEP] {nav}{items}"
        p = self.data.products[self.item]
        if self.page == "item":
            options = "".join(f" [SEP] {name} [SEP] " + " [SEP] ".join(values) for name, values in p["options"].items())
            return (f"{head} [SEP] < Prev{options} [SEP] {p['Title']} [SEP] Price: {p['Price']} [SEP] Rating: N.A. "
                    f"[SEP] Description [SEP] Features [SEP] Reviews [SEP] Buy Now")
        if self.page == "description":
            return f"{head} [SEP] < Prev [SEP] {p['Description']}"
        if self.page == "features":
            return f"{head} [SEP] < Prev [SEP] " + (" [SEP] ".join(p["BulletPoints"]) or "No Features")
        return f"{head} [SEP] < Prev"                                    # reviews are not loaded

    def _page_items(self) -> list[dict]:
        start = (self.page_no - 1) * self.PAGE_SIZE
        return [self.data.products[i] for i in self.results[start:start + self.PAGE_SIZE]]

    def _done_page(self, reward: float) -> str:
        """done_page.html as the text env shows it (the hidden purchase/target fields render empty or None)."""
        options = json.dumps(self.options, sort_keys=True)              # jinja's tojson: sorted, HTML-safe
        for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("'", "\\u0027")):
            options = options.replace(ch, esc)
        return ("Thank you for shopping with us! [SEP] Your code: [SEP] None [SEP] (Paste it in your MTurk "
                f"interface.) [SEP] Purchased [SEP] asin [SEP] {self.data.products[self.item]['asin']} [SEP] "
                f"options [SEP] {options} [SEP] attrs [SEP] None [SEP] category [SEP] None [SEP] query [SEP] None "
                "[SEP] product category [SEP] None [SEP] Target [SEP] asin [SEP] options [SEP] attrs [SEP] price "
                "upper [SEP] instuction text [SEP] category [SEP] product category [SEP] query [SEP] Goal [SEP] "
                f"None [SEP] Reward [SEP] Your score (min 0.0, max 1.0) [SEP] {reward} [SEP] Reward Details "
                "[SEP] None")

    # -- actions (ENVS.md 2.1-2.2, web_agent_text_env.py step / SimServer.receive) ------------------------------
    def _step(self, action: str):
        name, arg = parse_webshop_action(action)
        arg = arg.lower() if arg is not None else None
        reward, done = 0.0, False
        if name == "search" and arg:
            self._search(arg)
        elif name == "click" and arg is not None and arg != "search":
            reward, done = self._click(arg)
        return self._render(), reward, done, {"won": done and reward == 1.0}

    def _search(self, keywords: str):
        """search[...] works from any page (the text env does not check for a search bar): results page 1."""
        self.page, self.keywords, self.page_no, self.item, self.options = "results", keywords, 1, None, {}
        self.results = self.data.index.search(keywords)
        self.searched = self.searched | {keywords}

    def _click(self, arg: str) -> tuple[float, bool]:
        """A click changes the page only if `arg` is a clickable of the current page; else nothing happens."""
        page = self.page
        if page == "index":                                             # its only button, Search, is refused
            return 0.0, False
        if arg == "back to search":
            self.page, self.keywords, self.results, self.item, self.options = "index", "", (), None, {}
        elif page == "results":
            self._click_results(arg)
        elif page == "item":
            return self._click_item(arg)
        elif arg == "< prev":                                           # sub-page -> its item page
            self.page = "item"
        return 0.0, False

    def _click_results(self, arg: str):
        if arg == "next >":                                             # rendered on every results page
            self.page_no += 1
        elif arg == "< prev" and self.page_no > 1:
            self.page_no -= 1
        else:
            for i in self.results[(self.page_no - 1) * self.PAGE_SIZE:self.page_no * self.PAGE_SIZE]:
                if self.data.products[i]["asin"].lower() == arg:
                    self.page, self.item, self.options = "item", i, {}
                    return

    def _click_item(self, arg: str) -> tuple[float, bool]:
        product = self.data.products[self.item]
        if arg == "< prev":
            self.page = "results"
        elif arg in self.SUB_PAGES:
            self.page = arg
            self.inspected = self.inspected or product["asin"] == self.goal["asin"]
        elif arg == "buy now":
            reward = webshop_reward(product, self.goal, product["price"], self.options)
            self.page, self.done_text = "done", self._done_page(reward)
            return reward, True
        else:
            for name, values in product["options"].items():
                if arg in values:
                    self.options[name] = arg
        return 0.0, False

    # -- the scripted expert --------------------------------------------------------------------------------------
    def expert_step(self):
        """The next expert move from the current page (and its memory: searches made, target inspected)."""
        if self.done or self.page == "done":
            return None
        goal = self.goal
        what = f"{goal.get('type', goal['query'])} that is {_join_with_and(goal['attributes'])}"
        queries = goal.get("expert_queries") or (goal["query"],)
        if self.page == "index":
            query = next((q for q in queries if q not in self.searched), queries[-1])
            if query == queries[0]:
                return f"I think I should search for {what}.", f"search[{query}]", "search"
            return f"I think I should refine my search with more details of the {what}.", f"search[{query}]", "search"
        if self.page == "results":
            return self._expert_on_results(what, queries[-1])
        if self.page == "item":
            return self._expert_on_item(what)
        if self.data.products[self.item]["asin"] == goal["asin"] and goal.get("inspect"):
            return (f"I think the {self.page} matches what I need. I should go back to the item.", "click[< Prev]",
                    "inspect")
        return "I think I should go back to the item page.", "click[< Prev]", "select"

    def _expert_on_results(self, what: str, last_query: str):
        asin = self.goal["asin"]
        ranks = [k for k, i in enumerate(self.results) if self.data.products[i]["asin"] == asin]
        target_page = ranks[0] // self.PAGE_SIZE + 1 if ranks else None
        if target_page == self.page_no:
            return (f"I think the item {asin} matches the {what}. I should click on it.", f"click[{asin}]", "select")
        if target_page is not None and self.keywords == last_query:
            if target_page > self.page_no:
                return ("I think none of the items on this page matches. I should check the next page.",
                        "click[Next >]", "select")
            return "I think the item I need was on an earlier page. I should go back.", "click[< Prev]", "select"
        return (f"I think none of these results is the {what}. I should go back and refine my search.",
                "click[Back to Search]", "search")

    def _expert_on_item(self, what: str):
        goal, product = self.goal, self.data.products[self.item]
        if product["asin"] != goal["asin"]:
            return ("I think this item does not match what I need. I should go back to the results.", "click[< Prev]",
                    "select")
        if goal.get("inspect") and not self.inspected:
            return (f"I think I should check the {goal['inspect']} to make sure it is the {what}.",
                    f"click[{goal['inspect'].capitalize()}]", "inspect")
        goal_options = goal["goal_options"]
        for name in product["options"]:
            value = goal_options.get(name) if isinstance(goal_options, dict) else None
            if value is not None and self.options.get(name) != value:
                return f"I think I should select the '{value}' {name}.", f"click[{value}]", "options"
        return "I think I should click on 'Buy Now'.", "click[Buy Now]", "buy"


ENVS["webshop"] = WebShop


class WebShopReal(TextEnv):
    """The real WebShop text env (princeton-nlp/WebShop web_agent_site, its data, pyserini index and spaCy) behind
    the same contract. Split `test` = session indices 0-199 (IPR's test indices), `train` = the rest. No expert."""
    name = "webshop_real"
    default_max_steps = WebShop.default_max_steps
    obs_prefix, invalid_format, action_pattern = WebShop.obs_prefix, WebShop.invalid_format, WebShop.action_pattern

    def __init__(self, split: str = "train", seed: int = 0, max_steps: int | None = None, **kwargs):
        super().__init__(split, seed, max_steps)
        self.instruction = INSTRUCTIONS["webshop"]
        try:
            from web_agent_site.envs import WebAgentTextEnv
            self.env = WebAgentTextEnv(observation_mode="text", human_goals=True, **kwargs)
        except Exception as e:          # missing package, data files, Lucene index or spaCy model
            why = (str(e).splitlines() or [type(e).__name__])[0]
            raise RuntimeError("webshop_real needs princeton-nlp/WebShop with its data, index and spaCy model (git "
                               f"clone https://github.com/princeton-nlp/WebShop; ./setup.sh -d small): {why}") from None
        n = len(self.env.server.goals)
        self.sessions = range(200) if split == "test" else range(200, n)

    def __len__(self) -> int:
        return len(self.sessions)

    def task_type(self, i: int) -> str:
        return self.env.server.goals[self.sessions[i]]["category"]

    def _reset(self, i: int) -> str:
        self.env.reset(session=self.sessions[i])
        return self.env.observation

    def _step(self, action: str):
        obs, reward, done, _ = self.env.step(action)
        return obs, reward, done, {"won": bool(done and reward == 1.0)}

    def expert_step(self):
        return None


ENVS["webshop_real"] = WebShopReal


# ---------------------------------------------------------------------------------------------------------
# 3. InterCode-SQL (ENVS.md section 3): Spider-like sqlite databases behind a MySQL face
# ---------------------------------------------------------------------------------------------------------
# The real benchmark asks Spider questions against a MySQL container; the agent runs one SQL statement per
# turn and ends with `submit`, which scores the LAST query's result against the gold query's result.
# Here: 26 generated databases (20 for train, 6 held out for test), questions from templates at Spider's
# four hardness levels, sqlite in memory dressed up as MySQL (SHOW TABLES, DESC, MySQL error texts), and a
# sandbox so that model-written SQL can neither keep changes nor touch the disk.


# --- 3.1 The reward (intercode sql_env.py get_reward; ENVS.md 3.2) -----------------------------------------

def _kendall_tau_b(x: list, y: list) -> float:
    """scipy.stats.kendalltau(x, y).statistic: tau-b with ties, nan when undefined (n < 2 or all tied).
    Same arithmetic as scipy, (C - D) / sqrt(pairs not tied in x) / sqrt(pairs not tied in y), clipped to
    [-1, 1], so that rewards round identically."""
    n = len(x)
    if n < 2:
        return math.nan
    if x == y:       # the common case (a correct answer), without the O(n^2) loop: every untied pair agrees
        untied = n * (n - 1) // 2 - sum(k * (k - 1) // 2 for k in Counter(x).values())
        concordant, discordant, only_x, only_y = untied, 0, 0, 0
    else:
        concordant = discordant = only_x = only_y = 0
        for i in range(n):
            for j in range(i + 1, n):
                dx = (x[i] > x[j]) - (x[i] < x[j])
                dy = (y[i] > y[j]) - (y[i] < y[j])
                if dx == 0 and dy == 0:
                    continue                 # tied in both: in neither term
                if dx == 0:
                    only_x += 1
                elif dy == 0:
                    only_y += 1
                elif dx == dy:
                    concordant += 1
                else:
                    discordant += 1
    untied_x, untied_y = concordant + discordant + only_y, concordant + discordant + only_x
    if untied_x == 0 or untied_y == 0:
        return math.nan
    tau = (concordant - discordant) / math.sqrt(untied_x) / math.sqrt(untied_y)
    return min(1.0, max(-1.0, tau))


def _sql_rows_in_order(rows: list, wanted: Counter) -> list:
    """The rows that belong to the multiset `wanted`, in their own order, each used at most its count."""
    left, kept = Counter(wanted), []
    for row in rows:
        if left[row] > 0:
            left[row] -= 1
            kept.append(row)
    return kept


def sql_reward(agent_rows, gold_rows) -> float:
    """InterCode-SQL's reward: multiset IoU of the rows (compared as str(row)) times Kendall tau-b of the
    common rows' order, rounded to 2. Negative when the order is reversed; NaN tau -> the IoU alone;
    both empty -> 1.0; an error string or None (no result set) -> 0.0."""
    if not isinstance(agent_rows, list) or not isinstance(gold_rows, list):
        return 0.0
    agent, gold = [str(r) for r in agent_rows], [str(r) for r in gold_rows]
    common = Counter(agent) & Counter(gold)
    union = Counter(agent) | Counter(gold)       # max of the two counts, as get_reward's groupby does
    if not union:
        return 1.0
    reward = sum(common.values()) / sum(union.values())
    if common:
        tau = _kendall_tau_b(_sql_rows_in_order(agent, common), _sql_rows_in_order(gold, common))
        if not math.isnan(tau):       # scipy's tau is a numpy float: round() is numpy's, rint(100 v) / 100
            reward = round(tau * reward * 100) / 100
    return float(reward)


# --- 3.2 The databases: Spider-style schemas, filled from a seed -------------------------------------------
# One line per table: (name, rows, "Column kind args | ..."). Kinds: pk (int id, auto_increment), person /
# label SUFFIX / title / pool POOL / code PREFIX (the table's unique name column), cat POOL (a category),
# int LO HI, real LO HI, year LO HI, date LO HI, fk TABLE (references TABLE's primary key, same name).

SQL_DOMAINS = {
    "orchestra": [
        ("conductor", 14, "Conductor_ID pk | Name person | Age int 26 72 | Nationality cat nationality | "
                          "Year_of_Work int 1 40"),
        ("orchestra", 12, "Orchestra_ID pk | Orchestra label Orchestra | Conductor_ID fk conductor | "
                          "Record_Company cat record_company | Year_of_Founded year 1900 2010"),
        ("performance", 26, "Performance_ID pk | Orchestra_ID fk orchestra | Type cat performance_type | "
                            "Date date 2005 2020 | Official_Ratings real 1 12 | Attendance int 300 5000"),
    ],
    "concert_singer": [
        ("singer", 20, "Singer_ID pk | Name person | Country cat country | Age int 18 62 | "
                       "Net_Worth_Millions real 1 200"),
        ("stadium", 10, "Stadium_ID pk | Name label Stadium | Location cat city | Capacity int 5000 80000 | "
                        "Opening_Year year 1950 2015"),
        ("concert", 18, "Concert_ID pk | Concert_Name title | Theme cat concert_theme | Stadium_ID fk stadium | "
                        "Year year 2010 2022"),
        ("appearance", 36, "Appearance_ID pk | Concert_ID fk concert | Singer_ID fk singer | Fee int 1000 90000 | "
                           "Songs_Performed int 1 12"),
    ],
    "flight_company": [
        ("airline", 10, "Airline_ID pk | Airline label Airways | Country cat country | Fleet_Size int 10 300 | "
                        "Founded_Year year 1925 2005"),
        ("airport", 14, "Airport_ID pk | Airport_Name label Airport | City cat city | Elevation int 5 2500 | "
                        "Runways int 1 6"),
        ("flight", 40, "Flight_ID pk | Flight_Number code FL | Airline_ID fk airline | Airport_ID fk airport | "
                       "Distance int 200 9000 | Price real 60 1500"),
    ],
    "pet_clinic": [
        ("owner", 18, "Owner_ID pk | Name person | City cat city | Age int 19 80"),
        ("pet", 26, "Pet_ID pk | Pet_Name pool pet_names | Pet_Type cat pet_type | Pet_Age int 1 16 | "
                    "Weight real 1 45 | Owner_ID fk owner"),
        ("vet_visit", 40, "Visit_ID pk | Pet_ID fk pet | Visit_Date date 2018 2023 | Reason cat visit_reason | "
                          "Cost real 20 600"),
    ],
    "library_1": [
        ("author", 16, "Author_ID pk | Name person | Nationality cat nationality | Birth_Year year 1930 1995"),
        ("book", 30, "Book_ID pk | Title title | Author_ID fk author | Genre cat book_genre | Pages int 90 900 | "
                     "Publication_Year year 1960 2022"),
        ("member", 22, "Member_ID pk | Name person | Membership_Level cat membership_level | Age int 12 85"),
        ("loan", 45, "Loan_ID pk | Book_ID fk book | Member_ID fk member | Days_Borrowed int 1 60 | "
                     "Late_Fee real 0 25"),
    ],
    "store_chain": [
        ("store", 10, "Store_ID pk | Store_Name label Market | City cat city | Area_Size int 200 5000 | "
                      "Opening_Year year 1985 2021"),
        ("product", 24, "Product_ID pk | Product_Name pool product_names | Category cat product_category | "
                        "Price real 1 400 | Stock int 0 500"),
        ("purchase", 50, "Purchase_ID pk | Store_ID fk store | Product_ID fk product | Quantity int 1 40 | "
                         "Total real 5 5000"),
    ],
    "soccer_league": [
        ("team", 12, "Team_ID pk | Name label United | City cat city | Founded year 1880 1990 | "
                     "Stadium_Capacity int 8000 75000"),
        ("player", 36, "Player_ID pk | Name person | Position cat soccer_position | Age int 17 38 | "
                       "Goals int 0 40 | Team_ID fk team"),
        ("game", 30, "Game_ID pk | Team_ID fk team | Season year 2015 2023 | Attendance int 2000 70000 | "
                     "Competition cat competition"),
    ],
    "movie_studio": [
        ("director", 14, "Director_ID pk | Name person | Nationality cat nationality | Age int 30 85"),
        ("movie", 30, "Movie_ID pk | Title title | Director_ID fk director | Genre cat movie_genre | "
                      "Release_Year year 1980 2023 | Budget_Million real 1 250 | Gross_Million real 1 900"),
        ("reviewer", 12, "Reviewer_ID pk | Name person | Affiliation cat newspaper"),
        ("rating", 45, "Rating_ID pk | Movie_ID fk movie | Reviewer_ID fk reviewer | Stars int 1 5"),
    ],
    "company_employee": [
        ("department", 8, "Department_ID pk | Department_Name pool company_departments | Location cat city | "
                          "Budget int 50000 900000"),
        ("employee", 34, "Employee_ID pk | Name person | Job_Title cat job_title | Salary int 30000 180000 | "
                         "Age int 21 66 | Department_ID fk department"),
        ("project", 14, "Project_ID pk | Project_Name label Project | Budget int 10000 500000 | "
                        "Start_Year year 2012 2023"),
        ("assignment", 50, "Assignment_ID pk | Employee_ID fk employee | Project_ID fk project | "
                           "Hours int 5 400 | Role cat project_role"),
    ],
    "university": [
        ("student", 36, "Student_ID pk | Name person | Major cat major | Age int 17 30 | GPA real 2 4"),
        ("course", 16, "Course_ID pk | Title pool course_titles | Department cat academic_department | "
                       "Credits int 1 5"),
        ("instructor", 12, "Instructor_ID pk | Name person | Department cat academic_department | "
                           "Salary int 40000 160000"),
        ("enrollment", 60, "Enrollment_ID pk | Student_ID fk student | Course_ID fk course | "
                           "Grade cat letter_grade | Semester cat semester"),
    ],
    "restaurant_1": [
        ("restaurant", 14, "Restaurant_ID pk | Name label Bistro | City cat city | Cuisine cat cuisine | "
                           "Rating real 1 5"),
        ("customer", 24, "Customer_ID pk | Name person | Age int 18 80 | Membership cat membership_level"),
        ("reservation", 50, "Reservation_ID pk | Restaurant_ID fk restaurant | Customer_ID fk customer | "
                            "Party_Size int 1 12 | Total_Bill real 15 900"),
    ],
    "museum_visit": [
        ("museum", 12, "Museum_ID pk | Name label Museum | City cat city | Num_of_Staff int 5 300 | "
                       "Open_Year year 1850 2015"),
        ("visitor", 26, "Visitor_ID pk | Name person | Level_of_Membership int 1 8 | Age int 8 85"),
        ("visit", 45, "Visit_ID pk | Museum_ID fk museum | Visitor_ID fk visitor | Num_of_Ticket int 1 10 | "
                      "Total_Spent real 5 400"),
        ("artwork", 30, "Artwork_ID pk | Title title | Type cat art_type | Year_Created year 1500 2020 | "
                        "Museum_ID fk museum"),
    ],
    "car_dealer": [
        ("manufacturer", 10, "Manufacturer_ID pk | Name pool car_makers | Country cat country | "
                             "Founded_Year year 1890 1990"),
        ("car_model", 24, "Model_ID pk | Model_Name pool car_model_names | Manufacturer_ID fk manufacturer | "
                          "Horsepower int 70 600 | MPG real 12 55 | Price int 15000 120000"),
        ("dealer", 10, "Dealer_ID pk | Dealer_Name label Motors | City cat city"),
        ("car_sale", 45, "Sale_ID pk | Model_ID fk car_model | Dealer_ID fk dealer | Sale_Year year 2015 2023 | "
                         "Units int 1 80"),
    ],
    "train_station": [
        ("train", 14, "Train_ID pk | Name label Express | Service cat train_service | Top_Speed int 80 320"),
        ("station", 16, "Station_ID pk | Name label Station | City cat city | Num_of_Platforms int 2 24 | "
                        "Annual_Passengers_Million real 1 90"),
        ("stop", 45, "Stop_ID pk | Train_ID fk train | Station_ID fk station | Stop_Order int 1 12 | "
                     "Daily_Trips int 1 30"),
    ],
    "apartment_rentals": [
        ("building", 10, "Building_ID pk | Name label Tower | City cat city | Floors int 3 60 | "
                         "Year_Built year 1920 2022"),
        ("apartment", 30, "Apartment_ID pk | Building_ID fk building | Apartment_Type cat apartment_type | "
                          "Bedrooms int 0 5 | Rent int 600 6000"),
        ("tenant", 26, "Tenant_ID pk | Name person | Age int 19 85 | Occupation cat occupation"),
        ("lease", 40, "Lease_ID pk | Apartment_ID fk apartment | Tenant_ID fk tenant | Start_Year year 2012 2023 | "
                      "Monthly_Rent int 600 6500"),
    ],
    "gym_1": [
        ("trainer", 10, "Trainer_ID pk | Name person | Specialty cat fitness_specialty | "
                        "Years_of_Experience int 1 30"),
        ("fitness_class", 18, "Class_ID pk | Class_Name pool class_names | Trainer_ID fk trainer | "
                              "Duration_Minutes int 30 90 | Max_Capacity int 8 40"),
        ("gym_member", 28, "Member_ID pk | Name person | Age int 16 75 | Membership_Type cat gym_membership"),
        ("booking", 50, "Booking_ID pk | Class_ID fk fitness_class | Member_ID fk gym_member | "
                        "Booking_Date date 2021 2023 | Fee real 5 40"),
    ],
    "music_label": [
        ("artist", 16, "Artist_ID pk | Name person | Country cat country | Genre cat music_genre | "
                       "Debut_Year year 1970 2020"),
        ("album", 28, "Album_ID pk | Title title | Artist_ID fk artist | Release_Year year 1975 2023 | "
                      "Copies_Sold int 1000 900000"),
        ("song", 50, "Song_ID pk | Song_Title title | Album_ID fk album | Duration_Seconds int 120 420 | "
                     "Streams_Million real 1 300"),
    ],
    "school_teachers": [
        ("teacher", 14, "Teacher_ID pk | Name person | Age int 25 65 | Hometown cat town"),
        ("subject", 10, "Subject_ID pk | Subject_Name pool school_subjects | Level cat school_level"),
        ("course_arrange", 30, "Arrange_ID pk | Subject_ID fk subject | Teacher_ID fk teacher | Grade int 1 12 | "
                               "Weekly_Hours int 1 8"),
    ],
    "shipping": [
        ("warehouse", 10, "Warehouse_ID pk | Name label Depot | City cat city | Capacity int 1000 90000"),
        ("supplier", 14, "Supplier_ID pk | Name label Supplies | Country cat country | Rating int 1 5"),
        ("shipment", 48, "Shipment_ID pk | Warehouse_ID fk warehouse | Supplier_ID fk supplier | "
                         "Weight_Kg real 1 900 | Cost int 20 5000 | Status cat shipment_status"),
    ],
    "cinema": [
        ("cinema", 10, "Cinema_ID pk | Name label Cinema | Location cat city | Capacity int 80 1500 | "
                       "Openning_Year year 1960 2020"),
        ("film", 20, "Film_ID pk | Title title | Genre cat movie_genre | Running_Time int 80 190"),
        ("schedule", 40, "Schedule_ID pk | Cinema_ID fk cinema | Film_ID fk film | Show_Times_Per_Day int 1 8 | "
                         "Price real 4 25"),
    ],
    # --- held out: only the test split uses these six ---
    "hospital": [
        ("department", 8, "Department_ID pk | Name pool hospital_departments | Floor int 1 9 | "
                          "Budget_Million real 1 40"),
        ("physician", 20, "Physician_ID pk | Name person | Position cat physician_position | "
                          "Department_ID fk department | Years_of_Experience int 1 35"),
        ("patient", 30, "Patient_ID pk | Name person | Age int 1 95 | Gender cat gender | Insurance cat insurance"),
        ("appointment", 50, "Appointment_ID pk | Patient_ID fk patient | Physician_ID fk physician | "
                            "Room int 100 450 | Cost real 40 900"),
    ],
    "wine_1": [
        ("winery", 12, "Winery_ID pk | Name label Estate | Region cat wine_region | Founded_Year year 1850 2010"),
        ("wine", 30, "Wine_ID pk | Name label Reserve | Grape cat grape | Winery_ID fk winery | "
                     "Vintage year 1995 2021 | Price int 8 250"),
        ("critic", 8, "Critic_ID pk | Name person | Publication cat newspaper"),
        ("review", 40, "Review_ID pk | Wine_ID fk wine | Critic_ID fk critic | Points int 80 100"),
    ],
    "election": [
        ("party", 8, "Party_ID pk | Party_Name label Party | Ideology cat ideology | Founded_Year year 1850 2015"),
        ("district", 14, "District_ID pk | Name label District | Population int 20000 900000 | "
                         "Area_Km real 10 3000"),
        ("candidate", 30, "Candidate_ID pk | Name person | Party_ID fk party | Age int 25 80 | Gender cat gender"),
        ("election_result", 40, "Result_ID pk | Candidate_ID fk candidate | District_ID fk district | "
                                "Votes int 500 90000 | Vote_Share real 1 70"),
    ],
    "hotel_booking": [
        ("hotel", 12, "Hotel_ID pk | Name label Hotel | City cat city | Star_Rating int 1 5 | "
                      "Num_of_Rooms int 20 600"),
        ("guest", 30, "Guest_ID pk | Name person | Country cat country | Age int 18 85"),
        ("stay", 50, "Stay_ID pk | Hotel_ID fk hotel | Guest_ID fk guest | Nights int 1 21 | "
                     "Total_Price real 60 9000 | Room_Type cat room_type"),
    ],
    "bank_1": [
        ("branch", 10, "Branch_ID pk | Branch_Name label Branch | City cat city | Open_Year year 1950 2020"),
        ("customer", 30, "Customer_ID pk | Name person | Age int 18 90 | Credit_Score int 300 850 | "
                         "Occupation cat occupation"),
        ("account", 45, "Account_ID pk | Customer_ID fk customer | Branch_ID fk branch | "
                        "Account_Type cat account_type | Balance real 0 90000"),
    ],
    "tv_channel": [
        ("channel", 12, "Channel_ID pk | Name label TV | Owner cat media_owner | Share_in_Percent real 1 18"),
        ("program", 20, "Program_ID pk | Name title | Origin cat country | Launch year 1990 2022 | "
                        "Genre cat tv_genre"),
        ("broadcast", 45, "Broadcast_ID pk | Channel_ID fk channel | Program_ID fk program | "
                          "Time_of_Day cat time_of_day | Viewers_Million real 1 12"),
    ],
}
SQL_TEST_DBS = ("hospital", "wine_1", "election", "hotel_booking", "bank_1", "tv_channel")
SQL_SPLITS = ("train", "test", "seen")  # seen: new questions on the train databases (not in the real benchmark)
SQL_TRAIN_PER_DB, SQL_TEST_SIZE = 60, 200      # 20 x 60 = 1200 train questions (IPR: 1500); 200 test (IPR: 200)

_SQL_FIRST_NAMES = ("James Maria Robert Linda Carlos Yuki Ahmed Sofia Ivan Priya Lucas Emma Omar Chloe Hiroshi "
                    "Grace Pedro Nina Daniel Fatima Liam Olivia Mateo Aisha Noah Elena Kenji Sara Victor "
                    "Hannah").split()
_SQL_LAST_NAMES = ("Smith Garcia Muller Rossi Tanaka Khan Dubois Silva Novak Patel Johnson Lopez Fischer Moreau "
                   "Costa Kim Nguyen Brown Santos Weber Ivanova Okafor Larsen Cohen Haddad Becker Romano Walsh "
                   "Sato Mendes").split()
_SQL_LABEL_WORDS = ("Maple Cedar Harbor Summit Riverside Golden Silver Eagle Lakeside Northgate Oakwood Pinecrest "
                    "Redwood Sunrise Westfield Bayview Crescent Highland Ironwood Meadow Stonebridge Willow "
                    "Brookside Clearwater Fairview Granite Hillcrest Kingsley Lancaster Millbrook").split()
_SQL_TITLE_ADJECTIVES = ("Silent Golden Broken Hidden Endless Crimson Distant Frozen Lonely Wild Electric Quiet "
                         "Burning Velvet Midnight").split()
_SQL_TITLE_NOUNS = ("River Road Garden Summer Horizon Mirror Harbor Storm Echo Kingdom Window Ocean Letter Forest "
                    "Signal").split()

_SQL_POOLS = {
    "nationality": ["United States", "United Kingdom", "France", "Germany", "Italy", "Japan", "Brazil"],
    "country": ["USA", "UK", "France", "Germany", "Japan", "Canada", "Australia", "Spain"],
    "city": ["New York", "London", "Paris", "Tokyo", "Chicago", "Boston", "Berlin", "Sydney", "Toronto"],
    "town": ["Springfield", "Riverton", "Oakville", "Fairfax", "Greenwood", "Milton"],
    "record_company": ["Decca Records", "Sony Music", "EMI", "Universal Music", "Columbia Records"],
    "performance_type": ["Auditions", "Live final", "Semi-final", "Results", "Encore"],
    "concert_theme": ["Free choice", "Bleeding Love", "Happy Tonight", "Wide Awake", "Party All Night"],
    "pet_type": ["dog", "cat", "rabbit", "parrot", "hamster"],
    "visit_reason": ["Vaccination", "Checkup", "Injury", "Dental", "Surgery"],
    "book_genre": ["Fiction", "Mystery", "Science", "History", "Poetry", "Fantasy"],
    "membership_level": ["Basic", "Silver", "Gold", "Platinum"],
    "product_category": ["Electronics", "Grocery", "Clothing", "Toys", "Garden", "Sports"],
    "soccer_position": ["Goalkeeper", "Defender", "Midfielder", "Forward"],
    "competition": ["League", "Cup", "Friendly", "Playoff"],
    "movie_genre": ["Drama", "Comedy", "Action", "Horror", "Animation", "Documentary"],
    "newspaper": ["Daily Herald", "City Times", "Film Weekly", "The Observer", "Morning Post"],
    "job_title": ["Engineer", "Analyst", "Manager", "Designer", "Accountant", "Technician"],
    "project_role": ["Lead", "Developer", "Tester", "Consultant"],
    "major": ["Computer Science", "Biology", "History", "Economics", "Physics", "Music"],
    "academic_department": ["Engineering", "Science", "Arts", "Business", "Medicine"],
    "letter_grade": ["A", "B", "C", "D", "F"],
    "semester": ["Fall", "Spring", "Summer"],
    "cuisine": ["Italian", "Chinese", "Mexican", "Indian", "French", "Thai"],
    "art_type": ["Painting", "Sculpture", "Photograph", "Drawing", "Textile"],
    "train_service": ["Daily", "Weekend", "Express", "Overnight"],
    "apartment_type": ["Studio", "Flat", "Duplex", "Penthouse"],
    "occupation": ["Teacher", "Nurse", "Engineer", "Student", "Lawyer", "Artist", "Retired"],
    "fitness_specialty": ["Yoga", "Strength", "Cardio", "Pilates", "Boxing"],
    "gym_membership": ["Monthly", "Annual", "Student", "Family"],
    "music_genre": ["Pop", "Rock", "Jazz", "Hip Hop", "Country", "Classical"],
    "school_level": ["Primary", "Middle", "High"],
    "shipment_status": ["Delivered", "In Transit", "Delayed", "Returned"],
    "physician_position": ["Surgeon", "Attending Physician", "Resident", "Head of Department"],
    "gender": ["Male", "Female"],
    "insurance": ["Public", "Private", "Uninsured"],
    "wine_region": ["Napa Valley", "Bordeaux", "Tuscany", "Rioja", "Barossa"],
    "grape": ["Merlot", "Chardonnay", "Cabernet Sauvignon", "Pinot Noir", "Syrah", "Riesling"],
    "ideology": ["Liberal", "Conservative", "Green", "Socialist", "Centrist"],
    "room_type": ["Single", "Double", "Suite", "Family"],
    "account_type": ["Checking", "Saving", "Business", "Student"],
    "media_owner": ["Global Media", "Star Group", "Northern Broadcasting", "City Network"],
    "tv_genre": ["News", "Drama", "Sports", "Comedy", "Reality"],
    "time_of_day": ["Morning", "Afternoon", "Night"],
    # pools for unique name columns (`pool`)
    "pet_names": ("Buddy Max Bella Luna Charlie Lucy Cooper Daisy Rocky Molly Bailey Coco Milo Rosie Toby Ruby "
                  "Oscar Lola Teddy Zoe Jack Pepper Ginger Leo Nala Simba Oreo Biscuit Shadow Maple").split(),
    "product_names": ["Smart Phone", "Laptop", "Headphones", "Coffee Maker", "Running Shoes", "Backpack",
                      "Desk Lamp", "Board Game", "Tennis Racket", "Garden Hose", "Rice Cooker", "Yoga Mat",
                      "Winter Jacket", "Toy Robot", "Blender", "Camera", "Water Bottle", "Sunglasses",
                      "Bicycle Helmet", "Tablet", "Puzzle", "Rain Boots", "Flower Pot", "Soccer Ball"],
    "company_departments": ["Sales", "Marketing", "Finance", "Research", "Human Resources", "Legal",
                            "Operations", "Support"],
    "course_titles": ["Calculus", "Linear Algebra", "Organic Chemistry", "World History", "Microeconomics",
                      "Data Structures", "Operating Systems", "Genetics", "Music Theory", "Statistics",
                      "Databases", "Quantum Physics", "Art History", "Macroeconomics", "Ecology", "Ethics"],
    "car_makers": ["Toyota", "Ford", "Volkswagen", "Honda", "Fiat", "Renault", "Hyundai", "Volvo", "Mazda", "Kia"],
    "car_model_names": ("Aurora Comet Falcon Horizon Javelin Meridian Nova Orion Pioneer Quasar Ranger Sierra "
                        "Tempest Vanguard Zephyr Atlas Breeze Cougar Drifter Ember Glider Harrier Lynx "
                        "Mistral").split(),
    "class_names": ["Morning Yoga", "Power Spin", "Core Blast", "Pilates Basics", "Boxing Fit", "Zumba Party",
                    "Step Cardio", "Kettlebell Burn", "Stretch and Relax", "Aqua Fit", "Circuit Training",
                    "Barre Sculpt", "Trail Running", "Tai Chi", "Bootcamp", "Dance Cardio", "Strength Basics",
                    "Mobility Flow"],
    "school_subjects": ["Math", "English", "Science", "History", "Geography", "Art", "Music", "Chemistry",
                        "Biology", "Physics"],
    "hospital_departments": ["Cardiology", "Neurology", "Oncology", "Pediatrics", "Radiology", "Surgery",
                             "Emergency", "Orthopedics"],
}

_SQL_TEXT_KINDS = {"person", "label", "title", "pool", "code", "cat"}
_SQL_NAME_KINDS = {"person", "label", "title", "pool", "code"}
_SQL_MYSQL_TYPE = {"pk": "int", "fk": "int", "int": "int", "year": "int", "real": "double", "date": "date",
                   "code": "varchar(10)", "pool": "varchar(50)"}          # everything else: text


def _sql_plural(phrase: str) -> str:
    """English plural of a noun phrase's last word: country -> countries, class -> classes."""
    head, _, word = phrase.rpartition(" ")
    irregular = {"person": "people", "staff": "staff", "Million": "Million"}
    if word in irregular:
        plural = irregular[word]
    elif re.search(r"(s|x|ch|sh)$", word):
        plural = word + "es"
    elif re.search(r"[^aeiou]y$", word):
        plural = word[:-1] + "ies"
    else:
        plural = word + "s"
    return f"{head} {plural}" if head else plural


def _sql_article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


class _SqlColumn(NamedTuple):
    name: str
    kind: str            # pk | fk | person | label | title | pool | code | cat | int | real | year | date
    args: tuple
    mysql_type: str

    @property
    def phrase(self) -> str:
        return self.name.replace("_", " ").lower()


class _SqlTable:
    """One table: its columns (with roles for the question templates) and its generated rows."""

    def __init__(self, name: str, columns: list, rows: list):
        self.name, self.columns, self.rows = name, columns, rows
        self.noun = name.replace("_", " ")
        self.plural = _sql_plural(self.noun)
        self.pk = columns[0].name
        self.label = next((c.name for c in columns if c.kind in _SQL_NAME_KINDS), None)   # the name/title column
        self.cats = [c.name for c in columns if c.kind == "cat"]
        self.nums = [c.name for c in columns if c.kind in ("int", "real", "year")]
        self.fks = {c.name: c.args[0] for c in columns if c.kind == "fk"}              # column -> parent table

    def column(self, name: str) -> _SqlColumn:
        return next(c for c in self.columns if c.name == name)

    def phrase(self, column: str) -> str:
        """How a question names a column: Year_of_Work -> 'year of work'; orchestra.Orchestra -> 'name'."""
        return "name" if column.lower() == self.name else self.column(column).phrase

    def values(self, name: str) -> list:
        """The distinct values of a column, sorted."""
        i = [c.name for c in self.columns].index(name)
        return sorted({row[i] for row in self.rows})

    def create_sql(self) -> str:
        parts = []
        for c in self.columns:
            collate = " COLLATE NOCASE" if c.kind in _SQL_TEXT_KINDS else ""   # MySQL's case-insensitive collation
            parts.append(f"{c.name} {c.mysql_type}{' PRIMARY KEY' if c.kind == 'pk' else ''}{collate}")
        parts += [f"FOREIGN KEY ({col}) REFERENCES {parent}({col})" for col, parent in self.fks.items()]
        return f"CREATE TABLE {self.name} ({', '.join(parts)})"


def _sql_parse_columns(spec: str) -> list:
    columns = []
    for part in spec.split("|"):
        name, kind, *args = part.split()
        columns.append(_SqlColumn(name, kind, tuple(args), _SQL_MYSQL_TYPE.get(kind, "text")))
    return columns


def _sql_column_values(column: _SqlColumn, n: int, rng, tables: dict) -> list:
    """n values for one column. Categories are skewed so 'the most common X' usually has one answer;
    foreign keys use about 70% of the parent's ids so that 'X without any Y' questions have answers."""
    kind, args = column.kind, column.args
    if kind == "pk":
        return list(range(1, n + 1))
    if kind == "person":
        return [f"{a} {b}" for a, b in rng.sample([(a, b) for a in _SQL_FIRST_NAMES for b in _SQL_LAST_NAMES], n)]
    if kind == "label":
        return [f"{word} {args[0]}" for word in rng.sample(_SQL_LABEL_WORDS, n)]
    if kind == "title":
        pairs = [(a, b) for a in _SQL_TITLE_ADJECTIVES for b in _SQL_TITLE_NOUNS]
        return [f"{a} {b}" for a, b in rng.sample(pairs, n)]
    if kind == "pool":
        return rng.sample(_SQL_POOLS[args[0]], n)
    if kind == "code":
        return [f"{args[0]}{k}" for k in rng.sample(range(100, 1000), n)]
    if kind == "cat":
        pool = _SQL_POOLS[args[0]]
        choices = rng.sample(pool, min(len(pool), rng.randint(3, 6)))
        weights = [rng.randint(1, 8) for _ in choices]
        return rng.choices(choices, weights, k=n)
    if kind in ("int", "year"):
        return [rng.randint(int(args[0]), int(args[1])) for _ in range(n)]
    if kind == "real":
        return [round(rng.uniform(float(args[0]), float(args[1])), 1) for _ in range(n)]
    if kind == "date":
        return [f"{rng.randint(int(args[0]), int(args[1]))}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
                for _ in range(n)]
    if kind == "fk":
        parent_ids = [row[0] for row in tables[args[0]].rows]
        used = rng.sample(parent_ids, max(2, round(0.7 * len(parent_ids))))
        return [rng.choice(used) for _ in range(n)]
    raise ValueError(f"unknown column kind {kind!r}")


class _SqlDatabase:
    """A generated database: table specs and rows, and a pristine in-memory sqlite copy that episodes copy."""

    def __init__(self, name: str, seed: int):
        self.name, self.tables = name, {}
        rng = stable_rng(seed, "intercode_sql", name)
        for table_name, n_rows, spec in SQL_DOMAINS[name]:
            columns = _sql_parse_columns(spec)
            for c in columns:                                     # a name pool may be smaller than asked
                if c.kind == "pool":
                    n_rows = min(n_rows, len(_SQL_POOLS[c.args[0]]))
                if c.kind == "label":
                    n_rows = min(n_rows, len(_SQL_LABEL_WORDS))
            values = [_sql_column_values(c, n_rows, rng, self.tables) for c in columns]
            self.tables[table_name] = _SqlTable(table_name, columns, list(zip(*values)))
        self.pristine = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        for table in self.tables.values():
            self.pristine.execute(table.create_sql())
            marks = ", ".join("?" * len(table.columns))
            self.pristine.executemany(f"INSERT INTO {table.name} VALUES ({marks})", table.rows)


# --- 3.3 The MySQL face and the sandbox (ENVS.md 3.5, DESIGN.md 7) -------------------------------------------
# Each episode works on its own in-memory copy of its database, made from the pristine one with sqlite's
# backup API on the first statement (so reset and clone of a fresh episode cost nothing). The authorizer
# refuses ATTACH/DETACH (VACUUM INTO attaches its target file, so it is refused too), every PRAGMA, virtual
# tables and load_extension; temp data stays in memory; a progress handler stops a query after a budget of
# VM steps or wall time; at most SQL_MAX_ROWS rows come back. sqlite-only statements read as MySQL syntax errors.

SQL_MAX_ROWS = 1000
SQL_MAX_VM_STEPS = 2_000_000          # about 20-60 ms of sqlite work
SQL_MAX_SECONDS = 0.25
_SQL_PROGRESS_EVERY = 1000                # VM instructions between two budget checks
_SQL_DENIED_ACTIONS = {sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH, sqlite3.SQLITE_PRAGMA,
                       sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_VTABLE}
_SQL_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}
_SQL_RUNNABLE = re.compile(r"^\(*\s*(select|with|insert|update|delete|replace|create|drop|alter)\b", re.I)
_SQL_SHOW_TABLES = re.compile(r"^show\s+(?:full\s+)?tables(?:\s+(?:from|in)\s+`?(\w+)`?)?$", re.I)
_SQL_SHOW_DATABASES = re.compile(r"^show\s+(?:databases|schemas)$", re.I)
_SQL_DESCRIBE = re.compile(r"^(?:desc|describe|explain|show\s+(?:full\s+)?(?:columns|fields)\s+(?:from|in))"
                           r"\s+`?(\w+)`?(?:\.`?(\w+)`?)?(?:\s+(?:from|in)\s+`?(\w+)`?)?$", re.I)
_SQL_USE = re.compile(r"^use\s+`?(\w+)`?$", re.I)
_SQL_SQLITE_INTERNAL = re.compile(r"\b(sqlite_\w+|load_extension)\s*(\()?", re.I)
_SQL_SCHEMA_STATEMENT = re.compile(r"^\s*(show|desc|describe|explain|use)\b", re.I)
_SQL_CLAUSES = re.compile(r"\b(select|from|join|on|using|where|group\s+by|having|order\s+by|limit|set|values)\b",
                          re.I)
_SQL_CLAUSE_NAMES = {"select": "field list", "set": "field list", "where": "where clause", "on": "on clause",
                     "group by": "group statement", "having": "having clause", "order by": "order clause",
                     "from": "from clause", "join": "from clause", "using": "from clause"}


def _sql_statement(sql: str) -> str:
    """A statement without surrounding blanks and trailing semicolons, for the MySQL-only commands."""
    return re.sub(r"[\s;]+$", "", sql.strip())


def _mysql_concat(*args):
    return None if any(a is None for a in args) else "".join(str(a) for a in args)


def _mysql_year(value):
    match = re.match(r"\s*(\d{4})", str(value)) if value is not None else None
    return int(match.group(1)) if match else None


class _MySQLSession:
    """One episode's connection: `execute(sql)` answers like InterCode's exec_action with MySQL behind it:
    a list of row tuples, None for a statement without a result set, or 'Error executing query: ...'."""

    def __init__(self, db: _SqlDatabase):
        self.db = db
        self.conn = None                 # the private copy, made on the first statement
        self._trusted = False            # our own PRAGMAs (DESC) pass the authorizer
        self._deadline, self._steps = 0.0, 0

    def clone(self) -> "_MySQLSession":
        other = _MySQLSession(self.db)
        if self.conn is not None:
            other.conn = other._open_copy(self.conn)
        return other

    def _open_copy(self, source: sqlite3.Connection) -> sqlite3.Connection:
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        source.backup(conn)
        conn.execute("PRAGMA temp_store = MEMORY")        # temp tables and big sorts never spill to disk
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 20_000)  # caps every string, blob and row
        conn.create_function("CONCAT", -1, _mysql_concat, deterministic=True)
        conn.create_function("IF", 3, lambda cond, a, b: a if cond else b, deterministic=True)
        conn.create_function("YEAR", 1, _mysql_year, deterministic=True)
        conn.set_authorizer(self._authorize)
        conn.set_progress_handler(self._over_budget, _SQL_PROGRESS_EVERY)
        return conn

    def _authorize(self, action, arg1, arg2, db_name, trigger):
        if self._trusted:
            return sqlite3.SQLITE_OK
        if action in _SQL_DENIED_ACTIONS:
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _SQL_DENIED_FUNCTIONS:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def _over_budget(self) -> bool:
        self._steps += _SQL_PROGRESS_EVERY
        return self._steps > SQL_MAX_VM_STEPS or time.perf_counter() > self._deadline

    def _connection(self) -> sqlite3.Connection:
        if self.conn is None:
            self.conn = self._open_copy(self.db.pristine)
        return self.conn

    # -- statements ------------------------------------------------------------------------------------------
    def execute(self, sql: str):
        sql = sql.strip()
        if not sql:
            return None                          # mysql.connector sends nothing for an empty statement
        self._deadline, self._steps = time.perf_counter() + SQL_MAX_SECONDS, 0
        try:
            return self._dispatch(sql)
        except Exception as err:                 # sqlite's errors (and anything unforeseen) in MySQL's words
            return self._error(self._mysql_message(str(err), sql))

    def _dispatch(self, sql: str):
        statement = _sql_statement(sql)
        if _SQL_SHOW_TABLES.match(statement):
            other = _SQL_SHOW_TABLES.match(statement).group(1)
            if other and other.lower() != self.db.name:
                return self._error(f"Unknown database '{other}'")
            return self._show_tables()
        if _SQL_SHOW_DATABASES.match(statement):
            return [(self.db.name,)]
        if _SQL_USE.match(statement):
            name = _SQL_USE.match(statement).group(1)
            return None if name.lower() == self.db.name else self._error(f"Unknown database '{name}'")
        if _SQL_DESCRIBE.match(statement):
            first, second, from_db = _SQL_DESCRIBE.match(statement).groups()
            db_name, table = (first, second) if second else (from_db or self.db.name, first)
            return self._describe(db_name.lower(), table)
        if not _SQL_RUNNABLE.match(sql):
            return self._error(self._syntax_error(sql, 0))
        if internal := _SQL_SQLITE_INTERNAL.search(sql):          # sqlite's own tables and functions stay hidden
            name = internal.group(1)
            return self._error(f"FUNCTION {self.db.name}.{name} does not exist" if internal.group(2)
                               else f"Table '{self.db.name}.{name.lower()}' doesn't exist")
        if self.db.name + "." in sql.lower():                  # MySQL's `db.table` -> `table`
            sql = re.sub(rf"\b{self.db.name}\.", "", sql, flags=re.I)
        return self._run(sql)

    def _run(self, sql: str):
        cursor = self._connection().cursor()
        try:
            cursor.execute(sql)
            return cursor.fetchmany(SQL_MAX_ROWS) if cursor.description else None
        finally:
            cursor.close()

    def _trusted_query(self, sql: str) -> list:
        self._trusted = True
        try:
            return self._connection().execute(sql).fetchall()
        finally:
            self._trusted = False

    def _show_tables(self) -> list:
        names = self._trusted_query("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                                    "AND name NOT LIKE 'sqlite_%'")
        return sorted((name.lower(),) for (name,) in names)      # lower_case_table_names=1

    def _describe(self, db_name: str, table: str):
        """MySQL's DESC rows: (Field, Type, Null, Key, Default, Extra)."""
        info = self._trusted_query(f'PRAGMA table_info("{table}")') if db_name == self.db.name else []
        if not info:
            return self._error(f"Table '{db_name}.{table.lower()}' doesn't exist")
        foreign = {row[3] for row in self._trusted_query(f'PRAGMA foreign_key_list("{table}")')}
        n_keys = sum(1 for row in info if row[5])
        rows = []
        for _, field, type_, not_null, default, pk in info:
            type_ = type_.lower() or "text"
            auto = pk and n_keys == 1 and type_.startswith("int")
            rows.append((field, type_, "NO" if pk or not_null else "YES",
                         "PRI" if pk else ("MUL" if field in foreign else ""), default,
                         "auto_increment" if auto else ""))
        return rows

    # -- MySQL error texts -----------------------------------------------------------------------------------
    @staticmethod
    def _error(message: str) -> str:
        return f"Error executing query: {message}"

    @staticmethod
    def _syntax_error(sql: str, position: int) -> str:
        line = sql.count("\n", 0, position) + 1
        return ("You have an error in your SQL syntax; check the manual that corresponds to your MySQL server "
                f"version for the right syntax to use near '{sql[position:position + 80]}' at line {line}")

    def _mysql_message(self, message: str, sql: str) -> str:
        """sqlite's error text -> what MySQL 8 says for the same mistake."""
        db = self.db.name
        if m := re.match(r"no such table: (?:main\.)?(\S+)", message):
            name = m.group(1).lower()
            return f"Table '{name if '.' in name else f'{db}.{name}'}' doesn't exist"
        if m := re.match(r"no such column: (\S+)", message):
            return f"Unknown column '{m.group(1)}' in '{_sql_clause_of(sql, m.group(1))}'"
        if m := re.match(r"ambiguous column name: (\S+)", message):
            return f"Column '{m.group(1)}' in {_sql_clause_of(sql, m.group(1))} is ambiguous"
        if m := re.match(r'(?:near|unrecognized token:) "(.*)"', message, re.S):
            position = sql.find(m.group(1))
            return self._syntax_error(sql, position if position >= 0 else 0)
        if "incomplete input" in message:
            return self._syntax_error(sql, len(sql))
        if m := re.match(r"(?:no such function|not authorized to use function): (\w+)", message):
            return f"FUNCTION {db}.{m.group(1)} does not exist"
        if m := re.match(r"wrong number of arguments to function (\w+)", message):
            return f"Incorrect parameter count in the call to native function '{m.group(1)}'"
        if m := re.match(r"(?:table|view) (\S+) already exists", message):
            return f"Table '{m.group(1)}' already exists"
        if m := re.match(r"(?:UNIQUE|PRIMARY KEY) constraint failed: (\w+)", message):
            return f"Duplicate entry for key '{m.group(1)}.PRIMARY'"
        if m := re.match(r"NOT NULL constraint failed: \w+\.(\w+)", message):
            return f"Column '{m.group(1)}' cannot be null"
        simple = {"misuse of aggregate": "Invalid use of group function",
                  "interrupted": "Query execution was interrupted, maximum statement execution time exceeded",
                  "authoriz": f"Access denied for user 'admin'@'%' to database '{db}'",     # our authorizer
                  "too many attached": f"Access denied for user 'admin'@'%' to database '{db}'",
                  "one statement at a time": "Use multi=True when executing multiple statements",
                  "do not have the same number of result columns":
                      "The used SELECT statements have a different number of columns",
                  "sub-select returns": "Operand should contain 1 column(s)",
                  "row value misused": "Operand should contain 1 column(s)",
                  "too big": "Got a packet bigger than 'max_allowed_packet' bytes"}
        for key, text in simple.items():
            if key in message:
                return text
        return self._syntax_error(sql, 0)


def _sql_clause_of(sql: str, column: str) -> str:
    """Which part of the statement a column name sits in, as MySQL names it ('field list', 'where clause')."""
    found = re.search(rf"(?<![\w.]){re.escape(column)}(?!\w)", sql, re.I)
    before = _SQL_CLAUSES.findall(sql[:found.start()] if found else sql)
    return _SQL_CLAUSE_NAMES.get(re.sub(r"\s+", " ", before[-1].lower()), "field list") if before else "field list"


# --- 3.4 Questions: Spider-style templates at the four hardness levels -------------------------------------
# Hardness follows the brief's reading of Spider's levels: easy = select/where/count, medium = group by /
# order by / limit / join, hard = nested IN / NOT IN / scalar subquery / having, extra = intersect / except /
# joins with grouped aggregates. Each template fills table and column names and values from one schema and
# gives a tempting wrong query; a question is kept only if its gold returns rows and the wrong one scores < 1.

class _SqlQuestion(NamedTuple):
    hardness: str
    text: str
    gold: str
    wrong: str | None        # a tempting wrong query whose result must differ from the gold's
    intent: str              # "count the number of different nationalities", for the expert's thoughts
    tables: tuple            # the tables involved, the one the question is about first
    column: tuple            # (table, column) the expert's thought names and its mistake renames
    tie: tuple | None = None  # (sql, k): the first k+1 sort keys of an ORDER BY ... LIMIT k gold


def _sql_lit(value) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


def _sql_middle(values: list, rng):
    """A value from the middle half of sorted distinct values, so both sides of a threshold have rows."""
    lo = len(values) // 4
    return values[rng.randint(lo, max(lo, 3 * len(values) // 4 - 1))]


def _sql_group_sizes(t: _SqlTable, column: str) -> list:
    """How many rows share each value of a column."""
    i = [c.name for c in t.columns].index(column)
    return list(Counter(row[i] for row in t.rows).values())


# single-table templates: (t, rng) -> _SqlQuestion | None when the table lacks the columns it needs

def _q_count_all(t, rng):
    text = rng.choice([f"How many {t.plural} are there?", f"Count the number of {t.plural}."])
    return _SqlQuestion("easy", text, f"SELECT count(*) FROM {t.name}", None, f"count the {t.plural}",
                        (t.name,), (t.name, t.pk))


def _q_count_where(t, rng):
    if not t.cats:
        return None
    c = rng.choice(t.cats)
    v = rng.choice(t.values(c))
    return _SqlQuestion("easy", f"How many {t.plural} have {t.phrase(c)} {v}?",
                        f"SELECT count(*) FROM {t.name} WHERE {c} = {_sql_lit(v)}", f"SELECT count(*) FROM {t.name}",
                        f"count the {t.plural} whose {t.phrase(c)} is {v}", (t.name,), (t.name, c))


def _q_names_where_category(t, rng):
    if not (t.label and t.cats):
        return None
    c = rng.choice(t.cats)
    v = rng.choice(t.values(c))
    names = _sql_plural(t.phrase(t.label))
    text = rng.choice([f"What are the {names} of the {t.plural} whose {t.phrase(c)} is {v}?",
                       f"List the {names} of {t.plural} with {t.phrase(c)} {v}."])
    return _SqlQuestion("easy", text, f"SELECT {t.label} FROM {t.name} WHERE {c} = {_sql_lit(v)}",
                        f"SELECT {t.label} FROM {t.name}", f"find the {names} of {t.plural} with {t.phrase(c)} {v}",
                        (t.name,), (t.name, c))


def _q_names_where_number(t, rng):
    if not (t.label and t.nums):
        return None
    n = rng.choice(t.nums)
    x = _sql_middle(t.values(n), rng)
    op, words = rng.choice([(">", "greater than"), ("<", "less than")])
    names = _sql_plural(t.phrase(t.label))
    return _SqlQuestion("easy", f"List the {names} of {t.plural} with {t.phrase(n)} {words} {x}.",
                        f"SELECT {t.label} FROM {t.name} WHERE {n} {op} {x}",
                        f"SELECT {t.label} FROM {t.name} WHERE {n} {op}= {x}",
                        f"list the {names} of {t.plural} with {t.phrase(n)} {words} {x}", (t.name,), (t.name, n))


def _q_count_distinct(t, rng):
    if not t.cats:
        return None
    c = rng.choice(t.cats)
    kinds = _sql_plural(t.phrase(c))
    text = rng.choice([f"Count the number of different {kinds} of {t.plural}.",
                       f"How many different {kinds} do the {t.plural} have?"])
    return _SqlQuestion("easy", text, f"SELECT count(DISTINCT {c}) FROM {t.name}",
                        f"SELECT count({c}) FROM {t.name}", f"count the number of different {kinds}",
                        (t.name,), (t.name, c))


def _q_value_of_named(t, rng):
    if not (t.label and (t.nums or t.cats)) or t.label == t.pk:
        return None
    x = rng.choice(t.nums + t.cats)
    name = rng.choice(t.values(t.label))
    return _SqlQuestion("easy", f"What is the {t.phrase(x)} of the {t.noun} whose {t.phrase(t.label)} is {name}?",
                        f"SELECT {x} FROM {t.name} WHERE {t.label} = {_sql_lit(name)}", f"SELECT {x} FROM {t.name}",
                        f"find the {t.phrase(x)} of {name}", (t.name,), (t.name, x))


def _q_distinct_categories(t, rng):
    if not t.cats:
        return None
    c = rng.choice(t.cats)
    kinds = _sql_plural(t.phrase(c))
    text = rng.choice([f"What are the distinct {kinds} of all {t.plural}?",
                       f"List all the different {kinds} of {t.plural}."])
    return _SqlQuestion("easy", text, f"SELECT DISTINCT {c} FROM {t.name}", f"SELECT {c} FROM {t.name}",
                        f"list the distinct {kinds}", (t.name,), (t.name, c))


def _q_aggregate_where(t, rng):
    if not (t.nums and t.cats):
        return None
    n, c = rng.choice(t.nums), rng.choice(t.cats)
    v = rng.choice(t.values(c))
    agg, word = rng.choice([("max", "maximum"), ("min", "minimum"), ("avg", "average"), ("sum", "total")])
    return _SqlQuestion("easy", f"What is the {word} {t.phrase(n)} of {t.plural} whose {t.phrase(c)} is {v}?",
                        f"SELECT {agg}({n}) FROM {t.name} WHERE {c} = {_sql_lit(v)}",
                        f"SELECT {agg}({n}) FROM {t.name}",
                        f"find the {word} {t.phrase(n)} of {t.plural} with {t.phrase(c)} {v}",
                        (t.name,), (t.name, n))


def _q_between(t, rng):
    if not t.nums:
        return None
    n = rng.choice(t.nums)
    values = t.values(n)
    if len(values) < 6:
        return None
    lo, hi = sorted(rng.sample(values[1:-1], 2))
    return _SqlQuestion("easy", f"How many {t.plural} have {t.phrase(n)} between {lo} and {hi}?",
                        f"SELECT count(*) FROM {t.name} WHERE {n} BETWEEN {lo} AND {hi}",
                        f"SELECT count(*) FROM {t.name} WHERE {n} > {lo} AND {n} < {hi}",
                        f"count the {t.plural} with {t.phrase(n)} between {lo} and {hi}", (t.name,), (t.name, n))


def _q_average_min_max(t, rng):
    if not t.nums:
        return None
    n = rng.choice(t.nums)
    return _SqlQuestion("medium", f"What are the average, minimum and maximum {t.phrase(n)} of all {t.plural}?",
                        f"SELECT avg({n}), min({n}), max({n}) FROM {t.name}",
                        f"SELECT avg({n}), max({n}), min({n}) FROM {t.name}",
                        f"get the average, minimum and maximum {t.phrase(n)}", (t.name,), (t.name, n))


def _q_count_per_category(t, rng):
    if not t.cats:
        return None
    c = rng.choice(t.cats)
    return _SqlQuestion("medium", f"Show each {t.phrase(c)} and the number of {t.plural} with that {t.phrase(c)}.",
                        f"SELECT {c}, count(*) FROM {t.name} GROUP BY {c}", f"SELECT {c}, count(*) FROM {t.name}",
                        f"count the {t.plural} for each {t.phrase(c)}", (t.name,), (t.name, c))


def _q_average_per_category(t, rng):
    if not (t.nums and t.cats):
        return None
    n, c = rng.choice(t.nums), rng.choice(t.cats)
    return _SqlQuestion("medium", f"What is the average {t.phrase(n)} of {t.plural} for each {t.phrase(c)}?",
                        f"SELECT {c}, avg({n}) FROM {t.name} GROUP BY {c}", f"SELECT {c}, avg({n}) FROM {t.name}",
                        f"compute the average {t.phrase(n)} for each {t.phrase(c)}", (t.name,), (t.name, n))


def _q_sorted_names(t, rng):
    if not (t.label and t.nums):
        return None
    n = rng.choice(t.nums)
    order, other, word = rng.choice([("ASC", "DESC", "ascending"), ("DESC", "ASC", "descending")])
    names = _sql_plural(t.phrase(t.label))
    return _SqlQuestion("medium", f"List the {names} of {t.plural} in {word} order of {t.phrase(n)}.",
                        f"SELECT {t.label} FROM {t.name} ORDER BY {n} {order}",
                        f"SELECT {t.label} FROM {t.name} ORDER BY {n} {other}",
                        f"sort the {t.plural} by {t.phrase(n)} in {word} order", (t.name,), (t.name, n))


def _q_extreme(t, rng):
    if not (t.label and t.nums):
        return None
    n = rng.choice(t.nums)
    order, other, word = rng.choice([("DESC", "ASC", "highest"), ("ASC", "DESC", "lowest")])
    return _SqlQuestion("medium", f"What is the {t.phrase(t.label)} of the {t.noun} with the {word} "
                                  f"{t.phrase(n)}?",
                        f"SELECT {t.label} FROM {t.name} ORDER BY {n} {order} LIMIT 1",
                        f"SELECT {t.label} FROM {t.name} ORDER BY {n} {other} LIMIT 1",
                        f"find the {t.noun} with the {word} {t.phrase(n)}", (t.name,), (t.name, n),
                        (f"SELECT {n} FROM {t.name} ORDER BY {n} {order} LIMIT 2", 1))


def _q_top_three(t, rng):
    if not (t.label and t.nums):
        return None
    n = rng.choice(t.nums)
    return _SqlQuestion("medium", f"Show the {t.phrase(t.label)} and {t.phrase(n)} of the three {t.plural} "
                                  f"with the highest {t.phrase(n)}.",
                        f"SELECT {t.label}, {n} FROM {t.name} ORDER BY {n} DESC LIMIT 3",
                        f"SELECT {t.label}, {n} FROM {t.name} ORDER BY {n} ASC LIMIT 3",
                        f"find the three {t.plural} with the highest {t.phrase(n)}", (t.name,), (t.name, n),
                        (f"SELECT {n} FROM {t.name} ORDER BY {n} DESC LIMIT 4", 3))


def _q_most_common(t, rng):
    if not t.cats:
        return None
    c = rng.choice(t.cats)
    return _SqlQuestion("medium", f"What is the most common {t.phrase(c)} among {t.plural}?",
                        f"SELECT {c} FROM {t.name} GROUP BY {c} ORDER BY count(*) DESC LIMIT 1",
                        f"SELECT {c} FROM {t.name} GROUP BY {c} ORDER BY count(*) ASC LIMIT 1",
                        f"find the most common {t.phrase(c)}", (t.name,), (t.name, c),
                        (f"SELECT count(*) FROM {t.name} GROUP BY {c} ORDER BY count(*) DESC LIMIT 2", 1))


def _q_count_either(t, rng):
    if not t.cats:
        return None
    c = rng.choice(t.cats)
    values = t.values(c)
    if len(values) < 3:
        return None
    v1, v2 = rng.sample(values, 2)
    return _SqlQuestion("medium", f"How many {t.plural} have {t.phrase(c)} {v1} or {v2}?",
                        f"SELECT count(*) FROM {t.name} WHERE {c} = {_sql_lit(v1)} OR {c} = {_sql_lit(v2)}",
                        f"SELECT count(*) FROM {t.name} WHERE {c} = {_sql_lit(v1)}",
                        f"count the {t.plural} with {t.phrase(c)} {v1} or {v2}", (t.name,), (t.name, c))


def _q_above_average(t, rng):
    if not (t.label and t.nums):
        return None
    n = rng.choice(t.nums)
    names = _sql_plural(t.phrase(t.label))
    return _SqlQuestion("hard", f"What are the {names} of {t.plural} whose {t.phrase(n)} is above the average "
                                f"{t.phrase(n)} of all {t.plural}?",
                        f"SELECT {t.label} FROM {t.name} WHERE {n} > (SELECT avg({n}) FROM {t.name})",
                        f"SELECT {t.label} FROM {t.name} WHERE {n} < (SELECT avg({n}) FROM {t.name})",
                        f"find the {t.plural} with {t.phrase(n)} above the average", (t.name,), (t.name, n))


def _q_beats_every(t, rng):
    if not (t.label and t.nums and t.cats):
        return None
    n, c = rng.choice(t.nums), rng.choice(t.cats)
    v = rng.choice(t.values(c))
    names, number = _sql_plural(t.phrase(t.label)), t.phrase(n)
    subquery = f"(SELECT {{}}({n}) FROM {t.name} WHERE {c} = {_sql_lit(v)})"
    return _SqlQuestion("hard", f"What are the {names} of {t.plural} with {_sql_article(number)} {number} larger "
                                f"than that of every {t.noun} whose {t.phrase(c)} is {v}?",
                        f"SELECT {t.label} FROM {t.name} WHERE {n} > {subquery.format('max')}",
                        f"SELECT {t.label} FROM {t.name} WHERE {n} > {subquery.format('min')}",
                        f"find the {t.plural} whose {number} beats every {t.noun} with {t.phrase(c)} {v}",
                        (t.name,), (t.name, n))


def _q_having_count(t, rng):
    if not t.cats:
        return None
    c = rng.choice(t.cats)
    sizes = sorted(set(_sql_group_sizes(t, c)) - {1})
    if not sizes:
        return None
    k = _sql_middle(sizes, rng)
    return _SqlQuestion("hard", f"Which {_sql_plural(t.phrase(c))} have at least {k} {t.plural}?",
                        f"SELECT {c} FROM {t.name} GROUP BY {c} HAVING count(*) >= {k}",
                        f"SELECT {c} FROM {t.name} GROUP BY {c} HAVING count(*) > {k}",
                        f"find the {_sql_plural(t.phrase(c))} with at least {k} {t.plural}", (t.name,), (t.name, c))


def _q_having_average(t, rng):
    if not (t.nums and t.cats):
        return None
    n, c = rng.choice(t.nums), rng.choice(t.cats)
    x = _sql_middle(t.values(n), rng)
    return _SqlQuestion("hard", f"Which {_sql_plural(t.phrase(c))} have an average {t.phrase(n)} greater than {x}?",
                        f"SELECT {c} FROM {t.name} GROUP BY {c} HAVING avg({n}) > {x}",
                        f"SELECT DISTINCT {c} FROM {t.name} WHERE {n} > {x}",
                        f"find the {_sql_plural(t.phrase(c))} whose average {t.phrase(n)} is above {x}",
                        (t.name,), (t.name, c))


def _q_intersect(t, rng):
    if not (t.nums and t.cats):
        return None
    n, c = rng.choice(t.nums), rng.choice(t.cats)
    x = _sql_middle(t.values(n), rng)
    kinds = _sql_plural(t.phrase(c))
    return _SqlQuestion("extra", f"Show the {kinds} shared by {t.plural} with {t.phrase(n)} above {x} and "
                                 f"{t.plural} with {t.phrase(n)} below {x}.",
                        f"SELECT {c} FROM {t.name} WHERE {n} > {x} INTERSECT "
                        f"SELECT {c} FROM {t.name} WHERE {n} < {x}",
                        f"SELECT {c} FROM {t.name} WHERE {n} > {x} OR {n} < {x}",
                        f"find the {kinds} that have {t.plural} on both sides of {x}", (t.name,), (t.name, c))


def _q_except(t, rng):
    if not (t.nums and t.cats):
        return None
    n, c = rng.choice(t.nums), rng.choice(t.cats)
    x = _sql_middle(t.values(n), rng)
    kinds = _sql_plural(t.phrase(c))
    return _SqlQuestion("extra", f"Which {kinds} have no {t.plural} with {t.phrase(n)} above {x}?",
                        f"SELECT {c} FROM {t.name} EXCEPT SELECT {c} FROM {t.name} WHERE {n} > {x}",
                        f"SELECT DISTINCT {c} FROM {t.name} WHERE {n} <= {x}",
                        f"find the {kinds} without any {t.noun} above {x}", (t.name,), (t.name, c))


# relation templates: a child table c whose foreign key points at parent table p: (c, p, rng)

def _sql_shown_column(t: _SqlTable) -> str | None:
    return t.label or (t.cats or t.nums or [None])[0]


def _sql_join(c, p) -> str:
    return f"{c.name} AS T1 JOIN {p.name} AS T2 ON T1.{p.pk} = T2.{p.pk}"


def _q_join_list(c, p, rng):
    shown = _sql_shown_column(c)
    if not (shown and p.label):
        return None
    return _SqlQuestion("medium", f"Show the {c.phrase(shown)} of each {c.noun} and the {p.phrase(p.label)} "
                                  f"of its {p.noun}.",
                        f"SELECT T1.{shown}, T2.{p.label} FROM {_sql_join(c, p)}",
                        f"SELECT T1.{shown}, T2.{p.label} FROM {c.name} AS T1 JOIN {p.name} AS T2 "
                        f"ON T1.{c.pk} = T2.{p.pk}",
                        f"list each {c.noun} with its {p.noun}", (c.name, p.name), (c.name, shown))


def _q_join_where(c, p, rng):
    shown = _sql_shown_column(c)
    if not (shown and p.cats):
        return None
    pc = rng.choice(p.cats)
    v = rng.choice(p.values(pc))
    return _SqlQuestion("medium", f"What are the {_sql_plural(c.phrase(shown))} of {c.plural} whose {p.noun} has "
                                  f"{p.phrase(pc)} {v}?",
                        f"SELECT T1.{shown} FROM {_sql_join(c, p)} WHERE T2.{pc} = {_sql_lit(v)}",
                        f"SELECT T1.{shown} FROM {c.name} AS T1 JOIN {p.name} AS T2 ON T1.{c.pk} = T2.{p.pk} "
                        f"WHERE T2.{pc} = {_sql_lit(v)}",
                        f"find the {c.plural} whose {p.noun} has {p.phrase(pc)} {v}", (c.name, p.name), (p.name, pc))


def _q_count_per_parent(c, p, rng):
    if not p.label:
        return None
    return _SqlQuestion("medium", f"Show the {p.phrase(p.label)} of each {p.noun} and the number of {c.plural} "
                                  f"it has.",
                        f"SELECT T2.{p.label}, count(*) FROM {_sql_join(c, p)} GROUP BY T2.{p.pk}",
                        f"SELECT T2.{p.label}, count(*) FROM {_sql_join(c, p)}",
                        f"count the {c.plural} of each {p.noun}", (p.name, c.name), (p.name, p.label))


def _q_average_per_parent(c, p, rng):
    if not (p.label and c.nums):
        return None
    n = rng.choice(c.nums)
    return _SqlQuestion("medium", f"For each {p.noun}, show its {p.phrase(p.label)} and the average "
                                  f"{c.phrase(n)} of its {c.plural}.",
                        f"SELECT T2.{p.label}, avg(T1.{n}) FROM {_sql_join(c, p)} GROUP BY T2.{p.pk}",
                        f"SELECT T2.{p.label}, avg(T1.{n}) FROM {_sql_join(c, p)}",
                        f"average the {c.phrase(n)} of the {c.plural} of each {p.noun}", (p.name, c.name),
                        (c.name, n))


def _q_without_children(c, p, rng):
    if not p.label:
        return None
    names = _sql_plural(p.phrase(p.label))
    return _SqlQuestion("hard", f"What are the {names} of {p.plural} that do not have any {c.noun}?",
                        f"SELECT {p.label} FROM {p.name} WHERE {p.pk} NOT IN (SELECT {p.pk} FROM {c.name})",
                        f"SELECT {p.label} FROM {p.name} WHERE {p.pk} IN (SELECT {p.pk} FROM {c.name})",
                        f"find the {p.plural} without any {c.noun}", (p.name, c.name), (p.name, p.label))


def _q_parent_with_child_above(c, p, rng):
    if not (p.label and c.nums):
        return None
    n = rng.choice(c.nums)
    x = _sql_middle(c.values(n), rng)
    names = _sql_plural(p.phrase(p.label))
    return _SqlQuestion("hard", f"What are the {names} of {p.plural} that have {_sql_article(c.noun)} {c.noun} with "
                                f"{c.phrase(n)} greater than {x}?",
                        f"SELECT {p.label} FROM {p.name} WHERE {p.pk} IN "
                        f"(SELECT {p.pk} FROM {c.name} WHERE {n} > {x})",
                        f"SELECT T2.{p.label} FROM {_sql_join(c, p)} WHERE T1.{n} > {x}",
                        f"find the {p.plural} with {_sql_article(c.noun)} {c.noun} whose {c.phrase(n)} is above {x}",
                        (p.name, c.name), (c.name, n))


def _q_having_children(c, p, rng):
    sizes = sorted(set(_sql_group_sizes(c, p.pk)) - {1})
    if not (p.label and sizes):
        return None
    k = _sql_middle(sizes, rng)
    names = _sql_plural(p.phrase(p.label))
    return _SqlQuestion("hard", f"Show the {names} of {p.plural} that have at least {k} {c.plural}.",
                        f"SELECT T2.{p.label} FROM {_sql_join(c, p)} GROUP BY T2.{p.pk} HAVING count(*) >= {k}",
                        f"SELECT T2.{p.label} FROM {_sql_join(c, p)} GROUP BY T2.{p.pk} HAVING count(*) > {k}",
                        f"find the {p.plural} with at least {k} {c.plural}", (p.name, c.name), (p.name, p.label))


def _q_most_children(c, p, rng):
    if not p.label:
        return None
    return _SqlQuestion("extra", f"What is the {p.phrase(p.label)} of the {p.noun} with the most {c.plural}?",
                        f"SELECT T2.{p.label} FROM {_sql_join(c, p)} GROUP BY T2.{p.pk} "
                        f"ORDER BY count(*) DESC LIMIT 1",
                        f"SELECT T2.{p.label} FROM {_sql_join(c, p)} GROUP BY T2.{p.pk} "
                        f"ORDER BY count(*) ASC LIMIT 1",
                        f"find the {p.noun} with the most {c.plural}", (p.name, c.name), (p.name, p.label),
                        (f"SELECT count(*) FROM {_sql_join(c, p)} GROUP BY T2.{p.pk} "
                         f"ORDER BY count(*) DESC LIMIT 2", 1))


def _q_highest_total(c, p, rng):
    if not (p.label and c.nums):
        return None
    n = rng.choice(c.nums)
    return _SqlQuestion("extra", f"What is the {p.phrase(p.label)} of the {p.noun} whose {c.plural} have the "
                                 f"highest total {c.phrase(n)}?",
                        f"SELECT T2.{p.label} FROM {_sql_join(c, p)} GROUP BY T2.{p.pk} "
                        f"ORDER BY sum(T1.{n}) DESC LIMIT 1",
                        f"SELECT T2.{p.label} FROM {_sql_join(c, p)} ORDER BY T1.{n} DESC LIMIT 1",
                        f"find the {p.noun} with the highest total {c.phrase(n)}", (p.name, c.name), (c.name, n),
                        (f"SELECT sum(T1.{n}) FROM {_sql_join(c, p)} GROUP BY T2.{p.pk} "
                         f"ORDER BY sum(T1.{n}) DESC LIMIT 2", 1))


def _q_both_kinds(c, p, rng):
    if not (p.label and c.cats):
        return None
    cc = rng.choice(c.cats)
    values = c.values(cc)
    if len(values) < 2:
        return None
    v1, v2 = rng.sample(values, 2)
    names, a = _sql_plural(p.phrase(p.label)), _sql_article(c.noun)
    return _SqlQuestion("extra", f"Show the {names} of {p.plural} that have both {a} {c.noun} with {c.phrase(cc)} "
                                 f"{v1} and {a} {c.noun} with {c.phrase(cc)} {v2}.",
                        f"SELECT T2.{p.label} FROM {_sql_join(c, p)} WHERE T1.{cc} = {_sql_lit(v1)} INTERSECT "
                        f"SELECT T2.{p.label} FROM {_sql_join(c, p)} WHERE T1.{cc} = {_sql_lit(v2)}",
                        f"SELECT T2.{p.label} FROM {_sql_join(c, p)} WHERE T1.{cc} = {_sql_lit(v1)} "
                        f"OR T1.{cc} = {_sql_lit(v2)}",
                        f"find the {p.plural} with {c.plural} of both kinds", (p.name, c.name), (c.name, cc))


def _q_none_of_kind(c, p, rng):
    if not (p.label and c.cats):
        return None
    cc = rng.choice(c.cats)
    v = rng.choice(c.values(cc))
    names = _sql_plural(p.phrase(p.label))
    return _SqlQuestion("extra", f"Find the {names} of {p.plural} that have no {c.noun} with {c.phrase(cc)} {v}.",
                        f"SELECT {p.label} FROM {p.name} EXCEPT SELECT T2.{p.label} FROM {_sql_join(c, p)} "
                        f"WHERE T1.{cc} = {_sql_lit(v)}",
                        f"SELECT T2.{p.label} FROM {_sql_join(c, p)} WHERE T1.{cc} != {_sql_lit(v)}",
                        f"find the {p.plural} without {_sql_article(c.noun)} {c.noun} whose {c.phrase(cc)} is {v}",
                        (p.name, c.name), (c.name, cc))


# link templates: a table l with foreign keys to two named tables a and b: (l, a, b, rng)

def _sql_join3(l, a, b) -> str:
    return (f"{l.name} AS T1 JOIN {a.name} AS T2 ON T1.{a.pk} = T2.{a.pk} "
            f"JOIN {b.name} AS T3 ON T1.{b.pk} = T3.{b.pk}")


def _q_link_list(l, a, b, rng):
    return _SqlQuestion("medium", f"List the {a.phrase(a.label)} of the {a.noun} and the {b.phrase(b.label)} "
                                  f"of the {b.noun} for each {l.noun}.",
                        f"SELECT T2.{a.label}, T3.{b.label} FROM {_sql_join3(l, a, b)}",
                        f"SELECT T2.{a.label}, T3.{b.label} FROM {l.name} AS T1 JOIN {a.name} AS T2 ON T1.{l.pk} = "
                        f"T2.{a.pk} JOIN {b.name} AS T3 ON T1.{b.pk} = T3.{b.pk}",
                        f"list the {a.noun} and {b.noun} of each {l.noun}", (l.name, a.name, b.name),
                        (a.name, a.label))


def _q_link_where(l, a, b, rng):
    if not b.cats:
        return None
    bc = rng.choice(b.cats)
    v = rng.choice(b.values(bc))
    names = _sql_plural(a.phrase(a.label))
    return _SqlQuestion("hard", f"Find the distinct {names} of {a.plural} that have {_sql_article(l.noun)} {l.noun} "
                                f"with {_sql_article(b.noun)} {b.noun} whose {b.phrase(bc)} is {v}.",
                        f"SELECT DISTINCT T2.{a.label} FROM {_sql_join3(l, a, b)} WHERE T3.{bc} = {_sql_lit(v)}",
                        f"SELECT T2.{a.label} FROM {_sql_join3(l, a, b)} WHERE T3.{bc} = {_sql_lit(v)}",
                        f"find the {a.plural} linked to {b.plural} with {b.phrase(bc)} {v}",
                        (l.name, a.name, b.name), (b.name, bc))


def _q_link_average(l, a, b, rng):
    if not a.nums:
        return None
    n = rng.choice(a.nums)
    return _SqlQuestion("extra", f"For each {b.noun}, show its {b.phrase(b.label)} and the average {a.phrase(n)} "
                                 f"of the {a.plural} in its {l.plural}, from the highest average to the lowest.",
                        f"SELECT T3.{b.label}, avg(T2.{n}) FROM {_sql_join3(l, a, b)} GROUP BY T3.{b.pk} "
                        f"ORDER BY avg(T2.{n}) DESC",
                        f"SELECT T3.{b.label}, avg(T2.{n}) FROM {_sql_join3(l, a, b)} GROUP BY T3.{b.pk} "
                        f"ORDER BY avg(T2.{n}) ASC",
                        f"average the {a.phrase(n)} of the {a.plural} of each {b.noun}",
                        (l.name, a.name, b.name), (a.name, n))


_SQL_SINGLE_TABLE_TEMPLATES = (_q_count_all, _q_count_where, _q_names_where_category, _q_names_where_number,
                               _q_count_distinct, _q_value_of_named, _q_distinct_categories, _q_aggregate_where,
                               _q_between, _q_average_min_max, _q_count_per_category, _q_average_per_category,
                               _q_sorted_names, _q_extreme, _q_top_three, _q_most_common, _q_count_either,
                               _q_above_average, _q_beats_every, _q_having_count, _q_having_average, _q_intersect,
                               _q_except)
_SQL_RELATION_TEMPLATES = (_q_join_list, _q_join_where, _q_count_per_parent, _q_average_per_parent,
                           _q_without_children, _q_parent_with_child_above, _q_having_children, _q_most_children,
                           _q_highest_total, _q_both_kinds, _q_none_of_kind)
_SQL_LINK_TEMPLATES = (_q_link_list, _q_link_where, _q_link_average)
_SQL_HARDNESS_SHARES = {"easy": 0.24, "medium": 0.43, "hard": 0.17, "extra": 0.16}   # Spider dev (ENVS.md 3.4)


def _sql_gold_rows(session: _MySQLSession, q: _SqlQuestion) -> list | None:
    """The gold's rows if the question passes its checks: rows that say something, a tie-free ORDER BY ...
    LIMIT, and a tempting wrong query that scores below 1."""
    rows = session.execute(q.gold)
    if not isinstance(rows, list) or all(v is None for row in rows for v in row):
        return None
    if q.tie:
        keys = session.execute(q.tie[0])
        if len(keys) > q.tie[1] and keys[q.tie[1]] == keys[q.tie[1] - 1]:
            return None
    wrong = session.execute(q.wrong) if q.wrong else None
    if isinstance(wrong, list) and len(wrong) == len(rows) and sql_reward(wrong, rows) == 1.0:
        return None
    return rows


def _sql_candidate_questions(db: _SqlDatabase, seed: int) -> list:
    """Every verified question the templates make for one database: [(question, gold_rows)], up to two
    different golds per template and table."""
    rng = stable_rng(seed, "intercode_sql", db.name, "questions")
    session, found = _MySQLSession(db), {}
    uses = [(make, (t,)) for t in db.tables.values() for make in _SQL_SINGLE_TABLE_TEMPLATES]
    uses += [(make, (c, db.tables[p])) for c in db.tables.values() for p in c.fks.values()
             for make in _SQL_RELATION_TEMPLATES]
    for link in db.tables.values():                       # a table with foreign keys to two named tables
        parents = [db.tables[p] for p in link.fks.values() if db.tables[p].label]
        if len(parents) == 2:
            uses += [(make, (link, *parents)) for make in _SQL_LINK_TEMPLATES]
    for make, args in uses:
        kept = 0
        for _ in range(4):
            q = make(*args, rng)
            if q is None:
                break
            if q.gold not in found and (rows := _sql_gold_rows(session, q)) is not None:
                found[q.gold] = (q, rows)
                kept += 1
            if kept == 2:
                break
    return list(found.values())


def _sql_sample_by_hardness(candidates: list, n: int, rng) -> list:
    """n questions with Spider dev's mix of hardness levels where the candidates allow it."""
    chosen = []
    for level, share in _SQL_HARDNESS_SHARES.items():
        pool = [c for c in candidates if c[0].hardness == level]
        chosen += rng.sample(pool, min(len(pool), round(n * share)))
    rest = [c for c in candidates if c not in chosen]
    chosen += rng.sample(rest, max(0, min(len(rest), n - len(chosen))))
    return chosen[:n]


# --- 3.5 The expert's realistic mistakes (the recovery group of ENVS.md 3.6) ---------------------------------

def _sql_wrong_column_name(table: str, column: str, pk: str) -> str:
    """A plausible wrong guess for a column: id for Conductor_ID, conductor_name for Name."""
    if column == pk:
        return "id"
    return f"{table}_name" if column.lower() in ("name", table) else f"{table}_{column.lower()}"


def _sql_make_mistake(db: _SqlDatabase, q: _SqlQuestion, roll: float, session: _MySQLSession):
    """About 14% of tasks start with a wrong column (-> Unknown column -> DESC -> fixed query), about 7% with
    a wrong table name (-> doesn't exist -> SHOW TABLES -> fixed query), as in IPR's ICL episodes.
    Returns (kind, wrong_sql, table) or None."""
    if roll < 0.14:
        table, column = q.column
        others = [c.name for t in q.tables for c in db.tables[t].columns]
        wrong = _sql_wrong_column_name(table, column, db.tables[table].pk)
        pattern = rf"(?<![\w]){re.escape(column)}(?!\w)"
        if others.count(column) != 1 or wrong in others or not re.search(pattern, q.gold):
            return None
        sql, kind, expected = re.sub(pattern, wrong, q.gold, count=1), "column", "Unknown column"
    elif roll < 0.21:
        table = q.tables[0]
        wrong = _sql_plural(table)
        if wrong in db.tables:
            return None
        sql = re.sub(rf"\b(FROM|JOIN) {table}\b", rf"\1 {wrong}", q.gold, count=1)
        kind, expected = "table", "doesn't exist"
    else:
        return None
    result = session.execute(sql)
    return (kind, sql, table) if isinstance(result, str) and expected in result else None


class _SqlTask(NamedTuple):
    db: _SqlDatabase
    question: _SqlQuestion
    gold_rows: list
    mistake: tuple | None     # (kind, wrong_sql, table) for the expert's first step, or None


_SQL_SPLIT_CACHE: dict = {}    # (split, seed) -> tasks; databases and questions are immutable, so shared


def _sql_build_split(split: str, seed: int) -> list:
    if (split, seed) in _SQL_SPLIT_CACHE:
        return _SQL_SPLIT_CACHE[split, seed]
    names = [name for name in SQL_DOMAINS if (name in SQL_TEST_DBS) == (split == "test")]
    trained = {t.question.gold for t in _sql_build_split("train", seed)} if split == "seen" else set()
    rng = stable_rng(seed, "intercode_sql", split)
    tasks = []
    for k, name in enumerate(names):
        db = _SqlDatabase(name, seed)
        if split == "train":
            n = SQL_TRAIN_PER_DB
        else:
            n = SQL_TEST_SIZE // len(names) + (k < SQL_TEST_SIZE % len(names))
        session = _MySQLSession(db)
        candidates = [c for c in _sql_candidate_questions(db, seed) if c[0].gold not in trained]
        for q, rows in _sql_sample_by_hardness(candidates, n, rng):
            roll = stable_rng(seed, "intercode_sql", name, q.gold, "mistake").random()
            tasks.append(_SqlTask(db, q, rows, _sql_make_mistake(db, q, roll, session)))
    rng.shuffle(tasks)
    _SQL_SPLIT_CACHE[split, seed] = tasks
    return tasks


# --- 3.6 The environment, the IPR wrapper and the expert -------------------------------------------------------

# IPR eval_agent/envs/intercode_sql_env.py's answer to an unparsable turn, verbatim (typos included). IPR also
# gives it for statements without a result set (USE, INSERT, DROP ...): their observation is None and its
# `"Error" in output` test raises TypeError into the same except branch. Its other branch, "[Executed
# Successfully with No Output]" for output == "", never fires: the observation is a list, None or an error.
SQL_NOT_UNDERSTOOD = (
    "I don't understand your input.\n Your input shoud include the key world \"Action:\".\n If you want to "
    "perform a query operation, please use the following format:\n Action: \n```sql\nthe mysql code\n```. And "
    "the action should be executable and should not contain natural language.\n If you have got the final "
    "answer, please use the following format:\n Action: submit. Remember your output should contain only one "
    "\"Action:\" part.")
SQL_OBS_LIMIT = 350                    # IPR cuts observations at 350 characters and appends "..."
_SQL_SUBMIT_THOUGHT = ("The code executed successfully without any errors and produced the expected output. "
                       "I can now submit the solution.")
_SQL_SHOW_THOUGHT = ("I should first find out what tables are available in this MySQL database that can help me "
                     "answer this question")
_SQL_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}


def _sql_observation(result) -> str:
    """What IPR shows after 'Observation: ' for InterCode's result (a row list, None, or an error string):
    errors other than 'Unknown ...' get a trailing newline; everything is cut at 350 characters."""
    if result is None:
        return SQL_NOT_UNDERSTOOD
    if isinstance(result, str):
        text = result if "Unknown" in result else result + "\n"
    else:
        text = str(result)
    return text[:SQL_OBS_LIMIT] + "..." if len(text) > SQL_OBS_LIMIT else text


class InterCodeSQL(TextEnv):
    """InterCode-SQL on generated Spider-like databases (sqlite in memory, speaking MySQL).

    An episode (the observations as the agent sees them after 'Observation: '):
        reset(i)          -> 'Count the number of different nationalities of conductors.'
        SHOW TABLES       -> "[('conductor',), ('orchestra',), ('performance',)]"
        DESC conductor    -> "[('Conductor_ID', 'int', 'NO', 'PRI', None, 'auto_increment'), ('Name', 'text', ..."
        SELECT COUNT(DISTINCT Nationality) FROM conductor   -> '[(3,)]'
        submit            -> '[(3,)]', reward 1.0 (IoU x Kendall tau of the last result vs the gold's), done

    Splits: train (20 databases, 60 questions each), test (200 questions on 6 other databases), and seen
    (200 other questions on the 20 train databases: not in the benchmark, for a model too small to read a new
    schema; the "seen" of ALFWorld's seen/unseen).
    Expert subgoals: explore (SHOW TABLES, DESC), query (the SQL; on mistake tasks a first wrong guess),
    fix (DESC or SHOW TABLES after an error, then the corrected query), submit.
    """
    name = "intercode_sql"
    default_max_steps = 10                                     # IPR configs/task/intercode_sql.json
    invalid_format = "Observation: " + SQL_NOT_UNDERSTOOD

    def __init__(self, split: str = "train", seed: int = 0, max_steps: int | None = None):
        if split not in SQL_SPLITS:
            raise ValueError(f"unknown split {split!r} for intercode_sql; choose one of {', '.join(SQL_SPLITS)}")
        super().__init__(split, seed, max_steps)
        self.tasks = _sql_build_split(split, seed)
        self.task, self._session = None, None
        self._last = None                       # InterCode's observation: the last statement's result
        self._tables_shown, self._described = False, frozenset()
        self._failed, self._last_error = False, ""

    def __len__(self) -> int:
        return len(self.tasks)

    def task_type(self, i: int) -> str:
        return self.tasks[i].question.hardness

    def clone(self) -> "InterCodeSQL":
        other = copy.copy(self)                # tasks and databases are shared; only the session is copied
        if self._session is not None:
            other._session = self._session.clone()
        return other

    # -- the agent-facing wrapper (IPR intercode_sql_env.py parse_conduct_action) --------------------------------
    def parse(self, llm_output: str) -> str | None:
        """'submit' anywhere in the action -> submit; else the first line of the first ```sql block."""
        match = self.action_pattern.search(llm_output.strip())
        if match is None:
            return None
        action = match.group(1)
        if "submit" in action:
            return "submit"
        blocks = re.findall(r"```sql(.*?)```", action, re.DOTALL)
        code = blocks[0].strip().split("\n")[0] if blocks else ""
        return code or None

    def render_action(self, action: str) -> str:
        return "submit" if action == "submit" else f"\n```sql\n{action}\n```"

    # -- the environment (intercode ic_env.py step / sql_env.py exec_action) --------------------------------------
    def _reset(self, i: int) -> str:
        self.task = self.tasks[i]
        self._session = _MySQLSession(self.task.db)            # a fresh copy of the database, made lazily
        self._last = None                                      # after InterCode's `use db` preprocess
        self._tables_shown, self._described = False, frozenset()
        self._failed, self._last_error = False, ""
        return self.task.question.text

    def _step(self, action: str):
        if action.strip() == "submit":        # scored on the last statement's result; IPR shows it uncut
            reward = sql_reward(self._last, self.task.gold_rows)
            return str(self._last), reward, True, {"won": reward == 1.0}
        result = self._session.execute(action)
        self._remember(action, result)
        return _sql_observation(result), 0.0, False, {"won": False}

    def _remember(self, action: str, result) -> None:
        """Keep what the expert decides from: the last result, the schema seen so far, an unresolved error."""
        self._last = result
        statement = _sql_statement(action)
        if not _SQL_SCHEMA_STATEMENT.match(statement):
            self._failed = isinstance(result, str)
            self._last_error = result if self._failed else ""
        elif isinstance(result, list) and _SQL_SHOW_TABLES.match(statement):
            self._tables_shown = True
        elif isinstance(result, list) and _SQL_DESCRIBE.match(statement):
            first, second, _ = _SQL_DESCRIBE.match(statement).groups()
            self._described = self._described | {(second or first).lower()}

    # -- the expert -------------------------------------------------------------------------------------------
    def expert_step(self):
        if self.done or self.task is None:
            return None
        q = self.task.question
        if self._answered():
            return _SQL_SUBMIT_THOUGHT, "submit", "submit"
        if self.t == 0 and self.task.mistake:
            return f"I should write a SQL query to {q.intent}.", self.task.mistake[1], "query"
        if self._failed:
            return self._expert_fix()
        if not self._tables_shown and not self._described:
            return _SQL_SHOW_THOUGHT, "SHOW TABLES", "explore"
        for k, table in enumerate(q.tables[:2]):
            if table not in self._described:
                return self._describe_thought(table, k), f"DESC {table}", "explore"
        return self._query_thought(), q.gold, "query"

    def _answered(self) -> bool:
        """Would `submit` score 1 now? (A reward of 1 needs the same multiset, so the same number of rows.)"""
        last, gold = self._last, self.task.gold_rows
        return isinstance(last, list) and len(last) == len(gold) and (last == gold or sql_reward(last, gold) == 1)

    def _describe_thought(self, table: str, k: int) -> str:
        q = self.task.question
        if k == 0:
            t = self.task.db.tables[table]
            topic = t.column(q.column[1]).phrase if q.column[0] == table and q.column[1] != t.pk else t.plural
            return f"I should check if the {table} table might have any information related to {topic}"
        return f"The question also involves the {table} table. I should check its columns as well"

    def _query_thought(self) -> str:
        q = self.task.question
        if len(q.tables) == 1:
            table, column = q.column
            return f"The {table} table has {_sql_article(column)} {column} field. I can use this to {q.intent}."
        if len(q.tables) == 2:
            first, second = (self.task.db.tables[t] for t in q.tables)
            key = next(iter(set(first.fks) & {second.pk} or set(second.fks) & {first.pk}))
            return (f"The {first.name} and {second.name} tables share the {key} column. I can join them to "
                    f"{q.intent}.")
        return (f"The {q.tables[0]} table links the {q.tables[1]} and {q.tables[2]} tables. I can join the three "
                f"tables to {q.intent}.")

    def _expert_fix(self):
        """After an error: look up what the error is about (once), then run the corrected query."""
        q, error, mistake = self.task.question, self._last_error, self.task.mistake
        table = mistake[2] if mistake else q.tables[0]
        if "doesn't exist" in error and not self._tables_shown:
            missing = re.search(r"Table '[^']*?\.([^']*)'", error)
            name = missing.group(1) if missing else table
            return (f"The `{name}` table I used in the SQL query does not exist. I should check what tables exist.",
                    "SHOW TABLES", "fix")
        if "Unknown column" in error and table not in self._described:
            wrong = re.search(r"Unknown column '(?:\w+\.)?([^']*)'", error)
            return (f"The `{table}` table doesn't have the `{wrong.group(1) if wrong else 'id'}` column I came up "
                    f"with. I should find out what columns are available.", f"DESC {table}", "fix")
        if "doesn't exist" in error:
            n = len(self.task.db.tables)
            thought = (f"There are {_SQL_NUMBER_WORDS.get(n, n)} tables. I can try writing the query using the "
                       f"`{table}` table.")
        elif "Unknown column" in error and mistake:
            thought = f"The `{table}` table has a `{q.column[1]}` column. I can now write the correct SQL query."
        elif "Unknown column" in error:
            thought = f"Now I know the columns of the `{table}` table. I can write a SQL query to {q.intent}."
        else:
            thought = f"The query did not work. I should write it again to {q.intent}."
        return thought, q.gold, "fix"


ENVS["intercode_sql"] = InterCodeSQL


def _sql_use_database(record):
    """IPR's preprocess_sql: switch to the task's database before the episode."""
    return f"use {record['extra']['db'] if 'extra' in record else record['db']}"


_sql_use_database.__annotations__ = {"record": Dict, "return": str}   # ic_env.py asserts these exact objects
_SQL_REAL_QUERY_THOUGHT = "I should write a SQL query that answers the question."


class InterCodeSQLReal(InterCodeSQL):
    """The real InterCode-SQL: intercode's SqlEnv on its MySQL Docker container, behind IPR's wrapper (ENVS.md 4).
    Needs `pip install intercode-bench`, Docker with intercode's `docker-env-sql` image (its setup.sh) and a task
    json such as IPR's ic_spider_test.json. Its expert runs the gold query and submits; it has no clone()."""
    name = "intercode_sql_real"

    def __init__(self, split: str = "test", seed: int = 0, max_steps: int | None = None,
                 data_path: str | None = None, image_name: str = "docker-env-sql"):
        TextEnv.__init__(self, split, seed, max_steps)
        self.instruction = INSTRUCTIONS["intercode_sql"]
        try:
            if not data_path:
                raise ValueError("no data_path given")
            from intercode.envs import SqlEnv
            self._env = SqlEnv(image_name, data_path=data_path, preprocess=_sql_use_database, verbose=False)
        except Exception as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise RuntimeError(f"intercode_sql_real needs `pip install intercode-bench`, Docker running "
                               f"intercode's {image_name} MySQL image, and data_path=<InterCode task json> "
                               f"({reason})") from None
        self._ran_gold = False

    def __len__(self) -> int:
        return len(self._env.data_loader)

    def task_type(self, i: int) -> str:
        return self._env.data_loader.get(i).get("hardness", "unknown")

    def clone(self):
        raise RuntimeError("intercode_sql_real cannot be cloned (one shared MySQL container); replay the actions")

    def _reset(self, i: int) -> str:
        self._env.reset(i)
        self._ran_gold = False
        return self._env.query

    def _step(self, action: str):
        observation, reward, done, _ = self._env.step(action)
        self._ran_gold = action == self._env.gold
        if done:
            return str(observation), float(reward), True, {"won": reward == 1.0}
        return _sql_observation(observation), 0.0, False, {"won": False}

    def expert_step(self):
        if self.done:
            return None
        if self._ran_gold:
            return _SQL_SUBMIT_THOUGHT, "submit", "submit"
        return _SQL_REAL_QUERY_THOUGHT, self._env.gold, "query"

    def expert(self, i: int) -> list:
        """The gold query, then submit (without playing it: the container cannot be cloned)."""
        gold = self._env.data_loader.get(i)["gold"]
        return [(_SQL_REAL_QUERY_THOUGHT, gold, "query"), (_SQL_SUBMIT_THOUGHT, "submit", "submit")]


ENVS["intercode_sql_real"] = InterCodeSQLReal


# ---------------------------------------------------------------------------------------------------------
# 4. For people: play a task in the terminal, or print the splits' statistics
# ---------------------------------------------------------------------------------------------------------
SPLITS = {"alfworld": tuple(ALFWORLD_SPLITS), "webshop": ("train", "test"), "intercode_sql": SQL_SPLITS}


def play(env: TextEnv, task: int) -> None:
    """Play one task: type an action (`hint` shows the expert's next move, `quit` leaves)."""
    print(env.reset(task))
    while not env.done:
        try:
            action = input(f"[step {env.t + 1}/{env.max_steps}] > ").strip()
        except EOFError:
            return
        if action == "quit":
            return
        if action == "hint":
            move = env.expert_step()
            print(f"  expert ({move[2]}): Thought: {move[0]}\n  Action: {move[1]}" if move else "  (no hint)")
            continue
        obs, reward, done, info = env.step(action)
        print(obs)
    print(f"episode over: reward {env.reward:.2f}, {'won' if env.won else 'not won'} after {env.t} steps")


def split_stats(name: str, seed: int = 0, **kw) -> str:
    """Tasks per split and type, and the distribution of the expert's trajectory lengths."""
    lines = []
    for split in SPLITS[name]:
        env = make(name, split=split, seed=seed, **kw)
        types, lengths = Counter(), Counter()
        for i in range(len(env)):
            types[env.task_type(i)] += 1
            lengths[len(env.expert(i))] += 1
        n = sum(lengths.values())
        mean = sum(k * v for k, v in lengths.items()) / max(1, n)
        lines.append(f"{name} {split}: {len(env)} tasks | " + ", ".join(f"{t} {c}" for t, c in sorted(types.items())))
        lines.append(f"  expert steps: mean {mean:.2f}, min {min(lengths)}, max {max(lengths)} | " +
                     " ".join(f"{k}:{v}" for k, v in sorted(lengths.items())))
    return "\n".join(lines)


def main(argv=None) -> None:
    import argparse
    parser = argparse.ArgumentParser(description="Offline ALFWorld, WebShop and InterCode-SQL")
    parser.add_argument("--env", default="alfworld", choices=sorted(SPLITS))
    parser.add_argument("--split", default="", help="default: the first evaluation split")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scene", default="full", choices=("full", "small"), help="ALFWorld room size")
    parser.add_argument("--play", action="store_true", help="play a task in the terminal")
    parser.add_argument("--stats", action="store_true", help="tasks per split and type, expert lengths")
    args = parser.parse_args(argv)
    kw = {"scene": args.scene} if args.env == "alfworld" else {}
    if args.stats:
        print(split_stats(args.env, args.seed, **kw))
    if args.play or not args.stats:
        env = make(args.env, split=args.split or SPLITS[args.env][1], seed=args.seed, **kw)
        play(env, args.task % len(env))


if __name__ == "__main__":
    main()
