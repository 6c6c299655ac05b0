"""Reward lookup, weighted combination and batch scoring.

A reward spec is one entry or a list of entries; an entry is

- a name: a built-in (``"numeric_match"``) or ``"package.module:function"`` for your own;
- a dict ``{"name": ..., "weight": 1.0, "kwargs": {...}}`` (``kwargs`` are fixed keyword
  arguments of the function and win over dataset columns of the same name);
- a callable (the driver passes a reward-model scorer this way).

Per-sample functions are called as ``fn(completion, **columns)`` with the sample's row; a
function without ``**kwargs`` gets only the columns it names. Batch functions (marked with
``@batched``) are called once as ``fn(completions, rows)`` and return one value per sample.
The combined reward of a sample is ``sum(weight_i * reward_i)``, or None (skip the sample) when
any function returned None for it.

Per-sample functions run in worker processes (``rlhf.rewards.pool``) with a per-sample time
limit; batch functions (the reward-model client, which has its own timeout) and functions that
cannot travel to a worker (lambdas, closures) run in the calling process.

``check_spec`` validates a spec without importing anything (config validation uses it: no code
named by a config runs while the config is checked); ``load_rewards`` imports ``module:function``
rewards, which the run does once, before any actor starts.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import math
import numbers
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rlhf.config import did_you_mean
from rlhf.rewards import builtin

RewardFn = Callable[..., Any]
OnError = Literal["raise", "skip"]
_SPEC_KEYS = ("name", "weight", "kwargs", "fn")

_REGISTRY: dict[str, RewardFn] = {}


def register(name: str, fn: RewardFn) -> RewardFn:
    """Add a built-in reward under ``name``; a second reward with the same name is refused."""
    if name in _REGISTRY:
        raise ValueError(f"reward {name!r} is already registered")
    if ":" in name:
        raise ValueError(f"reward name {name!r} may not contain ':' (reserved for module:function)")
    _REGISTRY[name] = fn
    return fn


def names() -> list[str]:
    """Registered built-in reward names, sorted."""
    return sorted(_REGISTRY)


def batched(fn: RewardFn) -> RewardFn:
    """Mark ``fn`` as a batch reward: ``fn(completions, rows) -> list[float | None]``."""
    fn.batched = True  # type: ignore[attr-defined]
    return fn


def _split(name: str) -> tuple[str, str]:
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward {name!r} must look like 'package.module:function'")
    return module_name, attr


def module_findable(module_name: str) -> bool:
    """Whether ``module_name`` can be imported, found on ``sys.path`` without running any of its code
    (nor its packages' ``__init__``)."""
    spec = None
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        if name in sys.modules:
            spec = getattr(sys.modules[name], "__spec__", None)
            continue
        try:
            if depth == 1:
                spec = importlib.util.find_spec(name)
            else:
                locations = getattr(spec, "submodule_search_locations", None)
                spec = importlib.machinery.PathFinder.find_spec(name, list(locations)) if locations else None
        except (ImportError, ValueError):
            return False
        if spec is None:
            return False
    return True


def check_name(name: str) -> None:
    """A built-in name, or a ``module:function`` whose module is on ``sys.path`` (nothing is imported)."""
    if ":" not in name:
        if name not in _REGISTRY:
            raise ValueError(
                f"unknown reward {name!r}{did_you_mean(name, names())}; built-ins: {', '.join(names())} "
                "(or give module:function)"
            )
        return
    module_name, _ = _split(name)
    if not module_findable(module_name):
        raise ValueError(
            f"reward {name!r}: cannot import module {module_name!r} (not found on sys.path; run from the folder "
            "that holds it or install it)"
        )


def resolve(name: str) -> RewardFn:
    """The function for a built-in name or a ``module:function`` path; one-line errors otherwise."""
    if ":" not in name:
        check_name(name)
        return _REGISTRY[name]
    module_name, attr = _split(name)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"reward {name!r}: cannot import module {module_name!r} ({e})") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing: say so in one line
        raise ValueError(
            f"reward {name!r}: importing module {module_name!r} failed: {type(e).__name__}: {_first_line(e)}"
        ) from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"reward {name!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"reward {name!r}: {module_name}.{attr} is a {type(fn).__name__}, not a function")
    return fn


@dataclass(frozen=True)
class WeightedReward:
    """One reward function in a combination.

    ``accepts`` is None when ``fn`` takes ``**kwargs`` (it gets every column), else the set of
    keyword names it declares (it gets only those columns). ``kwargs`` are fixed arguments.
    """

    name: str
    fn: RewardFn
    weight: float = 1.0
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    batched: bool = False
    accepts: frozenset[str] | None = None

    def call(self, completion: str, row: Mapping[str, Any]) -> Any:
        """``fn(completion, **columns, **kwargs)`` for one sample."""
        columns = {k: v for k, v in row.items() if k != "completion"}
        if self.accepts is not None:
            columns = {k: v for k, v in columns.items() if k in self.accepts}
        return self.fn(completion, **{**columns, **self.kwargs})


def _keywords(fn: RewardFn) -> tuple[frozenset[str] | None, bool]:
    """``(declared keyword names, takes **kwargs)``; ``(None, True)`` when there is no signature."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # some builtins have no signature: give them everything
        return None, True
    declared = frozenset(p.name for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return declared, any(p.kind is p.VAR_KEYWORD for p in params)


def _entry(item: Any, position: int, load: bool = True) -> WeightedReward | None:
    if callable(item) and not isinstance(item, str):
        item = {"fn": item}
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, Mapping):
        raise ValueError(f"reward spec entry {position} is a {type(item).__name__}; give a name, a dict or a function")
    unknown = sorted(set(item) - set(_SPEC_KEYS))
    if unknown:
        raise ValueError(
            f"reward spec entry {position} has unknown key(s) {', '.join(unknown)}; valid: name, weight, kwargs"
        )
    if "fn" in item:
        fn = item["fn"]
        name = item.get("name") or getattr(fn, "__name__", type(fn).__name__)
    elif "name" in item:
        name = str(item["name"])
        if not load:
            check_name(name)
        fn = resolve(name) if load else None
    else:
        raise ValueError(f"reward spec entry {position} has no 'name'")
    try:
        weight = float(item.get("weight", 1.0))
    except (TypeError, ValueError):
        raise ValueError(f"reward {name!r}: weight {item.get('weight')!r} is not a number") from None
    if not math.isfinite(weight):
        raise ValueError(f"reward {name!r}: weight must be finite, got {weight}")
    kwargs = item.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"reward {name!r}: kwargs must be a mapping, got {type(kwargs).__name__}")
    if fn is None:  # checked without loading: the function's own parameters are checked when it loads
        return None
    declared, takes_any = _keywords(fn)
    if declared is not None and set(kwargs) - declared:
        bad = ", ".join(sorted(set(kwargs) - declared))
        raise ValueError(f"reward {name!r} declares no parameter(s) {bad} (spec kwargs must be named parameters)")
    is_batched = bool(getattr(fn, "batched", False))
    accepts = None if takes_any or is_batched else declared
    return WeightedReward(name, fn, weight, dict(kwargs), is_batched, accepts)


def _items(spec: Any) -> list[Any]:
    items = list(spec) if isinstance(spec, list | tuple) else [spec]
    if not items:
        raise ValueError("reward spec is empty; give at least one reward")
    return items


def _refuse_duplicates(names_: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names_:
        if name in seen:
            raise ValueError(f"reward {name!r} is listed twice; give each reward once")
        seen.add(name)


def check_spec(spec: Any) -> None:
    """Validate a reward spec (see module doc) without importing anything.

    Built-in names must exist; a ``module:function``'s module must be found on ``sys.path``
    (its code does not run: that happens in ``load_rewards``, when the run starts).
    """
    items = _items(spec)
    for i, item in enumerate(items):
        _entry(item, i, load=False)
    _refuse_duplicates([item if isinstance(item, str) else str(item["name"]) for item in items
                        if isinstance(item, str) or (isinstance(item, Mapping) and "name" in item)])


def load_rewards(spec: Any) -> list[WeightedReward]:
    """Parse a reward spec (see module doc) into weighted rewards; duplicate names are refused."""
    rewards: list[WeightedReward] = [_entry(item, i) for i, item in enumerate(_items(spec))]  # type: ignore[misc]
    _refuse_duplicates([r.name for r in rewards])
    return rewards


@dataclass(frozen=True)
class Failure:
    """A reward that raised, timed out, or returned something other than a finite number or None."""

    message: str


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def checked(raw: Any, name: str, index: int) -> float | None | Failure:
    """One returned value -> None, a finite float, or a ``Failure`` naming the reward and the sample.

    Numbers (``int``, ``float``, ``bool``, numpy scalars, 0-dim tensors) are accepted; strings
    and anything else are not.
    """
    if raw is None:
        return None
    if isinstance(raw, str | bytes) or not (isinstance(raw, numbers.Real) or hasattr(type(raw), "__float__")):
        return Failure(f"reward {name!r} returned a {type(raw).__name__} for sample {index}; expected a float or None")
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return Failure(f"reward {name!r} returned a {type(raw).__name__} for sample {index}; expected a float or None")
    if not math.isfinite(number):
        return Failure(f"reward {name!r} returned {number} for sample {index}")
    return number


def score_one(reward: WeightedReward, completion: str, row: Mapping[str, Any], index: int) -> float | None | Failure:
    """``reward`` on one sample; an exception becomes a ``Failure`` (this also runs in the workers)."""
    try:
        raw = reward.call(completion, row)
    except Exception as e:  # noqa: BLE001 - reported with the reward's name and sample index
        detail = f": {_first_line(e)}" if _first_line(e) else ""
        return Failure(f"reward {reward.name!r} failed on sample {index}: {type(e).__name__}{detail}")
    return checked(raw, reward.name, index)


def _values(
    reward: WeightedReward,
    completions: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    on_error: OnError,
    timeout_s: float | None,
    pool: Any,
) -> list[float | None | Failure]:
    """One reward's checked value (or ``Failure``) for every sample."""
    if reward.batched:
        try:
            values = list(reward.fn(list(completions), list(rows), **reward.kwargs))
        except Exception as e:  # noqa: BLE001 - reported with the reward's name
            message = (f"reward {reward.name!r} failed on a batch of {len(completions)} samples: "
                       f"{type(e).__name__}: {_first_line(e)}")
            if on_error == "raise":
                raise ValueError(message) from e
            return [Failure(message)] * len(completions)
        if len(values) != len(completions):
            raise ValueError(f"reward {reward.name!r} returned {len(values)} values for {len(completions)} samples")
        return [checked(v, reward.name, i) for i, v in enumerate(values)]
    if pool is None:
        from rlhf.rewards.pool import shared_pool

        pool = shared_pool()
    if pool is not False:
        out = pool.run(reward, completions, rows, timeout_s)
        if out is not None:
            return out
    return [score_one(reward, c, r, i) for i, (c, r) in enumerate(zip(completions, rows))]


DEFAULT_TIMEOUT_S = 30.0


def score_samples(
    rewards: Sequence[WeightedReward],
    completions: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    on_error: OnError = "raise",
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    pool: Any = None,
) -> tuple[list[float | None], dict[str, Any]]:
    """Combined reward per sample and statistics.

    ``rows[i]`` holds the dataset columns of sample ``i``'s prompt (the driver repeats a prompt's
    row for each of its samples, and may add ``prompt_ids`` / ``completion_ids``).

    A reward that raises, runs longer than ``timeout_s`` seconds on one sample (``reward.timeout_s``;
    None: no limit), dies, or returns NaN/inf or a non-number fails with a one-line ValueError
    naming the reward and the sample index; with ``on_error="skip"`` that sample gets None
    instead and is counted.

    ``pool``: the ``rlhf.rewards.pool.RewardPool`` per-sample rewards run in (None: the shared
    pool of this process; False: run them in this process, without a time limit).

    Returns ``(rewards, stats)``: ``rewards[i]`` is ``sum_j weight_j * reward_j(i)`` or None
    (skipped); ``stats`` has ``skipped`` (samples with None), ``errors_by_fn`` (failures per
    reward name) and ``mean_by_fn`` (unweighted mean of each reward over the samples it scored;
    None when it scored none).
    """
    if len(completions) != len(rows):
        raise ValueError(f"{len(completions)} completions but {len(rows)} rows; give one row per completion")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not rewards:
        raise ValueError("no reward functions given; see rlhf.rewards.load_rewards")
    totals: list[float | None] = [0.0] * len(completions)
    errors_by_fn: dict[str, int] = {}
    mean_by_fn: dict[str, float | None] = {}
    for reward in rewards:
        scored: list[float] = []
        for i, value in enumerate(_values(reward, completions, rows, on_error, timeout_s, pool)):
            if isinstance(value, Failure):
                if on_error == "raise":
                    raise ValueError(value.message)
                errors_by_fn[reward.name] = errors_by_fn.get(reward.name, 0) + 1
                value = None
            if value is None:
                totals[i] = None
                continue
            scored.append(value)
            if totals[i] is not None:
                totals[i] += reward.weight * value
        mean_by_fn[reward.name] = sum(scored) / len(scored) if scored else None
    stats = {"skipped": sum(t is None for t in totals), "errors_by_fn": errors_by_fn, "mean_by_fn": mean_by_fn}
    return totals, stats


register("numeric_match", builtin.numeric_match)
register("format_reward", builtin.format_reward)
register("reasoning_gym", builtin.reasoning_gym)
