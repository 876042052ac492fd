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
import random
import re

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
