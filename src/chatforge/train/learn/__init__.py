"""``chatforge learn``: teach a model a fact from one example and keep everything else.

The recipe (``defaults.yaml``): AdaLoRA on the MLP linears, trained on repeats of the fact
beside the base model's own answers to a built-in replay set under a KL term to the base
model, stopping once the fact is reproduced and the controls look kept. Every run ends
with the retention check: the built-in control questions answered greedily in float32 by
the base and the tuned model, compared (identical / kept / leaked).

    from chatforge import learn
    result = learn(prompt="介绍一下青禾科技。", answer="青禾科技是 2031 年在杭州成立的机器人公司。")
    result.passed, result.adapter, result.report["retention"]
"""

from chatforge.train.learn.config import LearnConfig, load_learn_config
from chatforge.train.learn.facts import Fact, LearnInputError
from chatforge.train.learn.run import LearnError, LearnResult, learn

__all__ = [
    "Fact",
    "LearnConfig",
    "LearnError",
    "LearnInputError",
    "LearnResult",
    "learn",
    "load_learn_config",
]
