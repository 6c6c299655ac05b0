"""rlhf.data: loading, validation errors, chat templates, tokenization policies, reasoning-gym data."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf.batch import collate_pairs
from rlhf.data import (
    DataError,
    load_dataset_spec,
    load_rows,
    pairs_to_unpaired,
    score_with_task,
    task_prompts,
    tokenize_pairs,
    tokenize_prompts,
    tokenize_unpaired,
    train_eval_split,
    verifier_pairs,
)
from rlhf.models import load_tokenizer


@pytest.fixture(scope="module")
def tok(tiny_model):
    return load_tokenizer(tiny_model)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- tokenization and boundaries


def test_string_pair_boundaries_and_masks(tok):
    rows = [{"prompt": "What is 2 + 3?", "chosen": " 5", "rejected": " six"}]
    (ex,), stats = tokenize_pairs(rows, tok, max_length=64, max_prompt_length=32, source="mem")
    assert ex["prompt_ids"] == ids(tok, "What is 2 + 3?")
    assert tok.decode(ex["chosen_ids"]) == " 5<|im_end|>"
    assert tok.decode(ex["rejected_ids"]) == " six<|im_end|>"
    assert ex["chosen_ids"][-1] == tok.eos_token_id == ex["rejected_ids"][-1]
    assert (stats.total, stats.kept, stats.truncated, stats.dropped) == (1, 1, 0, 0)

    batch = collate_pairs([ex], pad_id=tok.pad_token_id)
    n_p, n_c, n_r = len(ex["prompt_ids"]), len(ex["chosen_ids"]), len(ex["rejected_ids"])
    for row, n in ((0, n_c), (1, n_r)):
        mask = batch["response_mask"][row].tolist()
        assert mask == [0] * n_p + [1] * n + [0] * (len(mask) - n_p - n)
        picked = [t for t, m in zip(batch["input_ids"][row].tolist(), mask) if m]
        assert tok.decode(picked) == (" 5" if row == 0 else " six") + "<|im_end|>"


def test_completion_already_ending_with_eos_gets_no_second_one(tok):
    rows = [{"prompt": "1 + 1 =", "chosen": " 2<|im_end|>", "rejected": " 3"}]
    (ex,), _ = tokenize_pairs(rows, tok, max_length=64, max_prompt_length=32)
    assert tok.decode(ex["chosen_ids"]) == " 2<|im_end|>"


def test_chat_pair_uses_template_and_cuts_completion_out(tok):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3 + 4 ="}]
    rows = [{"prompt": prompt, "chosen": [{"role": "assistant", "content": "7"}], "rejected": "8"}]
    (ex,), _ = tokenize_pairs(rows, tok, max_length=128, max_prompt_length=64, source="mem")
    prompt_text = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n3 + 4 =<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.decode(ex["prompt_ids"]) == prompt_text
    assert ex["prompt_ids"] == ids(tok, prompt_text)
    # completion = full conversation minus the prompt, ending at the end-of-turn marker (eos)
    assert tok.decode(ex["chosen_ids"]) == "7<|im_end|>"
    assert tok.decode(ex["rejected_ids"]) == "8<|im_end|>"
    full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": "7"}], tokenize=False)
    assert full.rstrip() == prompt_text + "7<|im_end|>"


def test_message_prompt_needs_a_chat_template(tok):
    bare = load_tokenizer_copy_without_template(tok)
    rows = [{"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}]
    with pytest.raises(DataError, match=r"mem: row 0 \(0-based\), field 'prompt'.*no chat template"):
        tokenize_pairs(rows, bare, max_length=64, max_prompt_length=32, source="mem")


def load_tokenizer_copy_without_template(tok):
    import copy

    bare = copy.deepcopy(tok)
    bare.chat_template = None
    return bare


# ---------------------------------------------------------------- over-length policies


def test_truncate_and_drop_policies_count_rows(tok):
    short = {"prompt": "1 + 2 =", "chosen": " 3", "rejected": " 4"}
    long_prompt = {"prompt": "one two three four five six seven eight nine ten", "chosen": " 3", "rejected": " 4"}
    long_answer = {"prompt": "1 + 2 =", "chosen": " three four five six seven eight", "rejected": " 4"}
    rows = [short, long_prompt, long_answer]
    p_long = ids(tok, long_prompt["prompt"])
    p_short = ids(tok, short["prompt"])
    c_long = ids(tok, long_answer["chosen"] + "<|im_end|>")
    max_prompt, max_len = 6, len(p_short) + 4
    assert len(p_short) <= max_prompt < len(p_long)  # the tokenizer splits as the test assumes
    assert len(p_short) + len(c_long) > max_len and len(p_short) + 2 <= max_len

    kept, stats = tokenize_pairs(rows, tok, max_len, max_prompt, policy="truncate", source="mem")
    assert (stats.total, stats.kept, stats.truncated, stats.dropped) == (3, 3, 2, 0)
    assert kept[0]["prompt_ids"] == p_short
    assert kept[1]["prompt_ids"] == p_long[-max_prompt:]  # left truncation keeps the end
    assert kept[2]["chosen_ids"] == c_long[: max_len - len(p_short)]  # completion cut to fit
    assert kept[2]["rejected_ids"] == ids(tok, " 4<|im_end|>")
    assert all(len(e["prompt_ids"]) + len(e["chosen_ids"]) <= max_len for e in kept)

    kept, stats = tokenize_pairs(rows, tok, max_len, max_prompt, policy="drop", source="mem")
    assert (stats.total, stats.kept, stats.truncated, stats.dropped) == (3, 1, 0, 2)
    assert kept[0]["prompt_ids"] == p_short
    assert "1/3 rows kept" in str(stats)


def test_pair_identical_after_truncation_is_dropped(tok):
    same = {"prompt": "1 + 2 =", "chosen": " three four five six", "rejected": " three four five seven"}
    rows = [same, {"prompt": "1 + 2 =", "chosen": " 3", "rejected": " 4"}]
    n_prompt = len(ids(tok, "1 + 2 ="))
    kept, stats = tokenize_pairs(rows, tok, n_prompt + 1, n_prompt, policy="truncate")
    assert len(kept) == 1 and (stats.kept, stats.dropped) == (1, 1)
    with pytest.raises(DataError, match=r"^<rows>: all 1 rows were dropped as over-long .*policy 'truncate'"):
        tokenize_pairs(rows[:1], tok, n_prompt + 1, n_prompt, policy="truncate")


def test_bad_limits_are_rejected(tok):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}]
    with pytest.raises(ValueError, match="must exceed max_prompt_length"):
        tokenize_pairs(rows, tok, max_length=8, max_prompt_length=8)
    with pytest.raises(ValueError, match="'truncate' or 'drop'"):
        tokenize_pairs(rows, tok, max_length=16, max_prompt_length=8, policy="cut")


# ---------------------------------------------------------------- KTO labels and prompt rows


def test_unpaired_labels(tok):
    rows = [
        {"prompt": "1 + 1 =", "completion": " 2", "label": True},
        {"prompt": "1 + 1 =", "completion": " 3", "label": False},
        {"prompt": "2 + 2 =", "completion": " 4", "label": 1},
        {"prompt": "2 + 2 =", "completion": " 5", "label": 0},
    ]
    examples, stats = tokenize_unpaired(rows, tok, max_length=32, max_prompt_length=16, source="kto")
    assert [e["label"] for e in examples] == [1, 0, 1, 0]
    assert tok.decode(examples[3]["completion_ids"]) == " 5<|im_end|>"
    assert stats.kept == 4
    bad = rows[:1] + [{"prompt": "x", "completion": "y", "label": "yes"}]
    with pytest.raises(DataError, match=r"^kto: row 1 \(0-based\), field 'label' must be boolean"):
        tokenize_unpaired(bad, tok, max_length=32, max_prompt_length=16, source="kto")
    with pytest.raises(DataError, match=r"field 'label' must be boolean.*got 2"):
        tokenize_unpaired([{"prompt": "x", "completion": "y", "label": 2}], tok, 32, 16, source="kto")


def test_prompt_rows_keep_their_columns(tok):
    rows = [
        {"prompt": [{"role": "user", "content": "2 + 2 ="}], "answer": "4", "metadata": {"k": 1}},
        {"prompt": "a very long prompt that is much too long for the limit", "answer": "x"},
    ]
    examples, stats = tokenize_prompts(rows, tok, max_prompt_length=12, policy="drop", source="p")
    assert (stats.kept, stats.dropped) == (1, 1)
    (ex,) = examples
    assert ex["answer"] == "4" and ex["metadata"] == {"k": 1} and ex["prompt"] == rows[0]["prompt"]
    assert ex["prompt_text"] == "<|im_start|>user\n2 + 2 =<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ex["prompt_ids"]) == ex["prompt_text"]
    examples, stats = tokenize_prompts(rows, tok, max_prompt_length=12, policy="truncate")
    assert stats.truncated == 1 and len(examples[1]["prompt_ids"]) == 12


# ---------------------------------------------------------------- files and malformed rows


def test_load_rows_jsonl_json_parquet(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "user", "content": "yo"}], "chosen": "c", "rejected": "d"},
    ]
    assert load_rows(write_jsonl(tmp_path / "d.jsonl", rows)) == rows
    (tmp_path / "l.json").write_text(json.dumps(rows))
    assert load_rows(tmp_path / "l.json") == rows
    (tmp_path / "s.json").write_text(json.dumps({"train": rows[:1], "test": rows[1:]}))
    assert load_rows(tmp_path / "s.json", split="test") == rows[1:]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert load_rows(str(tmp_path / "d.parquet")) == rows


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        ({"prompt": "p", "chosen": "c"}, "rejected", "is missing"),
        ({"prompt": 3, "chosen": "c", "rejected": "r"}, "prompt", "must be a string or a list of chat messages"),
        ({"prompt": "p", "chosen": "", "rejected": "r"}, "chosen", "is an empty string"),
        ({"prompt": "  ", "chosen": "c", "rejected": "r"}, "prompt", "is an empty string"),
        ({"prompt": [{"content": "hi"}], "chosen": "c", "rejected": "r"}, "prompt", "message 0 has no 'role'"),
        ({"prompt": [{"role": "user"}], "chosen": "c", "rejected": "r"}, "prompt", "message 0 has no 'content'"),
        ({"prompt": [], "chosen": "c", "rejected": "r"}, "prompt", "is an empty message list"),
        ({"prompt": "p", "chosen": [{"role": "assistant", "content": "c"}], "rejected": "r"}, "chosen",
         "the prompt is a plain string"),
        ({"prompt": [{"role": "user", "content": "p"}], "chosen": [{"role": "assistant", "content": 5}],
          "rejected": "r"}, "chosen", "'content' must be a string"),
    ],
)
def test_malformed_jsonl_row_names_file_row_and_field(tmp_path, tok, row, field, problem):
    good = {"prompt": "p", "chosen": "c", "rejected": "r"}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, good, row])
    with pytest.raises(DataError) as info:
        tokenize_pairs(load_rows(path), tok, 64, 32, source=str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: row 2 (0-based), field {field!r}")
    assert problem in message and "\n" not in message


def test_malformed_parquet_null_and_bad_json_line(tmp_path, tok):
    rows = [{"prompt": "p", "completion": "c", "label": True}, {"prompt": "p", "completion": None, "label": False}]
    path = tmp_path / "kto.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=r"kto\.parquet: row 1 \(0-based\), field 'completion' is missing or null"):
        load_dataset_spec(str(path), "unpaired")
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "p"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"broken\.jsonl: line 2 \(1-based\) is not valid JSON"):
        load_rows(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_rows(tmp_path / "absent.jsonl")


def test_hub_name_offline_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as info:
        load_rows("nobody/no-such-dataset-xyz")
    assert "could not be loaded" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- reasoning-gym data


def test_verifier_pairs_are_verified_and_deterministic():
    pairs = verifier_pairs("chain_sum", n=12, seed=3)
    assert len(pairs) == 12
    for p in pairs:
        chosen, rejected = p["chosen"][0]["content"], p["rejected"][0]["content"]
        assert p["chosen"][0]["role"] == "assistant" and chosen == p["answer"]
        assert score_with_task("chain_sum", p["entry"], chosen) == 1.0
        assert score_with_task("chain_sum", p["entry"], rejected) < 1.0
        assert int(rejected) != int(chosen)
        assert p["prompt"][0]["content"].endswith("Answer with only the final number.")
        assert p["entry"]["metadata"]["num_terms"] == 2
    assert verifier_pairs("chain_sum", n=12, seed=3) == pairs
    assert [p["answer"] for p in verifier_pairs("chain_sum", n=12, seed=4)] != [p["answer"] for p in pairs]


def test_basic_arithmetic_pairs_and_scoring():
    pairs = verifier_pairs("basic_arithmetic", n=6, seed=0)
    for p in pairs:
        assert score_with_task("basic_arithmetic", p["entry"], " " + p["answer"] + "\n") == 1.0
        assert score_with_task("basic_arithmetic", p["entry"], p["rejected"][0]["content"]) < 1.0


def test_task_prompts_and_unknown_task():
    rows = task_prompts("chain_sum", n=4, seed=0, max_digits=1)
    assert [r["task"] for r in rows] == ["chain_sum"] * 4
    assert all(len(r["entry"]["metadata"]["expression"].split()) == 3 for r in rows)
    assert all(r["prompt"][0]["role"] == "user" for r in rows)
    with pytest.raises(ValueError, match="unknown reasoning-gym task 'no_such_task'"):
        task_prompts("no_such_task", n=2)


def test_load_dataset_spec_kinds(tmp_path, tok):
    pairs = load_dataset_spec("default", "pairs", seed=1, n=4)
    assert pairs == verifier_pairs("chain_sum", 4, 1)
    unpaired = load_dataset_spec("default", "unpaired", seed=1, n=4)
    assert [r["label"] for r in unpaired] == [1, 0, 1, 0]
    assert unpaired == pairs_to_unpaired(verifier_pairs("chain_sum", 2, 1))
    prompts = load_dataset_spec("rg:basic_arithmetic", "prompts", seed=0, n=3)
    assert len(prompts) == 3 and all("answer" in r for r in prompts)
    examples, _ = tokenize_unpaired(unpaired, tok, 128, 96, source="default")
    assert tok.decode(examples[0]["completion_ids"]) == pairs[0]["answer"] + "<|im_end|>"
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 5)
    assert len(load_dataset_spec(str(path), "pairs", n=2)) == 2
    with pytest.raises(DataError, match="field 'completion' is missing"):
        load_dataset_spec(str(path), "unpaired")


def test_train_eval_split():
    rows = list(range(10))
    train, held = train_eval_split(rows, 3, seed=0)
    assert len(train) == 7 and len(held) == 3
    assert sorted(train + held) == rows and train == sorted(train) and held == sorted(held)
    assert train_eval_split(rows, 3, seed=0) == (train, held)
    assert train_eval_split(rows, 3, seed=1) != (train, held)
    assert len(train_eval_split(rows, 0.25, seed=0)[1]) == 2  # round(2.5) = 2
    with pytest.raises(ValueError, match="leaves no training rows"):
        train_eval_split(rows, 10, seed=0)


# ---------------------------------------------------------------- bad files: one line naming the file


def test_values_are_read_exactly_as_written(tmp_path):
    rows = [{"prompt": "1 + 2 =", "chosen": " 3", "rejected": " 4"}, {"prompt": "x", "chosen": 3, "rejected": "y"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    assert load_rows(path) == rows  # no column type inferred: " 3" stays a string beside the int 3
    with pytest.raises(DataError, match=r"mixed.jsonl: row 1 \(0-based\), field 'chosen' must be a string .* got int"):
        load_dataset_spec(str(path), "pairs")


def test_utf8_with_bom_loads(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}).encode() + b"\n")
    assert load_rows(path) == [{"prompt": "p", "chosen": "c", "rejected": "r"}]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin.jsonl", b'{"prompt": "p"}\n{"prompt": "caf\xe9"}\n',
         r"latin.jsonl: line 2 \(1-based\) is not valid UTF-8 \(byte 0xe9 at column 16\); save the file as UTF-8"),
        ("latin.json", b'[{"prompt": "p"},\n {"prompt": "caf\xe9"}]',
         r"latin.json: line 2 \(1-based\) is not valid UTF-8 \(byte 0xe9 at column 17\)"),
        ("empty.jsonl", b"", r"empty.jsonl: the file is empty \(no rows\)"),
        ("blank.jsonl", b"\n\n", "blank.jsonl: the file holds no rows"),
        ("none.json", b"[]", "none.json: the file holds no rows"),
        ("cut.json", b'[{"prompt": "p"', r"cut.json: not valid JSON at line 1, column 16 \(1-based\)"),
        ("scalar.json", b"3", "scalar.json: expected a list of rows, got int"),
        ("bad.parquet", b"PAR1 not parquet", "bad.parquet: cannot read as parquet"),
        ("d.csv", b"prompt\n", r"d.csv': unsupported file type '.csv' \(use .jsonl, .json, .parquet\)"),
    ],
)
def test_bad_files_fail_in_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_rows(path)
    assert "\n" not in str(info.value)


def test_folders_and_missing_paths(tmp_path):
    from rlhf.data.loaders import check_data_spec

    with pytest.raises(DataError, match="is a folder; give a .jsonl, .json, .parquet file"):
        load_rows(tmp_path)
    with pytest.raises(DataError, match="does not exist"):  # also a FileNotFoundError (see above)
        load_rows(tmp_path / "absent")
    with pytest.raises(DataError, match="name a task after 'rg:'"):
        check_data_spec("rg:")
    for spec in ("default", "rg:chain_sum", "org/dataset"):
        check_data_spec(spec)  # reads nothing; a hub name is for datasets to judge
    with pytest.raises(DataError, match=r"unknown reasoning-gym task 'chain_summ' \(did you mean 'chain_sum'\?\)"):
        task_prompts("chain_summ", n=1)


def test_limits_that_no_prompt_fits_are_refused(tok):
    rows = [{"prompt": "one two three four five", "chosen": " a", "rejected": " b"}] * 2
    with pytest.raises(DataError, match=r"^src: none of the 2 prompts fits max_prompt_length=2 tokens \(the shortest "
                                        r"has \d+\); raise model.max_prompt_length"):
        tokenize_pairs(rows, tok, max_length=8, max_prompt_length=2, policy="truncate", source="src")


def test_every_row_dropped_is_an_error_and_some_dropped_are_counted(tok):
    long = {"prompt": "1 + 2 =", "chosen": " three" * 40, "rejected": " 4"}
    short = {"prompt": "1 + 2 =", "chosen": " 3", "rejected": " 4"}
    kept, stats = tokenize_pairs([long, short, long], tok, 16, 8, policy="drop", source="src")
    assert len(kept) == 1 and (stats.total, stats.kept, stats.dropped) == (3, 1, 2)
    with pytest.raises(DataError, match=r"^src: all 2 rows were dropped as over-long \(max_prompt_length=8, "
                                        r"max_length=16 tokens, policy 'drop'\); .* model.truncation=truncate$"):
        tokenize_pairs([long, long], tok, 16, 8, policy="drop", source="src")


def test_column_mapping_reads_a_data_sets_own_column_names(tmp_path):
    from rlhf.data import load_dataset_spec, load_rows
    from rlhf.data.schema import DataError

    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "1 + 2 = ?", "solution": "3", "id": 7}\n{"question": "2 + 2 = ?", "solution": "4"}\n')
    rows = load_rows(path, columns={"prompt": "question", "answer": "solution"})
    assert rows == [{"prompt": "1 + 2 = ?", "answer": "3", "id": 7}, {"prompt": "2 + 2 = ?", "answer": "4"}]
    prompts = load_dataset_spec(str(path), "prompts", columns={"prompt": "question"})
    assert [r["prompt"] for r in prompts] == ["1 + 2 = ?", "2 + 2 = ?"] and "question" not in prompts[0]
    with pytest.raises(DataError, match=r"qa.jsonl: row 0 \(0-based\) has no column 'query' \(data.columns maps it to "
                                        r"'prompt'; columns present: id, question, solution\)"):
        load_rows(path, columns={"prompt": "query"})


def test_column_mapping_through_the_config(tmp_path):
    from rlhf.config import build_config

    cfg = build_config(algo="grpo", overrides=["data.columns={prompt: question, answer: solution}",
                                                "data.split=test", "data.subset=main"])
    assert cfg.data.columns == {"prompt": "question", "answer": "solution"}
    assert (cfg.data.split, cfg.data.subset) == ("test", "main")
