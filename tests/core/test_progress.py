"""The pace of a loop's signs of life: a line at most every so often, never one a step."""

import time

from flopsweep.core.progress import throttled


def test_a_throttled_line_passes_once_its_seconds_have_gone_by_and_drops_those_between():
    said: list[str] = []
    line = throttled(said.append, 0.2)
    line("at once")  # the first waits its seconds too: a fast loop says nothing
    time.sleep(0.25)
    line("after 0.25 s")
    line("just after")
    assert said == ["after 0.25 s"]
    every = throttled(said.append, 0.0)
    every("a")
    every("b")
    assert said == ["after 0.25 s", "a", "b"]
