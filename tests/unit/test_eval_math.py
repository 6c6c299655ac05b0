"""pass@k (Chen et al. 2021) against hand-derived values, its aggregation, and score_generations."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from math import comb

import pytest
import torch

from rlhf.passk import k_values, mean_pass_at_k, pass_at_k, pass_at_k_table, score_generations


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 1, 0.25),  # one draw hits the single correct sample 1 time in 4
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 1, 4, 1.0),  # all four drawn: the correct one is always among them
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 1, 0.4),  # pass@1 = c / n
        (10, 3, 3, 1 - 35 / 120),  # 1 - C(7,3)/C(10,3)
        (6, 0, 3, 0.0),  # nothing correct: never passes
        (6, 6, 3, 1.0),  # everything correct: always passes
        (6, 4, 3, 1.0),  # n - c = 2 < k = 3: every draw of 3 holds a correct one
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_the_binomial_formula_exactly():
    """The stable product against the obvious ratio of binomials, computed in exact fractions."""
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(comb(n - c, k), comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)


def test_pass_at_k_stays_finite_where_binomials_overflow_floats():
    # C(2000, 1000) ~ 1e600 is not a float; the product form needs no binomial
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    assert 0.0 < pass_at_k(2000, 1, 1) < 1.0


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_over_prompts_and_the_table_of_ks():
    counts = [(4, 1), (4, 0), (4, 4)]
    assert mean_pass_at_k(counts, 1) == pytest.approx((0.25 + 0.0 + 1.0) / 3)
    assert mean_pass_at_k(counts, 2) == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert pass_at_k_table(counts, 4) == pytest.approx(
        {"pass@1": 1.25 / 3, "pass@2": 1.5 / 3, "pass@4": 2.0 / 3})
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)


def test_k_values_are_powers_of_two_then_k():
    assert k_values(1) == [1]
    assert k_values(4) == [1, 2, 4]
    assert k_values(6) == [1, 2, 4, 6]
    assert k_values(8) == [1, 2, 4, 8]
    with pytest.raises(ValueError):
        k_values(0)


ROWS = [{"prompt": "2 + 2 =", "answer": "4"}, {"prompt": "3 + 5 =", "answer": "8"}]


def _sample(text: str, ids: list[int], finish: str = "stop") -> dict:
    return {"text": text, "completion_ids": ids, "logps": [0.0] * len(ids), "finish_reason": finish}


def test_score_generations_on_hand_made_samples():
    samples = [
        [_sample("4", [1]), _sample("5", [2, 3]), _sample("the answer is 4", [4, 5, 6], "length"), _sample("x", [7])],
        [_sample("7", [1]), _sample("9", [1]), _sample("1", [1]), _sample("0", [1], "length")],
    ]
    out = score_generations(samples, ROWS, ["numeric_match"], threshold=1.0)
    # prompt 0: 2 of 4 correct; prompt 1: 0 of 4
    assert out["prompts"] == 2.0 and out["samples"] == 8.0 and out["threshold"] == 1.0
    assert out["reward/mean"] == pytest.approx(2 / 8)
    assert out["reward/std"] == pytest.approx((2 / 8 * (1 - 2 / 8)) ** 0.5)  # population std of 0/1 values
    assert out["correct/fraction"] == pytest.approx(2 / 8)
    assert out["pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["pass@2"] == pytest.approx((1 - comb(2, 2) / comb(4, 2) + 0.0) / 2)  # (1 - 1/6) / 2
    assert out["pass@4"] == pytest.approx((1.0 + 0.0) / 2)
    assert [key for key in out if key.startswith("pass@")] == ["pass@1", "pass@2", "pass@4"]
    assert out["response/length"] == pytest.approx((1 + 2 + 3 + 1 + 4 * 1) / 8)
    assert out["response/truncated"] == pytest.approx(2 / 8)
    assert out["reward/skipped"] == 0.0
    assert "per_prompt" not in out and all(isinstance(v, float) for v in out.values())


def test_score_generations_threshold_k_strings_and_details():
    samples = [["4", "four"], ["8", "8"]]
    weighted = [{"name": "numeric_match", "weight": 0.5}]  # a correct sample now scores 0.5
    strict = score_generations(samples, ROWS, weighted)  # default threshold 1.0: nothing is correct
    assert strict["reward/mean"] == pytest.approx(1.5 / 4) and strict["pass@2"] == 0.0
    loose = score_generations(samples, ROWS, weighted, k=1, threshold=0.5, details=True)
    assert loose["pass@1"] == pytest.approx((0.5 + 1.0) / 2) and "pass@2" not in loose
    assert loose["per_prompt"] == [{"n": 2, "correct": 1, "rewards": [0.5, 0.0]},
                                   {"n": 2, "correct": 2, "rewards": [0.5, 0.5]}]
    assert "response/length" not in loose  # plain strings carry no token ids


def test_skipped_samples_count_as_wrong_and_leave_the_mean():
    def picky(completion, **_):
        return None if completion == "skip" else float(completion == "ok")

    out = score_generations([["ok", "skip"], ["skip", "skip"]], ROWS, [{"name": "picky", "fn": picky}], details=True)
    assert out["reward/mean"] == 1.0 and out["reward/skipped"] == 3.0
    assert out["pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["per_prompt"][1]["rewards"] == [None, None]
    nothing = score_generations([["skip"], ["skip"]], ROWS, [{"name": "picky", "fn": picky}])
    assert nothing["reward/mean"] is None and nothing["pass@1"] == 0.0


def test_rewards_see_the_rows_and_completion_ids_as_in_training():
    seen = []

    def spy(completion, **columns):
        seen.append(columns)
        return 1.0

    score_generations([[_sample("a", [9, 8])], ["b"]], ROWS, [{"name": "spy", "fn": spy}])
    assert seen[0] == {**ROWS[0], "completion_ids": [9, 8]} and seen[1] == ROWS[1]


def test_loaded_rewards_pass_through():
    from rlhf.rewards import load_rewards

    out = score_generations([["4"], ["8"]], ROWS, load_rewards(["numeric_match"]))
    assert out["pass@1"] == 1.0


@pytest.mark.parametrize(
    ("samples", "rows", "k", "match"),
    [
        ([["4"]], ROWS, None, "one row per prompt"),
        ([["4"], []], ROWS, None, "no samples"),
        ([["4", "4"], ["8"]], ROWS, 2, "k=2"),
        ([], [], None, "no prompts"),
    ],
)
def test_score_generations_rejects_bad_shapes(samples, rows, k, match):
    with pytest.raises(ValueError, match=match):
        score_generations(samples, rows, ["numeric_match"], k=k)


def test_eval_modules_import_without_ray_vllm_deepspeed():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ray', 'vllm', 'deepspeed'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import rlhf.passk, rlhf.eval\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# ---- preference accuracy of local models (the function behind pair data in rlhf.eval) ----------


PAIR_ROWS = [
    {"prompt": "What is 2 + 3?", "chosen": " 5", "rejected": " 6 seven eight"},
    {"prompt": "What is 4 + 4?", "chosen": " 8 is the answer", "rejected": " 9"},
    {"prompt": "State the sum: 1 + 1", "chosen": " 2", "rejected": " 3"},
]


@pytest.fixture(scope="module")
def tiny_pairs(tiny_model):
    from actors.model_io import load_model
    from rlhf.data import tokenize_pairs
    from rlhf.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    pairs, _ = tokenize_pairs(PAIR_ROWS, tokenizer, max_length=64, max_prompt_length=32)
    return load_model(tiny_model, score_head=False).eval(), pairs, tokenizer.pad_token_id


def _avg_logp(model, prompt: list[int], completion: list[int]) -> float:
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    picked = logps[len(prompt) - 1 : -1].gather(-1, ids[0, len(prompt):, None])[:, 0]
    return float(picked.mean())


def test_simpo_pair_accuracy_matches_a_direct_computation(tiny_pairs):
    from rlhf.eval import pair_accuracy

    model, pairs, pad_id = tiny_pairs
    out = pair_accuracy(model, "simpo", pairs, pad_id, beta=2.0, batch_size=2)
    margins = [2.0 * (_avg_logp(model, p["prompt_ids"], p["chosen_ids"])
                      - _avg_logp(model, p["prompt_ids"], p["rejected_ids"])) for p in pairs]
    assert out["pairs"] == 3.0
    assert out["accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 3)
    assert out["margin"] == pytest.approx(sum(margins) / 3, abs=1e-4)


def test_dpo_pair_accuracy_with_the_policy_as_reference_is_chance(tiny_pairs):
    from rlhf.eval import pair_accuracy

    model, pairs, pad_id = tiny_pairs
    out = pair_accuracy(model, "dpo", pairs, pad_id, reference=model)
    assert out == {"accuracy": 0.5, "margin": 0.0, "pairs": 3.0}  # every pair ties: half right
    with pytest.raises(ValueError, match="reference"):
        pair_accuracy(model, "dpo", pairs, pad_id)
