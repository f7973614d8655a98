"""The embedding cache's key: whatever changes the features changes the key, nothing else does."""

from raddist import spec as spec_lib
from raddist.embed import cache as cache_lib
from raddist.plan import make_plan


def _job(size=None):
    spec = spec_lib.parse({
        "backbones": [{"name": "tiny_vit", "weights": "random"}],
        "tasks": [{"name": "t", "manifest": "m.parquet", "type": "multilabel", "labels": ["a"]}],
        "protocols": [{"name": "knn"}],
        **({"image_size": size} if size else {}),
    })
    return next(iter(make_plan(spec).jobs.values()))


def test_key_follows_what_the_features_depend_on(tmp_path, monkeypatch):
    cache = cache_lib.EmbeddingCache(str(tmp_path))
    job = _job()
    key = cache.key(job, "random", "manifest-a")
    assert cache.key(_job(), "random", "manifest-a") == key  # deterministic
    others = {
        cache.key(job, "random", "manifest-b"),
        cache.key(job, "sha256:abc", "manifest-a"),
        cache.key(_job(size=96), "random", "manifest-a"),
        cache.key(job, "random", "manifest-a", slices=True),
        cache.key(job, "random", "manifest-a", decoder="nvjpeg"),  # JPEGs decoded on the GPU
    }
    monkeypatch.setattr(cache_lib, "DECODE_VERSION", cache_lib.DECODE_VERSION + 1)  # the decoded pixels change
    others.add(cache.key(job, "random", "manifest-a"))
    monkeypatch.setattr(cache_lib, "EMBEDDER_VERSION", cache_lib.EMBEDDER_VERSION + 1)
    others.add(cache.key(job, "random", "manifest-a"))
    assert key not in others and len(others) == 7
