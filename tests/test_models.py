"""ticker.models: validation and normalisation of briefs, without Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ticker.errors import ProblemError, ValidationError
from ticker.models import (
    check_brief_id,
    check_channel,
    corrected,
    new_brief,
    parse_patch,
    parse_stream_id,
    retracted,
)

FIELDS = [
    "channel", "text", "url", "time", "urgency", "tags", "lang",
    "version", "updated_at", "status", "pinned", "author",
]


def invalid_fields(body: Any, *, patch: bool = False) -> list[str]:
    """The fields a ValidationError names for this body."""
    with pytest.raises(ValidationError) as info:
        parse_patch(body) if patch else new_brief(body, "world")
    assert info.value.status == 422
    assert all(e["message"] for e in info.value.errors)
    return [e["field"] for e in info.value.errors]


# new_brief: defaults and normalisation


def test_new_brief_fills_every_default() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    brief = new_brief({"text": "Summit opens"}, "world")
    after = datetime.now(UTC)
    assert list(brief) == FIELDS
    assert brief == {
        "channel": "world", "text": "Summit opens", "url": None, "time": brief["time"],
        "urgency": 5, "tags": [], "lang": None, "version": 1, "updated_at": None,
        "status": "usable", "pinned": False, "author": None,
    }
    assert brief["time"].endswith("Z")
    assert before <= datetime.fromisoformat(brief["time"]) <= after


def test_new_brief_keeps_every_given_field() -> None:
    brief = new_brief({
        "text": "Goal", "url": "http://example.org/x", "time": "2026-02-14T16:30:00+01:00",
        "urgency": 9, "tags": ["sport"], "lang": "zh-Hant-TW", "pinned": True,
        "author": " Ana  Pérez ",
    }, "sport")
    assert brief == {
        "channel": "sport", "text": "Goal", "url": "http://example.org/x",
        "time": "2026-02-14T16:30:00+01:00", "urgency": 9, "tags": ["sport"],
        "lang": "zh-Hant-TW", "version": 1, "updated_at": None, "status": "usable",
        "pinned": True, "author": "Ana  Pérez",
    }


def test_new_brief_trims_text_and_normalises_it_to_nfc() -> None:
    brief = new_brief({"text": " \t Cafe\u0301 ouvert \n"}, "world")
    assert brief["text"] == "Caf\u00e9 ouvert"


def test_new_brief_counts_500_characters_after_trim_and_nfc() -> None:
    assert len(new_brief({"text": "  " + "e\u0301" * 500 + "  "}, "w")["text"]) == 500
    assert invalid_fields({"text": "e\u0301" * 501}) == ["text"]
    assert invalid_fields({"text": "a" * 501}) == ["text"]


@pytest.mark.parametrize(
    "text",
    [
        "", "   ", "\u00a0\u3000", "a\nb", "a\rb", "a\tb", "a\x00b", "a\x1bb", "a\x7f", "a\x85b",
        "a\u2028b", "a\u2029b",
    ],
)
def test_new_brief_refuses_empty_text_and_control_characters(text: str) -> None:
    assert invalid_fields({"text": text}) == ["text"]


def test_new_brief_trims_and_deduplicates_tags_keeping_their_order() -> None:
    brief = new_brief({"text": "a", "tags": [" b ", "a", "b", "Cafe\u0301", "Caf\u00e9"]}, "w")
    assert brief["tags"] == ["b", "a", "Caf\u00e9"]


def test_new_brief_accepts_the_limits_themselves() -> None:
    brief = new_brief({
        "text": "a" * 500, "url": "https://example.org/" + "a" * (2048 - 20),
        "tags": ["t" * 64] + [f"t{i}" for i in range(9)], "urgency": 1,
    }, "w")
    assert len(brief["url"]) == 2048
    assert len(brief["tags"]) == 10


@pytest.mark.parametrize(
    "given, stored",
    [
        ("2026-02-14T15:30:00Z", "2026-02-14T15:30:00Z"),
        ("2026-02-14T15:30:00+00:00", "2026-02-14T15:30:00Z"),
        ("2026-02-14T15:30:00-00:00", "2026-02-14T15:30:00Z"),
        ("2026-02-14t15:30:00z", "2026-02-14T15:30:00Z"),
        ("2026-02-14 15:30:00+01:00", "2026-02-14T15:30:00+01:00"),
        ("2026-02-14T15:30:00.5+05:30", "2026-02-14T15:30:00.500+05:30"),
        ("2026-02-14T15:30:00.123456789Z", "2026-02-14T15:30:00.123Z"),
        ("2026-02-14T15:30:00.000000Z", "2026-02-14T15:30:00Z"),
    ],
)
def test_new_brief_normalises_time_to_rfc3339_with_z_for_utc(given: str, stored: str) -> None:
    assert new_brief({"text": "a", "time": given}, "w")["time"] == stored


@pytest.mark.parametrize(
    "time",
    [
        "2026-02-14T15:30:00", "2026-02-14", "15:30:00Z", "2026-02-14T15:30Z",
        "2026-02-30T10:00:00Z", "2026-02-14T24:00:00Z", "2026-02-14T15:30:00+24:00",
        "1969-12-31T23:59:59Z", "2026-02-14T15:30:00+0100", "yesterday", "",
        "\uff12\uff10\uff12\uff16-02-14T15:30:00Z", 1771083000, None,
    ],
)
def test_new_brief_refuses_a_time_that_is_not_rfc3339_with_offset(time: Any) -> None:
    assert invalid_fields({"text": "a", "time": time}) == ["time"]


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)", "ftp://example.org/", "/relative", "example.org",
        "http://", "http:///path", "https://exa mple.org", "http://[::1",
        "http://example.org:99999/", "http://example.org:port/",
        "https://example.org/" + "a" * 2029, "data:text/html,hi", 5,
    ],
)
def test_new_brief_refuses_a_url_that_is_not_absolute_http(url: Any) -> None:
    assert invalid_fields({"text": "a", "url": url}) == ["url"]


@pytest.mark.parametrize("urgency", [0, 10, -1, "1", True, False, 1.0, None])
def test_new_brief_refuses_urgency_outside_1_to_9_or_not_an_integer(urgency: Any) -> None:
    assert invalid_fields({"text": "a", "urgency": urgency}) == ["urgency"]


@pytest.mark.parametrize(
    "tags", [[f"t{i}" for i in range(11)], ["a" * 65], [""], ["  "], ["a\tb"], "a", [1], None]
)
def test_new_brief_refuses_bad_tags(tags: Any) -> None:
    assert invalid_fields({"text": "a", "tags": tags}) == ["tags"]


@pytest.mark.parametrize("lang", ["english", "f", "fr_FR", "", "fr-", "en-" + "a" * 33, 5])
def test_new_brief_refuses_a_lang_that_is_not_a_language_tag(lang: Any) -> None:
    assert invalid_fields({"text": "a", "lang": lang}) == ["lang"]


def test_new_brief_refuses_unknown_fields_by_name() -> None:
    assert invalid_fields({"text": "a", "headline": "b", "id": "1-0"}) == ["headline", "id"]


def test_new_brief_names_every_invalid_field_at_once() -> None:
    fields = invalid_fields({"text": "", "url": "ftp://x", "urgency": 0, "pinned": "no"})
    assert sorted(fields) == ["pinned", "text", "urgency", "url"]


@pytest.mark.parametrize("body", [[], ["text"], "text", 5, None, True])
def test_new_brief_refuses_a_body_that_is_not_an_object(body: Any) -> None:
    invalid_fields(body)


# parse_patch


def test_parse_patch_returns_only_the_changed_fields_normalised() -> None:
    assert parse_patch({"text": "  Fixed\u00a0", "urgency": 2}) == {"text": "Fixed", "urgency": 2}
    assert parse_patch({"url": None, "lang": None}) == {"url": None, "lang": None}
    assert parse_patch({"time": "2026-02-14T15:30:00+00:00"}) == {"time": "2026-02-14T15:30:00Z"}
    assert parse_patch({"pinned": True}) == {"pinned": True}


def test_parse_patch_refuses_an_empty_correction() -> None:
    assert invalid_fields({}, patch=True) == [""]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"text": ""}, "text"),
        ({"text": None}, "text"),
        ({"urgency": 0}, "urgency"),
        ({"version": 3}, "version"),
        ({"status": "usable"}, "status"),
        ({"updated_at": "2026-02-14T15:30:00Z"}, "updated_at"),
    ],
)
def test_parse_patch_refuses_invalid_and_unknown_fields(body: dict[str, Any], field: str) -> None:
    assert invalid_fields(body, patch=True) == [field]


def test_parse_patch_refuses_a_body_that_is_not_an_object() -> None:
    invalid_fields(["text"], patch=True)


# corrected / retracted


def _stored() -> dict[str, Any]:
    return {"id": "1732850000000-0", **new_brief({"text": "Frist", "tags": ["a"]}, "world")}


def test_corrected_replaces_fields_increments_version_and_sets_updated_at() -> None:
    current = _stored()
    snapshot = dict(current)
    before = datetime.now(UTC).replace(microsecond=0)
    fixed = corrected(current, {"text": "First", "urgency": 1})
    assert fixed == {
        **current, "text": "First", "urgency": 1, "version": 2,
        "updated_at": fixed["updated_at"],
    }
    assert fixed["updated_at"].endswith("Z")
    assert datetime.fromisoformat(fixed["updated_at"]) >= before
    assert current == snapshot  # the input is left alone
    assert corrected(fixed, {"pinned": True})["version"] == 3


def test_retracted_cancels_increments_version_and_sets_updated_at() -> None:
    current = corrected(_stored(), {"text": "First"})
    snapshot = dict(current)
    gone = retracted(current)
    assert gone == {
        **current, "status": "canceled", "version": 3, "updated_at": gone["updated_at"],
    }
    assert gone["updated_at"] is not None and gone["updated_at"].endswith("Z")
    assert current == snapshot


# stream ids, brief ids and channels


@pytest.mark.parametrize(
    "value, key",
    [
        ("1700000000000-3", (1700000000000, 3)),
        ("0-0", (0, 0)),
        ("5", (5, 0)),
        ("007-01", (7, 1)),
        ("18446744073709551615-18446744073709551615", (2**64 - 1, 2**64 - 1)),
    ],
)
def test_parse_stream_id_reads_milliseconds_and_sequence(value: str, key: tuple[int, int]) -> None:
    assert parse_stream_id(value) == key


@pytest.mark.parametrize(
    "value",
    [
        "", "-", "1-", "-1", "1-2-3", "a-1", "1-b", " 1-0", "1-0 ", "1.5-0", "+1-0",
        "18446744073709551616-0", "0-18446744073709551616", "1" * 21 + "-0",
        "\u0661-\u0660",  # Arabic-Indic digits: int() reads them, a stream ID may not hold them
        "$", ">", "+", "*",
    ],
)
def test_parse_stream_id_refuses_what_is_not_a_stream_id(value: str) -> None:
    assert parse_stream_id(value) is None


def test_check_brief_id_returns_the_canonical_id() -> None:
    assert check_brief_id("1732850000000-0") == "1732850000000-0"
    assert check_brief_id("01-02") == "1-2"


@pytest.mark.parametrize("value", ["1732850000000", "abc", "1-2-3", "", "\u0661-\u0660"])
def test_check_brief_id_refuses_what_is_not_a_full_stream_id(value: str) -> None:
    with pytest.raises(ProblemError) as info:
        check_brief_id(value)
    assert info.value.status == 400
    assert info.value.extensions == {"field": "id"}


@pytest.mark.parametrize("channel", ["world", "a", "0", "a" * 64, "breaking-news", "2026", "a-"])
def test_check_channel_accepts_slugs(channel: str) -> None:
    assert check_channel(channel) == channel


@pytest.mark.parametrize(
    "channel",
    ["", "World", "-world", "a" * 65, "wor_ld", "wor ld", "world\n", "caf\u00e9", "a/b", "*"],
)
def test_check_channel_refuses_what_is_not_a_slug(channel: str) -> None:
    with pytest.raises(ProblemError) as info:
        check_channel(channel)
    assert info.value.status == 400
    assert info.value.extensions == {"field": "channel"}
    assert "channel" in info.value.detail


def test_the_control_character_scan_is_exactly_the_unicode_categories() -> None:
    """``_has_control`` scans with a regular expression: the same characters as the
    categories Cc, Zl and Zp of this Python's Unicode database, every code point."""
    import sys
    import unicodedata

    from ticker import models

    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        assert models._has_control(ch) == (unicodedata.category(ch) in models._CONTROL), hex(code)


def test_author_is_a_trimmed_byline_of_1_to_100_characters_or_null() -> None:
    assert new_brief({"text": "t", "author": " Jo\u0301 "}, "w")["author"] == "J\u00f3"
    assert new_brief({"text": "t", "author": None}, "w")["author"] is None
    assert len(new_brief({"text": "t", "author": "a" * 100}, "w")["author"]) == 100
    for bad in ("a" * 101, "", "   ", "Ana\nP", "Ana\u2028P", 7, ["Ana"], {"name": "Ana"}):
        assert invalid_fields({"text": "t", "author": bad}) == ["author"], bad
    assert parse_patch({"author": None}) == {"author": None}  # clears it
    assert parse_patch({"author": " Ana "}) == {"author": "Ana"}
    assert invalid_fields({"author": "x" * 101}, patch=True) == ["author"]
