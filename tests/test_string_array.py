"""formats.string_array: strings kept as one UTF-8 blob and offsets."""

import numpy as np
import pytest

from smallmind.formats.string_array import StringArray

STRINGS = ["ab", "", "c", "abc", "ñé", "b"]


def test_items_come_back_as_the_strings_given():
    strings = StringArray.from_strings(STRINGS)
    assert len(strings) == len(STRINGS)
    assert list(strings) == STRINGS
    assert [strings[i] for i in range(-len(STRINGS), len(STRINGS))] == STRINGS * 2
    assert strings[1:4] == STRINGS[1:4]
    assert strings.bytes_at(4) == "ñé".encode()


def test_an_index_outside_the_array_raises_index_error():
    with pytest.raises(IndexError, match="string index 6 is out of range for 6 strings"):
        StringArray.from_strings(STRINGS)[6]


def test_index_of_finds_whole_items_only():
    strings = StringArray.from_strings(STRINGS)
    # "abc" first occurs in the blob across items 0 and 2 ("ab" + "" + "c"), then as item 3
    assert strings.index_of("abc") == 3
    assert strings.index_of("b") == 5
    assert strings.index_of("bc") is None
    assert "ñé" in strings and "ñ" not in strings and 3 not in strings


def test_equality_with_lists_and_other_arrays():
    strings = StringArray.from_strings(STRINGS)
    assert strings == STRINGS and strings != STRINGS[:-1] and strings != [*STRINGS[:-1], "x"]
    assert strings == StringArray.from_strings(STRINGS)


def test_parts_that_are_not_valid_utf8_are_refused():
    blob = "é".encode()
    assert StringArray.from_utf8_parts(blob, np.array([0, 2], np.int64)) == ["é"]
    # each item must be valid on its own: no item may start inside a character
    assert StringArray.from_utf8_parts(blob, np.array([0, 1, 2], np.int64)) is None
    assert StringArray.from_utf8_parts(b"\xff", np.array([0, 1], np.int64)) is None
