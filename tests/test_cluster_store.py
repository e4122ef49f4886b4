"""A local Ray instance's object store sized to what the sweep puts in it, so that the rest of the node's memory is
Ray's `memory` resource, which trials ask for (a ResNet-50 trial of 14.5 GiB on a 24 GB node fits only so)."""

from __future__ import annotations

import pytest

from tuner import cluster

GIB = 2 ** 30


def test_memory_mapped_data_leave_a_small_store():
    assert cluster.object_store_bytes(0, available=22 * GIB) == GIB


def test_in_memory_data_get_room_twice_over():
    assert cluster.object_store_bytes(500 * 2 ** 20, available=22 * GIB) == GIB + 1000 * 2 ** 20


def test_rays_default_when_the_data_would_not_fit_a_smaller_store():
    assert cluster.object_store_bytes(4 * GIB, available=22 * GIB) is None  # 9 GiB is more than Ray's 30 %
    assert cluster.object_store_bytes(None, available=22 * GIB) is None  # unknown: Ray decides


@pytest.mark.integration
def test_a_local_instance_gives_trials_the_memory_the_store_does_not_take():
    import psutil
    import ray

    available = psutil.virtual_memory().available
    with cluster.connect(None, None, 0):
        resources = ray.cluster_resources()
    assert resources["object_store_memory"] <= 1.01 * GIB
    # Ray's default keeps 30 % of free memory for its store; here trials may ask for nearly all of it
    assert resources["memory"] > 0.8 * available - GIB
