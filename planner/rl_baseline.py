"""The adaptive-splitting paper's approach as a baseline: a reward surrogate and PPO (``pip install coinfer[rl]``).

This module imports torch, gymnasium and stable-baselines3; nothing else in the planner imports
it except when the RL baseline is asked for (``coinfer plan --rl-timesteps N``, the benchmark).

As in the paper (Chen et al., arXiv 2406.02616), but on our robustness profile:

* **Surrogate** - a small MLP (2 -> 32 -> 32 -> 1, tanh) maps (channel severity, cut), both
  scaled to [0, 1], to the quality figure (perplexity ratio, or cosine), fitted by full-batch
  Adam on the profile's measured points at the base wire precision (plus the all-on-device cut,
  exact by construction). Its expensive evaluations are the model evaluations behind those
  points (their share of the profile's draws).
* **Environment** - each step shows a channel state drawn uniformly from the trace (severity and
  rate, scaled to [0, 1]); the action is a cut at the base wire precision; the reward is the
  paper's ``R = a (1 - rho) + b (L - s) / L`` with ``rho`` from the surrogate (no model is run
  while training, so PPO's training costs no expensive evaluation). Episodes are 32 steps.
* **Policy** - stable-baselines3's PPO (``MlpPolicy``) for ``timesteps`` steps, seeded; the replay
  uses its deterministic action at each step's state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coinfer.errors import UserInputError
from coinfer.planner.policy import CandidateTable, StateEval
from coinfer.planner.quality import EXACT, evaluations_of, figure_of, points_for, severity
from coinfer.planner.replay import PAPER_A, PAPER_B, MethodRun, base_candidates, paper_reward
from coinfer.reports.robustness import RobustnessProfile

EPISODE_STEPS = 32


def _require():
    try:
        import gymnasium  # noqa: F401
        import stable_baselines3  # noqa: F401
        import torch  # noqa: F401
    except ModuleNotFoundError as exc:
        raise UserInputError(f"the RL baseline needs {exc.name}: pip install 'coinfer[rl]'") from None


@dataclass
class SurrogateData:
    """Training points of the surrogate: inputs (severity, cut), the figure, and what they cost."""

    severity: np.ndarray
    cut: np.ndarray
    figure: np.ndarray
    evaluations: int


def surrogate_data(rob: RobustnessProfile, impairment: str, wire: str) -> SurrogateData:
    """The profile's points at ``wire`` for ``impairment`` (and clean ones), plus the exact all-on-device cut."""
    keep = points_for(impairment, wire)
    sev, cut, fig = [], [], []
    for p in rob.points:
        f = figure_of(rob, p)
        if f is None or not keep(p):
            continue
        cond = p.condition
        lvl = {"erasure": cond.erasure_p, "awgn": cond.snr_db, "none": 0.0}[cond.impairment]
        sev.append(float(severity(cond.impairment, lvl)))
        cut.append(p.cut)
        fig.append(f.mean)
    if not sev:
        raise UserInputError(f"the RL baseline: the robustness profile has no {impairment} points at wire {wire}")
    grid = np.unique(sev)
    n_st = rob.model.num_blocks + 2
    return SurrogateData(np.concatenate([sev, grid]), np.concatenate([cut, np.full(len(grid), n_st)]),
                         np.concatenate([fig, np.full(len(grid), EXACT)]), evaluations_of(rob, keep))


class Surrogate:
    """A small MLP on (severity, cut) -> figure (see the module note)."""

    def __init__(self, data: SurrogateData, num_stages: int, seed: int = 0, epochs: int = 1500):
        import torch

        self.sev_lo, self.sev_hi = float(data.severity.min()), float(data.severity.max())
        self.num_stages = num_stages
        self.y_mean, self.y_std = float(data.figure.mean()), float(data.figure.std() or 1.0)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32),
                                       torch.nn.Tanh(), torch.nn.Linear(32, 1))
        for prm in self.net.parameters():  # seeded, independent of the global RNG's history
            with torch.no_grad():
                prm.copy_(torch.randn(prm.shape, generator=gen) * (0.5 if prm.dim() > 1 else 0.0))
        x = torch.tensor(self._inputs(data.severity, data.cut), dtype=torch.float32)
        y = torch.tensor((data.figure - self.y_mean) / self.y_std, dtype=torch.float32)[:, None]
        opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a 2x32x32 net: more threads only wait on each other
        try:
            for _ in range(epochs):
                opt.zero_grad()
                loss = torch.mean((self.net(x) - y) ** 2)
                loss.backward()
                opt.step()
        finally:
            torch.set_num_threads(threads)
        self.train_mse = float(loss.detach()) * self.y_std ** 2

    def _inputs(self, sev, cut) -> np.ndarray:
        span = (self.sev_hi - self.sev_lo) or 1.0
        s = (np.asarray(sev, dtype=float) - self.sev_lo) / span
        return np.stack([s, np.asarray(cut, dtype=float) / self.num_stages], axis=-1)

    def predict(self, sev, cut) -> np.ndarray:
        """The predicted figure at (severity, cut) pairs (broadcast)."""
        import torch

        s, c = np.broadcast_arrays(np.asarray(sev, dtype=float), np.asarray(cut, dtype=float))
        with torch.no_grad():
            out = self.net(torch.tensor(self._inputs(s.ravel(), c.ravel()), dtype=torch.float32)).numpy()[:, 0]
        return (out * self.y_std + self.y_mean).reshape(s.shape)


@dataclass
class RewardCore:
    """The environment's arithmetic, free of gymnasium: observation and reward of (state, action)."""

    cuts: np.ndarray  # the cut of each action
    num_blocks: int
    sign: float
    predict: object  # (severity, cut) -> figure
    sev_lo: float
    sev_hi: float
    x_lo: float
    x_hi: float
    a: float = PAPER_A
    b: float = PAPER_B

    def observation(self, sev: float, x: float) -> np.ndarray:
        """Severity and 1/rate scaled to [0, 1]."""
        def unit(v, lo, hi):
            return 0.0 if hi <= lo else (v - lo) / (hi - lo)
        return np.array([unit(sev, self.sev_lo, self.sev_hi), unit(x, self.x_lo, self.x_hi)], dtype=np.float32)

    def rewards(self, sev) -> np.ndarray:
        """The paper's R of every action at each severity, shape (len(sev), actions); quality from the surrogate."""
        s = np.asarray(sev, dtype=float).reshape(-1)
        fig = self.predict(s[:, None], self.cuts[None, :])
        blocks = np.clip(self.cuts - 1, 0, self.num_blocks)[None, :]
        return paper_reward(self.sign * fig, blocks, self.num_blocks, self.sign, self.a, self.b)


def make_env(core: RewardCore, sev: np.ndarray, x: np.ndarray, seed: int = 0):
    """A gymnasium environment over the states (sev, x), drawn uniformly each step.

    The surrogate's rewards at the states are computed once (a table of states x actions).
    """
    import gymnasium as gym

    table = core.rewards(sev)

    class SplitEnv(gym.Env):
        metadata: dict = {}

        def __init__(self):
            self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
            self.action_space = gym.spaces.Discrete(len(core.cuts))
            self._rng = np.random.default_rng(seed)
            self._i = 0
            self._t = 0

        def _obs(self):
            return core.observation(float(sev[self._i]), float(x[self._i]))

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            if seed is not None:
                self._rng = np.random.default_rng(seed)
            self._i, self._t = int(self._rng.integers(len(sev))), 0
            return self._obs(), {}

        def step(self, action):
            r = float(table[self._i, int(action)])
            self._t += 1
            self._i = int(self._rng.integers(len(sev)))
            return self._obs(), r, False, self._t >= EPISODE_STEPS, {}

    return SplitEnv()


def train_ppo(env, timesteps: int, seed: int = 0):
    """PPO (stable-baselines3, MlpPolicy) trained ``timesteps`` steps on ``env``, seeded, one thread."""
    import torch
    from stable_baselines3 import PPO

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks: threads only contend
    try:
        model = PPO("MlpPolicy", env, n_steps=256, batch_size=64, seed=seed, verbose=0, device="cpu")
        model.learn(total_timesteps=timesteps)
    finally:
        torch.set_num_threads(threads)
    return model


def rl_run(t: CandidateTable, ev: StateEval, sev: np.ndarray, up: np.ndarray, base_wire: str,
           rob: RobustnessProfile, timesteps: int, seed: int = 0) -> MethodRun:
    """Fit the surrogate, train PPO on the trace's states, and return its choice per step."""
    _require()
    data = surrogate_data(rob, t.impairment, base_wire)
    sur = Surrogate(data, t.num_blocks + 2, seed)
    ks = np.array([k for k in base_candidates(t, base_wire) if t.curves[k] is not None])
    x = 1.0 / np.asarray(up, dtype=float)
    core = RewardCore(np.array([t.choices[k].cut for k in ks]), t.num_blocks, t.quality.sign, sur.predict,
                      float(sev.min()), float(sev.max()), float(x.min()), float(x.max()))
    env = make_env(core, sev, x, seed)
    model = train_ppo(env, timesteps, seed)
    obs = np.stack([core.observation(float(s), float(v)) for s, v in zip(sev, x, strict=True)])
    actions, _ = model.predict(obs, deterministic=True)
    note = (f"surrogate fitted on {len(data.figure)} points (train MSE {sur.train_mse:.3g}); PPO {timesteps} steps on "
            "the surrogate, no model run while training")
    return MethodRun("rl-ppo", "rl", ks[np.asarray(actions, dtype=int)], data.evaluations, note)
