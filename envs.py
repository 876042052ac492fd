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
import functools
import os
import random
import re
import zlib

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
        """[(receptacle, object)] where the expert saw objects of a class: in search order, lowest number first."""
        found = sorted((rank[r], -_listing_key(o)[1], r, o) for r, objs in self.memory.items() if r != skip
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
