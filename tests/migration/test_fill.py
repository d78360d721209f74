"""The migration's fill (:func:`~vfio_user_mig.simulator.migration.session.fill_bytes`): content
every page of which is distinct, drawn so the seed's random stream moves on exactly as
``randbytes`` would move it (a run's later draws stay those of its seed)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from vfio_user_mig.simulator.migration.guest import PAGE_SIZE
from vfio_user_mig.simulator.migration.session import fill_bytes


@given(seed=st.integers(0, 2**64), n=st.integers(0, 40 * PAGE_SIZE + 17))
def test_the_stream_moves_on_as_randbytes_moves_it(seed: int, n: int) -> None:
    ours, theirs = random.Random(seed), random.Random(seed)
    data = fill_bytes(ours, n)
    theirs.randbytes(n)
    assert len(data) == n
    assert ours.getstate() == theirs.getstate()
    assert ours.random() == theirs.random()


@given(seed=st.integers(0, 2**64), pages=st.integers(1, 64))
def test_every_page_is_distinct_and_numbered(seed: int, pages: int) -> None:
    data = fill_bytes(random.Random(seed), pages * PAGE_SIZE)
    chunks = [data[i : i + PAGE_SIZE] for i in range(0, len(data), PAGE_SIZE)]
    assert len(set(chunks)) == pages
    assert [int.from_bytes(c[:8], "little") for c in chunks] == list(range(pages))
    # the body is the draw's random first page, not a constant
    assert chunks[0][8:] != bytes(PAGE_SIZE - 8)


def test_the_same_seed_gives_the_same_bytes_and_another_seed_others() -> None:
    a = fill_bytes(random.Random(7), 3 * PAGE_SIZE)
    assert a == fill_bytes(random.Random(7), 3 * PAGE_SIZE)
    assert a != fill_bytes(random.Random(8), 3 * PAGE_SIZE)


def test_a_partial_last_page_is_a_prefix_of_the_whole_page() -> None:
    whole = fill_bytes(random.Random(3), 2 * PAGE_SIZE)
    part = fill_bytes(random.Random(3), PAGE_SIZE + 100)
    assert part[:PAGE_SIZE] == whole[:PAGE_SIZE]
    assert part[PAGE_SIZE:] == whole[PAGE_SIZE : PAGE_SIZE + 100]
