import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trl_edge import Pacing, make_pacing

progress = st.floats(min_value=0.0, max_value=1.0)


@pytest.mark.parametrize("name", ["linear", "root", "exponential", "anti"])
def test_starts_at_c0_and_reaches_one_at_duration(name):
    pacing = Pacing(name, c0=0.05, duration=0.5)
    assert pacing(0.0) == pytest.approx(0.05)
    assert pacing(0.5) == pytest.approx(1.0)
    assert pacing(0.9) == 1.0


@pytest.mark.parametrize("name", ["linear", "root", "exponential", "anti", "none"])
@given(t1=progress, t2=progress, c0=st.floats(min_value=0.001, max_value=1.0))
def test_monotone_and_bounded(name, t1, t2, c0):
    pacing = Pacing(name, c0=c0)
    lo, hi = sorted((t1, t2))
    assert c0 - 1e-12 <= pacing(lo) <= pacing(hi) + 1e-12 <= 1.0 + 1e-12


def test_closed_forms():
    c0 = 0.04
    assert Pacing("linear", c0=c0)(0.5) == pytest.approx(c0 + (1 - c0) / 2)
    assert Pacing("root", c0=c0, degree=2)(0.5) == pytest.approx(math.sqrt(c0**2 + (1 - c0**2) / 2))
    assert Pacing("root", c0=c0, degree=1)(0.3) == pytest.approx(Pacing("linear", c0=c0)(0.3))
    assert Pacing("exponential", c0=c0)(0.5) == pytest.approx(math.sqrt(c0))
    assert Pacing("none")(0.0) == 1.0
    assert Pacing("anti").reverse and not Pacing("linear").reverse


def test_step_levels_and_boundaries():
    pacing = Pacing("step", boundaries=[0.25, 0.5])
    assert [pacing(t) for t in (0.0, 0.24, 0.25, 0.49, 0.5, 1.0)] == pytest.approx(
        [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0, 1.0]
    )
    explicit = Pacing("step", boundaries=[0.5], levels=[0.2, 1.0])
    assert explicit(0.1) == 0.2 and explicit(0.6) == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="cosine"), "Unknown pacing 'cosine'"),
        (dict(name="linear", c0=0.0), "`c0` must be in"),
        (dict(name="linear", duration=1.5), "`duration` must be in"),
        (dict(name="root", degree=0), "degree"),
        (dict(name="step"), "at least one boundary"),
        (dict(name="step", boundaries=[0.6, 0.3]), "strictly increasing"),
        (dict(name="step", boundaries=[0.5], levels=[0.5]), "one more level than boundaries"),
        (dict(name="step", boundaries=[0.5], levels=[0.5, 0.9]), "last step pacing level must be 1.0"),
        (dict(name="linear", boundaries=[0.5]), "only apply to step pacing"),
    ],
)
def test_bad_pacing_is_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Pacing(**kwargs)


def test_make_pacing_accepts_names_and_callables():
    assert make_pacing("root", c0=0.1)(0.0) == pytest.approx(0.1)
    fn = lambda t: t  # noqa: E731
    assert make_pacing(fn) is fn
    with pytest.raises(TypeError, match="pacing name or a callable"):
        make_pacing(3)
