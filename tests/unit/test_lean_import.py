"""The math imports without ray, vllm or deepspeed (they live in ``actors`` only)."""

import subprocess
import sys

CODE = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('ray', 'vllm', 'deepspeed'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import rlhf, rlhf.objectives, rlhf.advantages, rlhf.policy_loss, rlhf.reduction, rlhf.batch, rlhf.buffer
import rlhf.config, rlhf.schedule, rlhf.data, rlhf.rewards, rlhf.run, rlhf.models, rlhf.metrics
import rlhf.driver.offline, rlhf.driver.online, rlhf.driver.session, rlhf.driver.evaluate
assert not any(m.split('.')[0] in ('ray', 'vllm', 'deepspeed') for m in sys.modules)
print('ok')
"""


def test_import_rlhf_without_ray_vllm_deepspeed():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
