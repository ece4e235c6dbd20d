import numpy as np
import pytest

from pe_core.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from pe_core.samples import Samples


def _images(n=3):
    return Samples(
        ids=np.array([f"s{i}" for i in range(n)]),
        labels=np.arange(n) % 2,
        label_names=("a", "b"),
        images=np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2, 1),
        params={"size": np.arange(n, dtype=np.int16), "font": np.array(["x"] * n)},
    )


def test_round_trip_images_and_texts(tmp_path):
    store = CheckpointStore(tmp_path)
    texts = Samples(
        ids=np.array(["t0", "t1"]), labels=[0, 1], label_names=("a", "b"), texts=("hi", "yo")
    )
    store.save(Checkpoint(0, _images(), {"seed": 1}))
    store.save(Checkpoint(1, texts, {"seed": 1}))
    first = store.load(0)
    np.testing.assert_array_equal(first.population.images, _images().images)
    np.testing.assert_array_equal(first.population.params["size"], np.arange(3))
    assert first.population.params["font"].tolist() == ["x"] * 3
    latest = store.latest()
    assert latest.iteration == 1
    assert latest.population.texts == ("hi", "yo")
    assert latest.meta == {"seed": 1}


def test_no_temp_files_left_and_latest_none_when_empty(tmp_path):
    store = CheckpointStore(tmp_path / "c")
    assert store.latest() is None
    store.save(Checkpoint(0, _images(), {}))
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["iter_000.json", "iter_000.npz"]


def test_tampered_population_is_detected(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(Checkpoint(0, _images(), {}))
    path = tmp_path / "iter_000.npz"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="sha256"):
        store.load(0)
