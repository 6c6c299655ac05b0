"""Fitting a run onto few GPUs: the reference joins the learners, a learner and an engine share one GPU."""

from rlhf.config import build_config
from rlhf.driver.fit import fit_to_gpus
from rlhf.schedule import build_schedule


def fit(algo: str, gpus: int, *overrides: str):
    cfg = build_config(algo=algo, overrides=["device=cuda", *overrides])
    return fit_to_gpus(cfg, build_schedule(cfg), gpus)


def test_one_gpu_dpo_keeps_the_reference_in_the_learner():
    cfg, changes = fit("dpo", 1)
    assert cfg.reference.colocated and len(changes) == 1
    cfg, changes = fit("dpo", 2)  # a GPU for the reference: nothing changes
    assert not cfg.reference.colocated and not changes
    cfg, changes = fit("dpo", 1, "cluster.reference.num_gpus=0.5")  # the user's choice stands
    assert not cfg.reference.colocated and not changes


def test_one_gpu_grpo_shares_it_between_the_learner_and_the_engine():
    cfg, changes = fit("grpo", 1)
    assert (cfg.cluster.learner.num_gpus, cfg.cluster.generator.num_gpus) == (0.5, 0.5)
    assert cfg.generator.gpu_memory_utilization <= 0.35 and len(changes) == 1
    cfg, changes = fit("grpo", 2)
    assert cfg.cluster.learner.num_gpus is None and not changes
    cfg, changes = fit("simpo", 1)  # nothing to share
    assert not changes


def test_a_shared_gpu_takes_turns_unless_told_otherwise():
    from rlhf.config import ConfigError
    from rlhf.driver.fit import takes_turns

    cfg, changes = fit("grpo", 1)
    assert takes_turns(cfg, "cuda") and "taking turns with its memory" in changes[0]
    assert not takes_turns(cfg, "cpu")  # vLLM has no sleep mode on CPU
    assert not takes_turns(fit("grpo", 2)[0], "cuda")  # a GPU each: nothing to share
    assert not takes_turns(fit("grpo", 1, "generator.sleep=never")[0], "cuda")
    ahead, changes = fit("grpo", 1, "train.max_staleness=1")  # generation overlaps training: no turns
    assert not takes_turns(ahead, "cuda") and "taking turns" not in changes[0]
    assert not takes_turns(cfg, "cuda", ahead=True)  # another stage of the schedule generates ahead
    assert takes_turns(build_config(algo="grpo", overrides=["device=cuda", "generator.sleep=always"]), "cuda")
    for overrides, message in ((["device=cpu", "generator.sleep=always"], "needs device=cuda"),
                               (["device=cuda", "generator.sleep=always", "train.max_staleness=1"],
                                "needs train.max_staleness=0")):
        try:
            build_config(algo="grpo", overrides=overrides)
        except ConfigError as err:
            assert message in str(err)
        else:
            raise AssertionError(f"{overrides} was accepted")


def test_the_generator_refuses_sleep_mode_off_cuda():
    import pytest

    from actors.generator import resolve_config

    with pytest.raises(ValueError, match="sleep mode needs device 'cuda'"):
        resolve_config({"model_path": "m", "sleep": True})
    assert resolve_config({"model_path": "m", "device": "cuda", "sleep": True})["sleep"] is True
