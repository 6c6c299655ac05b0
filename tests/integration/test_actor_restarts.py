"""RewardModelService on a real Ray cluster: a reward-model actor SIGKILLed by pid is restarted and the
batch scored again (same scores), at most ``max_restarts`` times; a plain handle's death is one line."""

from __future__ import annotations

import os
import signal

import pytest
import torch

pytestmark = pytest.mark.integration

ROWS = [{"prompt_ids": [5, 6, 7], "completion_ids": [8, 9]}, {"prompt_ids": [5, 6], "completion_ids": [10]}]


@pytest.fixture(scope="module")
def rm_folder(tiny_model, tmp_path_factory) -> str:
    """A scoring folder like ``--algo rm`` saves: the tiny Llama with a 1-output score head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return str(out)


def _kill(ray, handle) -> int:
    """SIGKILL the actor's process (found by asking it its pid); returns the pid."""
    pid = ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=120)
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_killed_reward_model_is_restarted_and_rescores(ray_cluster, rm_folder, capsys):
    from actors.reward_model import RewardModelService, reward_model_reward

    service = RewardModelService({"model_path": rm_folder}, {"num_cpus": 1}, max_restarts=1, timeout_s=120,
                                 limit_name="generator.max_restarts")
    try:
        reward = reward_model_reward(service, timeout_s=120, name="tiny_rm")
        before = reward(["", ""], ROWS)
        first = _kill(ray_cluster, service.handle)
        assert reward(["", ""], ROWS) == pytest.approx(before, abs=1e-6)  # the same batch, scored by a new actor
        assert service.restarts == 1
        assert "warning: RewardModelActor 'tiny_rm' died" in capsys.readouterr().err
        assert _kill(ray_cluster, service.handle) != first
        with pytest.raises(RuntimeError, match=r"RewardModelActor 'tiny_rm' died .* after 1 restart\(s\); "
                                               r"generator.max_restarts=1 allows no more"):
            reward(["", ""], ROWS)
    finally:
        service.kill()


def test_a_dead_plain_handle_is_one_error_naming_the_actor(ray_cluster, rm_folder):
    from actors.reward_model import RewardModelActor, reward_model_reward

    handle = ray_cluster.remote(RewardModelActor).options(num_cpus=1).remote({"model_path": rm_folder})
    reward = reward_model_reward(handle, timeout_s=120, name="plain_rm")
    assert len(reward(["", ""], ROWS)) == 2
    _kill(ray_cluster, handle)
    with pytest.raises(RuntimeError, match=r"^RewardModelActor 'plain_rm' died \(ActorDiedError"):
        reward(["", ""], ROWS)
