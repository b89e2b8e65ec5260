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
