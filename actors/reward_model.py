"""A trained reward model served as an actor, and the batch reward that calls it.

``RewardModelActor`` loads a folder saved by ``--algo rm`` (an ``AutoModelForSequenceClassification``
with ``num_labels=1``) and scores prompt + completion sequences: the score is the head's output
at the last real token of each sequence, read exactly as the learner reads it in training
(``actors.model_io.policy_output(..., "score")``). It is a plain
class; the driver makes it remote (``ray.remote(RewardModelActor)``).

``reward_model_reward(handle, timeout_s)`` turns such an actor into a batch reward
``(completions, rows) -> list[float]`` that ``rlhf.rewards.score_samples`` accepts beside the
per-sample rule rewards, e.g. ``load_rewards([reward_model_reward(rm, 120), "format_reward"])``.

``RewardModelService`` is the restartable form the driver uses: it owns the actor, and when the
actor dies (its process killed, out of memory) it starts a new one from the same config, at
most ``max_restarts`` times, and scores the same batch again. ``reward_model_reward`` accepts
either a plain actor handle (a death is then one error naming the actor) or a service.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral
from typing import Any

import torch

from actors.common import local_device, set_threads, torch_dtype
from actors.files import ensure_local
from actors.model_io import policy_output
from rlhf.rewards.registry import batched

TokensOrText = str | Sequence[int] | Sequence[Mapping[str, str]]
_DEFAULTS: dict[str, Any] = {
    "model_path": None,
    "tokenizer_path": None,
    "dtype": "float32",
    "device": "cpu",
    "batch_size": 8,
    "ship": None,
    "trust_remote_code": False,
}


class RewardModelActor:
    """Scores sequences with a scalar-head model; no gradients, eval mode.

    Config keys: ``model_path`` (required), ``tokenizer_path`` (default: ``model_path``; only
    needed when text is given), ``dtype`` (``float32`` / ``bfloat16``), ``device`` (``cpu`` /
    ``cuda``), ``batch_size`` (sequences per forward pass), ``ship`` (an ``actors.files.Shipping``:
    the model folder comes through Ray where shipping is active), ``trust_remote_code`` (run code
    shipped with the folder).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        unknown = sorted(set(config) - set(_DEFAULTS))
        if unknown:
            raise ValueError(f"reward model config: unknown key(s) {', '.join(unknown)}; valid: {', '.join(_DEFAULTS)}")
        cfg = {**_DEFAULTS, **config}
        if not cfg["model_path"]:
            raise ValueError("reward model config needs 'model_path' (a folder saved by --algo rm)")
        if int(cfg["batch_size"]) < 1:
            raise ValueError(f"reward model batch_size must be >= 1, got {cfg['batch_size']}")
        from transformers import AutoModelForSequenceClassification

        from rlhf.models import load_tokenizer

        set_threads()
        self.device = local_device(str(cfg["device"]))
        self.batch_size = int(cfg["batch_size"])
        path = ensure_local(str(cfg["model_path"]), cfg["ship"])  # a shipped copy where shipping is active
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=torch_dtype(str(cfg["dtype"])), trust_remote_code=bool(cfg["trust_remote_code"]))
        except OSError as e:
            raise OSError(f"cannot load a reward model from {path!r}: {str(e).strip().splitlines()[0]}") from None
        if model.config.num_labels != 1 or not hasattr(model, "score"):
            raise ValueError(
                f"{path!r} holds a {type(model).__name__} with num_labels={model.config.num_labels}; "
                "a reward model is a causal LM with a 1-output 'score' head (saved by --algo rm)"
            )
        self.model = model.to(self.device).eval()
        tokenizer_path = str(cfg["tokenizer_path"] or path)
        try:
            self.tokenizer = load_tokenizer(tokenizer_path, bool(cfg["trust_remote_code"]))
        except (OSError, ValueError):
            self.tokenizer = None  # token ids still work; text fails with a clear error in _ids
        self.tokenizer_path = tokenizer_path

    def _ids(self, item: TokensOrText, *, prompt: bool, index: int) -> list[int]:
        """Token ids of one prompt or completion, as the policy saw them.

        Token ids pass through. Text is tokenized alone (prompt with the tokenizer's special
        tokens, as vLLM does for a text prompt; completion without), so nothing merges across
        the prompt/completion boundary. A prompt given as chat messages gets the chat template
        with the generation prompt.
        """
        what = "prompt" if prompt else "completion"
        if not isinstance(item, str) and all(isinstance(t, Integral) for t in item):
            return [int(t) for t in item]
        if self.tokenizer is None:
            raise ValueError(f"{what} {index} is text but no tokenizer loads from {self.tokenizer_path!r}; pass ids")
        if isinstance(item, str):
            return list(self.tokenizer(item, add_special_tokens=prompt)["input_ids"])
        if prompt and all(isinstance(m, Mapping) for m in item):
            out = self.tokenizer.apply_chat_template(list(item), add_generation_prompt=True, tokenize=True)
            return list(out["input_ids"] if isinstance(out, Mapping) else out)
        raise ValueError(f"{what} {index} must be text or a list of token ids, got {type(item).__name__}")

    @torch.inference_mode()
    def score(self, prompts: Sequence[TokensOrText], completions: Sequence[TokensOrText]) -> list[float]:
        """One score per (prompt, completion): the head at the last token of ``prompt + completion``.

        Sequences are sorted by length and run ``batch_size`` at a time, right padded; the
        attention mask hides the padding, so each score equals an unpadded forward of that
        sequence alone. Returns floats in the input order.
        """
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        seqs = [
            self._ids(p, prompt=True, index=i) + self._ids(c, prompt=False, index=i)
            for i, (p, c) in enumerate(zip(prompts, completions))
        ]
        for i, seq in enumerate(seqs):
            if not seq:
                raise ValueError(f"sample {i}: prompt and completion are both empty")
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]), reverse=True)
        scores = [0.0] * len(seqs)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, value in zip(chunk, self._forward([seqs[i] for i in chunk])):
                scores[i] = value
        return scores

    def _forward(self, seqs: list[list[int]]) -> list[float]:
        """Scores of a few sequences in one right-padded forward pass (the learner's own pooling)."""
        width = max(len(s) for s in seqs)
        input_ids = torch.zeros((len(seqs), width), dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, seq in enumerate(seqs):
            input_ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention[r, : len(seq)] = 1
        batch = {"input_ids": input_ids.to(self.device), "attention_mask": attention.to(self.device)}
        return policy_output(self.model, batch, "score").cpu().tolist()  # [B] float32


def _score_once(handle: Any, prompts: list, targets: list, timeout_s: float, name: str) -> list[float]:
    """One ``score`` call under ``timeout_s``; a death of the actor passes through as ``RayActorError``."""
    import ray
    from ray.exceptions import GetTimeoutError

    ref = handle.score.remote(prompts, targets)
    try:
        return ray.get(ref, timeout=timeout_s)
    except GetTimeoutError:
        ray.cancel(ref)
        raise TimeoutError(
            f"reward model actor {name!r} did not score {len(prompts)} samples within {timeout_s} s"
        ) from None


def _died(err: BaseException) -> str:
    """``ActorDiedError: <first line>`` of a Ray actor error."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else 'the actor died'}"


class RewardModelService:
    """A ``RewardModelActor`` that is started again when it dies, at most ``max_restarts`` times.

    ``config``: the actor's config (see ``RewardModelActor``); ``options``: its Ray options
    (``num_cpus``, ``num_gpus``); ``timeout_s`` bounds a (re)start and every ``score`` call;
    ``limit_name``: the setting that ``max_restarts`` comes from, named in the error when the
    restarts are used up. ``restarts`` counts the restarts so far. A restart prints one
    ``warning:`` line on stderr.
    """

    def __init__(self, config: Mapping[str, Any], options: Mapping[str, Any], max_restarts: int,
                 timeout_s: float, limit_name: str = "max_restarts") -> None:
        self.config, self.options = dict(config), dict(options)
        self.max_restarts, self.timeout_s, self.limit_name = int(max_restarts), float(timeout_s), limit_name
        self.restarts = 0
        self.handle = self._launch()

    def _launch(self) -> Any:
        import ray

        return ray.remote(RewardModelActor).options(**self.options).remote(self.config)

    def score(self, prompts: list, targets: list, timeout_s: float | None = None,
              name: str = "reward_model") -> list[float]:
        """``RewardModelActor.score`` on the live actor; if it died, on a new one (the same batch)."""
        import ray

        while True:
            try:
                return _score_once(self.handle, prompts, targets, self.timeout_s if timeout_s is None else timeout_s,
                                   name)
            except ray.exceptions.RayActorError as err:
                self.restart(err, name)

    def restart(self, err: BaseException, name: str = "reward_model") -> None:
        """Replace the dead actor by a new one and wait until it has loaded; refuse past ``max_restarts``."""
        import ray

        why = _died(err)
        if self.restarts >= self.max_restarts:
            raise RuntimeError(
                f"RewardModelActor {name!r} died ({why}) after {self.restarts} restart(s); "
                f"{self.limit_name}={self.max_restarts} allows no more"
            ) from None
        self.restarts += 1
        print(f"warning: RewardModelActor {name!r} died ({why}); restarting it "
              f"(restart {self.restarts} of {self.limit_name}={self.max_restarts})", file=sys.stderr, flush=True)
        self.kill()
        self.handle = self._launch()
        try:
            ray.get(self.handle.__ray_ready__.remote(), timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"RewardModelActor {name!r} did not restart within {self.timeout_s:g} s") from None
        except ray.exceptions.RayError as again:
            raise RuntimeError(f"RewardModelActor {name!r} could not restart: {_died(again)}") from None

    def kill(self) -> None:
        """End the current actor (an actor that already died is fine)."""
        import ray

        with contextlib.suppress(Exception):
            ray.kill(self.handle)


def reward_model_reward(actor: Any, timeout_s: float, name: str = "reward_model") -> Callable[..., list[float]]:
    """A batch reward ``(completions, rows) -> list[float]`` that asks a ``RewardModelActor``.

    ``actor``: a ``RewardModelActor`` handle, or a ``RewardModelService`` (restarted when it dies;
    the batch is then scored again). For sample ``i`` the prompt is ``rows[i]["prompt_ids"]`` when
    present (what the policy saw), else ``rows[i]["prompt"]`` (text or chat messages); the
    completion is ``rows[i]["completion_ids"]`` when present, else ``completions[i]``. A call that
    takes longer than ``timeout_s`` raises a TimeoutError naming the actor (``name``).
    """

    def reward(completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[float]:
        import ray

        prompts = []
        for i, row in enumerate(rows):
            if "prompt_ids" not in row and "prompt" not in row:
                raise KeyError(f"row {i} has neither 'prompt_ids' nor 'prompt' for the reward model {name!r}")
            prompts.append(row["prompt_ids"] if "prompt_ids" in row else row["prompt"])
        targets = [row.get("completion_ids", c) for c, row in zip(completions, rows)]
        if isinstance(actor, RewardModelService):
            return actor.score(prompts, targets, timeout_s, name)
        try:
            return _score_once(actor, prompts, targets, timeout_s, name)
        except ray.exceptions.RayActorError as err:
            raise RuntimeError(f"RewardModelActor {name!r} died ({_died(err)})") from None

    reward.__name__ = reward.__qualname__ = name
    return batched(reward)
