"""The password policy (``security/passwords.py``): each rule refuses with a message that names it."""

from __future__ import annotations

import pytest

from radstack.security.passwords import MIN_LENGTH, WeakPassword, check_password_policy, common_passwords


@pytest.mark.parametrize(
    ("password", "username", "rule"),
    [
        ("eleven char", "alice", f"at least {MIN_LENGTH} characters"),
        ("alice in wonderland", "alice", "must not contain the user name"),
        ("my ALICE password", "Alice", "must not contain the user name"),
        ("bo", "bo", "at least"),
        ("bobobobobobo", "bobobobobobo", "must not contain the user name"),
        ("123456789012", "alice", "most common passwords"),
        ("QwertyUiop123", "alice", "most common passwords"),
        ("Correct Horse Battery Staple", "alice", "most common passwords"),
        ("x" * 1025, "alice", "at most 1024"),
    ],
)
def test_a_weak_password_is_refused_naming_the_rule(password: str, username: str, rule: str) -> None:
    with pytest.raises(WeakPassword, match=rule):
        check_password_policy(password, username)


@pytest.mark.parametrize(
    ("password", "username"),
    [
        ("walnut ferry lantern", "alice"),
        ("a long password for jo", "jo"),  # a two-letter name is inside ordinary words
        ("twelve chars", "bob"),
    ],
)
def test_a_good_password_passes(password: str, username: str) -> None:
    check_password_policy(password, username)


def test_the_shipped_list_is_read_and_normalised() -> None:
    listed = common_passwords()
    assert len(listed) >= 100
    assert {"password", "123456789012", "qwertyuiop", "correcthorsebatterystaple"} <= listed
    assert all(entry == entry.lower() and " " not in entry for entry in listed)
