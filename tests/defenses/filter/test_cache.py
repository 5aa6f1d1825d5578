"""ModelCache: the identity cache NCFilter and AnomalyFilter keep per (model, clean pool)."""
from __future__ import annotations

import gc
import weakref

import torch

from backdoorlab.defenses.filter._cache import ModelCache


def _counter():
    calls = []

    def compute():
        calls.append(1)
        return object()
    return calls, compute


def test_hit_on_same_model_and_inputs_miss_on_another_model_or_pool():
    cache, (calls, compute) = ModelCache(), _counter()
    m1, m2 = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    pool = torch.zeros(3, 2)
    first = cache.get(m1, pool, compute)
    assert cache.get(m1, pool, compute) is first and len(calls) == 1          # hit
    other = cache.get(m2, pool, compute)                                      # another model: miss
    assert other is not first and len(calls) == 2
    assert cache.get(m2, pool.clone(), compute) is not other and len(calls) == 3   # equal values, other tensor
    assert cache.get(m1, pool, compute) is not first and len(calls) == 4      # one entry: m1 was replaced


def test_miss_after_the_model_is_garbage_collected():
    cache, (calls, compute) = ModelCache(), _counter()
    pool = torch.zeros(3, 2)
    model = torch.nn.Linear(2, 2)
    cache.get(model, pool, compute)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None                       # the cache did not keep the model alive
    for _ in range(5):                         # new models (some may reuse the freed id) never hit it
        m = torch.nn.Linear(2, 2)
        cache.get(m, pool, compute)
        del m
        gc.collect()
    assert len(calls) == 6
