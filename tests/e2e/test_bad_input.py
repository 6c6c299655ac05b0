"""Bad input through the command line: each case ends with exactly one ``error:`` line on stderr
naming the file, row and field (or the key and its valid values), exit code 2, no traceback.

Most cases call ``rlhf.run.main([...])`` in this process (the real argument parser and error
path) with ``Session`` replaced by a tripwire, which proves the error comes before any actor
starts. A few go through a real ``python -m rlhf.run`` subprocess, and one runs GRPO on the tiny
model with a reward that raises (the only case that shows only once training runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rlhf.run

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PAIR = {"prompt": "1 + 2 =", "chosen": " 3", "rejected": " 4"}
UNPAIRED = {"prompt": "1 + 2 =", "completion": " 3", "label": True}
PROMPT = {"prompt": "1 + 2 =", "answer": "3"}
CHAT_PAIR = {"prompt": [{"role": "user", "content": "1 + 2 ="}], "chosen": [{"role": "assistant", "content": "3"}],
             "rejected": [{"role": "assistant", "content": "4"}]}


def jsonl(*rows: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# id -> (file name, content or None, argv before the common flags, texts the error line must hold).
# "{f}" in argv is the written file; "{tmp}" the test's folder.
CASES: dict[str, tuple[str | None, str | bytes | None, list[str], list[str]]] = {
    "malformed_jsonl": ("bad.jsonl", jsonl(PAIR) + '{"prompt": "a", "chosen": \n', ["--data", "{f}"],
                        ["bad.jsonl", "line 2 (1-based)", "not valid JSON"]),
    "truncated_json": ("cut.json", '[{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a"',
                       ["--data", "{f}"], ["cut.json", "line 1, column", "not valid JSON"]),
    "row_not_an_object": ("rows.jsonl", jsonl(PAIR, [1, 2]), ["--data", "{f}"],
                          ["rows.jsonl", "row 1", "is a list, not an object"]),
    "pairs_missing_field": ("p.jsonl", jsonl(PAIR, {"prompt": "a", "chosen": "b"}), ["--data", "{f}"],
                            ["p.jsonl", "row 1 (0-based)", "field 'rejected'", "missing"]),
    "pairs_mistyped_field": ("p.jsonl", jsonl(PAIR, {**PAIR, "chosen": 3}), ["--data", "{f}"],
                             ["p.jsonl", "row 1 (0-based)", "field 'chosen'", "got int"]),
    "unpaired_missing_label": ("u.jsonl", jsonl(UNPAIRED, {"prompt": "a", "completion": "b"}),
                               ["--algo", "kto", "--data", "{f}"], ["u.jsonl", "row 1", "field 'label'", "missing"]),
    "unpaired_mistyped_completion": ("u.jsonl", jsonl(UNPAIRED, {**UNPAIRED, "completion": 5}),
                                     ["--algo", "kto", "--data", "{f}"],
                                     ["u.jsonl", "row 1", "field 'completion'", "got int"]),
    "kto_label_not_boolean": ("u.jsonl", jsonl(UNPAIRED, {**UNPAIRED, "label": "yes"}),
                              ["--algo", "kto", "--data", "{f}"],
                              ["u.jsonl", "row 1", "field 'label' must be boolean", "'yes'"]),
    "kto_label_two": ("u.jsonl", jsonl({**UNPAIRED, "label": 2}, UNPAIRED), ["--algo", "kto", "--data", "{f}"],
                      ["u.jsonl", "row 0", "field 'label' must be boolean", "got 2"]),
    "prompts_missing_prompt": ("q.jsonl", jsonl(PROMPT, {"question": "a", "answer": "1"}),
                               ["--algo", "grpo", "--data", "{f}"], ["q.jsonl", "row 1", "field 'prompt'", "missing"]),
    "prompts_mistyped_prompt": ("q.jsonl", jsonl(PROMPT, {"prompt": 5, "answer": "1"}),
                                ["--algo", "grpo", "--data", "{f}"],
                                ["q.jsonl", "row 1", "field 'prompt'", "got int"]),
    "chat_message_without_role": (
        "chat.jsonl", jsonl(CHAT_PAIR, {**CHAT_PAIR, "prompt": [{"content": "hi"}]}), ["--data", "{f}"],
        ["chat.jsonl", "row 1", "field 'prompt', message 0 has no 'role'"]),
    "non_utf8_bytes": ("latin.jsonl", jsonl(PAIR).encode() + b'{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n',
                       ["--data", "{f}"], ["latin.jsonl", "line 2 (1-based) is not valid UTF-8", "byte 0xe9"]),
    "empty_file": ("empty.jsonl", "", ["--data", "{f}"], ["empty.jsonl", "the file is empty"]),
    "directory_as_data": (None, None, ["--data", "{tmp}"], ["data.train", "is a folder", ".jsonl, .json, .parquet"]),
    "missing_data_path": (None, None, ["--data", "{tmp}/absent.jsonl"],
                          ["data.train", "absent.jsonl", "does not exist"]),
    "unsupported_file_type": ("d.csv", "prompt,chosen,rejected\na,b,c\n", ["--data", "{f}"],
                              ["d.csv", "unsupported file type '.csv'", ".jsonl, .json, .parquet"]),
    "corrupt_parquet": ("d.parquet", b"PAR1 not really parquet", ["--data", "{f}"],
                        ["d.parquet", "cannot read as parquet"]),
    "rows_longer_than_context_all_dropped": (
        "long.jsonl", jsonl(*[{**PAIR, "chosen": " three" * 300}] * 3),
        ["--data", "{f}", "model.truncation=drop", "data.eval_size=1"],
        ["long.jsonl", "all 2 rows were dropped as over-long", "model.truncation=truncate"]),
    "max_length_too_short_for_any_prompt": (
        None, None, ["data.size=12", "data.eval_size=2", "model.max_prompt_length=4", "model.max_length=8"],
        ["none of the 10 prompts fits max_prompt_length=4", "model.max_prompt_length"]),
    "unknown_algorithm": (None, None, ["--algo", "simpoo"], ["unknown algorithm 'simpoo'", "did you mean 'simpo'",
                                                             "valid: dpo, grpo"]),
    "unknown_config_key": (None, None, ["train.lrr=1"], ["train.lrr=1", "unknown key(s) lrr", "did you mean 'lr'",
                                                         "valid: num_learners"]),
    "unknown_config_section": (None, None, ["trian.lr=1"], ["unknown key(s) trian", "did you mean 'train'"]),
    "unknown_objective_param": (None, None, ["objective.betta=1"], ["unknown simpo parameter(s) betta",
                                                                    "did you mean 'beta'", "valid: beta"]),
    "yaml_syntax_error": ("bad.yaml", "algo: simpo\ntrain: {lr: 1\n", ["--config", "{f}"],
                          ["bad.yaml", "not valid YAML at line 3, column 1"]),
    "missing_config_file": (None, None, ["--config", "{tmp}/absent.yaml"], ["config file", "absent.yaml",
                                                                             "does not exist"]),
    "negative_beta": (None, None, ["--algo", "dpo", "objective.beta=-1"], ["dpo", "beta must be > 0", "-1"]),
    "lr_not_a_number": (None, None, ["train.lr=fast"], ["train.lr", "expected a number", "'fast'"]),
    "negative_lr": (None, None, ["train.lr=-1e-5"], ["train.lr must be a finite number >= 0"]),
    "zero_stage_5": (None, None, ["train.zero_stage=5"], ["train.zero_stage", "5 is not one of 0, 1, 2, 3"]),
    "grpo_group_of_1": (None, None, ["--algo", "grpo", "generator.n=1"],
                        ["generator.n=1", "group baseline", "undefined for a group of one", "generator.n >= 2"]),
    "rloo_group_of_1": (None, None, ["--algo", "rloo", "generator.n=1"], ["generator.n=1", "rloo", "group of one"]),
    "non_positive_max_steps": (None, None, ["--max-steps", "0"], ["train.max_steps must be >= 1, got 0"]),
    "max_steps_not_an_int": (None, None, ["--max-steps", "many"], ["--max-steps", "invalid int value: 'many'"]),
    "model_path_missing": (None, None, ["--model", "{tmp}/no_model"], ["model.path", "no_model", "no such folder"]),
    "unknown_reward": (None, None, ["--algo", "grpo", "reward=numeric_matsh"],
                       ["reward.functions", "unknown reward 'numeric_matsh'", "did you mean 'numeric_match'",
                        "built-ins: format_reward, numeric_match, reasoning_gym"]),
    "reward_module_missing": (None, None, ["--algo", "grpo", "reward=no_such_module:fn"],
                              ["reward 'no_such_module:fn'", "cannot import module 'no_such_module'"]),
    "reward_function_missing": (None, None, ["--algo", "grpo", "reward=examples.custom_reward:nope"],
                                ["reward 'examples.custom_reward:nope'", "has no attribute 'nope'"]),
    "reward_timeout_not_positive": (None, None, ["--algo", "grpo", "reward.timeout_s=0"],
                                    ["reward.timeout_s must be a finite number of seconds > 0"]),
    "override_value_not_yaml": (None, None, ["train.lr=[1,"], ["train.lr=[1,", "not valid YAML"]),
}


@pytest.fixture
def no_actors(monkeypatch):
    """A tripwire: starting the actors' session fails the test (bad input must be found first)."""
    import rlhf.driver.session

    def tripwire(*args, **kwargs):
        raise AssertionError("an actor session was started")

    monkeypatch.setattr(rlhf.driver.session, "Session", tripwire)
    monkeypatch.syspath_prepend(str(REPO))  # examples.custom_reward, as from the repository root


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line(case, tmp_path, tiny_model, capsys, no_actors):
    name, content, argv, expected = CASES[case]
    f = tmp_path / (name or "unused")
    if content is not None:
        f.write_bytes(content if isinstance(content, bytes) else content.encode())
    argv = [a.replace("{f}", str(f)).replace("{tmp}", str(tmp_path)) for a in argv]
    common = ["--output-dir", str(tmp_path / "out"), "progress=false"]
    if "--config" not in argv and "--model" not in argv:
        common += ["--model", tiny_model]
    rc = rlhf.run.main([*argv, *common])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2, line
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"


def test_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data", "{tmp}/bad.jsonl"], ["bad.jsonl", "line 2 (1-based)", "not valid JSON"]),
        (["train.lrr=1"], ["unknown key(s) lrr", "did you mean 'lr'"]),
        (["--config", "{tmp}/bad.yaml"], ["bad.yaml", "not valid YAML at line 3, column 1"]),
    ],
    ids=["malformed_data", "unknown_key", "yaml_syntax"],
)
def test_bad_input_through_a_real_process(args, expected, tmp_path, tiny_model, run_cli):
    (tmp_path / "bad.jsonl").write_text(jsonl(PAIR) + "{not json\n")
    (tmp_path / "bad.yaml").write_text("algo: simpo\ntrain: [lr: 1\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = run_cli(*args, "--model", tiny_model, "--output-dir", str(tmp_path / "o"), "progress=false", timeout=300)
    line = one_error_line(proc.stderr)
    assert proc.returncode == 2, proc.stderr[-2000:]
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"


REWARD_MODULE = '''
def boom(completion, **_):
    raise ZeroDivisionError("no reward for you")
'''


def test_reward_that_raises_stops_the_run_naming_it(tmp_path, tiny_model, run_cli, monkeypatch):
    (tmp_path / "bad_reward.py").write_text(REWARD_MODULE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    proc = run_cli("--algo", "grpo", "--max-steps", "1", "--model", tiny_model, "--output-dir", str(tmp_path / "o"),
                   "reward=bad_reward:boom", "data.size=8", "generator.prompts_per_step=2", "generator.n=2",
                   "generator.max_tokens=4", "progress=false", timeout=300)
    line = one_error_line(proc.stderr)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "reward 'bad_reward:boom' failed on sample 0: ZeroDivisionError: no reward for you" in line
