"""Built-in rewards, the loader and weighted scoring, with hand-picked strings and values."""

from __future__ import annotations

import math
import os
import sys
import time
import types

import pytest

from rlhf.rewards import (
    batched,
    format_reward,
    load_rewards,
    numeric_match,
    reasoning_gym,
    resolve,
    score_samples,
)
from rlhf.rewards.builtin import extract_answer, last_number, parse_number
from rlhf.rewards.pool import RewardPool
from rlhf.rewards.registry import check_spec, checked

# ---- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 1,000.", "1,000"),
        ("so 5 - 3 = -3? no, 2", "2"),
        ("it is -3", "-3"),
        ("x=-4", "-4"),
        ("5-3", "3"),  # a subtraction, not a negative number
        ("total 2.50 dollars", "2.50"),
        ("end of sentence 7.", "7"),
        ("1,2,3", "3"),  # a list, not a thousands separator
        ("12,345,678 apples", "12,345,678"),
        ("no digits here", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


def test_parse_number():
    assert parse_number("1,000") == 1000.0
    assert parse_number(" -3 ") == -3.0
    assert parse_number("2.50") == 2.5
    with pytest.raises(ValueError, match="'abc' is not a number"):
        parse_number("abc")


# ---- numeric_match --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("The total is 1,000", "1000", 1.0),
        ("The total is 1000", "1,000", 1.0),
        ("4 - 7 = -3", "-3", 1.0),
        ("4 - 7 = 3", "-3", 0.0),
        ("2.50", "2.5", 1.0),
        ("2.5000001", 2.5, 1.0),  # within 1e-6
        ("2.50001", 2.5, 0.0),
        ("first 12 then 13", 12, 0.0),  # only the last number counts
        ("I don't know", "5", 0.0),
        ("", 0, 0.0),
    ],
)
def test_numeric_match(completion, answer, expected):
    assert numeric_match(completion, answer=answer, prompt="ignored", metadata={}) == expected


def test_numeric_match_rejects_non_numeric_answer():
    with pytest.raises(ValueError, match="'seven' is not a number"):
        numeric_match("7", answer="seven")


# ---- format_reward ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("42", 1.0),
        ("  -1,000\n", 1.0),
        ("<answer> 3.5 </answer>", 1.0),
        ("The answer is 42", 0.0),
        ("<answer>forty</answer>", 0.0),
        ("<answer>42", 0.0),
        ("", 0.0),
    ],
)
def test_format_reward_default(completion, expected):
    assert format_reward(completion, answer="1") == expected


def test_format_reward_custom_pattern():
    assert format_reward("yes", pattern=r"yes|no") == 1.0
    assert format_reward("maybe", pattern=r"yes|no") == 0.0


# ---- reasoning_gym -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain_sum_item():
    rg = pytest.importorskip("reasoning_gym")
    return rg.create_dataset("chain_sum", size=1, seed=1)[0]  # "4 - 1 - 7 =", answer "-4"


def test_extract_answer():
    assert extract_answer("think... <answer>-4</answer> done", "-4") == "-4"
    assert extract_answer("<answer>1</answer> then <answer> 2 </answer>", "2") == "2"
    assert extract_answer("4 - 1 = 3, 3 - 7 = -4", "-4") == "-4"
    assert extract_answer("the sum is 1,004", "1004") == "1004"
    assert extract_answer("no idea", "-4") == ""
    assert extract_answer(" 94*4 - 61 - 6 \n", "94*4 - 61 - 6") == "94*4 - 61 - 6"  # non-numeric oracle


def test_reasoning_gym_correct_vs_wrong(chain_sum_item):
    item = chain_sum_item
    assert item["answer"] == "-4"
    row = {"prompt": item["question"], "answer": item["answer"], "metadata": item["metadata"]}
    assert reasoning_gym("4 - 1 - 7 = -4", **row) == 1.0
    assert reasoning_gym("<answer>-4</answer>", **row) == 1.0
    assert reasoning_gym("The answer is 4", **row) == 0.0
    assert reasoning_gym("no number", **row) == 0.0
    # the same with the full entry and an explicit task
    assert reasoning_gym("-4", task="chain_sum", entry=item) == 1.0
    assert reasoning_gym("5", task="chain_sum", entry=item) == 0.0


def test_reasoning_gym_needs_a_task():
    with pytest.raises(ValueError, match="needs a 'task' column or metadata\\['source_dataset'\\]"):
        reasoning_gym("1", answer="1", metadata={})
    with pytest.raises(ValueError, match="unknown reasoning-gym task 'no_such_task'"):
        reasoning_gym("1", answer="1", task="no_such_task")


# ---- loader -------------------------------------------------------------------------------------------


@pytest.fixture
def fake_module(monkeypatch):
    """A module ``fake_rewards`` with a reward, a non-callable and a reward without **kwargs."""
    module = types.ModuleType("fake_rewards")
    module.shout = lambda completion, **_: float(completion.isupper())
    module.CONSTANT = 3
    module.strict = lambda completion, answer: float(completion == answer)
    monkeypatch.setitem(sys.modules, "fake_rewards", module)
    return module


def test_resolve_builtin_and_custom(fake_module):
    assert resolve("numeric_match") is numeric_match
    assert resolve("fake_rewards:shout") is fake_module.shout
    assert resolve("examples.custom_reward:brevity")("a b c", max_words=2) == pytest.approx(-0.05)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_reward", "unknown reward 'no_such_reward'; built-ins: format_reward, numeric_match, reasoning_gym"),
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("fake_rewards:missing", "module 'fake_rewards' has no attribute 'missing'"),
        ("fake_rewards:CONSTANT", "fake_rewards.CONSTANT is a int, not a function"),
        ("fake_rewards:", "must look like 'package.module:function'"),
    ],
)
def test_resolve_errors(fake_module, name, message):
    with pytest.raises(ValueError, match=message) as info:
        resolve(name)
    assert "\n" not in str(info.value)


def test_load_rewards_spec_errors():
    with pytest.raises(ValueError, match="unknown key\\(s\\) wieght"):
        load_rewards([{"name": "numeric_match", "wieght": 2}])
    with pytest.raises(ValueError, match="listed twice"):
        load_rewards(["numeric_match", "numeric_match"])
    with pytest.raises(ValueError, match="weight must be finite"):
        load_rewards([{"name": "numeric_match", "weight": math.inf}])
    with pytest.raises(ValueError, match="'format_reward' declares no parameter\\(s\\) patern"):
        load_rewards([{"name": "format_reward", "kwargs": {"patern": "x"}}])
    with pytest.raises(ValueError, match="reward spec is empty"):
        load_rewards([])


# ---- weighted scoring ------------------------------------------------------------------------------------


ROWS = [{"prompt": "p0", "answer": "1,000"}, {"prompt": "p1", "answer": "-3"}, {"prompt": "p2", "answer": "7"}]


def test_weights_combine_by_hand():
    rewards = load_rewards(["numeric_match", {"name": "format_reward", "weight": 0.1}])
    completions = ["1000", "the answer is -3", "8"]
    totals, stats = score_samples(rewards, completions, ROWS)
    # numeric: 1, 1, 0; format: 1, 0, 1  ->  1 + 0.1, 1 + 0, 0 + 0.1
    assert totals == pytest.approx([1.1, 1.0, 0.1])
    assert stats["skipped"] == 0
    assert stats["errors_by_fn"] == {}
    assert stats["mean_by_fn"] == pytest.approx({"numeric_match": 2 / 3, "format_reward": 2 / 3})


def test_kwargs_and_columns_reach_the_function(fake_module):
    # "strict" declares no **kwargs: it gets only the columns it names (answer), not prompt.
    rewards = load_rewards(
        ["fake_rewards:strict", {"name": "examples.custom_reward:brevity", "weight": 2.0, "kwargs": {"max_words": 1}}]
    )
    totals, _ = score_samples(rewards, ["-3", "a b c"], [{"prompt": "p", "answer": "-3"}, {"answer": "x"}])
    # strict: 1, 0; brevity(max 1 word): 0, -0.1 (two extra words) -> 1 + 0, 0 + 2 * -0.1
    assert totals == pytest.approx([1.0, -0.2])


def test_none_skips_the_sample():
    def picky(completion, **_):
        return None if completion == "skip me" else 1.0

    rewards = load_rewards([picky, {"name": "format_reward", "weight": 0.5}])
    totals, stats = score_samples(rewards, ["1", "skip me"], ROWS[:2])
    assert totals == [1.5, None]
    assert stats["skipped"] == 1
    assert stats["errors_by_fn"] == {}


def _flaky(completion, **_):
    if completion == "boom":
        raise RuntimeError("exploded")
    return math.nan if completion == "nan" else 1.0


@pytest.mark.parametrize(
    ("completions", "message"),
    [
        (["ok", "boom", "ok"], "reward '_flaky' failed on sample 1: RuntimeError: exploded"),
        (["ok", "ok", "nan"], "reward '_flaky' returned nan for sample 2"),
    ],
)
def test_errors_name_function_and_sample(completions, message):
    rewards = load_rewards([_flaky])
    with pytest.raises(ValueError, match=message):
        score_samples(rewards, completions, ROWS)


def test_bad_return_type_is_an_error():
    rewards = load_rewards([lambda completion, **_: "high"])
    with pytest.raises(ValueError, match="returned a str for sample 0; expected a float or None"):
        score_samples(rewards, ["x"], ROWS[:1])


def test_skip_mode_counts_errors():
    rewards = load_rewards([_flaky, {"name": "numeric_match", "weight": 1.0}])
    totals, stats = score_samples(rewards, ["boom", "-3", "nan"], ROWS, on_error="skip")
    # sample 1: flaky 1.0 + numeric 1.0; samples 0 and 2 fail in _flaky; numeric_match raises on none
    assert totals == [None, 2.0, None]
    assert stats["skipped"] == 2
    assert stats["errors_by_fn"] == {"_flaky": 2}
    assert stats["mean_by_fn"] == {"_flaky": 1.0, "numeric_match": pytest.approx(1 / 3)}


def test_batched_reward():
    @batched
    def lengths(completions, rows):
        return [float(len(c)) for c in completions]

    rewards = load_rewards([{"fn": lengths, "weight": 0.5}, "numeric_match"])
    totals, _ = score_samples(rewards, ["1000", "-3", "x"], ROWS)
    assert totals == pytest.approx([0.5 * 4 + 1, 0.5 * 2 + 1, 0.5 * 1 + 0])


def test_batched_reward_failure():
    @batched
    def broken(completions, rows):
        raise ConnectionError("actor gone")

    rewards = load_rewards([broken])
    with pytest.raises(ValueError, match="reward 'broken' failed on a batch of 3 samples: ConnectionError: actor gone"):
        score_samples(rewards, ["a", "b", "c"], ROWS)
    totals, stats = score_samples(rewards, ["a", "b", "c"], ROWS, on_error="skip")
    assert totals == [None, None, None]
    assert stats["errors_by_fn"] == {"broken": 3}


def test_rows_must_match_completions():
    with pytest.raises(ValueError, match="2 completions but 3 rows"):
        score_samples(load_rewards("numeric_match"), ["1", "2"], ROWS)


def test_rows_from_task_prompts():
    """Rows as the online driver passes them: tasks.py columns plus prompt/completion ids."""
    from rlhf.data.tasks import task_prompts

    rows = task_prompts("chain_sum", n=2, seed=0)
    rows = [{**r, "prompt_ids": [1, 2], "prompt_text": "q", "completion_ids": [3]} for r in rows]
    right = [f"The answer is {r['answer']}" for r in rows]
    wrong = [str(int(r["answer"]) + 1) for r in rows]
    rewards = load_rewards(["reasoning_gym", {"name": "numeric_match", "weight": 0.5}])
    totals, stats = score_samples(rewards, right + wrong, rows + rows)
    assert totals == [1.5, 1.5, 0.0, 0.0]
    assert stats["skipped"] == 0


def test_returned_values_are_checked():
    import numpy as np

    assert checked(1, "r", 0) == 1.0 and checked(True, "r", 0) == 1.0 and checked(np.float32(0.5), "r", 0) == 0.5
    assert checked(None, "r", 0) is None
    assert checked("0.5", "r", 3).message == "reward 'r' returned a str for sample 3; expected a float or None"
    assert checked([1.0], "r", 0).message.startswith("reward 'r' returned a list")
    assert checked(math.inf, "r", 1).message == "reward 'r' returned inf for sample 1"


# ---- specs are checked without importing anything ------------------------------------------------


def test_check_spec_imports_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "side_effect_reward.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef fn(completion, **_):\n    return 1.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    check_spec(["numeric_match", {"name": "side_effect_reward:fn", "weight": 0.5}])
    from rlhf.config import build_config

    build_config(algo="grpo", overrides=["reward=side_effect_reward:fn"])
    assert not marker.exists() and "side_effect_reward" not in sys.modules
    with pytest.raises(ValueError, match="cannot import module 'absent_mod'.*not found on sys.path"):
        check_spec("absent_mod:fn")
    with pytest.raises(ValueError, match="unknown reward 'numeric_mach' \\(did you mean 'numeric_match'\\?\\)"):
        check_spec(["numeric_mach"])
    with pytest.raises(ValueError, match="listed twice"):
        check_spec(["numeric_match", {"name": "numeric_match"}])
    load_rewards("side_effect_reward:fn")  # loading is what runs the module (rlhf.run does it before any actor)
    assert marker.exists()
    sys.modules.pop("side_effect_reward", None)


def test_a_module_that_fails_to_import_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "broken_reward.py").write_text("raise RuntimeError('cannot start\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError) as info:
        resolve("broken_reward:fn")
    assert str(info.value) == (
        "reward 'broken_reward:fn': importing module 'broken_reward' failed: RuntimeError: cannot start"
    )


# ---- worker processes and the per-sample time limit ----------------------------------------------
# These functions live at module level so that they travel to the workers by reference.


def _pid(completion, **_):
    return float(os.getpid())


def _slow(completion, **_):
    if completion == "hang":
        time.sleep(60)
    return 1.0


def _dies(completion, **_):
    if completion == "die":
        os._exit(3)
    return 0.5


def _text(completion, **_):
    return "0.5"


@pytest.fixture(scope="module")
def pool():
    pool = RewardPool(workers=2)
    yield pool
    pool.close()


def test_pool_scores_in_order_in_its_workers_and_is_reused(pool):
    completions = [str(i) for i in range(9)]
    totals, _ = score_samples(load_rewards("numeric_match"), completions, [{"answer": "4"}] * 9, pool=pool)
    assert totals == [1.0 if i == 4 else 0.0 for i in range(9)]
    pids = pool.pids
    totals, _ = score_samples(load_rewards([_pid]), ["a"] * 5, [{}] * 5, pool=pool)
    assert len(pids) == 2 and os.getpid() not in pids
    assert {int(t) for t in totals} == set(pids)  # both workers scored, none was restarted
    assert pool.pids == pids and pool.replaced == 0


def test_a_function_that_cannot_travel_runs_in_process(pool):
    totals, _ = score_samples(load_rewards([lambda completion, **_: float(os.getpid())]), ["a"], [{}], pool=pool)
    assert totals == [float(os.getpid())]


def test_timeout_raises_naming_function_and_sample(pool):
    with pytest.raises(ValueError, match=r"^reward '_slow' took longer than reward.timeout_s=1 s on sample 2$"):
        score_samples(load_rewards([_slow]), ["a", "b", "hang", "c"], [{}] * 4, timeout_s=1, pool=pool)


def test_timeout_skip_counts_the_sample_and_replaces_the_worker(pool):
    before, replaced = set(pool.pids), pool.replaced
    started = time.monotonic()
    totals, stats = score_samples(load_rewards([_slow]), ["a", "hang", "b", "c"], [{}] * 4, on_error="skip",
                                  timeout_s=1, pool=pool)
    assert time.monotonic() - started < 20
    assert totals == [1.0, None, 1.0, 1.0]  # "b", after the hung sample on the same worker, went to its replacement
    assert stats["skipped"] == 1 and stats["errors_by_fn"] == {"_slow": 1}
    assert pool.replaced == replaced + 1 and len(set(pool.pids) - before) == 1
    assert score_samples(load_rewards([_slow]), ["a", "b"], [{}] * 2, timeout_s=1, pool=pool)[0] == [1.0, 1.0]


def test_a_worker_that_dies_fails_its_sample(pool):
    with pytest.raises(ValueError, match=r"^reward '_dies': its worker process died on sample 1 \(exit code 3\)$"):
        score_samples(load_rewards([_dies]), ["a", "die", "b"], [{}] * 3, pool=pool)
    totals, stats = score_samples(load_rewards([_dies]), ["a", "die", "b"], [{}] * 3, on_error="skip", pool=pool)
    assert totals == [0.5, None, 0.5] and stats["errors_by_fn"] == {"_dies": 1}


@pytest.mark.parametrize(
    ("reward", "completions", "message"),
    [
        (_flaky, ["ok", "boom"], "reward '_flaky' failed on sample 1: RuntimeError: exploded"),
        (_flaky, ["nan"], "reward '_flaky' returned nan for sample 0"),
        (_text, ["x"], "reward '_text' returned a str for sample 0; expected a float or None"),
    ],
)
def test_errors_from_a_worker_name_function_and_sample(pool, reward, completions, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        score_samples(load_rewards([reward]), completions, [{}] * len(completions), pool=pool)
