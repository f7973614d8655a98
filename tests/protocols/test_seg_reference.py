"""The segmentation heads under the reference code's settings (mode: reference): SGD with momentum
0.9 and no weight decay, a Dice loss, raw tokens, and a refit of the chosen rate on train+val."""

import numpy as np
import pytest
import torch
from monai.losses import DiceLoss

from raddist.protocols import seg_linear
from raddist.protocols.seg_common import TokenData, _batch, _logits, concat, fit_heads, token_stats

from .test_seg_heads import fake_inputs

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (conftest.py)

REFERENCE = dict(optimizer="sgd", weight_decay=0.0, loss="dice", standardize=False, refit=True, stopping="fixed")


def test_one_sgd_step_on_the_dice_loss_of_raw_tokens():
    inputs = fake_inputs(n_patients=8, per_patient=2)
    train, val = inputs.splits["train"], inputs.splits["val"]
    params = seg_linear.Params(lrs=[0.05], epochs=1, batch_size=len(train), **REFERENCE)
    stats = token_stats(train, 1, params.standardize)
    assert all(np.all(m == 0) and np.all(s == 1) for m, s in stats)  # the tokens as cached
    data = TokenData(train, val, stats, 3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = seg_linear.build([tuple(train.tokens[0].shape[1:])], 3, 32)
    x = _batch(train, np.arange(len(train)), stats, "cpu")
    y = torch.from_numpy(train.masks.astype(np.int64))[:, None]
    DiceLoss(to_onehot_y=True, softmax=True)(_logits(head, x, 32), y).backward()
    want = head.conv.weight.detach() - 0.05 * head.conv.weight.grad  # the first step: momentum holds the gradient
    (got,), _ = fit_heads(seg_linear.build, [0.05], data, params, seed=0)
    torch.testing.assert_close(got.conv.weight.detach(), want, rtol=1e-4, atol=1e-6)


def test_the_chosen_rate_is_refit_on_train_plus_val():
    inputs = fake_inputs(n_patients=8, per_patient=2)
    train, val = inputs.splits["train"], inputs.splits["val"]
    params = seg_linear.Params(lrs=[0.01, 0.1], epochs=4, batch_size=128, **REFERENCE)
    pred = seg_linear.run(inputs, params, seed=0)
    assert pred.selected["fit_size"] == len(train) + len(val) == len(concat(train, val))
    assert pred.selected["refit_epochs"] == 4
    assert (pred.selected["optimizer"], pred.selected["loss"], pred.selected["refit"]) == ("sgd", "dice", True)
    plain = seg_linear.run(inputs, params.model_copy(update={"refit": False}), seed=0)
    assert "fit_size" not in plain.selected and pred.selected["lr"] == plain.selected["lr"]
    changed = sum(not np.array_equal(a.pred, b.pred) for a, b in zip(pred.cases, plain.cases))
    assert changed > 0  # the refit head, not the selected one, scored test
    default = seg_linear.run(inputs, seg_linear.Params(lrs=[0.01], epochs=1), seed=0)
    assert "optimizer" not in default.selected  # raddist's defaults record nothing extra
