"""Byte-exact note bodies."""

from __future__ import annotations

import calendar

import pytest

from app.notes import NoteLine, format_header, format_note, format_summary, replay_link, to_html

# 2024-01-15 12:34:50 UTC, the header time of the seed example.
T0 = calendar.timegm((2024, 1, 15, 12, 34, 50))
# The next multiple of 3 after T0: the start of an epoch-aligned 3-second bin.
BIN_EDGE = T0 + 1
HEADER_T0 = "session_id: abc123\ntimestamp: 2024-01-15 12:34:50 UTC\n\n"


def note(session_id: str | None, *lines: tuple[float, str], bin_seconds: float = 0) -> str:
    actions = [NoteLine(timestamp=t, description=d) for t, d in lines]
    return format_note(session_id, actions, bin_seconds=bin_seconds, now=0.0)


def test_fixture_times_are_what_the_tests_assume() -> None:
    assert T0 == 1_705_322_090
    assert BIN_EDGE % 3 == 0


def test_seed_example_is_byte_exact() -> None:
    # [1] and [2] fall in bin floor(t/3) = 568440696; [3] is only 0.7 s after [2] but in the next
    # epoch-aligned bin, so the separator comes from the bin edge, not from the gap.
    body = note(
        "abc123",
        (T0 + 0.2, "User clicked Sign up button on the pricing page"),
        (T0 + 0.8, "User clicked Confirm plan button on the checkout page"),
        (T0 + 1.5, "User submitted Payment form on the checkout page"),
        bin_seconds=3,
    )

    assert body == (
        "session_id: abc123\n"
        "timestamp: 2024-01-15 12:34:50 UTC\n"
        "\n"
        "[1] User clicked Sign up button on the pricing page\n"
        "[2] User clicked Confirm plan button on the checkout page\n"
        "\n"
        "[3] User submitted Payment form on the checkout page"
    )


def test_post_link_note_of_the_same_actions_has_no_blank_lines() -> None:
    body = note(
        "abc123",
        (T0 + 0.2, "User clicked Sign up button on the pricing page"),
        (T0 + 0.8, "User clicked Confirm plan button on the checkout page"),
        (T0 + 1.5, "User submitted Payment form on the checkout page"),
        bin_seconds=0,
    )

    assert body == HEADER_T0 + (
        "[1] User clicked Sign up button on the pricing page\n"
        "[2] User clicked Confirm plan button on the checkout page\n"
        "[3] User submitted Payment form on the checkout page"
    )


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.999, 0.999999, 0.9999996])
def test_header_truncates_fractional_seconds(fraction: float) -> None:
    assert format_header("abc123", T0 + fraction) == HEADER_T0


def test_header_format() -> None:
    assert format_header("s-1", 0.0) == "session_id: s-1\ntimestamp: 1970-01-01 00:00:00 UTC\n\n"
    assert format_header("s-1", 1_000_000_000.5) == (
        "session_id: s-1\ntimestamp: 2001-09-09 01:46:40 UTC\n\n"
    )


@pytest.mark.parametrize("session_id", [None, ""])
def test_missing_session_id_is_unknown(session_id: str | None) -> None:
    assert format_header(session_id, T0) == (
        "session_id: unknown\ntimestamp: 2024-01-15 12:34:50 UTC\n\n"
    )
    assert note(session_id, (T0, "x")).startswith("session_id: unknown\n")


def test_no_actions_gives_the_header_only_at_now() -> None:
    body = format_note("abc123", [], bin_seconds=3, now=T0 + 0.9)

    assert body == HEADER_T0


def test_header_time_comes_from_the_first_action_not_now() -> None:
    body = format_note("abc123", [NoteLine(T0 + 0.4, "a")], bin_seconds=0, now=T0 + 3600)

    assert body == HEADER_T0 + "[1] a"


def test_unsorted_input_is_sorted_and_the_header_uses_the_earliest() -> None:
    body = note(
        "abc123",
        (T0 + 30, "third"),
        (T0 + 0.5, "first"),
        (T0 + 10, "second"),
    )

    assert body == HEADER_T0 + "[1] first\n[2] second\n[3] third"


def test_equal_times_keep_arrival_order() -> None:
    body = note(
        "abc123",
        (T0 + 2, "z later"),
        (T0, "c"),
        (T0, "a"),
        (T0, "b"),
        (T0 + 1, "middle"),
        (T0, "0"),
    )

    assert body == HEADER_T0 + "[1] c\n[2] a\n[3] b\n[4] 0\n[5] middle\n[6] z later"


@pytest.mark.parametrize(
    ("first", "second", "separated"),
    [
        (BIN_EDGE - 0.1, BIN_EDGE, True),  # 2.9 and 3.0: either side of the edge
        (BIN_EDGE, BIN_EDGE + 2.99, False),  # 3.0 and 5.99: the same bin
        (BIN_EDGE + 2.99, BIN_EDGE + 3, True),  # 5.99 and 6.0
        (BIN_EDGE - 0.001, BIN_EDGE + 0.001, True),  # 2 ms apart, still two bins
        (BIN_EDGE - 2.9, BIN_EDGE - 0.1, False),  # 2.8 s apart, one bin
    ],
)
def test_bins_are_epoch_aligned(first: float, second: float, separated: bool) -> None:
    body = note("s", (first, "one"), (second, "two"), bin_seconds=3)

    expected_lines = "[1] one\n\n[2] two" if separated else "[1] one\n[2] two"
    assert body.endswith("\n\n" + expected_lines)
    assert body.count("\n\n") == (2 if separated else 1)


def test_blank_line_only_when_the_bin_changes() -> None:
    body = note(
        "abc123",
        (BIN_EDGE + 0.0, "a"),
        (BIN_EDGE + 1.0, "b"),
        (BIN_EDGE + 7.0, "c"),  # skips a whole empty bin: still one blank line
        (BIN_EDGE + 8.9, "d"),
        (BIN_EDGE + 9.0, "e"),
        bin_seconds=3,
    )

    assert body == (
        "session_id: abc123\ntimestamp: 2024-01-15 12:34:51 UTC\n\n"
        "[1] a\n[2] b\n\n[3] c\n[4] d\n\n[5] e"
    )


def test_bin_seconds_zero_never_adds_blank_lines() -> None:
    body = note("s", (0.0, "a"), (1000.0, "b"), (BIN_EDGE, "c"), bin_seconds=0)

    assert body.split("\n")[3:] == ["[1] a", "[2] b", "[3] c"]


def test_fractional_bin_seconds() -> None:
    body = note(
        "s",
        (BIN_EDGE + 0.25, "a"),
        (BIN_EDGE + 0.49, "b"),
        (BIN_EDGE + 0.5, "c"),
        (BIN_EDGE + 1.2, "d"),
        bin_seconds=0.5,
    )

    assert body.split("\n")[3:] == ["[1] a", "[2] b", "", "[3] c", "", "[4] d"]


def test_binning_wider_than_a_minute() -> None:
    minute = calendar.timegm((2024, 1, 15, 12, 35, 0))
    body = note("s", (minute - 1, "a"), (minute, "b"), (minute + 59, "c"), bin_seconds=60)

    assert body.split("\n")[3:] == ["[1] a", "", "[2] b", "[3] c"]


def test_numbering_starts_at_one_in_every_note_without_padding() -> None:
    lines = [(T0 + i, f"action {i}") for i in range(12)]

    first = note("s", *lines)
    second = note("s", (T0 + 100, "later"))

    assert first.split("\n")[3:] == [f"[{i + 1}] action {i}" for i in range(12)]
    assert second.endswith("\n\n[1] later")


@pytest.mark.parametrize(
    "description",
    [
        "User clicked 🚀 Launch on the 🏠 page",
        "用户点击了 导出 按钮",
        "המשתמש לחץ על כפתור שמירה",
        "Éléphant naïve café — Zoë",
        "family: 👨\u200d👩\u200d👧 skin: 👍🏽",
    ],
)
def test_unicode_is_preserved(description: str) -> None:
    body = note("abc123", (T0, description))

    assert body == HEADER_T0 + f"[1] {description}"
    assert body.encode("utf-8").endswith(description.encode("utf-8"))


@pytest.mark.parametrize("line_break", ["\n", "\r", "\r\n", "\u2028", "\u2029", "\x0b", "\x85"])
def test_line_breaks_in_descriptions_become_one_space(line_break: str) -> None:
    body = note("abc123", (T0, f"clicked{line_break}[2] forged line"), (T0 + 1, "real"))

    assert body == HEADER_T0 + "[1] clicked [2] forged line\n[2] real"
    assert len(body.splitlines()) == 5


def test_forged_header_in_description_stays_on_its_line() -> None:
    body = note("abc123", (T0, "x\n\nsession_id: evil\ntimestamp: 1999-01-01 00:00:00 UTC"))

    assert body == HEADER_T0 + "[1] x  session_id: evil timestamp: 1999-01-01 00:00:00 UTC"


def test_summary_is_the_header_at_post_time_then_the_text() -> None:
    summary = "The user tried to pay twice.\nBoth payments failed."

    body = format_summary("abc123", summary, now=T0 + 0.75)

    assert body == (
        "session_id: abc123\n"
        "timestamp: 2024-01-15 12:34:50 UTC\n"
        "\n"
        "The user tried to pay twice.\nBoth payments failed."
    )
    assert format_summary(None, "s", now=T0) == (
        "session_id: unknown\ntimestamp: 2024-01-15 12:34:50 UTC\n\ns"
    )


def test_to_html_escapes_markup_and_keeps_quotes() -> None:
    text = "a & b <script>alert(\"x\")</script> 'q' &amp;"

    assert to_html(text) == ("a &amp; b &lt;script&gt;alert(\"x\")&lt;/script&gt; 'q' &amp;amp;")


def test_to_html_of_a_note_turns_every_newline_into_br() -> None:
    body = note("abc123", (T0, "Opened <Billing> & paid"), (T0 + 1.5, "Left"), bin_seconds=3)

    assert to_html(body) == (
        "session_id: abc123<br>timestamp: 2024-01-15 12:34:50 UTC<br><br>"
        "[1] Opened &lt;Billing&gt; &amp; paid<br><br>[2] Left"
    )
    assert "\n" not in to_html(body)


# --- the replay line of the at-link flush ---------------------------------------------------------

REPLAY = "https://eu.posthog.com/project/48213/replay/abc123"


def test_header_with_a_replay_url_has_the_replay_line_before_the_blank_line() -> None:
    assert format_header("abc123", T0 + 0.5, replay_url=REPLAY) == (
        "session_id: abc123\n"
        "timestamp: 2024-01-15 12:34:50 UTC\n"
        "replay: https://eu.posthog.com/project/48213/replay/abc123\n"
        "\n"
    )


@pytest.mark.parametrize("replay_url", [None, ""])
def test_no_replay_url_no_replay_line(replay_url: str | None) -> None:
    assert format_header("abc123", T0, replay_url=replay_url) == HEADER_T0
    body = format_note("abc123", [NoteLine(T0, "a")], bin_seconds=3, now=0.0, replay_url=replay_url)
    assert body == HEADER_T0 + "[1] a"


def test_a_flush_note_with_a_replay_url_keeps_its_bins() -> None:
    actions = [
        NoteLine(T0 + 0.2, "User clicked Sign up button on the pricing page"),
        NoteLine(T0 + 0.8, "User clicked Confirm plan button on the checkout page"),
        NoteLine(T0 + 1.5, "User submitted Payment form on the checkout page"),
    ]

    body = format_note("abc123", actions, bin_seconds=3, now=0.0, replay_url=REPLAY)

    assert body == (
        "session_id: abc123\n"
        "timestamp: 2024-01-15 12:34:50 UTC\n"
        "replay: https://eu.posthog.com/project/48213/replay/abc123\n"
        "\n"
        "[1] User clicked Sign up button on the pricing page\n"
        "[2] User clicked Confirm plan button on the checkout page\n"
        "\n"
        "[3] User submitted Payment form on the checkout page"
    )


@pytest.mark.parametrize(
    "project_url",
    [
        "https://eu.posthog.com/project/48213",
        "https://eu.posthog.com/project/48213/",
        "https://eu.posthog.com/project/48213//",
    ],
)
def test_replay_link_joins_the_project_url_and_the_session(project_url: str) -> None:
    assert replay_link(project_url, "abc123") == REPLAY
