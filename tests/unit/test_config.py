"""Config: every shipped YAML parses; precedence; one-line errors naming the key and the file."""

from pathlib import Path

import pytest

from rlhf.config import CONFIG_DIR, ConfigError, build_config, parse_override
from rlhf.schedule import build_schedule, parse_schedule

CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_configs_exist_for_every_objective():
    from rlhf.objectives import names

    shipped = {p.stem for p in CONFIGS}
    assert set(names()) <= shipped, f"missing configs/<algo>.yaml for {set(names()) - shipped}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_parses(path: Path):
    cfg = build_config(config_file=str(path))
    stages = build_schedule(cfg)
    assert stages and all(s.cfg.train.max_steps >= 1 for s in stages)


def test_precedence_defaults_file_flags_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("algo: dpo\ntrain: {lr: 1.0e-4, max_steps: 7}\nobjective: {beta: 0.3}\n")
    cfg = build_config(config_file=str(f), flags={"train": {"max_steps": 3}}, overrides=["train.lr=2e-5"])
    assert cfg.algo == "dpo"
    assert cfg.train.max_steps == 3 and cfg.train.lr == pytest.approx(2e-5)
    assert cfg.objective == {"beta": 0.3}
    assert cfg.train.micro_batch_size == 4  # untouched default


def test_algo_alone_reads_its_shipped_config():
    cfg = build_config(algo="simpo")
    assert cfg.objective.get("beta") == 2.0


def test_unknown_key_names_file_and_valid_keys(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("algo: simpo\ntrain: {lrr: 1}\n")
    with pytest.raises(ConfigError) as err:
        build_config(config_file=str(f))
    msg = str(err.value)
    assert "bad.yaml" in msg and "lrr" in msg and "lr" in msg and "\n" not in msg


def test_unknown_algorithm_lists_valid_names():
    with pytest.raises(ValueError, match="valid: .*simpo"):
        build_config(algo="nope")


def test_unknown_objective_param_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: .*beta"):
        build_config(algo="simpo", overrides=["objective.betta=1"])


def test_bad_literal_and_type():
    with pytest.raises(ConfigError, match="zero_stage"):
        build_config(algo="simpo", overrides=["train.zero_stage=5"])
    with pytest.raises(ConfigError, match="max_steps"):
        build_config(algo="simpo", overrides=["train.max_steps=many"])


def test_bf16_needs_zero_stage():
    with pytest.raises(ConfigError, match="zero_stage"):
        build_config(algo="simpo", overrides=["model.dtype=bfloat16", "train.zero_stage=0"])


def test_parse_override_yaml_values():
    assert parse_override("a.b=1e-3") == {"a": {"b": 1e-3}}
    assert parse_override("x=[1, 2]") == {"x": [1, 2]}
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_schedule_string_and_stage_merge():
    assert parse_schedule("simpo:3,grpo:2") == [{"algo": "simpo", "steps": 3}, {"algo": "grpo", "steps": 2}]
    cfg = build_config(config_file=str(CONFIG_DIR / "simpo_then_grpo.yaml"))
    first, second = build_schedule(cfg)
    assert (first.cfg.algo, first.cfg.train.max_steps) == ("simpo", 30)
    assert (second.cfg.algo, second.cfg.train.max_steps) == ("grpo", 20)
    assert first.cfg.objective["beta"] == 2.0 and second.cfg.objective == {}
    assert second.reset_optimizer
    with pytest.raises(ConfigError, match="algo:steps"):
        parse_schedule("simpo")


def test_reward_shorthand_sets_the_functions():
    cfg = build_config(algo="grpo", overrides=["reward=examples.custom_reward:brevity"])
    assert cfg.reward.functions == ("examples.custom_reward:brevity",)
    with pytest.raises(ValueError, match="nosuchmodule"):
        build_config(algo="grpo", overrides=["reward=nosuchmodule:fn"])


def test_stages_may_not_change_what_shapes_the_live_learners():
    from rlhf.driver.session import check_same_learners

    cfg = build_config(config_file=str(CONFIG_DIR / "simpo_then_grpo.yaml"))
    first, second = build_schedule(cfg)
    check_same_learners(first.cfg, second.cfg, second.name)  # lr, objective, generator: free to change
    bad = build_config(config_file=str(CONFIG_DIR / "simpo_then_grpo.yaml"),
                       overrides=["stages=[{algo: simpo, steps: 1}, {algo: grpo, steps: 1, train: {zero_stage: 2}}]"])
    a, b = build_schedule(bad)
    with pytest.raises(ConfigError, match="train.zero_stage"):
        check_same_learners(a.cfg, b.cfg, b.name)


# ---- bad input: one line naming the key, its valid values, and the closest valid name ---------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lrr=1"], r"train: unknown key\(s\) lrr \(did you mean 'lr'\?\); valid: num_learners"),
        (["trian.lr=1"], r"unknown key\(s\) trian \(did you mean 'train'\?\)"),
        (["objective.betta=1"], r"unknown simpo parameter\(s\) betta \(did you mean 'beta'\?\); valid: beta"),
        (["algo=simpoo"], r"unknown algorithm 'simpoo' \(did you mean 'simpo'\?\); valid: dpo"),
        (["train.lr=.nan"], "train.lr: expected a number, got nan"),
        (["train.lr=-1"], "train.lr must be a finite number >= 0, got -1.0"),
        (["train.lr=[1,"], r"override 'train.lr=\[1,': the value is not valid YAML at line 1"),
        (["generator.top_p=0"], r"generator.top_p must be in \(0, 1\], got 0.0"),
        (["train.adam_betas=[0.9, 1.5]"], r"train.adam_betas must be two numbers in \[0, 1\)"),
        (["reward.timeout_s=0"], "reward.timeout_s must be a finite number of seconds > 0"),
        (["model.max_prompt_length=256"], r"model.max_prompt_length \(256\) must be smaller than model.max_length"),
    ],
)
def test_bad_values_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_config(algo="simpo", overrides=overrides)
    assert "\n" not in str(info.value)


def test_yaml_errors_name_the_file_and_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("algo: simpo\ntrain: {lr: 1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML at line 3, column 1: expected ',' or '}'"):
        build_config(config_file=str(f))
    f.write_bytes(b"algo: simpo\nmodel: {path: caf\xe9}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: line 2 is not valid UTF-8 \(byte 0xe9\)"):
        build_config(config_file=str(f))
    f.write_text("- simpo\n")
    with pytest.raises(ConfigError, match="expected a mapping of config keys at the top level, got list"):
        build_config(config_file=str(f))
    with pytest.raises(ConfigError, match="is a folder; give a YAML file"):
        build_config(config_file=str(tmp_path))
    with pytest.raises(ConfigError, match="absent.yaml does not exist"):
        build_config(config_file=str(tmp_path / "absent.yaml"))


@pytest.mark.parametrize("algo", ["grpo", "rloo", "reinforce_pp_baseline"])
def test_a_group_baseline_needs_two_samples_per_prompt(algo):
    with pytest.raises(ConfigError, match=f"generator.n=1: {algo} compares .* group of one .* generator.n >= 2"):
        build_config(algo=algo, overrides=["generator.n=1", "generator.prompts_per_step=8"])


def test_plain_reinforce_pp_accepts_one_sample_per_prompt():
    cfg = build_config(algo="reinforce_pp", overrides=["generator.n=1", "generator.prompts_per_step=8"])
    assert cfg.generator.n == 1


def test_online_lengths_must_fit_the_engine():
    with pytest.raises(ConfigError, match=r"max_prompt_length \(192\) \+ generator.max_tokens \(400\) must fit "
                                          r"generator.max_model_len \(512\)"):
        build_config(algo="grpo", overrides=["generator.max_tokens=400"])


def test_model_and_data_paths_are_checked_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"^model.path: model '.*absent': no such folder$"):
        build_config(algo="simpo", flags={"model": {"path": str(tmp_path / "absent")}})
    with pytest.raises(ConfigError, match="model.path: .* is a folder without config.json"):
        build_config(algo="simpo", flags={"model": {"path": str(tmp_path)}})
    with pytest.raises(ConfigError, match=r"data.train: data file .*absent.jsonl' does not exist"):
        build_config(algo="simpo", flags={"data": {"train": str(tmp_path / "absent.jsonl")}})
    with pytest.raises(ConfigError, match=r"data.train: data .* is a folder; give a .jsonl, .json, .parquet file"):
        build_config(algo="simpo", flags={"data": {"train": str(tmp_path)}})
    (tmp_path / "d.csv").write_text("a\n")
    with pytest.raises(ConfigError, match=r"data.eval: .*d.csv': unsupported file type '.csv'"):
        build_config(algo="simpo", overrides=[f"data.eval={tmp_path / 'd.csv'}"])


def test_code_shipped_with_a_model_needs_trust_remote_code(tmp_path):
    import json

    assert build_config(algo="simpo").model.trust_remote_code is False
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoModelForCausalLM": "modeling.M"}}))
    with pytest.raises(ConfigError, match="ships its own Python code .* model.trust_remote_code=true"):
        build_config(algo="simpo", flags={"model": {"path": str(tmp_path)}})
    cfg = build_config(algo="simpo", flags={"model": {"path": str(tmp_path)}},
                       overrides=["model.trust_remote_code=true"])
    assert cfg.model.trust_remote_code is True


def test_actor_env_reuses_freed_memory_on_cpu_only():
    from rlhf.driver.session import REUSE_FREED_MEMORY, actor_env

    base = {"DS_ACCELERATOR": "cpu", "PATH": "/bin"}
    env = actor_env("cpu", True, base)
    assert env["DS_ACCELERATOR"] == "cpu" and "PATH" not in env  # only the forwarded names
    assert {k: env[k] for k in REUSE_FREED_MEMORY} == REUSE_FREED_MEMORY
    assert not set(REUSE_FREED_MEMORY) & set(actor_env("cpu", False, base))  # cluster.reuse_freed_memory=false
    assert not set(REUSE_FREED_MEMORY) & set(actor_env("cuda", True, base))  # GPU tensors don't use malloc
    own = actor_env("cpu", True, {**base, "MALLOC_MMAP_THRESHOLD_": "65536"})
    assert own["MALLOC_MMAP_THRESHOLD_"] == "65536"  # a user's own setting wins
    assert build_config(overrides=["cluster.reuse_freed_memory=false"]).cluster.reuse_freed_memory is False


def test_actor_threads_sleep_while_waiting_only_when_generating_ahead_on_cpu():
    from rlhf.driver.session import SLEEP_WHILE_WAITING, actor_env
    from rlhf.schedule import build_schedule, generates_ahead

    base = {"DS_ACCELERATOR": "cpu"}
    assert not set(SLEEP_WHILE_WAITING) & set(actor_env("cpu", True, base))  # synchronous: threads may spin
    assert {k: actor_env("cpu", True, base, ahead=True)[k] for k in SLEEP_WHILE_WAITING} == SLEEP_WHILE_WAITING
    assert not set(SLEEP_WHILE_WAITING) & set(actor_env("cuda", True, base, ahead=True))
    assert actor_env("cpu", True, {"OMP_WAIT_POLICY": "ACTIVE"}, ahead=True)["OMP_WAIT_POLICY"] == "ACTIVE"
    assert not generates_ahead(build_schedule(build_config(algo="grpo")))
    assert generates_ahead(build_schedule(build_config(algo="grpo", overrides=["train.max_staleness=1"])))
    stages = "stages=[{algo: sft, steps: 2}, {algo: grpo, steps: 2, train: {max_staleness: 1}}]"
    staged = build_config(overrides=[stages])
    assert generates_ahead(build_schedule(staged))
