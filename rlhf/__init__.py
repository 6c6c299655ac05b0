"""rlhf: post-training for causal language models.

The math and the plan live here (config, data, objectives, advantages, buffer, rewards,
schedule, driver). Nothing in this package imports ray, vllm or deepspeed at import time;
those live in the sibling package ``actors`` and are reached lazily by the driver.
"""

__version__ = "0.1.0"
