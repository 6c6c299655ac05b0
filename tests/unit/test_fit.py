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
