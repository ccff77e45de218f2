"""Property tests: valid architectures round-trip; no string crashes the decoder."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from search_spaces import ACTIVATIONS, FAMILIES, ArchConfig, ArchError, BlockConfig, HeadConfig, StemConfig


@st.composite
def blocks(draw):
    fam = FAMILIES[draw(st.sampled_from(sorted(FAMILIES)))]
    expand = draw(st.integers(1000, 8000)) / 1000 if fam.has_expand else 1.0
    channels = draw(st.integers(1, 256)) * (2 if fam.even_channels else 1)
    return BlockConfig(fam.name, draw(st.sampled_from(fam.kernels)), expand, channels,
                       draw(st.sampled_from(fam.strides)), draw(st.sampled_from(fam.se_ratios)),
                       draw(st.sampled_from(fam.activations)))


@st.composite
def archs(draw):
    stem = StemConfig(draw(st.integers(1, 64)), draw(st.sampled_from((1, 3, 5, 7))), draw(st.sampled_from((1, 2))),
                      draw(st.sampled_from(ACTIVATIONS)), draw(st.booleans()))
    stages = draw(st.lists(st.lists(blocks(), min_size=1, max_size=4), min_size=1, max_size=5))
    head = HeadConfig(draw(st.integers(1, 2048)), draw(st.integers(0, 2048)), draw(st.sampled_from(ACTIVATIONS)))
    return ArchConfig(draw(st.integers(1, 512)), draw(st.integers(1, 4)), draw(st.integers(1, 1000)), stem,
                      tuple(tuple(s) for s in stages), head)


@settings(max_examples=300, deadline=None)
@given(archs())
def test_valid_architectures_round_trip(arch):
    text = arch.to_str()
    assert ArchConfig.from_str(text) == arch
    assert ArchConfig.from_str(text).to_str() == text
    assert ArchConfig.from_json(arch.to_json()) == arch
    assert ArchConfig.from_json(json.dumps(json.loads(arch.to_json()), indent=1)).key == arch.key


ALPHABET = "|,_.0123456789rinstemhadckfpuwxbvlgEe- "


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=120) | st.text(max_size=60))
def test_random_strings_never_crash_the_decoder(text):
    try:
        ArchConfig.from_str(text)
    except ArchError as err:
        assert str(err)


@settings(max_examples=400, deadline=None)
@given(archs(), st.data())
def test_edited_valid_strings_decode_or_fail_cleanly(arch, data):
    text = arch.to_str()
    i = data.draw(st.integers(0, len(text) - 1))
    edited = text[:i] + data.draw(st.sampled_from(list(ALPHABET) + [""])) + text[i + 1:]
    try:
        ArchConfig.from_str(edited)
    except ArchError as err:
        assert str(err)
