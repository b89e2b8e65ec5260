"""The benchmark's plain-numpy book classes (``benchmarks/book_numpy.py``) compute what
``loopnet.nnfs``'s classes compute: the chapter loops of ``benchmarks/chapter_loops.py``, run
over both sets of classes from the same initial weights, end at the same loss and accuracy.
The numbers the benchmark compares (numpy / loopnet per epoch) mean something only then.

loopnet runs on its numpy device here (nothing to compile, so the test costs well under a
second); its cpu kernels are checked against those twins by the rest of the suite.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import loopnet
import loopnet.nnfs

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import book_numpy  # noqa: E402
from chapter_loops import CHAPTERS, chapter_data, run_chapter  # noqa: E402


@pytest.mark.parametrize("chapter", list(CHAPTERS))
@pytest.mark.parametrize("epochs", [1, 20])
def test_book_numpy_matches_loopnet_nnfs(chapter, epochs):
    data = chapter_data(chapter)
    ours = run_chapter(chapter, book_numpy, epochs, data)
    with loopnet.device("numpy"):
        theirs = run_chapter(chapter, loopnet.nnfs, epochs, data)
    # Both run float32 from the same weights; they differ only in rounding (summation order,
    # float64 loss means), ~1e-7 relative per step, so 20 steps stay far inside 1e-5. A wrong
    # formula (a missing bias correction, a penalty's factor 2) moves the loss by > 1e-3.
    assert ours.loss == pytest.approx(theirs.loss, rel=1e-5)
    # A prediction exactly at the decision threshold may round either way: one sample.
    assert abs(ours.accuracy - theirs.accuracy) <= 1 / len(data[0])


def test_training_moves_the_loss():
    """The comparison above is not of two runs that did nothing: 20 epochs change the loss."""
    data = chapter_data("ch14")
    first = run_chapter("ch14", book_numpy, 1, data)
    later = run_chapter("ch14", book_numpy, 20, data)
    assert later.loss < first.loss - 1e-3
    assert np.isfinite(later.loss)


def test_chapter_calls_times_each_method_once_and_changes_nothing(capsys):
    """``benchmarks/chapter_calls.py`` (where a chapter loop's epoch goes): its timed classes
    train to the very loss of the plain ones, and each call counts once, the outermost (a
    loss's ``calculate`` calling its ``forward`` is one call of ``calculate``)."""
    import collections

    import chapter_calls

    data = chapter_data("ch16")
    totals, counts = collections.Counter(), collections.Counter()
    with loopnet.device("numpy"):
        timed = run_chapter("ch16", chapter_calls.timed_namespace(loopnet.nnfs, totals, counts),
                            3, data)
        plain = run_chapter("ch16", loopnet.nnfs, 3, data)
    assert timed.loss == plain.loss and timed.accuracy == plain.accuracy
    assert counts == {"Layer_Dense.forward": 6, "Layer_Dense.backward": 6,
                      "Activation_ReLU.forward": 3, "Activation_ReLU.backward": 3,
                      "Activation_Sigmoid.forward": 3, "Activation_Sigmoid.backward": 3,
                      "Loss_BinaryCrossentropy.calculate": 3,
                      "Loss_BinaryCrossentropy.regularization_loss": 6,
                      "Loss_BinaryCrossentropy.backward": 3,
                      "Optimizer_Adam.pre_update_params": 3, "Optimizer_Adam.update_params": 6,
                      "Optimizer_Adam.post_update_params": 3}
    assert all(seconds > 0 for seconds in totals.values())
    chapter_calls.main(["ch16", "--epochs", "2", "--device", "numpy"])
    table = capsys.readouterr().out
    assert "| Loss_BinaryCrossentropy.calculate | 1 |" in table
    assert "| Layer_Dense.backward | 2 |" in table and "the loop's own numpy and Python" in table
