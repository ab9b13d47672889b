"""The password policy of built-in users: one function, applied by the CLI, the API and the UI.

After NIST SP 800-63B §5.1.1.2 (memorized secrets): a minimum length, no composition rules, and a
check against values known from breaches. A password is refused when

* it is shorter than :data:`MIN_LENGTH` characters;
* it is, or contains, the user name (compared case-insensitively; "contains" only for names of
  :data:`MIN_NAME_IN_PASSWORD` characters or more, since shorter ones such as ``jo`` or ``al`` are
  inside ordinary words);
* it is one of the most common breached passwords (``data/common-passwords.txt``, compared
  case-insensitively with spaces removed, so ``Correct Horse Battery Staple`` is caught too).

The message of the refusal names the rule that failed.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from radstack.errors import BadRequest

__all__ = ["MIN_LENGTH", "WeakPassword", "check_password_policy", "common_passwords"]

#: Fewest characters a password may have.
MIN_LENGTH = 12
#: Shortest user name refused as a part of a password (any name is refused as the whole password).
MIN_NAME_IN_PASSWORD = 4
#: Longest password accepted (argon2 would hash more, but nobody types it; bounds the work).
MAX_LENGTH = 1024


class WeakPassword(BadRequest):
    """A new password that the policy refuses (400); the message names the rule."""

    title = "Password refused by the policy"


@cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common breached passwords, lower case without spaces."""
    text = files("radstack.security").joinpath("data/common-passwords.txt").read_text(encoding="utf-8")
    return frozenset(
        _normalise(line) for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def _normalise(value: str) -> str:
    return "".join(value.split()).casefold()


def check_password_policy(password: str, username: str) -> None:
    """Refuse ``password`` for ``username`` unless it follows the policy.

    Parameters
    ----------
    password
        The proposed new password.
    username
        Whose password it would be.

    Raises
    ------
    WeakPassword
        Too short, too long, containing the user name, or a commonly breached password; the
        message says which rule failed and what would be accepted.
    """
    if len(password) < MIN_LENGTH:
        raise WeakPassword(
            f"the password has {len(password)} characters; it must have at least {MIN_LENGTH} characters "
            "(a few unrelated words make a good one)"
        )
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"the password must have at most {MAX_LENGTH} characters")
    name, folded = username.casefold(), password.casefold()
    if name and (name == folded or (len(name) >= MIN_NAME_IN_PASSWORD and name in folded)):
        raise WeakPassword("the password must not contain the user name")
    if _normalise(password) in common_passwords():
        raise WeakPassword(
            "the password is one of the most common passwords found in breaches; choose another"
        )
