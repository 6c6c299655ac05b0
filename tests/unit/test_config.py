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
