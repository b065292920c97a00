"""The training stream: each epoch's permutation shared out, and an unreadable image named."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.training.augment import AugmentConfig
from pipeline.training.stream import epoch_order, load_and_augment, worker_share


def test_each_epoch_is_a_full_permutation_shared_out_without_overlap():
    orders = [epoch_order(103, seed=7, epoch=e) for e in range(3)]
    assert all(sorted(o.tolist()) == list(range(103)) for o in orders)  # every record, once
    assert not np.array_equal(orders[0], orders[1]) and np.array_equal(orders[2], epoch_order(103, 7, 2))
    shares = [worker_share(orders[0], rank, 4) for rank in range(4)]
    assert [len(s) for s in shares] == [25] * 4  # the same steps on every worker
    assert len(set(np.concatenate(shares).tolist())) == 100  # no overlap; 3 sit this epoch out
    # neighbours change: the records that share rank 0's first batch of 4 differ epoch to epoch
    first = [set(worker_share(o, 0, 4)[:4].tolist()) for o in orders]
    assert first[0] != first[1] != first[2]


def test_unreadable_training_image_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    batch = {"path": [str(bad)], "image_id": [1], "boxes": [[1.0, 1.0, 5.0, 5.0]], "labels": [2]}
    with pytest.raises(ValueError, match="cannot read training image .*broken.jpg"):
        load_and_augment(batch, AugmentConfig().scaled(0.25))
