"""``dcollapse`` whose rank 1 fails at the start of epoch 3 (a stand-in for a lost disk or an out-of-memory error on
one machine): the real CLI otherwise. Used by tests/test_distributed.py through the elastic launcher."""

import os

import dcollapse.train as training
from dcollapse.cli.app import main

FAIL_EPOCH = 3
original = training.train_epoch


def failing(*args, **kwargs):
    if os.environ.get("RANK") == "1" and args[5] == FAIL_EPOCH:  # args[5] is the epoch
        raise RuntimeError("simulated failure on rank 1")
    return original(*args, **kwargs)


training.train_epoch = failing
main()
