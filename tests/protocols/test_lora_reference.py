"""LoRA's bias setting: raddist trains no bias, the reference code (mode: reference) trains the
biases of the adapted layers (peft's bias="lora_only")."""

import peft
import pytest
from torch import nn

from raddist.protocols import dora, lora


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.proj, self.fc1, self.fc2, self.head = (nn.Linear(4, 4) for _ in range(5))

    def forward(self, x):
        return self.head(self.fc2(self.fc1(self.proj(self.qkv(x)))))


@pytest.mark.parametrize("bias,trained", [("none", set()), ("lora_only", {"qkv", "fc1", "fc2"})])
def test_which_biases_train(bias, trained):
    params = lora.Params(r=2, alpha=4, bias=bias)
    model = peft.get_peft_model(Block(), params.method().peft_config())
    biases = {name.split(".")[-3] for name, p in model.named_parameters()
              if p.requires_grad and name.endswith("bias") and "head" not in name}
    assert biases == trained  # proj, not adapted, never trains its bias
    assert dora.Params(bias=bias).method().peft_config().bias == bias
