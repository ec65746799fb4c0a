"""The ids profilehook makes for events sent without one (events.py): UUIDs whose first bits are
the time, and a request's ids made as a run that the SQLite log keeps instead of the ids
(plain_batch.py), so a run must give the same ids each time, all different, all sharing the
run's first ``ID_RUN_CHARS`` characters (what the log's ``find`` looks for in a kept row)."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from profilehook import constants as c
from profilehook.events import ID_RUN_CHARS, ids_of_run, new_event_id, new_event_ids, new_id_run
from tests.support import examples

# Runs whose counting part starts anywhere, near its wrap-around (2**48) and near a change of
# the 9 digits (every 4,096 ids) included.
RUNS = st.builds(
    lambda start, high, low: (start, high, low),
    st.just(new_id_run()[0]),
    st.one_of(st.integers(0, 2**36 - 1), st.just(2**36 - 1)),
    st.one_of(st.integers(0, 4_095), st.integers(4_000, 4_095)),
)


@settings(max_examples=examples(500))
@given(RUNS, st.integers(1, c.MAX_BATCH_EVENTS))
def test_a_run_gives_the_same_distinct_uuids_each_time_all_starting_with_its_prefix(
    run: tuple[str, int, int], count: int
) -> None:
    ids = ids_of_run(run, count)
    assert ids == ids_of_run(run, count)
    assert len(ids) == count == len(set(ids))
    assert all(i[:ID_RUN_CHARS] == run[0] for i in ids)
    assert len(run[0]) == ID_RUN_CHARS
    for made in (ids[0], ids[-1]):
        parsed = uuid.UUID(made)
        assert str(parsed) == made
        assert parsed.variant == uuid.RFC_4122
    # They count up from the run's 48 bits, modulo 2**48.
    first = run[1] << 12 | run[2]
    assert [int(i[-12:], 16) for i in ids] == [(first + k) % 2**48 for k in range(count)]


def test_ids_made_later_sort_later_and_a_request_s_ids_are_a_run() -> None:
    before = new_event_id()
    made = new_event_ids(5_000)
    assert len(set(made)) == 5_000
    assert len({i[:ID_RUN_CHARS] for i in made}) == 1
    assert before[:13] <= made[0][:13]  # the time's 48 bits come first
    assert all(len(i) == 36 and uuid.UUID(i).version == 4 for i in (before, *made))
