"""runtime/pipeline: the plan from measured costs, order kept, and the same labels as one
photo at a time, on real photos and the shipped models."""

import threading

import pytest

from edgeconv.runtime import Classifier
from edgeconv.runtime.pipeline import Costs, in_order, plan, thread_choices


def test_the_bound_counts_every_core_busy_on_decode_plus_the_cheapest_inference():
    costs = Costs(decode_ms=2.09, infer_ms={1: 5.81, 2: 2.95})  # plus int8 on a 2-core AVX2
    assert costs.bound(2) == pytest.approx(2000 / (2.09 + 5.81))


def test_the_plan_follows_the_costs_not_a_fixed_rule():
    # Inference three times the decode, scaling below 2x on 2 threads: two 1-thread workers.
    chosen = plan(Costs(2.09, {1: 5.81, 2: 2.95}), cap=2)
    assert (chosen.interpreters, chosen.threads) == (2, 1)
    assert chosen.expected == pytest.approx(Costs(2.09, {1: 5.81, 2: 2.95}).bound(2))
    # An engine that scales past 2x on 2 threads (cache effects): one interpreter of 2.
    chosen = plan(Costs(0.5, {1: 10.0, 2: 4.0}), cap=2)
    assert (chosen.interpreters, chosen.threads) == (1, 2)
    # --threads caps the total; costs measured beyond the cap are not used.
    chosen = plan(Costs(2.0, {1: 6.0, 2: 3.0, 4: 1.0}), cap=3)
    assert chosen.interpreters * chosen.threads <= 3
    assert thread_choices(1) == [1] and thread_choices(6) == [1, 2, 4, 6]


def test_in_order_keeps_the_order_of_items_that_finish_out_of_order_and_reads_lazily():
    release = {index: threading.Event() for index in range(6)}
    taken = []

    def stream():
        for index in range(6):
            taken.append(index)
            yield index

    def work(index):  # each item waits for the one after it: they finish in reverse
        if index < 5:
            release[index + 1].wait(timeout=30)
        release[index].set()
        return index * 10

    results = in_order(work, stream(), workers=6, ahead=0)
    assert next(results) == (0, 0)
    assert list(results) == [(index, index * 10) for index in range(1, 6)]
    taken.clear()
    lazy = in_order(lambda index: index, stream(), workers=2, ahead=1)
    next(lazy)
    assert len(taken) <= 2 + 1 + 1  # the workers', one ahead, one being read
    lazy.close()


@pytest.mark.parametrize("name", ["plus_int8.tflite", "plus_int8.onnx"])
def test_the_split_classifier_labels_test_photos_as_one_at_a_time_in_order(shipped, real_data,
                                                                            name):
    photos = sorted((real_data / "test").glob("*/*.jpg"))[::10]  # 100 of the 1,000
    one_at_a_time = Classifier(shipped / name)
    expected = [one_at_a_time.predict(photo) for photo in photos]
    classifier = Classifier(shipped / name, threads=2)
    results = list(classifier.predict_each(photos, split=True))
    assert classifier.plan.interpreters * classifier.plan.threads <= 2
    assert classifier.costs.decode_ms > 0 and set(classifier.costs.infer_ms) == {1, 2}
    assert [source for source, _ in results] == photos
    assert [p.label for _, p in results] == [p.label for p in expected]
    assert [p.scores for _, p in results] == [p.scores for p in expected]
